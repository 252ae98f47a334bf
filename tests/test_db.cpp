// The results database on real SQLite files and real processes (fork): schema and versioning,
// refusal of foreign files without touching them, the claim protocol, metrics with NaN, concurrent
// workers, and a writer killed with SIGKILL.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sqlite3.h>

#include "core/base/error.hpp"
#include "db/results_db.hpp"
#include "tests/test_support.hpp"

namespace fs = std::filesystem;
using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

const double NaN = std::numeric_limits<double>::quiet_NaN();

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Raw SQLite access, independent of ResultsDb.
void raw_exec(const fs::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message);
  const std::string text = message ? message : "";
  sqlite3_free(message);
  sqlite3_close(db);
  INFO(text);
  REQUIRE(rc == SQLITE_OK);
}

// The first column of every row of `sql`, as text ("NULL" for NULL).
std::vector<std::string> raw_query(const fs::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  std::vector<std::string> out;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    out.push_back(p ? p : "NULL");
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_DONE);
  return out;
}

std::string raw_one(const fs::path& path, const std::string& sql) {
  auto rows = raw_query(path, sql);
  REQUIRE(rows.size() == 1);
  return rows[0];
}

// Runs body in a child process; its exit code is body's return value (1 and a message on stderr
// for an exception). No ResultsDb may be open in the parent across the fork.
pid_t spawn(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 1;
    try {
      code = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %d: %s\n", static_cast<int>(getpid()), e.what());
    }
    std::fflush(nullptr);
    _exit(code);
  }
  return pid;
}

int wait_exit_code(pid_t pid) {
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

ModelInfo test_model() { return {"0123456789abcdef0123456789abcdef", "/models/m", "llama", 1000}; }

// Expects `open` to throw an Error mentioning the file and `reason`, on one line, with the file's
// bytes unchanged.
std::set<std::string> list_dir(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.insert(entry.path().filename().string());
  return names;
}

void require_refused(const fs::path& path, const std::string& reason) {
  const std::string before = read_bytes(path);
  const auto files_before = list_dir(path.parent_path());
  try {
    ResultsDb db(path);
    FAIL("opened " << path << " without an error");
  } catch (const Error& e) {
    const std::string message = e.what();
    INFO(message);
    CHECK_THAT(message, Contains(path.string()));
    CHECK_THAT(message, Contains(reason));
    CHECK(message.find('\n') == std::string::npos);
  }
  CHECK(read_bytes(path) == before);
  // No -wal/-shm/-journal left beside it. (Side files another program left there may go: the
  // refusing connection, the last one to close, checkpoints an empty WAL and removes both.)
  const auto files_after = list_dir(path.parent_path());
  CHECK(std::includes(files_before.begin(), files_before.end(), files_after.begin(), files_after.end()));
  CHECK(files_after.count(path.filename().string()) == 1);
}

}  // namespace

