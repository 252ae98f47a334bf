// The guided strategy (docs/search.md, "guided"): a model of every objective, additive over the
// knobs, started from per-knob prior terms (sensitivity proxies, exact sizes) and refitted from
// every told result; proposals from the exact optimum of that model at every size (a
// multiple-choice knapsack solved by dynamic programming), chosen by the hypervolume they are
// expected to add.
#include "search/guided.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include <Eigen/Dense>

#include "core/base/error.hpp"
#include "search/pareto.hpp"

namespace rankscope {

namespace {

using json = nlohmann::json;

constexpr int64_t kCapacity = 512;  // knapsack resolution: size units over the space's range
constexpr double kRidge = 1.0;      // penalty of the per-(knob, digit) corrections
constexpr double kScaleRidge = 0.1; // penalty of the per-knob scales of the prior
// The gain of a candidate is the hypervolume its predicted mean adds (optimism 0: in the runs of
// tests/test_search.cpp's allocation problem, optimism 0.5, 1 or 2 sds explored no better); the
// model's uncertainty breaks ties among candidates that add nothing.
constexpr double kOptimism = 0.0;
constexpr int kMutationsPerFrontPoint = 1;

class GuidedStrategy final : public Strategy {
 public:
  GuidedStrategy(std::vector<int64_t> radices, const StrategyOptions& o)
      : radices_(std::move(radices)), options_(o), rng_(o.seed) {
    if (options_.objectives.empty()) fail("guided strategy: needs at least one objective");
    if (options_.batch < 1) fail("guided strategy: batch {} (must be >= 1)", options_.batch);
    if (options_.initial < 1) fail("guided strategy: initial {} (must be >= 1)", options_.initial);
    for (const auto& [metric, terms] : options_.priors) {
      if (terms.size() != radices_.size()) {
        fail("guided strategy: prior of {} has {} knobs, the space {}", metric, terms.size(), radices_.size());
      }
      for (size_t k = 0; k < terms.size(); ++k) {
        if (static_cast<int64_t>(terms[k].size()) != radices_[k]) {
          fail("guided strategy: prior of {} has {} terms for knob {} of radix {}", metric, terms[k].size(), k, radices_[k]);
        }
        for (double v : terms[k]) {
          if (!std::isfinite(v)) fail("guided strategy: prior of {} is not finite at knob {}", metric, k);
        }
      }
    }
    for (size_t j = 0; j < options_.objectives.size(); ++j) {
      const auto& m = options_.objectives[j].metric;
      if (auto it = options_.reference.find(m); it != options_.reference.end() && !std::isfinite(it->second)) {
        fail("guided strategy: the reference of {} is not finite", m);
      }
      const auto given = given_reference(j);
      log_ok_.push_back(!given || *given > 0);
    }
    offset_.resize(radices_.size());
    // Features: 1, P, P^2, each knob's own prior term (a per-knob scale), then one indicator per
    // knob and digit >= 1 (a per-choice correction).
    n_features_ = 3 + static_cast<Eigen::Index>(radices_.size());
    for (size_t k = 0; k < radices_.size(); ++k) {
      offset_[k] = n_features_ - 1;  // feature of digit d >= 1: offset_[k] + d
      n_features_ += radices_[k] - 1;
    }
  }

  std::string name() const override { return "guided"; }

