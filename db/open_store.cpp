#include "db/open_store.hpp"

#include "core/base/error.hpp"
#include "db/pg_connection.hpp"
#include "db/results_db.hpp"
#ifdef RANKSCOPE_POSTGRES
#include "db/pg_store.hpp"
#endif

namespace rankscope {

// Here rather than in pg_connection.cpp: builds without libpq still tell a URI from a path.
bool is_postgres_url(std::string_view text) {
  return text.starts_with("postgresql://") || text.starts_with("postgres://");
}

bool is_server_store(const std::string& where) { return is_postgres_url(where); }

std::unique_ptr<ResultsStore> open_results_store(const std::string& where, const StoreOptions& options) {
  if (is_server_store(where)) {
#ifdef RANKSCOPE_POSTGRES
    PgStore::Options o;
    o.create = options.create;
    o.server_wait_seconds = options.server_wait_seconds;
    return std::make_unique<PgStore>(where, o);
#else
    fail("--db: this rankscope was built without PostgreSQL support (install libpq-dev and configure with "
         "-DRANKSCOPE_POSTGRES=ON)");
#endif
  }
  ResultsDb::Options o;
  o.create = options.create;
  o.busy_timeout_seconds = options.busy_timeout_seconds;
  return std::make_unique<ResultsDb>(where, o);
}

}  // namespace rankscope