TEST_CASE("db: create, reopen and schema version") {
  const auto dir = test::scratch_dir("db_create");
  const auto path = dir / "results.db";
  int64_t study = 0;
  {
    ResultsDb db(path);
    CHECK(db.path() == path);
    study = db.open_study("s1", {{"model", "/models/m"}, {"space", "paper"}});
    CHECK(db.open_study("s1", {{"other", 1}}) == study);  // existing: same id, settings kept
    db.save_strategy_state(study, {{"generation", 3}});
  }
  REQUIRE(fs::exists(path));
  CHECK(raw_one(path, "PRAGMA application_id") == std::to_string(kResultsDbApplicationId));
  CHECK(raw_one(path, "PRAGMA user_version") == std::to_string(ResultsDb::schema_version()));
  CHECK(ResultsDb::schema_version() == 2);
  CHECK(raw_one(path, "PRAGMA journal_mode") == "wal");
  const auto tables = raw_query(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
  for (const char* t : {"configurations", "evaluations", "metric_names", "metrics", "models", "protocols",
                        "strategy_state", "studies"})
    CHECK(std::find(tables.begin(), tables.end(), t) != tables.end());

  ResultsDb db(path);  // reopen
  auto info = db.find_study("s1");
  REQUIRE(info);
  CHECK(info->id == study);
  CHECK(info->settings["space"] == "paper");
  CHECK(!info->settings.contains("other"));
  CHECK(info->created_at > 1.6e9);
  CHECK(db.load_strategy_state(study) == nlohmann::json{{"generation", 3}});
  db.save_strategy_state(study, {{"generation", 4}});
  CHECK(db.load_strategy_state(study) == nlohmann::json{{"generation", 4}});
  CHECK(!db.load_strategy_state(study + 1));
  CHECK(!db.find_study("nope"));
  CHECK(db.integrity_check() == "ok");

  // An empty existing file is a new database.
  const auto empty = dir / "empty.db";
  write_bytes(empty, "");
  { ResultsDb e(empty); }
  CHECK(raw_one(empty, "PRAGMA user_version") == "2");

  // Moving keeps the connection.
  ResultsDb moved = std::move(db);
  CHECK(moved.find_study("s1"));

  // A missing directory: one-line error naming the file.
  const auto bad = dir / "no" / "such" / "dir.db";
  CHECK_THROWS_WITH(ResultsDb(bad), Contains(bad.string()));
}

TEST_CASE("db: foreign and newer files are refused untouched") {
  const auto dir = test::scratch_dir("db_foreign");

  SECTION("a text file") {
    const auto path = dir / "notes.txt";
    write_bytes(path, "these are not the results you are looking for\n");
    require_refused(path, "not an SQLite file");
  }
  SECTION("a short binary file") {
    const auto path = dir / "short.bin";
    write_bytes(path, std::string("SQLite", 6));
    require_refused(path, "not an SQLite file");
  }
  SECTION("an SQLite file of another application (tables, no application_id)") {
    const auto path = dir / "other.db";
    raw_exec(
        path,
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'x');");
    require_refused(path, "another application");
    CHECK(!fs::exists(dir / "other.db-wal"));
  }
  SECTION("an SQLite file with another application_id") {
    const auto path = dir / "appid.db";
    raw_exec(path, "PRAGMA application_id = 1234;");
    require_refused(path, "application_id 0x000004d2");
  }
  SECTION("an SQLite file in WAL mode of another application") {
    const auto path = dir / "otherwal.db";
    raw_exec(path, "PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    require_refused(path, "another application");
  }
  SECTION("a rankscope database with a newer schema") {
    const auto path = dir / "newer.db";
    {
      ResultsDb db(path);
      db.open_study("s", {});
    }
    raw_exec(path, "PRAGMA user_version = 7;");
    require_refused(path, "schema version 7, newer than this rankscope supports (2)");
    // A reader (which reads an older file as it is) refuses a newer one too.
    ResultsDb::Options reader;
    reader.create = false;
    CHECK_THROWS_WITH(ResultsDb(path, reader), Contains("schema version 7, newer than this rankscope supports (2)"));
    CHECK(raw_one(path, "PRAGMA user_version") == "7");
  }
}

TEST_CASE("db: migrations run in one transaction") {
  const auto dir = test::scratch_dir("db_migrate");
  const auto path = dir / "results.db";
  {
    ResultsDb db(path);
    db.open_study("kept", {{"a", 1}});
  }
  // Version 2 -> 3 with an extra step.
  // Steps 0 and 1 are never run on a version-2 file, so placeholders stand for the real ones.
  std::vector<std::string> steps = {"", "", "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);"};
  {
    ResultsDb::Options options;
    options.migrations = &steps;
    ResultsDb db(path, options);
    CHECK(db.find_study("kept"));
  }
  CHECK(raw_one(path, "PRAGMA user_version") == "3");
  CHECK(raw_one(path, "SELECT count(*) FROM sqlite_master WHERE name = 'notes'") == "1");
  // This build (version 2) now refuses the file.
  require_refused(path, "schema version 3, newer than this rankscope supports (2)");

  // A failing step rolls the whole upgrade back: version and tables as before.
  const auto path2 = dir / "results2.db";
  { ResultsDb db(path2); }
  std::vector<std::string> failing = {"", "", "CREATE TABLE extra (x);", "CREATE TABLE studies (x);"};
  ResultsDb::Options options;
  options.migrations = &failing;
  CHECK_THROWS_WITH(ResultsDb(path2, options), Contains(path2.string()) && Contains("from version 3 to 4"));
  CHECK(raw_one(path2, "PRAGMA user_version") == "2");
  CHECK(raw_one(path2, "SELECT count(*) FROM sqlite_master WHERE name = 'extra'") == "0");
}

TEST_CASE("db: claim protocol") {
  const auto dir = test::scratch_dir("db_claim");
  ResultsDb db(dir / "results.db");
  const int64_t study = db.open_study("s", {});
  const int64_t other = db.open_study("t", {});
  const int64_t model = db.add_model(test_model());
  CHECK(db.add_model(test_model()) == model);

  auto a = db.claim(study, model, "L0:q=1", "hostA:1", 3600);
  REQUIRE(a);
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::claimed);
  CHECK(!db.status_of(study, "L1:q=1"));
  // A live claim is refused to anybody, the same worker included.
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 3600));
  CHECK(!db.claim(study, model, "L0:q=1", "hostA:1", 3600));
  // Another study may claim the same configuration.
  auto in_other = db.claim(other, model, "L0:q=1", "hostB:2", 3600);
  REQUIRE(in_other);
  CHECK(*in_other != *a);
  CHECK(db.heartbeat(*a));

  // Stale claim taken over: a new id; the old one is dead for heartbeat and complete.
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 10));  // 60 ms old is not 10 s stale
  auto b = db.claim(study, model, "L0:q=1", "hostB:2", 0.03);
  REQUIRE(b);
  CHECK(*b != *a);
  CHECK(!db.heartbeat(*a));
  CHECK(!db.complete(*a, {{"x.y", 1.0}}, EvalStatus::done, 1.0));  // late result ignored
  CHECK(!db.release(*a));
  CHECK(db.counts(study).claimed == 1);
  CHECK(db.counts(study).total() == 1);
  {
    std::vector<EvaluationRecord> records;
    db.for_each_evaluation(study, [&](const EvaluationRecord& r) { records.push_back(r); });
    REQUIRE(records.size() == 1);
    CHECK(records[0].id == *b);
    CHECK(records[0].worker == "hostB:2");
    CHECK(records[0].host == "hostB");
    CHECK(records[0].metrics.empty());
  }

  // Release (Ctrl-C): the configuration is free again at once.
  CHECK(db.release(*b));
  CHECK(!db.status_of(study, "L0:q=1"));
  auto c = db.claim(study, model, "L0:q=1", "hostC:3", 3600);
  REQUIRE(c);
  CHECK(*c > *b);  // ids are never reused

  // Finished configurations are never claimed again, however stale.
  REQUIRE(db.complete(*c, {{"x.y", 2.0}}, EvalStatus::done, 0.5));
  CHECK(!db.claim(study, model, "L0:q=1", "hostD:4", 0));
  CHECK(!db.complete(*c, {{"x.y", 3.0}}, EvalStatus::done, 0.5));  // second completion ignored
  CHECK(!db.release(*c));
  CHECK(!db.heartbeat(*c));
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::done);
  auto failed = db.claim(study, model, "L2:q=1", "hostA:1", 3600);
  REQUIRE(failed);
  REQUIRE(db.complete(*failed, {}, EvalStatus::failed, 0.1, "out of memory"));
  CHECK(!db.claim(study, model, "L2:q=1", "hostA:1", 0));
  const auto counts = db.counts(study);
  CHECK(counts.done == 1);
  CHECK(counts.failed == 1);
  CHECK(counts.claimed == 0);
  // Exactly one x.y row for c: the ignored completions wrote nothing.
  CHECK(raw_one(dir / "results.db", "SELECT count(*) FROM metrics") == "1");

  CHECK_THROWS_WITH(db.complete(*in_other, {}, EvalStatus::claimed, 0), Contains("results.db"));
  CHECK_THROWS_WITH(db.complete(*in_other, {{"a.b", 1.0}, {"a.b", 2.0}}, EvalStatus::done, 0),
                    Contains("'a.b' given twice"));
  CHECK(db.status_of(other, "L0:q=1") == EvalStatus::claimed);  // the failed complete rolled back

  const auto studies = db.studies();
  REQUIRE(studies.size() == 2);
  CHECK(studies[0].name == "s");
  CHECK(studies[0].counts.done == 1);
  CHECK(studies[1].counts.claimed == 1);
  CHECK(worker_id().find(':') != std::string::npos);
  CHECK(worker_id().substr(worker_id().rfind(':') + 1) == std::to_string(getpid()));
  CHECK(config_hash("L0:q=1").size() == 32);
  CHECK(config_hash("L0:q=1") != config_hash("L0:q=2"));
}

