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

}  // namespace rankscope
