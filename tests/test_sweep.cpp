// rankscope sweep as users run it: real processes on real SQLite files with real models.
// Killed and restarted studies, concurrent workers, resumed evolution, the paper's experiment
// file against Llama-2-7B shapes, one small case study end to end, and the query commands.
#include <csignal>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "db/results_db.hpp"
#include "search/pareto.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace rankscope;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

fs::path stories() { return test::shared_data("stories260K-hf"); }

// Starts build/rankscope with `args` (stdout and stderr to `log`), returns its pid.
pid_t spawn_rankscope(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> all = {RANKSCOPE_EXE};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, RANKSCOPE_EXE, &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int run(const std::vector<std::string>& args, const fs::path& log) { return wait_exit(spawn_rankscope(args, log)); }

std::string read_file(const fs::path& p);

// Waits (up to two minutes) until a running sweep's log shows `n` evaluations stored: each
// stored evaluation prints one "[  k/budget]" line, after its transaction committed.
bool wait_for_evaluations(const fs::path& log, int n) {
  const std::string marker = fmt::format("[{:>4}/", n);
  for (int i = 0; i < 2400; ++i) {
    if (fs::exists(log) && read_file(log).find(marker) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string capture(const std::string& args, int* code = nullptr) {
  FILE* pipe = popen((std::string(RANKSCOPE_EXE) + " " + args + " 2>&1").c_str(), "r");
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int status = pclose(pipe);
  if (code) *code = WEXITSTATUS(status);
  return text;
}

// Every evaluation of a study: config -> status name.
std::vector<std::pair<std::string, std::string>> evaluations(const fs::path& db_path, const std::string& study) {
  ResultsDb db(db_path);
  std::vector<std::pair<std::string, std::string>> out;
  const auto s = db.find_study(study);
  REQUIRE(s);
  db.for_each_evaluation(s->id, [&](const EvaluationRecord& r) { out.emplace_back(r.config, std::string(status_name(r.status))); });
  return out;
}

std::vector<std::string> sweep_args(const fs::path& dir, const std::string& study, int budget, const std::string& strategy) {
  return {"sweep",         "--model",    stories().string(), "--db", (dir / "r.db").string(), "--study", study,
          "--strategy",    strategy,     "--budget",         std::to_string(budget), "--space", "per-matrix",
          "--choices",     "dense,50%,25%", "--method",      "svd", "--tasks", "tinystories,size", "--limit", "3",
          "--objectives",  "tinystories.ppl:min,size.params:min", "--seed", "5", "--population", "8",
          "--data-dir",    test::shared_data("").string(), "--stale-after", "2"};
}

}  // namespace

TEST_CASE("sweep: a study killed with SIGKILL and restarted evaluates every configuration exactly once") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("sweep-kill");
  const auto args = sweep_args(dir, "kill", 24, "random");
  const pid_t pid = spawn_rankscope(args, dir / "log1.txt");
  // Kill it once some evaluations are stored (it is then likely mid-evaluation).
  CHECK(wait_for_evaluations(dir / "log1.txt", 6));
  kill(pid, SIGKILL);
  wait_exit(pid);
  const auto before = evaluations(dir / "r.db", "kill");
  REQUIRE(before.size() >= 6);
  REQUIRE(before.size() < 24);

  REQUIRE(run(args, dir / "log2.txt") == 0);
  const auto after = evaluations(dir / "r.db", "kill");
  std::set<std::string> configs;
  for (const auto& [config, status] : after) {
    CHECK(status == "done");
    configs.insert(config);
  }
  CHECK(after.size() == 24);
  CHECK(configs.size() == 24);
  // Every configuration finished before the kill is still there, with its original result.
  for (const auto& [config, status] : before) {
    if (status == "done") CHECK(configs.count(config) == 1);
  }
  // The random strategy replays the same sequence: the union is the uninterrupted run's.
  const auto dir2 = test::scratch_dir("sweep-kill-ref");
  REQUIRE(run(sweep_args(dir2, "kill", 24, "random"), dir2 / "log.txt") == 0);
  std::set<std::string> reference;
  for (const auto& [config, status] : evaluations(dir2 / "r.db", "kill")) reference.insert(config);
  CHECK(configs == reference);
}

TEST_CASE("sweep: two concurrent processes on one database end with the union and no duplicates") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("sweep-concurrent");
  const auto args = sweep_args(dir, "pair", 30, "random");
  const pid_t a = spawn_rankscope(args, dir / "a.txt");
  const pid_t b = spawn_rankscope(args, dir / "b.txt");
  CHECK(wait_exit(a) == 0);
  CHECK(wait_exit(b) == 0);
  const auto evals = evaluations(dir / "r.db", "pair");
  std::set<std::string> configs;
  for (const auto& [config, status] : evals) {
    CHECK(status == "done");
    configs.insert(config);
  }
  CHECK(evals.size() == 30);
  CHECK(configs.size() == 30);
  const std::string log_a = read_file(dir / "a.txt"), log_b = read_file(dir / "b.txt");
  CHECK_THAT(log_a + log_b, !Contains("locked"));
  INFO(log_a << "\n---\n" << log_b);
  // Both did part of the work.
  CHECK(log_a.find("[") != std::string::npos);
}

TEST_CASE("sweep: a resumed evolutionary study continues the same evolution and a larger budget extends it") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("sweep-resume");
  REQUIRE(run(sweep_args(dir, "evo", 12, "evolutionary"), dir / "log1.txt") == 0);
  CHECK(evaluations(dir / "r.db", "evo").size() == 12);
  REQUIRE(run(sweep_args(dir, "evo", 28, "evolutionary"), dir / "log2.txt") == 0);
  const auto resumed = evaluations(dir / "r.db", "evo");
  REQUIRE(resumed.size() == 28);
  CHECK_THAT(read_file(dir / "log2.txt"), Contains("12 of 28 configurations evaluated"));

  const auto ref_dir = test::scratch_dir("sweep-resume-ref");
  REQUIRE(run(sweep_args(ref_dir, "evo", 28, "evolutionary"), ref_dir / "log.txt") == 0);
  const auto straight = evaluations(ref_dir / "r.db", "evo");
  REQUIRE(straight.size() == 28);
  for (size_t i = 0; i < 28; ++i) CHECK(resumed[i].first == straight[i].first);

  // The strategy's state (population, generation, RNG) is stored with the study.
  ResultsDb db(dir / "r.db");
  const auto state = db.load_strategy_state(db.find_study("evo")->id);
  REQUIRE(state);
  CHECK_FALSE(state->empty());
}

