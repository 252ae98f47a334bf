#include "db/pg_store.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <set>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "db/pg_connection.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// The advisory lock keys: one for schema changes, one per study (high 32 bits "RSCP").
constexpr int64_t kSchemaLock = int64_t{0x52534350} << 32;

// migrations[k] takes schema version k to k+1 (0: no schema). Append; never edit a released one.
const std::vector<std::string>& migrations() {
  static const std::vector<std::string> steps = {
      R"sql(
CREATE TABLE studies (
  id BIGSERIAL PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at DOUBLE PRECISION NOT NULL,
  settings TEXT NOT NULL
);
CREATE TABLE models (
  id BIGSERIAL PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  path TEXT NOT NULL,
  architecture TEXT NOT NULL,
  n_params BIGINT NOT NULL
);
CREATE TABLE configurations (
  id BIGSERIAL PRIMARY KEY,
  canonical TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE
);
CREATE TABLE evaluations (
  id BIGSERIAL PRIMARY KEY,
  study_id BIGINT NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  configuration_id BIGINT NOT NULL REFERENCES configurations(id),
  model_id BIGINT NOT NULL REFERENCES models(id),
  status TEXT NOT NULL CHECK (status IN ('claimed', 'done', 'failed', 'nan')),
  worker TEXT NOT NULL,
  host TEXT NOT NULL,
  claimed_at DOUBLE PRECISION NOT NULL,
  heartbeat_at DOUBLE PRECISION NOT NULL,
  finished_at DOUBLE PRECISION,
  wall_s DOUBLE PRECISION,
  error TEXT,
  UNIQUE (study_id, configuration_id)
);
CREATE INDEX evaluations_by_status ON evaluations(study_id, status, configuration_id);
CREATE TABLE metric_names (
  id BIGSERIAL PRIMARY KEY,
  name TEXT NOT NULL UNIQUE
);
CREATE TABLE protocols (
  id BIGSERIAL PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  json TEXT NOT NULL
);
CREATE TABLE metrics (
  metric_id BIGINT NOT NULL REFERENCES metric_names(id),
  evaluation_id BIGINT NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
  value DOUBLE PRECISION,
  stderr DOUBLE PRECISION,
  n BIGINT NOT NULL,
  status TEXT NOT NULL,
  protocol_id BIGINT REFERENCES protocols(id),
  PRIMARY KEY (metric_id, evaluation_id)
);
CREATE INDEX metrics_by_evaluation ON metrics(evaluation_id);
CREATE TABLE strategy_state (
  study_id BIGINT PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
  state TEXT NOT NULL,
  updated_at DOUBLE PRECISION NOT NULL
);
)sql",
      // 1 -> 2: evaluation status 'pruned' (early stopping). The column's CHECK of step 0 got
      // PostgreSQL's default name <table>_<column>_check; it is replaced under the same name (adding
      // it checks every row, under the table's lock, inside the migration's transaction).
      R"sql(
ALTER TABLE evaluations DROP CONSTRAINT evaluations_status_check;
ALTER TABLE evaluations ADD CONSTRAINT evaluations_status_check
  CHECK (status IN ('claimed', 'done', 'failed', 'nan', 'pruned'));
)sql",
  };
  return steps;
}

// Parameters in libpq's text form.
PgParam p(int64_t v) { return std::to_string(v); }
PgParam p(std::string_view v) { return std::string(v); }
PgParam p(const std::string& v) { return v; }
// NaN is stored as NULL (read back as NaN), as in the SQLite store.
PgParam p(double v) {
  if (std::isnan(v)) return std::nullopt;
  if (std::isinf(v)) return std::string(v > 0 ? "Infinity" : "-Infinity");
  return fmt::format("{}", v);  // the shortest text that reads back as the same double
}
PgParam text_or_null(const std::string& v) { return v.empty() ? std::nullopt : PgParam(v); }

int64_t i64(const PgResult& r, int64_t row, int64_t col) {
  const auto& v = r.get(row, col);
  return v ? std::stoll(*v) : 0;
}
double f64(const PgResult& r, int64_t row, int64_t col) {
  const auto& v = r.get(row, col);
  return v ? std::strtod(v->c_str(), nullptr) : kNaN;
}
std::string str(const PgResult& r, int64_t row, int64_t col) {
  const auto& v = r.get(row, col);
  return v ? *v : std::string();
}

