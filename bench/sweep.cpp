// bench/sweep: sweep overhead on the quickstart experiment. Runs `rankscope sweep
// experiments/quickstart.ini` into a fresh database --reps times (the factor cache warmed by one
// untimed run, as in any study after its first minutes) and splits each run's wall time, measured
// from process start to exit, into model evaluation (the evaluators), decomposition (factors from
// the cache), and everything else: start-up, strategy, database, live output. Prints the medians
// and the overhead against the 2 % target.
//
//   build/bench/sweep [--reps N] [--budget N (default: the file's)] [--exe build/rankscope] [--experiment FILE]
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Run {
  double wall = 0, evaluators = 0, decomposing = 0;
  int evaluated = 0;
};

Run run_sweep(const std::string& exe, const std::string& experiment, const std::filesystem::path& dir, int budget) {
  for (const char* f : {"b.db", "b.db-wal", "b.db-shm"}) std::filesystem::remove(dir / f);
  const std::string cmd = fmt::format("{} sweep {} --db {} --cache-dir {}{} 2>&1", exe, experiment, (dir / "b.db").string(),
                                      (dir / "cache").string(), budget > 0 ? fmt::format(" --budget {}", budget) : "");
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = pclose(pipe);
  Run r;
  r.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::smatch m;
  const std::regex time_line(R"(time: ([0-9.]+) s wall, ([0-9.]+) s in the evaluators, ([0-9.]+) s decomposing)");
  const std::regex count_line(R"(: ([0-9]+) configurations evaluated in this run)");
  if (status != 0 || !std::regex_search(out, m, time_line)) throw std::runtime_error("sweep failed:\n" + out);
  r.evaluators = std::stod(m[2]);
  r.decomposing = std::stod(m[3]);
  if (std::regex_search(out, m, count_line)) r.evaluated = std::stoi(m[1]);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3, budget = 0;  // 0: the experiment file's budget
  std::string exe = "build/rankscope", experiment = "experiments/quickstart.ini";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--budget") && i + 1 < argc) budget = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--exe") && i + 1 < argc) exe = argv[++i];
    else if (!std::strcmp(argv[i], "--experiment") && i + 1 < argc) experiment = argv[++i];
    else {
      fmt::print(stderr, "usage: {} [--reps N] [--budget N] [--exe PATH] [--experiment FILE]\n", argv[0]);
      return 2;
    }
  }
  try {
    const auto dir = std::filesystem::temp_directory_path() / "rankscope-bench-sweep";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    run_sweep(exe, experiment, dir, budget);  // warms the factor cache
    std::vector<double> overhead, overhead_dec, wall;
    fmt::print("bench/sweep: {}{}, {} runs\n", experiment, budget > 0 ? fmt::format(" --budget {}", budget) : "", reps);
    for (int r = 0; r < reps; ++r) {
      const Run run = run_sweep(exe, experiment, dir, budget);
      const double other = run.wall - run.evaluators - run.decomposing;
      fmt::print("  run {}: {} evaluations, {:.2f} s wall: evaluators {:.2f} s, decomposing {:.2f} s, other {:.3f} s\n", r + 1,
                 run.evaluated, run.wall, run.evaluators, run.decomposing, other);
      wall.push_back(run.wall);
      overhead.push_back(100.0 * other / run.wall);
      overhead_dec.push_back(100.0 * (other + run.decomposing) / run.wall);
    }
    fmt::print("sweep overhead (start-up, strategy, database, output): median {:.2f} % of wall (target < 2 %)\n",
               median(overhead));
    fmt::print("counting decomposition as overhead too:                 median {:.2f} %\n", median(overhead_dec));
    fmt::print("median wall {:.1f} s\n", median(wall));
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench/sweep: {}\n", e.what());
    return 1;
  }
  return 0;
}
