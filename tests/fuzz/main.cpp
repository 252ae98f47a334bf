// rankscope_fuzz: runs one fuzz target for N cases, replays a crash corpus, or writes one case.
//
//   rankscope_fuzz TARGET [--cases N] [--seed S]      N mutated inputs (RANKSCOPE_FUZZ_CASES overrides
//                                                      the default; RANKSCOPE_FUZZ_SEED the seed)
//   rankscope_fuzz TARGET --case K [--seed S]         case K alone, its directory kept
//   rankscope_fuzz TARGET --case K --write DIR        case K written as a corpus entry, not run
//   rankscope_fuzz TARGET --corpus DIR                every entry of DIR (tests/fuzz/corpus/TARGET)
//   rankscope_fuzz --list
//
// Exit status: 0 when every case passed, 1 when one failed, 2 for a usage error. A crash or a
// hang kills the process after printing the case (target, seed, case number) that caused it.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <typeinfo>
#include <vector>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "tests/fuzz/fuzz.hpp"

namespace fs = std::filesystem;
using namespace rankscope::fuzz;

namespace {

// What is running now, for the crash and hang handlers (async-signal-safe: a fixed buffer).
char g_case_info[2048] = "no case running";
std::atomic<size_t> g_runaway_allocation{0};

void print_case_info() {
  const char* prefix = "\nFUZZ FAILURE while running: ";
  (void)!::write(STDERR_FILENO, prefix, std::strlen(prefix));
  (void)!::write(STDERR_FILENO, g_case_info, std::strlen(g_case_info));
  (void)!::write(STDERR_FILENO, "\n", 1);
}

void on_alarm(int) {
  const char* msg = "\nFUZZ FAILURE: the case did not finish in time (a hang)";
  (void)!::write(STDERR_FILENO, msg, std::strlen(msg));
  print_case_info();
  ::_exit(3);
}

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));
#else
void on_crash(int sig) {
  char msg[64];
  std::snprintf(msg, sizeof msg, "\nFUZZ FAILURE: signal %d", sig);
  (void)!::write(STDERR_FILENO, msg, std::strlen(msg));
  print_case_info();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}
#endif

void install_handlers() {
  ::signal(SIGALRM, on_alarm);
  ::signal(SIGPIPE, SIG_IGN);
#if defined(__SANITIZE_ADDRESS__)
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(print_case_info);
#else
  // An alternate stack, so that a stack overflow can still be reported.
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  ::sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_handler = on_crash;
  sa.sa_flags = SA_ONSTACK;
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::sigaction(sig, &sa, nullptr);
#endif
}

uint64_t case_seed(uint64_t seed, int64_t index) {
  Rng mix(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(index));
  return mix.next();
}

const std::string kSharedMarker = "${shared}";

// Special files a user may name by mistake: each must be refused, never waited on or read forever.
void make_special(const fs::path& path, Rng& rng, std::vector<std::string>& log) {
  std::error_code ec;
  fs::remove_all(path, ec);
  switch (rng.below(5)) {
    case 0: ::mkfifo(path.c_str(), 0600); log.push_back("fifo"); break;
    case 1: fs::create_directories(path, ec); log.push_back("directory"); break;
    case 2: fs::create_symlink("/dev/zero", path, ec); log.push_back("link-to-/dev/zero"); break;
    case 3: fs::create_symlink(path.filename().string() + ".missing", path, ec); log.push_back("dangling-link"); break;
    default: fs::create_symlink(path.filename(), path, ec); log.push_back("link-loop"); break;
  }
}

struct Fuzzer {
  Target target;
  fs::path shared;
  std::vector<Seed> seeds;
  std::vector<std::string> dictionary;
  std::vector<const std::string*> others;
  unsigned total_weight = 0;

  Fuzzer(Target t, fs::path shared_dir) : target(std::move(t)), shared(std::move(shared_dir)) {
    seeds = target.seeds(shared);
    dictionary = json_dictionary(seeds);
    for (const auto& s : seeds) {
      total_weight += s.weight;
      for (const auto& f : s.files) {
        if (f.link_to.empty() && f.bytes.size() < (4u << 20)) others.push_back(&f.bytes);
      }
    }
  }

