// Search efficiency: the hypervolume the guided, evolutionary (NSGA-II) and random strategies reach
// after 50, 100, 200, ... evaluations, against a reference front from one large evolutionary run.
//   build/bench/search [--model ../shared/data/stories260K-hf] [--data-dir ../shared/data]
//                      [--seeds 5] [--budget 1000] [--budgets guided=200,...] [--reference 5000] [--windows 16]
//                      [--cache-dir DIR]
// Space: per-matrix, choices dense,75%,50%,37.5%,25%,12.5% of @whiten (calibration: TinyStories,
// 64 x 256 tokens). Objectives: TinyStories perplexity (chunks of 256 tokens, the first `windows`)
// and parameters. Hypervolume of (log perplexity, parameters) within 3x the dense perplexity:
// reference point (log(3 ppl_dense), dense parameters). Every strategy sees the same evaluations
// (memoised by configuration); each run is told what it asked, 4 (guided) or 16 at a time.
// A sequence classifier as --model (bert-tiny-sst2): calibration and inputs from SST-2's dev
// sentences (--inputs, default all 872), the quality objective the KL of its label distribution to
// the base model's (fidelity.kl), hypervolume of (KL, parameters) within KL 0.1 nats.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/decompose.hpp"
#include "core/decompose/proxy.hpp"
#include "core/decompose/size.hpp"
#include "core/space/design_space.hpp"
#include "core/models/bert.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/fidelity.hpp"
#include "evaluators/perplexity.hpp"
#include "evaluators/tasks.hpp"
#include "search/pareto.hpp"
#include "search/strategy.hpp"

