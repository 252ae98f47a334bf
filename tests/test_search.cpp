// Search strategies (search/strategy.hpp) and Pareto tools (search/pareto.hpp): brute-force
// cross-checks, exact sequences, synthetic problems with known answers, determinism, and
// state()/restore() continuation.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>

#include "core/base/error.hpp"
#include "search/allocate.hpp"
#include "search/pareto.hpp"
#include "search/strategy.hpp"

using namespace rankscope;
using json = nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- brute-force references ----

std::vector<size_t> brute_front(const std::vector<std::vector<double>>& v, const std::vector<bool>& minimize) {
  std::vector<size_t> out;
  const auto bad = [](const std::vector<double>& r) { return std::any_of(r.begin(), r.end(), [](double x) { return std::isnan(x); }); };
  for (size_t i = 0; i < v.size(); ++i) {
    if (bad(v[i])) continue;
    bool dominated = false;
    for (size_t k = 0; k < v.size() && !dominated; ++k) {
      if (k == i || bad(v[k])) continue;
      bool no_worse = true, better = false;
      for (size_t j = 0; j < minimize.size(); ++j) {
        const double a = minimize[j] ? v[k][j] : -v[k][j], b = minimize[j] ? v[i][j] : -v[i][j];
        if (a > b) no_worse = false;
        if (a < b) better = true;
      }
      dominated = no_worse && better;
    }
    if (!dominated) out.push_back(i);
  }
  return out;
}

// Hypervolume of integer points in [-range, range] (minimisation form) by counting the unit cells
// they dominate below the reference point.
double brute_hypervolume(const std::vector<std::vector<double>>& v, const std::vector<bool>& minimize,
                         const std::vector<double>& ref, int range) {
  const int lo = -range;
  const size_t m = minimize.size();
  std::vector<std::vector<double>> pts;
  std::vector<double> r(m);
  for (size_t j = 0; j < m; ++j) r[j] = minimize[j] ? ref[j] : -ref[j];
  for (const auto& row : v) {
    std::vector<double> p(m);
    for (size_t j = 0; j < m; ++j) p[j] = minimize[j] ? row[j] : -row[j];
    pts.push_back(p);
  }
  std::vector<int> cell(m, lo);
  double count = 0;
  while (true) {
    bool inside = true;
    for (size_t j = 0; j < m; ++j) inside = inside && cell[j] + 1 <= r[j];
    if (inside) {
      for (const auto& p : pts) {
        bool dom = true;
        for (size_t j = 0; j < m && dom; ++j) dom = p[j] <= cell[j];
        if (dom) {
          count += 1;
          break;
        }
      }
    }
    size_t j = 0;
    for (; j < m; ++j) {
      if (++cell[j] < range) break;
      cell[j] = lo;
    }
    if (j == m) break;
  }
  return count;
}

// ---- driving a strategy ----

using Evaluator = std::function<Observation(const Point&)>;

// Asks n at a time and tells every result at once, until the strategy asks nothing or max_steps.
// With swap_at set, at that step the strategy is replaced by a fresh one restored from its state
// (serialised to text): after the ask and before the tell (pending points), or before the ask.
std::vector<std::vector<Point>> drive(const std::function<std::unique_ptr<Strategy>()>& make, const Evaluator& eval, int64_t n,
                                      size_t max_steps, size_t swap_at = SIZE_MAX, bool swap_pending = true) {
  auto s = make();
  std::vector<std::vector<Point>> asks;
  const auto swap = [&] {
    const auto text = s->state().dump();
    auto fresh = make();
    fresh->restore(json::parse(text));
    REQUIRE(fresh->state() == s->state());
    s = std::move(fresh);
  };
  for (size_t step = 0; step < max_steps; ++step) {
    if (step == swap_at && !swap_pending) swap();
    auto pts = s->ask(n);
    if (pts.empty()) break;
    asks.push_back(pts);
    if (step == swap_at && swap_pending) swap();
    std::vector<Observation> obs;
    for (const auto& p : pts) obs.push_back(eval(p));
    s->tell(obs);
  }
  return asks;
}

std::vector<Point> flatten(const std::vector<std::vector<Point>>& asks) {
  std::vector<Point> out;
  for (const auto& a : asks) out.insert(out.end(), a.begin(), a.end());
  return out;
}

bool all_distinct(const std::vector<Point>& pts) { return std::set<Point>(pts.begin(), pts.end()).size() == pts.size(); }

Observation blank(const Point& p) { return {p, {{"m", 0.0}}, true}; }

// ---- the synthetic bi-objective problem: 8 genes of radix 5 ----

const std::vector<int64_t> kGenes(8, 5);
const std::vector<double> kWeights = {1.0, 0.5, 2.0, 0.25, 1.5, 0.75, 3.0, 1.25};

Observation bi_objective(const Point& p) {
  double f1 = 0, f2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    f1 += static_cast<double>(p[i]);
    f2 += kWeights[i] * static_cast<double>((4 - p[i]) * (4 - p[i]));
  }
  return {p, {{"f1", f1}, {"f2", f2}}, true};
}

std::vector<double> objectives_of(const Observation& o) { return {o.metrics.at("f1"), o.metrics.at("f2")}; }

}  // namespace

// =============================================================================================
// Objectives and constraints
// =============================================================================================

TEST_CASE("parse_objectives accepts the documented syntax") {
  const auto o = parse_objectives("tinystories.ppl:min, size.params:min,accuracy:max");
  REQUIRE(o.size() == 3);
  CHECK(o[0].metric == "tinystories.ppl");
  CHECK(o[0].minimize);
  CHECK(o[1].metric == "size.params");
  CHECK(o[2].metric == "accuracy");
  CHECK_FALSE(o[2].minimize);
  CHECK(parse_objectives("").empty());
  CHECK(parse_objectives("  ").empty());
}

TEST_CASE("parse_objectives rejects bad syntax naming the token") {
  using Catch::Matchers::Contains;
  CHECK_THROWS_AS(parse_objectives("ppl"), Error);
  CHECK_THROWS_WITH(parse_objectives("a:min,ppl"), Contains("'ppl'"));
  CHECK_THROWS_WITH(parse_objectives("ppl:mean"), Contains("'ppl:mean'") && Contains("min or max"));
  CHECK_THROWS_WITH(parse_objectives(":min"), Contains("bad metric name"));
  CHECK_THROWS_WITH(parse_objectives("p p l:min"), Contains("'p p l:min'"));
  CHECK_THROWS_WITH(parse_objectives("a:min,,b:max"), Contains("empty entry"));
  CHECK_THROWS_WITH(parse_objectives("a:min,"), Contains("empty entry"));
  CHECK_THROWS_WITH(parse_objectives("a:min,a:max"), Contains("listed twice"));
  CHECK_THROWS_AS(parse_objectives("a:MIN"), Error);
}

