// One behaviour, two stores: the claim protocol, completions, metrics and reads run the same
// script on a SQLite file and on a real throwaway PostgreSQL server (tests/pg_server.hpp) and must
// give the same answers; PostgreSQL alone: workers in several processes, schema checks, a server
// that goes away. The PostgreSQL cases are skipped with a message where its binaries are absent.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/base/error.hpp"
#include "db/pg_connection.hpp"
#include "db/pg_store.hpp"
#include "db/results_db.hpp"
#include "tests/pg_server.hpp"
#include "tests/slurm_cluster.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

constexpr double NaN = std::numeric_limits<double>::quiet_NaN();

// Runs body(i) in n child processes at once (each opens its own connections); checks that every
// one exits 0, printing what a failing one threw.
template <typename Body>
void in_processes(int n, Body body) {
  std::fflush(nullptr);  // nothing buffered here is written twice by a child
  std::vector<pid_t> children;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = fork();
    if (pid == 0) {
      try {
        body(i);
        _exit(0);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "process %d: %s\n", i, e.what());
        _exit(1);
      }
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
}

ModelInfo test_model() { return {"0123456789abcdef0123456789abcdef", "/models/m", "llama", 1000}; }

// What a store answers, in a form two stores can be compared on (ids and times left out).
std::string summary(const ResultsStore& db, int64_t study) {
  std::string out;
  db.for_each_evaluation(study, [&](const EvaluationRecord& r) {
    out += fmt::format("{} {} {} {} {} [{}]", r.config, r.config_hash, r.model_hash, status_name(r.status), r.worker,
                       r.error);
    out += std::isnan(r.wall_s) ? " wall=NaN" : fmt::format(" wall={}", r.wall_s);
    for (const auto& m : r.metrics) {
      out += fmt::format(" {}={}/{}/{}/{}/{}", m.name, m.value, m.stderr_, m.n, m.status, m.protocol.dump());
    }
    out += "\n";
  });
  const auto c = db.counts(study);
  out += fmt::format("counts {} {} {} {}\n", c.claimed, c.done, c.failed, c.nan);
  for (const auto& n : db.metric_names()) out += n + ",";
  const auto rows = db.metric_rows(study, {"t.ppl", "t.nll", "size.params", "missing"});
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    out += fmt::format("\n{} {}", rows.configs[i], status_name(rows.statuses[i]));
    for (double v : rows.rows[i]) out += fmt::format(" {}", v);
  }
  return out;
}

