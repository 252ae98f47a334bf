#include "search/allocate.hpp"

#include <cmath>
#include <limits>

#include <Eigen/Dense>

#include "core/base/error.hpp"

namespace rankscope {

std::optional<std::vector<int64_t>> allocate_min_cost(const std::vector<std::vector<double>>& cost,
                                                      const std::vector<std::vector<int64_t>>& saved, int64_t need,
                                                      int64_t max_units) {
  const size_t K = cost.size();
  if (saved.size() != K) fail("allocate: {} cost rows, {} saving rows", K, saved.size());
  int64_t total = 0;
  for (size_t k = 0; k < K; ++k) {
    if (cost[k].size() != saved[k].size() || cost[k].empty()) fail("allocate: knob {} has mismatched choices", k);
    if (cost[k][0] != 0 || saved[k][0] != 0) fail("allocate: digit 0 of knob {} must be dense (cost 0, saves 0)", k);
    int64_t most = 0;
    for (size_t d = 0; d < cost[k].size(); ++d) {
      if (!std::isfinite(cost[k][d]) || cost[k][d] < 0) fail("allocate: cost of knob {} digit {} is not finite and >= 0", k, d);
      most = std::max(most, saved[k][d]);
    }
    total += most;
  }
  if (need <= 0) return std::vector<int64_t>(K, 0);
  if (total < need) return std::nullopt;
  const int64_t unit = std::max<int64_t>(1, (total + max_units - 1) / max_units);
  // Units still needed: the state. Rounding savings down keeps every solution feasible.
  const int64_t goal = (need + unit - 1) / unit;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(static_cast<size_t>(goal) + 1, kInf), next;
  dp[0] = 0;  // dp[c]: least cost with min(goal, units saved) == c
  std::vector<std::vector<int8_t>> choice(K, std::vector<int8_t>(static_cast<size_t>(goal) + 1, -1));
  std::vector<std::vector<int32_t>> from(K, std::vector<int32_t>(static_cast<size_t>(goal) + 1, -1));
  if (goal > std::numeric_limits<int32_t>::max()) fail("allocate: too many units");
  for (size_t k = 0; k < K; ++k) {
    if (cost[k].size() > 127) fail("allocate: knob {} has more than 127 choices", k);
    next.assign(dp.size(), kInf);
    for (size_t c = 0; c < dp.size(); ++c) {
      if (dp[c] == kInf) continue;
      for (size_t d = 0; d < cost[k].size(); ++d) {
        if (d > 0 && saved[k][d] <= 0) continue;
        const int64_t u = saved[k][d] / unit;
        const auto c2 = static_cast<size_t>(std::min<int64_t>(goal, static_cast<int64_t>(c) + u));
        const double v = dp[c] + cost[k][d];
        if (v < next[c2]) {
          next[c2] = v;
          choice[k][c2] = static_cast<int8_t>(d);
          from[k][c2] = static_cast<int32_t>(c);
        }
      }
    }
    dp.swap(next);
  }
  if (dp[static_cast<size_t>(goal)] == kInf) return std::nullopt;  // short after rounding
  std::vector<int64_t> digits(K, 0);
  size_t at = static_cast<size_t>(goal);
  for (size_t k = K; k-- > 0;) {
    digits[k] = choice[k][at];
    at = static_cast<size_t>(from[k][at]);
  }
  return digits;
}

CostFit refit_costs(const std::vector<double>& prior, const std::vector<std::vector<int64_t>>& rows,
                    const std::vector<double>& y, bool fit_intercept) {
  if (rows.size() != y.size()) fail("refit_costs: {} rows but {} values", rows.size(), y.size());
  if (rows.empty()) fail("refit_costs: no observations");
  // The items that occur, renumbered 0..p-1.
  std::vector<int64_t> column(prior.size(), -1);
  std::vector<int64_t> items;
  for (const auto& row : rows) {
    for (const auto j : row) {
      if (j < 0 || j >= static_cast<int64_t>(prior.size())) fail("refit_costs: item {} out of range", j);
      if (column[static_cast<size_t>(j)] < 0) {
        column[static_cast<size_t>(j)] = static_cast<int64_t>(items.size());
        items.push_back(j);
      }
    }
  }
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto p = static_cast<Eigen::Index>(items.size());
  const Eigen::Index b = fit_intercept ? 1 : 0;  // column 0: the intercept, unpenalised
  // X [n x (b + p)] (0/1, an item counted as often as it occurs); the residual of the prior r = y - X prior.
  Eigen::MatrixXd X = Eigen::MatrixXd::Zero(n, b + p);
  Eigen::VectorXd r(n), yv(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    double sum = 0;
    if (fit_intercept) X(i, 0) = 1.0;
    for (const auto j : rows[static_cast<size_t>(i)]) {
      X(i, b + column[static_cast<size_t>(j)]) += 1.0;
      sum += prior[static_cast<size_t>(j)];
    }
    yv(i) = y[static_cast<size_t>(i)];
    r(i) = yv(i) - sum;
  }
  const double mean = yv.mean();
  const double total = std::max((yv.array() - mean).square().sum(), 1e-300);
  CostFit fit;
  fit.n_items_fitted = p;
  // The prior alone (with its best intercept when one is fitted).
  fit.prior_r2 = 1.0 - (fit_intercept ? (r.array() - r.mean()).square().sum() : r.squaredNorm()) / total;
  // delta = (X^T X + lambda D)^-1 X^T r (D: 1 on the items, 0 on the intercept); leave-one-out
  // residual e_i / (1 - h_ii), H = X A^-1 X^T.
  const Eigen::MatrixXd gram = X.transpose() * X;
  Eigen::VectorXd penalised = Eigen::VectorXd::Ones(b + p);
  if (fit_intercept) penalised(0) = 0.0;
  double best = std::numeric_limits<double>::infinity();
  Eigen::VectorXd best_delta = Eigen::VectorXd::Zero(b + p);
  for (double lambda = 1e-3; lambda <= 1e6 * 1.0001; lambda *= 10) {
    const Eigen::LDLT<Eigen::MatrixXd> solver(gram + Eigen::MatrixXd((lambda * penalised).asDiagonal()));
    if (solver.info() != Eigen::Success) continue;
    const Eigen::VectorXd delta = solver.solve(X.transpose() * r);
    const Eigen::MatrixXd AinvXt = solver.solve(X.transpose());  // [p x n]
    double loo = 0;
    for (Eigen::Index i = 0; i < n; ++i) {
      const double h = X.row(i).dot(AinvXt.col(i));
      const double e = r(i) - X.row(i).dot(delta);
      loo += std::pow(e / std::max(1.0 - h, 1e-12), 2);
    }
    if (loo < best) {
      best = loo;
      best_delta = delta;
      fit.lambda = lambda;
    }
  }
  if (!std::isfinite(best)) fail("refit_costs: no penalty gave a solvable system");
  fit.loo_r2 = 1.0 - best / total;
  fit.intercept = fit_intercept ? best_delta(0) : 0.0;
  fit.cost = prior;
  for (Eigen::Index c = 0; c < p; ++c) {
    auto& v = fit.cost[static_cast<size_t>(items[static_cast<size_t>(c)])];
    v = std::max(0.0, v + best_delta(b + c));
  }
  return fit;
}

}  // namespace rankscope
