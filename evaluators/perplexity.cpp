#include "evaluators/perplexity.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/llama.hpp"

namespace rankscope {

namespace {

// -log softmax(row)[target] in float64.
double token_nll(const float* row, int64_t n_vocab, TokenId target) {
  double max = row[0];
  for (int64_t i = 1; i < n_vocab; ++i) max = std::max(max, static_cast<double>(row[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - max);
  return -(static_cast<double>(row[target]) - max - std::log(sum));
}

}  // namespace

PerplexityResult perplexity_chunks(const Model& model, const std::vector<TokenId>& ids, int64_t ctx,
                                   int64_t windows_per_batch) {
  const auto& c = model.config;
  if (c.arch != Arch::llama) fail("{}: perplexity needs a causal LM, not {}", model.dir.string(), c.architecture);
  if (!c.bos_token_id) fail("{}: the chunk protocol needs a BOS token and config.json names none", model.dir.string());
  if (ctx < 1 || ctx + 1 > c.n_ctx_train) {
    fail("window of {} tokens (+ BOS) does not fit the model's {} positions", ctx, c.n_ctx_train);
  }
  if (ids.empty()) fail("no tokens to score");
  const auto bos = static_cast<TokenId>(*c.bos_token_id);
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t n_windows = (n + ctx - 1) / ctx;

  PerplexityResult r;
  double sum_sq = 0.0;
  for (int64_t w0 = 0; w0 < n_windows; w0 += windows_per_batch) {
    const int64_t w1 = std::min(n_windows, w0 + windows_per_batch);
    std::vector<std::vector<TokenId>> batch;
    for (int64_t w = w0; w < w1; ++w) {
      std::vector<TokenId> input = {bos};
      input.insert(input.end(), ids.begin() + w * ctx, ids.begin() + std::min(n, (w + 1) * ctx));
      batch.push_back(std::move(input));
    }
    const Mat logits = llama_forward(model, batch);  // [sum of lengths x n_vocab]
    int64_t row = 0;
    for (const auto& input : batch) {
      double window_sum = 0.0;
      // Position j (BOS .. window[j-1]) predicts window[j] = input[j + 1].
      for (size_t j = 0; j + 1 < input.size(); ++j) {
        const double nll = token_nll(logits.row(row + static_cast<int64_t>(j)).data(), c.n_vocab, input[j + 1]);
        window_sum += nll;
        sum_sq += nll * nll;
      }
      r.window_nll_sums.push_back(window_sum);
      r.nll_sum += window_sum;
      r.n_scored += static_cast<int64_t>(input.size()) - 1;
      row += static_cast<int64_t>(input.size());
    }
  }
  r.mean_nll = r.nll_sum / static_cast<double>(r.n_scored);
  r.ppl = std::exp(r.mean_nll);
  const double variance = std::max(0.0, sum_sq / static_cast<double>(r.n_scored) - r.mean_nll * r.mean_nll);
  r.ppl_stderr = r.ppl * std::sqrt(variance / static_cast<double>(r.n_scored));
  return r;
}

}  // namespace rankscope
