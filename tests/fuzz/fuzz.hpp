// Mutation fuzzers of rankscope's parsers of untrusted files (checkpoints, config.json, tokenizers,
// .npy, task files, factor and calibration caches, results databases). No libFuzzer: a seeded,
// deterministic mutator over seed inputs (the real small files in ../shared/data where present,
// generated ones always), so the suite builds with g++ under ASan/UBSan and case K of seed S is
// the same input on every machine.
//
// A case passes when its loader returns or throws rankscope::Error with a one-line message. Any
// other exception, a crash, a hang (a per-case alarm) or an allocation above kMaxAllocationBytes
// fails it. Every input that ever failed is kept under tests/fuzz/corpus/<target>/ and replayed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace rankscope::fuzz {

// An allocation above this is a runaway (no loader needs 1 GiB for a test-sized input).
inline constexpr size_t kMaxAllocationBytes = size_t{1} << 30;

// splitmix64: tiny, fast, and the same sequence everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(next() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }

 private:
  uint64_t state_;
};

// One file of a seed case. `bytes` is written into the case directory at `path` (relative);
// with `link_to` set the file is a symbolic link to that (large, never mutated) file instead.
struct SeedFile {
  std::string path;
  std::string bytes;
  std::filesystem::path link_to;
  bool mutable_ = true;  // the mutator may pick it
  bool json = false;     // JSON-aware mutations apply
  size_t hot = 0;        // > 0: most byte mutations land in [0, hot) (e.g. a safetensors header)
};

// A seed case: a directory of files as a loader reads them.
struct Seed {
  std::string label;
  std::vector<SeedFile> files;
  unsigned weight = 1;  // relative frequency among the target's seeds
};

struct Target {
  std::string name;
  std::string description;
  // Seeds for this run; `shared` is ../shared (may not exist: generated seeds only).
  std::function<std::vector<Seed>(const std::filesystem::path& shared)> seeds;
  // Runs the loader(s) on a case directory. Returns normally or throws rankscope::Error.
  std::function<void(const std::filesystem::path& case_dir)> run;
  // Optional mutation with knowledge of the format (the database target edits rows through
  // SQLite); applied after the files are written, in some cases instead of byte mutations.
  std::function<void(const std::filesystem::path& case_dir, Rng& rng, std::vector<std::string>& log)> structured;
  unsigned structured_percent = 0;
  // Cases per default run (a few seconds in Release).
  int64_t default_cases = 3000;
};

// The mutator: 1-4 stacked mutations of `data` (byte flips, insertions, deletions, splices with
// `others`, truncation, extreme 64-bit integers, and for JSON: numbers replaced by extreme values,
// strings replaced from `dictionary`, nesting 50k-100k levels deep). Appends one word per mutation
// to `log`.
std::string mutate(std::string data, const SeedFile& file, Rng& rng, const std::vector<std::string>& dictionary,
                   const std::vector<const std::string*>& others, std::vector<std::string>& log);

// Every string literal of the JSON seeds (deduplicated): the mutator's dictionary.
std::vector<std::string> json_dictionary(const std::vector<Seed>& seeds);

// The registry of targets (one per loader).
std::vector<Target> all_targets();

// Helpers for targets.
// Where seeds are built with the project's writers: one directory per process, removed once the
// seeds are in memory.
std::filesystem::path seed_root();
// seed_root()/name, emptied: a scratch place for building seeds with the project's own writers.
std::filesystem::path seed_scratch(const std::string& name);
// A seed file: relative path, bytes, JSON or not (which mutations apply), the offset of its hot
// region (0: none).
SeedFile seed_file(const std::string& path, std::string bytes, bool is_json, size_t hot = 0);
std::string read_file(const std::filesystem::path& path);
void write_file(const std::filesystem::path& path, const std::string& bytes);
// The first `n` lines of a text file ("" when absent).
std::string head_lines(const std::filesystem::path& path, size_t n);

Target safetensors_target();
Target model_target();
Target tokenizer_target();
Target npy_target();
Target tasks_target();
Target cache_target();
Target db_target();

}  // namespace rankscope::fuzz