  std::vector<Point> ask(int64_t n) override {
    std::vector<Point> out;
    n = std::min<int64_t>(n, options_.batch);
    if (n <= 0) return out;
    fit_all();
    const int64_t ok = std::count_if(told_.begin(), told_.end(), [](const Told& t) { return t.ok; });
    const bool fitted = ok >= options_.initial;
    auto candidates = generate(fitted);
    if (!fitted) {
      // The prior's optimal front, points spread evenly along it.
      std::vector<Point> fresh;
      for (const auto& c : candidates) {
        if (!known_.count(c)) fresh.push_back(c);
      }
      const int64_t want = std::min<int64_t>(n, options_.initial - ok - static_cast<int64_t>(asked_.size()));
      for (int64_t i = 0; i < want && !fresh.empty(); ++i) {
        const auto at = static_cast<size_t>((static_cast<double>(i) + 0.5) / static_cast<double>(want) *
                                            static_cast<double>(fresh.size()));
        Point p = fresh[std::min(at, fresh.size() - 1)];
        if (!known_.count(p)) take(p, out, false);
      }
      if (out.empty() && asked_.empty()) fill_random(1, out, false);  // the prior's front is exhausted
      return out;
    }
    // Fantasies: pending points at their predicted values join the front while this batch is chosen.
    std::vector<std::vector<double>> front = measured_rows();
    for (const auto& p : asked_) front.push_back(predicted_row(p, 0.0));
    const auto ref = reference();
    std::vector<bool> minimize(options_.objectives.size(), true);  // rows are minimisation-oriented
    // Each candidate's prediction once (a prediction's spread costs O(features^2)).
    std::vector<std::vector<double>> optimistic, expected;
    std::vector<double> spreads;
    for (const auto& c : candidates) {
      optimistic.push_back(predicted_row(c, kOptimism));
      expected.push_back(predicted_row(c, 0.0));
      spreads.push_back(uncertainty(c));
    }
    while (static_cast<int64_t>(out.size()) < n) {
      const double base = front.empty() ? 0.0 : hypervolume(front, minimize, ref);
      // The first point of a batch is the mean model's best; each further one is the best under
      // a draw of the model from its posterior (Thompson sampling), among the candidates and that
      // draw's own knapsack optima: exploration where the model is unsure, not at random.
      if (!out.empty()) {
        const auto sample = sample_fits();
        std::vector<Point> pool = candidates;
        std::vector<std::vector<double>> rows_of;
        {
          const ActiveFits use(*this, sample);
          for (auto& c : generate(true)) pool.push_back(std::move(c));
          for (const auto& c : pool) rows_of.push_back(predicted_row(c, 0.0));
        }
        double best_gain = 0;
        std::optional<size_t> best;
        for (size_t i = 0; i < pool.size(); ++i) {
          if (known_.count(pool[i])) continue;
          auto rows = front;
          rows.push_back(rows_of[i]);
          const double gain = hypervolume(rows, minimize, ref) - base;
          if (gain > best_gain) {
            best_gain = gain;
            best = i;
          }
        }
        if (best) {
          front.push_back(predicted_row(pool[*best], 0.0));  // a fantasy at the mean model's prediction
          take(pool[*best], out, true);
          continue;
        }
      }
      double best_gain = 0, best_spread = -1;
      std::optional<size_t> best;
      for (size_t i = 0; i < candidates.size(); ++i) {
        if (known_.count(candidates[i])) continue;
        auto rows = front;
        rows.push_back(optimistic[i]);
        const double gain = hypervolume(rows, minimize, ref) - base;
        const double spread = spreads[i];
        if (gain > best_gain || (gain == best_gain && best_gain == 0 && spread > best_spread)) {
          best_gain = gain;
          best_spread = spread;
          best = i;
        }
      }
      if (!best) break;
      if (best_gain == 0) {
        // Nothing is predicted to add: the candidate predicted closest to adding something (the
        // least uniform improvement, in units of the reference box, that would put it inside the
        // box and off every front point), rather than the most uncertain one (often far outside).
        double least = std::numeric_limits<double>::infinity();
        for (size_t i = 0; i < candidates.size(); ++i) {
          if (known_.count(candidates[i])) continue;
          const double e = shortfall(expected[i], front, ref);
          if (e < least) {
            least = e;
            best = i;
          }
        }
      }
      front.push_back(expected[*best]);
      take(candidates[*best], out, true);
    }
    if (out.empty()) fill_random(n, out, true);
    return out;
  }

