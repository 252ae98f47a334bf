// Copies studies between results stores (any two: SQLite <-> PostgreSQL, or two of a kind),
// merging: a configuration the target already holds (finished or claimed) is kept as it is there,
// so copying twice, or copying two partial copies into one, gives their union without duplicates.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "db/results_store.hpp"

namespace rankscope {

struct CopyReport {
  std::string study;
  int64_t copied = 0;     // finished evaluations added to the target
  int64_t present = 0;    // finished in the source, already in the target (kept once)
  int64_t in_flight = 0;  // claims in the source (being evaluated): not copied
  bool created = false;   // the study was new in the target
};

// Copies study `study` (every study when empty) of `from` into `to`: the study with its settings
// (a study of that name in the target must have the same settings, stale_after aside: Error
// otherwise), its models, every finished evaluation with its metrics and protocols, workers, wall
// times and errors, and the strategy state when the target has none. Claims are not copied.
// Evaluation ids and times are the target's own.
std::vector<CopyReport> copy_studies(const ResultsStore& from, ResultsStore& to, const std::string& study = "");

}  // namespace rankscope
