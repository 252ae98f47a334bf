// The PostgreSQL results store: the schema, claim protocol and semantics of the SQLite store
// (db/results_db.hpp, docs/database.md) on a server that workers on any number of hosts reach.
//
// Every method is one transaction. Claims, completions and every write that reads before it
// writes take a transaction-scoped advisory lock of their study, so two workers can never both
// claim one configuration or both take a study's last budget slot (the unique (study,
// configuration) pair enforces the first as well). A server that is away (TransientError from the
// connection) is waited for: one line on stderr, then reconnection with exponential backoff up to
// Options::server_wait_seconds, and the transaction runs again from its start.
#pragma once

#include <memory>
#include <string>

#include "db/results_store.hpp"

namespace rankscope {

class PgConnection;

class PgStore final : public ResultsStore {
 public:
  struct Options {
    // How long a transaction waits for a server that is away before giving up (an Error).
    double server_wait_seconds = 3600;
    // Create the schema when the database has none. Read-only commands pass false.
    bool create = true;
  };

  // Connects to `url` (postgresql://USER@HOST:PORT/DBNAME; see db/pg_connection.hpp) and creates
  // or checks the schema. Error when the database holds a newer rankscope schema or, with create
  // false, none.
  explicit PgStore(const std::string& url);
  PgStore(const std::string& url, const Options& options);
  ~PgStore() override;
  PgStore(const PgStore&) = delete;
  PgStore& operator=(const PgStore&) = delete;

  static int schema_version();

  std::string display() const override;

  int64_t open_study(const std::string& name, const nlohmann::json& settings,
                     const std::function<void(const nlohmann::json& existing)>& check_existing = {}) override;
  bool delete_study(const std::string& name) override;
  nlohmann::json adopt_study_setting(int64_t study, const std::string& key, const nlohmann::json& value) override;
  void rename_study(const std::string& from, const std::string& to) override;
  std::optional<StudyInfo> find_study(const std::string& name) const override;
  std::vector<StudyInfo> studies() const override;
  int64_t add_model(const ModelInfo& model) override;
  std::vector<ModelInfo> models() const override;

  std::optional<int64_t> claim(int64_t study, int64_t model, std::string_view config, std::string_view worker,
                               double stale_after_seconds, int64_t budget = -1) override;
  bool heartbeat(int64_t evaluation) override;
  bool release(int64_t evaluation) override;
  bool complete(int64_t evaluation, const std::vector<MetricValue>& metrics, EvalStatus status, double wall_s,
                const std::string& error = "") override;
  int64_t add_evaluations(int64_t study, int64_t model, const std::vector<NewEvaluation>& evaluations,
                          std::string_view worker = "") override;

  std::optional<EvalStatus> status_of(int64_t study, std::string_view config) const override;
  StatusCounts counts(int64_t study) const override;
  std::vector<std::string> metric_names() const override;
  std::vector<ClaimInfo> claims(int64_t study) const override;
  MetricRows metric_rows(int64_t study, const std::vector<std::string>& metrics) const override;
  void for_each_evaluation(int64_t study, const std::function<void(const EvaluationRecord&)>& visit) const override;

  void save_strategy_state(int64_t study, const nlohmann::json& state) override;
  std::optional<nlohmann::json> load_strategy_state(int64_t study) const override;
  std::string integrity_check() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rankscope