  // How far row c (minimised) is from adding hypervolume: the least amount t, in units of each
  // objective's span between the best front value and the reference, by which every objective
  // of c would have to improve for c to lie inside the reference box and be dominated by no row
  // of `front`.
  static double shortfall(const std::vector<double>& c, const std::vector<std::vector<double>>& front,
                          const std::vector<double>& ref) {
    const size_t m = c.size();
    std::vector<double> span(m, 1.0);
    for (size_t j = 0; j < m; ++j) {
      double best = ref[j];
      for (const auto& f : front) best = std::min(best, f[j]);
      span[j] = ref[j] - best > 0 ? ref[j] - best : 1.0;
    }
    double t = 0;
    for (size_t j = 0; j < m; ++j) t = std::max(t, (c[j] - ref[j]) / span[j]);  // into the box
    for (const auto& f : front) {
      // Escaping f: improving by t makes some objective strictly better than f's.
      double escape = std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < m; ++j) escape = std::min(escape, (c[j] - f[j]) / span[j]);
      t = std::max(t, escape);
    }
    return std::isfinite(t) ? t : std::numeric_limits<double>::max();
  }

  void tell(const std::vector<Observation>& results) override {
    for (const auto& r : results) {
      if (!in_space(r.point) || told_index_.count(r.point)) continue;
      told_index_.insert(r.point);
      known_.insert(r.point);
      asked_.erase(r.point);
      Told t{r.point, r.metrics, r.ok};
      for (const auto& o : options_.objectives) {
        auto it = t.metrics.find(o.metric);
        if (it == t.metrics.end() || !std::isfinite(it->second)) t.ok = false;
      }
      told_.push_back(std::move(t));
    }
  }

  std::map<std::string, double> predicted(const Point& p) const override {
    auto it = predictions_.find(p);
    return it == predictions_.end() ? std::map<std::string, double>{} : it->second;
  }

  json state() const override {
    json j = {{"strategy", "guided"}, {"radices", radices_}};
    std::ostringstream os;
    os << rng_;
    j["rng"] = os.str();
    j["asked"] = json::array();
    for (const auto& p : asked_) j["asked"].push_back(p);
    j["known"] = json::array();
    for (const auto& p : known_) j["known"].push_back(p);
    j["told"] = json::array();
    for (const auto& t : told_) {
      json m = json::object();
      for (const auto& [k, v] : t.metrics) m[k] = std::isfinite(v) ? json(v) : json(nullptr);
      j["told"].push_back({{"point", t.point}, {"ok", t.ok}, {"metrics", m}});
    }
    j["predictions"] = json::array();
    for (const auto& [p, m] : predictions_) {
      json v = json::object();
      for (const auto& [k, x] : m) v[k] = std::isfinite(x) ? json(x) : json(nullptr);
      j["predictions"].push_back({{"point", p}, {"metrics", v}});
    }
    return j;
  }

  void restore(const json& s) override {
    try {
      if (!s.is_object() || s.value("strategy", "") != "guided") fail("strategy state: not a state of the guided strategy");
      if (s.at("radices").get<std::vector<int64_t>>() != radices_) {
        fail("strategy state: saved for another design space (different radices)");
      }
      std::istringstream is(s.at("rng").get<std::string>());
      is >> rng_;
      if (is.fail()) fail("strategy state: bad RNG state");
      asked_.clear();
      known_.clear();
      told_.clear();
      told_index_.clear();
      predictions_.clear();
      auto point = [&](const json& j) {
        Point p = j.get<Point>();
        if (!in_space(p)) fail("strategy state (guided): point {} is outside the design space", j.dump());
        return p;
      };
      for (const auto& p : s.at("asked")) asked_.insert(point(p));
      for (const auto& p : s.at("known")) known_.insert(point(p));
      for (const auto& t : s.at("told")) {
        Told x{point(t.at("point")), {}, t.at("ok").get<bool>()};
        for (const auto& [k, v] : t.at("metrics").items()) x.metrics[k] = v.is_null() ? NAN : v.get<double>();
        for (const auto& o : options_.objectives) {  // as tell() decides it
          auto it = x.metrics.find(o.metric);
          if (it == x.metrics.end() || !std::isfinite(it->second)) x.ok = false;
        }
        if (!told_index_.insert(x.point).second) fail("strategy state (guided): point {} told twice", t.at("point").dump());
        known_.insert(x.point);
        told_.push_back(std::move(x));
      }
      for (const auto& p : asked_) known_.insert(p);
      for (const auto& e : s.at("predictions")) {
        auto& m = predictions_[point(e.at("point"))];
        for (const auto& [k, v] : e.at("metrics").items()) m[k] = v.is_null() ? NAN : v.get<double>();
      }
    } catch (const json::exception& e) {
      fail("strategy state (guided): {}", e.what());
    }
  }

