#include "db/pg_connection.hpp"

#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

// libpq's messages end with a newline and may hold several lines: one line, trimmed.
std::string one_line(const char* message) {
  std::string s;
  for (const char* c = message != nullptr ? message : ""; *c != '\0'; ++c) {
    const bool space = *c == '\n' || *c == '\t' || *c == '\r' || *c == ' ';
    if (space && (s.empty() || s.back() == ' ')) continue;  // runs of white space: one blank
    s += space ? ' ' : *c;
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s.empty() ? "unknown error" : s;
}

// Parses with libpq; keyword -> value of every option the URI sets.
std::map<std::string, std::string> parse(const std::string& url, std::string* error) {
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(url.c_str(), &err);
  std::map<std::string, std::string> out;
  if (options == nullptr) {
    if (error != nullptr) *error = one_line(err);
    if (err != nullptr) PQfreemem(err);
    return out;
  }
  for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
    if (o->val != nullptr && *o->val != '\0') out[o->keyword] = o->val;
  }
  PQconninfoFree(options);
  return out;
}

// Whether a failed connection is the server's absence (worth waiting for) rather than a refusal.
bool server_absent(const std::string& message) {
  // (A host name that does not resolve is not among them: a mistyped --db should fail at once.)
  for (const char* marker : {"Connection refused", "could not connect", "timeout expired", "server closed the connection",
                             "No such file or directory", "the database system is starting up",
                             "the database system is shutting down", "the database system is in recovery mode",
                             "not yet accepting connections", "No route to host", "Network is unreachable",
                             "Connection timed out", "Connection reset", "no connection to the server",
                             "could not receive data", "could not send data", "terminating connection"}) {
    if (message.find(marker) != std::string::npos) return true;
  }
  return false;
}

// A URI component percent-encoded (everything but unreserved characters, plus `keep`), so that the
// rebuilt URI parses back to the same values.
std::string encode(const std::string& v, const char* keep = "") {
  std::string out;
  for (const unsigned char c : v) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || std::strchr(keep, c) != nullptr) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace

std::string redact_postgres_url(const std::string& url) {
  std::string error;
  auto options = parse(url, &error);
  if (options.empty() && !error.empty()) {
    // libpq quotes the offending text, which may be the password: quoted parts are not repeated.
    std::string reason;
    bool quoted = false;
    for (const char c : error) {
      if (c == '"') {
        if (!quoted) reason += "\"...\"";
        quoted = !quoted;
      } else if (!quoted) {
        reason += c;
      }
    }
    fail("--db: not a valid PostgreSQL URI ({})", reason);
  }
  std::string out = "postgresql://";
  if (auto it = options.find("user"); it != options.end()) out += encode(it->second) + "@";
  // Host and port in the authority when they are plain (a name, an IPv4 or a bracketed IPv6
  // address; digits); otherwise (host lists, socket directories, odd bytes) as query parameters,
  // which carry any value exactly.
  const auto host = options.find("host");
  const auto port = options.find("port");
  auto plain = [](const std::string& v, const char* extra) {
    return !v.empty() && std::all_of(v.begin(), v.end(), [&](unsigned char c) {
      return std::isalnum(c) || c == '.' || c == '-' || c == '_' || std::strchr(extra, c) != nullptr;
    });
  };
  const bool host_plain = host == options.end() || plain(host->second, ":");
  const bool port_plain = port == options.end() || plain(port->second, "");
  const bool in_authority = host_plain && port_plain && (host != options.end() || port == options.end());
  if (in_authority && host != options.end()) {
    const std::string& h = host->second;
    out += h.find(':') != std::string::npos ? "[" + h + "]" : h;
  }
  if (in_authority && port != options.end()) out += ":" + port->second;
  out += "/";
  if (auto it = options.find("dbname"); it != options.end()) out += encode(it->second);
  std::string query;
  for (const auto& [key, value] : options) {
    if (key == "user" || key == "dbname" || key == "password" || key == "sslpassword") continue;
    if ((key == "host" || key == "port") && in_authority) continue;
    query += (query.empty() ? "?" : "&") + encode(key) + "=" + encode(value);
  }
  return out + query;
}

struct PgConnection::Impl {
  PGconn* conn = nullptr;
  // Statements prepared on this connection (parsed and planned once): SQL text -> name.
  std::map<std::string, std::string> prepared;
  ~Impl() {
    if (conn != nullptr) PQfinish(conn);
  }
};

PgConnection::PgConnection(const std::string& url, int connect_timeout_seconds)
    : url_(url), display_(redact_postgres_url(url)), timeout_(std::max(2, connect_timeout_seconds)),
      impl_(std::make_unique<Impl>()) {
  connect();
}

PgConnection::~PgConnection() = default;

void PgConnection::fail_connection(const std::string& what) const {
  const std::string message = fmt::format("{}: {}", display_, what);
  if (server_absent(what)) throw TransientError(message);
  throw Error(message);
}

