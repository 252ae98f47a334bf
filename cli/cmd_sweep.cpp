// rankscope sweep EXPERIMENT.ini [--db FILE] [--study NAME] [--budget N]: runs (or continues) a
// study: a search strategy proposes configurations, each is decomposed and evaluated, and every
// (configuration, metrics) pair goes to the results database.
//
// Resuming is a deterministic replay: the strategy is rebuilt from its seed and asked again; a
// configuration the study already holds is told from the database instead of being evaluated, so
// the search continues exactly where it stopped and nothing is evaluated twice. Several processes
// on one database replay the same strategy and split the work through atomic claims: a process
// skips what another has claimed and waits for its result when the strategy needs it.
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <map>
#include <new>
#include <optional>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/decompose/decompose.hpp"
#include "core/decompose/proxy.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/io/model_hash.hpp"
#include "core/base/suggest.hpp"
#include "db/open_store.hpp"
#include "evaluators/calibration.hpp"
#include "search/pareto.hpp"
#include "search/strategy.hpp"

namespace rankscope::cli {

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) { g_signal.store(sig); }

struct Interrupted {};

struct ClaimLost {
  std::string why;
  bool taken_over = false;  // false: this worker's heartbeats failed (the database is in trouble)
};

// Keeps the claim being evaluated alive: one thread and one database connection for the whole
// sweep (opened once: a connection per claim would come and go every few seconds), refreshing
// the claim's heartbeat every `every_s` seconds so that a long evaluation (a 7B decomposition,
// MMLU) is never mistaken for a dead worker. When the claim is lost (another worker took it
// over) or the heartbeats keep failing for half the stale-claim timeout (another worker may
// soon take it over), lost() says why and the evaluation stops at its next progress report.
class Heartbeat {
 public:
  Heartbeat(const std::string& db, double every_s, double stale_after_s)
      // A beat never outlasts the next one (a lock held, a server away).
      : conn_(open_results_store(db, {.busy_timeout_seconds = every_s, .server_wait_seconds = every_s})),
        every_s_(every_s),
        give_up_s_(stale_after_s / 2),
        thread_([this] { loop(); }) {}
  ~Heartbeat() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  void watch(int64_t evaluation) {
    std::lock_guard lock(mutex_);
    evaluation_ = evaluation;
    alive_since_ = std::chrono::steady_clock::now();
    lost_.clear();
    taken_over_ = false;
    lost_flag_.store(false);
  }
  void unwatch() {
    std::lock_guard lock(mutex_);
    evaluation_ = -1;
  }
  bool is_lost() const { return lost_flag_.load(); }
  ClaimLost lost() const {
    std::lock_guard lock(mutex_);
    return {lost_, taken_over_};
  }

 private:
  // Beats every every_s_ for the watched claim. Failures are measured from the last successful
  // beat (or the start of the claim): after give_up_s_ without one, the claim counts as lost.
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      if (cv_.wait_for(lock, std::chrono::duration<double>(every_s_), [this] { return stop_; })) break;
      if (evaluation_ < 0 || lost_flag_.load()) continue;
      const int64_t evaluation = evaluation_;
      lock.unlock();  // the beat may wait for the write lock: never block watch()/unwatch()
      std::string why;
      bool taken_over = false, beat = false;
      try {
        beat = conn_->heartbeat(evaluation);
        if (!beat) {
          why = "another worker took the claim over";
          taken_over = true;
        }
      } catch (const std::exception& e) {
        why = e.what();
      }
      lock.lock();
      if (evaluation_ != evaluation) continue;  // the claim ended meanwhile
      const auto now = std::chrono::steady_clock::now();
      if (beat) {
        alive_since_ = now;
      } else if (taken_over) {
        lost_ = why;
        taken_over_ = true;
        lost_flag_.store(true);
      } else if (const double silent = std::chrono::duration<double>(now - alive_since_).count(); silent >= give_up_s_) {
        lost_ = fmt::format("its heartbeats failed for {:.0f} s ({}), so another worker may take it over", silent, why);
        lost_flag_.store(true);
      }
    }
  }

  std::unique_ptr<ResultsStore> conn_;
  const double every_s_, give_up_s_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  int64_t evaluation_ = -1;
  std::chrono::steady_clock::time_point alive_since_;  // the last successful beat, or the claim
  std::string lost_;
  bool taken_over_ = false;
  std::atomic<bool> lost_flag_{false};
  std::thread thread_;  // last: starts once everything above is constructed
};

