// Perplexity of a causal LM over text, by three protocols (docs/evaluation.md, "Perplexity
// protocols", says each precisely). NLL = -log softmax(logits)[token] in float64 of the fp32
// logits, summed in float64; ppl = exp(sum NLL / tokens scored).
//
//  - chunks: what ../shared/data/stories260K-hf/golden/perplexity.json was computed with. The ids
//    are cut into consecutive non-overlapping windows of `ctx` text tokens (the last may be
//    shorter); each runs as [BOS] + window with positions restarting at 0, and every token of the
//    window is scored once, from the logits of the position before it (BOS scores the first).
//  - llamacpp: llama.cpp's `perplexity` tool. The stream is [BOS] + ids, cut into consecutive
//    chunks of `ctx` positions (an incomplete tail is dropped); each chunk's first token is
//    replaced by BOS and only its second half is scored (positions j in [ctx/2, ctx-1) predict
//    token j+1).
//  - rolling: lm-evaluation-harness 0.4 loglikelihood_rolling per document
//    (get_rolling_token_windows(doc, prefix, max_seq_len = ctx, context_len = 1) +
//    make_disjoint_window): every token of every document scored once, with word and byte
//    perplexities and bits per byte aggregated over documents as lm-eval does.
//
// A NaN/Inf NLL is never dropped: the result is marked finite = false and its perplexities are NaN.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/io/model.hpp"
#include "evaluators/limit.hpp"

namespace rankscope {

struct PerplexityOptions {
  // chunks: text tokens per window (the model reads ctx + 1 positions with BOS);
  // llamacpp: positions per chunk, BOS included (llama.cpp's -c); rolling: positions per window
  // (lm-eval's max_length).
  int64_t ctx = 512;
  int64_t windows_per_batch = 8;  // windows run together in one forward pass
  // --limit: at most this many windows (chunks) are scored, or ceil(fraction x the text's windows);
  // -1 = all. Rolling takes whole documents while their windows fit (Error if the first document
  // alone does not).
  Limit max_windows;
  std::function<void(int64_t done, int64_t total)> progress;  // windows done / to do
  // chunks and llamacpp: 0 scores the windows in text order; otherwise in a permutation drawn from
  // this seed (the same on every machine), so that any prefix of them is a random sample of the
  // windows, as early stopping's interval assumes. The result is the same sum in another order.
  uint64_t shuffle_seed = 0;
  // Early stopping (chunks and llamacpp; rolling ignores it): called after each batch with every
  // scored window's NLL sum and scored tokens, in order, and the number of windows to do;
  // returning false stops there, and the result covers the windows scored (stopped = true).
  std::function<bool(const std::vector<double>& window_nll_sums, const std::vector<int64_t>& window_tokens,
                     int64_t total)> keep_going;
};

struct PerplexityResult {
  double ppl = 0.0;       // token-level perplexity
  double mean_nll = 0.0;
  double nll_sum = 0.0;
  int64_t n_scored = 0;   // tokens scored
  int64_t n_windows = 0;  // windows (chunks) run
  // Standard error of ppl by the delta method, ppl * sd(NLL) / sqrt(n): chunks and rolling use
  // the population variance over n, llamacpp llama.cpp's sqrt(var / (n - 1)) ("PPL = x +/- y").
  double ppl_stderr = 0.0;
  bool finite = true;     // false: some NLL was NaN/Inf; ppl, mean_nll, stderr (and below) are NaN
  std::vector<double> window_nll_sums;  // one per window, in the order scored
  bool stopped = false;         // keep_going stopped it: n_windows of n_windows_total were scored
  int64_t n_windows_total = 0;  // windows the text (and --limit) gave
  int64_t n_windows_all = 0;    // windows the whole text gives, before --limit

  // rolling only (0 otherwise; NaN when the counts were not given or are 0).
  int64_t n_docs = 0;             // documents scored (an empty document counts, scoring nothing)
  int64_t n_words = 0, n_bytes = 0;
  double word_perplexity = 0.0;   // exp(sum NLL / words)
  double byte_perplexity = 0.0;   // exp(sum NLL / bytes)
  double bits_per_byte = 0.0;     // sum NLL / bytes / ln 2
  std::vector<double> doc_nll_sums;  // per document scored: the sum of its windows' NLL sums
};

// `ids` without BOS. Throws Error for a model that is not a causal LM or has no BOS, a window that
// does not fit the model's positions, or no tokens.
PerplexityResult perplexity_chunks(const Model& model, const std::vector<TokenId>& ids,
                                   const PerplexityOptions& options);
inline PerplexityResult perplexity_chunks(const Model& model, const std::vector<TokenId>& ids, int64_t ctx,
                                          int64_t windows_per_batch = 8) {
  PerplexityOptions options;
  options.ctx = ctx;
  options.windows_per_batch = windows_per_batch;
  return perplexity_chunks(model, ids, options);
}

// `ids`: the text's tokens WITHOUT BOS (BOS is prepended here, as llama.cpp's tokenizer does; a
// model whose config names no BOS gets none, as llama.cpp with add_bos = false). Needs ctx >= 3
// and at least one whole chunk (ids.size() + 1 >= ctx); llama.cpp itself refuses texts shorter
// than 2 * ctx tokens, this does not.
PerplexityResult perplexity_llamacpp(const Model& model, const std::vector<TokenId>& ids,
                                     const PerplexityOptions& options);

// `docs`: each document's tokens without BOS; `word_counts`/`byte_counts`: per document (lm-eval's
// wikitext counts: words = len(re.split(r"\s+", doc)), bytes = len(doc.encode("utf-8"))), or both
// empty when unknown; `prefix_token`: lm-eval's prefix_token_id (BOS, else EOS).
PerplexityResult perplexity_rolling(const Model& model, const std::vector<std::vector<TokenId>>& docs,
                                    const std::vector<int64_t>& word_counts,
                                    const std::vector<int64_t>& byte_counts, TokenId prefix_token,
                                    const PerplexityOptions& options);

}  // namespace rankscope