void PgConnection::connect() {
  if (impl_->conn != nullptr) {
    PQfinish(impl_->conn);
    impl_->conn = nullptr;
  }
  impl_->prepared.clear();  // a new connection has none
  // Our defaults first: what the URI names overrides them (libpq applies PG* variables to the rest).
  // TCP keepalives and a timeout on unacknowledged data notice a network that went away in about a
  // minute, and the server ends a session whose transaction sits idle for a minute (its locks
  // would otherwise block the study's other workers until the server's own keepalive, hours).
  // extra_float_digits=3: servers before 12 print doubles exactly too.
  const std::string timeout = std::to_string(timeout_);
  const char* keywords[] = {"connect_timeout", "application_name", "keepalives", "keepalives_idle",
                            "keepalives_interval", "keepalives_count", "tcp_user_timeout", "options", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), "rankscope", "1", "30", "10", "3", "60000",
                          "-c idle_in_transaction_session_timeout=60000 -c extra_float_digits=3", url_.c_str(), nullptr};
  impl_->conn = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (impl_->conn == nullptr) throw TransientError(fmt::format("{}: out of memory opening a connection", display_));
  if (PQstatus(impl_->conn) != CONNECTION_OK) fail_connection(one_line(PQerrorMessage(impl_->conn)));
  // Quiet notices (CREATE TABLE IF NOT EXISTS ... already exists) instead of libpq printing them.
  PQsetNoticeProcessor(impl_->conn, [](void*, const char*) {}, nullptr);
}

bool PgConnection::ok() const { return impl_->conn != nullptr && PQstatus(impl_->conn) == CONNECTION_OK; }

void PgConnection::reconnect() { connect(); }

int PgConnection::server_version() const { return impl_->conn != nullptr ? PQserverVersion(impl_->conn) : 0; }

PgResult PgConnection::exec(const std::string& sql, const std::vector<PgParam>& params) {
  if (!ok()) fail_connection("no connection to the server");
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  // Statements with parameters are prepared once per connection; the others run as they are.
  PGresult* r = nullptr;
  if (params.empty()) {
    r = PQexecParams(impl_->conn, sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0);
  } else {
    auto it = impl_->prepared.find(sql);
    if (it == impl_->prepared.end()) {
      const std::string name = "rs" + std::to_string(impl_->prepared.size());
      PGresult* prep = PQprepare(impl_->conn, name.c_str(), sql.c_str(), static_cast<int>(values.size()), nullptr);
      const bool ok = prep != nullptr && PQresultStatus(prep) == PGRES_COMMAND_OK;
      const std::string message = ok ? "" : one_line(prep != nullptr ? PQresultErrorMessage(prep) : PQerrorMessage(impl_->conn));
      if (prep != nullptr) PQclear(prep);
      if (!ok) {
        if (PQstatus(impl_->conn) != CONNECTION_OK) throw TransientError(fmt::format("{}: {}", display_, message));
        throw Error(fmt::format("{}: {}", display_, message));
      }
      it = impl_->prepared.emplace(sql, name).first;
    }
    r = PQexecPrepared(impl_->conn, it->second.c_str(), static_cast<int>(values.size()), values.data(), nullptr, nullptr, 0);
  }
  const ExecStatusType status = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    std::string message = one_line(r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(impl_->conn));
    const char* state = r != nullptr ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    const std::string sqlstate = state != nullptr ? state : "";
    if (r != nullptr) PQclear(r);
    // A lost connection (or a server going down: class 08, 57P0x) is transient.
    if (PQstatus(impl_->conn) != CONNECTION_OK || sqlstate.starts_with("08") || sqlstate.starts_with("57P0")) {
      throw TransientError(fmt::format("{}: {}", display_, message));
    }
    throw Error(fmt::format("{}: {}{}", display_, message, sqlstate.empty() ? "" : " (SQLSTATE " + sqlstate + ")"));
  }
  PgResult out;
  const int n_rows = PQntuples(r), n_cols = PQnfields(r);
  for (int c = 0; c < n_cols; ++c) out.names_.emplace_back(PQfname(r, c));
  out.values_.resize(static_cast<size_t>(n_rows));
  for (int i = 0; i < n_rows; ++i) {
    auto& row = out.values_[static_cast<size_t>(i)];
    row.reserve(static_cast<size_t>(n_cols));
    for (int c = 0; c < n_cols; ++c) {
      if (PQgetisnull(r, i, c)) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(r, i, c), static_cast<size_t>(PQgetlength(r, i, c))));
      }
    }
  }
  const char* affected = PQcmdTuples(r);
  if (affected != nullptr && *affected != '\0') out.affected_ = std::stoll(affected);
  PQclear(r);
  return out;
}

void PgConnection::exec_script(const std::string& sql) {
  if (!ok()) fail_connection("no connection to the server");
  PGresult* r = PQexec(impl_->conn, sql.c_str());
  const ExecStatusType status = r != nullptr ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    const std::string message = one_line(r != nullptr ? PQresultErrorMessage(r) : PQerrorMessage(impl_->conn));
    if (r != nullptr) PQclear(r);
    if (PQstatus(impl_->conn) != CONNECTION_OK) throw TransientError(fmt::format("{}: {}", display_, message));
    throw Error(fmt::format("{}: {}", display_, message));
  }
  PQclear(r);
}

}  // namespace rankscope