// Whether an exception thrown while evaluating says something about the machine rather than
// about the configuration: the configuration is then released for a rerun, never stored as
// failed. Returns the one-line description, or "" for a permanent failure (an Error).
std::string transient_reason(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const TransientError& e) {
    return e.what();
  } catch (const Error&) {
    return "";
  } catch (const std::bad_alloc&) {
    return "out of memory (std::bad_alloc)";
  } catch (const std::exception& e) {
    return fmt::format("unexpected error: {}", e.what());
  } catch (...) {
    return "unexpected error of unknown type";
  }
}

std::map<std::string, double> parse_target(const std::string& text) {
  std::map<std::string, double> out;
  for (const auto& c : parse_constraints(text)) {
    if (c.op != ">=") fail("--target: '{}{}{}': only METRIC>=VALUE targets are supported", c.metric, c.op, c.bound);
    out[c.metric] = c.bound;
  }
  return out;
}

std::string short_number(double v) {
  if (!std::isfinite(v)) return "nan";
  if (std::fabs(v) >= 1e5 && std::fabs(v - std::round(v)) < 1e-9) return fmt::format("{:.0f}", v);
  return fmt::format("{:.5g}", v);
}

std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

// A path as recorded in the settings: absolute and normalised, so that the same directory
// reached from another working directory compares equal.
std::string settled_path(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  const auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(path), ec);
  return ec ? path : p.string();
}

// The settings that define a study: everything that changes which configurations are evaluated
// or any number measured. A rerun must agree on all of them (the budget may grow; the stale-claim
// timeout is the study's own, recorded here and adopted by every later worker).
nlohmann::json study_settings(const Params& p, const std::string& model_hash, const std::vector<std::string>& list) {
  nlohmann::json s = {{"model_hash", model_hash},   {"strategy", p.strategy},   {"seed", p.seed},
                      {"objectives", p.objectives}, {"constraints", p.constraints}, {"tasks", p.tasks},
                      {"limit", p.limit},           {"num_fewshot", p.num_fewshot}, {"ctx", p.ctx},
                      {"ppl_protocol", p.ppl_protocol}, {"bos", p.bos},          {"text", p.text},
                      {"data_dir", settled_path(p.data_dir)}, {"svd_backend", p.svd_backend},
                      {"include_base", p.include_base}, {"stale_after", p.stale_after}};
  s["fidelity_text"] = settled_path(p.fidelity_text);
  s["text_name"] = p.name;
  if (p.tasks.find("latency") != std::string::npos) {
    s["latency"] = {{"batch", p.latency_batch}, {"tokens", p.latency_tokens}, {"reps", p.latency_reps}};
  }
  if (p.strategy == "list") {
    s["configs"] = list;
  } else {
    s["space"] = {{"kind", p.space}, {"ranks", p.ranks}, {"choices", p.choices}, {"group_size", p.group_size},
                  {"method", p.method}};
    if (p.fused) s["space"]["fused"] = true;  // only then: earlier studies keep their settings
  }
  if (p.strategy == "evolutionary") {
    s["evolutionary"] = {{"population", p.population}, {"generations", p.generations},
                         {"mutation_rate", p.mutation_rate}, {"crossover_rate", p.crossover_rate}};
  }
  if (p.strategy == "greedy") s["target"] = p.target;
  if (p.prune) {
    const EarlyStop e;
    s["prune"] = {{"stages", e.stages}, {"z", e.z}, {"min_windows", e.min_windows}, {"window_order_seed", e.shuffle_seed}};
  }  // only then: earlier studies keep their settings
  if (p.strategy == "guided") {
    s["guided"] = {{"batch", p.batch}, {"initial", p.initial}, {"asvd_alpha", p.asvd_alpha}};
    if (!p.ref.empty()) s["guided"]["ref"] = p.ref;  // only then: earlier guided studies keep their settings
  }
  if (!p.calib.empty()) {  // only then: studies created before calibration existed keep their settings
    s["calibration"] = {{"calib", p.calib}, {"samples", p.calib_samples}, {"ctx", p.calib_ctx},
                        {"seed", p.calib_seed}, {"asvd_alpha", p.asvd_alpha}};
  }
  return s;
}

