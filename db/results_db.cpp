// The results database: see results_db.hpp and docs/database.md.
#include "db/results_db.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <sqlite3.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
// SQLite's messages may quote schema text over several lines: errors show at most this much of
// one, control characters escaped, so that every Error stays one line.
constexpr size_t kMaxMessage = 300;

// ---------------------------------------------------------------------------------------------
// The schema: migrations[k] takes PRAGMA user_version k to k+1 (version 0 is an empty file).
// Append new steps; never edit a released one.
const std::vector<std::string>& builtin_migrations() {
  static const std::vector<std::string> steps = {
      // 0 -> 1: the first schema.
      R"sql(
CREATE TABLE studies (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at REAL NOT NULL,
  settings TEXT NOT NULL
);
CREATE TABLE models (
  id INTEGER PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  path TEXT NOT NULL,
  architecture TEXT NOT NULL,
  n_params INTEGER NOT NULL
);
CREATE TABLE configurations (
  id INTEGER PRIMARY KEY,
  canonical TEXT NOT NULL UNIQUE,
  hash TEXT NOT NULL UNIQUE
);
CREATE TABLE evaluations (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  configuration_id INTEGER NOT NULL REFERENCES configurations(id),
  model_id INTEGER NOT NULL REFERENCES models(id),
  status TEXT NOT NULL CHECK (status IN ('claimed', 'done', 'failed', 'nan')),
  worker TEXT NOT NULL,
  host TEXT NOT NULL,
  claimed_at REAL NOT NULL,
  heartbeat_at REAL NOT NULL,
  finished_at REAL,
  wall_s REAL,
  error TEXT,
  UNIQUE (study_id, configuration_id)
);
CREATE INDEX evaluations_by_status ON evaluations(study_id, status, configuration_id);
CREATE TABLE metric_names (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE
);
CREATE TABLE protocols (
  id INTEGER PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  json TEXT NOT NULL
);
CREATE TABLE metrics (
  metric_id INTEGER NOT NULL REFERENCES metric_names(id),
  evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
  value REAL,
  stderr REAL,
  n INTEGER NOT NULL,
  status TEXT NOT NULL,
  protocol_id INTEGER REFERENCES protocols(id),
  PRIMARY KEY (metric_id, evaluation_id)
) WITHOUT ROWID;
CREATE INDEX metrics_by_evaluation ON metrics(evaluation_id);
CREATE TABLE strategy_state (
  study_id INTEGER PRIMARY KEY REFERENCES studies(id) ON DELETE CASCADE,
  state TEXT NOT NULL,
  updated_at REAL NOT NULL
);
)sql",
      // 1 -> 2: evaluation status 'pruned' (early stopping). SQLite cannot alter a CHECK
      // constraint, so evaluations is rebuilt as https://www.sqlite.org/lang_altertable.html
      // ("Making Other Kinds Of Table Schema Changes") says: migrate() turns foreign keys off
      // around the transaction (DROP TABLE would otherwise cascade into metrics) and runs
      // foreign_key_check before COMMIT. The AUTOINCREMENT counter moves to the new table, so the
      // ids of deleted claims are still never reused.
      R"sql(
CREATE TABLE evaluations_new (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  configuration_id INTEGER NOT NULL REFERENCES configurations(id),
  model_id INTEGER NOT NULL REFERENCES models(id),
  status TEXT NOT NULL CHECK (status IN ('claimed', 'done', 'failed', 'nan', 'pruned')),
  worker TEXT NOT NULL,
  host TEXT NOT NULL,
  claimed_at REAL NOT NULL,
  heartbeat_at REAL NOT NULL,
  finished_at REAL,
  wall_s REAL,
  error TEXT,
  UNIQUE (study_id, configuration_id)
);
INSERT INTO evaluations_new (id, study_id, configuration_id, model_id, status, worker, host, claimed_at, heartbeat_at,
                             finished_at, wall_s, error)
  SELECT id, study_id, configuration_id, model_id, status, worker, host, claimed_at, heartbeat_at, finished_at, wall_s,
         error FROM evaluations ORDER BY id;
DELETE FROM sqlite_sequence WHERE name = 'evaluations_new';
UPDATE sqlite_sequence SET name = 'evaluations_new' WHERE name = 'evaluations';
DROP TABLE evaluations;
ALTER TABLE evaluations_new RENAME TO evaluations;
CREATE INDEX evaluations_by_status ON evaluations(study_id, status, configuration_id);
)sql",
  };
  return steps;
}

double now_seconds() { return unix_now(); }

std::string hex128(const void* data, size_t size) {
  const XXH128_hash_t h = XXH3_128bits(data, size);
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

std::string host_of(std::string_view worker) { return worker_host(worker); }

// Thrown inside a transaction when another connection holds a lock; the retry loop catches it.
struct Busy {};

bool is_busy(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_BUSY || primary == SQLITE_LOCKED;
}

// Out of disk space, out of memory, an I/O error: the machine, not the database, is at fault.
bool is_transient(int rc) {
  const int primary = rc & 0xff;
  // CANTOPEN: what SQLite reports when the process is out of file descriptors.
  return primary == SQLITE_FULL || primary == SQLITE_NOMEM || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN;
}

// A metric a search can use: status ok and not infinite (an infinite perplexity is stored with
// status nan; a NaN value keeps the status its producer gave: the sweep marks those nan itself).




}  // namespace

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string worker_host(std::string_view worker) {
  const size_t colon = worker.rfind(':');
  return std::string(colon == std::string_view::npos ? worker : worker.substr(0, colon));
}

bool metric_usable(const MetricValue& m) { return m.status == "ok" && !std::isinf(m.value); }

EvalStatus settled_status(EvalStatus status, const std::vector<MetricValue>& metrics) {
  if (status != EvalStatus::done) return status;
  for (const auto& m : metrics)
    if (!metric_usable(m)) return EvalStatus::nan;
  return status;
}

std::string_view status_name(EvalStatus status) {
  switch (status) {
    case EvalStatus::claimed:
      return "claimed";
    case EvalStatus::done:
      return "done";
    case EvalStatus::failed:
      return "failed";
    case EvalStatus::nan:
      return "nan";
    case EvalStatus::pruned:
      return "pruned";
  }
  RS_ASSERT(false);
  return "";
}