TEST_CASE("db: complete stores metrics, NULL for NaN, and protocols once") {
  const auto dir = test::scratch_dir("db_complete");
  const auto path = dir / "results.db";
  ResultsDb db(path);
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  const nlohmann::json protocol = {{"task", "tinystories"}, {"tokens", 4096}};

  auto a = db.claim(study, model, "L*:all=50%", worker_id(), 3600);
  REQUIRE(a);
  MetricValue ppl{"tinystories.ppl", 12.5, 0.25, 4096, "ok", protocol};
  MetricValue nll{"tinystories.nll", NaN, NaN, 4096, "nan", protocol};
  MetricValue size{"size.params", 123456, NaN, 0, "ok", nullptr};
  REQUIRE(db.complete(*a, {ppl, nll, size}, EvalStatus::nan, 2.5));
  CHECK(db.status_of(study, "L*:all=50%") == EvalStatus::nan);

  const auto id = std::to_string(*a);
  CHECK(raw_one(path,
                "SELECT value FROM metrics m JOIN metric_names n ON n.id = m.metric_id WHERE n.name = "
                "'tinystories.nll'") == "NULL");
  CHECK(raw_one(path,
                "SELECT stderr FROM metrics m JOIN metric_names n ON n.id = m.metric_id WHERE n.name = "
                "'tinystories.nll'") == "NULL");
  CHECK(raw_one(path,
                "SELECT status FROM metrics m JOIN metric_names n ON n.id = m.metric_id WHERE n.name = "
                "'tinystories.nll'") == "nan");
  CHECK(raw_one(path,
                "SELECT value FROM metrics m JOIN metric_names n ON n.id = m.metric_id WHERE n.name = "
                "'tinystories.ppl'") == "12.5");
  CHECK(raw_one(path, "SELECT status FROM evaluations WHERE id = " + id) == "nan");
  CHECK(raw_one(path, "SELECT wall_s FROM evaluations WHERE id = " + id) == "2.5");
  CHECK(raw_one(path, "SELECT finished_at IS NOT NULL FROM evaluations WHERE id = " + id) == "1");
  CHECK(raw_one(path, "SELECT count(*) FROM protocols") == "1");
  CHECK(raw_one(path, "SELECT count(*) FROM metrics WHERE protocol_id IS NULL") == "1");

  std::vector<EvaluationRecord> records;
  db.for_each_evaluation(study, [&](const EvaluationRecord& r) { records.push_back(r); });
  REQUIRE(records.size() == 1);
  const auto& r = records[0];
  CHECK(r.config == "L*:all=50%");
  CHECK(r.config_hash == config_hash("L*:all=50%"));
  CHECK(r.model_hash == test_model().hash);
  CHECK(r.status == EvalStatus::nan);
  CHECK(r.wall_s == 2.5);
  CHECK(r.error.empty());
  REQUIRE(r.metrics.size() == 3);  // sorted by name
  CHECK(r.metrics[0].name == "size.params");
  CHECK(r.metrics[0].protocol.is_null());
  CHECK(r.metrics[1].name == "tinystories.nll");
  CHECK(std::isnan(r.metrics[1].value));
  CHECK(std::isnan(r.metrics[1].stderr_));
  CHECK(r.metrics[1].status == "nan");
  CHECK(r.metrics[2].value == 12.5);
  CHECK(r.metrics[2].stderr_ == 0.25);
  CHECK(r.metrics[2].n == 4096);
  CHECK(r.metrics[2].protocol == protocol);

  auto rows = db.metric_rows(study, {"tinystories.ppl", "tinystories.nll", "missing.metric"});
  REQUIRE(rows.evaluation_ids.size() == 1);
  CHECK(rows.rows[0][0] == 12.5);
  CHECK(std::isnan(rows.rows[0][1]));
  CHECK(std::isnan(rows.rows[0][2]));
  CHECK(rows.statuses[0] == EvalStatus::nan);
}

TEST_CASE("db: metric_rows over 20000 evaluations") {
  const auto dir = test::scratch_dir("db_rows");
  ResultsDb db(dir / "results.db");
  const int64_t study = db.open_study("big", {});
  const int64_t noise = db.open_study("noise", {});
  const int64_t model = db.add_model(test_model());
  const int n = 20000;
  auto config = [](int i) { return "L" + std::to_string(i % 32) + ":q,k=" + std::to_string(1 + i / 32); };
  std::vector<NewEvaluation> batch, noise_batch;
  for (int i = 0; i < n; ++i) {
    NewEvaluation e;
    e.config = config(i);
    e.status = i % 97 == 0 ? EvalStatus::failed : EvalStatus::done;
    e.metrics.push_back({"task.ppl", i % 101 == 0 ? NaN : 10.0 + i, NaN, 10, "ok", nullptr});
    if (i % 3 != 0) e.metrics.push_back({"size.params", 1.0e6 - i, NaN, 0, "ok", nullptr});
    batch.push_back(std::move(e));
    if (i % 5 == 0)
      noise_batch.push_back({config(i), EvalStatus::done, {{"task.ppl", -1.0}, {"size.params", -1.0}}});
    if (batch.size() == 5000) {  // interleave the two studies' ids
      CHECK(db.add_evaluations(study, model, batch) == 5000);
      CHECK(db.add_evaluations(noise, model, noise_batch) == static_cast<int64_t>(noise_batch.size()));
      batch.clear();
      noise_batch.clear();
    }
  }
  // Already present: skipped.
  CHECK(db.add_evaluations(study, model, {{config(7), EvalStatus::done, {{"task.ppl", 0.0}}}}) == 0);
  REQUIRE(db.claim(study, model, "L0:all=1", "h:1", 3600));  // claims are not rows

  const auto start = std::chrono::steady_clock::now();
  const auto rows = db.metric_rows(study, {"task.ppl", "size.params"});
  WARN("metric_rows, 20000 evaluations x 2 metrics: " << seconds_since(start) * 1e3 << " ms");
  REQUIRE(rows.evaluation_ids.size() == static_cast<size_t>(n));
  REQUIRE(rows.rows.size() == static_cast<size_t>(n));
  REQUIRE(rows.configs.size() == static_cast<size_t>(n));
  CHECK(std::is_sorted(rows.evaluation_ids.begin(), rows.evaluation_ids.end()));
  int mismatches = 0;
  for (int i = 0; i < n; ++i) {
    const auto& row = rows.rows[static_cast<size_t>(i)];
    const double ppl = i % 101 == 0 ? NaN : 10.0 + i;
    const double params = i % 3 != 0 ? 1.0e6 - i : NaN;
    const bool ok =
        rows.configs[static_cast<size_t>(i)] == config(i) &&
        (std::isnan(ppl) ? std::isnan(row[0]) : row[0] == ppl) &&
        (std::isnan(params) ? std::isnan(row[1]) : row[1] == params) &&
        rows.statuses[static_cast<size_t>(i)] == (i % 97 == 0 ? EvalStatus::failed : EvalStatus::done);
    if (!ok) ++mismatches;
  }
  CHECK(mismatches == 0);
  const auto counts = db.counts(study);
  CHECK(counts.claimed == 1);
  CHECK(counts.failed == (n + 96) / 97);
  CHECK(counts.done == n - counts.failed);
  CHECK(db.counts(noise).done == n / 5);
}