// Refuses a rerun whose settings differ from the study's. A key the study lacks was added to
// the settings after the study was created: the study predates it and is not checked against it.
void check_settings(const std::string& db, const std::string& study, const nlohmann::json& existing,
                    const nlohmann::json& settings) {
  for (const auto& [key, value] : settings.items()) {
    if (key == "stale_after" || !existing.contains(key)) continue;
    if (existing.at(key) != value) {
      fail("{}: study '{}' was created with {} = {}, this run has {} (use another --study)", db, study, key,
           existing.at(key).dump(), value.dump());
    }
  }
  for (const auto& [key, value] : existing.items()) {
    if (key != "stale_after" && !settings.contains(key) && !value.is_null() && key != "calibration") {
      fail("{}: study '{}' was created with {} = {}, this run has none (use another --study)", db, study, key,
           value.dump());
    }
  }
}

// Every metric named in objectives, constraints and targets must be one the study's tasks
// produce: an unknown name is an error before anything is created or evaluated.
void check_metric_names(const std::vector<std::string>& used, const std::vector<std::string>& produced,
                        const std::string& tasks) {
  for (const auto& name : used) {
    if (std::find(produced.begin(), produced.end(), name) != produced.end()) continue;
    fail("unknown metric '{}': the tasks {} produce {}{}", name, tasks, fmt::join(produced, ", "),
         did_you_mean(name, produced));
  }
}

}  // namespace