EvalStatus parse_status(std::string_view name) {
  if (name == "claimed") return EvalStatus::claimed;
  if (name == "done") return EvalStatus::done;
  if (name == "failed") return EvalStatus::failed;
  if (name == "nan") return EvalStatus::nan;
  if (name == "pruned") return EvalStatus::pruned;
  fail("unknown evaluation status '{}' (expected claimed, done, failed, nan or pruned)", name);
}

namespace {

// The host part of worker ids: the host name, then '/' and 8 hex digits of this boot's id and this
// process's PID namespace. Two containers sharing a host name (host networking) or a container
// restarted under the same name are then different hosts: a PID is only ever checked where it
// means the same process.
const std::string& host_tag() {
  static const std::string tag = [] {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "unknown");
    std::string identity;
    if (std::FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
      char buffer[64] = {};
      identity = std::fgets(buffer, sizeof buffer, f) ? buffer : "";
      std::fclose(f);
    }
    struct stat ns {};
    if (::stat("/proc/self/ns/pid", &ns) == 0) identity += fmt::format(" {}:{}", ns.st_dev, ns.st_ino);
    const XXH64_hash_t h = XXH3_64bits(identity.data(), identity.size());
    return fmt::format("{}/{:08x}", host, static_cast<uint32_t>(h));
  }();
  return tag;
}

// Whether process `pid` of this host has ended: gone, or a zombie its parent has not reaped yet.
bool process_ended(long pid) {
  // kill(pid, 0) checks existence without signalling; EPERM means it exists (another user's).
  if (kill(static_cast<pid_t>(pid), 0) != 0) return errno == ESRCH;
  std::FILE* f = std::fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
  if (!f) return false;
  char buffer[512] = {};
  const size_t n = std::fread(buffer, 1, sizeof buffer - 1, f);
  std::fclose(f);
  // "pid (comm) S ...": the state follows the last ')' (comm may hold ')' itself).
  const std::string_view line(buffer, n);
  const size_t close = line.rfind(')');
  return close != std::string_view::npos && close + 2 < line.size() && (line[close + 2] == 'Z' || line[close + 2] == 'X');
}

}  // namespace

std::string worker_id() { return fmt::format("{}:{}", host_tag(), static_cast<long>(getpid())); }

bool worker_is_gone(std::string_view worker) {
  const size_t colon = worker.rfind(':');
  if (colon == std::string_view::npos) return false;
  if (host_of(worker) != host_tag()) return false;
  long pid = 0;
  const std::string_view digits = worker.substr(colon + 1);
  if (digits.empty() || digits.size() > 9) return false;
  for (const char c : digits) {
    if (c < '0' || c > '9') return false;
    pid = pid * 10 + (c - '0');
  }
  if (pid <= 0) return false;
  return process_ended(pid);
}

bool claim_is_stale(const ClaimInfo& claim, double now, double stale_after_seconds) {
  if (claim.heartbeat_at < now - stale_after_seconds) return true;
  if (claim.heartbeat_at > now + stale_after_seconds) return true;
  return worker_is_gone(claim.worker);
}

std::string config_hash(std::string_view canonical) { return hex128(canonical.data(), canonical.size()); }

// ---------------------------------------------------------------------------------------------
// The connection, its cached statements and the transaction/retry machinery.

namespace detail {

struct ResultsDbImpl {
  std::filesystem::path path;
  std::string name;  // path as text, for messages
  ResultsDb::Options options;
  std::vector<std::string> migrations;
  sqlite3* db = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> statements;
  std::minstd_rand jitter{static_cast<unsigned>(getpid()) ^
                          static_cast<unsigned>(std::chrono::steady_clock::now().time_since_epoch().count())};

  ~ResultsDbImpl() {
    for (auto& [sql, stmt] : statements) sqlite3_finalize(stmt);
    if (db) sqlite3_close_v2(db);
  }

  // Throws Busy for a lock conflict, Error (naming the file) for anything else.
  void check(int rc, std::string_view what) const {
    if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
    if (is_busy(rc)) throw Busy{};
    const std::string message =
        fmt::format("{}: {}: {}", name, what, printable(db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), kMaxMessage));
    if (is_transient(rc)) throw TransientError(message);
    throw Error(message);
  }

  sqlite3_stmt* prepare(const std::string& sql) {
    auto it = statements.find(sql);
    if (it != statements.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()),
                                      SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      check(rc, "preparing a statement");
    }
    statements.emplace(sql, stmt);
    return stmt;
  }

  void exec(const char* sql) {
    char* message = nullptr;
    const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &message);
    std::string text = message ? message : "";
    sqlite3_free(message);
    if (rc == SQLITE_OK) return;
    if (is_busy(rc)) throw Busy{};
    const std::string line = fmt::format("{}: {}", name, printable(text.empty() ? sqlite3_errstr(rc) : text, kMaxMessage));
    if (is_transient(rc)) throw TransientError(line);
    throw Error(line);
  }

  void rollback_if_open() {
    if (db && !sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  }

  // Runs attempt() until it does not throw Busy, sleeping with exponential backoff (1 ms doubling
  // to 250 ms, with jitter) between tries; Error after options.busy_timeout_seconds.
  template <typename F>
  auto retry(F&& attempt) {
    const auto start = std::chrono::steady_clock::now();
    double backoff = 0.001;
    for (;;) {
      try {
        return attempt();
      } catch (const Busy&) {
        rollback_if_open();
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (waited >= options.busy_timeout_seconds)
          fail("{}: database is locked by another process for more than {} s", name,
               options.busy_timeout_seconds);
        const double sleep = backoff * std::uniform_real_distribution<double>(0.5, 1.5)(jitter);
        std::this_thread::sleep_for(std::chrono::duration<double>(sleep));
        backoff = std::min(backoff * 2, 0.25);
      }
    }
  }

  // One transaction: BEGIN IMMEDIATE (write) or BEGIN (read snapshot), body, COMMIT; the whole
  // transaction is retried on a lock conflict, rolled back on any other exception.
  template <typename F>
  auto transaction(bool write, F&& body) {
    return retry([&] {
      exec(write ? "BEGIN IMMEDIATE" : "BEGIN");
      try {
        if constexpr (std::is_void_v<decltype(body())>) {
          body();
          exec("COMMIT");
        } else {
          auto result = body();
          exec("COMMIT");
          return result;
        }
      } catch (...) {
        rollback_if_open();
        throw;
      }
    });
  }

  // A status column's value; a row damaged behind rankscope's back is an Error naming the file.
  EvalStatus status(std::string_view text) const {
    try {
      return parse_status(text);
    } catch (const Error& e) {
      fail("{}: damaged evaluation row: {}", name, printable(e.what(), kMaxMessage));
    }
  }

  // SQLite's own wait on a lock, per attempt (the retry loop waits longer, between attempts).
  int busy_wait_ms() const {
    return static_cast<int>(std::clamp(options.busy_timeout_seconds * 1000.0 / 4, 1.0, 1000.0));
  }

  void open();
  void classify();
  void migrate();
  void migrate_steps();

  int64_t config_id(std::string_view canonical, bool create);
  int64_t metric_id(const std::string& metric, std::unordered_map<std::string, int64_t>& cache);
  void insert_metrics(int64_t evaluation, const std::vector<MetricValue>& metrics,
                      std::unordered_map<std::string, int64_t>& cache);
};

}  // namespace detail

