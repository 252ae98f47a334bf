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
      "sqrt(energy / tokens) for whiten, sqrt(energy / inputs) otherwise; propagated (whiten): the error carried to "
      "the output of its attention or MLP block, as a share of that output's norm (docs/search.md), relative "
      "otherwise";
  nlohmann::json j = {{"model", params.model}, {"definition", definition}, {"proxies", nlohmann::json::array()}};
  if (s.activation.calibration) j["calibration"] = s.activation.calibration->info;
  std::string csv = "layer,matrix,choice,rank,full_rank,params_saved,relative,propagated,rms,energy\n";
  for (const auto& p : rows) {
    j["proxies"].push_back({{"layer", p.layer},
                            {"matrix", matrix_kind_name(p.kind)},
                            {"choice", choice_text(p.choice)},
                            {"rank", p.rank},
                            {"full_rank", p.full_rank},
                            {"params_saved", p.params_saved},
                            {"relative", p.relative},
                            {"propagated", p.propagated},
                            {"rms", p.rms},
                            {"energy", p.energy}});
    csv += fmt::format("{},{},{},{},{},{},{:.9g},{:.9g},{:.9g},{:.9g}\n", p.layer, matrix_kind_name(p.kind),
                       choice_text(p.choice), p.rank, p.full_rank, p.params_saved, p.relative, p.propagated, p.rms,
                       p.energy);
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
  fmt::print("{:>5} {:<6} {:<14} {:>6} {:>12} {:>10} {:>10} {:>12} {:>12}\n", "layer", "matrix", "choice", "rank",
             "params_saved", "relative", "propagated", "rms", "energy");
  for (const auto& p : rows) {
    fmt::print("{:>5} {:<6} {:<14} {:>6} {:>12} {:>10.6f} {:>10.6f} {:>12.6g} {:>12.6g}\n", p.layer, matrix_kind_name(p.kind),
               choice_text(p.choice), p.rank, p.params_saved, p.relative, p.propagated, p.rms, p.energy);
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

// What a study measured: log(value / base) of the first objective that is not a size
// (log(base / value) when maximised) for every complete evaluation, by its cells.
struct StudyCosts {
  std::map<CellChoice, double> single;  // each matrix decomposed alone, at least 0
  std::vector<std::pair<std::vector<CellChoice>, double>> multi;  // configurations of several cells
  // Without the base model's value in the study: every configuration is in `multi` with y =
  // log(value) (or -log(value) when maximised), fitted with an intercept.
  bool relative = true;
};

// The measured costs of a study: its single-matrix evaluations (space = single) and, for the
// refit, every configuration of several matrices. Empty without --db.
StudyCosts measured_costs(const Params& params, const Model& base) {
  StudyCosts out;
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
  if (base_value && !(*base_value > 0)) {
    fail("{}: study '{}': the base model's {} is {}, not positive", store->display(), params.study, quality->metric,
         *base_value);
  }
  out.relative = base_value.has_value();
  for (size_t i = 0; i < rows.configs.size(); ++i) {
    if (rows.statuses[i] != EvalStatus::done || rows.configs[i].empty() || !(rows.rows[i][0] > 0)) continue;
    const Config c = parse_config(rows.configs[i], base.config);
    const double ratio = quality->minimize ? rows.rows[i][0] / base_value.value_or(1.0)
                                           : base_value.value_or(1.0) / rows.rows[i][0];
    std::vector<CellChoice> cells;
    for (const auto& [cell, choice] : c.cells) cells.emplace_back(cell.first, cell.second, choice);
    if (cells.size() == 1 && out.relative) {
      out.single[cells.front()] = std::max(0.0, std::log(ratio));
    } else {
      out.multi.emplace_back(std::move(cells), std::log(ratio));
    }
  }
  if (out.single.empty() && out.multi.empty()) {
    fail("{}: study '{}' holds no complete evaluation of a decomposed configuration with {}", store->display(), params.study,
         quality->metric);
  }
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
  const auto studied = measured_costs(params, base);
  const auto& measured = studied.single;
  auto proxy_cost = [&](const CellChoice& key) {
    const Proxy& p = proxies.proxy(std::get<0>(key), std::get<1>(key), std::get<2>(key));
    return p.propagated * p.propagated;
  };
  // Unmeasured cells: their proxy at the median ratio of measured cost to proxy; without
  // single-matrix measurements, the least-squares scale of the configurations' proxy sums.
  double scale = 1.0;
  if (!measured.empty()) {
    std::vector<double> ratios;
    for (const auto& [key, c] : measured) {
      if (proxy_cost(key) > 0) ratios.push_back(c / proxy_cost(key));
    }
    if (!ratios.empty()) {
      std::nth_element(ratios.begin(), ratios.begin() + static_cast<std::ptrdiff_t>(ratios.size() / 2), ratios.end());
      scale = ratios[ratios.size() / 2];
    }
  } else if (!studied.multi.empty()) {
    // y ~ s x (through the origin) with a base, y ~ b + s x without; x a configuration's proxy sum.
    double sx = 0, sy = 0, n = 0;
    if (!studied.relative) {
      for (const auto& [cells, y] : studied.multi) {
        for (const auto& key : cells) sx += proxy_cost(key);
        sy += y;
        n += 1;
      }
    }
    const double mx = n > 0 ? sx / n : 0.0, my = n > 0 ? sy / n : 0.0;
    double xy = 0, xx = 0;
    for (const auto& [cells, y] : studied.multi) {
      double x = 0;
      for (const auto& key : cells) x += proxy_cost(key);
      xy += (x - mx) * (y - my);
      xx += (x - mx) * (x - mx);
    }
    if (xx > 0 && xy > 0) scale = xy / xx;
  }
  int64_t n_measured = 0;
  // Knob per (layer, matrix): digit 0 dense, then each choice; cost = the measured one, else the
  // proxy (propagated^2) at the scale, saved = the parameters it removes.
  std::vector<std::pair<int64_t, MatrixKind>> cells;
  std::vector<std::vector<double>> cost;
  std::vector<std::vector<int64_t>> saved;
  std::map<CellChoice, std::pair<size_t, size_t>> where;  // (knob, digit) of each (cell, choice)
  for (int64_t l = 0; l < base.config.n_layer; ++l) {
    for (const auto kind : matrix_kinds(base.config.arch)) {
      cells.push_back({l, kind});
      std::vector<double> c = {0.0};
      std::vector<int64_t> v = {0};
      for (const auto& choice : choices) {
        const Proxy& p = proxies.proxy(l, kind, choice);
        const auto m = measured.find({l, kind, choice});
        if (m != measured.end()) ++n_measured;
        where[{l, kind, choice}] = {cells.size() - 1, c.size()};
        c.push_back(m != measured.end() ? m->second : scale * p.propagated * p.propagated);
        v.push_back(p.params_saved);
      }
      cost.push_back(std::move(c));
      saved.push_back(std::move(v));
    }
  }
  // Configurations of several matrices: every cost refitted from them, the above as the prior
  // (ridge regression, search/allocate.hpp). Configurations with a cell outside the choices
  // (another rank or method) are left out.
  std::optional<CostFit> refit;
  int64_t n_multi = 0, n_left_out = 0;
  if (!studied.multi.empty()) {
    std::vector<std::pair<size_t, size_t>> items;  // item -> (knob, digit)
    std::map<std::pair<size_t, size_t>, int64_t> item_of;
    std::vector<double> prior;
    std::vector<std::vector<int64_t>> rows;
    std::vector<double> y;
    for (const auto& [evaluation, value] : studied.multi) {
      std::vector<int64_t> row;
      bool usable = true;
      for (const auto& key : evaluation) {
        const auto it = where.find(key);
        if (it == where.end()) {
          usable = false;
          break;
        }
        auto [slot, fresh] = item_of.emplace(it->second, static_cast<int64_t>(items.size()));
        if (fresh) {
          items.push_back(it->second);
          prior.push_back(cost[it->second.first][it->second.second]);
        }
        row.push_back(slot->second);
      }
      if (!usable) {
        ++n_left_out;
        continue;
      }
      rows.push_back(std::move(row));
      y.push_back(value);
    }
    n_multi = static_cast<int64_t>(rows.size());
    if (!rows.empty()) {
      refit = refit_costs(prior, rows, y, !studied.relative);
      for (size_t i = 0; i < items.size(); ++i) cost[items[i].first][items[i].second] = refit->cost[i];
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
    fmt::print("costs         measured alone for {} of {} (matrix, choice) pairs in study {} ({}); the rest: proxy x {:.6g}\n",
               n_measured, cells.size() * choices.size(), params.study, params.db, scale);
    if (refit) {
      fmt::print("              refitted from {} configurations{} ({} pairs; ridge lambda {:g}; "
                 "leave-one-out R^2 {:.3f}, the prior's R^2 {:.3f}){}\n",
                 n_multi, studied.relative ? " of several matrices" : " (no base model evaluation: with an intercept)",
                 refit->n_items_fitted, refit->lambda, refit->loo_r2, refit->prior_r2,
                 n_left_out > 0 ? fmt::format("; {} with other choices left out", n_left_out) : "");
    }
  } else {
    fmt::print("costs         the proxies (sum of propagated errors squared, docs/search.md; measured ones: --db/--study)\n");
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
