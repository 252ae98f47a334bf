// Log-likelihood of continuations given a context, as lm-evaluation-harness 0.4 computes it for a
// causal LM: the model reads context + continuation[:-1] and the log-probabilities of the
// continuation's tokens are summed (float64 log-softmax of the fp32 logits).
//
// A group is one context with its continuations (a multiple-choice question and its choices).
// With context reuse the context runs once and its attention (KV) cache serves every
// continuation; without it every continuation re-reads the context (the baseline bench/eval
// measures). Both give the same numbers.
//
// A request longer than the model's window (context + continuation > max_length + 1 tokens) is
// truncated from the left exactly as lm-eval does: the model reads
// (context + continuation)[-(max_length + 1):][:-1]. Such requests are flagged.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/io/model.hpp"

namespace rankscope {

struct ChoiceGroup {
  std::vector<TokenId> context;                     // non-empty
  std::vector<std::vector<TokenId>> continuations;  // each non-empty
};

struct Loglikelihood {
  double logprob = 0.0;   // sum of log p(token) over the continuation
  bool greedy = false;    // every continuation token is the argmax of its row
  bool truncated = false; // the request was cut from the left to fit the window
  int64_t n_tokens = 0;   // continuation tokens scored
};

struct LoglikelihoodOptions {
  bool reuse_context = true;
  int64_t groups_per_batch = 8;  // contexts prefilled together
  // > 0: contexts are sorted by length and batched up to this many context tokens (and
  // groups_per_batch groups), so that a GPU gets large batches of similar lengths.
  int64_t token_budget = 0;
  int64_t max_length = 0;        // 0 = the model's n_ctx_train
  std::function<void(int64_t done, int64_t total)> progress;  // groups done
};

// Results in the order of `groups` and their continuations. A NaN/Inf logit gives a NaN logprob.
std::vector<std::vector<Loglikelihood>> loglikelihoods(const Model& model, std::span<const ChoiceGroup> groups,
                                                       const LoglikelihoodOptions& options = {});

// lm-eval's _encode_pair: trailing whitespace of the context moves to the continuation, then
// context and context + continuation are tokenized separately and the continuation's tokens are
// the tail of the latter. `prefix` (BOS with --bos) is prepended to the context tokens; an empty
// context becomes [empty_context_token] (lm-eval uses the EOT token).
struct EncodedPair {
  std::vector<TokenId> context;
  std::vector<TokenId> continuation;
};
EncodedPair encode_pair(const Tokenizer& tokenizer, const std::string& context, const std::string& continuation,
                        const std::vector<TokenId>& prefix, TokenId empty_context_token);

}  // namespace rankscope