using Impl = detail::ResultsDbImpl;

namespace {

// A cached statement for one use: bind, step, read columns; reset (and unbound) on destruction.
class Query {
 public:
  Query(Impl& impl, const std::string& sql) : impl_(impl), stmt_(impl.prepare(sql)) {}
  ~Query() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Query(const Query&) = delete;
  Query& operator=(const Query&) = delete;

  Query& bind(int i, int64_t v) { return check_bind(sqlite3_bind_int64(stmt_, i, v)); }
  Query& bind(int i, double v) {
    return check_bind(std::isnan(v) ? sqlite3_bind_null(stmt_, i) : sqlite3_bind_double(stmt_, i, v));
  }
  Query& bind(int i, std::string_view v) {
    return check_bind(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  Query& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  Query& bind(int i, const char* v) { return bind(i, std::string_view(v)); }
  Query& bind_null(int i) { return check_bind(sqlite3_bind_null(stmt_, i)); }

  // True while a row is available.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    sqlite3_reset(stmt_);
    impl_.check(rc, "query failed");
    return false;
  }
  void run() {
    while (step()) {
    }
  }

  bool is_null(int c) const { return sqlite3_column_type(stmt_, c) == SQLITE_NULL; }
  int64_t i64(int c) const { return sqlite3_column_int64(stmt_, c); }
  double f64(int c) const { return is_null(c) ? kNaN : sqlite3_column_double(stmt_, c); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, c));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, c))) : std::string();
  }
  std::string_view text_view(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, c));
    return p ? std::string_view(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, c))) : std::string_view();
  }

 private:
  Query& check_bind(int rc) {
    impl_.check(rc, "binding a parameter");
    return *this;
  }
  Impl& impl_;
  sqlite3_stmt* stmt_;
};

nlohmann::json parse_json_column(const Impl& impl, std::string_view text, std::string_view where) {
  return parse_json_text(text, fmt::format("{}: {}", impl.name, where));
}

// What an existing file holds, read without writing anything.
struct Header {
  int64_t application_id = 0, user_version = 0, n_objects = 0;
};

}  // namespace

// Classifies the file through the connection itself, before anything is written: a foreign or
// newer file is refused with its bytes untouched (reads change nothing; in WAL mode SQLite's own
// -wal/-shm files come and go as for any reader).
//
// The file is never opened other than through SQLite. POSIX locks belong to the process, not to
// a descriptor: closing any descriptor of the file (an ifstream peeking at the header, or an
// `immutable=1` connection, which closes its descriptor directly) drops every lock this process
// holds on it, including those of its other connections. Other processes then take this
// process's connections for gone, and the last one to close deletes -wal and -shm under them:
// the corruption issue 10 saw with four workers and a polling reader.
void Impl::classify() {
  auto read = [&]() -> Header {
    Header header;
    const char* queries[] = {"PRAGMA application_id", "PRAGMA user_version", "SELECT count(*) FROM sqlite_master"};
    int64_t* outputs[] = {&header.application_id, &header.user_version, &header.n_objects};
    for (int i = 0; i < 3; ++i) {
      sqlite3_stmt* stmt = nullptr;
      int code = sqlite3_prepare_v2(db, queries[i], -1, &stmt, nullptr);
      if (code == SQLITE_OK) code = sqlite3_step(stmt);
      if (code == SQLITE_ROW) *outputs[i] = sqlite3_column_int64(stmt, 0);
      sqlite3_finalize(stmt);
      if (code != SQLITE_ROW) {
        if (is_busy(code)) throw Busy{};
        const std::string message = printable(sqlite3_errmsg(db), kMaxMessage);
        if ((code & 0xff) == SQLITE_NOTADB) fail("{}: not a rankscope results database (not an SQLite file)", name);
        if ((code & 0xff) == SQLITE_CORRUPT) fail("{}: damaged results database ({})", name, message);
        fail("{}: cannot read database: {}", name, message);
      }
    }
    return header;
  };
  // The three reads in one snapshot: a worker creating the file commits its schema, application_id
  // and user_version together, and a reader must not see half of that (no id yet, tables already).
  const Header header = retry([&] {
    exec("BEGIN");
    try {
      const Header h = read();
      exec("COMMIT");
      return h;
    } catch (...) {
      rollback_if_open();
      throw;
    }
  });
  const int64_t latest = static_cast<int64_t>(migrations.size());
  if (header.application_id == kResultsDbApplicationId) {
    if (header.user_version <= 0)
      fail("{}: damaged rankscope results database (application_id set but schema version {})", name,
           header.user_version);
    if (header.user_version > latest)
      fail(
          "{}: results database has schema version {}, newer than this rankscope supports ({}); "
          "use a newer rankscope",
          name, header.user_version, latest);
    return;
  }
  if (header.application_id != 0)
    fail("{}: not a rankscope results database (an SQLite database with application_id 0x{:08x})", name,
         static_cast<uint32_t>(header.application_id));
  if (header.n_objects != 0 || header.user_version != 0)
    fail(
        "{}: not a rankscope results database (an SQLite database of another application: {} schema "
        "objects, user_version {})",
        name, header.n_objects, header.user_version);
  // An empty SQLite database: initialised like a new file.
}