 private:
  struct Told {
    Point point;
    std::map<std::string, double> metrics;
    bool ok = true;
  };
  // The model of one objective, in its transformed scale (log for positive metrics that are not
  // exact): value = intercept + scale P + quad P^2 + sum_k delta[k][d_k], P the point's prior sum.
  struct Fit {
    bool exact = false, log = false;
    int64_t n = 0;  // observations it was fitted to
    Eigen::VectorXd beta;  // [intercept, scale, quad, corrections...]
    Eigen::MatrixXd cov;   // posterior covariance of beta (residual variance x (X^T X + L)^-1)
  };

  bool in_space(const Point& p) const {
    if (p.size() != radices_.size()) return false;
    for (size_t i = 0; i < p.size(); ++i) {
      if (p[i] < 0 || p[i] >= radices_[i]) return false;
    }
    return true;
  }

  const std::vector<std::vector<double>>* prior_of(const std::string& metric) const {
    auto it = options_.priors.find(metric);
    return it == options_.priors.end() ? nullptr : &it->second;
  }

  double prior_sum(const std::string& metric, const Point& p) const {
    const auto* prior = prior_of(metric);
    if (prior == nullptr) return 0.0;
    double s = 0;
    for (size_t k = 0; k < p.size(); ++k) s += (*prior)[k][static_cast<size_t>(p[k])];
    return s;
  }

  Eigen::VectorXd features(const std::string& metric, const Point& p) const {
    Eigen::VectorXd x = Eigen::VectorXd::Zero(n_features_);
    const double prior = prior_sum(metric, p);
    x[0] = 1;
    x[1] = prior;
    x[2] = prior * prior;
    const auto* terms = prior_of(metric);
    for (size_t k = 0; k < p.size(); ++k) {
      if (terms != nullptr) x[3 + static_cast<Eigen::Index>(k)] = (*terms)[k][static_cast<size_t>(p[k])];
      if (p[k] > 0) x[offset_[k] + p[k]] = 1;
    }
    return x;
  }

  void fit_all() {
    fits_.clear();
    for (const auto& o : options_.objectives) fits_[o.metric] = fit(o.metric);
  }

