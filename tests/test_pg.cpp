// The PostgreSQL transport against a real throwaway server (tests/pg_server.hpp): URIs and their
// redaction, bound parameters, errors, and a server that goes away and comes back; the status
// pruned on both stores, the migration of a version-1 schema, and pruned evaluations through
// pareto and db copy. Skipped with a message where the PostgreSQL binaries are absent
// (scripts/setup.sh installs them).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "db/pg_connection.hpp"
#include "db/pg_store.hpp"
#include "db/results_db.hpp"
#include "tests/pg_server.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

// The message of the exception `f` throws (empty when none), and whether it was transient.
template <typename F>
std::string message_of(F&& f, bool* transient = nullptr) {
  try {
    f();
  } catch (const TransientError& e) {
    if (transient != nullptr) *transient = true;
    return e.what();
  } catch (const Error& e) {
    if (transient != nullptr) *transient = false;
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("PostgreSQL URIs: both schemes, redacted without the password, malformed ones a one-line error", "[pg]") {
  CHECK(is_postgres_url("postgresql://a@b/c"));
  CHECK(is_postgres_url("postgres://a@b/c"));
  CHECK_FALSE(is_postgres_url("results.db"));
  CHECK_FALSE(is_postgres_url("./postgresql://x"));
  CHECK(redact_postgres_url("postgresql://alice:s3cret@db.example:5433/study?sslmode=disable") ==
        "postgresql://alice@db.example:5433/study?sslmode=disable");
  CHECK(redact_postgres_url("postgres://bob@host/db") == "postgresql://bob@host/db");
  CHECK(redact_postgres_url("postgresql://bob:p%40ss%20word@host/db") == "postgresql://bob@host/db");
  CHECK(redact_postgres_url("postgresql://host/db?password=hidden&application_name=x") ==
        "postgresql://host/db?application_name=x");
  CHECK(redact_postgres_url("postgresql://[::1]:5432/db") == "postgresql://[::1]:5432/db");
  const std::string bad = message_of([] { redact_postgres_url("postgresql://alice:topsecret@host/db?no_such_option=1"); });
  CHECK_THAT(bad, Contains("not a valid PostgreSQL URI") && Contains("invalid URI query parameter"));
  CHECK(bad.find("topsecret") == std::string::npos);
  CHECK(bad.find('\n') == std::string::npos);
  // libpq quotes the text it cannot decode, here the password itself: never repeated.
  const std::string bad_escape = message_of([] { redact_postgres_url("postgresql://u:pa%ssword@h/db"); });
  CHECK_THAT(bad_escape, Contains("not a valid PostgreSQL URI"));
  CHECK(bad_escape.find("ssword") == std::string::npos);
  CHECK(redact_postgres_url("postgresql://h/db?sslpassword=keyphrase") == "postgresql://h/db");
}

TEST_CASE("PostgreSQL: bound parameters round-trip any text and NULL, SQL errors name the SQLSTATE", "[pg]") {
  RS_REQUIRE_PG(server);
  PgConnection db(server->url());
  CHECK(db.ok());
  CHECK(db.server_version() >= 130000);
  CHECK(db.display() == server->url());
  db.exec_script("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, name TEXT, value DOUBLE PRECISION)");
  const std::vector<std::string> names = {"plain", "it's", "'; DROP TABLE t; --", "Grüße ✓", "back\\slash", ""};
  for (const auto& n : names) {
    CHECK(db.exec("INSERT INTO t (name, value) VALUES ($1, $2)", {n, "0.5"}).affected() == 1);
  }
  CHECK(db.exec("INSERT INTO t (name, value) VALUES ($1, $2)", {std::nullopt, std::nullopt}).affected() == 1);
  const PgResult r = db.exec("SELECT name, value FROM t ORDER BY id");
  REQUIRE(r.rows() == static_cast<int64_t>(names.size()) + 1);
  CHECK(r.cols() == 2);
  CHECK(r.column_name(0) == "name");
  for (size_t i = 0; i < names.size(); ++i) {
    REQUIRE(r.get(static_cast<int64_t>(i), 0));
    CHECK(*r.get(static_cast<int64_t>(i), 0) == names[i]);
    CHECK(std::stod(*r.get(static_cast<int64_t>(i), 1)) == 0.5);
  }
  CHECK_FALSE(r.get(r.rows() - 1, 0));
  CHECK_FALSE(r.get(r.rows() - 1, 1));
  CHECK(db.exec("UPDATE t SET value = value + 1 WHERE name LIKE $1", {"%'%"}).affected() == 2);

  bool transient = true;
  const std::string bad = message_of([&] { db.exec("SELECT no_such_column FROM t"); }, &transient);
  CHECK_FALSE(transient);
  CHECK_THAT(bad, Contains(server->url()) && Contains("no_such_column") && Contains("SQLSTATE 42703"));
  CHECK(bad.find('\n') == std::string::npos);
  // The connection stays usable after an error.
  CHECK(db.exec("SELECT count(*) FROM t").get(0, 0) == std::optional<std::string>("7"));
}

TEST_CASE("PostgreSQL: a server that is away is a transient one-line error without the password, and comes back",
          "[pg]") {
  RS_REQUIRE_PG(server);
  // Nothing listens on this port: refused, transient, the password nowhere.
  const int closed = server->port() == 65000 ? 65001 : 65000;
  const std::string url = "postgresql://rankscope:hunter2@127.0.0.1:" + std::to_string(closed) + "/postgres";
  bool transient = false;
  const std::string refused = message_of([&] { PgConnection c(url, 2); }, &transient);
  CHECK(transient);
  CHECK_THAT(refused, Contains("postgresql://rankscope@127.0.0.1:" + std::to_string(closed) + "/postgres"));
  CHECK(refused.find("hunter2") == std::string::npos);
  CHECK(refused.find('\n') == std::string::npos);

  // What the URI leaves out comes from the PG* variables, as for psql.
  ::setenv("PGPORT", std::to_string(server->port()).c_str(), 1);
  {
    PgConnection by_env("postgresql://rankscope@127.0.0.1/postgres");
    CHECK(by_env.exec("SELECT current_setting('port')").get(0, 0) == std::optional<std::string>(std::to_string(server->port())));
  }
  ::unsetenv("PGPORT");

  // PGPASSWORD is never printed either (trust authentication ignores it).
  ::setenv("PGPASSWORD", "hunter3", 1);
  PgConnection db(server->url());
  ::unsetenv("PGPASSWORD");
  CHECK(db.exec("SELECT 1").get(0, 0) == std::optional<std::string>("1"));
  server->stop();
  transient = false;
  const std::string gone = message_of([&] { db.exec("SELECT 1"); }, &transient);
  CHECK(transient);
  CHECK(gone.find("hunter3") == std::string::npos);
  CHECK_FALSE(db.ok());
  transient = false;
  message_of([&] { db.reconnect(); }, &transient);
  CHECK(transient);
  REQUIRE(server->start_again());
  db.reconnect();
  CHECK(db.ok());
  CHECK(db.exec("SELECT $1::int + 1", {"41"}).get(0, 0) == std::optional<std::string>("42"));
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

ModelInfo pruned_model() { return {"0123456789abcdef0123456789abcdef", "/models/m", "llama", 1000}; }

// Pruned evaluations on any store: completed and imported, kept pruned with a partial or an
// infinite metric, never claimed again, counted against the budget. Returns what the store then
// answers (ids and times left out), for comparing two stores.
std::string pruned_script(ResultsStore& db) {
  const int64_t study = db.open_study("p", {{"objectives", "t.ppl:min,size.params:min"}});
  const int64_t model = db.add_model(pruned_model());
  const auto a = db.claim(study, model, "L0:q=1", "hostA:1", 3600);
  REQUIRE(a);
  REQUIRE(db.complete(*a,
                      {{"t.ppl", 9.0, 0.5, 128, "ok", {{"task", "t"}}},
                       {"size.params", 40.0, kNaN, 0, "ok", nullptr},
                       {"eval.fidelity", 0.125, kNaN, 128, "ok", nullptr}},
                      EvalStatus::pruned, 0.5));
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::pruned);
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 0));
  CHECK(!db.complete(*a, {{"t.ppl", 1.0}}, EvalStatus::done, 0.5));
  const auto b = db.claim(study, model, "L1:q=1", "hostA:1", 3600);
  REQUIRE(b);
  REQUIRE(db.complete(*b, {{"t.ppl", INFINITY, kNaN, 16, "ok", nullptr}}, EvalStatus::pruned, 0.25));
  CHECK(db.status_of(study, "L1:q=1") == EvalStatus::pruned);
  CHECK(db.add_evaluations(study, model,
                           {{"L2:q=1", EvalStatus::done, {{"t.ppl", 10.0}, {"size.params", 100.0}}, 2.0},
                            {"L3:q=1", EvalStatus::pruned, {{"t.ppl", 30.0, kNaN, 64, "ok", nullptr}, {"size.params", 20.0}}, 0.1}},
                           "imp:1") == 2);
  CHECK(db.status_of(study, "L3:q=1") == EvalStatus::pruned);
  const auto counts = db.counts(study);
  CHECK(counts.pruned == 3);
  CHECK(counts.done == 1);
  CHECK(counts.finished() == 4);
  CHECK(db.find_study("p")->counts.pruned == 3);
  CHECK(!db.claim(study, model, "L4:q=1", "hostA:1", 3600, 4));  // 4 finished fill a budget of 4
  CHECK(db.integrity_check() == "ok");

  std::string out;
  db.for_each_evaluation(study, [&](const EvaluationRecord& r) {
    out += fmt::format("{} {} {} {} [{}]", r.config, status_name(r.status), r.worker, r.wall_s, r.error);
    for (const auto& m : r.metrics) out += fmt::format(" {}={}/{}/{}/{}", m.name, m.value, m.n, m.status, m.protocol.dump());
    out += "\n";
  });
  out += fmt::format("counts {} {} {} {} {}\n", counts.claimed, counts.done, counts.failed, counts.nan, counts.pruned);
  const auto rows = db.metric_rows(study, {"t.ppl", "size.params"});
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    out += fmt::format("{} {} {} {}\n", rows.configs[i], status_name(rows.statuses[i]), rows.rows[i][0], rows.rows[i][1]);
  }
  return out;
}

