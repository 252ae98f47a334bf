// Search strategies over a design space, in ask/tell form. A strategy sees only digit vectors
// (point i in [0, radices[i])), the radices, and the metric values told back to it: it knows
// nothing of models or databases. Deterministic: the same seed and the same tells give the same
// asks, and state()/restore() carry the complete state. Details: docs/search.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace rankscope {

using Point = std::vector<int64_t>;

struct Objective {
  std::string metric;
  bool minimize = true;
};
// metric OP bound, OP one of >=, <=, >, <.
struct Constraint {
  std::string metric;
  std::string op;
  double bound = 0;
};

// "tinystories.ppl:min,size.params:max" (every objective needs its direction). An empty string
// gives no objectives. Throws Error (one line naming the token) on bad syntax or a duplicate.
std::vector<Objective> parse_objectives(std::string_view text);
// "size.reduction_pct>=9,tinystories.ppl<20" (whitespace around tokens allowed). An empty string
// gives no constraints. Throws Error (one line naming the token) on bad syntax.
std::vector<Constraint> parse_constraints(std::string_view text);
// True when every constraint holds; a missing or NaN metric fails its constraint.
bool satisfies(const std::map<std::string, double>& metrics, const std::vector<Constraint>& constraints);
// Total violation: the sum over failed constraints of |value - bound| (at least the smallest
// positive double, so that a failed strict constraint counts); infinite for a missing or NaN
// metric; 0 exactly when satisfies() holds.
double violation(const std::map<std::string, double>& metrics, const std::vector<Constraint>& constraints);

struct Observation {
  Point point;
  std::map<std::string, double> metrics;
  bool ok = true;  // false: the evaluation failed (or gave NaN)
};

struct StrategyOptions {
  uint64_t seed = 0;
  std::vector<Objective> objectives;
  std::vector<Constraint> constraints;
  std::vector<Point> list;  // "list": the points, in order
  // "evolutionary": population size (>= 2), generations after the initial population (0: until
  // the caller stops asking), per-gene mutation rate (-1: 1/n_genes), crossover rate.
  int64_t population = 16, generations = 0;
  double mutation_rate = -1, crossover_rate = 0.9;
  bool include_zero = false;  // "evolutionary": the all-zero point joins the initial population
  // "greedy": stop when every metric here is reached (metric >= value), e.g. size.reduction_pct.
  std::map<std::string, double> target;
  std::string size_metric = "size.params";  // "greedy": smaller is smaller; saved = decrease
  // "guided": per metric, a prior term for every knob and digit ([knob][digit]); an objective is
  // predicted as intercept + scale * (the sum of the point's terms) + learnt corrections. Metrics
  // in `exact` are additive exactly (sizes): only their intercept is fitted. An objective without
  // a prior starts from zero terms and is learnt from the tells alone.
  std::map<std::string, std::vector<std::vector<double>>> priors;
  std::set<std::string> exact;
  // "guided": the hypervolume reference point, per objective metric in its own units (worse than
  // this counts for nothing). An objective without one takes a constraint's bound on it (e.g.
  // tinystories.ppl<=30), else its worst measured value plus a tenth of the measured range.
  std::map<std::string, double> reference;
  int64_t batch = 4;    // "guided": at most this many points per ask
  int64_t initial = 4;  // "guided": points from the priors alone before the model is fitted
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;
  // Up to n points to evaluate next, never one already asked or told. Empty: the strategy is
  // finished, or waits for the results of points it asked (every asked point must be told
  // eventually; a failed one with ok = false).
  virtual std::vector<Point> ask(int64_t n) = 0;
  // Results, in any order, possibly fewer than asked, possibly of points this strategy never
  // asked (a resumed study): those count as evaluated and are never asked. Points outside the
  // space are ignored, and so is a second result for the same point.
  virtual void tell(const std::vector<Observation>& results) = 0;
  // The complete state as JSON (see docs/search.md per strategy); a strategy made by
  // make_strategy with the same radices and options and restored from it continues exactly as
  // the original. restore() throws Error for a state of another strategy or space.
  virtual nlohmann::json state() const = 0;
  // What the strategy predicted for a point it asked (metric -> value); empty when it makes no
  // predictions (every strategy but guided) or made none for this point.
  virtual std::map<std::string, double> predicted(const Point& point) const {
    (void)point;
    return {};
  }
  virtual void restore(const nlohmann::json& state) = 0;
};

// name: list | exhaustive | random | greedy | evolutionary | guided. Throws Error for an unknown name, a
// radix < 1, options the strategy cannot use (greedy without objectives, evolutionary without
// objectives or with population < 2, rates outside [0, 1], list points outside the space) and,
// for exhaustive, a space of more than 2^40 points.
std::unique_ptr<Strategy> make_strategy(const std::string& name, std::vector<int64_t> radices,
                                        const StrategyOptions& options);

}  // namespace rankscope
