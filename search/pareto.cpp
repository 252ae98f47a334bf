#include "search/pareto.hpp"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <map>
#include <numeric>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

void check_widths(const std::vector<std::vector<double>>& values, size_t m, const char* what) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i].size() != m) fail("{}: row {} has {} values, expected {} objectives", what, i, values[i].size(), m);
  }
}

bool has_nan(const std::vector<double>& row) {
  return std::any_of(row.begin(), row.end(), [](double v) { return std::isnan(v); });
}

// a weakly dominates b (no worse everywhere), both already in minimisation form.
bool weakly_dominates(const double* a, const double* b, size_t m) {
  for (size_t j = 0; j < m; ++j) {
    if (a[j] > b[j]) return false;
  }
  return true;
}

std::vector<size_t> front_2d(const std::vector<std::vector<double>>& values, const std::vector<bool>& minimize) {
  struct Row {
    double a, b;
    size_t index;
  };
  std::vector<Row> rows;
  rows.reserve(values.size());
  const double s0 = minimize[0] ? 1.0 : -1.0, s1 = minimize[1] ? 1.0 : -1.0;
  for (size_t i = 0; i < values.size(); ++i) {
    const double a = values[i][0], b = values[i][1];
    if (std::isnan(a) || std::isnan(b)) continue;
    rows.push_back({s0 * a, s1 * b, i});
  }
  std::sort(rows.begin(), rows.end(), [](const Row& x, const Row& y) { return x.a < y.a || (x.a == y.a && x.b < y.b); });
  std::vector<size_t> front;
  double best = INFINITY;  // smallest b over the groups of strictly smaller a
  bool any = false;
  for (size_t g = 0; g < rows.size();) {
    // A group of equal a: only its rows with the group's smallest b may be non-dominated, and
    // only when that b beats every earlier (smaller-a) group.
    const double b = rows[g].b;
    size_t end = g;
    while (end < rows.size() && rows[end].a == rows[g].a) ++end;
    if (!any || b < best) {
      for (size_t k = g; k < end && rows[k].b == b; ++k) front.push_back(rows[k].index);
      best = b;
      any = true;
    }
    g = end;
  }
  std::sort(front.begin(), front.end());
  return front;
}

std::vector<size_t> front_general(const std::vector<std::vector<double>>& values, const std::vector<bool>& minimize) {
  const size_t m = minimize.size();
  std::vector<double> flat;  // minimisation form, row-major
  std::vector<size_t> rows;
  flat.reserve(values.size() * m);
  for (size_t i = 0; i < values.size(); ++i) {
    if (has_nan(values[i])) continue;
    rows.push_back(i);
    for (size_t j = 0; j < m; ++j) flat.push_back(minimize[j] ? values[i][j] : -values[i][j]);
  }
  std::vector<size_t> order(rows.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return std::lexicographical_compare(&flat[x * m], &flat[x * m] + m, &flat[y * m], &flat[y * m] + m);
  });
  // A dominator comes strictly earlier in lexicographic order, and when it is itself dominated,
  // its own (transitive) dominator on the front dominates too: checking the front so far suffices.
  std::vector<size_t> front;  // positions into rows/flat
  for (size_t k : order) {
    const double* p = &flat[k * m];
    bool dominated = false;
    for (size_t f : front) {
      const double* q = &flat[f * m];
      if (weakly_dominates(q, p, m) && !std::equal(q, q + m, p)) {
        dominated = true;
        break;
      }
    }
    if (!dominated) front.push_back(k);
  }
  std::vector<size_t> result;
  result.reserve(front.size());
  for (size_t k : front) result.push_back(rows[k]);
  std::sort(result.begin(), result.end());
  return result;
}

// ---- hypervolume, everything in minimisation form and strictly below ref ----

using Points = std::vector<std::vector<double>>;

double hv2(Points pts, double rx, double ry) {
  std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a[0] < b[0] || (a[0] == b[0] && a[1] < b[1]); });
  double area = 0, cur = ry;
  for (const auto& p : pts) {
    if (p[1] < cur) {
      area += (rx - p[0]) * (cur - p[1]);
      cur = p[1];
    }
  }
  return area;
}

// The 2-D staircase of mutually non-dominated points (x strictly increasing, y strictly
// decreasing) and the area it dominates up to (rx, ry), updated per insertion.
class Staircase {
 public:
  Staircase(double rx, double ry) : rx_(rx), ry_(ry) {}
  double area() const { return area_; }

