// A connection to a PostgreSQL server through libpq (builds with -DRANKSCOPE_POSTGRES=ON, on by
// default where pkg-config finds libpq): the transport of the PostgreSQL results store.
//
// Addresses are libpq connection URIs, postgresql://USER@HOST:PORT/DBNAME (or postgres://), parsed
// by libpq itself; what a URI leaves out comes from the usual PG* environment variables (PGHOST,
// PGPORT, PGUSER, PGDATABASE, PGPASSWORD, ...), as for psql. A password, in the URI or in
// PGPASSWORD, is never part of a message: everything printed names the redacted form.
//
// Errors: the server unreachable or gone (connection refused, reset, timed out) is a
// TransientError, so callers can wait and retry; a malformed URI, refused authentication or an SQL
// error is an Error. Both are one line naming the redacted address.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rankscope {

// True for "postgresql://..." and "postgres://..." (anything else is a SQLite path).
bool is_postgres_url(std::string_view text);

// The URI without its password, rebuilt from libpq's parse: postgresql://USER@HOST:PORT/DBNAME
// plus the other parameters it names (password excluded). Throws Error (naming only the scheme
// and host part it could read) when libpq cannot parse it.
std::string redact_postgres_url(const std::string& url);

// The rows of one statement, as text (libpq's text format); NULL is nullopt.
class PgResult {
 public:
  PgResult() = default;
  int64_t rows() const { return static_cast<int64_t>(values_.size()); }
  int64_t cols() const { return static_cast<int64_t>(names_.size()); }
  const std::string& column_name(int64_t c) const { return names_[static_cast<size_t>(c)]; }
  const std::optional<std::string>& get(int64_t r, int64_t c) const {
    return values_[static_cast<size_t>(r)][static_cast<size_t>(c)];
  }
  // Rows a command changed (INSERT/UPDATE/DELETE), 0 otherwise.
  int64_t affected() const { return affected_; }

 private:
  friend class PgConnection;
  std::vector<std::string> names_;
  std::vector<std::vector<std::optional<std::string>>> values_;
  int64_t affected_ = 0;
};

using PgParam = std::optional<std::string>;  // a bound parameter in text form; nullopt = NULL

class PgConnection {
 public:
  // Connects (libpq's connect_timeout: `connect_timeout_seconds`, at least 2).
  explicit PgConnection(const std::string& url, int connect_timeout_seconds = 10);
  ~PgConnection();
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  // Runs one statement with bound parameters ($1, $2, ...): values never become SQL text.
  PgResult exec(const std::string& sql, const std::vector<PgParam>& params = {});
  // Runs statements without parameters (schema scripts); several may be separated by ';'.
  void exec_script(const std::string& sql);
  // Whether the connection is usable; reconnect() opens it again (TransientError while the
  // server is away).
  bool ok() const;
  void reconnect();
  // The redacted address, for messages.
  const std::string& display() const { return display_; }
  // The server's version number (e.g. 150018).
  int server_version() const;

 private:
  void connect();
  [[noreturn]] void fail_connection(const std::string& what) const;
  std::string url_, display_;
  int timeout_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rankscope
