// The files lm-evaluation-harness writes with --output_path (and --log_samples), from rankscope's
// reports, so that tools reading lm-eval's output read rankscope's:
//  - results: {"results": {TASK: {"alias": TASK, "METRIC,none": v, "METRIC_stderr,none": s | "N/A"}},
//    "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config",
//    "date", "model_name", "model_name_sanitized", "total_evaluation_time_seconds", plus
//    rankscope's "model_hash" and "rankscope_version"};
//  - samples: one JSON line per document (doc_id, doc, target, arguments, resps, filtered_resps,
//    filter, metrics and the document's metric values), resps as strings as lm-eval's
//    sanitize_list writes them (Python's str of a float or bool).
// Metric names are lm-eval's where they differ (lambada_openai's ppl is "perplexity"); a metric
// lm-eval has no counterpart of keeps its rankscope name. Values are exactly the reports' numbers
// (null where a metric is NaN). docs/cli.md ("--output_path") says which file goes where.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evaluators/harness.hpp"
#include "evaluators/limit.hpp"

namespace rankscope {

// What lm-eval records about the run ("config" and the top-level keys).
struct LmEvalRun {
  std::string model;          // MODEL as given: lm-eval's model name (its pretrained= argument)
  std::string configuration;  // canonical configuration string ("" = the model as stored)
  std::string model_hash;     // rankscope's content hash of the model
  std::string device, dtype;  // where the forward passes ran, in which number type
  int64_t batch_size = 0;
  Limit limit;
  uint64_t fewshot_seed = 0;
  std::string version;        // rankscope's
  double date = 0.0;          // start, seconds since the epoch (lm-eval's "date")
  double seconds = 0.0;       // the evaluation's wall time
};

// The results JSON (keys in lm-eval's order).
nlohmann::ordered_json lm_eval_results(const std::vector<TaskReport>& reports, const LmEvalRun& run);

// One line of samples_<task>_<date_id>.jsonl, without the newline.
std::string lm_eval_sample_line(const DocSample& sample);

// Where lm-eval puts its files for --output_path PATH: PATH ending in ".json": the results at
// PATH's directory / <stem>_<date_id>.json and the samples in that directory; any other PATH is a
// directory: PATH/<model_name_sanitized>/results_<date_id>.json with the samples beside it.
struct LmEvalPaths {
  std::filesystem::path dir;      // where the samples go (created by the caller)
  std::filesystem::path results;  // the results file
};
LmEvalPaths lm_eval_paths(const std::filesystem::path& output_path, const std::string& model, const std::string& date_id);
// samples_<task>_<date_id>.jsonl in paths.dir (characters sanitize_model_name replaces replaced in
// the task's name too).
std::filesystem::path lm_eval_samples_path(const LmEvalPaths& paths, const std::string& task, const std::string& date_id);

// lm-eval's date_id: datetime.now().isoformat().replace(":", "-") in local time, e.g.
// 2024-05-01T12-34-56.123456 (the microseconds left out when they are 0, as isoformat does).
std::string lm_eval_date_id(std::chrono::system_clock::time_point when);

// lm-eval's sanitize_model_name: every run of the characters "<>:/|\?*[] becomes "__".
std::string lm_eval_sanitize_model_name(const std::string& name);

// Python's str() of a float (repr, shortest round trip): 1.0, -5.300000000000001, 1e-05, 1.5e+16,
// nan, inf.
std::string python_float_str(double value);

}  // namespace rankscope
