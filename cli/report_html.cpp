// The interactive report page: the data as one JSON object, drawn by an inline script.
//
// The embedded object (`report_data`):
//   study, store, settings, counts {done, failed, nan, pruned, claimed}, include_pruned, where,
//   objectives  [{metric, minimize}]              the page's default pair (y first, x second)
//   metrics     [{name, minimize, objective}]     every metric stored in the study, by name
//   protocols   {shared: [per metric: the protocol keys every evaluation of it agrees on, or null],
//                own: [the rest of one evaluation's protocol, deduplicated; "config": true stands for
//                the evaluation's own configuration string]}
//   evals       [{id, config, label, status, error, wall_s, v, se, n, p}]   v/se/n/p per metric:
//               value, standard error, examples (null: the evaluation lacks the metric) and the
//               index into protocols.own (-1: no protocol)
//   heatmap     {mode: "single" | "importance" | "none", reason, model, layers, matrices, ...}
// Protocols are split because most of a protocol is the same for every evaluation of a metric
// (task, shots, seed, versions) and only a little differs (the configuration): stored whole, the
// protocols of 10,000 evaluations would be most of the file.
#include "cli/report_html.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <Eigen/Dense>
#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/io/tensor_roles.hpp"

namespace rankscope::cli {

namespace {

// A label longer than this is replaced by the summary form; the summary's counts form (every
// choice with its number of cells) may take a few more characters rather than drop choices.
constexpr size_t kShortLabelChars = 40;
constexpr size_t kCountsLabelChars = 48;
// The protocol key holding the configuration evaluated.
constexpr std::string_view kConfigKey = "config";

// Characters, not bytes, of UTF-8 text.
size_t display_width(std::string_view text) {
  return static_cast<size_t>(std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

std::string_view last_part(std::string_view metric) {
  const size_t dot = metric.rfind('.');
  return dot == std::string_view::npos ? metric : metric.substr(dot + 1);
}

// "attn", "mlp", "all" or kinds in mask order, for the kinds in `mask` (bit i: kAllMatrixKinds[i]).
// The kinds a configuration of `model` may hold: its parts, then its fused cells (Phi-3).
std::vector<MatrixKind> cell_kinds(const ModelConfig& model) {
  auto kinds = matrix_kinds(model.arch);
  for (const auto k : fused_kinds(model)) kinds.push_back(k);
  return kinds;
}

std::string kinds_text(uint32_t mask, const ModelConfig& model) {
  const auto bit = [](MatrixKind k) { return 1u << static_cast<uint32_t>(k); };
  uint32_t all = 0, attn = 0, mlp = 0;
  for (MatrixKind k : matrix_kinds(model.arch)) {
    all |= bit(k);
    const bool is_attn = k == MatrixKind::q || k == MatrixKind::k || k == MatrixKind::v || k == MatrixKind::o;
    (is_attn ? attn : mlp) |= bit(k);
  }
  if (mask == all) return "all";
  std::string out;
  const auto add = [&](std::string_view word) { out += (out.empty() ? "" : ",") + std::string(word); };
  bool attn_done = false, mlp_done = false;
  for (MatrixKind k : cell_kinds(model)) {
    if (!(mask & bit(k))) continue;
    if ((attn & bit(k)) && (mask & attn) == attn) {
      if (!attn_done) add("attn");
      attn_done = true;
    } else if ((mlp & bit(k)) && (mask & mlp) == mlp) {
      if (!mlp_done) add("mlp");
      mlp_done = true;
    } else {
      add(matrix_kind_name(k));
    }
  }
  return out;
}

// Choices from the highest rank down: percentages first, then absolute ranks.
bool lighter_first(const Choice& a, const Choice& b) {
  if (a.rank.percent != b.rank.percent) return a.rank.percent;
  if (a.rank.value != b.rank.value) return a.rank.value > b.rank.value;
  return a.method < b.method;
}

std::string choice_text(const Choice& choice) {
  std::string s = rank_string(choice.rank);
  if (choice.method != Method::tucker) s += "@" + std::string(method_name(choice.method));
  return s;
}

// Without the model's shapes: the canonical string, cut.
std::string fallback_label(const std::string& config) {
  if (config.empty()) return "base model";
  if (config.size() <= kShortLabelChars) return config;
  return config.substr(0, kShortLabelChars - 3) + "...";
}

struct ModelShapesFound {
  std::optional<ModelConfig> config;
  std::string path;    // where it was looked for
  std::string reason;  // why it is absent
};

// The study's model: the path given, else the one the store recorded for the study's model hash
// (its settings', else its first evaluation's).
ModelShapesFound find_model(const ResultsStore& db, const StudyInfo& study, const std::vector<EvaluationRecord>& records,
                            const std::filesystem::path& given) {
  ModelShapesFound found;
  if (!given.empty()) {  // asked for by name: a path that does not read is the user's error
    found.path = given.string();
    found.config = read_model_config(given);
    return found;
  } else {
    const bool recorded = study.settings.is_object() && study.settings.contains("model_hash") &&
                          study.settings["model_hash"].is_string();
    std::string hash = recorded ? study.settings["model_hash"].get<std::string>() : std::string();
    if (hash.empty() && !records.empty()) hash = records.front().model_hash;
    for (const auto& m : db.models()) {
      if (m.hash == hash) found.path = m.path;
    }
    if (found.path.empty()) {
      found.reason = hash.empty() ? "the study records no model" : fmt::format("the store has no path for model {}", hash);
      return found;
    }
  }
  try {
    found.config = read_model_config(found.path);
  } catch (const Error& e) {
    found.reason = fmt::format("the model's config.json could not be read ({})", e.what());
  }
  return found;
}

// The keys of `protocols` (objects) that every one of them has with the same value.
nlohmann::json shared_keys(const std::vector<const nlohmann::json*>& protocols) {
  if (protocols.empty()) return nullptr;
  nlohmann::json shared = nlohmann::json::object();
  for (const auto& [key, value] : protocols.front()->items()) {
    bool everywhere = true;
    for (const auto* p : protocols) {
      const auto it = p->find(key);
      if (it == p->end() || *it != value) {
        everywhere = false;
        break;
      }
    }
    if (everywhere) shared[key] = value;
  }
  return shared;
}

// The layer x matrix grid of a model: cell index layer * kinds + position of the kind.
struct Grid {
  int64_t layers = 0;
  std::vector<MatrixKind> kinds;
  size_t cells() const { return static_cast<size_t>(layers) * kinds.size(); }
  size_t index(int64_t layer, MatrixKind kind) const {
    const auto at = std::find(kinds.begin(), kinds.end(), kind) - kinds.begin();
    return static_cast<size_t>(layer) * kinds.size() + static_cast<size_t>(at);
  }
};

// Ridge regression on standardised features, prepared once for a set of rows and solved for any
// number of targets over those rows (the metrics of one study mostly share their rows: one
// decomposition serves them all). With Z = U' and Z^T Z = V diag(d) V^T (U = Z V), the fit at
// penalty L is b = V diag(1 / (d + L)) U^T y and row i's leverage h_i = 1/n + sum_k U_ik^2 / (d_k + L)
// (1/n: the intercept), so every penalty of a grid costs O(n q) once the eigenvectors are known.
class RidgeFit {
 public:
  // `rows`: the rows of `features` to fit on; those with a non-finite feature are dropped.
  RidgeFit(const std::vector<std::vector<double>>& features, const std::vector<size_t>& rows)
      : p_(features.empty() ? 0 : features.front().size()), varied_(p_, false), requested_(rows) {
    for (size_t i : rows) {
      RS_ASSERT(i < features.size() && features[i].size() == p_);
      bool ok = true;
      for (size_t j = 0; j < p_ && ok; ++j) ok = std::isfinite(features[i][j]);
      if (ok) rows_.push_back(i);
    }
    if (rows_.size() < RidgeImportance::kMinRows) return;
    const auto n = static_cast<Eigen::Index>(rows_.size());
    // The columns that vary, standardised; a constant column says nothing about the target.
    std::vector<double> mean, sd;
    for (size_t j = 0; j < p_; ++j) {
      double s = 0, ss = 0;
      for (size_t i : rows_) s += features[i][j];
      const double mu = s / static_cast<double>(n);
      for (size_t i : rows_) ss += (features[i][j] - mu) * (features[i][j] - mu);
      const double sigma = std::sqrt(ss / static_cast<double>(n));
      if (!(sigma > kMinSd)) continue;
      columns_.push_back(j);
      mean.push_back(mu);
      sd.push_back(sigma);
      varied_[j] = true;
    }
    if (columns_.empty()) return;
    const auto q = static_cast<Eigen::Index>(columns_.size());
    Eigen::MatrixXd z(n, q);
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto& row = features[rows_[static_cast<size_t>(r)]];
      for (Eigen::Index c = 0; c < q; ++c) {
        const auto k = static_cast<size_t>(c);
        z(r, c) = (row[columns_[k]] - mean[k]) / sd[k];
      }
    }
    Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(q, q);
    gram.selfadjointView<Eigen::Lower>().rankUpdate(z.transpose());
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eigen(Eigen::MatrixXd(gram.selfadjointView<Eigen::Lower>()));
    d_ = eigen.eigenvalues().array().max(0.0);
    v_ = eigen.eigenvectors();
    u_ = z * v_;
    u2_ = u_.array().square().matrix();
  }

  const std::vector<size_t>& requested_rows() const { return requested_; }

  // `target` is indexed like the features; its values on the rows fitted must be finite. The
  // penalty is `ridge` times n, or, without one, the one of kRidgeGrid with the smallest
  // leave-one-out error.
  RidgeImportance solve(const std::vector<double>& target, std::optional<double> ridge) const {
    RidgeImportance out;
    out.importance.assign(p_, 0.0);
    out.effect.assign(p_, 0.0);
    out.varied = varied_;
    out.n = rows_.size();
    if (out.n < RidgeImportance::kMinRows || columns_.empty()) return out;
    const double n = static_cast<double>(rows_.size());
    Eigen::VectorXd y(static_cast<Eigen::Index>(rows_.size()));
    for (size_t r = 0; r < rows_.size(); ++r) y(static_cast<Eigen::Index>(r)) = target[rows_[r]];
    y.array() -= y.mean();
    const double total = y.squaredNorm();
    const Eigen::ArrayXd c = (u_.transpose() * y).array();
    const auto fit = [&](double penalty, Eigen::VectorXd* coefficients) {
      const Eigen::ArrayXd w = 1.0 / (d_ + penalty * n);
      const Eigen::VectorXd residual = y - u_ * (w * c).matrix();
      const Eigen::ArrayXd leverage = (u2_ * w.matrix()).array() + 1.0 / n;
      if (coefficients) *coefficients = v_ * (w * c).matrix();
      const double press = (residual.array() / (1.0 - leverage).max(kMinSd)).square().sum();
      return std::pair{residual.squaredNorm(), press};
    };
    out.ridge = ridge.value_or(RidgeImportance::kRidgeGrid.front());
    if (!ridge) {
      double best = INFINITY;
      for (double penalty : RidgeImportance::kRidgeGrid) {
        const double press = fit(penalty, nullptr).second;
        if (press < best) best = press, out.ridge = penalty;
      }
    }
    Eigen::VectorXd b;
    const auto [rss, press] = fit(out.ridge, &b);
    out.r2 = total > 0 ? 1.0 - rss / total : 0.0;
    out.r2_loo = total > 0 ? 1.0 - press / total : 0.0;
    const double sum = b.cwiseAbs().sum();
    for (size_t k = 0; k < columns_.size(); ++k) {
      const double coefficient = b(static_cast<Eigen::Index>(k));
      out.effect[columns_[k]] = coefficient;
      out.importance[columns_[k]] = sum > 0 ? std::abs(coefficient) / sum : 0.0;
    }
    return out;
  }

 private:
  static constexpr double kMinSd = 1e-12;  // a column with less spread is constant
  size_t p_;
  std::vector<bool> varied_;
  std::vector<size_t> requested_, rows_, columns_;
  Eigen::ArrayXd d_;                 // eigenvalues of Z^T Z
  Eigen::MatrixXd v_, u_, u2_;       // its eigenvectors V, Z V and (Z V) squared elementwise
};

// A `single` study: per metric, the change from the base model's value when one cell alone is
// decomposed at one choice (done evaluations only).
nlohmann::json single_heatmap(const Grid& grid, const std::vector<std::string>& metrics,
                              const std::vector<EvaluationRecord>& records,
                              const std::vector<std::optional<Config>>& configs) {
  nlohmann::json out = {{"mode", "single"}};
  const EvaluationRecord* base = nullptr;
  std::vector<Choice> choices;
  size_t ignored = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].status != EvalStatus::done || !configs[i]) continue;
    if (configs[i]->is_base()) {
      base = &records[i];
    } else if (configs[i]->cells.size() == 1) {
      choices.push_back(configs[i]->cells.begin()->second);
    } else {
      ++ignored;
    }
  }
  std::sort(choices.begin(), choices.end(), lighter_first);
  choices.erase(std::unique(choices.begin(), choices.end()), choices.end());
  nlohmann::json choice_names = nlohmann::json::array();
  for (const auto& c : choices) choice_names.push_back(choice_text(c));
  out["choices"] = choice_names;
  out["ignored"] = ignored;
  if (!base) {
    out["mode"] = "none";
    out["reason"] = "the base model has no done evaluation in this study: there is nothing to measure changes against";
    return out;
  }
  out["base_id"] = base->id;
  const auto value_of = [](const EvaluationRecord& r, const std::string& name) {
    for (const auto& m : r.metrics) {
      if (m.name == name) return m.value;
    }
    return std::numeric_limits<double>::quiet_NaN();
  };
  nlohmann::json by_metric = nlohmann::json::object();
  for (const auto& name : metrics) {
    const double base_value = value_of(*base, name);
    if (!std::isfinite(base_value)) continue;
    // delta[choice][cell] and the evaluation behind it; null where not measured.
    nlohmann::json delta = nlohmann::json::array(), ids = nlohmann::json::array();
    for (size_t c = 0; c < choices.size(); ++c) {
      delta.push_back(std::vector<nlohmann::json>(grid.cells(), nullptr));
      ids.push_back(std::vector<nlohmann::json>(grid.cells(), nullptr));
    }
    for (size_t i = 0; i < records.size(); ++i) {
      if (records[i].status != EvalStatus::done || !configs[i] || configs[i]->cells.size() != 1) continue;
      const auto& [cell, choice] = *configs[i]->cells.begin();
      const size_t c = static_cast<size_t>(std::lower_bound(choices.begin(), choices.end(), choice, lighter_first) - choices.begin());
      const size_t k = grid.index(cell.first, cell.second);
      delta[c][k] = number(value_of(records[i], name) - base_value);
      ids[c][k] = records[i].id;
    }
    by_metric[name] = {{"base", base_value}, {"delta", delta}, {"eval", ids}};
  }
  out["by_metric"] = by_metric;
  return out;
}