int run_sweep(const Params& params) {
  if (params.model.empty()) throw Error("no model: give `model =` in the experiment file or --model");
  if (params.db.empty()) throw Error("no results database: give `db =` in the experiment file or --db");
  const std::string study_name =
      !params.study.empty() ? params.study
                            : (!params.experiment.empty() ? std::filesystem::path(params.experiment).stem().string() : "");
  if (study_name.empty()) throw Error("no study name: give `study =` or --study");
  if (params.tasks.empty()) throw Error("no tasks: give `tasks =` or --tasks");
  if (params.budget < 1) throw Error("--budget must be at least 1");
  if (params.stale_after <= 0) throw Error("--stale-after must be positive");
  const auto objectives = parse_objectives(params.objectives);
  if (objectives.empty()) throw Error("no objectives: give `objectives =` (e.g. tinystories.ppl:min,size.params:min)");
  const auto constraints = parse_constraints(params.constraints);
  set_num_threads(params.threads);

  EvalRequest request = eval_request(params);
  const bool size_only = std::all_of(request.tasks.begin(), request.tasks.end(), [](const auto& t) { return t == "size"; });
  Model base = load_model(params.model, {.weights = !size_only});
  if (!size_only && !base.has_weights) {
    fail("{}: no weights (shapes-only config.json); a sweep on it can only run the size task", params.model);
  }
  // The base weights go to the device once; each configuration uploads only the matrices it factors.
  if (base.has_weights) place_model(base, params);
  // The factor cache lives beside the database unless --cache-dir says otherwise.
  std::filesystem::path cache_dir = params.cache_dir;
  if (cache_dir == Params{}.cache_dir) {
    // (for a database server: in the working directory)
    cache_dir = is_server_store(params.db) ? std::filesystem::absolute("rankscope-cache")
                                           : std::filesystem::absolute(params.db).parent_path() / "rankscope-cache";
  }
  request.cache_dir = cache_dir;

  // The points: a list of configurations, or a design space.
  std::vector<Config> list;
  std::vector<std::string> list_text;
  std::unique_ptr<DesignSpace> space;
  std::vector<int64_t> radices;
  StrategyOptions options;
  options.seed = params.seed;
  options.objectives = objectives;
  options.constraints = constraints;
  options.population = params.population;
  options.generations = params.generations;
  options.mutation_rate = params.mutation_rate;
  options.crossover_rate = params.crossover_rate;
  options.target = parse_target(params.target);
  options.include_zero = params.include_base;  // evolutionary: the dense model joins the first population
  if (params.strategy == "list") {
    if (params.include_base) list.push_back(Config{});
    for (const auto& text : params.configs) list.push_back(parse_config(text, base.config));
    if (list.empty()) throw Error("the list strategy needs configurations: `config =` lines or --config");
    for (size_t i = 0; i < list.size(); ++i) {
      list_text.push_back(encode_config(list[i], base.config));
      options.list.push_back({static_cast<int64_t>(i)});
    }
    radices = {static_cast<int64_t>(list.size())};
  } else {
    if (!params.configs.empty()) fail("`config =` lines are only read by the list strategy, not {}", params.strategy);
    space = make_design_space(base.config, space_spec(params));
    radices = space->radices();
  }
  // A list holds its own number of points: the budget cannot exceed it.
  const int64_t budget = space ? params.budget : std::min<int64_t>(params.budget, static_cast<int64_t>(list.size()));
  auto to_config = [&](const Point& p) { return space ? space->to_config(p) : list.at(static_cast<size_t>(p.at(0))); };

  const Evaluator evaluator(base, request);  // reads and tokenises the tasks once
  // Metric names are checked before anything is computed or the database is touched.
  std::vector<std::string> used_metrics;
  for (const auto& o : objectives) used_metrics.push_back(o.metric);
  for (const auto& c : constraints) used_metrics.push_back(c.metric);
  for (const auto& [m, v] : options.target) used_metrics.push_back(m);
  if (params.strategy == "greedy") used_metrics.push_back(options.size_metric);
  check_metric_names(used_metrics, evaluator.metric_names(), params.tasks);
  FactorCache factor_cache(cache_dir, svd_policy(params.svd_backend));
  // asvd/whiten points: the calibration is captured (or read from the cache) once for the study.
  bool aware = std::any_of(list.begin(), list.end(), [](const Config& c) { return needs_calibration(c); });
  if (space) {
    const SpaceSpec spec = space_spec(params);
    aware = is_activation_aware(spec.method) ||
            std::any_of(spec.choices.begin(), spec.choices.end(),
                        [](const SpaceChoice& c) { return !c.dense && is_activation_aware(c.choice.method); });
  }
  ActivationOptions activation;
  activation.asvd_alpha = params.asvd_alpha;
  if (aware && !size_only) {
    if (params.calib.empty()) fail("the study's configurations use @asvd or @whiten: give calibration data with --calib FILE|TASK");
    activation.calibration = calibrate(base, calibration_options(params, cache_dir));
  }
  const std::string model_hash = model_content_hash(base);

  const auto db_store = open_results_store(params.db);
  ResultsStore& db = *db_store;
  const int64_t model_id = db.add_model({model_hash, params.model, base.config.architecture, base.n_params()});
  const nlohmann::json settings = study_settings(params, model_hash, list_text);
  const int64_t study = db.open_study(study_name, settings, [&](const nlohmann::json& existing) {
    check_settings(db.display(), study_name, existing, settings);
  });
  // The study's stale-claim timeout (a study created before it was recorded adopts this run's).
  const nlohmann::json stale_setting = db.adopt_study_setting(study, "stale_after", params.stale_after);
  if (!stale_setting.is_number() || !std::isfinite(stale_setting.get<double>()) || stale_setting.get<double>() <= 0)
    fail("{}: study '{}' has stale_after = {}, not a positive number of seconds", db.display(), study_name,
         stale_setting.dump());
  const double stale_after = stale_setting.get<double>();
  if (stale_after != params.stale_after) {
    fmt::print(stderr, "sweep: study '{}' takes claims over after {:g} s of silence (set when it was created); "
               "this run's --stale-after {:g} does not change that\n", study_name, stale_after, params.stale_after);
  }
  if (params.strategy == "guided") {
    if (!space) fail("the guided strategy needs a design space, not a list");
    options.batch = params.batch;
    options.initial = params.initial;
    if (!params.ref.empty()) {  // the hypervolume reference, one value per objective
      const auto items = split_list(params.ref);
      if (items.size() != objectives.size()) fail("--ref has {} values for {} objectives", items.size(), objectives.size());
      for (size_t j = 0; j < items.size(); ++j) {
        double v = 0;
        const auto* end = items[j].data() + items[j].size();
        const auto [ptr, ec] = std::from_chars(items[j].data(), end, v);
        if (ec != std::errc() || ptr != end || !std::isfinite(v)) fail("--ref: '{}' is not a finite number", items[j]);
        options.reference[objectives[j].metric] = v;
      }
    }
    // Priors: exact sizes, and the proxies for every other objective.
    std::vector<std::string> metrics;
    for (const auto& o : objectives) metrics.push_back(o.metric);
    if (!base.has_weights) fail("the guided strategy needs the model's weights for its proxies ({})", params.model);
    ProxyCalculator proxies(base, factor_cache, activation);
    auto priors = search_priors(base, *space, metrics, proxies);
    options.priors = std::move(priors.terms);
    options.exact = std::move(priors.exact);
  }
  auto strategy = make_strategy(params.strategy, radices, options);

  // Metrics the strategy needs, and what the study already holds.
  std::vector<std::string> needed = used_metrics;
  needed.push_back(options.size_metric);
  std::sort(needed.begin(), needed.end());
  needed.erase(std::unique(needed.begin(), needed.end()), needed.end());
  struct Known {
    std::map<std::string, double> metrics;
    bool ok = false;
  };
  std::map<std::string, Known> known;  // canonical config -> finished result
  auto refresh_known = [&] {
    const MetricRows rows = db.metric_rows(study, needed);
    for (size_t i = 0; i < rows.configs.size(); ++i) {
      Known k;
      k.ok = rows.statuses[i] == EvalStatus::done;
      for (size_t j = 0; j < needed.size(); ++j) {
        if (std::isfinite(rows.rows[i][j])) k.metrics[needed[j]] = rows.rows[i][j];
      }
      known[rows.configs[i]] = std::move(k);
    }
  };
  refresh_known();
  auto front_size = [&] {
    std::vector<std::vector<double>> values;
    std::vector<bool> minimize;
    for (const auto& o : objectives) minimize.push_back(o.minimize);
    for (const auto& [cfg, k] : known) {
      if (!k.ok || !satisfies(k.metrics, constraints)) continue;
      std::vector<double> row;
      for (const auto& o : objectives) row.push_back(k.metrics.count(o.metric) ? k.metrics.at(o.metric) : NAN);
      values.push_back(row);
    }
    return pareto_front(values, minimize).size();
  };

  const auto worker = worker_id();
  Heartbeat heartbeat(params.db, std::min(30.0, stale_after / 4), stale_after);
  g_signal.store(0);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const StatusCounts at_start = db.counts(study);
  fmt::print("study {} in {}: {} of {} configurations evaluated; strategy {} (seed {}), {} tasks; worker {}\n", study_name,
             db.display(), at_start.finished(), budget, params.strategy, params.seed, request.tasks.size(), worker);
  std::fflush(stdout);

  int64_t evaluated = 0;
  double eval_seconds = 0.0;       // wall time of whole evaluations (decomposition included)
  double model_seconds = 0.0;      // of which running the evaluators (the model itself)
  const auto run_start = std::chrono::steady_clock::now();
  std::vector<Point> pending;  // asked, not yet told
  bool finished = false, budget_reached = false;
  int exit_code = 0;

  auto name_of = [](const std::string& canonical) { return canonical.empty() ? std::string("(base model)") : canonical; };
  // Releases a claim on the way out of a failure; false when the database would not let it.
  auto try_release = [&](int64_t claim) {
    try {
      return db.release(claim);
    } catch (const std::exception&) {
      return false;
    }
  };
  auto claim_fate = [&](bool released) {
    return released ? std::string("its claim is released")
                    : fmt::format("its claim will be taken over once stale ({:g} s, or at once on this host)", stale_after);
  };

  // Evaluates one claimed configuration and stores the result; nullopt when the claim was lost
  // on the way (nothing stored: the worker that took it over stores its own result).
  auto evaluate = [&](const Point& p, const Config& config, const std::string& canonical,
                      int64_t claim) -> std::optional<Observation> {
    heartbeat.watch(claim);
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<MetricValue> metrics;
    EvalStatus status = EvalStatus::done;
    std::string error;
    std::map<std::string, std::unique_ptr<Progress>> bars;
    auto check_claim = [&] {
      if (g_signal.load() != 0) throw Interrupted{};
      if (heartbeat.is_lost()) throw heartbeat.lost();
    };
    const ProgressFn progress = [&](const std::string& label, int64_t done, int64_t total) {
      check_claim();
      auto& bar = bars[label];
      if (!bar) bar = std::make_unique<Progress>(label);
      bar->update(done, total);
      if (done >= total) bar->finish();
    };
    // Early stopping (--prune): stop once this configuration's optimistic objectives (a perplexity
    // objective at the low end of its interval, sizes exact) are dominated by a complete evaluation.
    EarlyStop early;
    std::string pruned_by;
    std::map<std::string, double> exact_sizes;
    std::optional<TaskReport> sizes;  // computed once: for the rule, and kept by a pruned evaluation
    if (params.prune) {
      sizes = size_metrics(base, config);
      for (const auto& m : sizes->metrics) exact_sizes[m.name()] = m.value;
      refresh_known();  // the complete evaluations of every worker so far
      early.stop = [&](const PartialEstimate& e) {
        std::vector<double> x;  // this configuration at its best, objective by objective
        for (const auto& o : objectives) {
          if (o.metric == e.metric) {
            x.push_back(o.minimize ? e.lo : e.hi);
          } else if (auto it = exact_sizes.find(o.metric); it != exact_sizes.end()) {
            x.push_back(it->second);
          } else {
            return false;  // an objective not known yet: it could be anything
          }
        }
        for (const auto& [cfg, k] : known) {
          if (!k.ok || !satisfies(k.metrics, constraints)) continue;
          bool dominates = true;
          std::string why;
          for (size_t j = 0; j < objectives.size() && dominates; ++j) {
            const auto& o = objectives[j];
            auto it = k.metrics.find(o.metric);
            if (it == k.metrics.end()) {
              dominates = false;
              break;
            }
            const double q = it->second;
            // Strictly better on the estimated objective, at least as good on the exact ones.
            if (o.metric == e.metric) {
              dominates = o.minimize ? q < x[j] : q > x[j];
            } else {
              dominates = o.minimize ? q <= x[j] : q >= x[j];
            }
            why += fmt::format("{}{}={}", why.empty() ? "" : ", ", o.metric, short_number(q));
          }
          if (dominates) {
            pruned_by = fmt::format("pruned after {} of {} {}: {} in [{}, {}] ({:g} sd), dominated by {} ({})", e.done,
                                    e.total, e.unit, e.metric, short_number(e.lo), short_number(e.hi), early.z, name_of(cfg), why);
            return true;
          }
        }
        return false;
      };
    }
    try {
      std::unique_ptr<Model> decomposed;
      if (!config.is_base() && !size_only) {
        decomposed = std::make_unique<Model>(decompose_model(base, config, factor_cache, nullptr, activation));
      }
      check_claim();
      const auto t_model = std::chrono::steady_clock::now();
      auto reports = evaluator.run(decomposed ? *decomposed : base, config, progress, params.prune ? &early : nullptr);
      const bool stopped = !reports.empty() && reports.back().fidelity < 1.0;
      if (stopped) {
        // The sizes are exact and cheap: a pruned evaluation keeps them even when its size task
        // came after the one that stopped.
        const bool has_size = std::any_of(reports.begin(), reports.end(), [](const TaskReport& r) { return r.task == "size"; });
        if (!has_size && std::find(request.tasks.begin(), request.tasks.end(), "size") != request.tasks.end()) {
          reports.push_back(*sizes);
        }
      }
      model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_model).count();
      // From here on the result is complete: complete() stores it if the claim is still this
      // worker's, whatever the heartbeats said meanwhile.
      if (g_signal.load() != 0) throw Interrupted{};
      for (const auto& r : reports) {
        for (const auto& m : r.metrics) {
          nlohmann::json protocol = r.protocol;
          if (activation.calibration && needs_calibration(config)) {
            protocol["calibration"] = activation.calibration->info;
            protocol["asvd_alpha"] = activation.asvd_alpha;
          }
          // An infinite value (a perplexity that overflowed) is as unusable as a NaN.
          const bool finite = m.status == "ok" && std::isfinite(m.value);
          metrics.push_back({m.name(), m.value, m.stderr_, m.n, finite ? m.status : "nan", protocol});
          if (!finite) status = EvalStatus::nan;
        }
      }
      if (stopped) {
        const auto& last = *std::find_if(reports.begin(), reports.end(), [](const TaskReport& r) { return r.fidelity < 1.0; });
        // Perplexity tasks stop by windows, document tasks (accuracy) by documents.
        const bool by_documents = last.protocol.contains("documents_total");
        const int64_t scored = last.protocol.value(by_documents ? "n_docs" : "windows", int64_t{0});
        metrics.push_back({"eval.fidelity", last.fidelity, NAN, scored, "ok",
                           {{"task", last.task},
                            {"definition", by_documents ? "share of the task's documents scored before early stopping"
                                                        : "share of the task's windows scored before early stopping"},
                            {by_documents ? "documents" : "windows", scored},
                            {by_documents ? "documents_total" : "windows_total",
                             last.protocol.value(by_documents ? "documents_total" : "windows_total", int64_t{0})}}});
        if (status == EvalStatus::done) status = EvalStatus::pruned;
        error = pruned_by;
      }
      // What the guided strategy predicted, stored beside what was measured: how good its model is.
      for (const auto& [metric, value] : strategy->predicted(p)) {
        metrics.push_back({"predicted." + metric, value, NAN, 0, std::isfinite(value) ? "ok" : "nan",
                           {{"source", "the guided strategy's model when it proposed this configuration"}}});
      }
    } catch (const Interrupted&) {
      heartbeat.unwatch();
      throw;
    } catch (const ClaimLost& lost) {
      heartbeat.unwatch();
      bars.clear();
      const bool released = try_release(claim);
      if (!lost.taken_over) {  // the database is in trouble: stop rather than claim again
        fail("stopped evaluating {}: {}; nothing was stored for it and {}; rerun to retry it", name_of(canonical),
             lost.why, claim_fate(released));
      }
      fmt::print(stderr, "sweep: stopped evaluating {}: {}; nothing of it was stored by this worker\n",
                 name_of(canonical), lost.why);
      return std::nullopt;
    } catch (...) {
      heartbeat.unwatch();
      const std::string transient = transient_reason(std::current_exception());
      if (!transient.empty()) {
        bars.clear();
        fail("evaluating {}: {}; nothing was stored for it and {}; rerun to retry it", name_of(canonical), transient,
             claim_fate(try_release(claim)));
      }
      try {
        throw;
      } catch (const Error& e) {  // bad input for this configuration: a permanent failure
        status = EvalStatus::failed;
        error = e.what();
        metrics.clear();
      }
    }
    heartbeat.unwatch();
    bars.clear();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bool stored = false;
    try {
      stored = db.complete(claim, metrics, status, wall, error);
    } catch (const std::exception& e) {
      fail("storing the result of {} failed: {}; nothing was stored for it and {}; rerun to retry it",
           name_of(canonical), e.what(), claim_fate(try_release(claim)));
    }
    if (!stored) {
      fmt::print(stderr, "sweep: the claim on {} was taken over by another worker while this one evaluated it; "
                 "this result was not stored (the configuration is that worker's now)\n", name_of(canonical));
      return std::nullopt;
    }
    ++evaluated;
    eval_seconds += wall;
    Observation obs{p, {}, status == EvalStatus::done};
    for (const auto& m : metrics) {
      if (std::isfinite(m.value)) obs.metrics[m.name] = m.value;
    }
    known[canonical] = {obs.metrics, obs.ok};
    // The live line: progress, this configuration's objectives, ETA, front size.
    const StatusCounts counts = db.counts(study);
    const double per_eval = eval_seconds / static_cast<double>(evaluated);
    const double eta = per_eval * static_cast<double>(std::max<int64_t>(0, budget - counts.finished()));
    std::string values;
    for (const auto& o : objectives) {
      values += fmt::format("{}={} ", o.metric, obs.metrics.count(o.metric) ? short_number(obs.metrics[o.metric]) : "-");
    }
    fmt::print("[{:>4}/{}] {:>7.2f} s  {}{}  front {}  ETA {}  {}\n", counts.finished(), budget, wall, values,
               status == EvalStatus::done ? "" : fmt::format("[{}{}] ", status_name(status), error.empty() ? "" : ": " + error),
               front_size(), clock_text(eta), canonical.empty() ? "(base model)" : canonical);
    std::fflush(stdout);
    return obs;
  };

  // What this worker waits for, and when it last said so (a line when a wait begins, then one a
  // minute): never a silent wait.
  std::map<std::string, std::chrono::steady_clock::time_point> wait_noted;
  auto note_wait = [&](const std::string& key, const std::string& line) {
    const auto now = std::chrono::steady_clock::now();
    auto it = wait_noted.find(key);
    if (it != wait_noted.end() && now - it->second < std::chrono::seconds(60)) return;
    wait_noted[key] = now;
    fmt::print("{}\n", line);
    std::fflush(stdout);
  };
  auto describe_claim = [&](const ClaimInfo& c) {
    const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    return fmt::format("claimed by {} {:.0f} s ago, last heartbeat {:.0f} s ago; taken over after {:g} s without one",
                       c.worker, now - c.claimed_at, now - c.heartbeat_at, stale_after);
  };

  try {
    while (!finished && g_signal.load() == 0) {
      if (pending.empty()) {
        pending = strategy->ask(std::max<int64_t>(params.population, 16));
        if (pending.empty()) {
          finished = true;
          break;
        }
      }
      std::vector<Observation> told;
      std::vector<Point> still;
      bool waiting_on_others = false;
      for (const auto& p : pending) {
        if (g_signal.load() != 0) {
          still.push_back(p);
          continue;
        }
        const Config config = to_config(p);
        const std::string canonical = encode_config(config, base.config);
        if (auto it = known.find(canonical); it != known.end()) {
          told.push_back({p, it->second.metrics, it->second.ok});
          continue;
        }
        // The budget counts finished evaluations. Claims of live workers hold the rest of it:
        // wait for them; claims of dead workers (stale) are taken over below.
        const StatusCounts counts = db.counts(study);
        if (counts.finished() >= budget) {
          budget_reached = true;
          still.push_back(p);
          continue;
        }
        const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        const auto claims = db.claims(study);
        const ClaimInfo* held = nullptr;
        int64_t live = 0;
        for (const auto& c : claims) {
          if (claim_is_stale(c, now, stale_after)) continue;
          ++live;
          if (c.config == canonical) held = &c;
        }
        if (!held && counts.finished() + live >= budget) {
          waiting_on_others = true;
          note_wait("budget", fmt::format("sweep: {} of {} evaluations finished and {} in flight by other workers: "
                                          "waiting for them", counts.finished(), budget, live));
          still.push_back(p);
          continue;
        }
        std::optional<int64_t> claim;
        if (!held) claim = db.claim(study, model_id, canonical, worker, stale_after, budget);
        if (!claim) {  // finished meanwhile, or another worker has it
          waiting_on_others = true;
          if (held) {
            note_wait(canonical, fmt::format("sweep: waiting for {} ({})", canonical.empty() ? "(base model)" : canonical,
                                             describe_claim(*held)));
          }
          still.push_back(p);
          continue;
        }
        wait_noted.erase(canonical);
        try {
          if (auto obs = evaluate(p, config, canonical, *claim)) {
            told.push_back(std::move(*obs));
          } else {
            waiting_on_others = true;  // another worker has it now
            still.push_back(p);
          }
        } catch (const Interrupted&) {
          try_release(*claim);
          still.push_back(p);
        }
      }
      pending = std::move(still);
      if (!told.empty()) {
        strategy->tell(told);
        db.save_strategy_state(study, strategy->state());
        continue;
      }
      if (budget_reached) break;
      if (waiting_on_others) {
        // Another worker evaluates what the strategy needs next: wait for its result.
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        refresh_known();
      }
    }
  } catch (const Interrupted&) {
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);

  const StatusCounts counts = db.counts(study);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  if (g_signal.load() != 0) {
    fmt::print("interrupted (signal {}): {} configurations evaluated in this run, {} in the study; rerun to continue\n",
               g_signal.load(), evaluated, counts.finished());
    exit_code = 128 + g_signal.load();
  } else {
    fmt::print("{}: {} configurations evaluated in this run, {} in the study ({} done, {} failed, {} nan{}); Pareto front {}\n",
               finished ? "strategy finished" : "budget reached", evaluated, counts.finished(), counts.done, counts.failed,
               counts.nan, counts.pruned > 0 ? fmt::format(", {} pruned", counts.pruned) : "", front_size());
    fmt::print("time: {:.2f} s wall, {:.2f} s in the evaluators, {:.2f} s decomposing, {:.2f} s sweep overhead ({:.2f} %)\n",
               wall, model_seconds, eval_seconds - model_seconds, wall - eval_seconds,
               wall > 0 ? 100.0 * (wall - eval_seconds) / wall : 0.0);
  }
  std::fflush(stdout);  // the summary is out before the connections close
  return exit_code;
}

}  // namespace rankscope::cli
