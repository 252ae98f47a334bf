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
#include <chrono>
#include <cmath>
#include <csignal>
#include <map>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/decompose.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/model_hash.hpp"
#include "db/results_db.hpp"
#include "evaluators/calibration.hpp"
#include "search/pareto.hpp"
#include "search/strategy.hpp"

namespace rankscope::cli {

namespace {

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) { g_signal.store(sig); }

struct Interrupted {};

// Refreshes the heartbeat of the claim being evaluated from its own connection, so a long
// evaluation (a 7B decomposition, MMLU) is never mistaken for a dead worker.
class Heartbeat {
 public:
  Heartbeat(std::filesystem::path db, int64_t evaluation, double every_s)
      : thread_([this, db = std::move(db), evaluation, every_s] {
          std::unique_ptr<ResultsDb> conn;
          std::unique_lock lock(mutex_);
          while (!stop_) {
            if (cv_.wait_for(lock, std::chrono::duration<double>(every_s), [this] { return stop_; })) break;
            try {
              if (!conn) conn = std::make_unique<ResultsDb>(db);
              conn->heartbeat(evaluation);
            } catch (const std::exception&) {
              // The next beat retries; the claim only goes stale after --stale-after seconds.
            }
          }
        }) {}
  ~Heartbeat() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

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

// The settings that define a study: a rerun must agree on them (the budget may grow).
nlohmann::json study_settings(const Params& p, const std::string& model_hash, const std::vector<std::string>& list) {
  nlohmann::json s = {{"model_hash", model_hash},   {"strategy", p.strategy},   {"seed", p.seed},
                      {"objectives", p.objectives}, {"constraints", p.constraints}, {"tasks", p.tasks},
                      {"limit", p.limit},           {"num_fewshot", p.num_fewshot}, {"ctx", p.ctx},
                      {"ppl_protocol", p.ppl_protocol}, {"bos", p.bos},          {"text", p.text}};
  if (p.strategy == "list") {
    s["configs"] = list;
  } else {
    s["space"] = {{"kind", p.space}, {"ranks", p.ranks}, {"choices", p.choices}, {"group_size", p.group_size},
                  {"method", p.method}};
  }
  if (p.strategy == "evolutionary") {
    s["evolutionary"] = {{"population", p.population}, {"generations", p.generations},
                         {"mutation_rate", p.mutation_rate}, {"crossover_rate", p.crossover_rate}};
  }
  if (p.strategy == "greedy") s["target"] = p.target;
  if (!p.calib.empty()) {  // only then: studies created before calibration existed keep their settings
    s["calibration"] = {{"calib", p.calib}, {"samples", p.calib_samples}, {"ctx", p.calib_ctx},
                        {"seed", p.calib_seed}, {"asvd_alpha", p.asvd_alpha}};
  }
  return s;
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
  const Model base = load_model(params.model, {.weights = !size_only});
  if (!size_only && !base.has_weights) {
    fail("{}: no weights (shapes-only config.json); a sweep on it can only run the size task", params.model);
  }
  // The factor cache lives beside the database unless --cache-dir says otherwise.
  std::filesystem::path cache_dir = params.cache_dir;
  if (cache_dir == Params{}.cache_dir) {
    cache_dir = std::filesystem::absolute(params.db).parent_path() / "rankscope-cache";
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

  ResultsDb db(params.db);
  const int64_t model_id = db.add_model({model_hash, params.model, base.config.architecture, base.n_params()});
  const nlohmann::json settings = study_settings(params, model_hash, list_text);
  if (const auto existing = db.find_study(study_name)) {
    for (const auto& [key, value] : settings.items()) {
      if (existing->settings.value(key, nlohmann::json()) != value) {
        fail("{}: study '{}' was created with {} = {}, this run has {} (use another --study)", params.db, study_name, key,
             existing->settings.value(key, nlohmann::json()).dump(), value.dump());
      }
    }
  }
  const int64_t study = db.open_study(study_name, settings);
  auto strategy = make_strategy(params.strategy, radices, options);

  // Metrics the strategy needs, and what the study already holds.
  std::vector<std::string> needed;
  for (const auto& o : objectives) needed.push_back(o.metric);
  for (const auto& c : constraints) needed.push_back(c.metric);
  for (const auto& [m, v] : options.target) needed.push_back(m);
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
  g_signal.store(0);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const StatusCounts at_start = db.counts(study);
  fmt::print("study {} in {}: {} of {} configurations evaluated; strategy {} (seed {}), {} tasks; worker {}\n", study_name,
             params.db, at_start.finished(), budget, params.strategy, params.seed, request.tasks.size(), worker);
  std::fflush(stdout);

  int64_t evaluated = 0;
  double eval_seconds = 0.0;       // wall time of whole evaluations (decomposition included)
  double model_seconds = 0.0;      // of which running the evaluators (the model itself)
  const auto run_start = std::chrono::steady_clock::now();
  std::vector<Point> pending;  // asked, not yet told
  bool finished = false, budget_reached = false;
  int exit_code = 0;
  std::vector<std::string> metric_order;

  auto evaluate = [&](const Point& p, const Config& config, const std::string& canonical, int64_t claim) -> Observation {
    Heartbeat heartbeat(params.db, claim, std::min(30.0, params.stale_after / 4));
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<MetricValue> metrics;
    EvalStatus status = EvalStatus::done;
    std::string error;
    std::map<std::string, std::unique_ptr<Progress>> bars;
    const ProgressFn progress = [&](const std::string& label, int64_t done, int64_t total) {
      if (g_signal.load() != 0) throw Interrupted{};
      auto& bar = bars[label];
      if (!bar) bar = std::make_unique<Progress>(label);
      bar->update(done, total);
      if (done >= total) bar->finish();
    };
    try {
      std::unique_ptr<Model> decomposed;
      if (!config.is_base() && !size_only) {
        decomposed = std::make_unique<Model>(decompose_model(base, config, factor_cache, nullptr, activation));
      }
      if (g_signal.load() != 0) throw Interrupted{};
      const auto t_model = std::chrono::steady_clock::now();
      const auto reports = evaluator.run(decomposed ? *decomposed : base, config, progress);
      model_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_model).count();
      for (const auto& r : reports) {
        for (const auto& m : r.metrics) {
          nlohmann::json protocol = r.protocol;
          if (activation.calibration && needs_calibration(config)) {
            protocol["calibration"] = activation.calibration->info;
            protocol["asvd_alpha"] = activation.asvd_alpha;
          }
          metrics.push_back({m.name(), m.value, m.stderr_, m.n, m.status, protocol});
          if (m.status != "ok") status = EvalStatus::nan;
        }
      }
    } catch (const Error& e) {
      status = EvalStatus::failed;
      error = e.what();
      metrics.clear();
    }
    bars.clear();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!db.complete(claim, metrics, status, wall, error)) {
      fmt::print(stderr, "sweep: the claim on {} was taken over by another worker; its result is kept\n", canonical);
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
    const double eta = per_eval * static_cast<double>(std::max<int64_t>(0, budget - counts.total()));
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
        if (db.counts(study).total() >= budget) {
          budget_reached = true;
          still.push_back(p);
          continue;
        }
        const auto claim = db.claim(study, model_id, canonical, worker, params.stale_after);
        if (!claim) {  // finished meanwhile, or another worker has it
          waiting_on_others = true;
          still.push_back(p);
          continue;
        }
        try {
          told.push_back(evaluate(p, config, canonical, *claim));
        } catch (const Interrupted&) {
          db.release(*claim);
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
    fmt::print("{}: {} configurations evaluated in this run, {} in the study ({} done, {} failed, {} nan); Pareto front {}\n",
               finished ? "strategy finished" : "budget reached", evaluated, counts.finished(), counts.done, counts.failed,
               counts.nan, front_size());
    fmt::print("time: {:.2f} s wall, {:.2f} s in the evaluators, {:.2f} s decomposing, {:.2f} s sweep overhead ({:.2f} %)\n",
               wall, model_seconds, eval_seconds - model_seconds, wall - eval_seconds,
               wall > 0 ? 100.0 * (wall - eval_seconds) / wall : 0.0);
  }
  return exit_code;
}

}  // namespace rankscope::cli