// Any other study: per metric, each cell's importance by ridge regression of the metric (log for
// positive metrics) on the fraction of each cell's rank removed (done evaluations only).
nlohmann::json importance_heatmap(const Grid& grid, const ModelConfig& model, const std::vector<std::string>& metrics,
                                  const std::vector<EvaluationRecord>& records,
                                  const std::vector<std::optional<Config>>& configs) {
  std::vector<size_t> rows;
  std::vector<std::vector<double>> features;
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].status != EvalStatus::done || !configs[i]) continue;
    std::vector<double> f(grid.cells(), 0.0);
    for (const auto& cell : resolve_config(*configs[i], model)) f[grid.index(cell.layer, cell.kind)] = removed_rank_fraction(cell);
    rows.push_back(i);
    features.push_back(std::move(f));
  }
  std::unique_ptr<RidgeFit> prepared;  // the last factorisation, reused while the rows are the same
  nlohmann::json by_metric = nlohmann::json::object();
  for (const auto& name : metrics) {
    std::vector<double> y(rows.size(), std::numeric_limits<double>::quiet_NaN());
    bool positive = true;
    for (size_t r = 0; r < rows.size(); ++r) {
      for (const auto& m : records[rows[r]].metrics) {
        if (m.name == name) y[r] = m.value;
      }
      if (std::isfinite(y[r]) && y[r] <= 0) positive = false;
    }
    if (positive) {
      for (double& v : y) v = std::log(v);
    }
    std::vector<size_t> usable;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (std::isfinite(y[r])) usable.push_back(r);
    }
    if (!prepared || prepared->requested_rows() != usable) prepared = std::make_unique<RidgeFit>(features, usable);
    const RidgeImportance fit = prepared->solve(y, std::nullopt);
    if (fit.n < RidgeImportance::kMinRows) continue;
    nlohmann::json importance = nlohmann::json::array(), effect = nlohmann::json::array(), varied = nlohmann::json::array();
    for (size_t k = 0; k < grid.cells(); ++k) {
      importance.push_back(fit.importance[k]);
      effect.push_back(fit.effect[k]);
      varied.push_back(fit.varied[k]);
    }
    by_metric[name] = {{"n", fit.n}, {"r2", number(fit.r2)}, {"r2_loo", number(fit.r2_loo)}, {"ridge", fit.ridge}, {"log", positive}, {"importance", importance},
                       {"effect", effect}, {"varied", varied}};
  }
  return {{"mode", "importance"}, {"ridge_grid", RidgeImportance::kRidgeGrid}, {"by_metric", by_metric}};
}

}  // namespace

bool default_minimize(std::string_view metric) {
  if (metric == "size.reduction_pct") return false;
  const std::string_view name = last_part(metric);
  for (std::string_view higher : {"acc", "f1", "mcc"}) {
    if (name.find(higher) != std::string_view::npos) return false;
  }
  return true;
}

