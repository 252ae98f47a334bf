// rankscope eval MODEL [--config STR] --tasks T1,T2 ...: benchmark tasks, perplexity, fidelity,
// size and latency of a model, optionally decomposed; a table or JSON with every protocol.
#include <cmath>
#include <map>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/evaluator.hpp"

namespace rankscope::cli {

namespace {

// JSON numbers cannot be NaN: a missing value is null (its status says why).
nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string format_value(const MetricResult& m) {
  if (m.status != "ok") return m.status;
  const double v = m.value;
  if (std::fabs(v) >= 1e6 && std::fabs(v - std::round(v)) < 1e-9) return fmt::format("{:.0f}", v);
  return fmt::format("{:.6g}", v);
}

}  // namespace

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(',', start), s.size());
    std::string item = s.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

EvalRequest eval_request(const Params& params) {
  EvalRequest request;
  request.tasks = split_list(params.tasks);
  request.text_file = params.text;
  request.text_name = params.name;
  request.load.data_dir = params.data_dir;
  request.load.limit = params.limit;
  request.settings.num_fewshot = params.num_fewshot;
  request.settings.seed = params.seed;
  request.settings.bos = params.bos;
  request.settings.groups_per_batch = params.batch_size;
  request.settings.batch_size = params.batch_size;
  if (params.batch_tokens < 1) fail("--batch-tokens must be at least 1, not {}", params.batch_tokens);
  request.settings.batch_tokens = params.batch_tokens;
  request.settings.reuse_context = !params.no_context_reuse;
  request.ctx = params.ctx;
  request.ppl_protocol = params.ppl_protocol;
  request.latency = {.batch = params.latency_batch, .tokens = params.latency_tokens, .reps = params.latency_reps};
  request.fidelity_text = params.fidelity_text;
  request.cache_dir = params.cache_dir;
  return request;
}

int run_eval(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.tasks.empty() && params.text.empty()) throw Error("--tasks is required (or --text FILE)");
  if (params.num_fewshot < 0) throw Error("--num-fewshot must be >= 0");
  if (params.limit == 0 || params.limit < -1) throw Error("--limit must be a positive number of documents (or -1 for all)");
  if (params.ctx < 0) throw Error("--ctx must be >= 0");
  set_num_threads(params.threads);
  const EvalRequest request = eval_request(params);

  const bool size_only = !request.tasks.empty() && params.text.empty() &&
                         std::all_of(request.tasks.begin(), request.tasks.end(), [](const auto& t) { return t == "size"; });
  Model base = load_model(params.model, {.weights = !size_only});
  if (!size_only && !base.has_weights) {
    fail("{}: no weights (shapes-only config.json); only the size task runs on it", params.model);
  }
  if (base.has_weights) place_model(base, params);
  const Config config = parse_config(params.config, base.config);
  const Evaluator evaluator(base, request);

  std::unique_ptr<Model> decomposed;
  ActivationOptions activation;
  if (!config.is_base() && !size_only) {
    FactorCache cache(params.cache_dir, svd_policy(params.svd_backend));
    activation = activation_options(base, config, calibration_options(params, params.cache_dir), params.asvd_alpha);
    DecomposeStats stats;
    decomposed = std::make_unique<Model>(decompose_model(base, config, cache, &stats, activation));
    for (const auto& note : stats.activation_notes) fmt::print(stderr, "calibration: {}\n", note);
  }
  const Model& model = decomposed ? *decomposed : base;

  std::map<std::string, std::unique_ptr<Progress>> bars;
  const ProgressFn progress = [&](const std::string& label, int64_t done, int64_t total) {
    auto& bar = bars[label];
    if (!bar) bar = std::make_unique<Progress>(label);
    bar->update(done, total);
    if (done >= total) bar->finish();
  };
  auto reports = evaluator.run(model, config, progress);
  bars.clear();
  if (activation.calibration) {  // asvd/whiten results depend on the calibration: record it
    for (auto& r : reports) {
      r.protocol["calibration"] = activation.calibration->info;
      r.protocol["asvd_alpha"] = activation.asvd_alpha;
    }
  }

  const std::string canonical = encode_config(config, base.config);
  if (params.json) {
    nlohmann::json results = nlohmann::json::array();
    for (const auto& r : reports) {
      for (const auto& m : r.metrics) {
        results.push_back({{"name", m.name()},
                           {"task", m.task},
                           {"metric", m.metric},
                           {"value", number(m.value)},
                           {"stderr", number(m.stderr_)},
                           {"n", m.n},
                           {"status", m.status},
                           {"seconds", r.seconds},
                           {"model_hash", r.protocol.value("model_hash", "")},
                           {"config", canonical},
                           {"protocol", r.protocol}});
      }
    }
    nlohmann::json out = {{"model", params.model}, {"config", canonical}, {"results", results}};
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("model   {}\nconfig  {}\n", params.model, canonical.empty() ? "(base model)" : canonical);
  if (activation.calibration) {
    const auto& info = activation.calibration->info;
    fmt::print("calib   {} ({}): {} samples, {} tokens, seed {}\n", info.value("data", params.calib), info.value("part", ""),
               info.value("samples", int64_t{0}), info.value("tokens", int64_t{0}), info.value("seed", uint64_t{0}));
  }
  fmt::print("\n");
  fmt::print("{:<36} {:>14} {:>12} {:>8}  {}\n", "metric", "value", "stderr", "n", "protocol");
  std::vector<const MetricResult*> subjects;
  for (const auto& r : reports) {
    std::string proto;
    if (r.protocol.contains("protocol")) {
      proto = fmt::format("{} ctx {}", r.protocol["protocol"].get<std::string>(), r.protocol.value("ctx", int64_t{0}));
    } else if (r.protocol.contains("num_fewshot")) {
      proto = fmt::format("{}-shot{}", r.protocol["num_fewshot"].get<int64_t>(), r.protocol.value("bos", false) ? ", BOS" : "");
      const auto truncated = r.protocol.value("truncated", int64_t{0});
      if (truncated > 0) proto += fmt::format(", {} truncated", truncated);
    }
    for (const auto& m : r.metrics) {
      if (m.task != r.task) {  // per-subject rows go in their own table
        subjects.push_back(&m);
        continue;
      }
      const std::string err = std::isfinite(m.stderr_) ? fmt::format("± {:.4g}", m.stderr_) : "";
      fmt::print("{:<36} {:>14} {:>12} {:>8}  {}\n", m.name(), format_value(m), err, m.n, proto);
    }
  }
  if (!subjects.empty()) {
    fmt::print("\n{:<52} {:>10} {:>8}\n", "subject", "acc", "n");
    for (const auto* m : subjects) fmt::print("{:<52} {:>10} {:>8}\n", m->name(), format_value(*m), m->n);
  }
  return 0;
}

}  // namespace rankscope::cli