// The released version-1 PostgreSQL schema (step 0 of pg_store.cpp's migrations, frozen) with its
// version row: a database as rankscope 1 left it.
const char* const kPgVersion1Schema = R"sql(
CREATE TABLE rankscope_schema (version INTEGER NOT NULL);
INSERT INTO rankscope_schema (version) VALUES (1);
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
)sql";

// One study written through the version-1 schema as rankscope 1 wrote it (ids from the sequences):
// evaluation 1 done with two metrics, 2 nan, 3 failed, 4 a live claim, 5 a claim released since.
const char* const kPgVersion1Rows = R"sql(
INSERT INTO studies (name, created_at, settings) VALUES ('s', 1700000000.5, '{"objectives":"t.ppl:min,size.params:min"}');
INSERT INTO models (hash, path, architecture, n_params) VALUES ('0123456789abcdef0123456789abcdef', '/models/m', 'llama', 1000);
INSERT INTO configurations (canonical, hash) VALUES ('L0:q=1', 'h1'), ('L1:q=1', 'h2'), ('L2:q=1', 'h3'), ('L3:q=1', 'h4'),
                                                   ('L4:q=1', 'h5');
INSERT INTO evaluations (study_id, configuration_id, model_id, status, worker, host, claimed_at, heartbeat_at, finished_at,
                         wall_s, error) VALUES
  (1, 1, 1, 'done', 'hostA/1:10', 'hostA/1', 1700000001, 1700000002, 1700000002, 1.25, NULL),
  (1, 2, 1, 'nan', 'hostA/1:10', 'hostA/1', 1700000003, 1700000004, 1700000004, 0.5, NULL),
  (1, 3, 1, 'failed', 'hostB/2:20', 'hostB/2', 1700000005, 1700000006, 1700000006, NULL, 'out of memory'),
  (1, 4, 1, 'claimed', 'elsewhere:7', 'elsewhere', 1700000007, 1700000008, NULL, NULL, NULL),
  (1, 5, 1, 'claimed', 'elsewhere:8', 'elsewhere', 1700000009, 1700000009, NULL, NULL, NULL);
