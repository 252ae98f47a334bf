#include "search/strategy.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "core/base/error.hpp"
#include "search/guided.hpp"
#include "search/pareto.hpp"

namespace rankscope {

// ---------------------------------------------------------------------------------------------
// Objectives and constraints
// ---------------------------------------------------------------------------------------------

namespace {

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool valid_metric(std::string_view name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-' || c == '/';
  });
}

// Comma-separated tokens, trimmed; an all-blank text gives none, an empty token is an error.
std::vector<std::string_view> split_list(std::string_view text, const char* what) {
  std::vector<std::string_view> tokens;
  if (trim(text).empty()) return tokens;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const auto token = trim(text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (token.empty()) fail("{} '{}': empty entry", what, text);
    tokens.push_back(token);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return tokens;
}

bool holds(double value, const std::string& op, double bound) {
  if (op == ">=") return value >= bound;
  if (op == "<=") return value <= bound;
  if (op == ">") return value > bound;
  return value < bound;  // "<"
}

}  // namespace

std::vector<Objective> parse_objectives(std::string_view text) {
  std::vector<Objective> objectives;
  for (auto token : split_list(text, "objectives")) {
    const size_t colon = token.rfind(':');
    if (colon == std::string_view::npos) fail("objective '{}': expected METRIC:min or METRIC:max", token);
    const auto metric = trim(token.substr(0, colon));
    const auto direction = trim(token.substr(colon + 1));
    if (!valid_metric(metric)) fail("objective '{}': bad metric name '{}' (letters, digits, _ . - /)", token, metric);
    if (direction != "min" && direction != "max") fail("objective '{}': direction '{}' is not min or max", token, direction);
    for (const auto& o : objectives) {
      if (o.metric == metric) fail("objective '{}': metric '{}' is listed twice", token, metric);
    }
    objectives.push_back({std::string(metric), direction == "min"});
  }
  return objectives;
}

std::vector<Constraint> parse_constraints(std::string_view text) {
  std::vector<Constraint> constraints;
  for (auto token : split_list(text, "constraints")) {
    const size_t pos = token.find_first_of("<>=!");
    if (pos == std::string_view::npos || token[pos] == '=' || token[pos] == '!') {
      fail("constraint '{}': expected METRIC>=BOUND, METRIC<=BOUND, METRIC>BOUND or METRIC<BOUND", token);
    }
    std::string op(1, token[pos]);
    if (pos + 1 < token.size() && token[pos + 1] == '=') op += '=';
    const auto metric = trim(token.substr(0, pos));
    auto bound_text = trim(token.substr(pos + op.size()));
    if (!valid_metric(metric)) fail("constraint '{}': bad metric name '{}' (letters, digits, _ . - /)", token, metric);
    std::string_view number = bound_text;
    if (!number.empty() && number.front() == '+') number.remove_prefix(1);
    double bound = 0;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), bound);
    if (number.empty() || ec != std::errc() || end != number.data() + number.size() || !std::isfinite(bound)) {
      fail("constraint '{}': bound '{}' is not a finite number", token, bound_text);
    }
    constraints.push_back({std::string(metric), op, bound});
  }
  return constraints;
}

bool satisfies(const std::map<std::string, double>& metrics, const std::vector<Constraint>& constraints) {
  for (const auto& c : constraints) {
    const auto it = metrics.find(c.metric);
    if (it == metrics.end() || std::isnan(it->second) || !holds(it->second, c.op, c.bound)) return false;
  }
  return true;
}