TEST_CASE("db: two processes claim 200 configurations, each exactly once") {
  const auto dir = test::scratch_dir("db_concurrent");
  const auto path = dir / "results.db";  // created by the workers themselves, concurrently
  const int n_configs = 200, n_workers = 2;
  auto config = [](int i) { return "L" + std::to_string(i) + ":mlp=25%"; };
  std::vector<pid_t> pids;
  for (int w = 0; w < n_workers; ++w) {
    pids.push_back(spawn([&, w] {
      ResultsDb db(path);
      const int64_t study = db.open_study("race", {{"space", "paper"}});
      const int64_t model = db.add_model(test_model());
      const std::string me = worker_id();
      std::ofstream claimed(dir / ("claimed." + std::to_string(w)));
      for (int i = 0; i < n_configs; ++i) {
        auto id = db.claim(study, model, config(i), me, 3600);
        if (!id) continue;
        claimed << config(i) << "\n" << std::flush;
        std::vector<MetricValue> metrics = {{"task.ppl", 10.0 + i}, {"size.params", 1000.0 - i}};
        if (!db.complete(*id, metrics, EvalStatus::done, 0.001)) return 3;
      }
      return 0;
    }));
  }
  for (pid_t pid : pids) CHECK(wait_exit_code(pid) == 0);

  std::multiset<std::string> all;
  for (int w = 0; w < n_workers; ++w) {
    std::ifstream in(dir / ("claimed." + std::to_string(w)));
    int mine = 0;
    for (std::string line; std::getline(in, line);) {
      all.insert(line);
      ++mine;
    }
    WARN("worker " << w << " claimed " << mine << " configurations");
  }
  CHECK(all.size() == static_cast<size_t>(n_configs));
  CHECK(std::set<std::string>(all.begin(), all.end()).size() == static_cast<size_t>(n_configs));

  ResultsDb db(path);
  auto study = db.find_study("race");
  REQUIRE(study);
  CHECK(db.studies().size() == 1);
  CHECK(study->counts.done == n_configs);
  CHECK(study->counts.total() == n_configs);
  const auto rows = db.metric_rows(study->id, {"task.ppl"});
  REQUIRE(rows.configs.size() == static_cast<size_t>(n_configs));
  std::set<std::string> workers;
  db.for_each_evaluation(study->id, [&](const EvaluationRecord& r) { workers.insert(r.worker); });
  CHECK(workers.size() <= static_cast<size_t>(n_workers));
  CHECK(db.integrity_check() == "ok");
}