TEST_CASE("parse_constraints accepts the four operators") {
  const auto c = parse_constraints("size.reduction_pct>=9, ppl<20.5,x>1e-3 ,y <= -2,z<+4");
  REQUIRE(c.size() == 5);
  CHECK(c[0].metric == "size.reduction_pct");
  CHECK(c[0].op == ">=");
  CHECK(c[0].bound == 9);
  CHECK(c[1].op == "<");
  CHECK(c[1].bound == 20.5);
  CHECK(c[2].op == ">");
  CHECK(c[2].bound == 1e-3);
  CHECK(c[3].metric == "y");
  CHECK(c[3].op == "<=");
  CHECK(c[3].bound == -2);
  CHECK(c[4].bound == 4);
  CHECK(parse_constraints("").empty());
}

TEST_CASE("parse_constraints rejects bad syntax naming the token") {
  using Catch::Matchers::Contains;
  for (const char* bad : {"x=3", "x==3", "x!=3", "x", "x>=", "x>=abc", "x>=3abc", ">=3", "x>=inf", "x>=nan", "x=>3",
                          "x>==3", "x<>3", "a b>=3"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_constraints(bad), Error);
    CHECK_THROWS_WITH(parse_constraints(bad), Contains(std::string("'") + bad + "'"));
  }
  CHECK_THROWS_WITH(parse_constraints("a>=1,,b<2"), Contains("empty entry"));
}

TEST_CASE("satisfies and violation") {
  const auto c = parse_constraints("a>=1,b<2");
  CHECK(satisfies({{"a", 1}, {"b", 1.5}}, c));
  CHECK_FALSE(satisfies({{"a", 0.5}, {"b", 1.5}}, c));
  CHECK_FALSE(satisfies({{"a", 1}, {"b", 2}}, c));  // strict
  CHECK_FALSE(satisfies({{"a", 1}}, c));            // missing
  CHECK_FALSE(satisfies({{"a", kNaN}, {"b", 0}}, c));
  CHECK(satisfies({}, {}));
  CHECK(violation({{"a", 1}, {"b", 1.5}}, c) == 0);
  CHECK(violation({{"a", 0.5}, {"b", 3}}, c) == Approx(1.5));
  CHECK(violation({{"a", 1}, {"b", 2}}, c) > 0);
  CHECK(std::isinf(violation({{"b", 0}}, c)));
}

// =============================================================================================
// Pareto front and hypervolume
// =============================================================================================

TEST_CASE("pareto_front matches brute force (2, 3, 4 objectives, mixed directions, ties)") {
  std::mt19937_64 rng(7);
  for (size_t m : {size_t{1}, size_t{2}, size_t{3}, size_t{4}}) {
    for (int trial = 0; trial < 40; ++trial) {
      const int levels = trial % 2 ? 4 : 50;  // few levels: many ties and duplicates
      const size_t n = 1 + rng() % 200;
      std::vector<std::vector<double>> v(n, std::vector<double>(m));
      for (auto& row : v) {
        for (auto& x : row) x = static_cast<double>(rng() % levels) - 10;
        if (rng() % 25 == 0) row[rng() % m] = kNaN;
      }
      if (n > 3) v[1] = v[0];  // an exact duplicate
      std::vector<bool> minimize(m);
      for (size_t j = 0; j < m; ++j) minimize[j] = (rng() & 1) != 0;
      INFO("m=" << m << " trial=" << trial);
      CHECK(pareto_front(v, minimize) == brute_front(v, minimize));
    }
  }
}

TEST_CASE("pareto_front keeps duplicates, drops NaN rows, checks widths") {
  const std::vector<std::vector<double>> v = {{1, 2}, {1, 2}, {2, 1}, {2, 2}, {kNaN, 0}, {0, 3}, {0, 3}, {3, 3}};
  CHECK(pareto_front(v, {true, true}) == std::vector<size_t>{0, 1, 2, 5, 6});
  CHECK(pareto_front(v, {false, false}) == std::vector<size_t>{7});
  CHECK(pareto_front({}, {true, true}).empty());
  CHECK_THROWS_AS(pareto_front({{1, 2, 3}}, {true, true}), Error);
}

TEST_CASE("hypervolume of known sets is exact") {
  CHECK(hypervolume({{1, 1}}, {true, true}, {3, 4}) == 6.0);
  CHECK(hypervolume({{1, 1}}, {false, true}, {0, 4}) == 3.0);  // maximise the first
  // A staircase: (1,3) (2,2) (3,1) with ref (4,4): 3 + 2 + 1 = 6.
  CHECK(hypervolume({{1, 3}, {2, 2}, {3, 1}, {3, 3}}, {true, true}, {4, 4}) == 6.0);
  CHECK(hypervolume({{1, 3}, {2, 2}, {3, 1}}, {false, false}, {0, 0}) == 6.0);  // both maximised
  // Points not strictly better than the reference in every objective contribute nothing.
  CHECK(hypervolume({{4, 1}, {1, 4}, {5, 5}}, {true, true}, {4, 4}) == 0.0);
  CHECK(hypervolume({}, {true, true}, {4, 4}) == 0.0);
  // 3-D: a unit-corner box plus an overlapping one: 2x2x2 + 1x1x3 - overlap 1x1x2 = 9.
  CHECK(hypervolume({{0, 0, 1}, {1, 1, 0}}, {true, true, true}, {2, 2, 3}) == 2 * 2 * 2 + 1 * 1 * 3 - 1 * 1 * 2);
  // 4-D single point and two disjoint-ish points.
  CHECK(hypervolume({{0, 0, 0, 0}}, {true, true, true, true}, {1, 2, 3, 4}) == 24.0);
  CHECK(hypervolume({{0, 1, 0, 0}, {1, 0, 0, 0}}, {true, true, true, true}, {2, 2, 2, 2}) == 8 + 8 - 4);
  // One objective: distance from the best to the reference.
  CHECK(hypervolume({{3}, {1}, {5}}, {true}, {4}) == 3.0);
  CHECK_THROWS_AS(hypervolume({{1, 1}}, {true, true}, {1}), Error);
  CHECK_THROWS_AS(hypervolume({{1, 1}}, {true, true}, {kNaN, 1}), Error);
}