// Brings the schema to the latest version in one transaction (re-checking what classify() saw,
// since another process may have initialised the file since). A step may rebuild a table (1 -> 2
// does): DROP TABLE would cascade into the rows that reference it while foreign keys are on, and
// PRAGMA foreign_keys is a no-op inside a transaction, so they are off around the transaction and
// PRAGMA foreign_key_check must find nothing before it commits.
void Impl::migrate() {
  exec("PRAGMA foreign_keys = OFF");
  try {
    migrate_steps();
  } catch (...) {
    sqlite3_exec(db, "PRAGMA foreign_keys = ON", nullptr, nullptr, nullptr);
    throw;
  }
  exec("PRAGMA foreign_keys = ON");
}

void Impl::migrate_steps() {
  const int64_t latest = static_cast<int64_t>(migrations.size());
  transaction(true, [&] {
    Header header;
    {
      Query q(*this, "PRAGMA application_id");
      q.step();
      header.application_id = q.i64(0);
    }
    {
      Query q(*this, "PRAGMA user_version");
      q.step();
      header.user_version = q.i64(0);
    }
    {
      Query q(*this, "SELECT count(*) FROM sqlite_master");
      q.step();
      header.n_objects = q.i64(0);
    }
    int64_t version = header.user_version;
    if (header.application_id == 0 && header.user_version == 0 && header.n_objects == 0) {
      version = 0;
    } else if (header.application_id != kResultsDbApplicationId) {
      fail("{}: not a rankscope results database (application_id 0x{:08x}, {} schema objects)", name,
           static_cast<uint32_t>(header.application_id), header.n_objects);
    } else if (version <= 0 || version > latest) {
      fail("{}: results database has schema version {}, this rankscope supports 1 to {}", name, version,
           latest);
    }
    if (version == latest) return;
    for (int64_t k = version; k < latest; ++k) {
      char* message = nullptr;
      const int rc = sqlite3_exec(db, migrations[static_cast<size_t>(k)].c_str(), nullptr, nullptr, &message);
      const std::string text = printable(message ? message : sqlite3_errstr(rc), kMaxMessage);
      sqlite3_free(message);
      if (is_busy(rc)) throw Busy{};
      if (rc != SQLITE_OK)
        fail("{}: migrating the schema from version {} to {} failed: {}", name, k, k + 1, text);
    }
    {
      Query q(*this, "PRAGMA foreign_key_check");
      if (q.step())
        fail("{}: migrating the schema from version {} to {} failed: foreign key violation: a row of {} refers to a "
             "missing row of {}", name, version, latest, q.text(0), q.text(2));
    }
    exec(fmt::format("PRAGMA application_id = {}", kResultsDbApplicationId).c_str());
    exec(fmt::format("PRAGMA user_version = {}", latest).c_str());
  });
}

void Impl::open() {
  name = path.string();
  if (migrations.empty()) fail("{}: no schema migrations given", name);
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  const bool exists = std::filesystem::exists(status);
  if (exists && !std::filesystem::is_regular_file(status)) fail("{}: not a regular file", name);
  if (!exists && !options.create) fail("{}: no such results database", name);
  const int flags = SQLITE_OPEN_READWRITE | (options.create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
  const int rc = sqlite3_open_v2(name.c_str(), &db, flags, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = printable(db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), kMaxMessage);
    fail("{}: cannot open database: {}", name, message);
  }
  sqlite3_busy_timeout(db, busy_wait_ms());
  // Until the file is known to be ours, closing this connection must not checkpoint a WAL that
  // was there before into it: a refused file keeps its bytes. (A WAL this connection created is
  // empty: checkpointing it writes nothing, and removes it and its -shm again.)
  const bool had_wal = exists && std::filesystem::exists(name + "-wal", ec);
  if (had_wal) sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
  classify();  // throws for foreign or newer files, before anything is written
  if (had_wal) sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, nullptr);
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, busy_wait_ms());
  exec("PRAGMA foreign_keys = ON");
  exec("PRAGMA cache_size = -65536");
  exec("PRAGMA mmap_size = 1073741824");  // scans read the mapping instead of copying pages (~10 %)
  // WAL before the schema: a new file is never in rollback-journal mode, even if the process
  // dies while creating it.
  retry([&] {
    Query q(*this, "PRAGMA journal_mode = WAL");
    q.step();
    const std::string mode = q.text(0);
    if (mode != "wal") fail("{}: cannot switch to WAL journal mode (got '{}')", name, mode);
  });
  exec("PRAGMA synchronous = NORMAL");
  exec("PRAGMA journal_size_limit = 67108864");
  // A current schema needs no write lock: read the version in a snapshot first; migrate()
  // re-reads it under the write lock, since another process may be creating the file right now.
  // A reader (create false) reads an older rankscope file as it is, without migrating it: every
  // version from 1 on holds the tables and columns the reads use (2 only allows one more status),
  // and a file on read-only storage stays readable.
  const bool needs_migration = transaction(false, [&] {
    Query q(*this, "PRAGMA user_version");
    q.step();
    const int64_t version = q.i64(0);
    Query a(*this, "PRAGMA application_id");
    a.step();
    if (a.i64(0) != kResultsDbApplicationId) return true;
    // (A version newer than this rankscope's goes on to migrate(), which refuses it.)
    if (!options.create && version >= 1 && version <= static_cast<int64_t>(migrations.size())) return false;
    return version != static_cast<int64_t>(migrations.size());
  });
  if (needs_migration) migrate();
}

int64_t Impl::config_id(std::string_view canonical, bool create) {
  {
    Query q(*this, "SELECT id FROM configurations WHERE canonical = ?1");
    q.bind(1, canonical);
    if (q.step()) return q.i64(0);
  }
  if (!create) return -1;
  const std::string hash = config_hash(canonical);
  {
    Query q(*this, "SELECT canonical FROM configurations WHERE hash = ?1");
    q.bind(1, hash);
    if (q.step()) fail("{}: configuration hash collision between '{}' and '{}'", name, canonical, q.text(0));
  }
  Query q(*this, "INSERT INTO configurations (canonical, hash) VALUES (?1, ?2)");
  q.bind(1, canonical).bind(2, hash).run();
  return sqlite3_last_insert_rowid(db);
}