  Fit fit(const std::string& metric) const {
    Fit f;
    f.exact = options_.exact.count(metric) > 0;
    std::vector<const Told*> rows;
    for (const auto& t : told_) {
      if (t.ok) rows.push_back(&t);
    }
    f.n = static_cast<int64_t>(rows.size());
    f.beta = Eigen::VectorXd::Zero(n_features_);
    f.beta[1] = 1.0;
    f.cov = Eigen::MatrixXd::Zero(n_features_, n_features_);
    if (rows.empty()) return f;
    f.log = !f.exact && std::all_of(rows.begin(), rows.end(), [&](const Told* t) { return t->metrics.at(metric) > 0; });
    auto y_of = [&](const Told* t) { return f.log ? std::log(t->metrics.at(metric)) : t->metrics.at(metric); };
    if (f.exact) {  // additive exactly: only the intercept
      double s = 0;
      for (const auto* t : rows) s += y_of(t) - prior_sum(metric, t->point);
      f.beta[0] = s / static_cast<double>(rows.size());
      return f;
    }
    const auto n = static_cast<Eigen::Index>(rows.size());
    Eigen::MatrixXd X(n, n_features_);
    Eigen::VectorXd y(n);
    for (Eigen::Index i = 0; i < n; ++i) {
      X.row(i) = features(metric, rows[static_cast<size_t>(i)]->point).transpose();
      y[i] = y_of(rows[static_cast<size_t>(i)]);
    }
    // Ridge: the corrections and the quadratic term shrink towards the prior's straight line;
    // intercept and scale are free (a tiny penalty keeps the system regular with one point).
    Eigen::MatrixXd A = X.transpose() * X;
    A(0, 0) += 1e-9;
    A(1, 1) += 1e-9;
    A(2, 2) += kRidge;
    for (Eigen::Index j = 3; j < 3 + static_cast<Eigen::Index>(radices_.size()); ++j) A(j, j) += kScaleRidge;
    for (Eigen::Index j = 3 + static_cast<Eigen::Index>(radices_.size()); j < n_features_; ++j) A(j, j) += kRidge;
    const Eigen::LDLT<Eigen::MatrixXd> ldlt(A);
    f.beta = ldlt.solve(X.transpose() * y);
    const Eigen::VectorXd r = y - X * f.beta;
    // Residual variance: at least a small floor, so that a model that fits its few points exactly
    // is not taken as certain.
    const double dof = std::max<double>(1.0, static_cast<double>(n) - 2.0);
    const double s2 = std::max(r.squaredNorm() / dof, 1e-4 * (y.squaredNorm() / static_cast<double>(n) + 1e-12));
    f.cov = s2 * ldlt.solve(Eigen::MatrixXd::Identity(n_features_, n_features_));
    return f;
  }

  // Mean and standard deviation of an objective at p, in the metric's own scale (a log-scale
  // model's spread is mapped through exp at mean +- one sd and halved).
  std::pair<double, double> predict(const std::string& metric, const Point& p) const {
    const Fit& f = active_->at(metric);
    if (f.exact) return {f.beta[0] + prior_sum(metric, p), 0.0};
    const Eigen::VectorXd x = features(metric, p);
    const double mu = x.dot(f.beta);
    const double sd = std::sqrt(std::max(0.0, x.dot(f.cov * x)));
    if (!f.log) return {mu, sd};
    return {std::exp(mu), 0.5 * (std::exp(mu + sd) - std::exp(mu - sd))};
  }

  // The objectives of p as a minimisation row: the prediction moved `optimism` sds the good way.
  std::vector<double> predicted_row(const Point& p, double optimism) const {
    std::vector<double> row;
    for (size_t j = 0; j < options_.objectives.size(); ++j) {
      const auto& o = options_.objectives[j];
      const auto [mu, sd] = predict(o.metric, p);
      row.push_back(hv_scale(j, mu - optimism * sd * (o.minimize ? 1.0 : -1.0)));
    }
    return row;
  }

  double uncertainty(const Point& p) const {
    double u = 0;
    for (size_t j = 0; j < options_.objectives.size(); ++j) {
      const auto& m = options_.objectives[j].metric;
      const auto [mu, sd] = predict(m, p);
      u += sd / (std::abs(mu) + 1e-12);
    }
    return u;
  }

  // Hypervolume is measured on the scale the model fits (log for positive quality metrics: a
  // perplexity from 10 to 11 weighs what one from 20 to 22 does), minimisation-oriented.
  double hv_scale(size_t j, double v) const {
    const auto& o = options_.objectives[j];
    auto it = fits_.find(o.metric);
    const bool log = it != fits_.end() && it->second.log && log_ok_[j];
    const double x = log ? (v > 0 ? std::log(v) : -std::numeric_limits<double>::infinity()) : v;
    return o.minimize ? x : -x;
  }

  // While alive, predictions and knapsack terms use `fits` (a posterior draw) instead of fits_.
  struct ActiveFits {
    const GuidedStrategy& g;
    ActiveFits(const GuidedStrategy& strategy, const std::map<std::string, Fit>& fits) : g(strategy) { g.active_ = &fits; }
    ~ActiveFits() { g.active_ = &g.fits_; }
  };