TEST_CASE("db: writes wait for a lock held by another process") {
  const auto dir = test::scratch_dir("db_busy");
  const auto path = dir / "results.db";
  {
    ResultsDb db(path);
    db.open_study("s", {});
    db.add_model(test_model());
  }
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  // The child holds the write lock (BEGIN IMMEDIATE) for 1.5 s.
  const pid_t pid = spawn([&] {
    sqlite3* raw = nullptr;
    if (sqlite3_open(path.c_str(), &raw) != SQLITE_OK) return 2;
    if (sqlite3_exec(raw, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) return 3;
    if (write(ready[1], "x", 1) != 1) return 4;
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    sqlite3_exec(raw, "COMMIT", nullptr, nullptr, nullptr);
    sqlite3_close(raw);
    return 0;
  });
  char byte;
  REQUIRE(read(ready[0], &byte, 1) == 1);
  {
    ResultsDb::Options impatient;
    impatient.busy_timeout_seconds = 0.2;
    ResultsDb db(path, impatient);
    CHECK_THROWS_WITH(db.claim(1, 1, "L0:q=1", "h:1", 60),
                      Contains(path.string()) && Contains("locked by another process for more than 0.2 s"));
  }
  ResultsDb db(path);
  const auto start = std::chrono::steady_clock::now();
  auto id = db.claim(1, 1, "L0:q=1", "h:1", 60);  // waits for the child, then succeeds
  CHECK(id);
  CHECK(seconds_since(start) > 0.5);
  CHECK(wait_exit_code(pid) == 0);
  close(ready[0]);
  close(ready[1]);
}

TEST_CASE("db: a writer killed with SIGKILL leaves a valid database and its claim is reclaimed") {
  const auto dir = test::scratch_dir("db_sigkill");
  const auto path = dir / "results.db";
  const int per_transaction = 400;
  {
    ResultsDb db(path);
    db.open_study("s", {});
    db.add_model(test_model());
  }
  for (int round = 0; round < 3; ++round) {
    int ready[2];
    REQUIRE(pipe(ready) == 0);
    const pid_t pid = spawn([&] {
      ResultsDb db(path);
      const int64_t study = db.find_study("s")->id;
      const int64_t model = db.add_model(test_model());
      if (round == 0 && !db.claim(study, model, "L0:all=1", "crashed-host:1", 3600)) return 2;
      if (write(ready[1], "x", 1) != 1) return 3;
      for (int batch = 0;; ++batch) {  // until killed
        std::vector<NewEvaluation> evals;
        for (int i = 0; i < per_transaction; ++i) {
          const std::string config = fmt::format("L{}:q={}", round, batch * per_transaction + i + 1);
          evals.push_back({config,
                           EvalStatus::done,
                           {{"task.ppl", 1.0 * i}, {"size.params", 2.0 * i, NaN, 1, "ok", {{"p", batch}}}}});
        }
        db.add_evaluations(study, model, evals);
      }
    });
    char byte;
    REQUIRE(read(ready[0], &byte, 1) == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + 100 * round));
    REQUIRE(kill(pid, SIGKILL) == 0);
    CHECK(wait_exit_code(pid) == 128 + SIGKILL);
    close(ready[0]);
    close(ready[1]);
    CHECK(fs::exists(dir / "results.db-wal"));  // killed without closing: recovery needed
  }

  CHECK(raw_one(path, "PRAGMA integrity_check") == "ok");
  ResultsDb db(path);
  CHECK(db.integrity_check() == "ok");
  const int64_t study = db.find_study("s")->id;
  const auto counts = db.counts(study);
  WARN("after 3 kills: " << counts.done << " evaluations done");
  CHECK(counts.done > 0);
  CHECK(counts.done % per_transaction == 0);  // whole transactions or nothing
  CHECK(counts.claimed == 1);
  // Every committed evaluation has both metrics.
  const auto rows = db.metric_rows(study, {"task.ppl", "size.params"});
  int incomplete = 0;
  for (const auto& row : rows.rows)
    if (std::isnan(row[0]) || std::isnan(row[1])) ++incomplete;
  CHECK(incomplete == 0);

  // The dead worker's claim is live until its heartbeat is stale, then taken over.
  const int64_t model = db.add_model(test_model());
  CHECK(!db.claim(study, model, "L0:all=1", worker_id(), 3600));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto taken = db.claim(study, model, "L0:all=1", worker_id(), 0.05);
  REQUIRE(taken);
  CHECK(db.complete(*taken, {{"task.ppl", 1.0}}, EvalStatus::done, 0.1));
  CHECK(db.status_of(study, "L0:all=1") == EvalStatus::done);
}

TEST_CASE("db: which claims may be taken over") {
  const double now = 1.0e9;
  const std::string self = worker_id();
  const std::string host = self.substr(0, self.rfind(':'));
  const pid_t gone = spawn([] { return 0; });
  wait_exit_code(gone);
  ClaimInfo c;
  c.worker = "elsewhere:1";
  c.heartbeat_at = now - 10;
  CHECK(!claim_is_stale(c, now, 60));          // another host, heard from 10 s ago
  CHECK(claim_is_stale(c, now, 5));            // ... stale after 5 s of silence
  c.heartbeat_at = now + 30;
  CHECK(!claim_is_stale(c, now, 60));          // a little ahead: clocks of two hosts
  c.heartbeat_at = now + 3600;
  CHECK(claim_is_stale(c, now, 60));           // far ahead: never trusted, never waited for
  c.heartbeat_at = now;
  c.worker = self;
  CHECK(!claim_is_stale(c, now, 60));          // this very process
  c.worker = fmt::format("{}:{}", host, gone);
  CHECK(claim_is_stale(c, now, 3600));         // a process of this host that is gone
  CHECK(worker_is_gone(c.worker));
  CHECK(!worker_is_gone(self));
  CHECK(!worker_is_gone("elsewhere:1"));
  CHECK(!worker_is_gone(host + ":notapid"));
  CHECK(!worker_is_gone(host));

  // claim() takes such a claim over at once, whatever the timeout.
  const auto dir = test::scratch_dir("db_stale_kinds");
  ResultsDb db(dir / "r.db");
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  const auto dead = db.claim(study, model, "L0:q=1", c.worker, 3600);
  REQUIRE(dead);
  const auto taken = db.claim(study, model, "L0:q=1", "elsewhere:2", 3600);
  REQUIRE(taken);
  CHECK(*taken != *dead);
  const auto claims = db.claims(study);
  REQUIRE(claims.size() == 1);
  CHECK(claims[0].worker == "elsewhere:2");
  CHECK(claims[0].config == "L0:q=1");
}

TEST_CASE("db: an infinite metric is stored with status nan") {
  const auto dir = test::scratch_dir("db_inf");
  ResultsDb db(dir / "r.db");
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  const double inf = std::numeric_limits<double>::infinity();
  const auto a = db.claim(study, model, "L0:q=1", "h:1", 60);
  REQUIRE(db.complete(*a, {{"t.ppl", inf}, {"size.params", 10.0}}, EvalStatus::done, 1.0));
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::nan);
  CHECK(db.add_evaluations(study, model, {{"L1:q=1", EvalStatus::done, {{"t.ppl", -inf}}}}) == 1);
  CHECK(db.status_of(study, "L1:q=1") == EvalStatus::nan);
  CHECK(db.add_evaluations(study, model, {{"L2:q=1", EvalStatus::done, {{"t.ppl", 3.0}}}}) == 1);
  CHECK(db.status_of(study, "L2:q=1") == EvalStatus::done);
  std::map<std::string, std::string> metric_status;
  db.for_each_evaluation(study, [&](const EvaluationRecord& r) {
    for (const auto& m : r.metrics) metric_status[r.config + " " + m.name] = m.status;
  });
  CHECK(metric_status["L0:q=1 t.ppl"] == "nan");
  CHECK(metric_status["L0:q=1 size.params"] == "ok");
  CHECK(metric_status["L1:q=1 t.ppl"] == "nan");
  CHECK(metric_status["L2:q=1 t.ppl"] == "ok");
  CHECK(db.counts(study).nan == 2);
}