int64_t Impl::metric_id(const std::string& metric, std::unordered_map<std::string, int64_t>& cache) {
  if (auto it = cache.find(metric); it != cache.end()) return it->second;
  int64_t id = -1;
  {
    Query q(*this, "SELECT id FROM metric_names WHERE name = ?1");
    q.bind(1, metric);
    if (q.step()) id = q.i64(0);
  }
  if (id < 0) {
    Query q(*this, "INSERT INTO metric_names (name) VALUES (?1)");
    q.bind(1, metric).run();
    id = sqlite3_last_insert_rowid(db);
  }
  cache.emplace(metric, id);
  return id;
}

void Impl::insert_metrics(int64_t evaluation, const std::vector<MetricValue>& metrics,
                          std::unordered_map<std::string, int64_t>& cache) {
  if (metrics.size() > 1) {
    std::set<std::string_view> seen;
    for (const auto& m : metrics)
      if (!seen.insert(m.name).second)
        fail("{}: metric '{}' given twice for evaluation {}", name, m.name, evaluation);
  }
  for (const auto& m : metrics) {
    if (m.name.empty()) fail("{}: empty metric name for evaluation {}", name, evaluation);
    const int64_t mid = metric_id(m.name, cache);
    int64_t protocol_id = -1;
    if (!m.protocol.is_null()) {
      const std::string text = m.protocol.dump();
      const std::string hash = hex128(text.data(), text.size());
      {
        Query q(*this, "SELECT id FROM protocols WHERE hash = ?1");
        q.bind(1, hash);
        if (q.step()) protocol_id = q.i64(0);
      }
      if (protocol_id < 0) {
        Query q(*this, "INSERT INTO protocols (hash, json) VALUES (?1, ?2)");
        q.bind(1, hash).bind(2, text).run();
        protocol_id = sqlite3_last_insert_rowid(db);
      }
    }
    Query q(*this,
            "INSERT INTO metrics (metric_id, evaluation_id, value, stderr, n, status, protocol_id) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    q.bind(1, mid).bind(2, evaluation).bind(3, m.value).bind(4, m.stderr_).bind(5, m.n);
    q.bind(6, metric_usable(m) ? std::string_view(m.status) : std::string_view("nan"));
    if (protocol_id >= 0)
      q.bind(7, protocol_id);
    else
      q.bind_null(7);
    q.run();
  }
}

// ---------------------------------------------------------------------------------------------

ResultsDb::ResultsDb(const std::filesystem::path& path) : ResultsDb(path, Options{}) {}

ResultsDb::ResultsDb(const std::filesystem::path& path, const Options& options)
    : impl_(std::make_unique<detail::ResultsDbImpl>()) {
  impl_->path = path;
  impl_->options = options;
  impl_->options.migrations = nullptr;
  impl_->migrations = options.migrations ? *options.migrations : builtin_migrations();
  impl_->open();
}

ResultsDb::~ResultsDb() = default;
ResultsDb::ResultsDb(ResultsDb&&) noexcept = default;
ResultsDb& ResultsDb::operator=(ResultsDb&&) noexcept = default;

const std::filesystem::path& ResultsDb::path() const { return impl_->path; }

int ResultsDb::schema_version() { return static_cast<int>(builtin_migrations().size()); }

int64_t ResultsDb::open_study(const std::string& name, const nlohmann::json& settings,
                              const std::function<void(const nlohmann::json& existing)>& check_existing) {
  Impl& d = *impl_;
  return d.transaction(true, [&] {
    {
      Query q(d, "SELECT id, settings FROM studies WHERE name = ?1");
      q.bind(1, name);
      if (q.step()) {
        const int64_t id = q.i64(0);
        if (check_existing)
          check_existing(parse_json_column(d, q.text_view(1), fmt::format("the settings of study '{}'", name)));
        return id;
      }
    }
    Query q(d, "INSERT INTO studies (name, created_at, settings) VALUES (?1, ?2, ?3)");
    q.bind(1, name).bind(2, now_seconds()).bind(3, settings.dump()).run();
    return static_cast<int64_t>(sqlite3_last_insert_rowid(d.db));
  });
}

bool ResultsDb::delete_study(const std::string& name) {
  Impl& d = *impl_;
  return d.transaction(true, [&] {
    int64_t id = -1;
    {
      Query q(d, "SELECT id FROM studies WHERE name = ?1");
      q.bind(1, name);
      if (!q.step()) return false;
      id = q.i64(0);
    }
    // Metrics first (their cascade from evaluations would visit them one evaluation at a time).
    Query m(d, "DELETE FROM metrics WHERE evaluation_id IN (SELECT id FROM evaluations WHERE study_id = ?1)");
    m.bind(1, id).run();
    Query e(d, "DELETE FROM evaluations WHERE study_id = ?1");
    e.bind(1, id).run();
    Query st(d, "DELETE FROM strategy_state WHERE study_id = ?1");
    st.bind(1, id).run();
    Query s(d, "DELETE FROM studies WHERE id = ?1");
    s.bind(1, id).run();
    return true;
  });
}

nlohmann::json ResultsDb::adopt_study_setting(int64_t study, const std::string& key, const nlohmann::json& value) {
  Impl& d = *impl_;
  return d.transaction(true, [&] {
    nlohmann::json settings;
    {
      Query q(d, "SELECT settings FROM studies WHERE id = ?1");
      q.bind(1, study);
      if (!q.step()) fail("{}: no study with id {}", d.name, study);
      settings = parse_json_column(d, q.text_view(0), fmt::format("the settings of study {}", study));
    }
    if (!settings.is_object()) fail("{}: the settings of study {} are not a JSON object", d.name, study);
    if (settings.contains(key)) return settings.at(key);
    settings[key] = value;
    Query q(d, "UPDATE studies SET settings = ?1 WHERE id = ?2");
    q.bind(1, settings.dump()).bind(2, study).run();
    return value;
  });
}

void ResultsDb::rename_study(const std::string& from, const std::string& to) {
  Impl& d = *impl_;
  if (to.empty()) fail("{}: a study needs a non-empty name", d.name);
  d.transaction(true, [&] {
    {
      Query q(d, "SELECT 1 FROM studies WHERE name = ?1");
      q.bind(1, to);
      if (q.step()) fail("{}: cannot rename study '{}' to '{}': a study of that name exists", d.name, from, to);
    }
    Query q(d, "UPDATE studies SET name = ?1 WHERE name = ?2");
    q.bind(1, to).bind(2, from).run();
    if (sqlite3_changes(d.db) == 0) fail("{}: no study '{}'", d.name, from);
  });
}

namespace {

void add_count(const Impl& d, StatusCounts& counts, std::string_view status, int64_t n) {
  switch (d.status(status)) {
    case EvalStatus::claimed:
      counts.claimed += n;
      break;
    case EvalStatus::done:
      counts.done += n;
      break;
    case EvalStatus::failed:
      counts.failed += n;
      break;
    case EvalStatus::nan:
      counts.nan += n;
      break;
    case EvalStatus::pruned:
      counts.pruned += n;
      break;
  }
}

}  // namespace

std::optional<StudyInfo> ResultsDb::find_study(const std::string& name) const {
  Impl& d = *impl_;
  return d.transaction(false, [&]() -> std::optional<StudyInfo> {
    StudyInfo s;
    {
      Query q(d, "SELECT id, name, created_at, settings FROM studies WHERE name = ?1");
      q.bind(1, name);
      if (!q.step()) return std::nullopt;
      s.id = q.i64(0);
      s.name = q.text(1);
      s.created_at = q.f64(2);
      s.settings = parse_json_column(d, q.text_view(3), fmt::format("the settings of study '{}'", s.name));
    }
    Query q(d, "SELECT status, count(*) FROM evaluations WHERE study_id = ?1 GROUP BY status");
    q.bind(1, s.id);
    while (q.step()) add_count(d, s.counts, q.text_view(0), q.i64(1));
    return s;
  });
}

std::vector<StudyInfo> ResultsDb::studies() const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    std::vector<StudyInfo> out;
    std::unordered_map<int64_t, size_t> index;
    {
      Query q(d, "SELECT id, name, created_at, settings FROM studies ORDER BY name");
      while (q.step()) {
        StudyInfo s;
        s.id = q.i64(0);
        s.name = q.text(1);
        s.created_at = q.f64(2);
        s.settings = parse_json_column(d, q.text_view(3), fmt::format("the settings of study '{}'", s.name));
        index[s.id] = out.size();
        out.push_back(std::move(s));
      }
    }
    Query q(d, "SELECT study_id, status, count(*) FROM evaluations GROUP BY study_id, status");
    while (q.step())
      if (auto it = index.find(q.i64(0)); it != index.end())
        add_count(d, out[it->second].counts, q.text_view(1), q.i64(2));
    return out;
  });
}