TEST_CASE("hypervolume matches grid counting (2, 3, 4 objectives, mixed directions)") {
  std::mt19937_64 rng(11);
  for (size_t m : {size_t{2}, size_t{3}, size_t{4}}) {
    const int range = m == 4 ? 6 : 9;
    for (int trial = 0; trial < 25; ++trial) {
      const size_t n = 1 + rng() % (m == 4 ? 25 : 60);
      std::vector<bool> minimize(m);
      for (size_t j = 0; j < m; ++j) minimize[j] = (rng() & 1) != 0;
      std::vector<std::vector<double>> v(n, std::vector<double>(m));
      std::vector<double> ref(m);
      // Values in [0, range]; ref at range - 1 (minimised) or 1 (maximised) so that some points
      // fall outside. In minimisation form everything lies in [-range, range].
      for (size_t j = 0; j < m; ++j) ref[j] = minimize[j] ? range - 1 : 1;
      for (auto& row : v) {
        for (auto& x : row) x = static_cast<double>(rng() % (range + 1));
      }
      if (n > 2) v[2] = v[1];
      INFO("m=" << m << " trial=" << trial);
      CHECK(hypervolume(v, minimize, ref) == brute_hypervolume(v, minimize, ref, range));
    }
  }
}

// Its speed (0.1 s for 1,000,000 points, O(n log n)) is measured by bench/db_bench, not here.
TEST_CASE("pareto_front of 1,000,000 two-objective points") {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> v(1000000, std::vector<double>(2));
  for (auto& row : v) {
    row[0] = normal(rng);
    row[1] = -row[0] + 0.5 * normal(rng);
  }
  const auto front = pareto_front(v, {true, true});
  REQUIRE_FALSE(front.empty());
  // The front is mutually non-dominated and every other point is dominated by some front point
  // (checked on a sample).
  std::vector<std::vector<double>> fv;
  for (size_t i : front) fv.push_back(v[i]);
  CHECK(brute_front(fv, {true, true}).size() == fv.size());
  for (size_t i = 0; i < v.size(); i += 9973) {
    if (std::binary_search(front.begin(), front.end(), i)) continue;
    const bool dominated = std::any_of(fv.begin(), fv.end(), [&](const auto& f) {
      return f[0] <= v[i][0] && f[1] <= v[i][1] && (f[0] < v[i][0] || f[1] < v[i][1]);
    });
    CHECK(dominated);
  }
}

// =============================================================================================
// list, exhaustive, random
// =============================================================================================

TEST_CASE("list asks its points in order, once") {
  StrategyOptions opt;
  opt.list = {{1, 0}, {0, 2}, {1, 0}, {1, 1}, {0, 0}};
  auto s = make_strategy("list", {2, 3}, opt);
  CHECK(s->name() == "list");
  CHECK(s->ask(2) == std::vector<Point>{{1, 0}, {0, 2}});
  s->tell({blank({1, 1})});                                    // told from outside: skipped
  CHECK(s->ask(5) == std::vector<Point>{{0, 0}});              // the duplicate {1,0} skipped too
  CHECK(s->ask(5).empty());
  opt.list = {{2, 0}};
  CHECK_THROWS_AS(make_strategy("list", {2, 3}, opt), Error);
  opt.list = {{0}};
  CHECK_THROWS_AS(make_strategy("list", {2, 3}, opt), Error);
}

TEST_CASE("exhaustive walks mixed-radix order, digit 0 least significant") {
  auto s = make_strategy("exhaustive", {2, 3}, {});
  CHECK(s->ask(4) == std::vector<Point>{{0, 0}, {1, 0}, {0, 1}, {1, 1}});
  CHECK(s->ask(4) == std::vector<Point>{{0, 2}, {1, 2}});
  CHECK(s->ask(4).empty());
}

TEST_CASE("exhaustive covers a small space exactly once, skipping points told from outside") {
  const std::vector<int64_t> radices = {3, 2, 4, 1, 2};
  auto s = make_strategy("exhaustive", radices, {});
  s->tell({blank({2, 1, 3, 0, 1}), blank({0, 0, 0, 0, 0}), blank({7, 0, 0, 0, 0})});  // the last: outside, ignored
  std::vector<Point> all;
  for (int64_t n = 1;; n = n % 5 + 1) {
    auto pts = s->ask(n);
    if (pts.empty()) break;
    all.insert(all.end(), pts.begin(), pts.end());
  }
  CHECK(all.size() == 3 * 2 * 4 * 2 - 2);
  CHECK(all_distinct(all));
  CHECK(std::find(all.begin(), all.end(), Point{2, 1, 3, 0, 1}) == all.end());
  CHECK(all.front() == Point{1, 0, 0, 0, 0});
  CHECK(all.back() == Point{1, 1, 3, 0, 1});
}

TEST_CASE("exhaustive refuses spaces above 2^40 points") {
  CHECK_NOTHROW(make_strategy("exhaustive", std::vector<int64_t>(40, 2), {}));
  CHECK_THROWS_AS(make_strategy("exhaustive", std::vector<int64_t>(41, 2), {}), Error);
  CHECK_THROWS_AS(make_strategy("exhaustive", std::vector<int64_t>(224, 8), {}), Error);
  CHECK_THROWS_AS(make_strategy("exhaustive", {2, 0}, {}), Error);
  CHECK_THROWS_AS(make_strategy("simulated-annealing", {2}, {}), Error);
}

TEST_CASE("random: no revisits, stops when the space is exhausted, deterministic for a seed") {
  const std::vector<int64_t> radices = {2, 3, 4};
  StrategyOptions opt;
  opt.seed = 42;
  auto s = make_strategy("random", radices, opt);
  std::vector<Point> all;
  while (true) {
    auto pts = s->ask(5);
    if (pts.empty()) break;
    all.insert(all.end(), pts.begin(), pts.end());
  }
  CHECK(all.size() == 24);
  CHECK(all_distinct(all));
  for (const auto& p : all) CHECK((p.size() == 3 && p[0] < 2 && p[1] < 3 && p[2] < 4 && p[0] >= 0 && p[1] >= 0 && p[2] >= 0));

  auto again = make_strategy("random", radices, opt);
  CHECK(flatten({again->ask(24)}) == all);
  opt.seed = 43;
  CHECK(flatten({make_strategy("random", radices, opt)->ask(24)}) != all);

  // Points told from outside are never asked.
  auto told = make_strategy("random", radices, opt);
  std::vector<Observation> obs;
  for (size_t i = 0; i < 20; ++i) obs.push_back(blank(all[i]));
  told->tell(obs);
  auto rest = told->ask(100);
  CHECK(rest.size() == 4);
  CHECK(std::set<Point>(rest.begin(), rest.end()) == std::set<Point>(all.begin() + 20, all.end()));
}

