// Fidelity of a candidate (e.g. decomposed) model to its base model on a text, token by token.
//
// Windows as the chunk protocol (perplexity.hpp): consecutive windows of `ctx` text tokens (the
// last may be shorter), each run as [BOS] + window, every text token scored once from the logits of
// the position before it. Per scored position, with log-probabilities from a float64 log-softmax of
// the fp32 logits, stored as float32:
//   KL(P_base || P_cand) = sum_v p_base(v) (log p_base(v) - log p_cand(v))   (summed in float64)
//   top1: the argmax of the base logits equals the candidate's (first index on ties);
// and the NLL of the true next token under each model (float64, as perplexity_chunks).
// kl = mean KL over positions, kl_stderr = sqrt((E[KL^2] - E[KL]^2) / (n - 1)) (llama.cpp's
// KL-divergence report); ppl_* = exp(mean NLL); ppl_ratio = ppl_candidate / ppl_base.
//
// The base side (log-softmax rows, NLLs, argmaxes) is computed once per (model_content_hash(base),
// data_key, the ids scored, ctx, max_windows) and kept in cache_dir/fidelity/<key>.f32 (format in
// docs/evaluation.md): checksummed, written to a temporary file and renamed; a file that does not
// validate is recomputed, never trusted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "core/io/model.hpp"
#include "core/models/bert.hpp"

namespace rankscope {

struct FidelityOptions {
  int64_t ctx = 256;              // text tokens per window (the model reads ctx + 1 with BOS)
  int64_t max_windows = -1;       // at most this many windows; -1 = all
  int64_t windows_per_batch = 8;
  std::filesystem::path cache_dir;  // empty = no disk cache
  std::string data_key;           // identifies the text (e.g. a hash of its ids); part of the cache key
  std::function<void(int64_t done, int64_t total)> progress;  // windows done / to do
  // Early stopping (sweep --prune): when set, the base side is computed whole first (into the
  // cache file; without a cache_dir it is held in memory, n_tokens x n_vocab floats) and the
  // candidate scores the windows in the random order of `shuffle_seed`, asking keep_going after
  // each batch with the KL sums and scored positions of the windows done so far (in scoring order)
  // and the windows in all; false stops there (FidelityResult::stopped). The results then cover
  // the windows scored, summed in text order: a staged run that finishes equals the unstaged one.
  std::function<bool(const std::vector<double>& window_kl_sums, const std::vector<int64_t>& window_tokens, int64_t total)>
      keep_going;
  uint64_t shuffle_seed = 1;
};

struct FidelityResult {
  double kl = 0, kl_stderr = 0;
  double top1 = 0;
  double ppl_base = 0, ppl_candidate = 0, ppl_ratio = 0;
  int64_t n_tokens = 0;           // positions scored
  int64_t n_windows = 0;          // windows scored
  int64_t n_windows_total = 0;    // windows the text (and max_windows) give
  bool stopped = false;           // keep_going stopped it before the last window
  bool base_from_cache = false;   // the base side came from a valid cache file
  bool cache_rejected = false;    // a cache file was there but did not validate (recomputed, replaced)
  std::filesystem::path cache_file;  // the file used or written; empty without cache_dir
  // false: the candidate gave a NaN/Inf log-probability somewhere; kl, kl_stderr, top1,
  // ppl_candidate and ppl_ratio are then NaN (never silently dropped).
  bool finite = true;
};

// Throws Error when the models are not causal LMs of the same vocabulary, the base has no BOS, a
// window does not fit, `ids` is empty, the base model itself gives NaN/Inf, or the cache file
// cannot be written.
FidelityResult fidelity(const Model& base, const Model& candidate, const std::vector<TokenId>& ids,
                        const FidelityOptions& options);

// Fidelity of a sequence classifier (BERT with a classification head) to its base, per input:
// P = softmax of the label logits (float64 log-softmax of the fp32 logits);
//   KL(P_base || P_cand) = sum_c p_base(c) (log p_base(c) - log p_cand(c)), and
//   top1: the base's argmax label equals the candidate's (first index on ties).
// kl = mean over inputs, kl_stderr as for tokens above, top1 = share agreeing.
struct ClassifierFidelityResult {
  double kl = 0, kl_stderr = 0;
  double top1 = 0;
  int64_t n = 0;       // inputs scored
  bool finite = true;  // false: the candidate gave a NaN/Inf logit (kl, kl_stderr, top1 NaN)
};
// Label log-probabilities [inputs x labels] of a classifier, `batch` inputs per forward pass.
// Throws Error for a model without a sequence-classification head.
Eigen::MatrixXd classifier_log_probs(const Model& model, std::span<const BertInput> inputs, int64_t batch);
// Compares two such matrices (the base's must be finite). Throws Error when their shapes differ.
ClassifierFidelityResult classifier_fidelity(const Eigen::MatrixXd& base_log_probs, const Eigen::MatrixXd& candidate_log_probs);

}  // namespace rankscope
