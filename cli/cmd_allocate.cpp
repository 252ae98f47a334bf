// rankscope sensitivity MODEL: the zero-cost proxy of every (layer, matrix, choice), as a table,
// CSV or JSON. rankscope allocate MODEL --target size.reduction_pct=P: the configuration of least
// predicted damage at a size target (an exact rank allocation), optionally evaluated beside the
// uniform-rank configuration of the same size.
#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <fstream>
#include <map>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/decompose.hpp"
#include "core/decompose/proxy.hpp"
#include "core/decompose/size.hpp"
#include "core/space/design_space.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/evaluator.hpp"
#include "db/open_store.hpp"
#include "search/allocate.hpp"
#include "search/strategy.hpp"

namespace rankscope::cli {

namespace {

// The non-dense choices of --choices with --method applied.
std::vector<Choice> proxy_choices(const Params& params) {
  std::vector<Choice> out;
  for (const auto& c : parse_space_choices(params.choices, parse_method(params.method))) {
    if (!c.dense) out.push_back(c.choice);
  }
  if (out.empty()) fail("--choices: no rank to assess (only dense)");
  return out;
}

// The model with weights, the factor cache and (for asvd/whiten) its calibration.
struct Setup {
  Model base;
  std::unique_ptr<FactorCache> cache;
  ActivationOptions activation;
};

Setup setup(const Params& params, const std::vector<Choice>& choices) {
  if (params.model.empty()) throw Error("no MODEL given");
  set_num_threads(params.threads);
  Setup s{load_model(params.model), nullptr, {}};
  if (!s.base.has_weights) fail("{}: no weights (shapes-only config.json); proxies need the weights", params.model);
  s.cache = std::make_unique<FactorCache>(params.cache_dir, svd_policy(params.svd_backend));
  s.activation.asvd_alpha = params.asvd_alpha;
  const bool aware = std::any_of(choices.begin(), choices.end(), [](const Choice& c) { return is_activation_aware(c.method); });
  if (aware) {
    if (params.calib.empty()) fail("@{} proxies need calibration activations: give --calib FILE|TASK", params.method);
    s.activation.calibration = calibrate(s.base, calibration_options(params, params.cache_dir));
  }
  return s;
}

std::string choice_text(const Choice& c) { return rank_string(c.rank) + "@" + std::string(method_name(c.method)); }

}  // namespace

int run_sensitivity(const Params& params) {
  const auto choices = proxy_choices(params);
  Setup s = setup(params, choices);
  ProxyCalculator proxies(s.base, *s.cache, s.activation);
  std::vector<Proxy> rows;
  for (int64_t l = 0; l < s.base.config.n_layer; ++l) {
    for (const auto kind : matrix_kinds(s.base.config.arch)) {
      for (const auto& c : choices) rows.push_back(proxies.proxy(l, kind, c));
    }
  }
  const std::string definition =
      "energy: sum of the squared singular values beyond the rank of W (svd, tucker), W D (asvd) or W S (whiten: "
      "the squared output error summed over the calibration tokens); relative: sqrt(energy / ||W D||_F^2); rms: "
      "sqrt(energy / tokens) for whiten, sqrt(energy / inputs) otherwise";
  nlohmann::json j = {{"model", params.model}, {"definition", definition}, {"proxies", nlohmann::json::array()}};
  if (s.activation.calibration) j["calibration"] = s.activation.calibration->info;
  std::string csv = "layer,matrix,choice,rank,full_rank,params_saved,relative,rms,energy\n";
  for (const auto& p : rows) {
    j["proxies"].push_back({{"layer", p.layer},
                            {"matrix", matrix_kind_name(p.kind)},
                            {"choice", choice_text(p.choice)},
                            {"rank", p.rank},
                            {"full_rank", p.full_rank},
                            {"params_saved", p.params_saved},
                            {"relative", p.relative},
                            {"rms", p.rms},
                            {"energy", p.energy}});
    csv += fmt::format("{},{},{},{},{},{},{:.9g},{:.9g},{:.9g}\n", p.layer, matrix_kind_name(p.kind), choice_text(p.choice),
                       p.rank, p.full_rank, p.params_saved, p.relative, p.rms, p.energy);
  }
  if (!params.out.empty()) {
    const std::filesystem::path out(params.out);
    const bool as_json = out.extension() == ".json";
    if (!as_json && out.extension() != ".csv") fail("--out {}: write .csv or .json", params.out);
    write_file_atomically(out, as_json ? j.dump(2) + "\n" : csv);
  }
  if (params.json) {
    fmt::print("{}\n", j.dump(2));
    return 0;
  }
  fmt::print("{:>5} {:<6} {:<14} {:>6} {:>12} {:>10} {:>12} {:>12}\n", "layer", "matrix", "choice", "rank", "params_saved",
             "relative", "rms", "energy");
  for (const auto& p : rows) {
    fmt::print("{:>5} {:<6} {:<14} {:>6} {:>12} {:>10.6f} {:>12.6g} {:>12.6g}\n", p.layer, matrix_kind_name(p.kind),
               choice_text(p.choice), p.rank, p.params_saved, p.relative, p.rms, p.energy);
  }
  fmt::print("({})\n", definition);
  if (!params.out.empty()) fmt::print("wrote {}\n", params.out);
  return 0;
}

namespace {

// --target size.reduction_pct=P (or >=P) or size.params=N (or <=N): the parameters to remove.
int64_t parameters_to_remove(const std::string& target, int64_t total) {
  const auto eq = target.find('=');
  if (eq == std::string::npos) fail("--target '{}': give size.reduction_pct=P or size.params=N", target);
  std::string metric = target.substr(0, eq);
  while (!metric.empty() && (metric.back() == '>' || metric.back() == '<' || metric.back() == ' ')) metric.pop_back();
  const std::string value_text = target.substr(eq + 1);
  char* end = nullptr;
  const double value = std::strtod(value_text.c_str(), &end);
  if (end == value_text.c_str() || *end != '\0' || !std::isfinite(value)) {
    fail("--target '{}': '{}' is not a number", target, value_text);
  }
  if (metric == "size.reduction_pct") {
    if (!(value > 0 && value < 100)) fail("--target '{}': a reduction in (0, 100) percent", target);
    return static_cast<int64_t>(std::ceil(value / 100.0 * static_cast<double>(total)));
  }
  if (metric == "size.params") {
    if (!(value > 0 && value < static_cast<double>(total))) fail("--target '{}': between 0 and the model's {} parameters", target, total);
    return total - static_cast<int64_t>(std::floor(value));
  }
  fail("--target '{}': allocate reaches size.reduction_pct or size.params", target);
}

using CellChoice = std::tuple<int64_t, MatrixKind, Choice>;

// The measured cost of each matrix decomposed alone in a study (space = single): log(value / base)
// of the first objective that is not a size (log(base / value) when maximised), at least 0; empty
// without --db.
std::map<CellChoice, double> measured_costs(const Params& params, const Model& base) {
  std::map<CellChoice, double> out;
  if (params.db.empty() && params.study.empty()) return out;
  if (params.db.empty() || params.study.empty()) fail("allocate: give both --db and --study (a study of space = single)");
  std::optional<Objective> quality;
  for (const auto& o : parse_objectives(params.objectives)) {
    if (o.metric.rfind("size.", 0) != 0) {
      quality = o;
      break;
    }
  }
  if (!quality) fail("allocate --db: give --objectives METRIC:min|max, the quality metric of the study (e.g. tinystories.ppl:min)");
  const auto store = open_results_store(params.db);
  const auto study = store->find_study(params.study);
  if (!study) fail("{}: no study '{}'", store->display(), params.study);
  const MetricRows rows = store->metric_rows(study->id, {quality->metric});
  std::optional<double> base_value;
  for (size_t i = 0; i < rows.configs.size(); ++i) {
    if (rows.configs[i].empty() && rows.statuses[i] == EvalStatus::done) base_value = rows.rows[i][0];
  }
  if (!base_value || !(*base_value > 0)) {
    fail("{}: study '{}' has no positive {} of the base model (run it with space = single)", store->display(), params.study,
         quality->metric);
  }
  for (size_t i = 0; i < rows.configs.size(); ++i) {
    if (rows.statuses[i] != EvalStatus::done || rows.configs[i].empty() || !(rows.rows[i][0] > 0)) continue;
    const Config c = parse_config(rows.configs[i], base.config);
    if (c.cells.size() != 1) continue;
    const auto& [cell, choice] = *c.cells.begin();
    const double ratio = quality->minimize ? rows.rows[i][0] / *base_value : *base_value / rows.rows[i][0];
    out[{cell.first, cell.second, choice}] = std::max(0.0, std::log(ratio));
  }
  if (out.empty()) fail("{}: study '{}' holds no single-matrix evaluations of {}", store->display(), params.study, quality->metric);
  return out;
}

}  // namespace

int run_allocate(const Params& params) {
  if (params.target.empty()) throw Error("--target is required, e.g. --target size.reduction_pct=20");
  const auto choices = proxy_choices(params);
  Setup s = setup(params, choices);
  const Model& base = s.base;
  const int64_t total = dense_param_count(base);
  const int64_t need = parameters_to_remove(params.target, total);
  ProxyCalculator proxies(base, *s.cache, s.activation);
  const auto measured = measured_costs(params, base);
  // Unmeasured cells: their proxy at the median ratio of measured cost to proxy.
  double scale = 1.0;
  if (!measured.empty()) {
    std::vector<double> ratios;
    for (const auto& [key, c] : measured) {
      const Proxy& p = proxies.proxy(std::get<0>(key), std::get<1>(key), std::get<2>(key));
      if (p.relative > 0) ratios.push_back(c / (p.relative * p.relative));
    }
    if (!ratios.empty()) {
      std::nth_element(ratios.begin(), ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2), ratios.end());
      scale = ratios[ratios.size() / 2];
    }
  }
  int64_t n_measured = 0;
  // Knob per (layer, matrix): digit 0 dense, then each choice; cost = the proxy (relative^2), saved
  // = the parameters it removes.
  std::vector<std::pair<int64_t, MatrixKind>> cells;
  std::vector<std::vector<double>> cost;
  std::vector<std::vector<int64_t>> saved;
  for (int64_t l = 0; l < base.config.n_layer; ++l) {
    for (const auto kind : matrix_kinds(base.config.arch)) {
      cells.push_back({l, kind});
      std::vector<double> c = {0.0};
      std::vector<int64_t> v = {0};
      for (const auto& choice : choices) {
        const Proxy& p = proxies.proxy(l, kind, choice);
        const auto m = measured.find({l, kind, choice});
        if (m != measured.end()) ++n_measured;
        c.push_back(m != measured.end() ? m->second : scale * p.relative * p.relative);
        v.push_back(p.params_saved);
      }
      cost.push_back(std::move(c));
      saved.push_back(std::move(v));
    }
  }
  const auto digits = allocate_min_cost(cost, saved, need);
  if (!digits) {
    fail("--target {}: even the smallest choice of every matrix removes too little (add smaller ranks to --choices)",
         params.target);
  }
  Config config;
  double predicted = 0;
  for (size_t k = 0; k < cells.size(); ++k) {
    const auto d = (*digits)[k];
    if (d == 0) continue;
    config.cells[cells[k]] = choices[static_cast<size_t>(d - 1)];
    predicted += cost[k][static_cast<size_t>(d)];
  }
  const auto size = size_report(base.config, total, config);
  // The uniform configuration of the same size: every matrix at one percentage of its rank, the
  // largest percentage (to 0.01 %) that removes at least as much.
  const Method method = parse_method(params.method);
  auto uniform_at = [&](double pct) {
    return parse_config(fmt::format("L*:all={}%@{}", pct, method_name(method)), base.config);
  };
  double lo = 0.01, hi = 100.0;
  if (size_report(base.config, total, uniform_at(lo)).params_after > size.params_after) {
    fail("no uniform percentage is as small as the allocation (1 rank a matrix is larger)");
  }
  for (int i = 0; i < 40; ++i) {
    const double mid = 0.5 * (lo + hi);
    (size_report(base.config, total, uniform_at(mid)).params_after <= size.params_after ? lo : hi) = mid;
  }
  const double uniform_pct = std::floor(lo * 100.0) / 100.0;
  const Config uniform = uniform_at(uniform_pct);
  const auto uniform_size = size_report(base.config, total, uniform);
  const std::string canonical = encode_config(config, base.config);
  const double uniform_predicted = proxies.config_score(uniform);
  fmt::print("target        {} ({} parameters of {} to remove)\n", params.target, need, total);
  if (!params.db.empty()) {
    fmt::print("costs         measured for {} of {} (matrix, choice) pairs in study {} ({}); the rest: proxy x {:.6g}\n",
               n_measured, cells.size() * choices.size(), params.study, params.db, scale);
  } else {
    fmt::print("costs         the proxies (sum of relative output errors squared; measured ones: --db/--study)\n");
  }
  fmt::print("allocation    {}\n", canonical.empty() ? "(base model)" : canonical);
  fmt::print("size          {} parameters, {:.4f} % smaller; cost {:.6g}\n", size.params_after, size.reduction_pct(),
             predicted);
  fmt::print("uniform       {} ({} parameters, {:.4f} % smaller; proxy sum {:.6g})\n", encode_config(uniform, base.config),
             uniform_size.params_after, uniform_size.reduction_pct(), uniform_predicted);
  if (params.evaluate.empty()) return 0;

  // Both configurations on the tasks, side by side.
  Params eval_params = params;
  eval_params.tasks = params.evaluate;
  const EvalRequest request = eval_request(eval_params);
  place_model(s.base, params);
  const Evaluator evaluator(base, request);
  std::vector<std::map<std::string, MetricResult>> results;
  for (const Config* c : {static_cast<const Config*>(&config), &uniform}) {
    const Model m = decompose_model(base, *c, *s.cache, nullptr, s.activation);
    std::map<std::string, MetricResult> by_name;
    for (const auto& r : evaluator.run(m, *c, {})) {
      for (const auto& metric : r.metrics) by_name[metric.name()] = metric;
    }
    results.push_back(std::move(by_name));
  }
  fmt::print("{:<28} {:>14} {:>14}\n", "metric", "allocation", "uniform");
  for (const auto& [name, m] : results[0]) {
    const auto it = results[1].find(name);
    fmt::print("{:<28} {:>14.6g} {:>14.6g}\n", name, m.value, it == results[1].end() ? NAN : it->second.value);
  }
  return 0;
}

}  // namespace rankscope::cli