TEST_CASE("random on a larger space: distinct, and every point once when exhausted") {
  const std::vector<int64_t> radices(9, 3);  // 19683 points
  auto s = make_strategy("random", radices, {});
  auto first = s->ask(15000);
  auto second = s->ask(15000);
  CHECK(first.size() == 15000);
  CHECK(second.size() == 19683 - 15000);
  first.insert(first.end(), second.begin(), second.end());
  CHECK(all_distinct(first));
  CHECK(s->ask(1).empty());
  // A huge space is never "exhausted".
  auto big = make_strategy("random", std::vector<int64_t>(224, 8), {});
  CHECK(big->ask(1000).size() == 1000);
}

// =============================================================================================
// greedy
// =============================================================================================

namespace {

// Additive synthetic model: moving gene i from level k to k+1 costs a[i] * (k + 1) perplexity and
// saves s[i] parameters; score = a[i] (k+1) / s[i].
struct Additive {
  std::vector<double> a, s;
  std::set<Point> failing;
  Observation operator()(const Point& p) const {
    double ppl = 10, saved = 0;
    for (size_t i = 0; i < p.size(); ++i) {
      ppl += a[i] * static_cast<double>(p[i] * (p[i] + 1)) / 2;
      saved += s[i] * static_cast<double>(p[i]);
    }
    Observation o{p, {{"ppl", ppl}, {"acc", 50 - ppl}, {"size.params", 100 - saved}, {"size.reduction_pct", saved}}, true};
    if (failing.count(p)) o = {p, {}, false};
    return o;
  }
};

StrategyOptions greedy_options(const std::string& objective = "ppl:min") {
  StrategyOptions opt;
  opt.objectives = parse_objectives(objective);
  return opt;
}

std::vector<Point> greedy_path(Strategy& s) { return s.state().at("path").get<std::vector<Point>>(); }

}  // namespace

TEST_CASE("greedy asks the base point first, then every single move") {
  auto s = make_strategy("greedy", {3, 3, 3}, greedy_options());
  const Additive f{{1, 4, 3}, {1, 1, 2}, {}};
  CHECK(s->ask(10) == std::vector<Point>{{0, 0, 0}});
  CHECK(s->ask(10).empty());  // waiting for the base
  s->tell({f({0, 0, 0})});
  CHECK(s->ask(2) == std::vector<Point>{{1, 0, 0}, {0, 1, 0}});
  CHECK(s->ask(10) == std::vector<Point>{{0, 0, 1}});
  s->tell({f({0, 0, 1}), f({1, 0, 0})});
  CHECK(s->ask(10).empty());  // {0,1,0} still pending
  s->tell({f({0, 1, 0})});
  CHECK(s->ask(10) == std::vector<Point>{{2, 0, 0}, {1, 1, 0}, {1, 0, 1}});
}

TEST_CASE("greedy follows the known optimal path (min and max primary)") {
  const Additive f{{1, 4, 3}, {1, 1, 2}, {}};
  const std::vector<Point> expected = {{0, 0, 0}, {1, 0, 0}, {1, 0, 1}, {2, 0, 1}, {2, 0, 2}, {2, 1, 2}, {2, 2, 2}};
  for (const std::string objective : {"ppl:min", "acc:max"}) {
    for (int64_t n : {1, 3, 100}) {
      auto s = make_strategy("greedy", {3, 3, 3}, greedy_options(objective));
      auto asks = flatten(drive([&] { return make_strategy("greedy", {3, 3, 3}, greedy_options(objective)); }, f, n, 1000));
      CHECK(all_distinct(asks));
      // Re-run on s to read its path.
      while (true) {
        auto pts = s->ask(n);
        if (pts.empty()) break;
        std::vector<Observation> obs;
        for (const auto& p : pts) obs.push_back(f(p));
        s->tell(obs);
      }
      INFO(objective << " n=" << n);
      CHECK(greedy_path(*s) == expected);
      CHECK(s->state().at("stop_reason") == "no move left");
      CHECK(asks.size() == 1 + 3 + 3 + 3 + 2 + 1 + 1);
    }
  }
}

TEST_CASE("greedy stops at the target, skips failed moves and moves that save nothing") {
  SECTION("target") {
    auto opt = greedy_options();
    opt.target = {{"size.reduction_pct", 4}};
    const Additive f{{1, 4, 3}, {1, 1, 2}, {}};
    auto s = make_strategy("greedy", {3, 3, 3}, opt);
    const auto asks = flatten(drive([&] { return make_strategy("greedy", {3, 3, 3}, opt); }, f, 100, 1000));
    CHECK(asks.size() == 1 + 3 + 3 + 3);
    for (int i = 0; i < 4; ++i) {
      auto pts = s->ask(100);
      std::vector<Observation> obs;
      for (const auto& p : pts) obs.push_back(f(p));
      s->tell(obs);
    }
    CHECK(greedy_path(*s) == std::vector<Point>{{0, 0, 0}, {1, 0, 0}, {1, 0, 1}, {2, 0, 1}});
    CHECK(s->state().at("stop_reason") == "target reached");
    CHECK(s->ask(100).empty());
  }
  SECTION("failed move") {
    const Additive f{{1, 4, 3}, {1, 1, 2}, {{1, 0, 0}}};
    auto s = make_strategy("greedy", {3, 3, 3}, greedy_options());
    for (int i = 0; i < 3; ++i) {
      auto pts = s->ask(100);
      std::vector<Observation> obs;
      for (const auto& p : pts) obs.push_back(f(p));
      s->tell(obs);
    }
    const auto path = greedy_path(*s);
    REQUIRE(path.size() >= 3);
    CHECK(path[1] == Point{0, 0, 1});
    CHECK(path[2] == Point{1, 0, 1});
  }
  SECTION("a move that saves nothing is never taken, even when it improves the primary") {
    const Additive f{{1, 4, 3, -1}, {1, 1, 2, 0}, {}};
    auto s = make_strategy("greedy", {3, 3, 3, 2}, greedy_options());
    while (true) {
      auto pts = s->ask(100);
      if (pts.empty()) break;
      std::vector<Observation> obs;
      for (const auto& p : pts) obs.push_back(f(p));
      s->tell(obs);
    }
    const auto path = greedy_path(*s);
    CHECK(path.back() == Point{2, 2, 2, 0});
    CHECK(path.size() == 7);
    CHECK(s->state().at("stop_reason") == "no move saves size");
  }
  SECTION("a failed base ends the search") {
    const Additive f{{1, 4, 3}, {1, 1, 2}, {{0, 0, 0}}};
    auto s = make_strategy("greedy", {3, 3, 3}, greedy_options());
    s->tell({f(s->ask(1).at(0))});
    CHECK(s->ask(10).empty());
    CHECK(s->state().at("phase") == "done");
  }
  CHECK_THROWS_AS(make_strategy("greedy", {3}, {}), Error);
}