using namespace rankscope;

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir = "../shared/data/stories260K-hf", data_dir = "../shared/data", cache_dir = "rankscope-cache";
  int64_t seeds = 5, budget = 1000, reference_budget = 5000, windows = 16, n_inputs = -1;
  std::map<std::string, int64_t> budgets;  // per strategy, overriding --budget
  std::vector<std::string> strategies = {"guided", "evolutionary", "random"};
  for (int i = 1; i < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help" || i + 1 >= argc) {
      fmt::print(a == "-h" || a == "--help" ? stdout : stderr,
                 "usage: search [--model DIR] [--data-dir DIR] [--cache-dir DIR] [--seeds 5] [--budget 1000] "
                 "[--reference 5000] [--windows 16] [--strategies guided,evolutionary,random]\n");
      return a == "-h" || a == "--help" ? 0 : 2;
    }
    const std::string v = argv[i + 1];
    if (a == "--model") model_dir = v;
    else if (a == "--data-dir") data_dir = v;
    else if (a == "--cache-dir") cache_dir = v;
    else if (a == "--seeds") seeds = std::stoll(v);
    else if (a == "--budget") budget = std::stoll(v);
    else if (a == "--budgets") {  // per strategy: guided=200,evolutionary=1000 (others: --budget)
      for (size_t at = 0; at <= v.size();) {
        const size_t comma = std::min(v.find(',', at), v.size());
        const auto item = v.substr(at, comma - at);
        const auto eq = item.find('=');
        if (eq == std::string::npos) {
          fmt::print(stderr, "search: --budgets wants NAME=N,...\n");
          return 2;
        }
        budgets[item.substr(0, eq)] = std::stoll(item.substr(eq + 1));
        at = comma + 1;
      }
    }
    else if (a == "--reference") reference_budget = std::stoll(v);
    else if (a == "--windows") windows = std::stoll(v);
    else if (a == "--inputs") n_inputs = std::stoll(v);
    else if (a == "--strategies") {
      strategies.clear();
      for (size_t at = 0; at <= v.size();) {
        const size_t comma = std::min(v.find(',', at), v.size());
        strategies.push_back(v.substr(at, comma - at));
        at = comma + 1;
      }
    }
    else {
      fmt::print(stderr, "search: unknown option {}\n", a);
      return 2;
    }
  }
  try {
    const Model base = load_model(model_dir);
    const bool classifier = base.config.arch == Arch::bert;
    const std::string quality = classifier ? "fidelity.kl" : "ppl";
    std::vector<TokenId> ids;
    std::vector<BertInput> inputs;
    Eigen::MatrixXd base_log_probs;
    if (classifier) {
      const Task sst2 = load_task("sst2", {.data_dir = data_dir, .limit = n_inputs > 0 ? Limit(n_inputs) : Limit()});
      for (const auto& doc : sst2.docs) {
        inputs.push_back(bert_encode(base.require_tokenizer(), doc.text_a, doc.text_b, base.config.n_ctx_train));
      }
      base_log_probs = classifier_log_probs(base, inputs, 32);
    } else {
      ids = base.require_tokenizer().encode(load_task("tinystories", {.data_dir = data_dir}).text);
    }
    CalibrationOptions calib;
    calib.source = classifier ? "sst2" : "tinystories";
    calib.ctx = std::min<int64_t>(calib.ctx, base.config.n_ctx_train);  // bert-tiny reads 128 positions
    calib.data_dir = data_dir;
    calib.cache_dir = cache_dir;
    const ActivationOptions activation{calibrate(base, calib), 0.5};
    FactorCache cache(cache_dir);
    SpaceSpec spec;
    spec.kind = "per-matrix";
    spec.method = Method::whiten;
    spec.choices = parse_space_choices("dense,75%,50%,37.5%,25%,12.5%", Method::whiten);
    const auto space = make_design_space(base.config, spec);
    const auto radices = space->radices();
    const int64_t dense_params = dense_param_count(base);
    PerplexityOptions ppl;
    ppl.ctx = 256;
    ppl.max_windows = windows;

    std::map<Point, std::pair<double, double>> memo;  // point -> (ppl, params)
    double eval_seconds = 0;
    auto evaluate = [&](const Point& p) {
      if (auto it = memo.find(p); it != memo.end()) return it->second;
      const auto t0 = Clock::now();
      const Config config = space->to_config(p);
      const Model m = config.is_base() ? base : decompose_model(base, config, cache, nullptr, activation);
      const double value = classifier ? classifier_fidelity(base_log_probs, classifier_log_probs(m, inputs, 32)).kl
                                      : perplexity_chunks(m, ids, ppl).ppl;
      const auto params = static_cast<double>(size_report(base.config, dense_params, config).params_after);
      eval_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      return memo[p] = {value, params};
    };
    const double dense_ppl = evaluate(Point(radices.size(), 0)).first;
    // The region measured: within 3x the dense perplexity (log scale), or within KL 0.1 nats.
    constexpr double kKlBound = 0.1;
    const double bound = classifier ? kKlBound : 3.0 * dense_ppl;
    auto scaled = [&](double v) { return classifier ? v : std::log(v); };
    const std::vector<double> ref = {scaled(bound), static_cast<double>(dense_params)};
    auto hv = [&](const std::vector<Point>& points) {
      std::vector<std::vector<double>> rows;
      for (const auto& p : points) {
        const auto [v, params] = memo.at(p);
        rows.push_back({scaled(v), params});
      }
      return hypervolume(rows, {true, true}, ref);
    };
    ProxyCalculator proxies(base, cache, activation);
    // The size objective under its metric name, as a sweep names it: search_priors gives it its
    // exact per-matrix terms (any other name would get the proxy's, as for a quality metric).
    const auto priors = search_priors(base, *space, {quality, "size.params"}, proxies);
    auto options_for = [&](uint64_t seed) {
      StrategyOptions o;
      o.seed = seed;
      o.objectives = parse_objectives(quality + ":min,size.params:min");
      o.priors = priors.terms;
      o.exact = priors.exact;
      o.population = 16;
      o.include_zero = true;
      // The region the benchmark measures, as a user states it (sweep --ref): worse than 3x the
      // dense perplexity or the dense size counts for nothing.
      o.reference = {{quality, bound}, {"size.params", static_cast<double>(dense_params)}};
      return o;
    };
    // One run: the points in the order asked (up to n).
    auto run = [&](const std::string& name, uint64_t seed, int64_t n) {
      auto s = make_strategy(name, radices, options_for(seed));
      std::vector<Point> asked;
      while (static_cast<int64_t>(asked.size()) < n) {
        auto pts = s->ask(name == "guided" ? 4 : 16);
        if (pts.empty()) break;
        std::vector<Observation> told;
        for (const auto& p : pts) {
          if (static_cast<int64_t>(asked.size()) >= n) break;
          asked.push_back(p);
          const auto [v, params] = evaluate(p);
          told.push_back({p, {{quality, v}, {"size.params", params}}, std::isfinite(v)});
        }
        s->tell(told);
      }
      return asked;
    };
    fmt::print("space: {}\n", space->describe());
    if (classifier) {
      fmt::print("{} SST-2 dev sentences; the dense model's KL {} (to itself), {} parameters; reference point (KL {}, {})\n",
                 inputs.size(), dense_ppl, dense_params, kKlBound, dense_params);
    } else {
      fmt::print("dense TinyStories perplexity {:.4f} ({} windows of 256 tokens), {} parameters; reference point "
                 "(log {:.4f}, {})\n", dense_ppl, windows, dense_params, 3 * dense_ppl, dense_params);
    }
    const auto t_ref = Clock::now();
    const auto reference = run("evolutionary", 12345, reference_budget);
    std::vector<Point> everything;
    for (const auto& [p, v] : memo) everything.push_back(p);
    const double reference_hv = hv(everything);
    fmt::print("reference: evolutionary, {} evaluations in {:.0f} s: hypervolume {:.6g} (every evaluation so far)\n",
               reference.size(), std::chrono::duration<double>(Clock::now() - t_ref).count(), reference_hv);
    auto budget_of = [&](const std::string& name) {
      const auto it = budgets.find(name);
      return it == budgets.end() ? budget : it->second;
    };
    int64_t most = 0;
    for (const auto& name : strategies) most = std::max(most, budget_of(name));
    std::vector<int64_t> marks;
    for (int64_t m : {50, 100, 200, 500, 1000, 2000}) {
      if (m <= most) marks.push_back(m);
    }
    std::map<std::string, std::map<int64_t, std::vector<double>>> results;
    for (const std::string& name : strategies) {
      for (int64_t seed = 1; seed <= seeds; ++seed) {
        const auto asked = run(name, static_cast<uint64_t>(seed), budget_of(name));
        std::string line;
        for (int64_t m : marks) {
          if (static_cast<int64_t>(asked.size()) < m) break;
          const double ratio = hv(std::vector<Point>(asked.begin(), asked.begin() + m)) / reference_hv;
          results[name][m].push_back(ratio);
          line += fmt::format(" {}: {:.4f}", m, ratio);
        }
        fmt::print("{} seed {}:{}\n", name, seed, line);
        std::fflush(stdout);
      }
    }
    fmt::print("\nmedian of {} seeds, hypervolume / reference's:\n{:<14}", seeds, "evaluations");
    for (int64_t m : marks) fmt::print(" {:>8}", m);
    fmt::print("\n");
    for (const auto& [name, by_mark] : results) {
      fmt::print("{:<14}", name);
      for (int64_t m : marks) {
        const auto it = by_mark.find(m);
        fmt::print(" {:>8}", it == by_mark.end() ? std::string("-") : fmt::format("{:.4f}", median(it->second)));
      }
      fmt::print("\n");
    }
    auto at = [&](const std::string& name, int64_t m) {
      const auto it = results[name].find(m);
      return it == results[name].end() ? NAN : median(it->second);
    };
    fmt::print("guided at 100 / evolutionary at 1000: {:.4f} (target >= 1)\n", at("guided", 100) / at("evolutionary", 1000));
    fmt::print("guided at 200: {:.2f} % of the reference (target >= 98 %)\n", 100 * at("guided", 200));
    fmt::print("{} distinct configurations evaluated in {:.0f} s\n", memo.size(), eval_seconds);
  } catch (const Error& e) {
    fmt::print(stderr, "search: {}\n", e.what());
    return 1;
  }
  return 0;
}