int64_t ResultsDb::add_model(const ModelInfo& model) {
  Impl& d = *impl_;
  if (model.hash.empty()) fail("{}: a model needs a content hash", d.name);
  return d.transaction(true, [&] {
    Query q(d,
            "INSERT INTO models (hash, path, architecture, n_params) VALUES (?1, ?2, ?3, ?4) "
            "ON CONFLICT (hash) DO UPDATE SET path = excluded.path WHERE excluded.path <> ''");
    q.bind(1, model.hash).bind(2, model.path).bind(3, model.architecture).bind(4, model.n_params).run();
    Query id(d, "SELECT id FROM models WHERE hash = ?1");
    id.bind(1, model.hash);
    RS_ASSERT(id.step());
    return id.i64(0);
  });
}

std::vector<ModelInfo> ResultsDb::models() const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    std::vector<ModelInfo> out;
    Query q(d, "SELECT hash, path, architecture, n_params FROM models ORDER BY id");
    while (q.step()) out.push_back({q.text(0), q.text(1), q.text(2), q.i64(3)});
    return out;
  });
}

std::optional<int64_t> ResultsDb::claim(int64_t study, int64_t model, std::string_view config,
                                        std::string_view worker, double stale_after_seconds, int64_t budget) {
  Impl& d = *impl_;
  return d.transaction(true, [&]() -> std::optional<int64_t> {
    const double now = now_seconds();
    const int64_t cid = d.config_id(config, true);
    if (budget >= 0) {
      // Finished evaluations plus the live claims of other configurations, under the write lock:
      // two workers can never both take the last slot.
      int64_t used = 0;
      {
        Query q(d, "SELECT count(*) FROM evaluations WHERE study_id = ?1 AND status <> 'claimed'");
        q.bind(1, study);
        q.step();
        used = q.i64(0);
      }
      Query q(d,
              "SELECT worker, heartbeat_at FROM evaluations WHERE study_id = ?1 AND status = 'claimed' AND "
              "configuration_id <> ?2");
      q.bind(1, study).bind(2, cid);
      while (q.step()) {
        ClaimInfo other;
        other.worker = q.text(0);
        other.heartbeat_at = q.f64(1);
        if (!claim_is_stale(other, now, stale_after_seconds)) ++used;
      }
      if (used >= budget) return std::nullopt;
    }
    {
      Query q(d,
              "SELECT id, status, heartbeat_at, worker FROM evaluations WHERE study_id = ?1 AND "
              "configuration_id = ?2");
      q.bind(1, study).bind(2, cid);
      if (q.step()) {
        const int64_t existing = q.i64(0);
        if (q.text_view(1) != "claimed") return std::nullopt;
        ClaimInfo held;
        held.heartbeat_at = q.f64(2);
        held.worker = q.text(3);
        if (!claim_is_stale(held, now, stale_after_seconds)) return std::nullopt;
        // A stale claim: its worker is presumed dead; the new claim gets a new id.
        Query del(d, "DELETE FROM evaluations WHERE id = ?1");
        del.bind(1, existing).run();
      }
    }
    Query q(
        d,
        "INSERT INTO evaluations (study_id, configuration_id, model_id, status, worker, host, claimed_at, "
        "heartbeat_at) VALUES (?1, ?2, ?3, 'claimed', ?4, ?5, ?6, ?6)");
    q.bind(1, study).bind(2, cid).bind(3, model).bind(4, worker).bind(5, host_of(worker)).bind(6, now).run();
    return static_cast<int64_t>(sqlite3_last_insert_rowid(d.db));
  });
}