// Errors a transaction meets when it races another one: run it again.
bool is_retryable(const Error& e) {
  const std::string_view m = e.what();
  return m.find("SQLSTATE 40001") != std::string_view::npos || m.find("SQLSTATE 40P01") != std::string_view::npos;
}

void add_count(StatusCounts& counts, const std::string& status, int64_t n) {
  switch (parse_status(status)) {
    case EvalStatus::claimed: counts.claimed += n; break;
    case EvalStatus::done: counts.done += n; break;
    case EvalStatus::failed: counts.failed += n; break;
    case EvalStatus::nan: counts.nan += n; break;
    case EvalStatus::pruned: counts.pruned += n; break;
  }
}

}  // namespace

struct PgStore::Impl {
  std::string url, display;
  Options options;
  std::unique_ptr<PgConnection> conn;
  // Metric names and protocols never change once stored: their ids, cached per connection's
  // lifetime of this store (filled only after the inserting transaction committed).
  std::unordered_map<std::string, int64_t> metric_ids, protocol_ids, pending_metric_ids, pending_protocol_ids;
  // Set while a transaction runs again after the answer to its COMMIT was lost (it may have been
  // committed): claim() and complete() then recognise their own earlier effect.
  bool commit_unknown = false;

  PgResult q(const std::string& sql, const std::vector<PgParam>& params = {}) { return conn->exec(sql, params); }

  nlohmann::json parse_json(const std::string& text, const std::string& what) const {
    try {
      return nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception&) {
      fail("{}: {} is not valid JSON", display, what);
    }
  }

  // Runs f in one transaction: again from its start when it raced another (serialization
  // failure, deadlock), and, while the server is away, after waiting for it.
  template <typename F>
  auto tx(F&& f, const char* begin = "BEGIN") -> decltype(f()) {
    using Result = decltype(f());
    const auto start = std::chrono::steady_clock::now();
    double delay = 0.1;
    bool waiting = false;
    commit_unknown = false;
    for (int races = 0;;) {
      bool commit_sent = false;
      try {
        if (!conn || !conn->ok()) conn = std::make_unique<PgConnection>(url);
        if (waiting) {
          std::fprintf(stderr, "rankscope: the PostgreSQL server is back (%s)\n", display.c_str());
          waiting = false;
        }
        pending_metric_ids.clear();
        pending_protocol_ids.clear();
        conn->exec(begin);
        if constexpr (std::is_void_v<Result>) {
          f();
          commit_sent = true;
          conn->exec("COMMIT");
          committed();
          return;
        } else {
          Result result = f();
          commit_sent = true;
          conn->exec("COMMIT");
          committed();
          return result;
        }
      } catch (const TransientError& e) {
        // The connection is not reused: its state (an open transaction?) is unknown.
        conn.reset();
        // A COMMIT whose answer was lost may have taken effect: the run that follows knows it.
        if (commit_sent) commit_unknown = true;
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (waited > options.server_wait_seconds) {
          fail("{}: the server stayed away for {:.0f} s: {}", display, waited, e.what());
        }
        if (!waiting) {
          std::fprintf(stderr, "rankscope: waiting for the PostgreSQL server: %s\n", e.what());
          waiting = true;
        }
        std::this_thread::sleep_for(std::chrono::duration<double>(delay));
        delay = std::min(delay * 2, 5.0);
      } catch (const Error& e) {
        rollback();
        if (is_retryable(e) && ++races < 50) continue;
        throw;
      } catch (...) {
        rollback();
        throw;
      }
    }
  }

  // Ids a committed transaction stored are known for good.
  void committed() {
    metric_ids.insert(pending_metric_ids.begin(), pending_metric_ids.end());
    protocol_ids.insert(pending_protocol_ids.begin(), pending_protocol_ids.end());
  }

  void rollback() {
    if (!conn || !conn->ok()) return;
    try {
      conn->exec("ROLLBACK");
    } catch (const Error&) {
      conn.reset();  // a connection in an unknown state is not reused
    }
  }

  void lock_study(int64_t study) { q("SELECT pg_advisory_xact_lock($1)", {p(kSchemaLock + 1 + study)}); }