TEST_CASE("db: JSON nested past any sane depth is one error, not a crash") {
  const auto dir = test::scratch_dir("db_deep_json");
  const auto path = dir / "r.db";
  {
    ResultsDb db(path);
    const int64_t study = db.open_study("s", {{"a", 1}});
    db.save_strategy_state(study, {{"b", 2}});
  }
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  raw_exec(path, "UPDATE studies SET settings = '" + deep + "'; UPDATE strategy_state SET state = '" + deep + "';");
  ResultsDb db(path);
  CHECK_THROWS_WITH(db.find_study("s"), Contains("r.db") && Contains("nested more than"));
  CHECK_THROWS_WITH(db.studies(), Contains("nested more than"));
  CHECK_THROWS_WITH(db.load_strategy_state(1), Contains("nested more than"));
  CHECK(db.integrity_check() == "ok");
}

TEST_CASE("db: studies are deleted and renamed whole, and a missing file is not created on request") {
  const auto dir = test::scratch_dir("db_study_edit");
  CHECK_THROWS_WITH(ResultsDb(dir / "absent.db", {.create = false}), Contains("absent.db: no such results database"));
  CHECK(!fs::exists(dir / "absent.db"));
  ResultsDb db(dir / "r.db");
  const int64_t a = db.open_study("a", {});
  const int64_t b = db.open_study("b", {});
  const int64_t model = db.add_model(test_model());
  db.add_evaluations(a, model, {{"L0:q=1", EvalStatus::done, {{"x.y", 1.0}}}});
  db.add_evaluations(b, model, {{"L0:q=1", EvalStatus::done, {{"x.y", 2.0}}}, {"L1:q=1", EvalStatus::done, {{"x.y", 3.0}}}});
  db.save_strategy_state(b, {{"s", 1}});
  CHECK(db.metric_names() == std::vector<std::string>{"x.y"});
  CHECK_THROWS_WITH(db.rename_study("a", "b"), Contains("a study of that name exists"));
  CHECK_THROWS_WITH(db.rename_study("zz", "q"), Contains("no study 'zz'"));
  db.rename_study("a", "c");
  CHECK(!db.find_study("a"));
  CHECK(db.find_study("c")->counts.done == 1);
  CHECK(db.delete_study("b"));
  CHECK(!db.delete_study("b"));
  CHECK(!db.find_study("b"));
  CHECK(raw_one(dir / "r.db", "SELECT count(*) FROM evaluations") == "1");
  CHECK(raw_one(dir / "r.db", "SELECT count(*) FROM metrics") == "1");
  CHECK(raw_one(dir / "r.db", "SELECT count(*) FROM strategy_state") == "0");
  CHECK(db.integrity_check() == "ok");
}

TEST_CASE("db: the settings check and the study's creation are one transaction") {
  const auto dir = test::scratch_dir("db_open_study_check");
  ResultsDb db(dir / "r.db");
  int calls = 0;
  const int64_t id = db.open_study("s", {{"seed", 1}}, [&](const nlohmann::json&) { ++calls; });
  CHECK(calls == 0);  // created: nothing to check
  nlohmann::json seen;
  CHECK(db.open_study("s", {{"seed", 2}}, [&](const nlohmann::json& existing) { seen = existing; }) == id);
  CHECK(seen == nlohmann::json{{"seed", 1}});
  CHECK_THROWS_WITH(db.open_study("s", {}, [](const nlohmann::json&) { rankscope::fail("refused"); }), "refused");
  CHECK(db.studies().size() == 1);
}

TEST_CASE("db: a claim within a budget is refused once finished evaluations and live claims fill it") {
  const auto dir = test::scratch_dir("db_claim_budget");
  ResultsDb db(dir / "r.db");
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  CHECK(db.add_evaluations(study, model, {{"L0:q=1", EvalStatus::done, {{"x.y", 1.0}}}}) == 1);
  const auto a = db.claim(study, model, "L1:q=1", "elsewhere:1", 3600, 2);
  REQUIRE(a);
  CHECK(!db.claim(study, model, "L2:q=1", "elsewhere:2", 3600, 2));  // 1 finished + 1 live = 2
  CHECK(db.claim(study, model, "L2:q=1", "elsewhere:2", 3600, 3));   // a larger budget has room
  CHECK(db.release(*a));
  CHECK(db.claim(study, model, "L3:q=1", "elsewhere:3", 3600, 3));   // the released slot is free
  // A stale claim holds no slot.
  CHECK(!db.claim(study, model, "L4:q=1", "elsewhere:4", 3600, 3));
  CHECK(db.claim(study, model, "L4:q=1", "elsewhere:4", 0, 3));
}

TEST_CASE("db: a setting a study lacks is adopted once, in one transaction") {
  const auto dir = test::scratch_dir("db_adopt_setting");
  ResultsDb db(dir / "r.db");
  const int64_t study = db.open_study("s", {{"seed", 1}});
  CHECK(db.adopt_study_setting(study, "stale_after", 30.0) == 30.0);
  CHECK(db.adopt_study_setting(study, "stale_after", 600.0) == 30.0);  // the first one stays
  CHECK(db.find_study("s")->settings == nlohmann::json{{"seed", 1}, {"stale_after", 30.0}});
}

namespace {

// The released version-1 schema (step 0 of builtin_migrations(), frozen), and what a version-1
// rankscope set beside it: a file as rankscope 1 left it.
const char* const kVersion1Schema = R"sql(
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
)sql";