bool ResultsDb::heartbeat(int64_t evaluation) {
  Impl& d = *impl_;
  return d.transaction(true, [&] {
    Query q(d, "UPDATE evaluations SET heartbeat_at = ?1 WHERE id = ?2 AND status = 'claimed'");
    q.bind(1, now_seconds()).bind(2, evaluation).run();
    return sqlite3_changes(d.db) > 0;
  });
}

bool ResultsDb::release(int64_t evaluation) {
  Impl& d = *impl_;
  return d.transaction(true, [&] {
    Query q(d, "DELETE FROM evaluations WHERE id = ?1 AND status = 'claimed'");
    q.bind(1, evaluation).run();
    return sqlite3_changes(d.db) > 0;
  });
}

bool ResultsDb::complete(int64_t evaluation, const std::vector<MetricValue>& metrics, EvalStatus status,
                         double wall_s, const std::string& error) {
  Impl& d = *impl_;
  if (!is_finished(status))
    fail("{}: evaluation {} cannot be completed with status 'claimed'", d.name, evaluation);
  return d.transaction(true, [&] {
    const double now = now_seconds();
    {
      Query q(
          d,
          "UPDATE evaluations SET status = ?1, finished_at = ?2, heartbeat_at = ?2, wall_s = ?3, error = ?4 "
          "WHERE id = ?5 AND status = 'claimed'");
      q.bind(1, status_name(settled_status(status, metrics))).bind(2, now).bind(3, wall_s);
      if (error.empty())
        q.bind_null(4);
      else
        q.bind(4, error);
      q.bind(5, evaluation).run();
      if (sqlite3_changes(d.db) == 0) return false;  // taken over or released: ignore the late result
    }
    std::unordered_map<std::string, int64_t> cache;
    d.insert_metrics(evaluation, metrics, cache);
    return true;
  });
}

int64_t ResultsDb::add_evaluations(int64_t study, int64_t model,
                                   const std::vector<NewEvaluation>& evaluations, std::string_view worker) {
  Impl& d = *impl_;
  for (const auto& e : evaluations)
    if (!is_finished(e.status))
      fail("{}: add_evaluations takes finished evaluations only ('{}' is claimed)", d.name, e.config);
  const std::string worker_text = worker.empty() ? worker_id() : std::string(worker);
  const std::string host = host_of(worker_text);
  return d.transaction(true, [&] {
    const double now = now_seconds();
    std::unordered_map<std::string, int64_t> cache;
    int64_t inserted = 0;
    for (const auto& e : evaluations) {
      const int64_t cid = d.config_id(e.config, true);
      {
        Query q(d, "SELECT 1 FROM evaluations WHERE study_id = ?1 AND configuration_id = ?2");
        q.bind(1, study).bind(2, cid);
        if (q.step()) continue;
      }
      Query q(
          d,
          "INSERT INTO evaluations (study_id, configuration_id, model_id, status, worker, host, claimed_at, "
          "heartbeat_at, finished_at, wall_s, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7, ?8, ?9)");
      q.bind(1, study).bind(2, cid).bind(3, model).bind(4, status_name(settled_status(e.status, e.metrics)));
      q.bind(5, worker_text);
      q.bind(6, host).bind(7, now).bind(8, e.wall_s);
      if (e.error.empty())
        q.bind_null(9);
      else
        q.bind(9, e.error);
      q.run();
      d.insert_metrics(sqlite3_last_insert_rowid(d.db), e.metrics, cache);
      ++inserted;
    }
    return inserted;
  });
}

std::optional<EvalStatus> ResultsDb::status_of(int64_t study, std::string_view config) const {
  Impl& d = *impl_;
  return d.transaction(false, [&]() -> std::optional<EvalStatus> {
    Query q(d,
            "SELECT e.status FROM evaluations e JOIN configurations c ON c.id = e.configuration_id "
            "WHERE e.study_id = ?1 AND c.canonical = ?2");
    q.bind(1, study).bind(2, config);
    if (!q.step()) return std::nullopt;
    return d.status(q.text_view(0));
  });
}

StatusCounts ResultsDb::counts(int64_t study) const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    StatusCounts counts;
    Query q(d, "SELECT status, count(*) FROM evaluations WHERE study_id = ?1 GROUP BY status");
    q.bind(1, study);
    while (q.step()) add_count(d, counts, q.text_view(0), q.i64(1));
    return counts;
  });
}

std::vector<std::string> ResultsDb::metric_names() const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    std::vector<std::string> out;
    Query q(d, "SELECT name FROM metric_names ORDER BY name");
    while (q.step()) out.push_back(q.text(0));
    return out;
  });
}

std::vector<ClaimInfo> ResultsDb::claims(int64_t study) const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    std::vector<ClaimInfo> out;
    Query q(d,
            "SELECT e.id, c.canonical, e.worker, e.claimed_at, e.heartbeat_at FROM evaluations e "
            "JOIN configurations c ON c.id = e.configuration_id WHERE e.study_id = ?1 AND e.status = 'claimed' "
            "ORDER BY e.id");
    q.bind(1, study);
    while (q.step()) out.push_back({q.i64(0), q.text(1), q.text(2), q.f64(3), q.f64(4)});
    return out;
  });
}