double violation(const std::map<std::string, double>& metrics, const std::vector<Constraint>& constraints) {
  double total = 0;
  for (const auto& c : constraints) {
    const auto it = metrics.find(c.metric);
    if (it == metrics.end() || std::isnan(it->second)) return std::numeric_limits<double>::infinity();
    if (!holds(it->second, c.op, c.bound)) {
      total += std::max(std::abs(it->second - c.bound), std::numeric_limits<double>::min());
    }
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Shared machinery
// ---------------------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;
using PointSet = std::set<Point>;

// Spaces above this many points are treated as unbounded (never exhausted in practice).
constexpr uint64_t kCountCap = uint64_t{1} << 62;
constexpr uint64_t kExhaustiveMax = uint64_t{1} << 40;

std::optional<uint64_t> space_count(const std::vector<int64_t>& radices) {
  unsigned __int128 n = 1;
  for (auto r : radices) {
    n *= static_cast<unsigned __int128>(r);
    if (n > kCountCap) return std::nullopt;
  }
  return static_cast<uint64_t>(n);
}

Point point_at(uint64_t index, const std::vector<int64_t>& radices) {
  Point p(radices.size());
  for (size_t i = 0; i < radices.size(); ++i) {
    p[i] = static_cast<int64_t>(index % static_cast<uint64_t>(radices[i]));
    index /= static_cast<uint64_t>(radices[i]);
  }
  return p;
}

uint64_t index_of(const Point& p, const std::vector<int64_t>& radices) {
  uint64_t index = 0;
  for (size_t i = radices.size(); i-- > 0;) index = index * static_cast<uint64_t>(radices[i]) + static_cast<uint64_t>(p[i]);
  return index;
}

// Uniform integer in [0, n), n >= 1 (Lemire's multiply-and-reject: the same on every platform,
// unlike std::uniform_int_distribution).
uint64_t below(std::mt19937_64& rng, uint64_t n) {
  uint64_t x = rng();
  unsigned __int128 m = static_cast<unsigned __int128>(x) * n;
  auto low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      x = rng();
      m = static_cast<unsigned __int128>(x) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

// Uniform double in [0, 1).
double unit(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

Point random_point(std::mt19937_64& rng, const std::vector<int64_t>& radices) {
  Point p(radices.size());
  for (size_t i = 0; i < radices.size(); ++i) p[i] = static_cast<int64_t>(below(rng, static_cast<uint64_t>(radices[i])));
  return p;
}

// Appends up to k uniformly random points that are not in `known` to `out`, inserting them into
// `known`. Rejection sampling while at most half the space is known; past that (only possible
// for small spaces) each draw picks the j-th unknown point in index order, j uniform, through a
// Fenwick tree over the indices. Either way a draw depends only on the RNG and the known set, so
// the sequence does not depend on how the asks are chunked.
void sample_unknown(std::mt19937_64& rng, const std::vector<int64_t>& radices, std::optional<uint64_t> count,
                    PointSet& known, size_t k, std::vector<Point>& out) {
  while (k > 0) {
    if (count && known.size() >= *count) return;
    if (count && 2 * known.size() >= *count) {
      const uint64_t n = *count;
      std::vector<uint64_t> tree(n + 1, 0);  // 1-based Fenwick tree of "unknown" flags
      uint64_t remaining = 0;
      for (uint64_t i = 0; i < n; ++i) {
        if (!known.count(point_at(i, radices))) {
          tree[i + 1] += 1;
          ++remaining;
        }
        const uint64_t parent = (i + 1) + ((i + 1) & (0 - (i + 1)));
        if (parent <= n) tree[parent] += tree[i + 1];
      }
      uint64_t top = 1;
      while (top * 2 <= n) top *= 2;
      for (; k > 0 && remaining > 0; --k, --remaining) {
        uint64_t rest = below(rng, remaining), pos = 0;  // find the rest-th (0-based) unknown index
        for (uint64_t step = top; step > 0; step /= 2) {
          if (pos + step <= n && tree[pos + step] <= rest) {
            pos += step;
            rest -= tree[pos];
          }
        }
        for (uint64_t i = pos + 1; i <= n; i += i & (0 - i)) tree[i] -= 1;
        auto p = point_at(pos, radices);
        known.insert(p);
        out.push_back(std::move(p));
      }
      return;
    }
    auto p = random_point(rng, radices);
    if (known.insert(p).second) {
      out.push_back(std::move(p));
      --k;
    }
  }
}

std::string rng_to_string(const std::mt19937_64& rng) {
  std::ostringstream os;
  os << rng;
  return os.str();
}

std::mt19937_64 rng_from_string(const std::string& text) {
  std::istringstream is(text);
  std::mt19937_64 rng;
  is >> rng;
  if (is.fail()) fail("strategy state: bad RNG state");
  return rng;
}

// JSON has no inf/NaN: those travel as strings.
json encode(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

double decode(const json& j) {
  if (j.is_string()) {
    const auto s = j.get<std::string>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
    fail("strategy state: bad number '{}'", s);
  }
  return j.get<double>();
}

json encode_metrics(const std::map<std::string, double>& metrics) {
  json j = json::object();
  for (const auto& [k, v] : metrics) j[k] = encode(v);
  return j;
}

std::map<std::string, double> decode_metrics(const json& j) {
  std::map<std::string, double> metrics;
  for (const auto& [k, v] : j.items()) metrics[k] = decode(v);
  return metrics;
}

json encode_doubles(const std::vector<double>& values) {
  json j = json::array();
  for (double v : values) j.push_back(encode(v));
  return j;
}

std::vector<double> decode_doubles(const json& j) {
  std::vector<double> values;
  for (const auto& v : j) values.push_back(decode(v));
  return values;
}

json encode_points(const PointSet& points) {
  json j = json::array();
  for (const auto& p : points) j.push_back(p);
  return j;
}

PointSet decode_points(const json& j) {
  PointSet points;
  for (const auto& p : j) points.insert(p.get<Point>());
  return points;
}

class StrategyBase : public Strategy {
 public:
  explicit StrategyBase(std::vector<int64_t> radices) : radices_(std::move(radices)), count_(space_count(radices_)) {}

  json state() const final {
    json j = {{"strategy", name()}, {"radices", radices_}};
    save(j);
    return j;
  }

  void restore(const json& s) final {
    try {
      if (!s.is_object() || !s.contains("strategy") || s.at("strategy") != name()) {
        fail("strategy state: not a state of the {} strategy", name());
      }
      if (s.at("radices").get<std::vector<int64_t>>() != radices_) {
        fail("strategy state: saved for another design space (different radices)");
      }
      load(s);
    } catch (const json::exception& e) {
      fail("strategy state ({}): {}", name(), e.what());
    }
  }

 protected:
  virtual void save(json& j) const = 0;
  virtual void load(const json& j) = 0;

  bool in_space(const Point& p) const {
    if (p.size() != radices_.size()) return false;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] < 0 || p[i] >= radices_[i]) return false;
    }
    return true;
  }
  bool exhausted(const PointSet& known) const { return count_ && known.size() >= *count_; }
  // Adds every told point of the space to `known` (never asked afterwards).
  void remember(const std::vector<Observation>& results, PointSet& known) const {
    for (const auto& r : results) {
      if (in_space(r.point)) known.insert(r.point);
    }
  }

  std::vector<int64_t> radices_;
  std::optional<uint64_t> count_;  // nullopt above 2^62
};

// ---------------------------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------------------------

class ListStrategy final : public StrategyBase {
 public:
  ListStrategy(std::vector<int64_t> radices, std::vector<Point> list) : StrategyBase(std::move(radices)), list_(std::move(list)) {
    for (size_t i = 0; i < list_.size(); ++i) {
      if (!in_space(list_[i])) fail("list strategy: point {} ({}) is outside the design space", i, json(list_[i]).dump());
    }
  }
  std::string name() const override { return "list"; }

  std::vector<Point> ask(int64_t n) override {
    std::vector<Point> out;
    while (cursor_ < list_.size() && static_cast<int64_t>(out.size()) < n) {
      const auto& p = list_[cursor_++];
      if (known_.insert(p).second) out.push_back(p);
    }
    return out;
  }

  void tell(const std::vector<Observation>& results) override { remember(results, known_); }

 protected:
  void save(json& j) const override {
    j["cursor"] = cursor_;
    j["known"] = encode_points(known_);
  }
  void load(const json& j) override {
    cursor_ = j.at("cursor").get<size_t>();
    if (cursor_ > list_.size()) fail("strategy state (list): cursor {} beyond the list of {} points", cursor_, list_.size());
    known_ = decode_points(j.at("known"));
  }

 private:
  std::vector<Point> list_;
  size_t cursor_ = 0;
  PointSet known_;  // asked or told
};

// ---------------------------------------------------------------------------------------------
// exhaustive
// ---------------------------------------------------------------------------------------------

class ExhaustiveStrategy final : public StrategyBase {
 public:
  explicit ExhaustiveStrategy(std::vector<int64_t> radices) : StrategyBase(std::move(radices)) {
    if (!count_ || *count_ > kExhaustiveMax) fail("exhaustive strategy: the space has more than 2^40 points");
  }
  std::string name() const override { return "exhaustive"; }

  std::vector<Point> ask(int64_t n) override {
    std::vector<Point> out;
    while (cursor_ < *count_ && static_cast<int64_t>(out.size()) < n) {
      auto p = point_at(cursor_++, radices_);
      if (foreign_.erase(p)) continue;
      out.push_back(std::move(p));
    }
    return out;
  }

  void tell(const std::vector<Observation>& results) override {
    for (const auto& r : results) {
      if (in_space(r.point) && index_of(r.point, radices_) >= cursor_) foreign_.insert(r.point);
    }
  }

 protected:
  void save(json& j) const override {
    j["cursor"] = cursor_;
    j["foreign"] = encode_points(foreign_);
  }
  void load(const json& j) override {
    cursor_ = j.at("cursor").get<uint64_t>();
    foreign_ = decode_points(j.at("foreign"));
  }

 private:
  uint64_t cursor_ = 0;  // next index
  PointSet foreign_;     // told, not asked, index >= cursor_: skipped when reached
};

// ---------------------------------------------------------------------------------------------
// random
// ---------------------------------------------------------------------------------------------

class RandomStrategy final : public StrategyBase {
 public:
  RandomStrategy(std::vector<int64_t> radices, uint64_t seed) : StrategyBase(std::move(radices)), rng_(seed) {}
  std::string name() const override { return "random"; }

  std::vector<Point> ask(int64_t n) override {
    std::vector<Point> out;
    if (n > 0) sample_unknown(rng_, radices_, count_, known_, static_cast<size_t>(n), out);
    return out;
  }

  void tell(const std::vector<Observation>& results) override { remember(results, known_); }

 protected:
  void save(json& j) const override {
    j["rng"] = rng_to_string(rng_);
    j["known"] = encode_points(known_);
  }
  void load(const json& j) override {
    rng_ = rng_from_string(j.at("rng").get<std::string>());
    known_ = decode_points(j.at("known"));
  }

 private:
  std::mt19937_64 rng_;
  PointSet known_;  // asked or told
};

// ---------------------------------------------------------------------------------------------
// greedy
// ---------------------------------------------------------------------------------------------

class GreedyStrategy final : public StrategyBase {
 public:
  GreedyStrategy(std::vector<int64_t> radices, const StrategyOptions& options)
      : StrategyBase(std::move(radices)),
        primary_(options.objectives.at(0)),
        size_metric_(options.size_metric),
        target_(options.target),
        current_(radices_.size(), 0) {}
  std::string name() const override { return "greedy"; }

  std::vector<Point> ask(int64_t n) override {
    advance();
    std::vector<Point> out;
    if (phase_ == "base") {
      if (n > 0 && known_.insert(current_).second) out.push_back(current_);
    } else if (phase_ == "round") {
      for (const auto& p : candidates()) {
        if (static_cast<int64_t>(out.size()) >= n) break;
        if (known_.insert(p).second) out.push_back(p);
      }
    }
    return out;
  }

  void tell(const std::vector<Observation>& results) override {
    for (const auto& r : results) {
      if (!in_space(r.point) || results_.count(r.point)) continue;
      known_.insert(r.point);
      results_[r.point] = {r.ok, r.metrics};
    }
    advance();
  }

 protected:
  void save(json& j) const override {
    j["phase"] = phase_;
    j["stop_reason"] = stop_reason_;
    j["current"] = current_;
    j["path"] = path_;
    j["known"] = encode_points(known_);
    json results = json::array();
    for (const auto& [p, r] : results_) results.push_back({{"point", p}, {"ok", r.ok}, {"metrics", encode_metrics(r.metrics)}});
    j["results"] = std::move(results);
  }
  void load(const json& j) override {
    phase_ = j.at("phase").get<std::string>();
    if (phase_ != "base" && phase_ != "round" && phase_ != "done") fail("strategy state (greedy): bad phase '{}'", phase_);
    stop_reason_ = j.at("stop_reason").get<std::string>();
    current_ = j.at("current").get<Point>();
    if (!in_space(current_)) fail("strategy state (greedy): current point outside the space");
    path_ = j.at("path").get<std::vector<Point>>();
    known_ = decode_points(j.at("known"));
    results_.clear();
    for (const auto& r : j.at("results")) {
      results_[r.at("point").get<Point>()] = {r.at("ok").get<bool>(), decode_metrics(r.at("metrics"))};
    }
  }

 private:
  struct Result {
    bool ok = false;
    std::map<std::string, double> metrics;
  };

  // The single moves from the current point, in gene order.
  std::vector<Point> candidates() const {
    std::vector<Point> out;
    for (size_t g = 0; g < radices_.size(); ++g) {
      if (current_[g] + 1 < radices_[g]) {
        out.push_back(current_);
        ++out.back()[g];
      }
    }
    return out;
  }

  static std::optional<double> metric(const Result& r, const std::string& name) {
    const auto it = r.metrics.find(name);
    if (!r.ok || it == r.metrics.end() || std::isnan(it->second)) return std::nullopt;
    return it->second;
  }

  bool target_reached(const Result& r) const {
    if (target_.empty()) return false;
    for (const auto& [m, v] : target_) {
      const auto x = metric(r, m);
      if (!x || *x < v) return false;
    }
    return true;
  }

  void stop(const std::string& reason) {
    phase_ = "done";
    stop_reason_ = reason;
  }

  // Moves on as far as the known results allow.
  void advance() {
    while (true) {
      if (phase_ == "base") {
        const auto it = results_.find(current_);
        if (it == results_.end()) return;
        if (!metric(it->second, primary_.metric) || !metric(it->second, size_metric_)) {
          return stop("the base point failed or lacks the primary or size metric");
        }
        path_.push_back(current_);
        if (target_reached(it->second)) return stop("target reached");
        phase_ = "round";
        continue;
      }
      if (phase_ != "round") return;
      const auto moves = candidates();
      if (moves.empty()) return stop("no move left");
      for (const auto& p : moves) {
        if (!results_.count(p)) return;  // waiting
      }
      const auto& here = results_.at(current_);
      const double p0 = *metric(here, primary_.metric), s0 = *metric(here, size_metric_);
      std::optional<size_t> best;
      double best_score = 0;
      for (size_t k = 0; k < moves.size(); ++k) {
        const auto& r = results_.at(moves[k]);
        const auto p = metric(r, primary_.metric), s = metric(r, size_metric_);
        if (!p || !s) continue;
        const double loss = primary_.minimize ? *p - p0 : p0 - *p;
        const double saved = s0 - *s;
        if (!(saved > 0)) continue;
        const double score = loss / saved;
        if (std::isnan(score)) continue;
        if (!best || score < best_score) {
          best = k;
          best_score = score;
        }
      }
      if (!best) return stop("no move saves size");
      current_ = moves[*best];
      path_.push_back(current_);
      if (target_reached(results_.at(current_))) return stop("target reached");
    }
  }

  Objective primary_;
  std::string size_metric_;
  std::map<std::string, double> target_;
  std::string phase_ = "base";  // base | round | done
  std::string stop_reason_;
  Point current_;
  std::vector<Point> path_;  // base, then every point moved to
  PointSet known_;           // asked or told
  std::map<Point, Result> results_;
};

// ---------------------------------------------------------------------------------------------
// evolutionary (NSGA-II)
// ---------------------------------------------------------------------------------------------

class Nsga2Strategy final : public StrategyBase {
 public:
  Nsga2Strategy(std::vector<int64_t> radices, const StrategyOptions& options)
      : StrategyBase(std::move(radices)),
        objectives_(options.objectives),
        constraints_(options.constraints),
        population_(static_cast<size_t>(options.population)),
        generations_(options.generations),
        crossover_rate_(options.crossover_rate),
        include_zero_(options.include_zero),
        rng_(options.seed) {
    for (size_t g = 0; g < radices_.size(); ++g) {
      if (radices_[g] > 1) mutable_genes_.push_back(g);
    }
    mutation_rate_ = options.mutation_rate >= 0 ? options.mutation_rate
                     : radices_.empty()        ? 0.0
                                               : 1.0 / static_cast<double>(radices_.size());
  }
  std::string name() const override { return "evolutionary"; }

  std::vector<Point> ask(int64_t n) override {
    if (!started_) start();
    advance();
    std::vector<Point> out;
    for (auto& slot : batch_) {
      if (static_cast<int64_t>(out.size()) >= n) break;
      if (!slot.asked) {
        slot.asked = true;
        out.push_back(slot.point);
      }
    }
    return out;
  }

  void tell(const std::vector<Observation>& results) override {
    for (const auto& r : results) {
      if (!in_space(r.point)) continue;
      const auto it = batch_index_.find(r.point);
      if (it != batch_index_.end()) {
        auto& slot = batch_[it->second];
        if (slot.done) continue;
        slot.done = slot.asked = true;
        slot.result = evaluate(r);
      } else if (known_.insert(r.point).second) {
        auto ind = evaluate(r);
        if (ind.ok) pool_.push_back(std::move(ind));
      }
    }
    if (started_) advance();
  }

 protected:
  void save(json& j) const override {
    j["rng"] = rng_to_string(rng_);
    j["started"] = started_;
    j["finished"] = finished_;
    j["generation"] = generation_;
    json pop = json::array(), batch = json::array(), pool = json::array();
    for (const auto& ind : population_members_) pop.push_back(to_json(ind));
    for (const auto& slot : batch_) {
      batch.push_back({{"point", slot.point}, {"asked", slot.asked}, {"result", slot.done ? to_json(slot.result) : json(nullptr)}});
    }
    for (const auto& ind : pool_) pool.push_back(to_json(ind));
    j["population"] = std::move(pop);
    j["batch"] = std::move(batch);
    j["pool"] = std::move(pool);
    j["known"] = encode_points(known_);
  }
  void load(const json& j) override {
    rng_ = rng_from_string(j.at("rng").get<std::string>());
    started_ = j.at("started").get<bool>();
    finished_ = j.at("finished").get<bool>();
    generation_ = j.at("generation").get<int64_t>();
    population_members_.clear();
    batch_.clear();
    batch_index_.clear();
    pool_.clear();
    for (const auto& x : j.at("population")) population_members_.push_back(from_json(x));
    for (const auto& x : j.at("batch")) {
      Slot slot;
      slot.point = x.at("point").get<Point>();
      slot.asked = x.at("asked").get<bool>();
      slot.done = !x.at("result").is_null();
      if (slot.done) slot.result = from_json(x.at("result"));
      batch_index_[slot.point] = batch_.size();
      batch_.push_back(std::move(slot));
    }
    for (const auto& x : j.at("pool")) pool_.push_back(from_json(x));
    known_ = decode_points(j.at("known"));
  }

 private:
  struct Individual {
    Point point;
    std::vector<double> f;  // objective metric values as told (not direction-adjusted)
    double violation = 0;   // 0: feasible
    bool ok = false;
    int64_t rank = 0;       // non-domination rank in the last survival (0: first front)
    double crowding = 0;
  };
  struct Slot {
    Point point;
    bool asked = false, done = false;
    Individual result;
  };

  json to_json(const Individual& ind) const {
    return {{"point", ind.point}, {"f", encode_doubles(ind.f)}, {"violation", encode(ind.violation)}, {"ok", ind.ok},
            {"rank", ind.rank}, {"crowding", encode(ind.crowding)}};
  }
  Individual from_json(const json& x) const {
    Individual ind;
    ind.point = x.at("point").get<Point>();
    ind.f = decode_doubles(x.at("f"));
    ind.violation = decode(x.at("violation"));
    ind.ok = x.at("ok").get<bool>();
    ind.rank = x.at("rank").get<int64_t>();
    ind.crowding = decode(x.at("crowding"));
    if (ind.ok && ind.f.size() != objectives_.size()) fail("strategy state (evolutionary): objective count mismatch");
    return ind;
  }

  Individual evaluate(const Observation& obs) const {
    Individual ind;
    ind.point = obs.point;
    ind.ok = obs.ok;
    for (const auto& o : objectives_) {
      const auto it = obs.metrics.find(o.metric);
      if (it == obs.metrics.end() || std::isnan(it->second)) {
        ind.ok = false;
        break;
      }
      ind.f.push_back(it->second);
    }
    if (!ind.ok) ind.f.clear();
    ind.violation = ind.ok ? violation(obs.metrics, constraints_) : 0;
    return ind;
  }

  void add_to_batch(Point p) {
    batch_index_[p] = batch_.size();
    batch_.push_back({std::move(p), false, false, {}});
  }

  void start() {
    started_ = true;
    generation_ = 0;
    const size_t want = population_ - std::min(population_, pool_.size());
    std::vector<Point> points;
    if (want > 0 && include_zero_) {
      Point zero(radices_.size(), 0);
      if (known_.insert(zero).second) points.push_back(std::move(zero));
    }
    sample_unknown(rng_, radices_, count_, known_, want - points.size(), points);
    for (auto& p : points) add_to_batch(std::move(p));
  }

  bool batch_complete() const {
    return std::all_of(batch_.begin(), batch_.end(), [](const Slot& s) { return s.done; });
  }

  // Survival and variation for every completed generation.
  void advance() {
    while (started_ && !finished_ && batch_complete()) {
      survive();
      if (generations_ > 0 && generation_ >= generations_) {
        finished_ = true;
        return;
      }
      ++generation_;
      make_offspring();
      if (batch_.empty()) finished_ = true;
    }
  }

  // Elitist (mu + lambda) survival over parents + offspring + results told from outside.
  void survive() {
    std::vector<Individual> all = std::move(population_members_);
    for (auto& slot : batch_) {
      if (slot.result.ok) all.push_back(std::move(slot.result));
    }
    for (auto& ind : pool_) all.push_back(std::move(ind));
    batch_.clear();
    batch_index_.clear();
    pool_.clear();
    population_members_ = select(std::move(all));
  }

  // Minimisation-form objective values.
  std::vector<double> min_form(const Individual& ind) const {
    std::vector<double> v(ind.f.size());
    for (size_t j = 0; j < v.size(); ++j) v[j] = objectives_[j].minimize ? ind.f[j] : -ind.f[j];
    return v;
  }

  void assign_crowding(std::vector<Individual>& all, const std::vector<size_t>& front) const {
    for (size_t i : front) all[i].crowding = 0;
    if (front.size() <= 2) {
      for (size_t i : front) all[i].crowding = std::numeric_limits<double>::infinity();
      return;
    }
    for (size_t j = 0; j < objectives_.size(); ++j) {
      const double sign = objectives_[j].minimize ? 1.0 : -1.0;
      const auto value = [&](size_t i) { return sign * all[i].f[j]; };
      auto order = front;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return value(a) < value(b); });
      all[order.front()].crowding = all[order.back()].crowding = std::numeric_limits<double>::infinity();
      const double range = value(order.back()) - value(order.front());
      if (!(range > 0) || !std::isfinite(range)) continue;
      for (size_t k = 1; k + 1 < order.size(); ++k) {
        const double d = (value(order[k + 1]) - value(order[k - 1])) / range;
        if (!std::isnan(d)) all[order[k]].crowding += d;
      }
    }
  }

  // Constrained non-dominated sorting (Deb): feasible individuals in Pareto fronts first, then
  // infeasible ones in fronts of equal total violation, smallest first. Whole fronts are taken
  // while they fit; the front that overflows is cut by crowding distance (largest first).
  std::vector<Individual> select(std::vector<Individual> all) const {
    std::vector<size_t> feasible, infeasible;
    for (size_t i = 0; i < all.size(); ++i) (all[i].violation == 0 ? feasible : infeasible).push_back(i);
    std::vector<std::vector<size_t>> fronts;
    size_t covered = 0;
    const std::vector<bool> minimize(objectives_.size(), true);
    while (covered < population_ && !feasible.empty()) {
      std::vector<std::vector<double>> values;
      values.reserve(feasible.size());
      for (size_t i : feasible) values.push_back(min_form(all[i]));
      const auto keep = pareto_front(values, minimize);
      std::vector<size_t> front, rest;
      size_t k = 0;
      for (size_t pos = 0; pos < feasible.size(); ++pos) {
        if (k < keep.size() && keep[k] == pos) {
          front.push_back(feasible[pos]);
          ++k;
        } else {
          rest.push_back(feasible[pos]);
        }
      }
      covered += front.size();
      fronts.push_back(std::move(front));
      feasible = std::move(rest);
    }
    std::stable_sort(infeasible.begin(), infeasible.end(), [&](size_t a, size_t b) { return all[a].violation < all[b].violation; });
    for (size_t k = 0; k < infeasible.size() && covered < population_;) {
      size_t end = k;
      while (end < infeasible.size() && all[infeasible[end]].violation == all[infeasible[k]].violation) ++end;
      fronts.emplace_back(infeasible.begin() + static_cast<std::ptrdiff_t>(k), infeasible.begin() + static_cast<std::ptrdiff_t>(end));
      covered += end - k;
      k = end;
    }
    std::vector<Individual> survivors;
    for (size_t r = 0; r < fronts.size(); ++r) {
      auto& front = fronts[r];
      for (size_t i : front) all[i].rank = static_cast<int64_t>(r);
      assign_crowding(all, front);
      if (survivors.size() + front.size() > population_) {
        std::stable_sort(front.begin(), front.end(), [&](size_t a, size_t b) { return all[a].crowding > all[b].crowding; });
        front.resize(population_ - survivors.size());
        std::sort(front.begin(), front.end());
      }
      for (size_t i : front) survivors.push_back(std::move(all[i]));
    }
    return survivors;
  }

  // Binary tournament: lower rank wins, then larger crowding distance, then the first drawn.
  size_t tournament() {
    const size_t n = population_members_.size();
    const size_t a = below(rng_, n);
    size_t b = a;
    if (n > 1) {
      b = below(rng_, n - 1);
      if (b >= a) ++b;
    }
    const auto& x = population_members_[a];
    const auto& y = population_members_[b];
    if (y.rank < x.rank || (y.rank == x.rank && y.crowding > x.crowding)) return b;
    return a;
  }

  void set_other_value(Point& p, size_t g) {
    const auto v = static_cast<int64_t>(below(rng_, static_cast<uint64_t>(radices_[g] - 1)));
    p[g] = v >= p[g] ? v + 1 : v;
  }

  void mutate(Point& p) {
    for (size_t g = 0; g < p.size(); ++g) {
      if (unit(rng_) < mutation_rate_ && radices_[g] > 1) set_other_value(p, g);
    }
  }

  // Mutates a child until it is a point never evaluated (nor already in this batch); false when
  // that fails kRetries times.
  bool offer(Point child) {
    static constexpr int kRetries = 32;
    mutate(child);
    for (int t = 0; known_.count(child) && t < kRetries && !mutable_genes_.empty(); ++t) {
      set_other_value(child, mutable_genes_[below(rng_, mutable_genes_.size())]);
    }
    if (!known_.insert(child).second) return false;
    add_to_batch(std::move(child));
    return true;
  }

  void make_offspring() {
    if (!population_members_.empty()) {
      for (size_t attempts = 0; batch_.size() < population_ && attempts < 4 * population_; ++attempts) {
        Point a = population_members_[tournament()].point;
        Point b = population_members_[tournament()].point;
        if (unit(rng_) < crossover_rate_) {
          for (size_t g = 0; g < a.size(); ++g) {
            if (unit(rng_) < 0.5) std::swap(a[g], b[g]);
          }
        }
        offer(std::move(a));
        if (batch_.size() < population_) offer(std::move(b));
      }
    }
    // No parents (every point failed) or the operators keep hitting known points: fill up with
    // random unexplored points.
    if (batch_.size() < population_) {
      std::vector<Point> points;
      sample_unknown(rng_, radices_, count_, known_, population_ - batch_.size(), points);
      for (auto& p : points) add_to_batch(std::move(p));
    }
  }

  std::vector<Objective> objectives_;
  std::vector<Constraint> constraints_;
  size_t population_;
  int64_t generations_;
  double crossover_rate_, mutation_rate_ = 0;
  bool include_zero_;
  std::vector<size_t> mutable_genes_;  // genes of radix > 1

  std::mt19937_64 rng_;
  bool started_ = false, finished_ = false;
  int64_t generation_ = 0;  // generation of the current batch (0: the initial population)
  std::vector<Individual> population_members_;  // parents: the survivors of the last survival
  std::vector<Slot> batch_;                     // the generation being evaluated
  std::map<Point, size_t> batch_index_;
  std::vector<Individual> pool_;  // results of points told from outside, join the next survival
  PointSet known_;                // asked, told, or in the batch
};

}  // namespace