DELETE FROM evaluations WHERE id = 5;
INSERT INTO metric_names (name) VALUES ('t.ppl'), ('size.params');
INSERT INTO protocols (hash, json) VALUES ('p1', '{"task":"t","tokens":4096}');
INSERT INTO metrics VALUES (1, 1, 12.5, 0.25, 4096, 'ok', 1), (2, 1, 123456, NULL, 0, 'ok', NULL),
                           (1, 2, NULL, NULL, 4096, 'nan', 1), (2, 2, 654321, NULL, 0, 'ok', NULL);
INSERT INTO strategy_state VALUES (1, '{"generation":3}', 1700000010);
)sql";

// Every row of `sql`, each as its columns' text joined by '|' ("NULL" for NULL).
std::vector<std::string> pg_rows(PgConnection& db, const std::string& sql) {
  const PgResult r = db.exec(sql);
  std::vector<std::string> out;
  for (int64_t i = 0; i < r.rows(); ++i) {
    std::string row;
    for (int64_t c = 0; c < r.cols(); ++c) row += (c > 0 ? "|" : "") + r.get(i, c).value_or("NULL");
    out.push_back(row);
  }
  return out;
}

// Every row of the results tables, table by table, in key order.
std::vector<std::string> pg_all_rows(PgConnection& db) {
  std::vector<std::string> out;
  for (const char* sql : {"SELECT * FROM studies ORDER BY id", "SELECT * FROM models ORDER BY id",
                          "SELECT * FROM configurations ORDER BY id", "SELECT * FROM evaluations ORDER BY id",
                          "SELECT * FROM metric_names ORDER BY id", "SELECT * FROM protocols ORDER BY id",
                          "SELECT * FROM metrics ORDER BY evaluation_id, metric_id",
                          "SELECT * FROM strategy_state ORDER BY study_id"}) {
    out.push_back(sql);
    for (auto& row : pg_rows(db, sql)) out.push_back(std::move(row));
  }
  return out;
}