// The claim protocol and the record of results, on any store. Returns summary() of the study.
std::string run_script(ResultsStore& db) {
  const int64_t study = db.open_study("s", {{"tasks", {"t"}}});
  const int64_t other = db.open_study("t", {});
  const int64_t model = db.add_model(test_model());
  CHECK(db.add_model(test_model()) == model);
  CHECK(db.open_study("s", {}, [](const nlohmann::json& existing) { CHECK(existing["tasks"][0] == "t"); }) == study);

  auto a = db.claim(study, model, "L0:q=1", "hostA:1", 3600);
  REQUIRE(a);
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::claimed);
  CHECK(!db.status_of(study, "L1:q=1"));
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 3600));
  CHECK(!db.claim(study, model, "L0:q=1", "hostA:1", 3600));
  auto in_other = db.claim(other, model, "L0:q=1", "hostB:2", 3600);
  REQUIRE(in_other);
  CHECK(db.heartbeat(*a));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  CHECK(!db.claim(study, model, "L0:q=1", "hostB:2", 10));
  auto b = db.claim(study, model, "L0:q=1", "hostB:2", 0.03);
  REQUIRE(b);
  CHECK(*b != *a);
  CHECK(!db.heartbeat(*a));
  CHECK(!db.complete(*a, {{"x.y", 1.0}}, EvalStatus::done, 1.0));
  CHECK(!db.release(*a));
  const auto claims = db.claims(study);
  REQUIRE(claims.size() == 1);
  CHECK(claims[0].id == *b);
  CHECK(claims[0].worker == "hostB:2");
  CHECK(db.release(*b));
  CHECK(!db.status_of(study, "L0:q=1"));
  auto c = db.claim(study, model, "L0:q=1", "hostC:3", 3600);
  REQUIRE(c);
  CHECK(*c > *b);
  const nlohmann::json protocol = {{"task", "t"}, {"tokens", 4096}};
  REQUIRE(db.complete(*c,
                      {{"t.ppl", 12.5, 0.25, 4096, "ok", protocol}, {"size.params", 123456, NaN, 0, "ok", nullptr}},
                      EvalStatus::done, 0.5));
  CHECK(!db.claim(study, model, "L0:q=1", "hostD:4", 0));
  CHECK(!db.complete(*c, {{"t.ppl", 3.0}}, EvalStatus::done, 0.5));
  auto nan = db.claim(study, model, "L1:q=1", "hostA:1", 3600);
  REQUIRE(nan);
  REQUIRE(db.complete(*nan, {{"t.ppl", INFINITY, NaN, 10, "ok", protocol}, {"t.nll", NaN, NaN, 10, "nan", protocol}},
                      EvalStatus::done, 0.25));
  CHECK(db.status_of(study, "L1:q=1") == EvalStatus::nan);
  auto failed = db.claim(study, model, "L2:q=1", "hostA:1", 3600);
  REQUIRE(failed);
  REQUIRE(db.complete(*failed, {}, EvalStatus::failed, 0.1, "out of memory"));
  CHECK_THROWS_WITH(db.complete(*in_other, {}, EvalStatus::claimed, 0), Contains(db.display()));
  CHECK_THROWS_WITH(db.complete(*in_other, {{"a.b", 1.0}, {"a.b", 2.0}}, EvalStatus::done, 0),
                    Contains("'a.b' given twice"));
  CHECK(db.status_of(other, "L0:q=1") == EvalStatus::claimed);  // the failed complete rolled back

  // Imports skip what the study has; a budget counts finished evaluations and live claims.
  CHECK(db.add_evaluations(study, model, {{"L0:q=1"}, {"L3:q=1", EvalStatus::done, {{"t.ppl", 20.0}}, 1.5}}, "imp:9") == 1);
  CHECK(db.counts(study).finished() == 4);
  CHECK(!db.claim(study, model, "L4:q=1", "hostA:1", 3600, 4));
  auto last = db.claim(study, model, "L4:q=1", "hostA:1", 3600, 5);
  REQUIRE(last);
  CHECK(!db.claim(study, model, "L5:q=1", "hostB:2", 3600, 5));
  CHECK(db.release(*last));

  // Settings, strategy state, renames and deletes.
  CHECK(db.adopt_study_setting(study, "seed", 7) == 7);
  CHECK(db.adopt_study_setting(study, "seed", 8) == 7);
  CHECK(!db.load_strategy_state(study));
  db.save_strategy_state(study, {{"x", 1}});
  db.save_strategy_state(study, {{"x", 2}});
  CHECK(db.load_strategy_state(study)->at("x") == 2);
  CHECK_THROWS_WITH(db.rename_study("t", "s"), Contains("a study of that name exists"));
  db.rename_study("t", "u");
  CHECK(!db.find_study("t"));
  REQUIRE(db.find_study("u"));
  CHECK(db.find_study("u")->counts.claimed == 1);
  CHECK(db.delete_study("u"));
  CHECK_FALSE(db.delete_study("u"));
  const auto studies = db.studies();
  REQUIRE(studies.size() == 1);
  CHECK(studies[0].name == "s");
  CHECK(studies[0].settings["seed"] == 7);
  CHECK(db.integrity_check() == "ok");
  return summary(db, study);
}

}  // namespace