  int64_t config_id(std::string_view canonical) {
    const std::string hash = config_hash(canonical);
    // One round trip: the configuration, or another one with its hash (a collision).
    auto found = q("SELECT id, canonical FROM configurations WHERE canonical = $1 OR hash = $2", {p(canonical), p(hash)});
    for (int64_t i = 0; i < found.rows(); ++i) {
      if (str(found, i, 1) == canonical) return i64(found, i, 0);
    }
    if (found.rows() > 0) fail("{}: configuration hash collision between '{}' and '{}'", display, canonical, str(found, 0, 1));
    auto r = q("INSERT INTO configurations (canonical, hash) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id",
               {p(canonical), p(hash)});
    if (r.rows() > 0) return i64(r, 0, 0);
    r = q("SELECT id FROM configurations WHERE canonical = $1", {p(canonical)});  // inserted by another worker
    if (r.rows() == 0) fail("{}: configuration '{}' could not be recorded", display, canonical);
    return i64(r, 0, 0);
  }

  // The id of `value` in table (name|hash) `column`, inserted (with `extra`) when new.
  int64_t intern(const std::string& select, const std::string& insert, const std::vector<PgParam>& key,
                 const std::vector<PgParam>& row) {
    if (auto r = q(select, key); r.rows() > 0) return i64(r, 0, 0);
    if (auto r = q(insert, row); r.rows() > 0) return i64(r, 0, 0);
    auto r = q(select, key);
    RS_ASSERT(r.rows() > 0);
    return i64(r, 0, 0);
  }

  void insert_metrics(int64_t evaluation, const std::vector<MetricValue>& metrics) {
    std::set<std::string_view> seen;
    for (const auto& m : metrics) {
      if (m.name.empty()) fail("{}: empty metric name for evaluation {}", display, evaluation);
      if (!seen.insert(m.name).second) fail("{}: metric '{}' given twice for evaluation {}", display, m.name, evaluation);
    }
    for (const auto& m : metrics) {
      int64_t mid = 0;
      if (auto it = metric_ids.find(m.name); it != metric_ids.end()) {
        mid = it->second;
      } else {
        mid = intern("SELECT id FROM metric_names WHERE name = $1",
                     "INSERT INTO metric_names (name) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id", {p(m.name)}, {p(m.name)});
        pending_metric_ids[m.name] = mid;
      }
      PgParam protocol;
      if (!m.protocol.is_null()) {
        const std::string text = m.protocol.dump();
        const std::string hash = config_hash(text);
        if (auto it = protocol_ids.find(hash); it != protocol_ids.end()) {
          protocol = p(it->second);
        } else {
          const int64_t pid = intern("SELECT id FROM protocols WHERE hash = $1",
                                     "INSERT INTO protocols (hash, json) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id",
                                     {p(hash)}, {p(hash), p(text)});
          pending_protocol_ids[hash] = pid;
          protocol = p(pid);
        }
      }
      q("INSERT INTO metrics (metric_id, evaluation_id, value, stderr, n, status, protocol_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        {p(mid), p(evaluation), p(m.value), p(m.stderr_), p(m.n), p(metric_usable(m) ? m.status : std::string("nan")),
         protocol});
    }
  }

  // Reads the schema version; only a missing or older schema is created or migrated (under a lock),
  // so read-only roles and standby servers can run the reading commands. A reader (create false)
  // reads an older schema as it is: every version from 1 on holds the tables and columns the reads
  // use (2 only allows one more status).
  void create_or_check_schema() {
    const auto& steps = migrations();
    const auto current = static_cast<int64_t>(steps.size());
    auto version_now = [&]() -> std::optional<int64_t> {
      if (q("SELECT to_regclass('rankscope_schema') IS NOT NULL").get(0, 0) != std::optional<std::string>("t")) return std::nullopt;
      auto r = q("SELECT version FROM rankscope_schema");
      if (r.rows() != 1) fail("{}: the rankscope_schema table does not hold one version row", display);
      return i64(r, 0, 0);
    };
    const auto seen = tx([&] { return version_now(); }, "BEGIN READ ONLY");
    if (seen && *seen > current) {
      fail("{}: results schema version {} is newer than this rankscope's {}; upgrade rankscope", display, *seen, current);
    }
    if (seen && *seen == current) return;
    if (!options.create) {
      if (!seen || *seen < 1) fail("{}: no rankscope results in this database", display);
      return;
    }
    // A session-level lock taken before the transaction begins: the transaction then starts after
    // another worker's schema commit and sees it (a lock taken inside it would leave the catalog
    // caches of its start, where the table was missing).
    if (!conn || !conn->ok()) conn = std::make_unique<PgConnection>(url);
    conn->exec("SELECT pg_advisory_lock($1)", {p(kSchemaLock)});
    struct Unlock {
      Impl& d;
      ~Unlock() {
        try {
          if (d.conn && d.conn->ok()) d.conn->exec("SELECT pg_advisory_unlock($1)", {p(kSchemaLock)});
        } catch (const Error&) {
          d.conn.reset();  // the session, and with it the lock, goes
        }
      }
    } unlock{*this};
    tx([&] {
      auto version = version_now();  // again, under the lock: another worker may have done it
      if (!version) {
        if (q("SELECT to_regclass('studies') IS NOT NULL").get(0, 0) == std::optional<std::string>("t")) {
          fail("{}: the database has a table 'studies' that rankscope did not create; use another database", display);
        }
        q("CREATE TABLE rankscope_schema (version INTEGER NOT NULL)");
        q("INSERT INTO rankscope_schema (version) VALUES (0)");
        version = 0;
      }
      if (*version > current) {
        fail("{}: results schema version {} is newer than this rankscope's {}; upgrade rankscope", display, *version, current);
      }
      if (*version == current) return;
      for (auto k = static_cast<size_t>(*version); k < steps.size(); ++k) conn->exec_script(steps[k]);
      q("UPDATE rankscope_schema SET version = $1", {p(current)});
    });
  }

  StudyInfo study_row(const PgResult& r, int64_t i) const {
    StudyInfo s;
    s.id = i64(r, i, 0);
    s.name = str(r, i, 1);
    s.created_at = f64(r, i, 2);
    s.settings = parse_json(str(r, i, 3), fmt::format("the settings of study '{}'", s.name));
    return s;
  }
};