// Evaluations of the study (from the covering index (study_id, status, configuration_id) joined
// with configurations), sorted by id; then one scan of metrics' primary key (metric_id,
// evaluation_id) per metric over the study's id range, merge-joined in id order.
MetricRows ResultsDb::metric_rows(int64_t study, const std::vector<std::string>& metrics) const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    MetricRows out;
    out.metrics = metrics;
    struct Row {
      int64_t id;
      EvalStatus status;
      std::string config;
    };
    std::vector<Row> rows;
    {
      Query q(d,
              "SELECT e.id, e.status, c.canonical FROM evaluations e JOIN configurations c "
              "ON c.id = e.configuration_id WHERE e.study_id = ?1 AND e.status <> 'claimed'");
      q.bind(1, study);
      while (q.step()) rows.push_back({q.i64(0), d.status(q.text_view(1)), q.text(2)});
    }
    const bool sorted =
        std::is_sorted(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.id < b.id; });
    if (!sorted) std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.id < b.id; });
    const size_t n = rows.size();
    out.evaluation_ids.reserve(n);
    out.configs.reserve(n);
    out.statuses.reserve(n);
    for (auto& r : rows) {
      out.evaluation_ids.push_back(r.id);
      out.statuses.push_back(r.status);
      out.configs.push_back(std::move(r.config));
    }
    rows = {};
    out.rows.assign(n, std::vector<double>(metrics.size(), kNaN));
    if (n == 0) return out;
    for (size_t j = 0; j < metrics.size(); ++j) {
      int64_t mid = -1;
      {
        Query q(d, "SELECT id FROM metric_names WHERE name = ?1");
        q.bind(1, metrics[j]);
        if (q.step()) mid = q.i64(0);
      }
      if (mid < 0) continue;
      Query q(
          d,
          "SELECT evaluation_id, value FROM metrics WHERE metric_id = ?1 AND evaluation_id BETWEEN ?2 AND ?3 "
          "ORDER BY evaluation_id");
      q.bind(1, mid).bind(2, out.evaluation_ids.front()).bind(3, out.evaluation_ids.back());
      size_t i = 0;
      while (q.step()) {
        const int64_t id = q.i64(0);
        while (i < n && out.evaluation_ids[i] < id) ++i;
        if (i == n) break;
        if (out.evaluation_ids[i] == id) out.rows[i][j] = q.f64(1);
      }
    }
    return out;
  });
}

namespace {

// The rows of for_each_evaluation, inside a read transaction.
void visit_all(Impl& d, int64_t study, const std::function<void(const EvaluationRecord&)>& visit) {
  std::unordered_map<int64_t, nlohmann::json> protocols;
  Query e(d,
          "SELECT e.id, c.canonical, c.hash, m.hash, e.status, e.worker, e.host, e.error, e.claimed_at, "
          "e.heartbeat_at, e.finished_at, e.wall_s FROM evaluations e "
          "JOIN configurations c ON c.id = e.configuration_id JOIN models m ON m.id = e.model_id "
          "WHERE e.study_id = ?1 ORDER BY e.id");
  e.bind(1, study);
  EvaluationRecord r;
  while (e.step()) {
    r.id = e.i64(0);
    r.config = e.text(1);
    r.config_hash = e.text(2);
    r.model_hash = e.text(3);
    r.status = d.status(e.text_view(4));
    r.worker = e.text(5);
    r.host = e.text(6);
    r.error = e.text(7);
    r.claimed_at = e.f64(8);
    r.heartbeat_at = e.f64(9);
    r.finished_at = e.f64(10);
    r.wall_s = e.f64(11);
    r.metrics.clear();
    Query m(d,
            "SELECT n.name, m.value, m.stderr, m.n, m.status, m.protocol_id FROM metrics m "
            "JOIN metric_names n ON n.id = m.metric_id WHERE m.evaluation_id = ?1 ORDER BY n.name");
    m.bind(1, r.id);
    while (m.step()) {
      MetricValue v;
      v.name = m.text(0);
      v.value = m.f64(1);
      v.stderr_ = m.f64(2);
      v.n = m.i64(3);
      v.status = m.text(4);
      if (!m.is_null(5)) {
        const int64_t pid = m.i64(5);
        auto it = protocols.find(pid);
        if (it == protocols.end()) {
          Query p(d, "SELECT json FROM protocols WHERE id = ?1");
          p.bind(1, pid);
          nlohmann::json json;
          if (p.step()) json = parse_json_column(d, p.text_view(0), fmt::format("protocol {}", pid));
          it = protocols.emplace(pid, std::move(json)).first;
        }
        v.protocol = it->second;
      }
      r.metrics.push_back(std::move(v));
    }
    visit(r);
  }
}

}  // namespace

void ResultsDb::for_each_evaluation(int64_t study,
                                    const std::function<void(const EvaluationRecord&)>& visit) const {
  Impl& d = *impl_;
  // Start a read snapshot (retried: only its first read can meet a lock); after that, reads
  // never wait in WAL mode, and visit is never called twice for one evaluation.
  d.retry([&] {
    d.exec("BEGIN");
    try {
      Query q(d, "SELECT count(*) FROM studies");
      q.step();
    } catch (...) {
      d.rollback_if_open();
      throw;
    }
  });
  try {
    visit_all(d, study, visit);
    d.exec("COMMIT");
  } catch (const Busy&) {
    d.rollback_if_open();
    fail("{}: database locked while reading evaluations of study {}", d.name, study);
  } catch (...) {
    d.rollback_if_open();
    throw;
  }
}

void ResultsDb::save_strategy_state(int64_t study, const nlohmann::json& state) {
  Impl& d = *impl_;
  d.transaction(true, [&] {
    Query q(d,
            "INSERT INTO strategy_state (study_id, state, updated_at) VALUES (?1, ?2, ?3) "
            "ON CONFLICT (study_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at");
    q.bind(1, study).bind(2, state.dump()).bind(3, now_seconds()).run();
  });
}

std::optional<nlohmann::json> ResultsDb::load_strategy_state(int64_t study) const {
  Impl& d = *impl_;
  return d.transaction(false, [&]() -> std::optional<nlohmann::json> {
    Query q(d, "SELECT state FROM strategy_state WHERE study_id = ?1");
    q.bind(1, study);
    if (!q.step()) return std::nullopt;
    return parse_json_column(d, q.text_view(0), fmt::format("the strategy state of study {}", study));
  });
}

std::string ResultsDb::integrity_check() const {
  Impl& d = *impl_;
  return d.transaction(false, [&] {
    std::string problems;
    {
      Query q(d, "PRAGMA integrity_check");
      while (q.step()) {
        const std::string line = q.text(0);
        if (line != "ok") problems += line + "\n";
      }
    }
    Query q(d, "PRAGMA foreign_key_check");
    while (q.step())
      problems += fmt::format("foreign key violation: {} row {} -> {}\n", q.text(0), q.i64(1), q.text(2));
    if (problems.empty()) return std::string("ok");
    problems.pop_back();
    return problems;
  });
}

}  // namespace rankscope