// A version-1 file holding one study: evaluation 1 done (two metrics, one with a protocol), 2 nan
// (a NULL value), 3 failed, 4 a live claim, 5 a claim released since (the AUTOINCREMENT counter
// stands at 5), and a strategy state. Written as rankscope 1 wrote it: one transaction, WAL.
void write_version1_file(const fs::path& path) {
  raw_exec(path, std::string("PRAGMA journal_mode = WAL; BEGIN;") + kVersion1Schema + R"sql(
INSERT INTO studies VALUES (1, 's', 1700000000.5, '{"objectives":"t.ppl:min,size.params:min"}');
INSERT INTO models VALUES (1, '0123456789abcdef0123456789abcdef', '/models/m', 'llama', 1000);
INSERT INTO configurations VALUES (1, 'L0:q=1', 'h1'), (2, 'L1:q=1', 'h2'), (3, 'L2:q=1', 'h3'), (4, 'L3:q=1', 'h4'),
                                  (5, 'L4:q=1', 'h5');
INSERT INTO evaluations VALUES
  (1, 1, 1, 1, 'done', 'hostA/1:10', 'hostA/1', 1700000001, 1700000002, 1700000002, 1.25, NULL),
  (2, 1, 2, 1, 'nan', 'hostA/1:10', 'hostA/1', 1700000003, 1700000004, 1700000004, 0.5, NULL),
  (3, 1, 3, 1, 'failed', 'hostB/2:20', 'hostB/2', 1700000005, 1700000006, 1700000006, NULL, 'out of memory'),
  (4, 1, 4, 1, 'claimed', 'elsewhere:7', 'elsewhere', 1700000007, 1700000008, NULL, NULL, NULL),
  (5, 1, 5, 1, 'claimed', 'elsewhere:8', 'elsewhere', 1700000009, 1700000009, NULL, NULL, NULL);
DELETE FROM evaluations WHERE id = 5;
INSERT INTO metric_names VALUES (1, 't.ppl'), (2, 'size.params');
INSERT INTO protocols VALUES (1, 'p1', '{"task":"t","tokens":4096}');
INSERT INTO metrics VALUES (1, 1, 12.5, 0.25, 4096, 'ok', 1), (2, 1, 123456, NULL, 0, 'ok', NULL),
                           (1, 2, NULL, NULL, 4096, 'nan', 1), (2, 2, 654321, NULL, 0, 'ok', NULL);
INSERT INTO strategy_state VALUES (1, '{"generation":3}', 1700000010);
)sql" + fmt::format("PRAGMA application_id = {}; PRAGMA user_version = 1; COMMIT;", kResultsDbApplicationId));
}

// Every row of `sql`, each as its columns' text joined by '|' ("NULL" for NULL).
std::vector<std::string> raw_rows(const fs::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  std::vector<std::string> out;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    std::string row;
    for (int c = 0; c < sqlite3_column_count(stmt); ++c) {
      const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt, c));
      row += (c > 0 ? "|" : "") + std::string(p ? p : "NULL");
    }
    out.push_back(row);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  REQUIRE(rc == SQLITE_DONE);
  return out;
}

// Everything a version-1 file holds, table by table, rows in key order.
std::vector<std::string> all_rows(const fs::path& path) {
  std::vector<std::string> out;
  for (const char* sql : {"SELECT * FROM studies ORDER BY id", "SELECT * FROM models ORDER BY id",
                          "SELECT * FROM configurations ORDER BY id", "SELECT * FROM evaluations ORDER BY id",
                          "SELECT * FROM metric_names ORDER BY id", "SELECT * FROM protocols ORDER BY id",
                          "SELECT * FROM metrics ORDER BY evaluation_id, metric_id",
                          "SELECT * FROM strategy_state ORDER BY study_id"}) {
    out.push_back(sql);
    for (auto& row : raw_rows(path, sql)) out.push_back(std::move(row));
  }
  return out;
}

}  // namespace

TEST_CASE("db: a pruned evaluation is final, counted, exported and kept pruned with partial or NaN metrics") {
  const auto dir = test::scratch_dir("db_pruned");
  const auto path = dir / "results.db";
  ResultsDb db(path);
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  CHECK(parse_status("pruned") == EvalStatus::pruned);
  CHECK(status_name(EvalStatus::pruned) == "pruned");
  CHECK(is_finished(EvalStatus::pruned));
  CHECK_THROWS_WITH(parse_status("stopped"), Contains("claimed, done, failed, nan or pruned"));

  // complete(pruned): partial metrics (n says how many examples), one of them NaN.
  const auto a = db.claim(study, model, "L0:q=1", "hostA:1", 3600);
  REQUIRE(a);
  REQUIRE(db.complete(*a,
                      {{"t.ppl", 30.5, 1.5, 512, "ok", nullptr},
                       {"t.nll", NaN, NaN, 512, "nan", nullptr},
                       {"eval.fidelity", 0.25, NaN, 512, "ok", nullptr}},
                      EvalStatus::pruned, 0.75));
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::pruned);
  CHECK(raw_one(path, "SELECT status FROM evaluations WHERE id = " + std::to_string(*a)) == "pruned");
  // An infinite metric is stored as nan, and the evaluation stays pruned.
  const auto b = db.claim(study, model, "L1:q=1", "hostA:1", 3600);
  REQUIRE(b);
  REQUIRE(db.complete(*b, {{"t.ppl", INFINITY, NaN, 64, "ok", nullptr}}, EvalStatus::pruned, 0.5));
  CHECK(db.status_of(study, "L1:q=1") == EvalStatus::pruned);
  CHECK(raw_one(path, "SELECT m.status FROM metrics m WHERE m.evaluation_id = " + std::to_string(*b)) == "nan");
  // A pruned configuration is never claimed again, however stale; a late completion is ignored.
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 0));
  CHECK(!db.complete(*a, {{"t.ppl", 1.0}}, EvalStatus::done, 0.5));
  CHECK(!db.heartbeat(*a));
  CHECK(!db.release(*a));

  // add_evaluations(pruned), beside done.
  CHECK(db.add_evaluations(study, model,
                           {{"L2:q=1", EvalStatus::pruned, {{"t.ppl", 40.0, NaN, 128, "ok", nullptr}}, 0.25},
                            {"L3:q=1", EvalStatus::done, {{"t.ppl", 20.0, NaN, 4096, "ok", nullptr}}, 2.0}},
                           "imp:1") == 2);
  CHECK(db.status_of(study, "L2:q=1") == EvalStatus::pruned);
  const auto counts = db.counts(study);
  CHECK(counts.pruned == 3);
  CHECK(counts.done == 1);
  CHECK(counts.nan == 0);
  CHECK(counts.finished() == 4);
  CHECK(counts.total() == 4);
  CHECK(db.studies()[0].counts.pruned == 3);
  CHECK(db.find_study("s")->counts.pruned == 3);
  // The budget counts pruned evaluations: 4 finished fill a budget of 4.
  CHECK(!db.claim(study, model, "L4:q=1", "hostA:1", 3600, 4));
  CHECK(db.claim(study, model, "L4:q=1", "hostA:1", 3600, 5));

  // Reads: metric_rows carries the status, the export every partial metric with its n.
  const auto rows = db.metric_rows(study, {"t.ppl"});
  REQUIRE(rows.statuses.size() == 4);
  CHECK(rows.statuses[0] == EvalStatus::pruned);
  CHECK(rows.rows[0][0] == 30.5);
  CHECK(rows.statuses[3] == EvalStatus::done);
  std::map<std::string, EvaluationRecord> records;
  db.for_each_evaluation(study, [&](const EvaluationRecord& r) { records[r.config] = r; });
  REQUIRE(records.count("L0:q=1") == 1);
  const auto& r = records["L0:q=1"];
  CHECK(r.status == EvalStatus::pruned);
  CHECK(r.wall_s == 0.75);
  REQUIRE(r.metrics.size() == 3);
  CHECK(r.metrics[0].name == "eval.fidelity");
  CHECK(r.metrics[0].value == 0.25);
  CHECK(r.metrics[2].name == "t.ppl");
  CHECK(r.metrics[2].n == 512);
  CHECK(r.metrics[1].status == "nan");
  CHECK(records["L4:q=1"].status == EvalStatus::claimed);
  CHECK(db.integrity_check() == "ok");
}