  // Writes case `index` of `seed` into `dir` (fresh); returns its description.
  std::string materialize(uint64_t seed, int64_t index, const fs::path& dir) {
    Rng rng(case_seed(seed, index));
    unsigned pick = static_cast<unsigned>(rng.below(total_weight));
    size_t s = 0;
    while (pick >= seeds[s].weight) pick -= seeds[s++].weight;
    const Seed& chosen = seeds[s];
    std::vector<size_t> candidates;
    for (size_t i = 0; i < chosen.files.size(); ++i) {
      if (chosen.files[i].mutable_) candidates.push_back(i);
    }
    const size_t target_file = candidates.empty() ? SIZE_MAX : candidates[rng.below(candidates.size())];
    const bool special = !candidates.empty() && rng.chance(3);
    const bool second = candidates.size() > 1 && rng.chance(10);
    const size_t second_file = second ? candidates[rng.below(candidates.size())] : SIZE_MAX;
    std::vector<std::string> log;
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    for (size_t i = 0; i < chosen.files.size(); ++i) {
      const SeedFile& f = chosen.files[i];
      const fs::path path = dir / f.path;
      fs::create_directories(path.parent_path());
      if (!f.link_to.empty()) {
        fs::create_symlink(f.link_to, path);
        continue;
      }
      const bool mutate_this = (i == target_file && !special) || i == second_file;
      if (mutate_this) log.push_back(f.path + ":");
      write_file(path, mutate_this ? mutate(f.bytes, f, rng, dictionary, others, log) : f.bytes);
    }
    if (special) {
      log.push_back(chosen.files[target_file].path + ":");
      make_special(dir / chosen.files[target_file].path, rng, log);
    }
    if (target.structured && rng.chance(target.structured_percent)) target.structured(dir, rng, log);
    std::string words;
    for (const auto& w : log) words += (words.empty() ? "" : " ") + w;
    return fmt::format("{} [{}]", chosen.label, words);
  }
};

enum class Outcome { loaded, rejected, failed };

struct Result {
  Outcome outcome;
  std::string detail;
};

Result run_case(const Target& target, const fs::path& dir, unsigned timeout_s) {
  g_runaway_allocation = 0;
  ::alarm(timeout_s);
  Result r{Outcome::loaded, ""};
  try {
    target.run(dir);
  } catch (const rankscope::Error& e) {
    const std::string message = e.what();
    r = {Outcome::rejected, message};
    if (message.empty() || message.find('\n') != std::string::npos) {
      r = {Outcome::failed, "the Error message is not one line: " + message};
    }
  } catch (const std::bad_alloc& e) {
    r = {Outcome::failed, g_runaway_allocation ? fmt::format("runaway allocation of {} bytes", g_runaway_allocation.load())
                                               : std::string("std::bad_alloc: ") + e.what()};
  } catch (const std::exception& e) {
    r = {Outcome::failed, fmt::format("{} instead of rankscope::Error: {}", typeid(e).name(), e.what())};
  } catch (...) {
    r = {Outcome::failed, "an exception of unknown type"};
  }
  ::alarm(0);
  return r;
}

// Case directory -> corpus entry: special files become marker files (NAME@fifo, NAME@dir,
// NAME@link holding the link's target, ${shared} for ../shared).
void save_entry(const fs::path& from, const fs::path& to, const fs::path& shared) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    const auto name = entry.path().filename().string();
    const auto status = fs::symlink_status(entry.path());
    if (fs::is_symlink(status)) {
      std::string target = fs::read_symlink(entry.path()).string();
      const std::string prefix = shared.string();
      if (target.compare(0, prefix.size(), prefix) == 0) target = kSharedMarker + target.substr(prefix.size());
      write_file(to / (name + "@link"), target);
    } else if (fs::is_fifo(status)) {
      write_file(to / (name + "@fifo"), "");
    } else if (fs::is_directory(status)) {
      if (fs::is_empty(entry.path())) write_file(to / (name + "@dir"), "");
      else save_entry(entry.path(), to / name, shared);
    } else {
      fs::copy_file(entry.path(), to / name, fs::copy_options::overwrite_existing);
    }
  }
}

// Corpus entry -> case directory. False when it links into ../shared and that is absent.
bool load_entry(const fs::path& from, const fs::path& to, const fs::path& shared) {
  fs::create_directories(to);
  for (const auto& entry : fs::directory_iterator(from)) {
    const auto name = entry.path().filename().string();
    auto marked = [&](const char* suffix) {
      const std::string s = suffix;
      return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    auto stem = [&](const char* suffix) { return to / name.substr(0, name.size() - std::strlen(suffix)); };
    if (entry.is_directory()) {
      if (!load_entry(entry.path(), to / name, shared)) return false;
    } else if (marked("@fifo")) {
      ::mkfifo(stem("@fifo").c_str(), 0600);
    } else if (marked("@dir")) {
      fs::create_directories(stem("@dir"));
    } else if (marked("@link")) {
      std::string target = read_file(entry.path());
      if (target.compare(0, kSharedMarker.size(), kSharedMarker) == 0) {
        target = shared.string() + target.substr(kSharedMarker.size());
        if (!fs::exists(target)) return false;
      }
      fs::create_symlink(target, stem("@link"));
    } else {
      fs::copy_file(entry.path(), to / name, fs::copy_options::overwrite_existing);
    }
  }
  return true;
}

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : fallback;
}

