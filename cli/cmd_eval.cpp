// rankscope eval MODEL [--config STR] --tasks T1,T2 ...: benchmark tasks, perplexity, fidelity,
// size and latency of a model, optionally decomposed; a table or JSON with every protocol.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/factor_cache.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/evaluator.hpp"
#include "evaluators/lm_eval_output.hpp"

#ifndef RANKSCOPE_VERSION
#error "RANKSCOPE_VERSION (CMake's PROJECT_VERSION) must be defined"
#endif

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

// Makes the directory lm-eval would write into for --output-path (an error naming the path when
// it cannot be made or written) and returns where the files go.
LmEvalPaths prepare_output(const Params& params, const std::string& date_id) {
  const LmEvalPaths paths = lm_eval_paths(params.output_path, params.model, date_id);
  std::error_code ec;
  std::filesystem::create_directories(paths.dir, ec);
  if (ec) fail("--output-path {}: cannot create {} ({})", params.output_path, paths.dir.string(), ec.message());
  if (!std::filesystem::is_directory(paths.dir, ec)) fail("--output-path {}: {} is not a directory", params.output_path, paths.dir.string());
  if (::access(paths.dir.c_str(), W_OK) != 0) {
    fail_errno(errno, "--output-path {}: cannot write into {}", params.output_path, paths.dir.string());
  }
  return paths;
}

// The results JSON and, with --log-samples, one samples file per task (per MMLU subject, as lm-eval
// writes its subtasks), each written atomically; their paths on stderr.
void write_lm_eval_output(const LmEvalPaths& paths, const std::string& date_id, const std::vector<TaskReport>& reports,
                          const Params& params, const std::string& canonical, std::chrono::system_clock::time_point start,
                          double seconds) {
  LmEvalRun run{.model = params.model,
                .configuration = canonical,
                .device = params.device,
                .dtype = params.dtype,
                .batch_size = params.batch_size,
                .limit = params.limit,
                .fewshot_seed = params.seed,
                .version = RANKSCOPE_VERSION,
                .date = std::chrono::duration<double>(start.time_since_epoch()).count(),
                .seconds = seconds};
  for (const auto& r : reports) {  // where the forward passes ran (size alone runs none)
    if (run.model_hash.empty()) run.model_hash = r.protocol.value("model_hash", "");
    if (r.protocol.contains("device")) {
      run.device = r.protocol.value("device", params.device);
      run.dtype = r.protocol.value("dtype", params.dtype);
      break;
    }
  }
  write_file_atomically(paths.results, lm_eval_results(reports, run).dump(2) + "\n");
  fmt::print(stderr, "wrote {}\n", paths.results.string());
  if (!params.log_samples) return;
  std::map<std::string, std::string> lines;  // task -> its samples file's content
  std::vector<std::string> order;
  for (const auto& r : reports) {
    for (const auto& sample : r.samples) {
      if (!lines.contains(sample.task)) order.push_back(sample.task);
      lines[sample.task] += lm_eval_sample_line(sample) + "\n";
    }
  }
  for (const auto& task : order) {
    const auto path = lm_eval_samples_path(paths, task, date_id);
    write_file_atomically(path, lines[task]);
    fmt::print(stderr, "wrote {}\n", path.string());
  }
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
  if (params.ctx < 0) throw Error("--ctx must be >= 0");
  const auto start = std::chrono::system_clock::now();
  // --output-path: where lm-eval would write, made before anything runs so that a path that
  // cannot be written fails at once, not after the evaluation.
  const std::string date_id = lm_eval_date_id(start);
  std::optional<LmEvalPaths> output;
  if (!params.output_path.empty()) output = prepare_output(params, date_id);
  set_num_threads(params.threads);
  EvalRequest request = eval_request(params);
  request.settings.log_samples = params.log_samples;

  const bool size_only = !request.tasks.empty() && params.text.empty() &&
                         std::all_of(request.tasks.begin(), request.tasks.end(), [](const auto& t) { return t == "size"; });
  Model base = load_model(params.model, {.weights = !size_only});
  if (!size_only && !base.has_weights) {
    fail("{}: no weights (shapes-only config.json); only the size task runs on it", params.model);
  }
  if (base.has_weights) place_model(base, params);
  const Config config = parse_config(params.config, base.config);
  const Evaluator evaluator(base, request);

  ActivationOptions activation;
  const std::unique_ptr<Model> decomposed = size_only ? nullptr : configured_model(base, config, params, &activation);
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
  if (output) {
    const double seconds = std::chrono::duration<double>(std::chrono::system_clock::now() - start).count();
    write_lm_eval_output(*output, date_id, reports, params, canonical, start, seconds);
  }
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
