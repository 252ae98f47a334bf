// Results database at sweep scale: bulk-inserts N finished evaluations (default 1,000,000) with two
// metrics each into a fresh file, then times the Pareto query: metric_rows() for those two
// metrics (rows + evaluation ids + canonical configurations) plus pareto_front() over them, the
// median of several runs, against the 1 s target; and `rankscope pareto` end to end (process
// start to exit) when the executable is found.
// Usage: db_bench [N] [path] [rankscope executable]   (default path: /tmp/rankscope_db_bench.db, replaced)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "db/results_db.hpp"
#include "search/pareto.hpp"

using namespace rankscope;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A realistic canonical string, unique per i (about 40-50 characters).
std::string config_of(int64_t i) {
  return fmt::format("L{}-{}:attn={}%;L{},{}:mlp={}@svd", i % 32, 32 + i % 7, 1 + i % 100, (i / 100) % 32,
                     (i / 3200) % 32, 1 + i / 102400);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const std::filesystem::path path = argc > 2 ? argv[2] : "/tmp/rankscope_db_bench.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path.string() + suffix);

  try {
    auto start = std::chrono::steady_clock::now();
    {
      ResultsDb db(path);
      const int64_t study = db.open_study("bench", {{"space", "paper"}});
      const int64_t model =
          db.add_model({"00000000000000000000000000000000", "/models/bench", "llama", 7000000000});
      const int64_t batch = 50000;
      std::vector<NewEvaluation> evals;
      for (int64_t first = 0; first < n; first += batch) {
        evals.clear();
        for (int64_t i = first; i < std::min(n, first + batch); ++i) {
          NewEvaluation e;
          e.config = config_of(i);
          e.wall_s = 1.0;
          // Perplexity grows as parameters fall, with scatter: a front of a few dozen points, as
          // real studies have.
          const double params = 7e9 * (0.5 + 0.5 * static_cast<double>((i * 2654435761ull) % 1000003) / 1000003.0);
          const double noise = static_cast<double>((i * 40503ull) % 10007) / 10007.0;
          e.metrics = {{"tinystories.ppl", 5.0 + 3e10 / params + 4.0 * noise, 0.1, 4096},
                       {"size.params", params, std::nan(""), 0}};
          evals.push_back(std::move(e));
        }
        db.add_evaluations(study, model, evals, "bench:1");
      }
    }
    const double insert_s = seconds_since(start);
    fmt::print("inserted {} evaluations x 2 metrics in {:.1f} s ({:.1f} us each); file {:.0f} MiB\n", n,
               insert_s, insert_s / static_cast<double>(n) * 1e6,
               static_cast<double>(std::filesystem::file_size(path)) / (1 << 20));

    ResultsDb db(path);  // a fresh connection: nothing cached in SQLite's page cache
    const int64_t study = db.find_study("bench")->id;
    std::vector<double> times, front_times, total_times;
    size_t rows = 0, front_size = 0;
    double checksum = 0;
    for (int run = 0; run < 5; ++run) {
      start = std::chrono::steady_clock::now();
      const MetricRows result = db.metric_rows(study, {"tinystories.ppl", "size.params"});
      times.push_back(seconds_since(start));
      const auto t_front = std::chrono::steady_clock::now();
      front_size = pareto_front(result.rows, {true, true}).size();
      front_times.push_back(seconds_since(t_front));
      total_times.push_back(seconds_since(start));
      rows = result.rows.size();
      checksum = result.rows.empty() ? 0 : result.rows.back()[0] + result.rows.back()[1];
    }
    const double first = times.front();
    std::sort(times.begin(), times.end());
    std::sort(front_times.begin(), front_times.end());
    std::sort(total_times.begin(), total_times.end());
    fmt::print(
        "metric_rows: {} evaluations x 2 metrics (with ids and configuration strings): first {:.0f} ms, "
        "median {:.0f} ms, min {:.0f} ms (of 5; checksum {:.3f})\n",
        rows, first * 1e3, times[2] * 1e3, times[0] * 1e3, checksum);
    fmt::print("pareto_front: {} points on the front, median {:.0f} ms\n", front_size, front_times[2] * 1e3);
    fmt::print("Pareto query (fetch + front): median {:.0f} ms = {:.2f} x the 1 s target\n", total_times[2] * 1e3,
               total_times[2] / 1.0);
    if (argc > 3) {
      std::vector<double> cli;
      for (int run = 0; run < 3; ++run) {
        start = std::chrono::steady_clock::now();
        const std::string cmd = fmt::format("{} pareto --db {} --study bench --objectives tinystories.ppl:min,size.params:min "
                                            "--format csv > /dev/null", argv[3], path.string());
        if (std::system(cmd.c_str()) != 0) throw std::runtime_error("rankscope pareto failed");
        cli.push_back(seconds_since(start));
      }
      std::sort(cli.begin(), cli.end());
      fmt::print("rankscope pareto (process start to exit, hypervolume included): median {:.0f} ms = {:.2f} x the 1 s target\n",
                 cli[1] * 1e3, cli[1]);
    }
    start = std::chrono::steady_clock::now();
    const auto counts = db.counts(study);
    fmt::print("counts: {} done in {:.1f} ms\n", counts.done, seconds_since(start) * 1e3);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "db_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