// =============================================================================================
// evolutionary (NSGA-II)
// =============================================================================================

namespace {

StrategyOptions nsga_options(uint64_t seed, int64_t population, int64_t generations, const std::string& constraints = "") {
  StrategyOptions opt;
  opt.seed = seed;
  opt.objectives = parse_objectives("f1:min,f2:min");
  opt.constraints = parse_constraints(constraints);
  opt.population = population;
  opt.generations = generations;
  return opt;
}

// Rows of the final population (from the state) on its first front.
std::vector<std::vector<double>> final_front(const Strategy& s) {
  std::vector<std::vector<double>> rows;
  const auto state = s.state();
  for (const auto& ind : state.at("population")) {
    if (ind.at("rank") == 0) rows.push_back(ind.at("f").get<std::vector<double>>());
  }
  return rows;
}

struct TrueFront {
  double hv = 0;
  std::vector<double> ref;
};

TrueFront true_front(const std::string& constraints) {
  const auto cons = parse_constraints(constraints);
  std::vector<std::vector<double>> all;
  Point p(8, 0);
  double max1 = 0, max2 = 0;
  for (int64_t index = 0; index < 390625; ++index) {
    int64_t rest = index;
    for (auto& g : p) {
      g = rest % 5;
      rest /= 5;
    }
    const auto o = bi_objective(p);
    const auto f = objectives_of(o);
    max1 = std::max(max1, f[0]);
    max2 = std::max(max2, f[1]);
    if (satisfies(o.metrics, cons)) all.push_back(f);
  }
  TrueFront t;
  t.ref = {max1 + 1, max2 + 1};
  t.hv = hypervolume(all, {true, true}, t.ref);
  return t;
}

}  // namespace

TEST_CASE("NSGA-II reaches 90% of the true front's hypervolume within 2,000 evaluations") {
  const auto truth = true_front("");
  const int64_t population = 40, generations = 49;  // 40 x 50 = 2,000 evaluations of 390,625
  for (uint64_t seed : {1, 2, 3}) {
    const auto make = [&] { return make_strategy("evolutionary", kGenes, nsga_options(seed, population, generations)); };
    auto s = make();
    std::vector<Point> asked;
    std::vector<std::vector<double>> archive;
    while (true) {
      auto pts = s->ask(16);
      if (pts.empty()) break;
      std::vector<Observation> obs;
      for (const auto& p : pts) {
        obs.push_back(bi_objective(p));
        archive.push_back(objectives_of(obs.back()));
      }
      asked.insert(asked.end(), pts.begin(), pts.end());
      s->tell(obs);
    }
    CHECK(asked.size() == 2000);
    CHECK(all_distinct(asked));
    const double ratio = hypervolume(final_front(*s), {true, true}, truth.ref) / truth.hv;
    const double archive_ratio = hypervolume(archive, {true, true}, truth.ref) / truth.hv;
    std::printf("NSGA-II (sum / weighted squares), seed %llu: %zu evaluations, final-population hypervolume %.2f%% of the true front (all evaluated: %.2f%%)\n",
                static_cast<unsigned long long>(seed), asked.size(), 100 * ratio, 100 * archive_ratio);
    CHECK(ratio >= 0.90);
  }
  // The same budget spent uniformly at random, for comparison (this problem is easy).
  StrategyOptions random_opt;
  random_opt.seed = 1;
  std::vector<std::vector<double>> random_values;
  for (const auto& p : make_strategy("random", kGenes, random_opt)->ask(2000)) random_values.push_back(objectives_of(bi_objective(p)));
  const double random_ratio = hypervolume(random_values, {true, true}, truth.ref) / truth.hv;
  std::printf("  random search, 2000 evaluations: %.2f%%\n", 100 * random_ratio);
}

TEST_CASE("NSGA-II on a ZDT1-like integer problem beats random search by far") {
  // x = (g0 + 5 g1) / 24 in 25 levels; h = g2 + ... + g7. f1 = x, f2 = (1 + h)(1 - sqrt(x / (1 + h))).
  // The true front is h = 0 (six genes at zero: 1 point in 15,625); reference (1.1, 1.1).
  const auto zdt = [](const Point& p) {
    const double x = static_cast<double>(p[0] + 5 * p[1]) / 24;
    double h = 0;
    for (size_t i = 2; i < p.size(); ++i) h += static_cast<double>(p[i]);
    return Observation{p, {{"f1", x}, {"f2", (1 + h) * (1 - std::sqrt(x / (1 + h)))}}, true};
  };
  const std::vector<double> ref = {1.1, 1.1};
  std::vector<std::vector<double>> front;
  for (int64_t a = 0; a < 25; ++a) front.push_back(objectives_of(zdt({a % 5, a / 5, 0, 0, 0, 0, 0, 0})));
  const double truth = hypervolume(front, {true, true}, ref);
  for (uint64_t seed : {1, 2, 3}) {
    auto s = make_strategy("evolutionary", kGenes, nsga_options(seed, 40, 49));
    size_t evaluations = 0;
    while (true) {
      auto pts = s->ask(40);
      if (pts.empty()) break;
      std::vector<Observation> obs;
      for (const auto& p : pts) obs.push_back(zdt(p));
      evaluations += pts.size();
      s->tell(obs);
    }
    StrategyOptions random_opt;
    random_opt.seed = seed;
    std::vector<std::vector<double>> random_values;
    for (const auto& p : make_strategy("random", kGenes, random_opt)->ask(2000)) random_values.push_back(objectives_of(zdt(p)));
    const double ratio = hypervolume(final_front(*s), {true, true}, ref) / truth;
    const double random_ratio = hypervolume(random_values, {true, true}, ref) / truth;
    std::printf("ZDT1-like, seed %llu: NSGA-II %zu evaluations %.2f%%, random 2000 evaluations %.2f%% of the true front\n",
                static_cast<unsigned long long>(seed), evaluations, 100 * ratio, 100 * random_ratio);
    CHECK(evaluations == 2000);
    CHECK(ratio >= 0.90);
    CHECK(ratio > random_ratio + 0.2);
  }
}