TEST_CASE("stores: the PostgreSQL store answers the SQLite store's script exactly as it does", "[db][pg]") {
  RS_REQUIRE_PG(server);
  ResultsDb sqlite(test::scratch_dir("store_script") / "results.db");
  const std::string want = run_script(sqlite);
  PgStore pg(server->url());
  CHECK(pg.display() == server->url());
  const std::string got = run_script(pg);
  CHECK(got == want);
  CHECK_THAT(want, Contains("L1:q=1") && Contains("t.ppl=inf") && Contains("[out of memory]"));
}

TEST_CASE("stores: PostgreSQL schema: created once by concurrent workers, a newer one refused, none with create off",
          "[db][pg]") {
  RS_REQUIRE_PG(server);
  REQUIRE(server->create_database("fresh"));
  PgStore::Options no_create;
  no_create.create = false;
  CHECK_THROWS_WITH(PgStore(server->url("fresh"), no_create), Contains("no rankscope results"));
  // Four processes open the empty database at once: one creates the schema, all succeed.
  in_processes(4, [&](int) {
    PgStore s(server->url("fresh"));
    s.open_study("s", {});
  });
  PgStore s(server->url("fresh"), no_create);
  CHECK(s.studies().size() == 1);
  {
    PgConnection raw(server->url("fresh"));
    raw.exec("UPDATE rankscope_schema SET version = version + 1");
  }
  CHECK_THROWS_WITH(PgStore(server->url("fresh")), Contains("newer than this rankscope"));
}

TEST_CASE("stores: 4 worker processes on one PostgreSQL study take every configuration once within the budget",
          "[db][pg]") {
  RS_REQUIRE_PG(server);
  const int64_t budget = 50;
  std::vector<std::string> configs;
  for (int i = 0; i < 64; ++i) configs.push_back(fmt::format("L{}:q={}", i % 8, 1 + i / 8));
  {
    PgStore setup(server->url());
    setup.open_study("race", {});
  }
  in_processes(4, [&](int w) {
    PgStore db(server->url());
    const int64_t study = db.open_study("race", {});
    const int64_t model = db.add_model(test_model());
    const std::string worker = fmt::format("host{}:{}", w, getpid());
    // Each worker walks the list from another start, as workers with other seeds would.
    for (size_t k = 0; k < configs.size(); ++k) {
      const auto& config = configs[(k + static_cast<size_t>(w) * 16) % configs.size()];
      if (auto id = db.claim(study, model, config, worker, 3600, budget)) {
        db.complete(*id, {{"size.params", static_cast<double>(k)}, {"worker.id", static_cast<double>(w)}},
                    EvalStatus::done, 0.0);
      }
    }
  });
  PgStore db(server->url());
  const auto study = db.find_study("race");
  REQUIRE(study);
  CHECK(study->counts.done == budget);
  CHECK(study->counts.claimed == 0);
  std::set<std::string> seen;
  std::set<double> workers;
  db.for_each_evaluation(study->id, [&](const EvaluationRecord& r) {
    CHECK(seen.insert(r.config).second);
    REQUIRE(r.metrics.size() == 2);
    workers.insert(r.metrics[1].value);
  });
  CHECK(seen.size() == static_cast<size_t>(budget));
  CHECK(!workers.empty());
  CHECK(db.integrity_check() == "ok");
}

TEST_CASE("stores: a PostgreSQL server stopped mid-study: the store waits, says so once, and goes on", "[db][pg]") {
  RS_REQUIRE_PG(server);
  PgStore db(server->url());
  const int64_t study = db.open_study("s", {});
  const int64_t model = db.add_model(test_model());
  auto a = db.claim(study, model, "L0:q=1", "w:1", 3600);
  REQUIRE(a);
  server->stop();
  // Back in 2 s, while the store retries.
  std::thread back([&] {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    server->start_again();
  });
  CHECK(db.complete(*a, {{"size.params", 1.0}}, EvalStatus::done, 0.0));
  back.join();
  CHECK(db.status_of(study, "L0:q=1") == EvalStatus::done);
  // A server that stays away past the wait is an Error naming it.
  PgStore::Options brief;
  brief.server_wait_seconds = 1;
  PgStore impatient(server->url(), brief);
  server->stop();
  CHECK_THROWS_WITH(impatient.counts(study), Contains("the server stayed away") && Contains(server->url()));
}

