// The results store of design-space sweeps: every (configuration, metrics) pair of every study,
// with the protocols that produced the numbers. Two implementations share one interface, one
// schema and one claim protocol (docs/database.md): ResultsDb, a SQLite file shared by the
// workers of one host (db/results_db.hpp), and PgStore, a PostgreSQL server shared by workers on
// any number of hosts (db/pg_store.hpp). A store object is one connection: use it from one thread
// at a time, and never across fork() (open one per process).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace rankscope {

// PRAGMA application_id of every results database ("RSCP").
inline constexpr int32_t kResultsDbApplicationId = 0x52534350;

// pruned: stopped early as hopeless (early stopping); its metrics are partial, computed on a prefix
// of the data (each metric's n says how much of it), so Pareto queries leave it out unless asked.
enum class EvalStatus { claimed, done, failed, nan, pruned };
std::string_view status_name(EvalStatus status);  // "claimed", "done", "failed", "nan", "pruned"
// Inverse of status_name; throws Error naming the token otherwise.
EvalStatus parse_status(std::string_view name);
// done, failed, nan and pruned are final: such a configuration is never evaluated again in its
// study, and it counts against the study's budget.
inline bool is_finished(EvalStatus status) { return status != EvalStatus::claimed; }

// "hostname:pid" of this process: the worker id recorded with every claim.
std::string worker_id();
// True when `worker` ("host:pid") names a process on this host that no longer exists: its
// claims can be taken over at once. False for other hosts (nothing can be known of them) and
// for live processes.
bool worker_is_gone(std::string_view worker);
// 32 hex digits: XXH3-128 of the canonical configuration string (configurations.hash).
std::string config_hash(std::string_view canonical);

struct ModelInfo {
  std::string hash;          // model_content_hash(): the identity of the weights
  std::string path;          // where it was last seen
  std::string architecture;  // "llama", "bert", ...
  int64_t n_params = 0;
};

// One metric of one evaluation. NaN value/stderr_ are stored as NULL and read back as NaN.
struct MetricValue {
  std::string name;  // "task.metric", e.g. "tinystories.ppl", "size.params"
  double value = std::numeric_limits<double>::quiet_NaN();
  double stderr_ = std::numeric_limits<double>::quiet_NaN();
  int64_t n = 0;              // examples (or tokens) behind it
  std::string status = "ok";  // "ok" or "nan"
  nlohmann::json protocol;    // how it was measured; null when none (stored deduplicated)
};

struct StatusCounts {
  int64_t claimed = 0, done = 0, failed = 0, nan = 0;
  int64_t pruned = 0;
  int64_t finished() const { return done + failed + nan + pruned; }
  int64_t total() const { return claimed + finished(); }
};

struct StudyInfo {
  int64_t id = 0;
  std::string name;
  double created_at = 0;  // Unix seconds
  nlohmann::json settings;
  StatusCounts counts;
};

// Chosen metrics of every finished (done, failed, nan or pruned) evaluation of a study, ascending
// by id: the input of Pareto queries, which keep the rows they want by `statuses`. rows[i][j] is
// metrics[j] of evaluation_ids[i]; NaN where the value is NULL or the evaluation lacks that metric.
struct MetricRows {
  std::vector<std::string> metrics;
  std::vector<int64_t> evaluation_ids;
  std::vector<std::string> configs;  // canonical configuration strings
  std::vector<EvalStatus> statuses;
  std::vector<std::vector<double>> rows;
};

// Everything stored about one evaluation (export). Times are Unix seconds, NaN where NULL.
struct EvaluationRecord {
  int64_t id = 0;
  std::string config, config_hash, model_hash;
  EvalStatus status = EvalStatus::claimed;
  std::string worker, host, error;
  double claimed_at = 0, heartbeat_at = 0;
  double finished_at = std::numeric_limits<double>::quiet_NaN();
  double wall_s = std::numeric_limits<double>::quiet_NaN();
  std::vector<MetricValue> metrics;  // sorted by name
};

// A live claim: a configuration a worker is evaluating (or was, until it died).
struct ClaimInfo {
  int64_t id = 0;  // the evaluation's id
  std::string config, worker;
  double claimed_at = 0, heartbeat_at = 0;  // Unix seconds, the claimant's clock
};

// Whether a claim may be taken over at time `now`: its heartbeat is older than stale_after
// seconds, or more than stale_after seconds in the future (a clock or a file that cannot be
// trusted: waiting for it would never end), or its worker is a process of this host that is gone.
bool claim_is_stale(const ClaimInfo& claim, double now, double stale_after_seconds);

// A finished evaluation recorded without a claim (imports, benchmarks): see add_evaluations.
struct NewEvaluation {
  std::string config;  // canonical string
  EvalStatus status = EvalStatus::done;
  std::vector<MetricValue> metrics;
  double wall_s = std::numeric_limits<double>::quiet_NaN();
  std::string error;
};

// Shared by the stores: Unix seconds now; the host part of a "host:pid" worker id (the whole id
// when it has no ':'); whether a metric is usable by a search (status ok and not infinite: an
// infinite perplexity is stored with status nan); and the status an evaluation is stored with
// (`done` becomes `nan` when a metric is not usable; `pruned`, `failed` and `nan` stay as given).
double unix_now();
std::string worker_host(std::string_view worker);
bool metric_usable(const MetricValue& m);
EvalStatus settled_status(EvalStatus status, const std::vector<MetricValue>& metrics);

