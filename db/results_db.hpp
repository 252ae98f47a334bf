// The SQLite results store: every study in one file shared by any number of worker processes of
// one host. Schema, versioning, the claim protocol and crash guarantees: docs/database.md.
//
// Writes are single transactions (BEGIN IMMEDIATE), retried with exponential backoff while another
// process holds the lock, so concurrent workers never see "database is locked"; an Error is
// thrown only when the lock stays held past Options::busy_timeout_seconds. Every Error is one
// line naming the database file.
#pragma once

#include <filesystem>
#include <memory>

#include "db/results_store.hpp"

namespace rankscope {

namespace detail {
struct ResultsDbImpl;  // results_db.cpp
}

class ResultsDb final : public ResultsStore {
 public:
  struct Options {
    // How long one transaction keeps retrying while other processes hold the lock.
    double busy_timeout_seconds = 300;
    // The schema steps (migrations[k] takes version k to k+1); nullptr: the built-in list.
    // Only tests pass their own, to exercise upgrades.
    const std::vector<std::string>* migrations = nullptr;
    // Create the file (and its schema) when it does not exist. Read-only commands pass false:
    // a mistyped path is then an error, not a new empty database.
    bool create = true;
  };

  // Opens `path`, creating it (and its schema) when it does not exist or is empty, and migrating
  // an older schema in one transaction. Throws Error, leaving the file byte-for-byte untouched,
  // when it is not SQLite, is an SQLite database of another application, or has a newer schema.
  explicit ResultsDb(const std::filesystem::path& path);
  ResultsDb(const std::filesystem::path& path, const Options& options);
  ~ResultsDb();
  ResultsDb(ResultsDb&&) noexcept;
  ResultsDb& operator=(ResultsDb&&) noexcept;
  ResultsDb(const ResultsDb&) = delete;
  ResultsDb& operator=(const ResultsDb&) = delete;

  const std::filesystem::path& path() const;
  static int schema_version();  // the version this build writes (PRAGMA user_version)

  std::string display() const override { return path().string(); }

  // --- studies and models ---------------------------------------------------------------------
  // The id of study `name`, created with `settings` when absent. An existing study keeps its
  // settings: `check_existing`, when given, is called with them inside the same write
  // transaction (throw Error to refuse), so the check and the creation are atomic.
  int64_t open_study(const std::string& name, const nlohmann::json& settings,
                     const std::function<void(const nlohmann::json& existing)>& check_existing = {}) override;
  // Deletes a study and everything recorded for it (evaluations, metrics, strategy state);
  // false when there is no such study. Configurations, models and protocols shared with other
  // studies stay.
  bool delete_study(const std::string& name) override;
  // The study's setting `key`: the stored value, or, for a study created before the key existed,
  // `value`, written into its settings in the same transaction (the first worker to ask wins).
  nlohmann::json adopt_study_setting(int64_t study, const std::string& key, const nlohmann::json& value) override;
  // Renames a study; Error when `from` does not exist or `to` is taken.
  void rename_study(const std::string& from, const std::string& to) override;
  std::optional<StudyInfo> find_study(const std::string& name) const override;
  std::vector<StudyInfo> studies() const override;  // by name, with counts per status
  // The id of the model with this content hash, inserted when new (path updated when known).
  int64_t add_model(const ModelInfo& model) override;
  std::vector<ModelInfo> models() const override;

  // --- the claim protocol ---------------------------------------------------------------------
  // Atomically claims (study, config) for `worker` ("host:pid", see worker_id(); the part before
  // the last ':' is recorded as the host): returns the new evaluation's id, or nullopt
  // when the configuration is finished in this study or claimed and not stale (see
  // claim_is_stale). A stale claim is taken over: it is deleted and a new evaluation (a new,
  // never reused id) is returned, so the old worker's id no longer names a claim.
  // With budget >= 0, also nullopt when the study's finished evaluations plus the live claims of
  // its other configurations reach `budget` (checked in the same transaction).
  std::optional<int64_t> claim(int64_t study, int64_t model, std::string_view config, std::string_view worker,
                               double stale_after_seconds, int64_t budget = -1) override;
  // Refreshes a claim's heartbeat; false when `evaluation` is no longer a claim (taken over,
  // released or finished): the worker should abandon it.
  bool heartbeat(int64_t evaluation) override;
  // Deletes a claim (Ctrl-C) so another worker can take the configuration at once; false when
  // `evaluation` is no longer a claim.
  bool release(int64_t evaluation) override;
  // Finishes a claim: status (done, failed, nan or pruned), metrics, wall time and error text in
  // one transaction. A metric whose status is not "ok" or whose value is infinite is stored with
  // status "nan", and turns a `done` evaluation into `nan` (a `pruned` one stays pruned;
  // add_evaluations alike). Returns false and writes nothing when `evaluation` is no longer a claim (it was
  // taken over or released): a late result is ignored, never duplicated. Throws Error for a
  // status of claimed or a metric named twice.
  bool complete(int64_t evaluation, const std::vector<MetricValue>& metrics, EvalStatus status, double wall_s,
                const std::string& error = "") override;

  // Records finished evaluations without claims, all in one transaction; a configuration already
  // present in the study (in any status) is skipped. Returns how many were inserted. An empty
  // worker records worker_id().
  int64_t add_evaluations(int64_t study, int64_t model, const std::vector<NewEvaluation>& evaluations,
                          std::string_view worker = "") override;

  // --- reads ----------------------------------------------------------------------------------
  // The status of (study, config), nullopt when it was never claimed (or its claim released).
  std::optional<EvalStatus> status_of(int64_t study, std::string_view config) const override;
  StatusCounts counts(int64_t study) const override;
  // Every metric name recorded in the database (any study), sorted.
  std::vector<std::string> metric_names() const override;
  // The study's claims (status claimed), ascending by id.
  std::vector<ClaimInfo> claims(int64_t study) const override;
  // The Pareto input (see MetricRows): one index scan of the study's evaluations plus one ordered
  // primary-key scan per metric, merge-joined; about 0.5 s for 1,000,000 evaluations x 2 metrics.
  MetricRows metric_rows(int64_t study, const std::vector<std::string>& metrics) const override;
  // Calls visit for every evaluation of the study (claims included), ascending by id, inside one
  // read snapshot. visit must not use this ResultsDb.
  void for_each_evaluation(int64_t study, const std::function<void(const EvaluationRecord&)>& visit) const override;

  // --- strategy state -------------------------------------------------------------------------
  void save_strategy_state(int64_t study, const nlohmann::json& state) override;
  std::optional<nlohmann::json> load_strategy_state(int64_t study) const override;

  // PRAGMA integrity_check (plus foreign_key_check): "ok", or the problems found, one per line.
  std::string integrity_check() const override;

 private:
  std::unique_ptr<detail::ResultsDbImpl> impl_;  // null only in a moved-from object
};

}  // namespace rankscope