PgStore::PgStore(const std::string& url) : PgStore(url, Options{}) {}

PgStore::PgStore(const std::string& url, const Options& options) : impl_(std::make_unique<Impl>()) {
  impl_->url = url;
  impl_->display = redact_postgres_url(url);
  impl_->options = options;
  impl_->create_or_check_schema();
}

PgStore::~PgStore() = default;

int PgStore::schema_version() { return static_cast<int>(migrations().size()); }

std::string PgStore::display() const { return impl_->display; }

int64_t PgStore::open_study(const std::string& name, const nlohmann::json& settings,
                            const std::function<void(const nlohmann::json& existing)>& check_existing) {
  Impl& d = *impl_;
  return d.tx([&] {
    auto r = d.q("INSERT INTO studies (name, created_at, settings) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING "
                 "RETURNING id",
                 {p(name), p(unix_now()), p(settings.dump())});
    if (r.rows() > 0) return i64(r, 0, 0);
    r = d.q("SELECT id, settings FROM studies WHERE name = $1", {p(name)});
    if (r.rows() == 0) fail("{}: study '{}' could not be opened", d.display, name);
    if (check_existing) check_existing(d.parse_json(str(r, 0, 1), fmt::format("the settings of study '{}'", name)));
    return i64(r, 0, 0);
  });
}

bool PgStore::delete_study(const std::string& name) {
  Impl& d = *impl_;
  return d.tx([&] {
    auto r = d.q("SELECT id FROM studies WHERE name = $1", {p(name)});
    if (r.rows() == 0) return false;
    const int64_t id = i64(r, 0, 0);
    d.lock_study(id);
    // Evaluations (their metrics cascade) and the strategy state go with the study.
    d.q("DELETE FROM studies WHERE id = $1", {p(id)});
    return true;
  });
}

nlohmann::json PgStore::adopt_study_setting(int64_t study, const std::string& key, const nlohmann::json& value) {
  Impl& d = *impl_;
  return d.tx([&] {
    d.lock_study(study);
    auto r = d.q("SELECT settings FROM studies WHERE id = $1", {p(study)});
    if (r.rows() == 0) fail("{}: no study with id {}", d.display, study);
    nlohmann::json settings = d.parse_json(str(r, 0, 0), fmt::format("the settings of study {}", study));
    if (!settings.is_object()) fail("{}: the settings of study {} are not a JSON object", d.display, study);
    if (settings.contains(key)) return settings.at(key);
    settings[key] = value;
    d.q("UPDATE studies SET settings = $1 WHERE id = $2", {p(settings.dump()), p(study)});
    return value;
  });
}

void PgStore::rename_study(const std::string& from, const std::string& to) {
  Impl& d = *impl_;
  if (to.empty()) fail("{}: a study needs a non-empty name", d.display);
  d.tx([&] {
    if (d.q("SELECT 1 FROM studies WHERE name = $1", {p(to)}).rows() > 0) {
      fail("{}: cannot rename study '{}' to '{}': a study of that name exists", d.display, from, to);
    }
    if (d.q("UPDATE studies SET name = $1 WHERE name = $2", {p(to), p(from)}).affected() == 0) {
      fail("{}: no study '{}'", d.display, from);
    }
  });
}