// The shape of the schema: columns with types and defaults, constraints with their definitions,
// indexes with theirs.
std::vector<std::string> pg_schema(PgConnection& db) {
  std::vector<std::string> out;
  for (const char* sql :
       {"SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, column_name",
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"}) {
    for (auto& row : pg_rows(db, sql)) out.push_back(std::move(row));
  }
  return out;
}

// One study with objectives t.ppl:min,size.params:min: two complete points, a pruned one that
// dominates both, and a failed one.
void add_pareto_study(ResultsStore& db) {
  const int64_t study = db.open_study("front", {{"objectives", "t.ppl:min,size.params:min"}});
  const int64_t model = db.add_model(pruned_model());
  REQUIRE(db.add_evaluations(study, model,
                             {{"L0:q=1", EvalStatus::done, {{"t.ppl", 10.0}, {"size.params", 100.0}}, 1.0},
                              {"L1:q=1", EvalStatus::done, {{"t.ppl", 20.0}, {"size.params", 50.0}}, 1.0},
                              {"L2:q=1", EvalStatus::pruned,
                               {{"t.ppl", 9.0, kNaN, 32, "ok", nullptr}, {"size.params", 40.0}, {"eval.fidelity", 0.25}}, 0.2},
                              {"L3:q=1", EvalStatus::failed, {}, 0.1, "out of memory"}},
                             "w:1") == 4);
}

std::vector<std::string> front_configs(const nlohmann::json& pareto) {
  std::vector<std::string> out;
  for (const auto& p : pareto["front"]) out.push_back(p["config"].get<std::string>() + " " + p["status"].get<std::string>());
  return out;
}

}  // namespace