class ResultsStore {
 public:
  virtual ~ResultsStore() = default;
  // What messages name: the SQLite file, or the PostgreSQL URI without its password.
  virtual std::string display() const = 0;

  // --- studies and models ---------------------------------------------------------------------
  // The id of study `name`, created with `settings` when absent. An existing study keeps its
  // settings: `check_existing`, when given, is called with them inside the same write
  // transaction (throw Error to refuse), so the check and the creation are atomic.
  virtual int64_t open_study(const std::string& name, const nlohmann::json& settings,
                     const std::function<void(const nlohmann::json& existing)>& check_existing = {}) = 0;
  // Deletes a study and everything recorded for it (evaluations, metrics, strategy state);
  // false when there is no such study. Configurations, models and protocols shared with other
  // studies stay.
  virtual bool delete_study(const std::string& name) = 0;
  // The study's setting `key`: the stored value, or, for a study created before the key existed,
  // `value`, written into its settings in the same transaction (the first worker to ask wins).
  virtual nlohmann::json adopt_study_setting(int64_t study, const std::string& key, const nlohmann::json& value) = 0;
  // Renames a study; Error when `from` does not exist or `to` is taken.
  virtual void rename_study(const std::string& from, const std::string& to) = 0;
  virtual std::optional<StudyInfo> find_study(const std::string& name) const = 0;
  virtual std::vector<StudyInfo> studies() const = 0;  // by name, with counts per status
  // The id of the model with this content hash, inserted when new (path updated when known).
  virtual int64_t add_model(const ModelInfo& model) = 0;
  // Every model recorded, in the order they were added.
  virtual std::vector<ModelInfo> models() const = 0;

  // --- the claim protocol ---------------------------------------------------------------------
  // Atomically claims (study, config) for `worker` ("host:pid", see worker_id(); the part before
  // the last ':' is recorded as the host): returns the new evaluation's id, or nullopt
  // when the configuration is finished in this study or claimed and not stale (see
  // claim_is_stale). A stale claim is taken over: it is deleted and a new evaluation (a new,
  // never reused id) is returned, so the old worker's id no longer names a claim.
  // With budget >= 0, also nullopt when the study's finished evaluations plus the live claims of
  // its other configurations reach `budget` (checked in the same transaction).
  virtual std::optional<int64_t> claim(int64_t study, int64_t model, std::string_view config, std::string_view worker,
                               double stale_after_seconds, int64_t budget = -1) = 0;
  // Refreshes a claim's heartbeat; false when `evaluation` is no longer a claim (taken over,
  // released or finished): the worker should abandon it.
  virtual bool heartbeat(int64_t evaluation) = 0;
  // Deletes a claim (Ctrl-C) so another worker can take the configuration at once; false when
  // `evaluation` is no longer a claim.
  virtual bool release(int64_t evaluation) = 0;
  // Finishes a claim: status (done, failed, nan or pruned), metrics, wall time and error text in
  // one transaction. A metric whose status is not "ok" or whose value is infinite is stored with
  // status "nan", and turns a `done` evaluation into `nan` (a `pruned` one stays pruned;
  // add_evaluations alike). Returns false and writes nothing when `evaluation` is no longer a claim (it was
  // taken over or released): a late result is ignored, never duplicated. Throws Error for a
  // status of claimed or a metric named twice.
  virtual bool complete(int64_t evaluation, const std::vector<MetricValue>& metrics, EvalStatus status, double wall_s,
                const std::string& error = "") = 0;

  // Records finished evaluations without claims, all in one transaction; a configuration already
  // present in the study (in any status) is skipped. Returns how many were inserted. An empty
  // worker records worker_id().
  virtual int64_t add_evaluations(int64_t study, int64_t model, const std::vector<NewEvaluation>& evaluations,
                          std::string_view worker = "") = 0;

  // --- reads ----------------------------------------------------------------------------------
  // The status of (study, config), nullopt when it was never claimed (or its claim released).
  virtual std::optional<EvalStatus> status_of(int64_t study, std::string_view config) const = 0;
  virtual StatusCounts counts(int64_t study) const = 0;
  // Every metric name recorded in the database (any study), sorted.
  virtual std::vector<std::string> metric_names() const = 0;
  // The study's claims (status claimed), ascending by id.
  virtual std::vector<ClaimInfo> claims(int64_t study) const = 0;
  // The Pareto input (see MetricRows): one index scan of the study's evaluations plus one ordered
  // primary-key scan per metric, merge-joined; about 0.5 s for 1,000,000 evaluations x 2 metrics.
  virtual MetricRows metric_rows(int64_t study, const std::vector<std::string>& metrics) const = 0;
  // Calls visit for every evaluation of the study (claims included), ascending by id, inside one
  // read snapshot. visit must not use this ResultsDb.
  virtual void for_each_evaluation(int64_t study, const std::function<void(const EvaluationRecord&)>& visit) const = 0;

  // --- strategy state -------------------------------------------------------------------------
  virtual void save_strategy_state(int64_t study, const nlohmann::json& state) = 0;
  virtual std::optional<nlohmann::json> load_strategy_state(int64_t study) const = 0;

  // The store's own consistency check (SQLite: PRAGMA integrity_check and foreign_key_check;
  // PostgreSQL: the invariants of the schema): "ok", or the problems found, one per line.
  virtual std::string integrity_check() const = 0;

};

}  // namespace rankscope
