// Opens the results store a --db argument names: a postgresql:// or postgres:// URI is a
// PostgreSQL server (builds with RANKSCOPE_POSTGRES), anything else a SQLite file.
#pragma once

#include <memory>
#include <string>

#include "db/results_store.hpp"

namespace rankscope {

struct StoreOptions {
  // Create the file or schema when absent (read-only commands pass false: a mistyped name is then
  // an error, not a new empty store).
  bool create = true;
  // SQLite: how long one transaction waits for another process's lock.
  double busy_timeout_seconds = 300;
  // PostgreSQL: how long one transaction waits for a server that is away.
  double server_wait_seconds = 3600;
};

std::unique_ptr<ResultsStore> open_results_store(const std::string& where, const StoreOptions& options = {});

// True when `where` names a PostgreSQL server rather than a file.
bool is_server_store(const std::string& where);

}  // namespace rankscope
