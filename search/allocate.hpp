// Exact rank allocation at a size target: a multiple-choice knapsack solved by dynamic programming.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace rankscope {

// One digit per knob minimising the sum of cost[k][d] subject to the sum of saved[k][d] >= need.
// Digit 0 of every knob must save 0 at cost 0 (dense). Costs must be finite and >= 0; a digit that
// saves nothing or less is never better than digit 0 and is skipped. Savings are counted in units
// of ceil(total / max_units) rounded down, so the result always saves at least `need` and is exact
// when the unit is 1 (e.g. parameters of a small model); ties keep the lower digit. nullopt when even
// the largest savings fall short. Throws Error on shapes that disagree.
std::optional<std::vector<int64_t>> allocate_min_cost(const std::vector<std::vector<double>>& cost,
                                                      const std::vector<std::vector<int64_t>>& saved, int64_t need,
                                                      int64_t max_units = int64_t{1} << 18);

// Per-item costs refitted from measured sums: observation i is the set rows[i] of items (indices
// into `prior`) and a value y[i] ~ sum of their costs (e.g. log(ppl / base) of a configuration
// with those (matrix, choice) cells). Ridge regression toward the prior:
//   minimise sum_i (y_i - sum_{j in rows[i]} c_j)^2 + lambda sum_j (c_j - prior_j)^2
// over the items that occur in some row (the others keep their prior), lambda from a grid
// (1e-3 .. 1e6, decades; the top one keeps the prior) by the exact leave-one-out error. Costs come back clamped at >= 0. With
// `fit_intercept`, y_i ~ b + sum c_j with b unpenalised (values not relative to a base).
struct CostFit {
  std::vector<double> cost;     // one per item
  double lambda = 0;
  double loo_r2 = 0;            // 1 - LOO squared error / total sum of squares of y (about its mean)
  double prior_r2 = 0;          // 1 - squared error of the prior's sums / the same (in sample; with its best intercept)
  int64_t n_items_fitted = 0;   // items occurring in some row
  double intercept = 0;         // b (0 without fit_intercept)
};
// Throws Error when rows and y disagree in size, an index is out of range, or there are no rows.
CostFit refit_costs(const std::vector<double>& prior, const std::vector<std::vector<int64_t>>& rows,
                    const std::vector<double>& y, bool fit_intercept = false);

}  // namespace rankscope