TEST_CASE("NSGA-II respects constraints on its final front") {
  const std::string constraints = "f1>=12,f2<=40";
  const auto truth = true_front(constraints);
  auto s = make_strategy("evolutionary", kGenes, nsga_options(5, 40, 49, constraints));
  while (true) {
    auto pts = s->ask(40);
    if (pts.empty()) break;
    std::vector<Observation> obs;
    for (const auto& p : pts) obs.push_back(bi_objective(p));
    s->tell(obs);
  }
  const auto front = final_front(*s);
  REQUIRE(!front.empty());
  const auto state = s->state();
  for (const auto& ind : state.at("population")) {
    const auto f = ind.at("f").get<std::vector<double>>();
    CHECK(f[0] >= 12);
    CHECK(f[1] <= 40);
    CHECK(ind.at("violation") == 0.0);
  }
  const double ratio = hypervolume(front, {true, true}, truth.ref) / truth.hv;
  std::printf("NSGA-II constrained (f1>=12, f2<=40): final-population hypervolume %.2f%% of the true feasible front\n", 100 * ratio);
  CHECK(ratio >= 0.90);
}

TEST_CASE("NSGA-II is deterministic for a seed and differs across seeds") {
  const auto run = [&](uint64_t seed) {
    return flatten(drive([&] { return make_strategy("evolutionary", kGenes, nsga_options(seed, 12, 10)); }, bi_objective, 5, 10000));
  };
  const auto a = run(9);
  CHECK(a.size() == 12 * 11);
  CHECK(a == run(9));
  CHECK(a != run(10));
}

TEST_CASE("NSGA-II: failed points, include_zero, a tiny space exhausted without revisits") {
  auto opt = nsga_options(1, 4, 0);
  opt.include_zero = true;
  const std::vector<int64_t> radices = {2, 2, 2};
  const auto eval = [](const Point& p) {
    auto o = bi_objective(p);
    if (p[0] == 1 && p[1] == 1) o.ok = false;
    return o;
  };
  const auto asks = flatten(drive([&] { return make_strategy("evolutionary", radices, opt); }, eval, 3, 1000));
  CHECK(asks.front() == Point{0, 0, 0});
  CHECK(asks.size() == 8);
  CHECK(all_distinct(asks));
  CHECK_THROWS_AS(make_strategy("evolutionary", radices, nsga_options(1, 1, 0)), Error);
  CHECK_THROWS_AS(make_strategy("evolutionary", radices, StrategyOptions{}), Error);
}

TEST_CASE("NSGA-II uses results told from outside (a resumed study)") {
  auto s = make_strategy("evolutionary", kGenes, nsga_options(3, 10, 0));
  std::vector<Observation> prior;
  std::mt19937_64 rng(1);
  std::set<Point> told;
  while (prior.size() < 25) {
    Point p(8);
    for (auto& g : p) g = static_cast<int64_t>(rng() % 5);
    if (told.insert(p).second) prior.push_back(bi_objective(p));
  }
  s->tell(prior);
  // The pool covers the initial population: the first asks are already offspring.
  const auto pts = s->ask(100);
  CHECK(pts.size() == 10);
  for (const auto& p : pts) CHECK(told.count(p) == 0);
  CHECK(s->state().at("generation") == 1);
}

// =============================================================================================
// guided
// =============================================================================================

namespace {

// A synthetic rank-allocation problem: 12 matrices of different sizes and sensitivities, five
// choices each (dense, then 75/50/37.5/25 % of the parameters). log(ppl / 10) = L + 0.05 L^2 with
// L the sum of sensitivity x error of the chosen truncations (interactions through L^2); the
// proxy the strategy is given is each term times a lognormal error of 50 %.
struct Allocation {
  std::vector<double> size, sensitivity;
  std::vector<double> keep = {1.0, 0.75, 0.5, 0.375, 0.25};
  std::vector<double> error = {0.0, 0.05, 0.2, 0.4, 1.0};
  std::vector<std::vector<double>> proxy;
  Allocation() {
    std::mt19937_64 rng(5);
    std::uniform_real_distribution<double> u(-3.0, 1.0);
    std::normal_distribution<double> noise(0.0, 0.5);
    for (int k = 0; k < 12; ++k) {
      size.push_back(1000.0 * (1 + k % 4));
      sensitivity.push_back(std::exp(u(rng)));
      std::vector<double> row;
      for (double e : error) row.push_back(sensitivity.back() * e * std::exp(noise(rng)));
      proxy.push_back(row);
    }
  }
  std::vector<int64_t> radices() const { return std::vector<int64_t>(12, 5); }
  Observation operator()(const Point& p) const {
    double l = 0, params = 0;
    for (size_t k = 0; k < p.size(); ++k) {
      l += sensitivity[k] * error[static_cast<size_t>(p[k])];
      params += size[k] * keep[static_cast<size_t>(p[k])];
    }
    return {p, {{"ppl", 10.0 * std::exp(l + 0.05 * l * l)}, {"params", params}}, true};
  }
  StrategyOptions options(uint64_t seed) const {
    StrategyOptions o;
    o.seed = seed;
    o.objectives = parse_objectives("ppl:min,params:min");
    o.priors["ppl"] = proxy;
    std::vector<std::vector<double>> sizes;
    for (size_t k = 0; k < size.size(); ++k) {
      std::vector<double> row;
      for (double f : keep) row.push_back(size[k] * (f - 1.0));
      sizes.push_back(row);
    }
    o.priors["params"] = sizes;
    o.exact = {"params"};
    return o;
  }
  // Hypervolume of (log ppl, params) within 3x the dense perplexity, as bench/search measures.
  double hv(const std::vector<Point>& points) const {
    std::vector<std::vector<double>> rows;
    for (const auto& p : points) {
      const auto o = (*this)(p);
      rows.push_back({std::log(o.metrics.at("ppl")), o.metrics.at("params")});
    }
    double total = 0;
    for (double s : size) total += s;
    return hypervolume(rows, {true, true}, {std::log(30.0), total});
  }
};

// The true front's hypervolume: ppl is increasing in L, so the front of (ppl, params) is the front
// of (L, params), found exactly by dynamic programming over sizes (all multiples of 125).
double true_hv(const Allocation& f) {
  std::map<int64_t, std::pair<double, Point>> best = {{0, {0.0, {}}}};  // size units -> min L
  for (size_t k = 0; k < f.size.size(); ++k) {
    std::map<int64_t, std::pair<double, Point>> next;
    for (const auto& [units, lp] : best) {
      for (size_t d = 0; d < f.keep.size(); ++d) {
        const auto u = units + static_cast<int64_t>(std::llround(f.size[k] * f.keep[d] / 125));
        const double l = lp.first + f.sensitivity[k] * f.error[d];
        auto it = next.find(u);
        if (it == next.end() || l < it->second.first) {
          Point p = lp.second;
          p.push_back(static_cast<int64_t>(d));
          next[u] = {l, p};
        }
      }
    }
    best = std::move(next);
  }
  std::vector<Point> points;
  for (const auto& [u, lp] : best) points.push_back(lp.second);
  return f.hv(points);
}

std::vector<Point> run_guided(const Allocation& f, uint64_t seed, size_t budget) {
  auto s = make_strategy("guided", f.radices(), f.options(seed));
  std::vector<Point> asked;
  while (asked.size() < budget) {
    auto pts = s->ask(4);
    REQUIRE(!pts.empty());
    std::vector<Observation> obs;
    for (const auto& p : pts) {
      if (asked.size() < budget) {
        asked.push_back(p);
        obs.push_back(f(p));
      }
    }
    s->tell(obs);
  }
  return asked;
}

// A 27-point space the guided strategy exhausts: quality rises, size falls with each digit.
Observation small_guided(const Point& p) {
  const double w[3] = {0.3, 1.0, 0.1};
  double q = 0, size = 0;
  for (size_t k = 0; k < 3; ++k) {
    q += w[k] * static_cast<double>(p[k] * p[k]);
    size += 10.0 * static_cast<double>(k + 1) * (3 - static_cast<double>(p[k]));
  }
  return {p, {{"q", 1.0 + q}, {"size", size}}, true};
}

StrategyOptions small_guided_options() {
  StrategyOptions o;
  o.seed = 9;
  o.objectives = parse_objectives("q:min,size:min");
  o.priors["q"] = {{0, 0.2, 0.9}, {0, 1.5, 3.0}, {0, 0.1, 0.5}};
  o.priors["size"] = {{0, -10, -20}, {0, -20, -40}, {0, -30, -60}};
  o.exact = {"size"};
  o.initial = 3;
  return o;
}

}  // namespace