TEST_CASE("stores: a pruned evaluation round-trips in PostgreSQL exactly as in SQLite", "[db][pg]") {
  RS_REQUIRE_PG(server);
  ResultsDb sqlite(test::scratch_dir("pg_pruned") / "results.db");
  const std::string want = pruned_script(sqlite);
  PgStore pg(server->url());
  const std::string got = pruned_script(pg);
  CHECK(got == want);
  CHECK_THAT(want, Contains("L0:q=1 pruned hostA:1 0.5 []") && Contains("eval.fidelity=0.125/128/ok") &&
                       Contains("L1:q=1 pruned") && Contains("t.ppl=inf/16/nan") && Contains("L3:q=1 pruned imp:1") &&
                       Contains("counts 0 1 0 0 3"));
}

TEST_CASE("PostgreSQL: a version-1 schema is read as it is, and migrated to version 2 with every row intact",
          "[db][pg]") {
  RS_REQUIRE_PG(server);
  REQUIRE(server->create_database("v1"));
  REQUIRE(server->create_database("fresh"));
  PgConnection raw(server->url("v1"));
  raw.exec_script(std::string(kPgVersion1Schema) + kPgVersion1Rows);
  const auto before = pg_all_rows(raw);
  REQUIRE(before.size() == 8 + 1 + 1 + 5 + 4 + 2 + 1 + 4 + 1);

  // A reader reads it without migrating it.
  {
    PgStore::Options no_create;
    no_create.create = false;
    PgStore reader(server->url("v1"), no_create);
    const auto s = reader.find_study("s");
    REQUIRE(s);
    CHECK(s->counts.done == 1);
    CHECK(s->counts.nan == 1);
    CHECK(s->counts.failed == 1);
    CHECK(s->counts.claimed == 1);
    const auto rows = reader.metric_rows(s->id, {"t.ppl", "size.params"});
    REQUIRE(rows.rows.size() == 3);
    CHECK(rows.rows[0][0] == 12.5);
    CHECK(rows.rows[1][1] == 654321);
  }
  CHECK(raw.exec("SELECT version FROM rankscope_schema").get(0, 0) == std::optional<std::string>("1"));

  // A writer migrates it.
  {
    PgStore db(server->url("v1"));
    const auto s = db.find_study("s");
    REQUIRE(s);
    CHECK(s->counts.finished() == 3);
    CHECK(s->counts.claimed == 1);
    CHECK(db.integrity_check() == "ok");
    const auto e = db.claim(s->id, 1, "L5:q=1", "hostC:3", 3600);
    REQUIRE(e);
    CHECK(*e == 6);  // the sequence goes on past the released claim
    REQUIRE(db.complete(*e, {{"t.ppl", 50.0, kNaN, 256, "ok", nullptr}}, EvalStatus::pruned, 0.1));
    CHECK(db.status_of(s->id, "L5:q=1") == EvalStatus::pruned);
    CHECK(db.counts(s->id).pruned == 1);
  }
  CHECK(raw.exec("SELECT version FROM rankscope_schema").get(0, 0) == std::optional<std::string>("2"));
  CHECK(PgStore::schema_version() == 2);
  CHECK_THAT(*raw.exec("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'evaluations_status_check'").get(0, 0),
             Contains("'pruned'"));
  CHECK_THROWS_WITH(raw.exec("UPDATE evaluations SET status = 'bogus' WHERE id = 1"), Contains("evaluations_status_check"));
  raw.exec_script("DELETE FROM metrics WHERE evaluation_id = 6; DELETE FROM evaluations WHERE id = 6; "
                  "DELETE FROM configurations WHERE id = 6;");
  CHECK(pg_all_rows(raw) == before);
  // The schema is exactly a new database's.
  { PgStore fresh(server->url("fresh")); }
  PgConnection fresh(server->url("fresh"));
  CHECK(pg_schema(raw) == pg_schema(fresh));
}