TEST_CASE("sweep: the paper's accuracy-impact file against Llama-2-7B shapes stores the paper's ten size reductions") {
  const auto csv = test::shared_dir() / "paper" / "accuracy_impact_data.csv";
  RS_REQUIRE_SHARED(csv);
  const auto dir = test::scratch_dir("sweep-paper");
  const fs::path experiment = fs::path(RANKSCOPE_SOURCE_DIR) / "experiments" / "paper" / "accuracy_impact.ini";
  REQUIRE(run({"sweep", experiment.string(), "--model", (test::shared_dir() / "configs" / "llama-2-7b").string(), "--tasks",
               "size", "--db", (dir / "paper.db").string()},
              dir / "log.txt") == 0);
  INFO(read_file(dir / "log.txt"));
  // The CSV's "Decomposition Percentage" column (4th), in file order.
  std::vector<double> expected;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    // Two quoted fields first: skip them.
    size_t p = line.find("\",\"");
    p = line.find("\",", p + 3) + 2;
    const size_t rank_end = line.find(',', p);
    const size_t pct_end = line.find(',', rank_end + 1);
    expected.push_back(std::stod(line.substr(rank_end + 1, pct_end - rank_end - 1)));
  }
  REQUIRE(expected.size() == 10);
  ResultsDb db(dir / "paper.db");
  const auto study = db.find_study("paper-accuracy-impact");
  REQUIRE(study);
  const auto rows = db.metric_rows(study->id, {"size.reduction_pct"});
  REQUIRE(rows.rows.size() == 11);  // the baseline first, then the ten layer sets
  CHECK(rows.configs[0].empty());
  CHECK(rows.rows[0][0] == 0.0);
  for (size_t i = 0; i < 10; ++i) CHECK(rows.rows[i + 1][0] == Approx(expected[i]).epsilon(1e-12));
}

