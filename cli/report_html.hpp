// The interactive report of a study (`rankscope report --out DIR` writes it as DIR/index.html):
// one self-contained HTML file, its data one JSON object in a <script type="application/json">
// and everything else inline (styles, plain JavaScript, SVG drawn by that script): no network, no
// other file. Three sections:
//  - the Pareto front of any two numeric metrics the reader picks (directions and log axes
//    switchable), recomputed in the page; every point inspectable (configuration, every metric
//    with its standard error, n and protocol);
//  - a layer x matrix heat map: for a `single`-space study the measured change of a metric when
//    one matrix alone is decomposed at one choice; for any other study each cell's importance,
//    estimated by ridge regression of the metric on how much of each cell's rank was removed;
//  - every evaluation in a sortable, filterable, paged table with short labels; the settings and
//    the progress counts.
// The heavy lifting that deserves tests (labels, directions, importance, sensitivities, the JSON)
// is here in C++; the page only draws it.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/io/model_config.hpp"
#include "core/space/config_string.hpp"
#include "db/results_store.hpp"
#include "search/strategy.hpp"

namespace rankscope::cli {

struct ReportHtmlOptions {
  // The page's default pair (y: the first, x: the second) and their directions; the study's
  // objectives where empty. A name not stored in the study is ignored.
  std::vector<Objective> objectives;
  bool include_pruned = false;  // the page's "include pruned" switch starts on
  std::string where;            // the page's numeric filter starts with this text (report --where)
  // The model whose config.json gives the shapes behind the configuration strings; empty: the
  // path the store recorded for the study's model (its settings' model_hash).
  std::filesystem::path model;
};

// The whole page for `study` of `db`. Never fails for lack of data: a study without evaluations,
// with one metric, or whose model cannot be found gives a valid page whose sections say so.
// Throws Error only when the store does.
std::string report_html(const ResultsStore& db, const StudyInfo& study, const ReportHtmlOptions& options);

// The JSON object the page embeds (see report_html.cpp for its fields).
nlohmann::json report_data(const ResultsStore& db, const StudyInfo& study, const ReportHtmlOptions& options);

// `json` as text that can stand inside <script type="application/json">: every '<' written as
// the JSON escape \u003c, so no string in it ("</script>", "<!--") can end or alter the element.
// JSON.parse reads it back unchanged.
std::string json_for_script(const nlohmann::json& json);

// The direction a metric is better in when nothing says otherwise: larger for accuracies and
// scores (a last name part containing acc, f1, mcc, or size.reduction_pct), smaller otherwise
// (perplexity, loss, KL, parameters, bytes, FLOPs, latency).
bool default_minimize(std::string_view metric);

// A short readable name of a configuration (at most 40 characters, 48 in the counts form; the canonical string is
// the full name): "base model"; the canonical string when it is short, a method shared by every
// cell written once at the end ("L1,3:all=8", "L*:mlp=50% @svd"); otherwise the number of cells
// and, per choice from the highest rank down, the matrix kinds at that choice over all layers
// ("9 cells: v 75%; q,k 50%; q,mlp 25% @svd"), or the number of cells at it when that is every kind
// or the kinds do not fit ("22 cells: 12×50%; 10×25% @svd"), choices that still do not fit counted
// ("; +2 more").
std::string short_label(const Config& config, const ModelConfig& model);

// Per-cell importance by ridge regression. `features` is n rows of p columns (one per cell),
// `target` n values. Rows with a non-finite target or feature are left out. Each column that
// varies is standardised (mean 0, sd 1), the target centred; the coefficients solve
// (Z^T Z + ridge * n * I) b = Z^T y, `ridge` given or, by default, the value of kRidgeGrid whose
// fit predicts each row left out best (exact leave-one-out for ridge regression).
// importance[j] = |b_j| / sum |b| (0 for columns that do not vary; all 0 when nothing does or
// fewer than kMinRows rows remain); effect[j] = b_j, the change of the target per standard
// deviation of the feature.
struct RidgeImportance {
  static constexpr size_t kMinRows = 3;
  static constexpr std::array<double, 7> kRidgeGrid = {1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0};
  std::vector<double> importance;
  std::vector<double> effect;
  std::vector<bool> varied;
  size_t n = 0;       // rows used
  double ridge = 0;   // the penalty used (times n)
  double r2 = 0;      // of the fit on those rows (1 - residual / total sum of squares); 0 when not fitted
  // The same for predictions of each row by the fit without it (leave-one-out): what the estimate
  // is worth when there are about as many cells as evaluations.
  double r2_loo = 0;
};
RidgeImportance ridge_importance(const std::vector<std::vector<double>>& features, const std::vector<double>& target,
                                 std::optional<double> ridge = std::nullopt);

// The feature of one cell of a configuration: the fraction of the matrix's rank removed,
// 1 - rank / min(out, in) (0 when the cell is dense). Monotone in the damage, unlike the
// fraction of parameters removed (an SVD at half the rank of a square matrix removes none).
double removed_rank_fraction(const ResolvedCell& cell);

}  // namespace rankscope::cli