TEST_CASE("guided: exhausts a small space, each point once") {
  const auto asks = flatten(drive([] { return make_strategy("guided", {3, 3, 3}, small_guided_options()); },
                                  small_guided, 2, 1000));
  CHECK(asks.size() == 27);
  CHECK(all_distinct(asks));
}

TEST_CASE("guided: deterministic for a seed, never asks a point twice, predicts exact sizes exactly") {
  const Allocation f;
  const auto a = run_guided(f, 3, 60);
  CHECK(a.size() == 60);
  CHECK(all_distinct(a));
  CHECK(run_guided(f, 3, 60) == a);
  // Predictions: made for every point asked once the model is fitted; sizes are exact priors.
  auto s = make_strategy("guided", f.radices(), f.options(3));
  int64_t predicted = 0;
  for (int step = 0; step < 8; ++step) {
    auto pts = s->ask(4);
    std::vector<Observation> obs;
    for (const auto& p : pts) {
      const auto pred = s->predicted(p);
      const auto truth = f(p);
      if (!pred.empty()) {
        ++predicted;
        CHECK(pred.at("params") == Approx(truth.metrics.at("params")).epsilon(1e-12));
        CHECK(std::isfinite(pred.at("ppl")));
      }
      obs.push_back(truth);
    }
    s->tell(obs);
  }
  CHECK(predicted >= 24);  // every ask after the 4 initial points
  CHECK_THROWS_AS(make_strategy("guided", f.radices(), StrategyOptions{}), Error);  // no objectives
  auto bad = f.options(1);
  bad.priors["ppl"].pop_back();
  CHECK_THROWS_AS(make_strategy("guided", f.radices(), bad), Error);  // prior of the wrong shape
}

TEST_CASE("guided at 100 evaluations beats random search and NSGA-II at 1,000 on a rank-allocation problem") {
  const Allocation f;
  StrategyOptions random_opt;
  random_opt.seed = 1;
  const double random_hv = f.hv(make_strategy("random", f.radices(), random_opt)->ask(1000));
  auto nsga_opt = f.options(1);
  nsga_opt.population = 24;
  auto nsga = make_strategy("evolutionary", f.radices(), nsga_opt);
  std::vector<Point> nsga_points;
  while (nsga_points.size() < 1000) {
    auto pts = nsga->ask(24);
    std::vector<Observation> obs;
    for (const auto& p : pts) {
      nsga_points.push_back(p);
      obs.push_back(f(p));
    }
    nsga->tell(obs);
  }
  nsga_points.resize(1000);
  const double nsga_hv = f.hv(nsga_points);
  const double truth = true_hv(f);
  for (uint64_t seed : {1, 2, 3}) {
    const double guided_hv = f.hv(run_guided(f, seed, 100));
    std::printf("hypervolume: guided (seed %llu) at 100 evaluations %.1f (%.1f %% of the true front's); random at "
                "1,000: %.1f %%; NSGA-II at 1,000: %.1f %%\n",
                static_cast<unsigned long long>(seed), guided_hv, 100 * guided_hv / truth, 100 * random_hv / truth,
                100 * nsga_hv / truth);
    CHECK(guided_hv > random_hv);
    CHECK(guided_hv > nsga_hv);
  }
}

TEST_CASE("allocate_min_cost equals brute force on random instances, and rounds savings safely") {
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t K = 1 + trial % 5, D = 1 + trial % 4;
    std::vector<std::vector<double>> cost(K);
    std::vector<std::vector<int64_t>> saved(K);
    int64_t most = 0;
    for (size_t k = 0; k < K; ++k) {
      cost[k] = {0.0};
      saved[k] = {0};
      int64_t best = 0;
      for (size_t d = 1; d < D; ++d) {
        cost[k].push_back(std::floor(u(rng) * 100) / 10);
        saved[k].push_back(static_cast<int64_t>(u(rng) * 50) - 5);  // some save nothing or less
        best = std::max(best, saved[k].back());
      }
      most += best;
    }
    const int64_t need = static_cast<int64_t>(u(rng) * static_cast<double>(most + 10));
    // Brute force over every digit vector.
    std::optional<double> best_cost;
    Point p(K, 0);
    while (true) {
      double c = 0;
      int64_t s = 0;
      for (size_t k = 0; k < K; ++k) {
        c += cost[k][static_cast<size_t>(p[k])];
        s += saved[k][static_cast<size_t>(p[k])];
      }
      if (s >= need && (!best_cost || c < *best_cost)) best_cost = c;
      size_t k = 0;
      while (k < K && ++p[k] == static_cast<int64_t>(D)) p[k++] = 0;
      if (k == K) break;
    }
    INFO("trial " << trial << " need " << need);
    // (cost, saved) of an allocation
    auto totals = [&](const std::vector<int64_t>& digits) {
      double c = 0;
      int64_t s = 0;
      for (size_t k = 0; k < K; ++k) {
        c += cost[k][static_cast<size_t>(digits[k])];
        s += saved[k][static_cast<size_t>(digits[k])];
      }
      return std::pair<double, int64_t>{c, s};
    };
    const auto got = allocate_min_cost(cost, saved, need);
    REQUIRE(got.has_value() == best_cost.has_value());
    if (!got) continue;
    const auto [c, s] = totals(*got);
    CHECK(s >= need);
    CHECK(c == Approx(*best_cost).margin(1e-12));
    // With coarse units (4 units in all) the answer still saves enough, at a cost no better than exact.
    if (const auto coarse = allocate_min_cost(cost, saved, need, 4)) {
      const auto [cc, sc] = totals(*coarse);
      CHECK(sc >= need);
      CHECK(cc >= *best_cost - 1e-12);
    }
  }
  CHECK_THROWS_AS(allocate_min_cost({{1.0}}, {{0}}, 1), Error);  // digit 0 must be dense
}