std::string short_label(const Config& config, const ModelConfig& model) {
  if (config.is_base()) return "base model";
  std::optional<Method> common = config.cells.begin()->second.method;
  for (const auto& [cell, choice] : config.cells) {
    if (choice.method != *common) common.reset();
  }
  const std::string suffix = common && *common != Method::tucker ? " @" + std::string(method_name(*common)) : "";
  Config bare = config;
  if (common) {
    for (auto& [cell, choice] : bare.cells) choice.method = Method::tucker;
  }
  const std::string compact = encode_config(bare, model);
  if (compact.size() <= kShortLabelChars) return compact + suffix;

  // Summary, per choice from the highest rank down: the kinds decomposed at it over all layers
  // ("q,k 50%"), or how many cells when that is every kind ("12×50%") or the kinds do not fit.
  struct AtChoice {
    uint32_t kinds = 0;
    size_t cells = 0;
  };
  std::map<Choice, AtChoice, decltype(&lighter_first)> by_choice(&lighter_first);
  for (const auto& [cell, choice] : bare.cells) {
    by_choice[choice].kinds |= 1u << static_cast<uint32_t>(cell.second);
    by_choice[choice].cells += 1;
  }
  const auto parts = [&](bool counts) {
    std::vector<std::string> out;
    for (const auto& [choice, at] : by_choice) {
      const std::string kinds = kinds_text(at.kinds, model);
      out.push_back(counts || kinds == "all" ? fmt::format("{}×{}", at.cells, choice_text(choice))
                                             : kinds + " " + choice_text(choice));
    }
    return out;
  };
  const size_t n = config.cells.size();
  const std::string head = fmt::format("{} cell{}: ", n, n == 1 ? "" : "s");
  for (bool counts : {false, true}) {
    std::string label = head;
    for (const auto& part : parts(counts)) label += (label.size() == head.size() ? "" : "; ") + part;
    if (display_width(label + suffix) <= (counts ? kCountsLabelChars : kShortLabelChars)) return label + suffix;
  }
  // Still too long: as many counts as fit, the rest counted.
  const auto counted = parts(true);
  std::string label = head + counted.front();
  size_t shown = 1;
  for (; shown < counted.size(); ++shown) {
    const std::string more = fmt::format("; +{} more", counted.size() - shown - 1);
    const std::string next = label + "; " + counted[shown];
    if (display_width(next + (shown + 1 < counted.size() ? more : "") + suffix) > kCountsLabelChars) break;
    label = next;
  }
  if (shown < counted.size()) label += fmt::format("; +{} more", counted.size() - shown);
  return label + suffix;
}

double removed_rank_fraction(const ResolvedCell& cell) {
  const int64_t full = std::min(cell.n_out, cell.n_in);
  if (full <= 0) return 0.0;
  return std::max(0.0, 1.0 - static_cast<double>(cell.rank) / static_cast<double>(full));
}

RidgeImportance ridge_importance(const std::vector<std::vector<double>>& features, const std::vector<double>& target,
                                 std::optional<double> ridge) {
  RS_ASSERT(features.size() == target.size());
  std::vector<size_t> rows;
  for (size_t i = 0; i < features.size(); ++i) {
    if (std::isfinite(target[i])) rows.push_back(i);
  }
  return RidgeFit(features, rows).solve(target, ridge);
}

std::string json_for_script(const nlohmann::json& json) {
  const std::string text = json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '<') {
      out += "\\u003c";
    } else {
      out += c;
    }
  }
  return out;
}

nlohmann::json report_data(const ResultsStore& db, const StudyInfo& study, const ReportHtmlOptions& options) {
  std::vector<EvaluationRecord> records;
  db.for_each_evaluation(study.id, [&](const EvaluationRecord& r) { records.push_back(r); });
  std::set<std::string> names;
  for (const auto& r : records) {
    for (const auto& m : r.metrics) names.insert(m.name);
  }
  const std::vector<std::string> metrics(names.begin(), names.end());
  const auto metric_index = [&](const std::string& name) {
    return static_cast<size_t>(std::lower_bound(metrics.begin(), metrics.end(), name) - metrics.begin());
  };

  // The default pair: the objectives given, else the study's (a study with unreadable objectives
  // still gets its page), the metrics stored only.
  std::vector<Objective> objectives = options.objectives;
  if (objectives.empty() && study.settings.is_object() && study.settings.contains("objectives") &&
      study.settings["objectives"].is_string()) {
    try {
      objectives = parse_objectives(study.settings["objectives"].get<std::string>());
    } catch (const Error&) {
      objectives.clear();
    }
  }
  std::erase_if(objectives, [&](const Objective& o) { return !names.count(o.metric); });
  nlohmann::json objectives_json = nlohmann::json::array();
  for (const auto& o : objectives) objectives_json.push_back({{"metric", o.metric}, {"minimize", o.minimize}});
  nlohmann::json metrics_json = nlohmann::json::array();
  for (const auto& name : metrics) {
    const auto it = std::find_if(objectives.begin(), objectives.end(), [&](const Objective& o) { return o.metric == name; });
    metrics_json.push_back({{"name", name},
                            {"minimize", it != objectives.end() ? it->minimize : default_minimize(name)},
                            {"objective", it != objectives.end()}});
  }

  // Protocols: per metric the keys every evaluation shares, per evaluation the rest.
  std::vector<std::vector<const nlohmann::json*>> by_metric(metrics.size());
  for (const auto& r : records) {
    for (const auto& m : r.metrics) {
      if (m.protocol.is_object()) by_metric[metric_index(m.name)].push_back(&m.protocol);
    }
  }
  nlohmann::json shared = nlohmann::json::array();
  for (const auto& protocols : by_metric) shared.push_back(shared_keys(protocols));
  nlohmann::json own = nlohmann::json::array();
  std::map<std::string, size_t> own_index;

  const ModelShapesFound model = find_model(db, study, records, options.model);
  std::vector<std::optional<Config>> configs(records.size());
  size_t unparsed = 0;
  nlohmann::json evals = nlohmann::json::array();
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    std::string label = fallback_label(r.config);
    if (model.config) {
      try {
        configs[i] = parse_config(r.config, *model.config);
        label = short_label(*configs[i], *model.config);
      } catch (const Error&) {
        ++unparsed;
      }
    }
    const size_t m = metrics.size();
    std::vector<nlohmann::json> v(m, nullptr), se(m, nullptr), count(m, nullptr);
    std::vector<int64_t> p(m, -1);
    for (const auto& metric : r.metrics) {
      const size_t j = metric_index(metric.name);
      v[j] = number(metric.value);
      se[j] = number(metric.stderr_);
      count[j] = metric.n;
      if (!metric.protocol.is_object()) continue;
      nlohmann::json rest = nlohmann::json::object();
      for (const auto& [key, value] : metric.protocol.items()) {
        if (shared[j].contains(key)) continue;
        // The evaluation's own configuration, as most protocols record it: not a second copy.
        rest[key] = key == kConfigKey && value == r.config ? nlohmann::json(true) : value;
      }
      const auto [it, added] = own_index.emplace(rest.dump(), own.size());
      if (added) own.push_back(std::move(rest));
      p[j] = static_cast<int64_t>(it->second);
    }
    nlohmann::json e = {{"id", r.id},       {"config", r.config}, {"label", label}, {"status", status_name(r.status)},
                        {"wall_s", number(r.wall_s)}, {"v", v}, {"se", se}, {"n", count}, {"p", p}};
    if (!r.error.empty()) e["error"] = r.error;
    evals.push_back(std::move(e));
  }

  nlohmann::json heatmap = {{"mode", "none"}, {"model", model.path}};
  if (!model.config) {
    heatmap["reason"] = model.reason;
  } else {
    Grid grid{model.config->n_layer, cell_kinds(*model.config)};
    const bool single = study.settings.is_object() && study.settings.contains("space") && study.settings["space"].is_object() &&
                        study.settings["space"].contains("kind") && study.settings["space"]["kind"] == "single";
    heatmap = single ? single_heatmap(grid, metrics, records, configs)
                     : importance_heatmap(grid, *model.config, metrics, records, configs);
    heatmap["model"] = model.path;
    heatmap["layers"] = grid.layers;
    nlohmann::json kinds = nlohmann::json::array();
    for (MatrixKind k : grid.kinds) kinds.push_back(matrix_kind_name(k));
    heatmap["matrices"] = kinds;
    heatmap["unparsed"] = unparsed;
  }

  const StatusCounts& c = study.counts;
  return {{"study", study.name},
          {"store", db.display()},
          {"settings", study.settings},
          {"counts", {{"done", c.done}, {"failed", c.failed}, {"nan", c.nan}, {"pruned", c.pruned}, {"claimed", c.claimed}}},
          {"include_pruned", options.include_pruned},
          {"where", options.where},
          {"objectives", objectives_json},
          {"metrics", metrics_json},
          {"protocols", {{"shared", shared}, {"own", own}}},
          {"evals", evals},
          {"heatmap", heatmap}};
}