TEST_CASE("sweep: a small case study runs end to end and pareto/studies/export/report read it") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_easy.jsonl"));
  const auto dir = test::scratch_dir("sweep-small");
  const auto db = (dir / "small.db").string();
  const fs::path experiment = fs::path(RANKSCOPE_SOURCE_DIR) / "experiments" / "small" / "stories_rank_sweep.ini";
  REQUIRE(run({"sweep", experiment.string(), "--db", db, "--data-dir", test::shared_data("").string()}, dir / "log.txt") == 0);
  const std::string log = read_file(dir / "log.txt");
  INFO(log);
  CHECK_THAT(log, Contains("strategy finished: 4 configurations evaluated"));
  const auto evals = evaluations(db, "small-stories-rank-sweep");
  REQUIRE(evals.size() == 4);
  {
    ResultsDb rdb(db);
    const auto rows = rdb.metric_rows(rdb.find_study("small-stories-rank-sweep")->id,
                                      {"tinystories.ppl", "arc_easy.acc", "hellaswag.acc_norm", "size.reduction_pct"});
    for (const auto& row : rows.rows) {
      for (double v : row) CHECK(std::isfinite(v));
    }
    CHECK(rows.rows[0][3] == 0.0);  // the baseline
    for (size_t i = 1; i < 4; ++i) {
      CHECK(rows.rows[i][0] > 2 * rows.rows[0][0]);  // two layers at rank <= 8 of 64 cost a lot
      CHECK(rows.rows[i][3] > rows.rows[i - 1][3]);  // lower rank, smaller model
    }
  }
  // A second run finds everything done.
  REQUIRE(run({"sweep", experiment.string(), "--db", db, "--data-dir", test::shared_data("").string()}, dir / "log2.txt") == 0);
  CHECK_THAT(read_file(dir / "log2.txt"), Contains("0 configurations evaluated in this run"));

  int code = 0;
  const auto pareto = nlohmann::json::parse(
      capture("pareto --db " + db + " --study small-stories-rank-sweep --objectives tinystories.ppl:min,size.params:min --format json", &code));
  REQUIRE(code == 0);
  CHECK(pareto["evaluations"] == 4);
  // The front holds the base model and whatever is not dominated among the ranks (brute force).
  ResultsDb rdb(db);
  const auto rows = rdb.metric_rows(rdb.find_study("small-stories-rank-sweep")->id, {"tinystories.ppl", "size.params"});
  std::set<std::string> expected;
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < rows.rows.size(); ++j) {
      const auto &a = rows.rows[j], &b = rows.rows[i];
      dominated = dominated || (a[0] <= b[0] && a[1] <= b[1] && (a[0] < b[0] || a[1] < b[1]));
    }
    if (!dominated) expected.insert(rows.configs[i]);
  }
  std::set<std::string> front;
  for (const auto& p : pareto["front"]) front.insert(p["config"].get<std::string>());
  CHECK(front == expected);
  CHECK(front.count("") == 1);
  CHECK(pareto["hypervolume"].get<double>() > 0);
  const auto where = nlohmann::json::parse(capture(
      "pareto --db " + db + " --study small-stories-rank-sweep --objectives tinystories.ppl:min,size.params:min --where 'size.reduction_pct>0' --format json"));
  CHECK(where["evaluations"] == 3);
  const std::string studies = capture("studies --db " + db);
  CHECK_THAT(studies, Contains("small-stories-rank-sweep"));
  const std::string csv = capture("export --db " + db + " --study small-stories-rank-sweep --format csv");
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 5);
  CHECK_THAT(csv, Contains("tinystories.ppl") && Contains("L1,3:all=8"));
  const auto exported = nlohmann::json::parse(capture("export --db " + db + " --study small-stories-rank-sweep --format json"));
  const auto& m = exported["evaluations"][1]["metrics"]["tinystories.ppl"];
  CHECK(m["protocol"]["protocol"] == "chunks");
  CHECK(m["protocol"]["model_hash"].get<std::string>().size() == 32);
  CHECK(m["protocol"]["config"] == "L1,3:all=8");
  REQUIRE(capture("report --db " + db + " --study small-stories-rank-sweep --out " + (dir / "report").string(), &code).size() > 0);
  CHECK(code == 0);
  CHECK_THAT(read_file(dir / "report" / "pareto.svg"), Contains("<svg") && Contains("circle"));
  CHECK_THAT(read_file(dir / "report" / "report.md"), Contains("| id |") && Contains("L1,3:all=1"));
}

TEST_CASE("sweep and queries: bad input is one clear line and leaves files alone") {
  const auto dir = test::scratch_dir("sweep-errors");
  {
    std::ofstream(dir / "not.db") << "just some text, not a database\n";
  }
  const std::string before = read_file(dir / "not.db");
  int code = 0;
  std::string out = capture("studies --db " + (dir / "not.db").string(), &code);
  CHECK(code == 1);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK_THAT(out, Contains("not.db"));
  CHECK(read_file(dir / "not.db") == before);

  {
    std::ofstream(dir / "bad.ini") << "model = x\nno_such_key = 3\n";
  }
  out = capture("sweep " + (dir / "bad.ini").string(), &code);
  CHECK(code == 1);
  CHECK_THAT(out, Contains("bad.ini") && Contains("no_such_key"));
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);

  out = capture("pareto --db " + (dir / "missing.db").string() + " --study x", &code);
  CHECK(code == 1);
  CHECK_THAT(out, Contains("missing.db"));
}

TEST_CASE("sweep: SIGTERM finishes the current write, releases the claim in flight and exits cleanly") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("sweep-term");
  auto args = sweep_args(dir, "term", 40, "random");
  args[std::find(args.begin(), args.end(), "--limit") - args.begin() + 1] = "20";  // slower evaluations
  const pid_t pid = spawn_rankscope(args, dir / "log.txt");
  CHECK(wait_for_evaluations(dir / "log.txt", 3));
  kill(pid, SIGTERM);
  CHECK(wait_exit(pid) == 128 + SIGTERM);
  const std::string log = read_file(dir / "log.txt");
  INFO(log);
  CHECK_THAT(log, Contains("interrupted (signal 15)") && Contains("rerun to continue"));
  {
    ResultsDb db(dir / "r.db");
    CHECK(db.integrity_check() == "ok");
    const auto counts = db.find_study("term")->counts;
    CHECK(counts.claimed == 0);  // the evaluation in flight was released, not left claimed
    CHECK(counts.done >= 3);
    CHECK(counts.done < 40);
  }
  REQUIRE(run(args, dir / "log2.txt") == 0);
  const auto evals = evaluations(dir / "r.db", "term");
  CHECK(evals.size() == 40);
}