  // A draw of every fitted model from its posterior, beta + L z (L L^T = cov, z standard normal by
  // Box-Muller from rng_: the same on every machine, unlike std::normal_distribution).
  std::map<std::string, Fit> sample_fits() {
    std::map<std::string, Fit> out = fits_;
    auto uniform = [this] { return (static_cast<double>(rng_() >> 11) + 0.5) * 0x1.0p-53; };
    for (auto& [metric, f] : out) {
      if (f.exact || f.n == 0) continue;
      const Eigen::LLT<Eigen::MatrixXd> llt(f.cov);
      if (llt.info() != Eigen::Success) continue;
      Eigen::VectorXd z(f.beta.size());
      for (Eigen::Index i = 0; i < z.size(); ++i) {
        z[i] = std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform());
      }
      f.beta += llt.matrixL() * z;
    }
    return out;
  }

  std::vector<std::vector<double>> measured_rows() const {
    std::vector<std::vector<double>> rows;
    for (const auto& t : told_) {
      if (!t.ok) continue;
      std::vector<double> row;
      for (size_t j = 0; j < options_.objectives.size(); ++j) row.push_back(hv_scale(j, t.metrics.at(options_.objectives[j].metric)));
      rows.push_back(std::move(row));
    }
    return rows;
  }

  // The reference bound of objective j in its own units, from the options or a constraint on it.
  std::optional<double> given_reference(size_t j) const {
    const auto& o = options_.objectives[j];
    if (auto it = options_.reference.find(o.metric); it != options_.reference.end()) return it->second;
    std::optional<double> bound;
    for (const auto& c : options_.constraints) {
      if (c.metric != o.metric) continue;
      const bool upper = c.op == "<" || c.op == "<=";
      if (upper == o.minimize) bound = bound ? (o.minimize ? std::min(*bound, c.bound) : std::max(*bound, c.bound)) : c.bound;
    }
    return bound;
  }

  // The hypervolume reference (hv_scale): each objective's given bound, else its worst measured
  // value plus a tenth of its range.
  std::vector<double> reference() const {
    const auto rows = measured_rows();
    std::vector<double> ref;
    for (size_t j = 0; j < options_.objectives.size(); ++j) {
      if (auto given = given_reference(j)) {
        ref.push_back(hv_scale(j, *given));
        continue;
      }
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (const auto& r : rows) {
        lo = std::min(lo, r[j]);
        hi = std::max(hi, r[j]);
      }
      const double span = hi > lo ? hi - lo : std::abs(hi) * 0.1 + 1e-9;
      ref.push_back(hi + 0.1 * span);
    }
    return ref;
  }

  // Per knob and digit, the terms of one objective in minimisation orientation: the prior alone
  // before the model is fitted, the fitted linear terms after.
  std::vector<std::vector<double>> terms(size_t objective, bool fitted) const {
    const auto& o = options_.objectives[objective];
    const auto* prior = prior_of(o.metric);
    const Fit& f = active_->at(o.metric);
    std::vector<std::vector<double>> t(radices_.size());
    for (size_t k = 0; k < radices_.size(); ++k) {
      for (int64_t d = 0; d < radices_[k]; ++d) {
        const double p = prior ? (*prior)[k][static_cast<size_t>(d)] : 0.0;
        double v = p;
        if (fitted && !f.exact) {
          v = (f.beta[1] + f.beta[3 + static_cast<Eigen::Index>(k)]) * p + (d > 0 ? f.beta[offset_[k] + d] : 0.0);
        }
        // A fitted model on a log scale is still additive there; a prior's direction is "worse
        // when larger" for quality objectives (proxies), the metric's own for exact ones.
        const bool flip = (fitted || f.exact) ? !o.minimize : false;
        t[k].push_back(flip ? -v : v);
      }
    }
    return t;
  }