TEST_CASE("PostgreSQL: a version-1 migration that fails leaves the schema at version 1", "[db][pg]") {
  RS_REQUIRE_PG(server);
  REQUIRE(server->create_database("v1"));
  PgConnection raw(server->url("v1"));
  raw.exec_script(std::string(kPgVersion1Schema) + kPgVersion1Rows);
  // A CHECK under another name than step 0 gave it: the migration cannot find its constraint.
  raw.exec_script("ALTER TABLE evaluations RENAME CONSTRAINT evaluations_status_check TO renamed_check;");
  const auto before = pg_all_rows(raw);
  CHECK_THROWS_WITH(PgStore(server->url("v1")), Contains("evaluations_status_check"));
  CHECK(raw.exec("SELECT version FROM rankscope_schema").get(0, 0) == std::optional<std::string>("1"));
  CHECK(raw.exec("SELECT count(*) FROM pg_constraint WHERE conname = 'renamed_check'").get(0, 0) ==
        std::optional<std::string>("1"));
  CHECK(pg_all_rows(raw) == before);
}

TEST_CASE("PostgreSQL: pareto --include-pruned and db copy carry pruned evaluations between SQLite and PostgreSQL",
          "[db][pg]") {
  RS_REQUIRE_PG(server);
  const auto dir = test::scratch_dir("pg_pruned_cli");
  const std::string a = (dir / "a.db").string(), b = (dir / "b.db").string(), url = server->url();
  {
    ResultsDb db(a);
    add_pareto_study(db);
  }
  auto run = [](const std::string& args) {
    const auto r = test::run_cli(args);
    INFO(args << "\n" << r.out << r.err);
    REQUIRE(r.exit_code == 0);
    return r.out;
  };
  CHECK_THAT(run("db copy --from " + a + " --to " + url), Contains("4 evaluations copied"));
  CHECK_THAT(run("db copy --from " + url + " --to " + b), Contains("4 evaluations copied"));
  for (const std::string& store : {url, b}) {
    INFO(store);
    const auto plain = nlohmann::json::parse(run("pareto --db " + store + " --study front --format json"));
    CHECK(plain["evaluations"] == 2);
    CHECK(front_configs(plain) == std::vector<std::string>{"L0:q=1 done", "L1:q=1 done"});
    const auto pruned = nlohmann::json::parse(run("pareto --db " + store + " --study front --include-pruned --format json"));
    CHECK(pruned["evaluations"] == 3);
    CHECK(pruned["include_pruned"] == true);
    CHECK(front_configs(pruned) == std::vector<std::string>{"L2:q=1 pruned"});
    const auto studies = nlohmann::json::parse(run("studies --db " + store + " --json"));
    REQUIRE(studies.size() == 1);
    CHECK(studies[0]["pruned"] == 1);
    CHECK(studies[0]["done"] == 2);
    CHECK(studies[0]["failed"] == 1);
    const auto exported = nlohmann::json::parse(run("export --db " + store + " --study front --format json"));
    REQUIRE(exported["evaluations"].size() == 4);
    const auto& pruned_row = exported["evaluations"][2];
    CHECK(pruned_row["config"] == "L2:q=1");
    CHECK(pruned_row["status"] == "pruned");
    CHECK(pruned_row["metrics"]["t.ppl"]["n"] == 32);
    CHECK(pruned_row["metrics"]["eval.fidelity"]["value"] == 0.25);
  }
}
