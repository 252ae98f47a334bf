// bench/methods: the decomposition methods side by side at equal size (docs/methods.md).
// For each target size reduction (10, 20, 30, 40 % of the decomposable matrices' parameters) and
// each method, the uniform percentage rank P (over every decomposable matrix, P in 0.5 % steps)
// whose reduction is closest to the target; then
//  - stories260K-hf: TinyStories perplexity, chunks protocol (ctx 256, BOS per window) on the
//    file's first --windows windows; calibration: --calib-samples windows of 256 tokens drawn from
//    the second half of the same file (seed 0);
//  - bert-tiny-sst2: SST-2 dev accuracy (872 sentences); calibration: --bert-calib-samples
//    sentences of glue-sst2/alps_train.tsv (second half, seed 0, at most 64 tokens each).
// svd, asvd and whiten have the same parameter count at a given P, so they share a row; tucker
// (an r x r core more) gets its own P. Prints markdown tables and whether whiten <= asvd <= svd
// (perplexity) / whiten >= asvd >= svd (accuracy) holds in each row.
//
//   build/bench/methods [--data-dir DIR] [--cache-dir DIR] [--windows N] [--calib-samples N]
//                       [--bert-calib-samples N] [--alpha A] [--targets 10,20,30,40]
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/models/bert.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/size.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/harness.hpp"
#include "evaluators/perplexity.hpp"
#include "evaluators/tasks.hpp"

using namespace rankscope;

