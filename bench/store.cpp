// The results stores under many workers, PostgreSQL against SQLite in the same run.
//  1. Throughput: N worker processes (1, 4, 16) each loop claim -> complete (two metrics, as a
//     `--tasks size` evaluation stores) on one study for a fixed time; evaluations/s stored.
//  2. Share of wall time: 16 workers whose evaluations take 1 s (claim, sleep 1 s, complete): the
//     time spent in store calls over the workers' wall time.
// The PostgreSQL server is a throwaway one (initdb/pg_ctl as for the tests) unless a URI is given.
//   build/bench/store_bench [--seconds 3] [--workers 1,4,16] [--db postgresql://...] [--slow-evals 4]
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "db/open_store.hpp"
#include "tests/pg_server.hpp"

using namespace rankscope;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Per-worker counters in shared memory (the workers are processes).
struct Shared {
  std::atomic<int64_t> stored{0};
  std::atomic<int64_t> store_ns{0};  // time inside store calls
  std::atomic<int64_t> wall_ns{0};
};

struct Totals {
  int64_t stored = 0, store_ns = 0, wall_ns = 0;
};

// Runs `workers` processes on `study` of `db` for `seconds` (or `evals` each, with `eval_s` of
// simulated work per evaluation); returns the counters.
Totals run(const std::string& db, const std::string& study, int workers, double seconds, int evals, double eval_s) {
  auto* shared = static_cast<Shared*>(mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (shared) Shared();
  {
    auto store = open_results_store(db);
    store->open_study(study, {{"bench", true}});
  }
  std::fflush(nullptr);
  std::vector<pid_t> pids;
  for (int w = 0; w < workers; ++w) {
    const pid_t pid = fork();
    if (pid == 0) {
      try {
        auto store = open_results_store(db);
        const int64_t s = store->open_study(study, {{"bench", true}});
        const int64_t model = store->add_model({"0123456789abcdef0123456789abcdef", "/m", "llama", 1000});
        const std::string worker = worker_id();
        const auto t0 = Clock::now();
        int64_t store_ns = 0;
        for (int64_t i = 0;; ++i) {
          if (evals > 0 ? i >= evals : since(t0) >= seconds) break;
          const std::string config = fmt::format("L{}:q={}", w, i + 1);
          const auto c0 = Clock::now();
          const auto id = store->claim(s, model, config, worker, 600);
          store_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c0).count();
          if (!id) continue;
          if (eval_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(eval_s));
          const auto c1 = Clock::now();
          store->complete(*id, {{"size.params", 1e6 + static_cast<double>(i)}, {"size.reduction_pct", 10.0}}, EvalStatus::done,
                          eval_s);
          store_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c1).count();
          shared->stored += 1;
        }
        shared->store_ns += store_ns;
        shared->wall_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
        _exit(0);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "worker %d: %s\n", w, e.what());
        _exit(1);
      }
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) waitpid(pid, nullptr, 0);
  const Totals out{shared->stored.load(), shared->store_ns.load(), shared->wall_ns.load()};
  munmap(shared, sizeof(Shared));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  std::string db_url, workers_text = "1,4,16";
  int slow_evals = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--seconds") seconds = std::stod(v);
    else if (a == "--db") db_url = v;
    else if (a == "--workers") workers_text = v;
    else if (a == "--slow-evals") slow_evals = std::stoi(v);
    else {
      std::fprintf(stderr, "store_bench: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  std::vector<int> counts;
  for (size_t p = 0; p < workers_text.size();) {
    const size_t q = workers_text.find(',', p);
    counts.push_back(std::stoi(workers_text.substr(p, q - p)));
    p = q == std::string::npos ? workers_text.size() : q + 1;
  }
  std::unique_ptr<test::PgTestServer> server;
  if (db_url.empty()) {
    std::string why;
    server = test::PgTestServer::start(&why);
    if (!server) {
      std::fprintf(stderr, "store_bench: %s (or give --db postgresql://...)\n", why.c_str());
      return 1;
    }
    db_url = server->url();
  }
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("rankscope-store-bench-{}", getpid());
  std::filesystem::create_directories(dir);
  fmt::print("store_bench: {} logical CPUs; PostgreSQL {}; SQLite {}\n", std::thread::hardware_concurrency(),
             open_results_store(db_url)->display(), (dir / "bench.db").string());
  try {
    for (const int n : counts) {
      double rate[2] = {0, 0};
      for (int kind = 0; kind < 2; ++kind) {
        const std::string db = kind == 0 ? (dir / "bench.db").string() : db_url;
        const auto r = run(db, fmt::format("throughput-{}", n), n, seconds, 0, 0.0);
        rate[kind] = static_cast<double>(r.stored) / (static_cast<double>(r.wall_ns) / 1e9 / n);
      }
      fmt::print("throughput: {:>2} workers: SQLite {:8.0f} evaluations/s, PostgreSQL {:8.0f} evaluations/s "
                 "(PostgreSQL/SQLite {:.2f})\n",
                 n, rate[0], rate[1], rate[1] / rate[0]);
    }
    for (int kind = 0; kind < 2; ++kind) {
      const std::string db = kind == 0 ? (dir / "bench.db").string() : db_url;
      const auto r = run(db, "slow", 16, 0, slow_evals, 1.0);
      fmt::print("share: 16 workers x {} evaluations of 1 s on {}: {:.3f} % of wall time in the store ({} stored)\n",
                 slow_evals, kind == 0 ? "SQLite" : "PostgreSQL",
                 100.0 * static_cast<double>(r.store_ns) / static_cast<double>(r.wall_ns), r.stored);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store_bench: %s\n", e.what());
    return 1;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return 0;
}
