// bench/threads: what OpenMP threads that spin while idle cost when the machine has other work.
// Runs the rankscope executable as a user does, with a competing process (one busy loop, like any
// other job on the machine) alive for the whole run, under two wait policies in paired runs:
//   spinning  OMP_WAIT_POLICY=ACTIVE (idle threads spin) or libgomp's default (GOMP_SPINCOUNT=300000:
//             spin about a hundred microseconds, then sleep), what every command but sweep ran with
//             before rankscope set a policy itself;
//   passive   no variable set: rankscope re-executes itself with OMP_WAIT_POLICY=PASSIVE.
// Workloads: `eval --tasks arc_easy --limit 100`, `generate --tokens 256` and a 16-configuration
// `sweep` of the quickstart, on stories260K-hf. Prints the median of each and the ratio
// spinning / passive (the baseline is the passive run of the same pair). Then, on a quiet
// machine, the start-up cost of the re-execution itself: `config` with the policy already set
// (no re-exec) against unset (one re-exec).
//
// Spinning is slow (a minute and more per run under load): --reps defaults to 1, --active adds
// OMP_WAIT_POLICY=ACTIVE to libgomp's default.
//
//   build/bench/threads [--reps N] [--exe build/rankscope] [--active] [--no-competitor] [--skip-sweep]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One busy loop in a child process, from construction to destruction.
class Competitor {
 public:
  Competitor() {
    pid_ = fork();
    if (pid_ == 0) {
      volatile unsigned long x = 0;
      for (;;) x = x + 1;
    }
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  ~Competitor() {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  Competitor(const Competitor&) = delete;
  Competitor& operator=(const Competitor&) = delete;

 private:
  pid_t pid_ = -1;
};

struct Result {
  double wall = 0;   // process start to exit, s
  std::string out;   // stdout and stderr together
};

// Runs `env ENV EXE ARGS` (ENV may be empty) through the shell; throws when it fails.
Result run(const std::string& env, const std::string& exe, const std::string& args) {
  // env -u: the passive case must see no policy from the caller's environment either.
  const std::string cmd = fmt::format("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT {} {} {} 2>&1", env, exe, args);
  const auto t0 = std::chrono::steady_clock::now();
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) throw std::runtime_error("popen failed: " + cmd);
  Result r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(pipe);
  r.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (status != 0) throw std::runtime_error(fmt::format("`{}` failed:\n{}", cmd, r.out));
  return r;
}

// generate's "[... generated in X s: Y tokens/s]" line.
double tokens_per_s(const std::string& out) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(R"(: ([0-9.]+) tokens/s\])"))) throw std::runtime_error("no tokens/s in:\n" + out);
  return std::stod(m[1]);
}

struct Policy {
  const char* name;
  const char* env;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 1;
  bool competitor = true, sweep = true, active = false;
  std::string exe = "build/rankscope";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--exe") && i + 1 < argc) exe = argv[++i];
    else if (!std::strcmp(argv[i], "--no-competitor")) competitor = false;
    else if (!std::strcmp(argv[i], "--active")) active = true;
    else if (!std::strcmp(argv[i], "--skip-sweep")) sweep = false;
    else {
      fmt::print(stderr, "usage: {} [--reps N] [--exe PATH] [--active] [--no-competitor] [--skip-sweep]\n", argv[0]);
      return 2;
    }
  }
  try {
    const std::string model = "../shared/data/stories260K-hf";
    const auto dir = std::filesystem::temp_directory_path() / "rankscope-bench-threads";
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    const std::string eval_args = model + " --tasks arc_easy --limit 100";
    const std::string generate_args = model + " --tokens 256 --ignore-eos";
    const auto sweep_args = [&] {
      for (const char* f : {"t.db", "t.db-wal", "t.db-shm"}) std::filesystem::remove(dir / f);
      return fmt::format("sweep experiments/quickstart.ini --budget 16 --db {} --cache-dir {}", (dir / "t.db").string(),
                         (dir / "cache").string());
    };
    run("", exe, sweep_args());  // fills the factor cache: every timed sweep reads its factors from it

    const Policy passive{"passive (default)", ""};
    std::vector<Policy> spinning = {{"libgomp default (GOMP_SPINCOUNT=300000)", "GOMP_SPINCOUNT=300000"}};
    if (active) spinning.push_back({"OMP_WAIT_POLICY=ACTIVE", "OMP_WAIT_POLICY=ACTIVE"});
    fmt::print("bench/threads: {} paired runs each, {}\n\n", reps,
               competitor ? "one competing busy loop running throughout" : "no competing process");
    for (const auto& spin : spinning) {
      std::vector<double> eval_spin, eval_passive, eval_ratio, gen_spin, gen_passive, gen_ratio, sweep_spin, sweep_passive,
          sweep_ratio;
      for (int r = 0; r < reps; ++r) {
        const auto busy = competitor ? std::make_unique<Competitor>() : nullptr;
        eval_spin.push_back(run(spin.env, exe, "eval " + eval_args).wall);
        eval_passive.push_back(run(passive.env, exe, "eval " + eval_args).wall);
        eval_ratio.push_back(eval_spin.back() / eval_passive.back());
        gen_spin.push_back(tokens_per_s(run(spin.env, exe, "generate " + generate_args).out));
        gen_passive.push_back(tokens_per_s(run(passive.env, exe, "generate " + generate_args).out));
        gen_ratio.push_back(gen_passive.back() / gen_spin.back());
        if (sweep) {
          sweep_spin.push_back(run(spin.env, exe, sweep_args()).wall);
          sweep_passive.push_back(run(passive.env, exe, sweep_args()).wall);
          sweep_ratio.push_back(sweep_spin.back() / sweep_passive.back());
        }
      }
      fmt::print("{} against passive\n", spin.name);
      fmt::print("  eval arc_easy --limit 100   {:8.2f} s   vs {:8.2f} s    passive {:.1f}x faster (median of pair ratios)\n",
                 median(eval_spin), median(eval_passive), median(eval_ratio));
      fmt::print("  generate --tokens 256       {:8.0f} tok/s vs {:6.0f} tok/s passive {:.1f}x faster\n", median(gen_spin),
                 median(gen_passive), median(gen_ratio));
      if (sweep) {
        fmt::print("  sweep quickstart --budget 16 {:7.2f} s   vs {:8.2f} s    passive {:.1f}x faster\n", median(sweep_spin),
                   median(sweep_passive), median(sweep_ratio));
      }
      fmt::print("\n");
    }

    // The re-execution's own cost, on a quiet machine: a command that does almost nothing else.
    const std::string config_args = "config " + model + " --canonical 'L0:q=1'";
    std::vector<double> direct, reexec;
    for (int r = 0; r < 10 * reps; ++r) {
      direct.push_back(run("OMP_WAIT_POLICY=PASSIVE", exe, config_args).wall);
      reexec.push_back(run("", exe, config_args).wall);
    }
    fmt::print("start-up: `config` {:.1f} ms with the policy set (no re-exec), {:.1f} ms unset (one re-exec): +{:.1f} ms "
               "(medians of {})\n",
               1e3 * median(direct), 1e3 * median(reexec), 1e3 * (median(reexec) - median(direct)), direct.size());
    std::filesystem::remove_all(dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench/threads: {}\n", e.what());
    return 1;
  }
  return 0;
}