namespace {

// The page: styles and script inline, nothing fetched; @DATA@ stands for the JSON object. The
// script draws everything from the data, so a section without data says so instead of failing.
constexpr std::string_view kPage = R"PAGE(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rankscope report</title>
<style>
:root { --bg: #f4f5f7; --card: #fff; --ink: #1d2330; --muted: #5f6b7a; --line: #e2e5ea; --front: #c0392b;
        --pt: #8f99a8; --sel: #1f6feb; --soft: #eef1f5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
code, pre, .mono { font-family: ui-monospace, "SF Mono", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
#app { display: grid; grid-template-columns: minmax(0, 1fr) 340px; gap: 16px; padding: 16px; max-width: 1680px; margin: 0 auto; }
main { min-width: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; margin-bottom: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0 0 10px; }
.sub { color: var(--muted); margin: 0 0 10px; }
.badge { display: inline-block; padding: 2px 9px; border-radius: 999px; background: var(--soft); margin: 0 6px 4px 0; font-size: 12.5px; }
.badge b { font-weight: 600; }
.st-done { background: #e5f4ea; color: #1c6a33; } .st-failed { background: #fde8e8; color: #9b1c1c; }
.st-nan { background: #fff3e0; color: #8a5300; } .st-pruned { background: #eceffe; color: #3442a8; }
.st-claimed { background: #efefef; color: #555; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin-bottom: 8px; }
.controls .group { display: flex; gap: 6px; align-items: center; }
.controls .lbl { color: var(--muted); font-size: 12.5px; text-transform: uppercase; letter-spacing: .04em; }
select, input[type=text], button { font: inherit; font-size: 13px; padding: 3px 7px; border: 1px solid #cbd1da; border-radius: 6px; background: #fff; color: var(--ink); }
button { cursor: pointer; background: var(--soft); }
button:disabled { opacity: .45; cursor: default; }
input[type=text] { min-width: 240px; }
.err { color: #b42318; font-size: 12.5px; }
.nodata { color: var(--muted); font-style: italic; padding: 18px 4px; }
#plot svg { width: 100%; height: auto; display: block; }
.pt { fill: var(--pt); fill-opacity: .5; cursor: pointer; }
.pt.front { fill: var(--front); fill-opacity: 1; stroke: #fff; stroke-width: 1; }
.pt:hover { stroke: #000; stroke-width: 1.5; }
.pt.sel { stroke: var(--sel); stroke-width: 3; fill-opacity: 1; }
.stair { fill: none; stroke: var(--front); stroke-width: 1.6; stroke-linejoin: round; opacity: .85; }
.gridline { stroke: #edf0f3; }
.axis { stroke: #98a2b3; }
.ticklabel { fill: #475467; font-size: 12px; }
.axislabel { fill: var(--ink); font-size: 13px; }
.key { margin-right: 14px; white-space: nowrap; color: var(--ink); }
.dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%; background: var(--pt); margin-right: 5px; vertical-align: middle; }
.dot.front { background: var(--front); width: 10px; height: 10px; }
#tooltip { position: fixed; pointer-events: none; background: rgba(29, 35, 48, .94); color: #fff; padding: 6px 9px;
           border-radius: 6px; font-size: 12.5px; max-width: 420px; display: none; z-index: 10; }
#tooltip .mono { color: #c8d2e0; }
.hm-wrap { overflow: auto; max-height: 640px; }
table.hm { border-collapse: separate; border-spacing: 2px; font-size: 12.5px; }
table.hm th { font-weight: 600; color: var(--muted); padding: 2px 6px; position: sticky; top: 0; background: var(--card); }
table.hm td.cell { width: 76px; height: 24px; text-align: right; padding: 0 6px; border-radius: 4px; cursor: default; font-variant-numeric: tabular-nums; }
table.hm td.cell.click { cursor: pointer; }
table.hm td.cell.none { background: repeating-linear-gradient(45deg, #f3f4f6, #f3f4f6 4px, #e9ebef 4px, #e9ebef 8px); color: #9aa3af; text-align: center; }
table.hm th.layer { text-align: right; }
table.hm tr.hm-total td { border-top: 1px solid var(--line); font-weight: 600; }
.scale { display: inline-block; width: 140px; height: 10px; border-radius: 3px; vertical-align: middle; margin: 0 6px; }
.method { color: var(--muted); font-size: 13px; margin: 6px 0 10px; max-width: 980px; }
.table-wrap { overflow: auto; }
table.ev { border-collapse: collapse; width: 100%; font-size: 13px; }
table.ev th { text-align: left; font-weight: 600; padding: 6px 8px; border-bottom: 2px solid var(--line); cursor: pointer; white-space: nowrap; user-select: none; background: var(--card); position: sticky; top: 0; }
table.ev th.num, table.ev td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.ev th .arrow { color: var(--sel); }
table.ev td { padding: 4px 8px; border-bottom: 1px solid #f0f2f5; white-space: nowrap; }
table.ev tr.eval-row { cursor: pointer; }
table.ev tr.eval-row:hover { background: #f7f9fc; }
table.ev tr.eval-row.sel { background: #e8f0fe; }
table.ev td.label { max-width: 360px; overflow: hidden; text-overflow: ellipsis; }
table.ev td.star { color: var(--front); }
.pager { display: flex; gap: 8px; align-items: center; margin-top: 10px; color: var(--muted); }
details.cols { margin-bottom: 8px; }
details.cols .colbox { display: flex; flex-wrap: wrap; gap: 4px 14px; padding: 6px 0; max-height: 180px; overflow: auto; }
pre.settings { background: #f8f9fb; border: 1px solid var(--line); border-radius: 8px; padding: 10px; overflow: auto; max-height: 480px; margin: 0; }
aside#inspector { position: sticky; top: 16px; align-self: start; max-height: calc(100vh - 32px); overflow: auto; }
#inspector .label { font-size: 15px; font-weight: 600; word-break: break-word; }
#inspector .config { background: #f8f9fb; border: 1px solid var(--line); border-radius: 6px; padding: 6px 8px; word-break: break-all; margin: 8px 0; }
#inspector .metric { border-top: 1px solid #f0f2f5; padding: 5px 0; }
#inspector .metric .name { font-weight: 600; font-size: 12.5px; }
#inspector .metric .val { float: right; font-variant-numeric: tabular-nums; }
#inspector .metric.plotted .name { color: var(--front); }
#inspector details summary { color: var(--muted); font-size: 12px; cursor: pointer; }
#inspector pre { background: #f8f9fb; padding: 6px; border-radius: 6px; overflow: auto; max-height: 260px; margin: 4px 0 0; }
#inspector .hint { color: var(--muted); }
#error { display: none; background: #fde8e8; color: #9b1c1c; border: 1px solid #f5b5b5; }
@media (max-width: 1100px) { #app { grid-template-columns: 1fr; } aside#inspector { position: static; max-height: none; } }
</style>
</head>
<body>
<div id="app">
<main>
  <div class="card" id="error"></div>
  <header class="card">
    <h1>Study <span id="study-name"></span></h1>
    <p class="sub" id="study-store"></p>
    <div id="progress"></div>
    <div class="controls" style="margin-top:8px">
      <span class="group"><span class="lbl">Filter</span><input type="text" id="filter-text" placeholder="label, configuration, status or id"></span>
      <span class="group"><span class="lbl">Where</span><input type="text" id="filter-where" placeholder="e.g. size.reduction_pct>10 and tinystories.ppl<20"></span>
      <span class="group"><label><input type="checkbox" id="include-pruned"> include pruned evaluations in the front</label></span>
      <span id="where-error" class="err"></span>
    </div>
    <div class="sub" id="filter-status" style="margin:0"></div>
  </header>

  <section class="card" id="front-section">
    <h2>Pareto front</h2>
    <div class="controls">
      <span class="group"><span class="lbl">y</span><select id="y-metric"></select><select id="y-dir"><option value="min">min</option><option value="max">max</option></select><label><input type="checkbox" id="y-log"> log</label></span>
      <span class="group"><span class="lbl">x</span><select id="x-metric"></select><select id="x-dir"><option value="min">min</option><option value="max">max</option></select><label><input type="checkbox" id="x-log"> log</label></span>
      <button id="swap" title="swap the axes">swap x / y</button>
    </div>
    <div id="plot"></div>
    <p class="sub" id="plot-note"></p>
  </section>

  <section class="card" id="heatmap-section">
    <h2>Which matrices, to which rank</h2>
    <div class="controls" id="heatmap-controls">
      <span class="group"><span class="lbl">metric</span><select id="hm-metric"></select></span>
      <span class="group" id="hm-choice-group"><span class="lbl">choice</span><select id="hm-choice"></select></span>
    </div>
    <p class="method" id="heatmap-method"></p>
    <div id="heatmap" class="hm-wrap"></div>
  </section>

  <section class="card" id="table-section">
    <h2>Evaluations</h2>
    <details class="cols"><summary id="cols-summary">columns</summary><div class="colbox" id="colbox"></div></details>
    <div class="table-wrap"><table class="ev" id="eval-table"><thead></thead><tbody></tbody></table></div>
    <div class="pager" id="pager"></div>
  </section>

  <section class="card" id="settings-section">
    <h2>Settings</h2>
    <pre class="settings" id="settings"></pre>
  </section>
</main>
<aside class="card" id="inspector"><h2>Evaluation</h2><div id="inspector-body"><p class="hint">Hover over a point to preview it; click a point, a table row or a heat-map cell to show it here.</p></div></aside>
</div>
<div id="tooltip"></div>
<script type="application/json" id="data">@DATA@</script>
<script>
'use strict';
(function () {
  const D = JSON.parse(document.getElementById('data').textContent);
  const $ = (id) => document.getElementById(id);
  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);
  const metrics = D.metrics, evals = D.evals;
  const byName = new Map(metrics.map((m, j) => [m.name, j]));
  const PAGE_ROWS = 50;            // table rows per page
  const DEFAULT_COLUMNS = 8;       // metric columns shown at first
  const LOG_RATIO = 10;            // an axis of positive values spanning more than this ratio starts on a log scale
  const PLOT = { w: 880, h: 500, l: 80, r: 24, t: 18, b: 58 };

  const state = {
    x: -1, y: -1, xMin: true, yMin: true, xLog: false, yLog: false,
    pruned: !!D.include_pruned, text: '', where: D.where || '', conds: [],
    filtered: [], front: new Set(), order: [], sortKey: 'id', sortDir: 1, page: 0,
    columns: [], selected: -1, hmMetric: '', hmChoice: 0,
  };

  // ---------------------------------------------------------------- numbers
  function isNum(v) { return typeof v === 'number' && isFinite(v); }
  function val(e, j) { const v = e.v[j]; return isNum(v) ? v : NaN; }
  function fmt(v) {
    if (!isNum(v)) return '\u2014';
    const a = Math.abs(v);
    if (a >= 1e5 && Number.isInteger(v)) return v.toLocaleString('en-US');
    if (a !== 0 && (a < 1e-4 || a >= 1e12)) return v.toExponential(4);
    return String(Number(v.toPrecision(6)));
  }
  function fmtCell(v) {  // three significant digits: a heat-map cell is narrow
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(1);
    return a >= 1e4 ? fmtTick(v) : String(Number(v.toPrecision(3)));
  }
  function fmtSigned(v) { return isNum(v) && v > 0 ? '+' + fmt(v) : fmt(v); }
  function short(v) { return String(Number(v.toPrecision(6))); }
  function fmtTick(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return short(v / 1e9) + 'G';
    if (a >= 1e6) return short(v / 1e6) + 'M';
    if (a >= 1e4) return short(v / 1e3) + 'k';
    return short(v);
  }

  // ---------------------------------------------------------------- ticks: 1, 2, 5 x 10^k
  function niceStep(span, count) {
    const raw = span / count, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }
  function linearTicks(lo, hi) {
    const step = niceStep(hi - lo, 6), out = [];
    for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) out.push(Number((k * step).toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    const all = [], decades = [];
    for (let k = Math.floor(Math.log10(lo)); k <= Math.ceil(Math.log10(hi)); k++) {
      for (const m of [1, 2, 5]) {
        const t = Number((m * Math.pow(10, k)).toPrecision(12));
        if (t < lo * (1 - 1e-12) || t > hi * (1 + 1e-12)) continue;
        all.push(t);
        if (m === 1) decades.push(t);
      }
    }
    if (all.length < 3) return linearTicks(lo, hi);  // less than a factor of about 4: round linear steps
    if (all.length <= 10) return all;
    const every = Math.ceil(decades.length / 8);
    return decades.filter((_, i) => i % every === 0);
  }

  // ---------------------------------------------------------------- filter
  function parseWhere(text) {
    const conds = [];
    const parts = text.trim() === '' ? [] : text.split(/\s+and\s+|,|&&/i);
    for (const raw of parts) {
      const m = raw.trim().match(/^([A-Za-z0-9_.\/-]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$/);
      if (!m) return { conds: [], error: 'cannot read "' + raw.trim() + '" (METRIC >= <= > < NUMBER, joined by and)' };
      if (!byName.has(m[1])) return { conds: [], error: 'no metric "' + m[1] + '" in this study' };
      conds.push({ j: byName.get(m[1]), op: m[2], bound: Number(m[3]) });
    }
    return { conds, error: '' };
  }
  const haystack = evals.map((e) => ('#' + e.id + ' ' + e.label + ' ' + e.config + ' ' + e.status).toLowerCase());
  function applyFilter() {
    const words = state.text.toLowerCase().split(/\s+/).filter((w) => w !== '');
    state.filtered = [];
    for (let i = 0; i < evals.length; i++) {
      if (!words.every((w) => haystack[i].includes(w))) continue;
      const e = evals[i];
      const ok = state.conds.every((c) => {
        const v = val(e, c.j);
        if (!isNum(v)) return false;
        return c.op === '>=' ? v >= c.bound : c.op === '<=' ? v <= c.bound : c.op === '>' ? v > c.bound : v < c.bound;
      });
      if (ok) state.filtered.push(i);
    }
    const plural = (n) => n + (n === 1 ? ' evaluation' : ' evaluations');
    $('filter-status').textContent = state.filtered.length === evals.length
      ? plural(evals.length) : 'showing ' + state.filtered.length + ' of ' + plural(evals.length);
  }

  // ---------------------------------------------------------------- Pareto front (as rankscope pareto: done
  // evaluations, pruned ones on request, both values finite; duplicates on the front all kept)
  function joins(e) { return e.status === 'done' || (state.pruned && e.status === 'pruned'); }
  function paretoFront(idx, jx, jy) {
    const sx = state.xMin ? 1 : -1, sy = state.yMin ? 1 : -1;
    const rows = idx.map((i) => ({ a: sx * val(evals[i], jx), b: sy * val(evals[i], jy), i }));
    rows.sort((p, q) => p.a - q.a || p.b - q.b);
    const front = [];
    let best = Infinity, any = false;
    for (let g = 0; g < rows.length;) {
      let end = g;
      while (end < rows.length && rows[end].a === rows[g].a) end++;
      const b = rows[g].b;
      if (!any || b < best) {
        for (let k = g; k < end && rows[k].b === b; k++) front.push(rows[k].i);
        best = b;
        any = true;
      }
      g = end;
    }
    return front;
  }

  // ---------------------------------------------------------------- plot
  function nodata(text) { return '<div class="nodata">No data: ' + esc(text) + '</div>'; }
  function canLog(idx, j) { return idx.length > 0 && idx.every((i) => val(evals[i], j) > 0); }
  function autoLog() {
    const idx = candidates();
    for (const axis of ['x', 'y']) {
      const j = state[axis];
      let lo = Infinity, hi = -Infinity;
      for (const i of idx) { const v = val(evals[i], j); lo = Math.min(lo, v); hi = Math.max(hi, v); }
      state[axis + 'Log'] = canLog(idx, j) && hi / lo > LOG_RATIO;
    }
  }
  function candidates() {
    const out = [];
    if (state.x < 0 || state.y < 0) return out;
    for (const i of state.filtered) {
      const e = evals[i];
      if (joins(e) && isNum(val(e, state.x)) && isNum(val(e, state.y))) out.push(i);
    }
    return out;
  }
  function scale(lo, hi, log, p0, p1) {
    if (log) { lo = Math.log10(lo); hi = Math.log10(hi); }
    if (hi === lo) { const pad = lo === 0 ? 0.5 : Math.abs(lo) * 0.1; lo -= pad; hi += pad; }
    const pad = (hi - lo) * 0.04;
    lo -= pad; hi += pad;
    const f = (v) => p0 + ((log ? Math.log10(v) : v) - lo) / (hi - lo) * (p1 - p0);
    f.lo = log ? Math.pow(10, lo) : lo;
    f.hi = log ? Math.pow(10, hi) : hi;
    return f;
  }
  function renderPlot() {
    const host = $('plot');
    const idx = candidates();
    host.dataset.points = idx.length;
    if (metrics.length < 2) {
      state.front = new Set();
      host.dataset.front = 0;
      host.innerHTML = nodata('the plot needs two numeric metrics; this study stores ' + metrics.length + '.');
      $('plot-note').textContent = '';
      return;
    }
    const jx = state.x, jy = state.y, mx = metrics[jx].name, my = metrics[jy].name;
    const front = idx.length ? paretoFront(idx, jx, jy) : [];
    state.front = new Set(front);
    host.dataset.front = front.length;
    for (const [axis, j] of [['x', jx], ['y', jy]]) {
      const box = $(axis + '-log');
      box.disabled = !canLog(idx, j);
      if (box.disabled) state[axis + 'Log'] = false;
      box.checked = state[axis + 'Log'];
    }
    if (!idx.length) {
      host.innerHTML = nodata('no ' + (state.pruned ? 'done or pruned' : 'done') + ' evaluation' +
        (state.filtered.length < evals.length ? ' that passes the filter' : '') + ' has both ' + mx + ' and ' + my + '.');
      $('plot-note').textContent = '';
      return;
    }
    let xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
    for (const i of idx) {
      const x = val(evals[i], jx), y = val(evals[i], jy);
      xlo = Math.min(xlo, x); xhi = Math.max(xhi, x); ylo = Math.min(ylo, y); yhi = Math.max(yhi, y);
    }
    const P = PLOT;
    const sx = scale(xlo, xhi, state.xLog, P.l, P.w - P.r), sy = scale(ylo, yhi, state.yLog, P.h - P.b, P.t);
    const out = ['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ' + P.w + ' ' + P.h + '" id="plot-svg">'];
    const xt = state.xLog ? logTicks(sx.lo, sx.hi) : linearTicks(sx.lo, sx.hi);
    const yt = state.yLog ? logTicks(sy.lo, sy.hi) : linearTicks(sy.lo, sy.hi);
    for (const t of xt) {
      const x = sx(t).toFixed(1);
      out.push('<line class="gridline" x1="' + x + '" x2="' + x + '" y1="' + P.t + '" y2="' + (P.h - P.b) + '"/>');
      out.push('<text class="ticklabel" x="' + x + '" y="' + (P.h - P.b + 18) + '" text-anchor="middle">' + fmtTick(t) + '</text>');
    }
    for (const t of yt) {
      const y = sy(t).toFixed(1);
      out.push('<line class="gridline" x1="' + P.l + '" x2="' + (P.w - P.r) + '" y1="' + y + '" y2="' + y + '"/>');
      out.push('<text class="ticklabel" x="' + (P.l - 8) + '" y="' + (Number(y) + 4) + '" text-anchor="end">' + fmtTick(t) + '</text>');
    }
    out.push('<line class="axis" x1="' + P.l + '" x2="' + (P.w - P.r) + '" y1="' + (P.h - P.b) + '" y2="' + (P.h - P.b) + '"/>');
    out.push('<line class="axis" x1="' + P.l + '" x2="' + P.l + '" y1="' + P.t + '" y2="' + (P.h - P.b) + '"/>');
    const axisText = (name, min, log) => esc(name) + ' (' + (min ? 'min' : 'max') + (log ? ', log scale' : '') + ')';
    out.push('<text class="axislabel" x="' + ((P.l + P.w - P.r) / 2) + '" y="' + (P.h - 14) + '" text-anchor="middle">' + axisText(mx, state.xMin, state.xLog) + '</text>');
    const cy = (P.t + P.h - P.b) / 2;
    out.push('<text class="axislabel" x="18" y="' + cy + '" text-anchor="middle" transform="rotate(-90 18 ' + cy + ')">' + axisText(my, state.yMin, state.yLog) + '</text>');
    const point = (i, cls, r) => '<circle class="' + cls + '" data-i="' + i + '" data-id="' + evals[i].id + '" cx="' +
      sx(val(evals[i], jx)).toFixed(1) + '" cy="' + sy(val(evals[i], jy)).toFixed(1) + '" r="' + r + '"/>';
    for (const i of idx) if (!state.front.has(i)) out.push(point(i, i === state.selected ? 'pt sel' : 'pt', 3.2));
    const byX = front.slice().sort((a, b) => val(evals[a], jx) - val(evals[b], jx));
    if (byX.length > 1) {
      const worse = (a, b, min) => (min ? Math.max(a, b) : Math.min(a, b));
      let d = '';
      for (let k = 0; k < byX.length; k++) {
        const x = val(evals[byX[k]], jx), y = val(evals[byX[k]], jy);
        if (k === 0) { d += 'M' + sx(x).toFixed(1) + ',' + sy(y).toFixed(1); continue; }
        const px = val(evals[byX[k - 1]], jx), py = val(evals[byX[k - 1]], jy);
        d += ' L' + sx(worse(px, x, state.xMin)).toFixed(1) + ',' + sy(worse(py, y, state.yMin)).toFixed(1);
        d += ' L' + sx(x).toFixed(1) + ',' + sy(y).toFixed(1);
      }
      out.push('<path class="stair" d="' + d + '"/>');
    }
    for (const i of byX) out.push(point(i, i === state.selected ? 'pt front sel' : 'pt front', 4.6));
    out.push('</svg>');
    host.innerHTML = out.join('');
    $('plot-note').innerHTML = '<span class="key"><i class="dot front"></i>Pareto front (' + front.length + ')</span>' +
      '<span class="key"><i class="dot"></i>other (' + (idx.length - front.length) + ')</span>' +
      esc(idx.length + ' evaluations have both metrics' + (state.pruned ? ' (done or pruned)' : ' (done)') + '; ' + front.length +
      ' on the Pareto front of ' + my + ' (' + (state.yMin ? 'min' : 'max') + ') and ' + mx + ' (' + (state.xMin ? 'min' : 'max') + ').');
  }

  // ---------------------------------------------------------------- inspector and tooltip
  function protocolOf(e, j) {
    if (e.p[j] < 0) return null;
    const p = Object.assign({}, D.protocols.shared[j] || {}, D.protocols.own[e.p[j]]);
    if (p.config === true) p.config = e.config;
    return p;
  }
  function inspect(i) {
    const body = $('inspector-body');
    if (i < 0) return;
    const e = evals[i];
    const html = ['<div class="label" id="inspector-label">' + esc(e.label) + '</div>',
      '<div class="sub" style="margin:2px 0 0">#' + e.id + ' &middot; <span class="badge st-' + esc(e.status) + '">' + esc(e.status) + '</span>' +
      (isNum(e.wall_s) ? ' &middot; ' + fmtCell(e.wall_s) + ' s' : '') + (state.front.has(i) ? ' &middot; <span style="color:var(--front)">on the front</span>' : '') + '</div>',
      '<div class="config mono" id="inspector-config">' + (e.config === '' ? '(base model: nothing decomposed)' : esc(e.config)) + '</div>'];
    if (e.error) html.push('<div class="err">' + esc(e.error) + '</div>');
    for (let j = 0; j < metrics.length; j++) {
      if (e.n[j] === null) continue;
      const se = isNum(e.se[j]) ? ' &plusmn; ' + fmt(e.se[j]) : '';
      const proto = protocolOf(e, j);
      html.push('<div class="metric' + (j === state.x || j === state.y ? ' plotted' : '') + '"><span class="name">' + esc(metrics[j].name) +
        '</span><span class="val">' + (isNum(e.v[j]) ? fmt(e.v[j]) : 'nan') + se + ' <span class="sub">n ' + e.n[j] + '</span></span>' +
        (proto ? '<details><summary>protocol</summary><pre>' + esc(JSON.stringify(proto, null, 2)) + '</pre></details>' : '') + '</div>');
    }
    if (!evals[i].n.some((n) => n !== null)) html.push('<p class="hint">No metrics stored.</p>');
    body.innerHTML = html.join('');
  }
  function select(i) {
    state.selected = i;
    document.querySelectorAll('#plot .pt.sel').forEach((c) => c.classList.remove('sel'));
    const c = document.querySelector('#plot .pt[data-i="' + i + '"]');
    if (c) c.classList.add('sel');
    document.querySelectorAll('#eval-table tr.sel').forEach((r) => r.classList.remove('sel'));
    const r = document.querySelector('#eval-table tr[data-i="' + i + '"]');
    if (r) r.classList.add('sel');
    inspect(i);
  }
  function bindPlot() {
    const host = $('plot'), tip = $('tooltip');
    host.addEventListener('mouseover', (ev) => {
      const t = ev.target;
      if (!t.classList || !t.classList.contains('pt')) return;
      const e = evals[Number(t.dataset.i)];
      tip.innerHTML = '<b>' + esc(e.label) + '</b> <span class="mono">#' + e.id + '</span><br>' +
        esc(metrics[state.y].name) + ' ' + fmt(val(e, state.y)) + '<br>' + esc(metrics[state.x].name) + ' ' + fmt(val(e, state.x)) +
        (state.front.has(Number(t.dataset.i)) ? '<br><i>on the Pareto front</i>' : '');
      tip.style.display = 'block';
    });
    host.addEventListener('mousemove', (ev) => {
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - 430) + 'px';
      tip.style.top = (ev.clientY + 14) + 'px';
    });
    host.addEventListener('mouseout', (ev) => { if (ev.target.classList && ev.target.classList.contains('pt')) tip.style.display = 'none'; });
    host.addEventListener('click', (ev) => {
      const t = ev.target;
      if (t.classList && t.classList.contains('pt')) select(Number(t.dataset.i));
    });
  }

  // ---------------------------------------------------------------- heat map
  const H = D.heatmap;
  function mix(t, negative) {
    const to = negative ? [47, 111, 219] : [192, 57, 43];
    const c = to.map((v) => Math.round(255 + (v - 255) * Math.min(1, Math.max(0, t))));
    return 'rgb(' + c.join(',') + ')';
  }
  function textColour(t) { return t > 0.55 ? '#fff' : 'var(--ink)'; }
  function renderHeatmap() {
    const host = $('heatmap'), method = $('heatmap-method');
    $('hm-choice-group').style.display = H.mode === 'single' ? '' : 'none';
    const names = H.by_metric ? Object.keys(H.by_metric) : [];
    if (H.mode === 'none' || !names.length) {
      $('heatmap-controls').style.display = 'none';
      const why = H.mode === 'none' ? (H.reason || 'no model') : (H.mode === 'single'
        ? 'the base model has no value of any metric'
        : 'fewer than 3 done evaluations with a configuration that could be read against the model');
      host.innerHTML = nodata(why + (H.model ? ' (model: ' + H.model + ')' : '') + '.');
      method.textContent = '';
      return;
    }
    if (!H.by_metric[state.hmMetric]) state.hmMetric = names.includes(metrics[state.y] && metrics[state.y].name) ? metrics[state.y].name : names[0];
    const sel = $('hm-metric');
    sel.innerHTML = names.map((n) => '<option' + (n === state.hmMetric ? ' selected' : '') + '>' + esc(n) + '</option>').join('');
    const m = H.by_metric[state.hmMetric], j = byName.get(state.hmMetric), minimize = metrics[j].minimize;
    const L = H.layers, K = H.matrices.length;
    const value = [], colour = [], titles = [], evalOf = [];
    let note = '';
    if (H.mode === 'single') {
      const cs = $('hm-choice');
      cs.innerHTML = H.choices.map((c, k) => '<option value="' + k + '"' + (k === state.hmChoice ? ' selected' : '') + '>' + esc(c) + '</option>').join('');
      const delta = m.delta[state.hmChoice] || [], ids = m.eval[state.hmChoice] || [];
      let worst = 0;
      for (const d of delta) if (isNum(d)) worst = Math.max(worst, Math.abs(d));
      for (let k = 0; k < L * K; k++) {
        const d = delta[k];
        value.push(isNum(d) ? d : null);
        const harm = isNum(d) ? (minimize ? d : -d) : 0;
        const t = worst > 0 ? Math.sqrt(Math.abs(harm) / worst) : 0;
        colour.push(isNum(d) ? [mix(t, harm < 0), t] : null);
        titles.push(isNum(d) ? state.hmMetric + ' ' + fmt(m.base + d) + ' (base ' + fmt(m.base) + ', ' + fmtSigned(d) + ')' : 'not measured at ' + H.choices[state.hmChoice]);
        evalOf.push(ids[k]);
      }
      const measured = value.filter((v) => v !== null).length;
      note = '<b>Measured sensitivity.</b> The change of ' + esc(state.hmMetric) + ' when only that matrix is decomposed, at ' +
        esc(H.choices[state.hmChoice] || '?') + ', from the base model\u2019s ' + fmt(m.base) + ' (evaluation #' + H.base_id + '). ' +
        'Red: worse (' + esc(state.hmMetric) + ' is better when ' + (minimize ? 'smaller' : 'larger') + '), blue: better; colour \u221d \u221a|change|, ' +
        'relative to the largest at this choice (' + fmt(worst) + '). ' + measured + ' of ' + (L * K) + ' matrices measured at this choice; ' +
        'hatched: not measured; last row: mean over layers. Click a cell to inspect its evaluation.';
    } else {
      let top = 0;
      for (let k = 0; k < L * K; k++) top = Math.max(top, m.importance[k]);
      for (let k = 0; k < L * K; k++) {
        const varied = m.varied[k];
        value.push(varied ? m.importance[k] : null);
        const t = top > 0 ? Math.sqrt(m.importance[k] / top) : 0;
        colour.push(varied ? [mix(t, false), t] : null);
        titles.push(varied ? 'importance ' + (100 * m.importance[k]).toFixed(1) + ' %; effect ' + fmtSigned(m.effect[k]) +
          ' per standard deviation of the rank removed' + (m.effect[k] * (minimize ? 1 : -1) < 0 ? ' (removing rank looked harmless or better here)' : '') : 'its rank never varied');
        evalOf.push(null);
      }
      const target = (m.log ? 'log ' : '') + state.hmMetric;
      const loo = isNum(m.r2_loo) ? m.r2_loo.toFixed(2) : '?';
      note = '<b>Estimated importance.</b> Ridge regression of ' + esc(target) + ' over the ' + m.n + ' done evaluations on one feature per ' +
        '(layer, matrix): the fraction of its rank removed (1 \u2212 rank / min(out, in); 0 when dense), standardised. Penalty ' +
        m.ridge + ' \u00d7 n, chosen among ' + H.ridge_grid.join(', ') + ' by leave-one-out error. A matrix\u2019s importance is its |coefficient| ' +
        '(the change of ' + esc(target) + ' per standard deviation of its feature), normalised to sum to 1, as Optuna\u2019s parameter importances in spirit. ' +
        'Fit: R\u00b2 ' + (isNum(m.r2) ? m.r2.toFixed(2) : '?') + ' on the evaluations, ' + loo + ' leave-one-out' +
        (isNum(m.r2_loo) && m.r2_loo < 0.5 ? ' (low: read the map as a rough ranking, or evaluate more configurations)' : '') + '. ' +
        'Matrices always decomposed together share their importance; hatched: rank never varied; colour \u221d \u221aimportance; last row: sum over layers.';
    }
    if (H.unparsed) note += ' ' + H.unparsed + ' configuration(s) could not be read against the model and are left out.';
    if (H.ignored) note += ' ' + H.ignored + ' evaluation(s) decompose more than one matrix and are left out.';
    method.innerHTML = note;
    const cellText = (v) => (v === null ? '\u2014' : H.mode === 'single' ? (v > 0 ? '+' : '') + fmtCell(v) : (100 * v).toFixed(1) + '%');
    const rows = ['<table class="hm" id="heatmap-table" data-mode="' + H.mode + '"><thead><tr><th class="layer">layer</th>' +
      H.matrices.map((k) => '<th>' + esc(k) + '</th>').join('') + '</tr></thead><tbody>'];
    for (let l = 0; l < L; l++) {
      rows.push('<tr><th class="layer">' + l + '</th>');
      for (let k = 0; k < K; k++) {
        const c = l * K + k, v = value[c];
        const style = colour[c] ? ' style="background:' + colour[c][0] + ';color:' + textColour(colour[c][1]) + '"' : '';
        const click = evalOf[c] !== null && evalOf[c] !== undefined;
        rows.push('<td class="cell' + (v === null ? ' none' : '') + (click ? ' click' : '') + '" data-layer="' + l + '" data-matrix="' + esc(H.matrices[k]) +
          '" data-value="' + (v === null ? '' : v) + '"' + (click ? ' data-eval="' + evalOf[c] + '"' : '') + style +
          ' title="L' + l + ' ' + esc(H.matrices[k]) + ': ' + esc(titles[c]) + '">' + cellText(v) + '</td>');
      }
      rows.push('</tr>');
    }
    rows.push('<tr class="hm-total"><th class="layer">' + (H.mode === 'single' ? 'mean' : 'sum') + '</th>');
    for (let k = 0; k < K; k++) {
      let s = 0, n = 0;
      for (let l = 0; l < L; l++) if (value[l * K + k] !== null) { s += value[l * K + k]; n++; }
      rows.push('<td class="cell' + (n ? '' : ' none') + '">' + (n ? cellText(H.mode === 'single' ? s / n : s) : '\u2014') + '</td>');
    }
    rows.push('</tr></tbody></table>');
    host.innerHTML = rows.join('');
  }
  function bindHeatmap() {
    $('hm-metric').addEventListener('change', (ev) => { state.hmMetric = ev.target.value; renderHeatmap(); });
    $('hm-choice').addEventListener('change', (ev) => { state.hmChoice = Number(ev.target.value); renderHeatmap(); });
    $('heatmap').addEventListener('click', (ev) => {
      const td = ev.target.closest('td.cell');
      if (!td || !td.dataset.eval) return;
      const i = evals.findIndex((e) => String(e.id) === td.dataset.eval);
      if (i >= 0) select(i);
    });
  }

  // ---------------------------------------------------------------- table
  const STATUS_RANK = { done: 0, pruned: 1, nan: 2, failed: 3, claimed: 4 };
  function sortKeyOf(i) {
    const e = evals[i], k = state.sortKey;
    if (k === 'id') return e.id;
    if (k === 'label') return e.label.toLowerCase();
    if (k === 'status') return STATUS_RANK[e.status];
    if (k === 'front') return state.front.has(i) ? 0 : 1;
    if (k === 'wall') return isNum(e.wall_s) ? e.wall_s : NaN;
    return val(e, k);
  }
  function sortRows() {
    const keyed = state.filtered.map((i) => [sortKeyOf(i), i]);
    const dir = state.sortDir;
    keyed.sort((a, b) => {
      const x = a[0], y = b[0];
      const xn = typeof x === 'number' && isNaN(x), yn = typeof y === 'number' && isNaN(y);
      if (xn || yn) return xn === yn ? a[1] - b[1] : xn ? 1 : -1;  // missing values last either way
      return (x < y ? -1 : x > y ? 1 : 0) * dir || evals[a[1]].id - evals[b[1]].id;
    });
    state.order = keyed.map((p) => p[1]);
  }
  function renderColumnChooser() {
    $('colbox').innerHTML = metrics.map((m, j) => '<label><input type="checkbox" data-j="' + j + '"' + (state.columns.includes(j) ? ' checked' : '') +
      '> ' + esc(m.name) + '</label>').join('');
    $('cols-summary').textContent = 'metric columns: ' + state.columns.length + ' of ' + metrics.length + ' shown (click to choose)';
  }
  function renderTable() {
    const table = $('eval-table');
    const cols = [{ key: 'front', text: '\u2605', title: 'on the Pareto front of the plotted pair' }, { key: 'id', text: 'id', num: true },
      { key: 'label', text: 'configuration' }, { key: 'status', text: 'status' }];
    for (const j of state.columns) cols.push({ key: j, text: metrics[j].name, num: true, title: metrics[j].minimize ? 'smaller is better' : 'larger is better' });
    cols.push({ key: 'wall', text: 'wall s', num: true });
    table.tHead.innerHTML = '<tr>' + cols.map((c) => '<th data-key="' + c.key + '"' + (c.num ? ' class="num"' : '') + (c.title ? ' title="' + esc(c.title) + '"' : '') + '>' +
      esc(c.text) + (state.sortKey === c.key ? ' <span class="arrow">' + (state.sortDir > 0 ? '\u25b2' : '\u25bc') + '</span>' : '') + '</th>').join('') + '</tr>';
    table.dataset.rows = state.order.length;
    const pages = Math.max(1, Math.ceil(state.order.length / PAGE_ROWS));
    state.page = Math.min(state.page, pages - 1);
    const first = state.page * PAGE_ROWS, rows = state.order.slice(first, first + PAGE_ROWS);
    if (!evals.length) {
      table.tBodies[0].innerHTML = '<tr><td colspan="' + cols.length + '">' + nodata('the study has no evaluations yet.') + '</td></tr>';
    } else if (!rows.length) {
      table.tBodies[0].innerHTML = '<tr><td colspan="' + cols.length + '">' + nodata('no evaluation passes the filter.') + '</td></tr>';
    } else {
      table.tBodies[0].innerHTML = rows.map((i) => {
        const e = evals[i];
        return '<tr class="eval-row' + (i === state.selected ? ' sel' : '') + '" data-i="' + i + '" data-id="' + e.id + '">' +
          '<td class="star">' + (state.front.has(i) ? '\u2605' : '') + '</td><td class="num">' + e.id + '</td>' +
          '<td class="label" title="' + esc(e.config === '' ? '(base model)' : e.config) + '">' + esc(e.label) + '</td>' +
          '<td><span class="badge st-' + esc(e.status) + '">' + esc(e.status) + '</span></td>' +
          state.columns.map((j) => '<td class="num">' + (e.n[j] === null ? '' : isNum(e.v[j]) ? fmt(e.v[j]) : 'nan') + '</td>').join('') +
          '<td class="num">' + (isNum(e.wall_s) ? fmt(e.wall_s) : '') + '</td></tr>';
      }).join('');
    }
    const pager = $('pager');
    pager.innerHTML = '<button data-page="0"' + (state.page === 0 ? ' disabled' : '') + '>\u00ab first</button>' +
      '<button data-page="' + (state.page - 1) + '"' + (state.page === 0 ? ' disabled' : '') + '>\u2039 previous</button>' +
      '<span id="page-info">page ' + (state.page + 1) + ' of ' + pages + ' \u00b7 rows ' + (rows.length ? first + 1 : 0) + '\u2013' + (first + rows.length) + ' of ' + state.order.length + '</span>' +
      '<button data-page="' + (state.page + 1) + '"' + (state.page >= pages - 1 ? ' disabled' : '') + '>next \u203a</button>' +
      '<button data-page="' + (pages - 1) + '"' + (state.page >= pages - 1 ? ' disabled' : '') + '>last \u00bb</button>';
  }
  function bindTable() {
    $('eval-table').tHead.addEventListener('click', (ev) => {
      const th = ev.target.closest('th');
      if (!th) return;
      const raw = th.dataset.key, key = /^\d+$/.test(raw) ? Number(raw) : raw;
      if (state.sortKey === key) state.sortDir = -state.sortDir;
      else { state.sortKey = key; state.sortDir = typeof key === 'number' && !metrics[key].minimize ? -1 : 1; }
      sortRows();
      renderTable();
    });
    $('eval-table').tBodies[0].addEventListener('click', (ev) => {
      const tr = ev.target.closest('tr.eval-row');
      if (tr) select(Number(tr.dataset.i));
    });
    $('pager').addEventListener('click', (ev) => {
      const b = ev.target.closest('button');
      if (!b || b.disabled) return;
      state.page = Number(b.dataset.page);
      renderTable();
    });
    $('colbox').addEventListener('change', (ev) => {
      const j = Number(ev.target.dataset.j);
      state.columns = ev.target.checked ? state.columns.concat([j]) : state.columns.filter((c) => c !== j);
      renderColumnChooser();
      renderTable();
    });
  }

  // ---------------------------------------------------------------- wiring
  function refresh(keepPage) {
    renderPlot();
    sortRows();
    if (!keepPage) state.page = 0;
    renderTable();
  }
  function fillAxisControls() {
    const options = metrics.map((m, j) => '<option value="' + j + '">' + esc(m.name) + '</option>').join('');
    for (const axis of ['x', 'y']) {
      $(axis + '-metric').innerHTML = options;
      $(axis + '-metric').value = String(state[axis]);
      $(axis + '-dir').value = state[axis + 'Min'] ? 'min' : 'max';
    }
  }
  function setAxis(axis, j) {
    state[axis] = j;
    state[axis + 'Min'] = metrics[j].minimize;
    autoLog();
  }
  function bindControls() {
    for (const axis of ['x', 'y']) {
      $(axis + '-metric').addEventListener('change', (ev) => { setAxis(axis, Number(ev.target.value)); fillAxisControls(); refresh(true); });
      $(axis + '-dir').addEventListener('change', (ev) => { state[axis + 'Min'] = ev.target.value === 'min'; refresh(true); });
      $(axis + '-log').addEventListener('change', (ev) => { state[axis + 'Log'] = ev.target.checked; renderPlot(); });
    }
    $('swap').addEventListener('click', () => {
      [state.x, state.y] = [state.y, state.x];
      [state.xMin, state.yMin] = [state.yMin, state.xMin];
      [state.xLog, state.yLog] = [state.yLog, state.xLog];
      fillAxisControls();
      refresh(true);
    });
    $('include-pruned').addEventListener('change', (ev) => { state.pruned = ev.target.checked; refresh(true); });
    let timer = 0;
    const later = (f) => { clearTimeout(timer); timer = setTimeout(f, 150); };
    $('filter-text').addEventListener('input', (ev) => later(() => { state.text = ev.target.value; applyFilter(); refresh(false); }));
    $('filter-where').addEventListener('input', (ev) => later(() => {
      const w = parseWhere(ev.target.value);
      $('where-error').textContent = w.error;
      if (w.error) return;
      state.conds = w.conds;
      applyFilter();
      refresh(false);
    }));
  }
  function renderHeader() {
    document.title = 'rankscope report: ' + D.study;
    $('study-name').textContent = D.study;
    $('study-store').textContent = 'results store ' + D.store + (D.objectives.length ? ' \u00b7 objectives ' +
      D.objectives.map((o) => o.metric + ':' + (o.minimize ? 'min' : 'max')).join(', ') : '');
    const c = D.counts;
    const total = c.done + c.failed + c.nan + c.pruned;
    $('progress').innerHTML = '<span class="badge" id="count-finished">finished <b>' + total + '</b></span>' +
      ['done', 'failed', 'nan', 'pruned', 'claimed'].map((s) => '<span class="badge st-' + s + '" id="count-' + s + '" data-count="' + c[s] + '">' + s + ' <b>' + c[s] + '</b></span>').join('');
    $('settings').textContent = JSON.stringify(D.settings, null, 2);
  }
  function init() {
    renderHeader();
    // The default pair: the objectives (y the first, x the second, as pareto.svg), then any other metrics.
    const preferred = D.objectives.map((o) => byName.get(o.metric));
    for (let j = 0; j < metrics.length && preferred.length < 2; j++) if (!preferred.includes(j)) preferred.push(j);
    if (preferred.length >= 2) {
      state.y = preferred[0];
      state.x = preferred[1];
      state.yMin = metrics[state.y].minimize;
      state.xMin = metrics[state.x].minimize;
    }
    const rest = metrics.map((_, j) => j).filter((j) => !preferred.includes(j) && !metrics[j].name.startsWith('predicted.'));
    state.columns = preferred.concat(rest).slice(0, DEFAULT_COLUMNS);
    $('include-pruned').checked = state.pruned;
    $('filter-where').value = state.where;
    const w = parseWhere(state.where);
    $('where-error').textContent = w.error;
    state.conds = w.conds;
    applyFilter();
    if (metrics.length >= 2) autoLog();
    fillAxisControls();
    if (metrics.length < 2) for (const id of ['x-metric', 'y-metric', 'x-dir', 'y-dir', 'x-log', 'y-log', 'swap']) $(id).disabled = true;
    renderColumnChooser();
    bindPlot();
    bindHeatmap();
    bindTable();
    bindControls();
    refresh(false);
    renderHeatmap();
    // #eval=ID in the address selects that evaluation (a link to one point).
    const wanted = /^#eval=(\d+)$/.exec(window.location.hash);
    if (wanted) {
      const i = evals.findIndex((e) => String(e.id) === wanted[1]);
      if (i >= 0) select(i);
    }
  }
  try {
    init();
    document.body.dataset.ready = '1';
  } catch (err) {
    const box = $('error');
    box.style.display = 'block';
    box.textContent = 'The report could not be drawn: ' + err;
    document.body.dataset.ready = 'error';
    throw err;
  }
})();
</script>
</body>
</html>
)PAGE";

}  // namespace

std::string report_html(const ResultsStore& db, const StudyInfo& study, const ReportHtmlOptions& options) {
  constexpr std::string_view marker = "@DATA@";
  const size_t at = kPage.find(marker);
  RS_ASSERT(at != std::string_view::npos);
  return std::string(kPage.substr(0, at)) + json_for_script(report_data(db, study, options)) +
         std::string(kPage.substr(at + marker.size()));
}

}  // namespace rankscope::cli
