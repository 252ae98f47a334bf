#include "search/allocate.hpp"

#include <cmath>
#include <limits>

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

}  // namespace rankscope