TEST_CASE("db: a version-1 file is migrated to version 2 with every row, metric and id counter intact") {
  const auto dir = test::scratch_dir("db_migrate_v1");
  const auto path = dir / "v1.db";
  write_version1_file(path);
  REQUIRE(raw_one(path, "PRAGMA user_version") == "1");
  const auto before = all_rows(path);
  REQUIRE(before.size() == 8 + 1 + 1 + 5 + 4 + 2 + 1 + 4 + 1);
  const auto copy = dir / "v1-copy.db";
  fs::copy_file(path, copy);

  {
    ResultsDb db(path);
    const auto s = db.find_study("s");
    REQUIRE(s);
    CHECK(s->counts.done == 1);
    CHECK(s->counts.nan == 1);
    CHECK(s->counts.failed == 1);
    CHECK(s->counts.claimed == 1);
    CHECK(s->counts.pruned == 0);
    CHECK(db.integrity_check() == "ok");
    // The live claim is still a claim; the new claim's id is past the deleted claim's 5.
    REQUIRE(db.claims(s->id).size() == 1);
    CHECK(db.claims(s->id)[0].id == 4);
    const auto e = db.claim(s->id, 1, "L5:q=1", "hostC:3", 3600);
    REQUIRE(e);
    CHECK(*e == 6);
    REQUIRE(db.complete(*e, {{"t.ppl", 50.0, NaN, 256, "ok", nullptr}, {"eval.fidelity", 0.125, NaN, 256, "ok", nullptr}},
                        EvalStatus::pruned, 0.1));
    CHECK(db.status_of(s->id, "L5:q=1") == EvalStatus::pruned);
    CHECK(db.counts(s->id).pruned == 1);
  }
  CHECK(raw_one(path, "PRAGMA user_version") == "2");
  CHECK(raw_one(path, "PRAGMA application_id") == std::to_string(kResultsDbApplicationId));
  CHECK(raw_query(path, "PRAGMA foreign_key_check").empty());
  CHECK(raw_one(path, "SELECT count(*) FROM sqlite_master WHERE name = 'evaluations_new'") == "0");
  CHECK_THAT(raw_one(path, "SELECT sql FROM sqlite_master WHERE name = 'evaluations'"), Contains("'pruned'"));
  CHECK(raw_one(path, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'evaluations_by_status'") == "1");
  // Every row as it was (the new evaluation 6 and its metrics aside).
  raw_exec(path, "DELETE FROM metrics WHERE evaluation_id = 6; DELETE FROM evaluations WHERE id = 6; "
                 "DELETE FROM configurations WHERE id = 6; DELETE FROM metric_names WHERE name = 'eval.fidelity';");
  CHECK(all_rows(path) == before);
  // The schema is exactly a new file's.
  const auto fresh = dir / "fresh.db";
  { ResultsDb db(fresh); }
  const std::string schema = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name <> 'sqlite_sequence' ORDER BY name";
  CHECK(raw_rows(path, schema) == raw_rows(fresh, schema));
  // The CHECK still refuses an unknown status.
  sqlite3* raw = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &raw) == SQLITE_OK);
  CHECK(sqlite3_exec(raw, "UPDATE evaluations SET status = 'bogus' WHERE id = 1", nullptr, nullptr, nullptr) ==
        SQLITE_CONSTRAINT);
  sqlite3_close(raw);

  // A reader (create false) reads a version-1 file as it is, without migrating it.
  {
    ResultsDb reader(copy, {.create = false});
    const auto s = reader.find_study("s");
    REQUIRE(s);
    CHECK(s->counts.finished() == 3);
    const auto rows = reader.metric_rows(s->id, {"t.ppl", "size.params"});
    REQUIRE(rows.rows.size() == 3);
    CHECK(rows.rows[0][0] == 12.5);
    CHECK(rows.rows[1][1] == 654321);
  }
  CHECK(raw_one(copy, "PRAGMA user_version") == "1");
  CHECK(all_rows(copy) == before);
}

TEST_CASE("db: a version-1 file whose foreign keys do not hold is not migrated and stays as it was") {
  const auto dir = test::scratch_dir("db_migrate_v1_damaged");
  const auto path = dir / "v1.db";
  write_version1_file(path);
  // A metric of an evaluation that does not exist (a raw connection does not enforce foreign keys).
  raw_exec(path, "INSERT INTO metrics VALUES (1, 99, 1.0, NULL, 1, 'ok', NULL);");
  const auto before = all_rows(path);
  const std::string schema = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name";
  const auto schema_before = raw_rows(path, schema);
  CHECK_THROWS_WITH(ResultsDb(path), Contains(path.string()) && Contains("from version 1 to 2") &&
                                         Contains("foreign key violation") && Contains("metrics"));
  CHECK(raw_one(path, "PRAGMA user_version") == "1");
  CHECK(raw_rows(path, schema) == schema_before);
  CHECK(all_rows(path) == before);
}