std::optional<StudyInfo> PgStore::find_study(const std::string& name) const {
  Impl& d = *impl_;
  return d.tx([&]() -> std::optional<StudyInfo> {
    auto r = d.q("SELECT id, name, created_at, settings FROM studies WHERE name = $1", {p(name)});
    if (r.rows() == 0) return std::nullopt;
    StudyInfo s = d.study_row(r, 0);
    auto c = d.q("SELECT status, count(*) FROM evaluations WHERE study_id = $1 GROUP BY status", {p(s.id)});
    for (int64_t i = 0; i < c.rows(); ++i) add_count(s.counts, str(c, i, 0), i64(c, i, 1));
    return s;
  });
}

std::vector<StudyInfo> PgStore::studies() const {
  Impl& d = *impl_;
  return d.tx([&] {
    std::vector<StudyInfo> out;
    std::unordered_map<int64_t, size_t> index;
    auto r = d.q("SELECT id, name, created_at, settings FROM studies ORDER BY name COLLATE \"C\"");
    for (int64_t i = 0; i < r.rows(); ++i) {
      out.push_back(d.study_row(r, i));
      index[out.back().id] = out.size() - 1;
    }
    auto c = d.q("SELECT study_id, status, count(*) FROM evaluations GROUP BY study_id, status");
    for (int64_t i = 0; i < c.rows(); ++i) {
      if (auto it = index.find(i64(c, i, 0)); it != index.end()) add_count(out[it->second].counts, str(c, i, 1), i64(c, i, 2));
    }
    return out;
  });
}

int64_t PgStore::add_model(const ModelInfo& model) {
  Impl& d = *impl_;
  if (model.hash.empty()) fail("{}: a model needs a content hash", d.display);
  return d.tx([&] {
    d.q("INSERT INTO models (hash, path, architecture, n_params) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (hash) DO UPDATE SET path = excluded.path WHERE excluded.path <> ''",
        {p(model.hash), p(model.path), p(model.architecture), p(model.n_params)});
    return i64(d.q("SELECT id FROM models WHERE hash = $1", {p(model.hash)}), 0, 0);
  });
}

std::vector<ModelInfo> PgStore::models() const {
  Impl& d = *impl_;
  return d.tx([&] {
    std::vector<ModelInfo> out;
    auto r = d.q("SELECT hash, path, architecture, n_params FROM models ORDER BY id");
    for (int64_t i = 0; i < r.rows(); ++i) out.push_back({str(r, i, 0), str(r, i, 1), str(r, i, 2), i64(r, i, 3)});
    return out;
  });
}

std::optional<int64_t> PgStore::claim(int64_t study, int64_t model, std::string_view config, std::string_view worker,
                                      double stale_after_seconds, int64_t budget) {
  Impl& d = *impl_;
  return d.tx([&]() -> std::optional<int64_t> {
    d.lock_study(study);  // claims of one study run one at a time: the budget's last slot goes once
    const double now = unix_now();
    const int64_t cid = d.config_id(config);
    if (budget >= 0) {
      // Finished evaluations and the other configurations' claims in one statement (one snapshot):
      // a claim finished meanwhile by another worker is counted once, as one or the other.
      auto r = d.q("SELECT 'claim', worker, heartbeat_at FROM evaluations WHERE study_id = $1 AND status = 'claimed' AND "
                   "configuration_id <> $2 UNION ALL SELECT 'finished', '', count(*)::double precision FROM evaluations "
                   "WHERE study_id = $1 AND status <> 'claimed'",
                   {p(study), p(cid)});
      int64_t used = 0;
      for (int64_t i = 0; i < r.rows(); ++i) {
        if (str(r, i, 0) == "finished") {
          used += static_cast<int64_t>(f64(r, i, 2));
          continue;
        }
        ClaimInfo other;
        other.worker = str(r, i, 1);
        other.heartbeat_at = f64(r, i, 2);
        if (!claim_is_stale(other, now, stale_after_seconds)) ++used;
      }
      if (used >= budget) return std::nullopt;
    }
    // The row locked as it is judged: a heartbeat committing meanwhile waits, then is not lost.
    auto r = d.q("SELECT id, status, heartbeat_at, worker FROM evaluations WHERE study_id = $1 AND configuration_id = $2 "
                 "FOR UPDATE",
                 {p(study), p(cid)});
    if (r.rows() > 0) {
      if (str(r, 0, 1) != "claimed") return std::nullopt;
      ClaimInfo held;
      held.heartbeat_at = f64(r, 0, 2);
      held.worker = str(r, 0, 3);
      // This worker's own claim made by this call, whose COMMIT's answer was lost: it is ours.
      if (d.commit_unknown && held.worker == worker) return i64(r, 0, 0);
      if (!claim_is_stale(held, now, stale_after_seconds)) return std::nullopt;
      // A stale claim: its worker is presumed dead; the new claim gets a new id.
      d.q("DELETE FROM evaluations WHERE id = $1", {p(i64(r, 0, 0))});
    }
    auto ins = d.q("INSERT INTO evaluations (study_id, configuration_id, model_id, status, worker, host, claimed_at, "
                   "heartbeat_at) VALUES ($1, $2, $3, 'claimed', $4, $5, $6, $6) RETURNING id",
                   {p(study), p(cid), p(model), p(worker), p(worker_host(worker)), p(now)});
    return i64(ins, 0, 0);
  });
}