namespace {

const Method kMethods[] = {Method::svd, Method::asvd, Method::whiten, Method::tucker};

struct Point {
  double percent = 0;
  double reduction = 0;        // of the decomposable matrices' parameters, %
  double model_reduction = 0;  // of the whole model's parameters, %
};

// "12.5" for 12.5 %
std::string pct(double percent) {
  std::string s = rank_string({true, percent});
  s.pop_back();
  return s;
}

std::string config_text(double percent, Method m) {
  return fmt::format("L*:all={}%@{}", pct(percent), method_name(m));
}

Point size_at(const Model& base, double percent, Method m) {
  const auto r = size_report(base.config, base.n_params(), parse_config(config_text(percent, m), base.config));
  return {percent, 100.0 * static_cast<double>(r.decomposable_before - r.decomposable_after) /
                       static_cast<double>(r.decomposable_before),
          r.reduction_pct()};
}

// The uniform percentage (0.5 % steps) whose reduction is closest to `target`.
Point closest(const Model& base, double target, Method m) {
  Point best{};
  double best_gap = INFINITY;
  for (int i = 1; i <= 200; ++i) {
    const Point p = size_at(base, 0.5 * i, m);
    const double gap = std::fabs(p.reduction - target);
    if (gap < best_gap) {
      best_gap = gap;
      best = p;
    }
  }
  return best;
}

struct Study {
  std::string title, metric;
  bool lower_is_better = true;
  std::function<double(const Model&)> evaluate;
  // Optional second, continuous metric (lower is better), printed after the first.
  std::string metric2;
  std::function<double(const Model&)> evaluate2;
};

struct Values {
  double v = NAN, v2 = NAN;
};

void run_study(const Model& base, const Study& study, const ActivationOptions& activation, FactorCache& cache,
               const std::vector<double>& targets) {
  const auto t0 = std::chrono::steady_clock::now();
  std::map<std::string, Values> memo;
  const bool two = static_cast<bool>(study.evaluate2);
  auto measure = [&](const Model& model) {
    return Values{study.evaluate(model), two ? study.evaluate2(model) : NAN};
  };
  auto metric_of = [&](double percent, Method m) {
    const std::string text = config_text(percent, m);
    if (auto it = memo.find(text); it != memo.end()) return it->second;
    const Model model = decompose_model(base, parse_config(text, base.config), cache, nullptr, activation);
    return memo[text] = measure(model);
  };
  auto fmt_metric = [&](const Values& x) {
    std::string out = study.lower_is_better ? fmt::format("{:.3f}", x.v) : fmt::format("{:.4f}", x.v);
    if (two) out += fmt::format(" / {:.2e}", x.v2);
    return out;
  };
  const char* op = study.lower_is_better ? "<=" : ">=";
  const std::string name = two ? study.metric + " / " + study.metric2 : study.metric;
  fmt::print("### {}\n\n", study.title);
  fmt::print("dense: {} = {}\n\n", name, fmt_metric(measure(base)));
  fmt::print("| target | rank (svd/asvd/whiten) | size reduction: matrices / model | svd | asvd | whiten | tucker: rank, "
             "reduction, {} | whiten {} asvd {} svd ({}){} |\n",
             name, op, op, study.metric, two ? fmt::format(" | whiten <= asvd <= svd ({})", study.metric2) : "");
  fmt::print("| --- | --- | --- | --- | --- | --- | --- | --- |{}\n", two ? " --- |" : "");
  int holds = 0, holds2 = 0;
  auto verdict_of = [](bool wa, bool as, int& count) {
    if (wa && as) {
      ++count;
      return std::string("yes");
    }
    std::string v = "**no**:";
    if (!wa) v += " whiten worse than asvd";
    if (!wa && !as) v += ",";
    if (!as) v += " asvd worse than svd";
    return v;
  };
  for (double target : targets) {
    const Point p = closest(base, target, Method::svd);
    const Point pt = closest(base, target, Method::tucker);
    const Values v_svd = metric_of(p.percent, Method::svd);
    const Values v_asvd = metric_of(p.percent, Method::asvd);
    const Values v_whiten = metric_of(p.percent, Method::whiten);
    const Values v_tucker = metric_of(pt.percent, Method::tucker);
    auto better_eq = [&](double a, double b) { return study.lower_is_better ? a <= b : a >= b; };
    const std::string verdict =
        verdict_of(better_eq(v_whiten.v, v_asvd.v), better_eq(v_asvd.v, v_svd.v), holds);
    const std::string verdict2 =
        two ? " | " + verdict_of(v_whiten.v2 <= v_asvd.v2, v_asvd.v2 <= v_svd.v2, holds2) : "";
    fmt::print("| {:.0f} % | {}% | {:.2f} % / {:.2f} % | {} | {} | {} | {}%, {:.2f} %, {} | {}{} |\n", target,
               pct(p.percent), p.reduction, p.model_reduction, fmt_metric(v_svd), fmt_metric(v_asvd),
               fmt_metric(v_whiten), pct(pt.percent), pt.reduction, fmt_metric(v_tucker), verdict, verdict2);
    std::fflush(stdout);
  }
  fmt::print("\nwhiten {} asvd {} svd in {}: holds in {} of {} rows", op, op, study.metric, holds, targets.size());
  if (two) fmt::print("; whiten <= asvd <= svd in {}: {} of {}", study.metric2, holds2, targets.size());
  fmt::print(" ({:.1f} s)\n\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

// Label probabilities of a BERT classifier on every document of `task`.
Eigen::MatrixXd label_probs(const Model& model, const Task& task) {
  const auto& tok = model.require_tokenizer();
  Eigen::MatrixXd out(static_cast<int64_t>(task.docs.size()), static_cast<int64_t>(model.config.labels.size()));
  constexpr size_t kBatch = 64;
  for (size_t i = 0; i < task.docs.size(); i += kBatch) {
    std::vector<BertInput> batch;
    for (size_t j = i; j < std::min(task.docs.size(), i + kBatch); ++j) {
      batch.push_back(bert_encode(tok, task.docs[j].text_a, task.docs[j].text_b, model.config.n_ctx_train));
    }
    const Mat logits = bert_forward(model, batch).logits;
    for (int64_t r = 0; r < logits.rows(); ++r) {
      const Eigen::VectorXd l = logits.row(r).transpose().cast<double>();
      const Eigen::VectorXd e = (l.array() - l.maxCoeff()).exp();
      out.row(static_cast<int64_t>(i) + r) = (e / e.sum()).transpose();
    }
  }
  return out;
}

std::vector<double> parse_targets(const std::string& text) {
  std::vector<double> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    if (end > start) out.push_back(std::stod(text.substr(start, end - start)));
    start = end + 1;
  }
  return out;
}

void print_calibration(const Calibration& c, bool from_cache) {
  fmt::print("calibration: {} ({}), {} samples, {} tokens, seed {}, key {}{}\n", c.info.value("data", ""),
             c.info.value("part", ""), c.info.value("samples", int64_t{0}), c.info.value("tokens", int64_t{0}),
             c.info.value("seed", uint64_t{0}), c.key, from_cache ? " (from the cache)" : "");
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path data_dir = "../shared/data";
  std::filesystem::path cache_dir = "rankscope-cache";
  int64_t windows = 64;
  int64_t calib_samples = 64;
  int64_t bert_calib_samples = 512;
  double alpha = 0.5;
  std::string targets_text = "10,20,30,40";
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        fmt::print(stderr, "{}: {} needs a value\n", argv[0], argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--data-dir")) data_dir = next();
    else if (!std::strcmp(argv[i], "--cache-dir")) cache_dir = next();
    else if (!std::strcmp(argv[i], "--windows")) windows = std::atoll(next());
    else if (!std::strcmp(argv[i], "--calib-samples")) calib_samples = std::atoll(next());
    else if (!std::strcmp(argv[i], "--bert-calib-samples")) bert_calib_samples = std::atoll(next());
    else if (!std::strcmp(argv[i], "--alpha")) alpha = std::atof(next());
    else if (!std::strcmp(argv[i], "--targets")) targets_text = next();
    else {
      fmt::print(stderr,
                 "usage: {} [--data-dir DIR] [--cache-dir DIR] [--windows N] [--calib-samples N] "
                 "[--bert-calib-samples N] [--alpha A] [--targets 10,20,30,40]\n",
                 argv[0]);
      return 2;
    }
  }
  try {
    const auto targets = parse_targets(targets_text);
    FactorCache cache(cache_dir);
    fmt::print("bench/methods: uniform percentage rank over all decomposable matrices; asvd alpha {}; {} threads\n\n",
               alpha, num_threads());

    {  // stories260K-hf, TinyStories perplexity
      const Model base = load_model(data_dir / "stories260K-hf");
      const Task task = load_task("tinystories", {.data_dir = data_dir});
      const auto ids = base.require_tokenizer().encode(task.text);
      CalibrationOptions co;
      co.source = "tinystories";
      co.data_dir = data_dir;
      co.samples = calib_samples;
      co.ctx = 256;
      co.cache_dir = cache_dir;
      bool from_cache = false;
      const ActivationOptions activation{calibrate(base, co, &from_cache), alpha};
      fmt::print("## stories260K-hf: TinyStories perplexity\n\n");
      fmt::print("evaluation: chunks protocol, ctx 256, the first {} windows of {} ({} of its {} tokens)\n", windows,
                 task.files.front().string(), windows * 256, ids.size());
      print_calibration(*activation.calibration, from_cache);
      fmt::print("\n");
      Study study{"stories260K-hf, tinystories.ppl (lower is better)", "ppl", true, [&](const Model& m) {
                    PerplexityOptions o;
                    o.ctx = 256;
                    o.max_windows = windows;
                    return perplexity_chunks(m, ids, o).ppl;
                  }};
      run_study(base, study, activation, cache, targets);
    }
    {  // bert-tiny-sst2, SST-2 accuracy
      const Model base = load_model(data_dir / "bert-tiny-sst2");
      const Task task = load_task("sst2", {.data_dir = data_dir});
      CalibrationOptions co;
      co.source = (data_dir / "glue-sst2" / "alps_train.tsv").string();
      co.samples = bert_calib_samples;
      co.ctx = 64;
      co.cache_dir = cache_dir;
      bool from_cache = false;
      const ActivationOptions activation{calibrate(base, co, &from_cache), alpha};
      fmt::print("## bert-tiny-sst2: SST-2 accuracy\n\n");
      fmt::print("evaluation: {} ({} sentences), the classifier head\n", task.files.front().string(), task.docs.size());
      print_calibration(*activation.calibration, from_cache);
      fmt::print("\n");
      // SST-2 accuracy moves by single sentences here; the KL divergence of the label distribution
      // from the dense model's, averaged over the dev set, is the continuous view of the same runs.
      const Eigen::MatrixXd dense = label_probs(base, task);
      Study study{"bert-tiny-sst2, sst2.acc (higher is better) / mean KL(dense || decomposed) on SST-2 dev (lower is better)",
                  "acc", false,
                  [&](const Model& m) {
                    EvalSettings s;
                    s.batch_size = 64;
                    return evaluate_task(m, task, s).metrics.front().value;
                  },
                  "KL", [&](const Model& m) {
                    const Eigen::MatrixXd p = label_probs(m, task);
                    return (dense.array() * (dense.array().max(1e-300).log() - p.array().max(1e-300).log()))
                               .rowwise().sum().mean();
                  }};
      run_study(base, study, activation, cache, targets);
    }
  } catch (const Error& e) {
    fmt::print(stderr, "methods: {}\n", e.what());
    return 1;
  }
  return 0;
}