  void insert(double x, double y) {
    auto it = steps_.lower_bound(x);  // first step with sx >= x
    double top = ry_;                 // the new region lies below the left neighbour's y
    if (it != steps_.begin()) {
      auto left = std::prev(it);
      if (left->second <= y) return;  // dominated by the left neighbour
      top = left->second;
    }
    if (it != steps_.end() && it->first == x && it->second <= y) return;
    // Steps dominated by (x, y) are the ones from `it` with sy >= y; the first with sy < y is the
    // right neighbour. Area already covered inside the box [x, rx] x [y, top]:
    double covered = 0;
    auto q = it;
    while (q != steps_.end() && q->second >= y) {
      auto next = std::next(q);
      const double xnext = next == steps_.end() ? rx_ : next->first;
      covered += (xnext - q->first) * (top - q->second);
      q = next;
    }
    if (q != steps_.end()) covered += (rx_ - q->first) * (top - y);
    area_ += (rx_ - x) * (top - y) - covered;
    steps_.erase(it, q);
    steps_.emplace(x, y);
  }

 private:
  double rx_, ry_, area_ = 0;
  std::map<double, double> steps_;
};

double hv3(Points pts, double rx, double ry, double rz) {
  std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a[2] < b[2]; });
  Staircase stairs(rx, ry);
  double volume = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    stairs.insert(pts[i][0], pts[i][1]);
    const double znext = i + 1 < pts.size() ? pts[i + 1][2] : rz;
    volume += stairs.area() * (znext - pts[i][2]);
  }
  return volume;
}

double hv_rec(Points pts, const std::vector<double>& ref) {
  const size_t m = ref.size();
  if (pts.empty()) return 0;
  if (m == 1) {
    double best = ref[0];
    for (const auto& p : pts) best = std::min(best, p[0]);
    return ref[0] - best;
  }
  if (m == 2) return hv2(std::move(pts), ref[0], ref[1]);
  if (m == 3) return hv3(std::move(pts), ref[0], ref[1], ref[2]);
  // Slice along the last objective: between consecutive values z_i and z_{i+1}, the points with
  // z <= z_i dominate (their projection's (m-1)-volume) x (z_{i+1} - z_i).
  std::sort(pts.begin(), pts.end(), [m](const auto& a, const auto& b) { return a[m - 1] < b[m - 1]; });
  const std::vector<double> sub_ref(ref.begin(), ref.end() - 1);
  std::vector<bool> sub_min(m - 1, true);
  Points prefix;
  double volume = 0;
  for (size_t i = 0; i < pts.size(); ++i) {
    prefix.emplace_back(pts[i].begin(), pts[i].end() - 1);
    const double znext = i + 1 < pts.size() ? pts[i + 1][m - 1] : ref[m - 1];
    if (znext == pts[i][m - 1]) continue;
    // Keep the prefix non-dominated so that the recursion works on fronts only.
    const auto keep = pareto_front(prefix, sub_min);
    Points reduced;
    reduced.reserve(keep.size());
    for (size_t k : keep) reduced.push_back(std::move(prefix[k]));
    prefix = std::move(reduced);
    volume += hv_rec(prefix, sub_ref) * (znext - pts[i][m - 1]);
  }
  return volume;
}

}  // namespace

std::vector<size_t> pareto_front(const std::vector<std::vector<double>>& values, const std::vector<bool>& minimize) {
  const size_t m = minimize.size();
  check_widths(values, m, "pareto_front");
  if (m == 2) return front_2d(values, minimize);
  return front_general(values, minimize);
}

double hypervolume(const std::vector<std::vector<double>>& values, const std::vector<bool>& minimize,
                   const std::vector<double>& ref) {
  const size_t m = minimize.size();
  if (m == 0) fail("hypervolume: no objectives");
  if (ref.size() != m) fail("hypervolume: the reference point has {} values, expected {} objectives", ref.size(), m);
  check_widths(values, m, "hypervolume");
  std::vector<double> r(m);
  for (size_t j = 0; j < m; ++j) {
    if (std::isnan(ref[j])) fail("hypervolume: the reference point has a NaN (objective {})", j);
    r[j] = minimize[j] ? ref[j] : -ref[j];
  }
  Points pts;
  for (const auto& row : values) {
    if (has_nan(row)) continue;
    std::vector<double> p(m);
    bool inside = true;
    for (size_t j = 0; j < m && inside; ++j) {
      p[j] = minimize[j] ? row[j] : -row[j];
      inside = p[j] < r[j];
    }
    if (inside) pts.push_back(std::move(p));
  }
  if (m >= 4 && !pts.empty()) {
    const auto keep = pareto_front(pts, std::vector<bool>(m, true));
    Points front;
    for (size_t k : keep) front.push_back(std::move(pts[k]));
    pts = std::move(front);
  }
  return hv_rec(std::move(pts), r);
}

}  // namespace rankscope