bool PgStore::heartbeat(int64_t evaluation) {
  Impl& d = *impl_;
  return d.tx([&] {
    return d.q("UPDATE evaluations SET heartbeat_at = $1 WHERE id = $2 AND status = 'claimed'", {p(unix_now()), p(evaluation)})
               .affected() > 0;
  });
}

bool PgStore::release(int64_t evaluation) {
  Impl& d = *impl_;
  return d.tx([&] {
    return d.q("DELETE FROM evaluations WHERE id = $1 AND status = 'claimed'", {p(evaluation)}).affected() > 0;
  });
}

bool PgStore::complete(int64_t evaluation, const std::vector<MetricValue>& metrics, EvalStatus status, double wall_s,
                       const std::string& error) {
  Impl& d = *impl_;
  if (!is_finished(status)) fail("{}: evaluation {} cannot be completed with status 'claimed'", d.display, evaluation);
  return d.tx([&] {
    const double now = unix_now();
    if (d.q("UPDATE evaluations SET status = $1, finished_at = $2, heartbeat_at = $2, wall_s = $3, error = $4 "
            "WHERE id = $5 AND status = 'claimed'",
            {p(status_name(settled_status(status, metrics))), p(now), p(wall_s), text_or_null(error), p(evaluation)})
            .affected() == 0) {
      // Stored by this call's earlier run whose COMMIT's answer was lost: stored, once.
      if (d.commit_unknown &&
          d.q("SELECT 1 FROM evaluations WHERE id = $1 AND status <> 'claimed'", {p(evaluation)}).rows() > 0) {
        return true;
      }
      return false;  // taken over or released: the late result is ignored
    }
    d.insert_metrics(evaluation, metrics);
    return true;
  });
}

int64_t PgStore::add_evaluations(int64_t study, int64_t model, const std::vector<NewEvaluation>& evaluations,
                                 std::string_view worker) {
  Impl& d = *impl_;
  for (const auto& e : evaluations) {
    if (!is_finished(e.status)) fail("{}: add_evaluations takes finished evaluations only ('{}' is claimed)", d.display, e.config);
  }
  const std::string worker_text = worker.empty() ? worker_id() : std::string(worker);
  return d.tx([&] {
    d.lock_study(study);
    const double now = unix_now();
    int64_t inserted = 0;
    for (const auto& e : evaluations) {
      const int64_t cid = d.config_id(e.config);
      if (d.q("SELECT 1 FROM evaluations WHERE study_id = $1 AND configuration_id = $2", {p(study), p(cid)}).rows() > 0) {
        continue;
      }
      auto r = d.q("INSERT INTO evaluations (study_id, configuration_id, model_id, status, worker, host, claimed_at, "
                   "heartbeat_at, finished_at, wall_s, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9) RETURNING id",
                   {p(study), p(cid), p(model), p(status_name(settled_status(e.status, e.metrics))), p(worker_text),
                    p(worker_host(worker_text)), p(now), p(e.wall_s), text_or_null(e.error)});
      d.insert_metrics(i64(r, 0, 0), e.metrics);
      ++inserted;
    }
    return inserted;
  });
}