  // Candidates: the exact optima of the additive model at every size (knapsack front), and a few
  // single-knob mutations of each.
  std::vector<Point> generate(bool fitted) {
    const size_t m = options_.objectives.size();
    // The size axis: the first exact objective; the value: the other objectives, one knapsack per
    // weighting (equal weights, then each alone).
    std::optional<size_t> axis;
    for (size_t j = 0; j < m; ++j) {
      if (options_.exact.count(options_.objectives[j].metric)) {
        axis = j;
        break;
      }
    }
    std::vector<size_t> values;
    for (size_t j = 0; j < m; ++j) {
      if (!axis || j != *axis) values.push_back(j);
    }
    std::vector<std::vector<std::vector<double>>> value_terms;
    for (size_t j : values) value_terms.push_back(terms(j, fitted));
    std::vector<std::vector<double>> weights;
    if (values.size() <= 1) {
      weights.push_back(std::vector<double>(values.size(), 1.0));
    } else {
      weights.push_back(std::vector<double>(values.size(), 1.0));
      for (size_t i = 0; i < values.size(); ++i) {
        std::vector<double> w(values.size(), 0.0);
        w[i] = 1.0;
        weights.push_back(w);
      }
    }
    // Each value objective scaled by its terms' spread, so that equal weights mean something.
    std::vector<double> spread(values.size(), 1.0);
    for (size_t i = 0; i < values.size(); ++i) {
      double s = 0;
      for (const auto& knob : value_terms[i]) {
        const auto [lo, hi] = std::minmax_element(knob.begin(), knob.end());
        s += *hi - *lo;
      }
      spread[i] = s > 0 ? s : 1.0;
    }
    std::vector<std::vector<double>> size_terms;
    if (axis) size_terms = terms(*axis, fitted);
    std::set<Point> seen;
    std::vector<Point> out;
    for (const auto& w : weights) {
      std::vector<std::vector<double>> v(radices_.size());
      for (size_t k = 0; k < radices_.size(); ++k) {
        for (int64_t d = 0; d < radices_[k]; ++d) {
          double s = 0;
          for (size_t i = 0; i < values.size(); ++i) s += w[i] * value_terms[i][k][static_cast<size_t>(d)] / spread[i];
          v[k].push_back(s);
        }
      }
      for (auto& p : knapsack_front(v, size_terms)) {
        if (seen.insert(p).second) out.push_back(std::move(p));
      }
    }
    // Mutations: one knob of a front point moved to a random other digit.
    const size_t n_front = out.size();
    for (size_t i = 0; i < n_front; ++i) {
      for (int r = 0; r < kMutationsPerFrontPoint; ++r) {
        Point p = out[i];
        const auto k = static_cast<size_t>(std::uniform_int_distribution<int64_t>(0, static_cast<int64_t>(p.size()) - 1)(rng_));
        if (radices_[k] < 2) continue;
        const int64_t d = std::uniform_int_distribution<int64_t>(0, radices_[k] - 2)(rng_);
        p[k] = d >= p[k] ? d + 1 : d;
        if (seen.insert(p).second) out.push_back(std::move(p));
      }
    }
    return out;
  }