std::unique_ptr<Strategy> make_strategy(const std::string& name, std::vector<int64_t> radices, const StrategyOptions& options) {
  for (size_t i = 0; i < radices.size(); ++i) {
    if (radices[i] < 1) fail("strategy {}: knob {} has radix {} (must be >= 1)", name, i, radices[i]);
  }
  if (name == "list") return std::make_unique<ListStrategy>(std::move(radices), options.list);
  if (name == "exhaustive") return std::make_unique<ExhaustiveStrategy>(std::move(radices));
  if (name == "random") return std::make_unique<RandomStrategy>(std::move(radices), options.seed);
  if (name == "greedy") {
    if (options.objectives.empty()) fail("greedy strategy: needs an objective (the first one is the primary)");
    if (options.size_metric.empty()) fail("greedy strategy: empty size metric");
    return std::make_unique<GreedyStrategy>(std::move(radices), options);
  }
  if (name == "evolutionary") {
    if (options.objectives.empty()) fail("evolutionary strategy: needs at least one objective");
    if (options.population < 2) fail("evolutionary strategy: population {} (must be >= 2)", options.population);
    if (options.generations < 0) fail("evolutionary strategy: generations {} (must be >= 0)", options.generations);
    if (!(options.crossover_rate >= 0 && options.crossover_rate <= 1)) {
      fail("evolutionary strategy: crossover rate {} outside [0, 1]", options.crossover_rate);
    }
    if (options.mutation_rate != -1 && !(options.mutation_rate >= 0 && options.mutation_rate <= 1)) {
      fail("evolutionary strategy: mutation rate {} outside [0, 1] (-1: 1/genes)", options.mutation_rate);
    }
    return std::make_unique<Nsga2Strategy>(std::move(radices), options);
  }
  if (name == "guided") return make_guided_strategy(std::move(radices), options);
  fail("unknown strategy '{}' (list, exhaustive, random, greedy, evolutionary or guided)", name);
}

}  // namespace rankscope