int usage() {
  std::cerr << "usage: rankscope_fuzz TARGET [--cases N] [--seed S] [--case K [--write DIR]] [--corpus DIR] [--save DIR]\n"
               "       rankscope_fuzz --list\n";
  return 2;
}

}  // namespace

#if !defined(__SANITIZE_ADDRESS__)
// Runaway allocations fail the case (ASan builds use max_allocation_size_mb instead).
namespace {
void* checked_alloc(size_t size, size_t align) {
  if (size > kMaxAllocationBytes) {
    g_runaway_allocation = size;
    throw std::bad_alloc();
  }
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (size + align - 1) / align * align)
                                               : std::malloc(size == 0 ? 1 : size);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace
void* operator new(size_t size) { return checked_alloc(size, 0); }
void* operator new[](size_t size) { return checked_alloc(size, 0); }
void* operator new(size_t size, std::align_val_t a) { return checked_alloc(size, static_cast<size_t>(a)); }
void* operator new[](size_t size, std::align_val_t a) { return checked_alloc(size, static_cast<size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
#else
extern "C" const char* __asan_default_options() {
  // An allocation above 1 GiB is reported (and fails the run) instead of being attempted.
  return "max_allocation_size_mb=1024:allocator_may_return_null=0:detect_leaks=0";
}
#endif

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage();
  const auto targets = all_targets();
  if (args[0] == "--list") {
    for (const auto& t : targets) std::cout << t.name << "  " << t.description << "\n";
    return 0;
  }
  const Target* chosen = nullptr;
  for (const auto& t : targets) {
    if (t.name == args[0]) chosen = &t;
  }
  if (chosen == nullptr) {
    std::cerr << "rankscope_fuzz: unknown target '" << args[0] << "' (see --list)\n";
    return 2;
  }
  int64_t cases = env_int("RANKSCOPE_FUZZ_CASES", chosen->default_cases);
  auto seed = static_cast<uint64_t>(env_int("RANKSCOPE_FUZZ_SEED", 1));
  int64_t only_case = -1;
  fs::path write_dir, corpus_dir, save_dir;
  for (size_t i = 1; i < args.size(); ++i) {
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw std::runtime_error("missing value after " + args[i]);
      return args[++i];
    };
    try {
      if (args[i] == "--cases") cases = std::stoll(value());
      else if (args[i] == "--seed") seed = std::stoull(value());
      else if (args[i] == "--case") only_case = std::stoll(value());
      else if (args[i] == "--write") write_dir = value();
      else if (args[i] == "--corpus") corpus_dir = value();
      else if (args[i] == "--save") save_dir = value();
      else return usage();
    } catch (const std::exception&) {
      return usage();
    }
  }
  const unsigned timeout_s = static_cast<unsigned>(env_int("RANKSCOPE_FUZZ_CASE_TIMEOUT", 60));

  fs::path shared = std::getenv("RANKSCOPE_SHARED_DIR") ? fs::path(std::getenv("RANKSCOPE_SHARED_DIR"))
                                                         : fs::path(RANKSCOPE_SOURCE_DIR) / ".." / "shared";
  shared = fs::weakly_canonical(shared);
  // One work directory per process: two runs of a target at once must never share case
  // directories (one would write its files through the other's links into ../shared).
  const fs::path work = fs::path(RANKSCOPE_BINARY_DIR) / "fuzz-work" / fmt::format("{}.{}", chosen->name, ::getpid());
  install_handlers();

  if (!corpus_dir.empty()) {
    if (!fs::is_directory(corpus_dir)) {
      std::cout << "fuzz corpus " << chosen->name << ": no corpus directory " << corpus_dir << "\n";
      return 0;
    }
    std::vector<fs::path> entries;
    for (const auto& e : fs::directory_iterator(corpus_dir)) {
      if (e.is_directory()) entries.push_back(e.path());
    }
    std::sort(entries.begin(), entries.end());
    int failures = 0, skipped = 0;
    for (const auto& entry : entries) {
      const fs::path dir = work / "corpus";
      std::error_code ec;
      fs::remove_all(dir, ec);
      if (!load_entry(entry, dir, shared)) {
        std::cout << "SKIPPED: corpus entry " << entry.filename().string() << " needs " << shared.string() << "\n";
        ++skipped;
        continue;
      }
      std::snprintf(g_case_info, sizeof g_case_info, "target %s, corpus entry %s", chosen->name.c_str(), entry.c_str());
      const Result r = run_case(*chosen, dir, timeout_s);
      const char* word = r.outcome == Outcome::loaded ? "loaded" : r.outcome == Outcome::rejected ? "rejected" : "FAILED";
      std::cout << word << "  " << entry.filename().string() << (r.detail.empty() ? "" : ": " + r.detail) << "\n";
      if (r.outcome == Outcome::failed) ++failures;
    }
    std::cout << fmt::format("fuzz corpus {}: {} entries, {} failed, {} skipped\n", chosen->name, entries.size(),
                             failures, skipped);
    std::error_code ec;
    if (failures == 0) fs::remove_all(work, ec);
    return failures ? 1 : 0;
  }

  Fuzzer fuzzer(*chosen, shared);
  {
    std::error_code ec;
    fs::remove_all(seed_root(), ec);
  }
  if (fuzzer.seeds.empty()) {
    std::cerr << "rankscope_fuzz: target " << chosen->name << " has no seeds\n";
    return 1;
  }
  if (!fs::exists(shared / "data")) {
    std::cout << "SKIPPED: seeds from " << (shared / "data").string()
              << " (not found: ../shared is not beside the repository); fuzzing generated seeds only\n";
  }

  if (only_case >= 0) {
    if (!write_dir.empty()) {
      const fs::path dir = work / "write";
      const std::string what = fuzzer.materialize(seed, only_case, dir);
      const fs::path to = write_dir / fmt::format("s{}-c{}", seed, only_case);
      std::error_code ec;
      fs::remove_all(to, ec);
      save_entry(dir, to, shared);
      std::cout << "wrote " << to.string() << ": " << what << "\n";
      return 0;
    }
    const fs::path dir = work / fmt::format("s{}-c{}", seed, only_case);
    const std::string what = fuzzer.materialize(seed, only_case, dir);
    std::snprintf(g_case_info, sizeof g_case_info, "target %s, seed %llu, case %lld: %s (input in %s)",
                  chosen->name.c_str(), static_cast<unsigned long long>(seed), static_cast<long long>(only_case),
                  what.c_str(), dir.c_str());
    const Result r = run_case(*chosen, dir, timeout_s);
    const char* word = r.outcome == Outcome::loaded ? "loaded" : r.outcome == Outcome::rejected ? "rejected" : "FAILED";
    std::cout << word << ": " << what << "\n  " << r.detail << "\n  input in " << dir.string() << "\n";
    return r.outcome == Outcome::failed ? 1 : 0;
  }

  const auto start = std::chrono::steady_clock::now();
  int64_t loaded = 0, rejected = 0, failed = 0, unnamed = 0, unnamed_case = 0;
  std::string unnamed_example;
  const fs::path dir = work / "case";
  for (int64_t k = 0; k < cases; ++k) {
    const std::string what = fuzzer.materialize(seed, k, dir);
    std::snprintf(g_case_info, sizeof g_case_info,
                  "target %s, seed %llu, case %lld: %s (input in %s; rerun with: rankscope_fuzz %s --seed %llu --case %lld)",
                  chosen->name.c_str(), static_cast<unsigned long long>(seed), static_cast<long long>(k), what.c_str(),
                  dir.c_str(), chosen->name.c_str(), static_cast<unsigned long long>(seed), static_cast<long long>(k));
    const Result r = run_case(*chosen, dir, timeout_s);
    switch (r.outcome) {
      case Outcome::loaded: ++loaded; break;
      case Outcome::rejected:
        ++rejected;
        // Every Error should name the file it is about; all of a case's files lie under `dir`.
        if (r.detail.find(dir.string()) == std::string::npos) {
          if (unnamed++ == 0) {
            unnamed_case = k;
            unnamed_example = r.detail;
          }
        }
        break;
      case Outcome::failed:
        ++failed;
        std::cout << fmt::format("FAILED case {}: {}\n  {}\n", k, what, r.detail);
        if (!save_dir.empty()) {
          const fs::path again = work / "save";
          fuzzer.materialize(seed, k, again);
          save_entry(again, save_dir / fmt::format("s{}-c{}", seed, k), shared);
        }
        break;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (unnamed > 0) {
    std::cout << fmt::format("note: {} of the {} Errors do not name a file of the input, e.g. case {}: {}\n", unnamed,
                             rejected, unnamed_case, unnamed_example);
  }
  std::cout << fmt::format("fuzz {}: {} cases (seed {}, {} seeds) in {:.1f} s: {} rejected with an Error, {} loaded, {} failed\n",
                           chosen->name, cases, seed, fuzzer.seeds.size(), seconds, rejected, loaded, failed);
  std::error_code ec;
  if (failed == 0) fs::remove_all(work, ec);
  return failed ? 1 : 0;
}
