// The PostgreSQL transport against a real throwaway server (tests/pg_server.hpp): URIs and their
// redaction, bound parameters, errors, and a server that goes away and comes back. Skipped with
// a message where the PostgreSQL binaries are absent (scripts/setup.sh installs them).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <string>

#include "core/base/error.hpp"
#include "db/pg_connection.hpp"
#include "tests/pg_server.hpp"

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
