#include "evaluators/lm_eval_output.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <ctime>
#include <map>
#include <regex>

#include <fmt/format.h>

namespace rankscope {

using ojson = nlohmann::ordered_json;  // keys in lm-eval's order, not sorted

namespace {

// Versions of the lm-eval task YAMLs whose prompts and metrics rankscope reproduces
// (metadata.version); tasks lm-eval does not have are "N/A", as lm-eval writes for groups.
nlohmann::json task_version(const std::string& task) {
  static const std::map<std::string, double> versions = {
      {"arc_easy", 1.0},       {"arc_challenge", 1.0},  {"hellaswag", 1.0}, {"winogrande", 1.0}, {"piqa", 1.0},
      {"boolq", 2.0},          {"openbookqa", 1.0},     {"mmlu", 1.0},      {"truthfulqa_mc1", 2.0},
      {"truthfulqa_mc2", 2.0}, {"lambada_openai", 1.0}, {"sst2", 1.0},      {"mrpc", 1.0},       {"wikitext", 2.0}};
  const std::string key = task.starts_with("mmlu_") ? "mmlu" : task;
  const auto it = versions.find(key);
  return it != versions.end() ? nlohmann::json(it->second) : nlohmann::json("N/A");
}

// The metric as lm-eval names it: lambada's ppl is "perplexity"; the others keep their names.
std::string lm_eval_metric(const TaskReport& report, const std::string& metric) {
  if (report.output_type == "loglikelihood" && metric == "ppl") return "perplexity";
  return metric;
}

bool higher_is_better(const std::string& metric) {
  static const char* const kHigher[] = {"acc", "acc_norm", "f1", "top1", "reduction_pct", "tokens_per_s"};
  for (const char* m : kHigher) {
    if (metric == m) return true;
  }
  return false;  // perplexities, bits per byte, KL, sizes, FLOPs, milliseconds
}

// lm-eval's aggregation of the metric over documents (metric_list[].aggregation).
std::string aggregation(const std::string& metric) {
  if (metric == "acc" || metric == "acc_norm") return "mean";
  if (metric == "perplexity") return "perplexity";
  if (metric == "word_perplexity" || metric == "byte_perplexity") return "weighted_perplexity";
  if (metric == "bits_per_byte" || metric == "f1") return metric;
  return "rankscope";  // a measurement of the model itself, or a chunk protocol's perplexity
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// lm-eval's sanitize_list: every leaf as Python's str() of it.
ojson sanitized(const nlohmann::json& value) {
  if (value.is_array()) {
    ojson out = ojson::array();
    for (const auto& item : value) out.push_back(sanitized(item));
    return out;
  }
  if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
  if (value.is_number_float()) return python_float_str(value.get<double>());
  if (value.is_number()) return value.dump();
  if (value.is_null()) return "nan";  // a NaN response (JSON has none)
  return value.is_string() ? value.get<std::string>() : value.dump();
}

}  // namespace

std::string python_float_str(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest round-trip digits (what Python's repr uses), then Python's layout: positional
  // for decimal exponents -4 <= e < 16, else d.ddde+XX with at least two exponent digits.
  std::array<char, 64> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value, std::chars_format::scientific);
  std::string sci(buf.data(), ec == std::errc() ? end : buf.data());
  const size_t e_at = sci.find('e');
  const bool negative = sci[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e_at; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  const int exponent = std::stoi(sci.substr(e_at + 1));
  std::string out = negative ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) {
      out += "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else {
      const auto int_len = static_cast<size_t>(exponent) + 1;
      if (digits.size() <= int_len) {
        out += digits + std::string(int_len - digits.size(), '0') + ".0";
      } else {
        out += digits.substr(0, int_len) + "." + digits.substr(int_len);
      }
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (digits.size() > 1) out += "." + digits.substr(1);
  return out + fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
}

std::string lm_eval_sanitize_model_name(const std::string& name) {
  static const std::regex kUnsafe(R"(["<>:/|\\?*\[\]]+)");
  return std::regex_replace(name, kUnsafe, "__");
}

std::string lm_eval_date_id(std::chrono::system_clock::time_point when) {
  const auto seconds = std::chrono::time_point_cast<std::chrono::seconds>(when);
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(when - seconds).count();
  const std::time_t t = std::chrono::system_clock::to_time_t(seconds);
  std::tm local{};
  localtime_r(&t, &local);
  std::string id = fmt::format("{:04d}-{:02d}-{:02d}T{:02d}-{:02d}-{:02d}", local.tm_year + 1900, local.tm_mon + 1,
                               local.tm_mday, local.tm_hour, local.tm_min, local.tm_sec);
  if (micros != 0) id += fmt::format(".{:06d}", micros);
  return id;
}

LmEvalPaths lm_eval_paths(const std::filesystem::path& output_path, const std::string& model, const std::string& date_id) {
  if (output_path.extension() == ".json") {
    const auto dir = output_path.parent_path().empty() ? std::filesystem::path(".") : output_path.parent_path();
    return {dir, dir / (output_path.stem().string() + "_" + date_id + ".json")};
  }
  const auto dir = output_path / lm_eval_sanitize_model_name(model);
  return {dir, dir / ("results_" + date_id + ".json")};
}

std::filesystem::path lm_eval_samples_path(const LmEvalPaths& paths, const std::string& task, const std::string& date_id) {
  // A JSONL task's name is the user's: path separators in it must not leave the directory.
  return paths.dir / ("samples_" + lm_eval_sanitize_model_name(task) + "_" + date_id + ".jsonl");
}

ojson lm_eval_results(const std::vector<TaskReport>& reports, const LmEvalRun& run) {
  ojson results = ojson::object(), groups = ojson::object(), configs = ojson::object(), versions = ojson::object(),
        n_shot = ojson::object(), better = ojson::object(), n_samples = ojson::object();
  for (const auto& r : reports) {
    const int64_t k = r.protocol.value("num_fewshot", int64_t{0});
    ojson metric_list = ojson::array();
    std::vector<std::string> subtasks;
    for (const auto& m : r.metrics) {
      const std::string metric = lm_eval_metric(r, m.metric);
      auto& entry = results[m.task];
      if (!entry.contains("alias")) entry["alias"] = m.task;
      entry[metric + ",none"] = number_or_null(m.value);
      entry[metric + "_stderr,none"] = std::isfinite(m.stderr_) ? ojson(m.stderr_) : ojson("N/A");
      better[m.task][metric] = higher_is_better(metric);
      if (m.task != r.task) {  // a subject of mmlu: a task of its own in lm-eval
        if (std::find(subtasks.begin(), subtasks.end(), m.task) == subtasks.end()) subtasks.push_back(m.task);
        versions[m.task] = task_version(m.task);
        n_shot[m.task] = k;
        continue;
      }
      metric_list.push_back({{"metric", metric}, {"aggregation", aggregation(metric)}, {"higher_is_better", higher_is_better(metric)}});
    }
    groups[r.task] = subtasks;
    versions[r.task] = task_version(r.task);
    n_shot[r.task] = k;
    ojson config = {{"task", r.task},
                    {"dataset_path", ojson(r.protocol.value("files", nlohmann::json::array()))},
                    {"output_type", r.output_type.empty() ? ojson(nullptr) : ojson(r.output_type)},
                    {"num_fewshot", k},
                    {"metric_list", metric_list},
                    {"metadata", {{"version", task_version(r.task)}}},
                    {"rankscope_protocol", r.protocol}};
    if (r.protocol.contains("prompt")) config["doc_to_text"] = r.protocol["prompt"];
    if (r.protocol.contains("target_delimiter")) config["target_delimiter"] = r.protocol["target_delimiter"];
    if (r.protocol.contains("fewshot_delimiter")) config["fewshot_delimiter"] = r.protocol["fewshot_delimiter"];
    configs[r.task] = config;
    if (r.n_original > 0) n_samples[r.task] = {{"original", r.n_original}, {"effective", r.n_effective}};
  }
  const std::string model_args = "pretrained=" + run.model + (run.configuration.empty() ? "" : ",config=" + run.configuration);
  return {{"results", results},
          {"group_subtasks", groups},
          {"configs", configs},
          {"versions", versions},
          {"n-shot", n_shot},
          {"higher_is_better", better},
          {"n-samples", n_samples},
          {"config",
           {{"model", "rankscope"},
            {"model_args", model_args},
            {"model_path", run.model},
            {"configuration", run.configuration},
            {"device", run.device},
            {"dtype", run.dtype},
            {"batch_size", run.batch_size},
            {"batch_sizes", ojson::array()},
            {"limit", run.limit.all() ? ojson(nullptr) : ojson(run.limit)},
            {"bootstrap_iters", 0},  // rankscope's standard errors are analytic, none bootstrapped
            {"fewshot_seed", run.fewshot_seed}}},
          {"model_source", "rankscope"},
          {"model_name", run.model},
          {"model_name_sanitized", lm_eval_sanitize_model_name(run.model)},
          {"model_hash", run.model_hash},
          {"date", run.date},
          {"total_evaluation_time_seconds", fmt::format("{}", run.seconds)},
          {"rankscope_version", run.version}};
}

std::string lm_eval_sample_line(const DocSample& sample) {
  ojson arguments = ojson::object(), resps = ojson::array(), filtered = ojson::array();
  for (size_t i = 0; i < sample.requests.size(); ++i) {
    const auto& request = sample.requests[i];
    auto& args = arguments["gen_args_" + std::to_string(i)];
    for (size_t j = 0; j < request.arguments.size(); ++j) args["arg_" + std::to_string(j)] = request.arguments[j];
    resps.push_back(ojson::array({sanitized(request.response)}));  // one response per request (repeats = 1)
    filtered.push_back(sanitized(request.response));
  }
  ojson names = ojson::array();
  for (const auto& [name, value] : sample.metrics.items()) names.push_back(name);
  ojson line = {{"doc_id", sample.doc_id}, {"doc", sample.doc},   {"target", sample.target},
                {"arguments", arguments},   {"resps", resps},       {"filtered_resps", filtered},
                {"filter", "none"},         {"metrics", names}};
  for (const auto& [name, value] : sample.metrics.items()) line[name] = value;
  return line.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

}  // namespace rankscope
