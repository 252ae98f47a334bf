// rankscope db copy --from A --to B [--study NAME]: studies between results stores.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/base/error.hpp"
#include "db/copy_store.hpp"
#include "db/open_store.hpp"

namespace rankscope::cli {

int run_db(const Params& params) {
  if (params.action != "copy") fail("db: unknown action '{}' (expected copy)", params.action);
  if (params.from == params.to) fail("db copy: --from and --to name the same store");
  StoreOptions read;
  read.create = false;  // a mistyped source is an error, not a new empty store
  const auto from = open_results_store(params.from, read);
  const auto to = open_results_store(params.to);
  const auto reports = copy_studies(*from, *to, params.study);
  for (const auto& r : reports) {
    fmt::print("study '{}' {} {}: {} evaluations copied, {} already there{}\n", r.study, r.created ? "created in" : "merged into",
               to->display(), r.copied, r.present,
               r.in_flight > 0 ? fmt::format(", {} in flight not copied", r.in_flight) : "");
  }
  if (reports.empty()) fmt::print("{}: no studies to copy\n", from->display());
  return 0;
}

}  // namespace rankscope::cli