std::optional<EvalStatus> PgStore::status_of(int64_t study, std::string_view config) const {
  Impl& d = *impl_;
  return d.tx([&]() -> std::optional<EvalStatus> {
    auto r = d.q("SELECT e.status FROM evaluations e JOIN configurations c ON c.id = e.configuration_id "
                 "WHERE e.study_id = $1 AND c.canonical = $2",
                 {p(study), p(config)});
    if (r.rows() == 0) return std::nullopt;
    return parse_status(str(r, 0, 0));
  });
}

StatusCounts PgStore::counts(int64_t study) const {
  Impl& d = *impl_;
  return d.tx([&] {
    StatusCounts counts;
    auto r = d.q("SELECT status, count(*) FROM evaluations WHERE study_id = $1 GROUP BY status", {p(study)});
    for (int64_t i = 0; i < r.rows(); ++i) add_count(counts, str(r, i, 0), i64(r, i, 1));
    return counts;
  });
}

std::vector<std::string> PgStore::metric_names() const {
  Impl& d = *impl_;
  return d.tx([&] {
    std::vector<std::string> out;
    auto r = d.q("SELECT name FROM metric_names ORDER BY name COLLATE \"C\"");
    for (int64_t i = 0; i < r.rows(); ++i) out.push_back(str(r, i, 0));
    return out;
  });
}

std::vector<ClaimInfo> PgStore::claims(int64_t study) const {
  Impl& d = *impl_;
  return d.tx([&] {
    std::vector<ClaimInfo> out;
    auto r = d.q("SELECT e.id, c.canonical, e.worker, e.claimed_at, e.heartbeat_at FROM evaluations e "
                 "JOIN configurations c ON c.id = e.configuration_id WHERE e.study_id = $1 AND e.status = 'claimed' "
                 "ORDER BY e.id",
                 {p(study)});
    for (int64_t i = 0; i < r.rows(); ++i) out.push_back({i64(r, i, 0), str(r, i, 1), str(r, i, 2), f64(r, i, 3), f64(r, i, 4)});
    return out;
  });
}

