// Perplexity of a causal LM over a token stream.
//
// Chunk protocol (what ../shared/data/stories260K-hf/golden/perplexity.json was computed with):
// the ids are cut into consecutive non-overlapping windows of `ctx` tokens (the last may be
// shorter); each window runs as [BOS] + window with positions restarting at 0, and every token of
// the window is scored once, from the logits of the position before it (BOS scores the first).
// NLL = -log softmax(logits)[token] in float64; ppl = exp(sum NLL / tokens scored).
#pragma once

#include <cstdint>
#include <vector>

#include "core/model.hpp"

namespace rankscope {

struct PerplexityResult {
  double ppl = 0.0;
  double mean_nll = 0.0;
  double nll_sum = 0.0;
  int64_t n_scored = 0;
  // Standard error of ppl by the delta method: ppl * sd(NLL) / sqrt(n_scored).
  double ppl_stderr = 0.0;
  std::vector<double> window_nll_sums;  // one per window, in order
};

// `ids` without BOS; `ctx` text tokens per window; `windows_per_batch` windows run together.
PerplexityResult perplexity_chunks(const Model& model, const std::vector<TokenId>& ids, int64_t ctx,
                                   int64_t windows_per_batch = 8);

}  // namespace rankscope
