#include "evaluators/efficiency.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <unistd.h>

#include "core/models/bert.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/models/llama.hpp"
#include "core/decompose/size.hpp"

namespace rankscope {

TaskReport size_metrics(const Model& base, const Config& config) {
  const SizeReport s = size_report(base.config, dense_param_count(base), config);
  TaskReport r{.task = "size"};
  auto add = [&](const char* metric, double value) {
    r.metrics.push_back({.task = "size", .metric = metric, .value = value, .n = 1});
  };
  add("params", static_cast<double>(s.params_after));
  add("bytes", static_cast<double>(s.bytes_after()));
  add("reduction_pct", s.reduction_pct());
  add("flops_per_token", static_cast<double>(s.flops_per_token_after));
  int64_t not_smaller = 0;
  for (const auto& f : s.factored) not_smaller += f.not_smaller() ? 1 : 0;
  r.protocol = {{"task", "size"},
                {"params_before", s.params_before},
                {"flops_per_token_before", s.flops_per_token_before},
                {"bytes_per_param", s.bytes_per_param},
                {"matrices_decomposed", s.n_decomposed},
                {"matrices_stored_factored", s.n_stored_factored},
                {"matrices_not_smaller_than_dense", not_smaller},
                {"definition", "parameters as run (factors counted, also those a decomposed checkpoint stores; tied "
                               "embeddings once); before = the dense model; bytes in the storage dtype; "
                               "reduction = 100 * removed / total; FLOPs = 2 * weight-product MACs per token"}};
  if (s.n_stored_factored > 0) r.protocol["checkpoint_config"] = base.config.rankscope_config;
  return r;
}

TaskReport measure_latency(const Model& model, const LatencyOptions& options) {
  if (!model.has_weights) fail("{}: no weights (shapes-only config.json); cannot measure latency", model.dir.string());
  const auto& c = model.config;
  if (options.batch < 1 || options.tokens < 1) fail("latency: batch and tokens must be positive");
  if (options.tokens > c.n_ctx_train) fail("latency: {} tokens exceed the model's {} positions", options.tokens, c.n_ctx_train);
  // Deterministic ordinary token ids (past the specials at the start of every vocabulary).
  std::vector<std::vector<TokenId>> seqs(static_cast<size_t>(options.batch));
  for (int64_t b = 0; b < options.batch; ++b) {
    for (int64_t t = 0; t < options.tokens; ++t) {
      seqs[static_cast<size_t>(b)].push_back(static_cast<TokenId>(1000 + (b * 7919 + t * 104729) % std::max<int64_t>(1, c.n_vocab - 1000)) %
                                             static_cast<TokenId>(c.n_vocab));
    }
  }
  std::vector<BertInput> bert_inputs;
  for (const auto& s : seqs) bert_inputs.push_back({s, {}, {}});
  auto run_once = [&] {
    // Logits stay on the device: the time is the forward pass's, not a download's.
    if (c.arch == Arch::llama) {
      (void)llama_logits(model, seqs);
    } else {
      (void)bert_forward(model, bert_inputs);
    }
    model.runtime().synchronize();
  };
  for (int64_t i = 0; i < options.warmup; ++i) run_once();
  std::vector<double> ms;
  for (int64_t i = 0; i < std::max<int64_t>(1, options.reps); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run_once();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  const double median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  const double tokens = static_cast<double>(options.batch * options.tokens);
  TaskReport r{.task = "latency"};
  r.metrics.push_back({.task = "latency", .metric = "ms_per_batch", .value = median, .n = static_cast<int64_t>(n)});
  r.metrics.push_back({.task = "latency", .metric = "ms_per_token", .value = median / tokens, .n = static_cast<int64_t>(n)});
  r.metrics.push_back({.task = "latency", .metric = "tokens_per_s", .value = tokens / (median / 1000.0), .n = static_cast<int64_t>(n)});
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  r.protocol = {{"task", "latency"},
                {"pass", "forward (prefill) of batch x tokens, logits of every position"},
                {"batch", options.batch},
                {"tokens", options.tokens},
                {"warmup", options.warmup},
                {"reps", n},
                {"threads", num_threads()},
                {"ms_min", sorted.front()},
                {"ms_max", sorted.back()},
                {"host", host},
                {"hardware_threads", std::thread::hardware_concurrency()}};
  return r;
}

}  // namespace rankscope
