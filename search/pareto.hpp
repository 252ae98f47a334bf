// Pareto tools: the non-dominated rows of a table of objective values, and the hypervolume they
// dominate. Every column has its own direction (minimize[j] true: smaller is better); both
// functions convert to minimisation internally. Algorithms and costs: docs/search.md.
#pragma once

#include <cstddef>
#include <vector>

namespace rankscope {

// Indices (ascending) of the non-dominated rows of `values` (n rows of m = minimize.size()
// columns). Row a dominates row b when a is no worse in every column and strictly better in one;
// identical rows do not dominate each other, so duplicates on the front are all kept. Rows with a
// NaN are excluded. m = 2: sort + sweep, O(n log n); m >= 3: lexicographic sort, then each row is
// checked against the front found so far, O(n log n + n f m) for a front of f rows.
// Throws Error when a row's length differs from minimize.size().
std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& values,
                                 const std::vector<bool>& minimize);

// Hypervolume (Lebesgue measure) of the region dominated by `values` and bounded by the reference
// point `ref`. Rows with a NaN, and rows not strictly better than `ref` in every objective,
// contribute nothing. Exact: m = 1 trivially, m = 2 by a sweep (O(n log n)), m = 3 by slicing
// along the third objective over an incrementally kept 2-D staircase (O(n log n)), m >= 4 by
// recursive slicing down to the 3-D case (O(n^(m-2) log n): for small fronts).
// Throws Error on a length mismatch, m = 0 or a NaN in `ref`.
double hypervolume(const std::vector<std::vector<double>>& values, const std::vector<bool>& minimize,
                   const std::vector<double>& ref);

}  // namespace rankscope