  // The Pareto-optimal points of (sum of size terms, sum of value terms), both minimised, by
  // dynamic programming over discretised sizes (kCapacity units over the space's size range); with
  // no size axis, the minimum of the value.
  std::vector<Point> knapsack_front(const std::vector<std::vector<double>>& value,
                                    const std::vector<std::vector<double>>& size) const {
    const size_t K = radices_.size();
    std::vector<std::vector<int64_t>> units(K);
    double range = 0;
    std::vector<double> lo(K, 0.0);
    if (!size.empty()) {
      for (size_t k = 0; k < K; ++k) {
        const auto [mn, mx] = std::minmax_element(size[k].begin(), size[k].end());
        lo[k] = *mn;
        range += *mx - *mn;
      }
    }
    const double unit = range > 0 ? range / static_cast<double>(kCapacity) : 1.0;
    int64_t cap = 0;
    for (size_t k = 0; k < K; ++k) {
      int64_t most = 0;
      for (int64_t d = 0; d < radices_[k]; ++d) {
        const int64_t u = size.empty() || range <= 0 ? 0 : static_cast<int64_t>(std::floor((size[k][static_cast<size_t>(d)] - lo[k]) / unit));
        units[k].push_back(u);
        most = std::max(most, u);
      }
      cap += most;
    }
    constexpr double kInf = std::numeric_limits<double>::infinity();
    std::vector<double> dp(static_cast<size_t>(cap) + 1, kInf), next;
    dp[0] = 0;
    // choice[k][c]: the digit of knob k on the best path to capacity c after knob k.
    std::vector<std::vector<int32_t>> choice(K, std::vector<int32_t>(static_cast<size_t>(cap) + 1, -1));
    for (size_t k = 0; k < K; ++k) {
      next.assign(dp.size(), kInf);
      for (size_t c = 0; c < dp.size(); ++c) {
        if (dp[c] == kInf) continue;
        for (int64_t d = 0; d < radices_[k]; ++d) {
          const size_t c2 = c + static_cast<size_t>(units[k][static_cast<size_t>(d)]);
          const double v = dp[c] + value[k][static_cast<size_t>(d)];
          // Ties keep the lower digit (visited first); a reachable state always gets a digit, also
          // when the model's terms are not finite.
          if (v < next[c2] || choice[k][c2] < 0) {
            next[c2] = v;
            choice[k][c2] = static_cast<int32_t>(d);
          }
        }
      }
      dp.swap(next);
    }
    std::vector<Point> front;
    double best = kInf;
    for (size_t c = 0; c < dp.size(); ++c) {
      if (!(dp[c] < best)) continue;  // not better than a smaller size
      best = dp[c];
      Point p(K);
      size_t at = c;
      for (size_t k = K; k-- > 0;) {
        const int32_t d = choice[k][at];
        p[k] = d;
        at -= static_cast<size_t>(units[k][static_cast<size_t>(d)]);
      }
      front.push_back(std::move(p));
    }
    return front;
  }

  // Asks p; a fitted model's prediction of it is kept (predicted()).
  void take(const Point& p, std::vector<Point>& out, bool fitted) {
    known_.insert(p);
    asked_.insert(p);
    if (fitted) {
      std::map<std::string, double> m;
      for (const auto& o : options_.objectives) m[o.metric] = predict(o.metric, p).first;
      predictions_[p] = std::move(m);
    }
    out.push_back(p);
  }

  // Uniformly random unknown points (when the model proposes nothing new).
  void fill_random(int64_t n, std::vector<Point>& out, bool fitted) {
    long double count = 1;
    for (auto r : radices_) count *= static_cast<long double>(r);
    for (int64_t tries = 0; static_cast<int64_t>(out.size()) < n && tries < 1000 * n; ++tries) {
      if (static_cast<long double>(known_.size()) >= count) return;
      Point p(radices_.size());
      for (size_t k = 0; k < p.size(); ++k) p[k] = std::uniform_int_distribution<int64_t>(0, radices_[k] - 1)(rng_);
      if (!known_.count(p)) take(p, out, fitted);
    }
  }

  std::vector<int64_t> radices_;
  StrategyOptions options_;
  std::mt19937_64 rng_;
  std::vector<Eigen::Index> offset_;
  Eigen::Index n_features_ = 0;
  std::set<Point> known_;   // asked or told
  std::set<Point> asked_;   // asked, not yet told
  std::set<Point> told_index_;
  std::vector<Told> told_;  // in the order told
  std::map<Point, std::map<std::string, double>> predictions_;
  std::map<std::string, Fit> fits_;
  mutable const std::map<std::string, Fit>* active_ = &fits_;  // see ActiveFits
  std::vector<bool> log_ok_;  // per objective: hypervolume on the log scale allowed (no reference <= 0)
};

}  // namespace

std::unique_ptr<Strategy> make_guided_strategy(std::vector<int64_t> radices, const StrategyOptions& options) {
  return std::make_unique<GuidedStrategy>(std::move(radices), options);
}

}  // namespace rankscope