MetricRows PgStore::metric_rows(int64_t study, const std::vector<std::string>& metrics) const {
  Impl& d = *impl_;
  return d.tx(
      [&] {
        MetricRows out;
        out.metrics = metrics;
        auto r = d.q("SELECT e.id, e.status, c.canonical FROM evaluations e JOIN configurations c "
                     "ON c.id = e.configuration_id WHERE e.study_id = $1 AND e.status <> 'claimed' ORDER BY e.id",
                     {p(study)});
        const auto n = static_cast<size_t>(r.rows());
        for (int64_t i = 0; i < r.rows(); ++i) {
          out.evaluation_ids.push_back(i64(r, i, 0));
          out.statuses.push_back(parse_status(str(r, i, 1)));
          out.configs.push_back(str(r, i, 2));
        }
        out.rows.assign(n, std::vector<double>(metrics.size(), kNaN));
        for (size_t j = 0; j < metrics.size() && n > 0; ++j) {
          auto m = d.q("SELECT m.evaluation_id, m.value FROM metrics m JOIN metric_names n ON n.id = m.metric_id "
                       "JOIN evaluations e ON e.id = m.evaluation_id WHERE n.name = $1 AND e.study_id = $2 AND "
                       "e.status <> 'claimed' ORDER BY m.evaluation_id",
                       {p(metrics[j]), p(study)});
          size_t i = 0;
          for (int64_t k = 0; k < m.rows(); ++k) {
            const int64_t id = i64(m, k, 0);
            while (i < n && out.evaluation_ids[i] < id) ++i;
            if (i == n) break;
            if (out.evaluation_ids[i] == id) out.rows[i][j] = f64(m, k, 1);
          }
        }
        return out;
      },
      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
}

void PgStore::for_each_evaluation(int64_t study, const std::function<void(const EvaluationRecord&)>& visit) const {
  Impl& d = *impl_;
  // Read everything in one snapshot, then visit: a transaction run again after the server came
  // back never calls visit twice for one evaluation.
  const auto records = d.tx(
      [&] {
        std::vector<EvaluationRecord> out;
        auto e = d.q("SELECT e.id, c.canonical, c.hash, m.hash, e.status, e.worker, e.host, e.error, e.claimed_at, "
                     "e.heartbeat_at, e.finished_at, e.wall_s FROM evaluations e "
                     "JOIN configurations c ON c.id = e.configuration_id JOIN models m ON m.id = e.model_id "
                     "WHERE e.study_id = $1 ORDER BY e.id",
                     {p(study)});
        std::unordered_map<int64_t, size_t> index;
        for (int64_t i = 0; i < e.rows(); ++i) {
          EvaluationRecord r;
          r.id = i64(e, i, 0);
          r.config = str(e, i, 1);
          r.config_hash = str(e, i, 2);
          r.model_hash = str(e, i, 3);
          r.status = parse_status(str(e, i, 4));
          r.worker = str(e, i, 5);
          r.host = str(e, i, 6);
          r.error = str(e, i, 7);
          r.claimed_at = f64(e, i, 8);
          r.heartbeat_at = f64(e, i, 9);
          r.finished_at = f64(e, i, 10);
          r.wall_s = f64(e, i, 11);
          index[r.id] = out.size();
          out.push_back(std::move(r));
        }
        std::unordered_map<int64_t, nlohmann::json> protocols;
        auto pr = d.q("SELECT DISTINCT p.id, p.json FROM protocols p JOIN metrics m ON m.protocol_id = p.id "
                      "JOIN evaluations e ON e.id = m.evaluation_id WHERE e.study_id = $1",
                      {p(study)});
        for (int64_t i = 0; i < pr.rows(); ++i) {
          protocols[i64(pr, i, 0)] = d.parse_json(str(pr, i, 1), fmt::format("protocol {}", i64(pr, i, 0)));
        }
        auto m = d.q("SELECT m.evaluation_id, n.name, m.value, m.stderr, m.n, m.status, m.protocol_id FROM metrics m "
                     "JOIN metric_names n ON n.id = m.metric_id JOIN evaluations e ON e.id = m.evaluation_id "
                     "WHERE e.study_id = $1 ORDER BY m.evaluation_id, n.name COLLATE \"C\"",
                     {p(study)});
        for (int64_t i = 0; i < m.rows(); ++i) {
          const auto it = index.find(i64(m, i, 0));
          if (it == index.end()) continue;
          MetricValue v;
          v.name = str(m, i, 1);
          v.value = f64(m, i, 2);
          v.stderr_ = f64(m, i, 3);
          v.n = i64(m, i, 4);
          v.status = str(m, i, 5);
          if (m.get(i, 6)) v.protocol = protocols[i64(m, i, 6)];
          out[it->second].metrics.push_back(std::move(v));
        }
        return out;
      },
      "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  for (const auto& r : records) visit(r);
}

void PgStore::save_strategy_state(int64_t study, const nlohmann::json& state) {
  Impl& d = *impl_;
  d.tx([&] {
    d.q("INSERT INTO strategy_state (study_id, state, updated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (study_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
        {p(study), p(state.dump()), p(unix_now())});
  });
}

std::optional<nlohmann::json> PgStore::load_strategy_state(int64_t study) const {
  Impl& d = *impl_;
  return d.tx([&]() -> std::optional<nlohmann::json> {
    auto r = d.q("SELECT state FROM strategy_state WHERE study_id = $1", {p(study)});
    if (r.rows() == 0) return std::nullopt;
    return d.parse_json(str(r, 0, 0), fmt::format("the strategy state of study {}", study));
  });
}

std::string PgStore::integrity_check() const {
  Impl& d = *impl_;
  return d.tx([&] {
    std::string problems;
    // The server keeps its own storage consistent; what can go wrong is ours: the invariants the
    // claim protocol relies on.
    const struct {
      const char* sql;
      const char* what;
    } checks[] = {
        {"SELECT count(*) FROM evaluations e WHERE e.status = 'claimed' AND EXISTS "
         "(SELECT 1 FROM metrics m WHERE m.evaluation_id = e.id)",
         "claims with metrics"},
        {"SELECT count(*) FROM evaluations WHERE status <> 'claimed' AND finished_at IS NULL",
         "finished evaluations without a finish time"},
        {"SELECT count(*) FROM evaluations WHERE status = 'claimed' AND finished_at IS NOT NULL",
         "claims with a finish time"},
        {"SELECT count(*) FROM rankscope_schema", "schema version rows (want 1)"},
    };
    for (const auto& c : checks) {
      const int64_t n = i64(d.q(c.sql), 0, 0);
      const bool bad = std::string_view(c.what).starts_with("schema") ? n != 1 : n != 0;
      if (bad) problems += fmt::format("{}: {}\n", c.what, n);
    }
    if (problems.empty()) return std::string("ok");
    problems.pop_back();
    return problems;
  });
}

}  // namespace rankscope