namespace {

// Runs build/rankscope with `args`, stdout and stderr to `log`; returns its pid.
pid_t spawn(const std::vector<std::string>& args, const std::filesystem::path& log) {
  std::fflush(nullptr);  // nothing buffered here is written twice by the child
  const pid_t pid = fork();
  if (pid == 0) {
    std::FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (f == nullptr || dup2(fileno(stdout), 2) < 0) _exit(126);
    std::vector<char*> argv = {const_cast<char*>(RANKSCOPE_EXE)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(RANKSCOPE_EXE, argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// config -> "metric=value ..." of every evaluation of a study.
std::map<std::string, std::string> results_of(const ResultsStore& db, const std::string& study) {
  std::map<std::string, std::string> out;
  const auto s = db.find_study(study);
  REQUIRE(s);
  db.for_each_evaluation(s->id, [&](const EvaluationRecord& r) {
    std::string line = std::string(status_name(r.status));
    for (const auto& m : r.metrics) line += fmt::format(" {}={}", m.name, m.value);
    CHECK(out.emplace(r.config, line).second);
  });
  return out;
}

}  // namespace

TEST_CASE("sweep: 4 workers on a PostgreSQL study take each configuration once, as one SQLite process does",
          "[db][pg][sweep]") {
  const auto model = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(model);
  RS_REQUIRE_PG(server);
  const auto dir = test::scratch_dir("store_sweep");
  // A password in the URI (trust authentication ignores it): it must appear nowhere.
  const std::string url = "postgresql://rankscope:sekret@127.0.0.1:" + std::to_string(server->port()) + "/postgres";
  auto args = [&](const std::string& db) {
    return std::vector<std::string>{"sweep", "--model", model.string(), "--db", db, "--study", "grid", "--strategy",
                                    "exhaustive", "--budget", "32", "--space", "paper", "--ranks", "50%", "--tasks",
                                    "tinystories,size", "--limit", "2", "--objectives", "tinystories.ppl:min,size.params:min",
                                    "--data-dir", test::shared_data("").string(), "--cache-dir", (dir / "cache").string()};
  };
  REQUIRE(wait_exit(spawn(args((dir / "one.db").string()), dir / "one.txt"))== 0);
  std::vector<pid_t> workers;
  for (int w = 0; w < 4; ++w) workers.push_back(spawn(args(url), dir / fmt::format("w{}.txt", w)));
  std::string logs;
  for (size_t w = 0; w < workers.size(); ++w) {
    CHECK(wait_exit(workers[w]) == 0);
    logs += slurp(dir / fmt::format("w{}.txt", w));
  }
  INFO(logs);
  CHECK(logs.find("sekret") == std::string::npos);
  CHECK_THAT(logs, Contains("postgresql://rankscope@127.0.0.1:" + std::to_string(server->port()) + "/postgres"));
  ResultsDb sqlite(dir / "one.db");
  PgStore pg(server->url());
  const auto want = results_of(sqlite, "grid");
  const auto got = results_of(pg, "grid");
  CHECK(want.size() == 32);
  CHECK(got == want);
  const auto study = pg.find_study("grid");
  REQUIRE(study);
  CHECK(study->counts.done == 32);
  CHECK(study->counts.claimed == 0);
  CHECK(study->settings.dump().find("sekret") == std::string::npos);
  // The queries read the server too.
  const auto listing = dir / "studies.txt";
  CHECK(wait_exit(spawn({"studies", "--db", url}, listing)) == 0);
  CHECK_THAT(slurp(listing), Contains("grid") && !Contains("sekret"));
  const auto front = dir / "pareto.txt";
  CHECK(wait_exit(spawn({"pareto", "--db", url, "--study", "grid", "--objectives", "tinystories.ppl:min,size.params:min"},
                        front)) == 0);
  CHECK_THAT(slurp(front), !Contains("sekret"));
  const auto exported = dir / "export.csv";
  CHECK(wait_exit(spawn({"export", "--db", url, "--study", "grid"}, exported)) == 0);
  const std::string csv = slurp(exported);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 33);  // a header and 32 evaluations
  CHECK(wait_exit(spawn({"report", "--db", url, "--study", "grid", "--out", (dir / "report").string()}, dir / "report.txt")) == 0);
  const std::string report = slurp(dir / "report" / "report.md");
  CHECK_THAT(report, Contains("32 evaluations") && !Contains("sekret"));
}

namespace {

// config -> everything stored about it but ids and times, for comparing copies.
std::map<std::string, std::string> records_of(const ResultsStore& db, const std::string& study) {
  std::map<std::string, std::string> out;
  const auto s = db.find_study(study);
  REQUIRE(s);
  db.for_each_evaluation(s->id, [&](const EvaluationRecord& r) {
    std::string line = fmt::format("{} {} {} {} [{}] {}", r.config_hash, r.model_hash, status_name(r.status), r.worker,
                                   r.error, r.wall_s);
    for (const auto& m : r.metrics) {
      line += fmt::format(" {}={}/{}/{}/{}/{}", m.name, m.value, m.stderr_, m.n, m.status, m.protocol.dump());
    }
    out[r.config] = line;
  });
  return out;
}

}  // namespace

TEST_CASE("db copy: SQLite -> PostgreSQL -> SQLite round-trips a study and two partial copies merge into their union",
          "[db][pg]") {
  RS_REQUIRE_PG(server);
  const auto dir = test::scratch_dir("store_copy");
  const auto a_path = dir / "a.db";
  std::string settings_a;
  std::map<std::string, std::string> want;
  {
    ResultsDb a(a_path);
    run_script(a);
    const auto s = a.find_study("s");
    REQUIRE(s);
    settings_a = s->settings.dump();
    want = records_of(a, "s");
    CHECK(a.claims(s->id).empty());
    // One claim in flight: not copied.
    REQUIRE(a.claim(s->id, a.add_model(test_model()), "L7:q=1", "busy:1", 3600));
  }
  const std::string url = server->url();
  auto copy = [&](const std::string& from, const std::string& to, const std::string& log) {
    const int code = wait_exit(spawn({"db", "copy", "--from", from, "--to", to}, dir / log));
    INFO(slurp(dir / log));
    CHECK(code == 0);
    return slurp(dir / log);
  };
  CHECK_THAT(copy(a_path.string(), url, "1.txt"), Contains("study 's' created in") && Contains("4 evaluations copied") &&
                                                      Contains("1 in flight not copied"));
  CHECK_THAT(copy(url, (dir / "b.db").string(), "2.txt"), Contains("4 evaluations copied"));
  {
    ResultsDb b(dir / "b.db");
    CHECK(records_of(b, "s") == want);
    CHECK(b.find_study("s")->settings.dump() == settings_a);
    CHECK(b.load_strategy_state(b.find_study("s")->id)->at("x") == 2);
  }
  // Again: nothing new, nothing twice.
  CHECK_THAT(copy(a_path.string(), url, "3.txt"), Contains("merged into") && Contains("0 evaluations copied, 4 already there"));
  {
    PgStore pg(url);
    CHECK(records_of(pg, "s") == want);
  }

  // Two partial copies of one study (a worker's results on a laptop, another's on the cluster)
  // merge into their union.
  {
    ResultsDb c(dir / "c.db"), d(dir / "d.db");
    for (ResultsDb* part : {&c, &d}) {
      const int64_t study = part->open_study("u", {{"k", 1}});
      const int64_t model = part->add_model(test_model());
      const int first = part == &c ? 0 : 3;
      std::vector<NewEvaluation> evals;
      for (int i = first; i < first + 5; ++i) {
        evals.push_back({fmt::format("L{}:q=1", i), EvalStatus::done, {{"size.params", static_cast<double>(i)}}, 0.5});
      }
      CHECK(part->add_evaluations(study, model, evals, "w:1") == 5);
    }
  }
  copy((dir / "c.db").string(), url, "4.txt");
  CHECK_THAT(copy((dir / "d.db").string(), url, "5.txt"), Contains("3 evaluations copied, 2 already there"));
  PgStore pg(url);
  const auto merged = records_of(pg, "u");
  CHECK(merged.size() == 8);
  CHECK(merged.count("L0:q=1") == 1);
  CHECK(merged.count("L7:q=1") == 1);
  // A study of the same name with other settings is not merged into.
  {
    ResultsDb e(dir / "e.db");
    e.open_study("u", {{"k", 2}});
  }
  const int code = wait_exit(spawn({"db", "copy", "--from", (dir / "e.db").string(), "--to", url}, dir / "6.txt"));
  CHECK(code == 1);
  CHECK_THAT(slurp(dir / "6.txt"), Contains("exists with other settings"));
}

TEST_CASE("slurm: a 4-task job array of experiments/slurm/sweep.sbatch completes a PostgreSQL study", "[db][pg][slurm]") {
  const auto model = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(model);
  RS_REQUIRE_PG(server);
  std::string why;
  const auto slurm = test::SlurmTestCluster::start(&why);
  if (!slurm) {
    WARN("SKIPPED: " << why);
    return;
  }
  const auto dir = test::scratch_dir("store_slurm");
  const auto experiment = std::filesystem::absolute(dir / "grid.ini");
  std::ofstream(experiment) << "model = " << std::filesystem::absolute(model).string() << "\n"
                            << "study = grid\nstrategy = exhaustive\nbudget = 32\nspace = paper\nranks = 50%\n"
                            << "tasks = tinystories,size\nlimit = 2\nobjectives = tinystories.ppl:min,size.params:min\n"
                            << "data-dir = " << std::filesystem::absolute(test::shared_data("")).string() << "\n"
                            << "cache-dir = " << std::filesystem::absolute(dir / "cache").string() << "\n";
  const std::string script = std::string(RANKSCOPE_SOURCE_DIR) + "/experiments/slurm/sweep.sbatch";
  // No GPUs in this cluster: --gres=none overrides the script's one GPU a task.
  const std::string submit = fmt::format(
      "sbatch --wait --gres=none --cpus-per-task=1 --array=0-3 --chdir='{}' --output='{}/task-%a.log' "
      "--export=ALL,RANKSCOPE_DB='{}',RANKSCOPE='{}' '{}' '{}'",
      dir.string(), dir.string(), server->url(), RANKSCOPE_EXE, script, experiment.string());
  const std::string out = slurm->run_capture("timeout 300 " + submit);
  INFO(out);
  CHECK_THAT(out, Contains("Submitted batch job"));
  std::string logs;
  for (int t = 0; t < 4; ++t) logs += slurp(dir / fmt::format("task-{}.log", t));
  INFO(logs);
  CHECK_THAT(logs, Contains("array task 3 of job"));
  PgStore pg(server->url());
  const auto study = pg.find_study("grid");
  REQUIRE(study);
  CHECK(study->counts.done == 32);
  CHECK(study->counts.claimed == 0);
  std::set<std::string> configs, workers;
  pg.for_each_evaluation(study->id, [&](const EvaluationRecord& r) {
    configs.insert(r.config);
    workers.insert(r.worker);
  });
  CHECK(configs.size() == 32);
  CHECK(!workers.empty());
  // Every task joined the study and ended when its budget was reached (how the work was shared
  // depends on when Slurm started each task).
  for (int t = 0; t < 4; ++t) {
    const std::string log = slurp(dir / fmt::format("task-{}.log", t));
    CHECK_THAT(log, Contains(fmt::format("array task {} of job", t)) && Contains("budget reached") &&
                        Contains("32 in the study"));
  }
}

namespace {

std::vector<std::string> churn_args(const std::string& db, const std::filesystem::path& dir, const std::string& study) {
  return {"sweep", "--model", test::shared_data("stories260K-hf").string(), "--db", db, "--study", study, "--strategy",
          "exhaustive", "--budget", "243", "--space", "paper", "--ranks", "50%,25%", "--tasks", "tinystories,size",
          "--limit", "8", "--objectives", "tinystories.ppl:min,size.params:min", "--data-dir",
          test::shared_data("").string(), "--cache-dir", (dir / "cache").string(), "--stale-after", "3", "--threads", "1"};
}

int64_t finished_in(PgStore& db, const std::string& study) {
  const auto s = db.find_study(study);
  return s ? s->counts.finished() : 0;
}

}  // namespace

TEST_CASE("sweep: PostgreSQL stopped for 10 s under 4 workers: they wait, say so, and complete the study", "[db][pg][sweep]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  RS_REQUIRE_PG(server);
  const auto dir = test::scratch_dir("store_outage");
  std::vector<pid_t> workers;
  for (int w = 0; w < 4; ++w) workers.push_back(spawn(churn_args(server->url(), dir, "outage"), dir / fmt::format("w{}.txt", w)));
  PgStore db(server->url());
  // Stop the server once some results are in.
  for (int i = 0; i < 600 && finished_in(db, "outage") < 20; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int64_t before = finished_in(db, "outage");
  server->stop();
  std::this_thread::sleep_for(std::chrono::seconds(10));
  REQUIRE(server->start_again());
  std::string logs;
  for (size_t w = 0; w < workers.size(); ++w) {
    CHECK(wait_exit(workers[w]) == 0);
    logs += slurp(dir / fmt::format("w{}.txt", w));
  }
  INFO(logs);
  CHECK(before < 243);  // the outage came in the middle
  CHECK_THAT(logs, Contains("waiting for the PostgreSQL server") && Contains("the PostgreSQL server is back"));
  PgStore after(server->url());
  const auto s = after.find_study("outage");
  REQUIRE(s);
  CHECK(s->counts.finished() == 243);
  CHECK(s->counts.claimed == 0);
  std::set<std::string> configs;
  after.for_each_evaluation(s->id, [&](const EvaluationRecord& r) { CHECK(configs.insert(r.config).second); });
  CHECK(configs.size() == 243);
}

TEST_CASE("sweep: 20 SIGKILLs of random PostgreSQL workers, restarted: nothing lost, nothing twice, no claim left",
          "[db][pg][sweep]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  RS_REQUIRE_PG(server);
  const auto dir = test::scratch_dir("store_kills");
  std::vector<pid_t> workers;
  int started = 0;
  auto start_worker = [&] { return spawn(churn_args(server->url(), dir, "kills"), dir / fmt::format("w{}.txt", started++)); };
  for (int w = 0; w < 4; ++w) workers.push_back(start_worker());
  std::mt19937 rng(17);
  int kills = 0;
  PgStore db(server->url());
  while (kills < 20 && finished_in(db, "kills") < 230) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(50, 400)(rng)));
    auto& victim = workers[std::uniform_int_distribution<size_t>(0, workers.size() - 1)(rng)];
    if (::kill(victim, SIGKILL) == 0) {
      wait_exit(victim);
      ++kills;
    }
    victim = start_worker();  // a killed worker comes back, as a requeued task would
  }
  for (pid_t pid : workers) wait_exit(pid);
  // Whatever the kills left unfinished, one more worker completes (dead workers' claims are taken
  // over at once: their processes are gone).
  CHECK(wait_exit(start_worker()) == 0);
  CHECK(kills >= 5);
  const auto s = db.find_study("kills");
  REQUIRE(s);
  CHECK(s->counts.finished() == 243);
  CHECK(s->counts.claimed == 0);
  std::set<std::string> configs;
  db.for_each_evaluation(s->id, [&](const EvaluationRecord& r) {
    CHECK(configs.insert(r.config).second);
    CHECK(r.status == EvalStatus::done);
    CHECK(r.metrics.size() >= 2);
  });
  CHECK(configs.size() == 243);
  CHECK(db.integrity_check() == "ok");
}