// =============================================================================================
// state() / restore(): continuation identical to an uninterrupted run
// =============================================================================================

TEST_CASE("restore continues exactly as the uninterrupted run, for every strategy") {
  const std::vector<int64_t> small = {3, 3, 3};
  const Additive greedy_eval{{1, 4, 3}, {1, 1, 2}, {}};
  struct Case {
    std::string name;
    std::vector<int64_t> radices;
    StrategyOptions options;
    Evaluator eval;
    int64_t n;
  };
  StrategyOptions list_opt;
  list_opt.list = {{0, 0, 1}, {2, 2, 2}, {0, 0, 1}, {1, 1, 1}, {2, 0, 1}, {0, 1, 0}};
  StrategyOptions random_opt;
  random_opt.seed = 17;
  auto nsga_constrained = nsga_options(21, 10, 12, "f1>=10");
  nsga_constrained.mutation_rate = 0.2;
  const std::vector<Case> cases = {
      {"list", small, list_opt, blank, 2},
      {"exhaustive", small, {}, blank, 4},
      {"random", small, random_opt, blank, 4},
      {"greedy", small, greedy_options(), greedy_eval, 2},
      {"evolutionary", kGenes, nsga_options(8, 10, 12), bi_objective, 4},
      {"evolutionary", kGenes, nsga_constrained, bi_objective, 7},
      {"guided", small, small_guided_options(), small_guided, 2},
  };
  for (const auto& c : cases) {
    const auto make = [&] { return make_strategy(c.name, c.radices, c.options); };
    const auto reference = drive(make, c.eval, c.n, 100000);
    REQUIRE(reference.size() >= 3);
    for (size_t at : {size_t{0}, size_t{1}, reference.size() / 2, reference.size() - 1}) {
      for (bool pending : {true, false}) {
        INFO(c.name << " swap at step " << at << (pending ? " (pending asks)" : ""));
        CHECK(drive(make, c.eval, c.n, 100000, at, pending) == reference);
      }
    }
  }
}

TEST_CASE("restore rejects a state of another strategy or space") {
  auto a = make_strategy("random", {2, 3}, {});
  auto b = make_strategy("exhaustive", {2, 3}, {});
  CHECK_THROWS_AS(b->restore(a->state()), Error);
  auto c = make_strategy("random", {2, 4}, {});
  CHECK_THROWS_AS(c->restore(a->state()), Error);
  auto st = a->state();
  st.erase("known");
  CHECK_THROWS_AS(a->restore(st), Error);
}

// The refit of allocate --db from configurations of several matrices: a ridge regression toward
// the prior. Synthetic: 40 items of true cost c_j, a prior wrong by a lognormal factor (sd 0.5),
// 300 configurations of 5-15 items with y = sum c_j + noise (sd 0.01).
TEST_CASE("refit_costs recovers per-item costs from sums, with and without an intercept") {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::normal_distribution<double> noise(0.0, 0.01), factor(0.0, 0.5);
  const size_t p = 40;
  std::vector<double> truth(p), prior(p);
  for (size_t j = 0; j < p; ++j) {
    truth[j] = 0.05 + u(rng);
    prior[j] = truth[j] * std::exp(factor(rng));
  }
  for (const double intercept : {0.0, 2.5}) {
    INFO("intercept " << intercept);
    std::vector<std::vector<int64_t>> rows;
    std::vector<double> y;
    for (int i = 0; i < 300; ++i) {
      std::vector<int64_t> row;
      double sum = intercept;
      const int size = 5 + static_cast<int>(u(rng) * 11);
      for (int k = 0; k < size; ++k) {
        const auto j = static_cast<int64_t>(u(rng) * p);
        row.push_back(j);
        sum += truth[static_cast<size_t>(j)];
      }
      rows.push_back(row);
      y.push_back(sum + noise(rng));
    }
    const CostFit fit = refit_costs(prior, rows, y, intercept != 0.0);
    double err_fit = 0, err_prior = 0;
    for (size_t j = 0; j < p; ++j) {
      err_fit += std::abs(fit.cost[j] - truth[j]);
      err_prior += std::abs(prior[j] - truth[j]);
    }
    // 300 sums of ~10 items pin 40 costs to about the noise: far closer than the prior.
    CHECK(err_fit < 0.05 * err_prior);
    CHECK(fit.loo_r2 > 0.99);
    CHECK(fit.loo_r2 > fit.prior_r2);
    CHECK(fit.lambda < 1.0);  // the data, not the prior, decide
    CHECK(fit.n_items_fitted == static_cast<int64_t>(p));
    CHECK(fit.intercept == Approx(intercept).margin(0.05));
  }
  // A prior that is already right, with no noise: kept (every penalty gives it back).
  std::vector<std::vector<int64_t>> rows = {{0, 1}, {1, 2}, {0, 2}, {0, 1, 2}};
  std::vector<double> exact = {0.3, 0.5, 0.7};
  std::vector<double> y;
  for (const auto& row : rows) {
    double sum = 0;
    for (auto j : row) sum += exact[static_cast<size_t>(j)];
    y.push_back(sum);
  }
  exact.push_back(9.0);  // an item no row has: its prior stays
  const CostFit kept = refit_costs(exact, rows, y);
  for (size_t j = 0; j < exact.size(); ++j) CHECK(kept.cost[j] == Approx(exact[j]).margin(1e-9));
  CHECK(kept.n_items_fitted == 3);
  CHECK_THROWS_WITH(refit_costs(exact, rows, {1.0}), Catch::Contains("4 rows but 1 values"));
  CHECK_THROWS_WITH(refit_costs(exact, {{7}}, {1.0}), Catch::Contains("item 7 out of range"));
}
