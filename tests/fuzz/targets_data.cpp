// Fuzz targets of the data side: task files (evaluators/tasks.cpp), the factor and calibration
// caches (core/factor_cache.*, core/calibration.cpp) and results databases (db/results_db.*).
#include <map>
#include <set>

#include <bzlib.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include "core/decompose/calibration.hpp"
#include "core/base/error.hpp"
#include "core/decompose/factor_cache.hpp"
#include "db/pg_connection.hpp"
#ifdef RANKSCOPE_POSTGRES
#include <libpq-fe.h>
#endif
#include "db/results_db.hpp"
#include "evaluators/tasks.hpp"
#include "search/strategy.hpp"
#include "tests/fuzz/fuzz.hpp"

namespace rankscope::fuzz {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string bz2_compress(const std::string& text) {
  std::string out(text.size() + text.size() / 100 + 1024, '\0');
  auto len = static_cast<unsigned>(out.size());
  if (BZ2_bzBuffToBuffCompress(out.data(), &len, const_cast<char*>(text.data()), static_cast<unsigned>(text.size()), 9, 0,
                               0) != BZ_OK) {
    throw std::runtime_error("bzip2 compression of a seed failed");
  }
  out.resize(len);
  return out;
}

std::string bz2_head(const fs::path& path, size_t max_lines) {
  const std::string packed = read_file(path);
  std::string out(1 << 20, '\0');
  bz_stream s{};
  BZ2_bzDecompressInit(&s, 0, 0);
  s.next_in = const_cast<char*>(packed.data());
  s.avail_in = static_cast<unsigned>(packed.size());
  s.next_out = out.data();
  s.avail_out = static_cast<unsigned>(out.size());
  BZ2_bzDecompress(&s);
  out.resize(out.size() - s.avail_out);
  BZ2_bzDecompressEnd(&s);
  size_t pos = 0;
  for (size_t i = 0; i < max_lines && pos != std::string::npos; ++i) pos = out.find('\n', pos + 1);
  return pos == std::string::npos ? out : out.substr(0, pos + 1);
}

// Built-in tasks and the file each reads (relative to the data directory).
const std::vector<std::pair<std::string, std::string>>& builtin_files() {
  static const std::vector<std::pair<std::string, std::string>> files = {
      {"arc_easy", "arc/arc_easy.jsonl"},
      {"arc_challenge", "arc/arc_challenge.jsonl"},
      {"hellaswag", "hellaswag/hellaswag_val_full.txt.bz2"},
      {"winogrande", "winogrande/winogrande.jsonl"},
      {"piqa", "piqa/piqa.jsonl"},
      {"boolq", "boolq/boolq.jsonl"},
      {"openbookqa", "openbookqa/openbook_qa.jsonl"},
      {"mmlu", "mmlu/test"},
      {"truthfulqa_mc1", "truthfulqa/v0/mc_task.json"},
      {"truthfulqa_mc2", "truthfulqa/v0/mc_task.json"},
      {"lambada_openai", "lambada/lambada_openai.jsonl"},
      {"sst2", "glue-sst2/dev.tsv"},
      {"mrpc", "mrpc/msr_paraphrase_test.txt"},
      {"wikitext2", "wikitext-2-raw/wiki.test.raw"},
      {"tinystories", "tinystories/tinystories_val.txt"},
  };
  return files;
}

// ---------------------------------------------------------------------------------------------
// Caches

constexpr const char* kCalibrationKey = "0123456789abcdef0123456789abcdef";
constexpr int64_t kCacheRows = 48, kCacheCols = 24, kCacheRank = 2;

Tensor cache_weight() {
  Rng rng(5);
  std::vector<float> v(static_cast<size_t>(kCacheRows * kCacheCols));
  for (float& x : v) x = static_cast<float>(static_cast<int64_t>(rng.below(2001)) - 1000) / 1000.0f;
  return Tensor::owned({kCacheRows, kCacheCols}, std::move(v));
}

SvdPolicy randomized_policy() {
  SvdPolicy p;
  p.randomized = true;
  p.min_rank = 1;
  return p;
}

void touch(const CachedSvd& svd) {
  const int64_t r = std::min<int64_t>(svd.k(), 2);
  if (r < 1) return;
  svd.u(r);
  svd.s(r);
  svd.v(r);
  svd.relative_error(r);
}

// ---------------------------------------------------------------------------------------------
// Results databases

void exec(sqlite3* db, const std::string& sql) { sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr); }

std::string first_text(sqlite3* db, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
    if (const auto* t = sqlite3_column_text(st, 0)) out = reinterpret_cast<const char*>(t);
  }
  sqlite3_finalize(st);
  return out;
}

void exec_text(sqlite3* db, const std::string& sql, const std::string& value) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT);
    sqlite3_step(st);
  }
  sqlite3_finalize(st);
}

// Row-level corruption a database file may carry (a buggy writer, a hand edit, another tool):
// JSON columns mutated (deep nesting included), values of the wrong type, dangling references,
// foreign schema versions. Statements that SQLite refuses are simply skipped.
void corrupt_rows(const fs::path& dir, Rng& rng, std::vector<std::string>& log) {
  sqlite3* db = nullptr;
  if (sqlite3_open((dir / "results.db").c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    return;
  }
  exec(db, "PRAGMA ignore_check_constraints=1; PRAGMA foreign_keys=0;");
  static const std::vector<std::string> kWeird = {"'bogus'", "''", "X'00ff'", "-1", "1e308", "'abc'", "NULL",
                                                  "9223372036854775807", "-9223372036854775808", "0.5"};
  const std::string weird = kWeird[rng.below(kWeird.size())];
  const std::vector<std::string> json_columns = {"studies.settings", "strategy_state.state", "protocols.json"};
  switch (rng.below(8)) {
    case 0:
    case 1: {
      const std::string column = json_columns[rng.below(json_columns.size())];
      const auto dot = column.find('.');
      const std::string table = column.substr(0, dot), name = column.substr(dot + 1);
      SeedFile f;
      f.json = true;
      const std::string original = first_text(db, fmt::format("SELECT {} FROM {} LIMIT 1", name, table));
      std::vector<std::string> words;
      const std::string mutated = mutate(original, f, rng, {"x", "done", "min", "max"}, {}, words);
      exec_text(db, fmt::format("UPDATE {} SET {} = ?", table, name), mutated);
      log.push_back("sql:" + column + "=mutated json");
      break;
    }
    case 2: {
      static const std::vector<std::string> kColumns = {"status", "claimed_at", "heartbeat_at", "finished_at", "wall_s",
                                                        "worker", "host", "error", "configuration_id", "model_id",
                                                        "study_id", "id"};
      const std::string column = kColumns[rng.below(kColumns.size())];
      exec(db, fmt::format("UPDATE evaluations SET {} = {}", column, weird));
      log.push_back("sql:evaluations." + column + "=" + weird);
      break;
    }
    case 3: {
      static const std::vector<std::string> kColumns = {"value", "stderr", "n", "status", "protocol_id", "metric_id",
                                                        "evaluation_id"};
      const std::string column = kColumns[rng.below(kColumns.size())];
      exec(db, fmt::format("UPDATE metrics SET {} = {}", column, weird));
      log.push_back("sql:metrics." + column + "=" + weird);
      break;
    }
    case 4: {
      static const std::vector<std::string> kTargets = {"studies SET name", "studies SET created_at",
                                                        "configurations SET canonical", "configurations SET hash",
                                                        "metric_names SET name", "models SET n_params", "models SET hash",
                                                        "strategy_state SET updated_at", "strategy_state SET study_id"};
      const std::string what = kTargets[rng.below(kTargets.size())];
      exec(db, fmt::format("UPDATE {} = {}", what, weird));
      log.push_back("sql:" + what + "=" + weird);
      break;
    }
    case 5: {
      static const std::vector<std::string> kTables = {"metric_names", "configurations", "models", "protocols", "studies",
                                                       "evaluations"};
      const std::string table = kTables[rng.below(kTables.size())];
      exec(db, "DELETE FROM " + table);
      log.push_back("sql:delete " + table);
      break;
    }
    case 6: {
      static const std::vector<std::string> kPragmas = {"user_version = 0", "user_version = 1", "user_version = 2",
                                                        "user_version = 99", "user_version = -1", "application_id = 0",
                                                        "application_id = 1", "journal_mode = DELETE"};
      const std::string pragma = kPragmas[rng.below(kPragmas.size())];
      exec(db, "PRAGMA " + pragma);
      log.push_back("sql:pragma " + pragma);
      break;
    }
    default: {
      static const std::vector<std::string> kDrops = {"DROP TABLE metrics", "DROP TABLE strategy_state",
                                                      "DROP INDEX evaluations_by_status",
                                                      "ALTER TABLE studies RENAME COLUMN settings TO s",
                                                      "DROP TABLE metric_names"};
      const std::string drop = kDrops[rng.below(kDrops.size())];
      exec(db, drop);
      log.push_back("sql:" + drop);
      break;
    }
  }
  sqlite3_close(db);
}

}  // namespace

Target tasks_target() {
  Target t;
  t.name = "tasks";
  t.description = "load_task: every built-in task reader and .jsonl user tasks (evaluators/tasks.cpp)";
  t.seeds = [](const fs::path& shared) {
    std::vector<Seed> seeds;
    const fs::path data = shared / "data";
    // Generated data for every reader, and the head of each real file where ../shared has it.
    const std::string user_task =
        "{\"rankscope_task\": {\"name\": \"mine\", \"target_delimiter\": \" \", \"fewshot_delimiter\": \"\\n\\n\", "
        "\"description\": \"Quiz.\\n\", \"fewshot_file\": \"shots.jsonl\", \"metrics\": [\"acc\"]}}\n"
        "{\"context\": \"2+2=\", \"choices\": [\"4\", \"5\"], \"gold\": 0}\n"
        "{\"query\": \"3+3=\", \"choices\": [\"6\", \"7\"], \"gold\": 0}\n";
    seeds.push_back({"generated user task + few-shot file",
                     {seed_file("task.jsonl", user_task, true),
                      seed_file("shots.jsonl", "{\"context\": \"1+1=\", \"choices\": [\"2\", \"3\"], \"gold\": 0}\n", true)},
                     3});
    seeds.push_back({"generated user tasks (gold list, partial, loglikelihood)",
                     {seed_file("task.jsonl",
                              "{\"context\": \"q\", \"choices\": [\"a\", \"b\", \"c\"], \"gold\": [0, 2]}\n"
                              "{\"context\": \"r\", \"choices\": [\"a\", \"b\"], \"gold\": [1]}\n",
                              true)},
                     2});
    seeds.push_back({"generated partial task",
                     {seed_file("task.jsonl", "{\"context_options\": [\"a\", \"b\"], \"continuation\": \"c\", \"gold\": 1}\n", true)}, 1});
    seeds.push_back({"generated loglikelihood task",
                     {seed_file("task.jsonl", "{\"context\": \"a b\", \"continuation\": \" c\"}\n\n{\"query\": \"d\", \"continuation\": \"e\"}\n", true)}, 1});
    const std::map<std::string, std::string> generated = {
        {"arc/arc_easy.jsonl", "{\"query\": \"Question: Why?\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n"},
        {"arc/arc_challenge.jsonl", "{\"query\": \"How?\", \"choices\": [\"a\", \"b\", \"c\"], \"gold\": 2}\n"},
        {"winogrande/winogrande.jsonl", "{\"context_options\": [\"A x\", \"B x\"], \"continuation\": \"went.\", \"gold\": 0}\n"},
        {"piqa/piqa.jsonl", "{\"query\": \"Question: goal\\n\", \"choices\": [\"a\", \"b\"], \"gold\": 0}\n"},
        {"boolq/boolq.jsonl", "{\"query\": \"Passage: p\\nQuestion: q?\", \"choices\": [\"no\", \"yes\"], \"gold\": 1}\n"},
        {"openbookqa/openbook_qa.jsonl", "{\"query\": \"stem\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"gold\": 3}\n"},
        {"truthfulqa/v0/mc_task.json",
         "[{\"question\": \"Q?\", \"mc1_targets\": {\"yes\": 1, \"no\": 0}, \"mc2_targets\": {\"yes\": 1, \"maybe\": 1, \"no\": 0}}]"},
        {"lambada/lambada_openai.jsonl", "{\"context\": \"the cat sat on the\", \"continuation\": \" mat\"}\n"},
        {"glue-sst2/dev.tsv", "sentence\tlabel\ngood film\t1\nbad film\t0\n"},
        {"mrpc/msr_paraphrase_test.txt", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA <QUOTE>x<QUOTE>\tB\n"},
        {"wikitext-2-raw/wiki.test.raw", " = Title = \n Some text @-@ here . \n = = Section = = \n More .\n"},
        {"tinystories/tinystories_val.txt", "Once upon a time there was a cat.\n<|endoftext|>\nThe end.\n"},
        {"mmlu/test/algebra_test.csv", "question,choice0,choice1,choice2,choice3,answer\n\"1+1, really?\",1,2,3,4,1\n"},
        {"mmlu/dev/algebra_dev.csv", "question,choice0,choice1,choice2,choice3,answer\n\"q\n2\",a,b,c,d,0\n"},
    };
    for (const auto& [task, rel] : builtin_files()) {
      if (task == "truthfulqa_mc2" || task == "mmlu") continue;
      if (task == "hellaswag") {
        const std::string lines = "Act: ctx [title] x\n2\nend a\nend b\nend [x] c\nend d\n";
        seeds.push_back({"generated hellaswag", {seed_file("data/" + rel, bz2_compress(lines), false, 64)}, 2});
        if (fs::exists(data / rel)) {
          seeds.push_back({"hellaswag (head)", {seed_file("data/" + rel, bz2_compress(bz2_head(data / rel, 60)), false, 64)}, 1});
        }
        continue;
      }
      const bool is_json = rel.ends_with(".json") || rel.ends_with(".jsonl");
      seeds.push_back({"generated " + task, {seed_file("data/" + rel, generated.at(rel), is_json)}, 1});
      if (!fs::exists(data / rel)) continue;
      std::string head;
      if (task == "truthfulqa_mc1") {
        const json all = json::parse(read_file(data / rel));
        json few = json::array();
        for (size_t i = 0; i < std::min<size_t>(3, all.size()); ++i) few.push_back(all[i]);
        head = few.dump(1);
      } else {
        head = head_lines(data / rel, task == "tinystories" || task == "wikitext2" ? 40 : 12);
      }
      seeds.push_back({task + " (head)", {seed_file("data/" + rel, head, is_json)}, 1});
    }
    seeds.push_back({"generated mmlu",
                     {seed_file("data/mmlu/test/algebra_test.csv", generated.at("mmlu/test/algebra_test.csv"), false),
                      seed_file("data/mmlu/dev/algebra_dev.csv", generated.at("mmlu/dev/algebra_dev.csv"), false)},
                     2});
    if (fs::exists(data / "mmlu/test/anatomy_test.csv")) {
      seeds.push_back({"mmlu anatomy (head)",
                       {seed_file("data/mmlu/test/anatomy_test.csv", head_lines(data / "mmlu/test/anatomy_test.csv", 8), false),
                        seed_file("data/mmlu/dev/anatomy_dev.csv", head_lines(data / "mmlu/dev/anatomy_dev.csv", 6), false)},
                       1});
    }
    if (fs::exists(data / "wikitext-2/test.txt")) {
      seeds.push_back({"wikitext2 raw + tokens (head)",
                       {seed_file("data/wikitext-2-raw/wiki.test.raw", head_lines(data / "wikitext-2-raw/wiki.test.raw", 30), false),
                        seed_file("data/wikitext-2/test.txt", head_lines(data / "wikitext-2/test.txt", 30), false)},
                       1});
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    TaskLoadOptions options;
    options.data_dir = dir / "data";
    for (const auto& [task, rel] : builtin_files()) {
      if (fs::exists(fs::symlink_status(options.data_dir / rel))) load_task(task, options);
    }
    if (fs::exists(fs::symlink_status(dir / "task.jsonl"))) {
      load_task((dir / "task.jsonl").string(), options);
      options.limit = 1;
      load_task((dir / "task.jsonl").string(), options);
    }
  };
  t.default_cases = 4000;
  return t;
}

Target cache_target() {
  Target t;
  t.name = "cache";
  t.description = "factor cache files (full and randomized SVD) and calibration cache files (core/factor_cache.*, calibration.cpp)";
  t.seeds = [](const fs::path&) {
    const fs::path dir = seed_scratch("cache");
    const Tensor w = cache_weight();
    const std::string key = matrix_content_key(w);
    // Separate directories: with the full SVD present the randomized one would never be written.
    FactorCache(dir / "full").factors(w, 0);
    FactorCache(dir / "randomized", randomized_policy()).factors(w, kCacheRank);
    CalibrationAccumulator acc(cpu_backend());
    Rng rng(3);
    Mat x1(5, 6), x2(7, 4);
    for (int64_t i = 0; i < x1.size(); ++i) x1.data()[i] = static_cast<float>(rng.below(100)) / 10.0f - 5.0f;
    for (int64_t i = 0; i < x2.size(); ++i) x2.data()[i] = static_cast<float>(rng.below(100)) / 10.0f - 5.0f;
    acc.add(HookSite::attn_in, 0, cpu_backend().upload(x1, Precision::f32));
    acc.add(HookSite::ffn_act, 1, cpu_backend().upload(x2, Precision::f32));
    const fs::path calib = calibration_path(dir, kCalibrationKey);
    save_calibration(calib, acc.finish(kCalibrationKey, {{"source", "fuzz"}, {"samples", 2}, {"ctx", {1, 2, {{"a", nullptr}}}}}));
    std::vector<Seed> seeds;
    const std::string full = "factors/" + key + ".svd", randomized = fmt::format("factors/{}.r{}.svd", key, kCacheRank);
    const std::string calib_rel = "calib/" + std::string(kCalibrationKey) + ".bin";
    const std::string full_bytes = read_file(dir / "full" / fs::path(full).filename());
    const std::string randomized_bytes = read_file(dir / "randomized" / fs::path(randomized).filename());
    if (full_bytes.empty() || randomized_bytes.empty()) throw std::runtime_error("cache seeds were not written");
    seeds.push_back({"full SVD factor file", {seed_file(full, full_bytes, false, 160)}, 3});
    seeds.push_back({"randomized SVD factor file", {seed_file(randomized, randomized_bytes, false, 160)}, 2});
    seeds.push_back({"calibration file", {seed_file(calib_rel, read_file(calib), false, 400)}, 3});
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    const Tensor w = cache_weight();
    // Randomized first: once a full SVD is stored, every lookup is served by it.
    FactorCache randomized(dir / "factors", randomized_policy());
    touch(*randomized.factors(w, kCacheRank));
    FactorCache full(dir / "factors");
    touch(*full.factors(w, 0));
    if (const auto c = load_calibration(calibration_path(dir, kCalibrationKey), kCalibrationKey)) {
      for (const auto& [layer, site] : c->sites()) {
        const auto stats = c->at(layer, site);
        stats->mean_abs();
        asvd_transform(*stats, 0.5);
        whiten_transform(*stats);
      }
    }
  };
  t.default_cases = 3000;
  return t;
}

Target db_target() {
  Target t;
  t.name = "db";
  t.description = "ResultsDb on mutated SQLite files: studies, find_study, for_each_evaluation, metric_rows, strategy state, integrity_check (db/results_db.*)";
  t.seeds = [](const fs::path&) {
    const fs::path dir = seed_scratch("db");
    const fs::path path = dir / "results.db";
    {
      ResultsDb db(path);
      const int64_t study = db.open_study("quick", {{"strategy", "evolutionary"}, {"seed", 1}, {"objectives", {"tinystories.ppl:min", "size.params:min"}}});
      db.open_study("other", json::object());
      const int64_t model = db.add_model({"0123456789abcdef0123456789abcdef", "/m", "llama", 260032});
      std::vector<NewEvaluation> evals;
      for (int i = 0; i < 6; ++i) {
        NewEvaluation e;
        e.config = i == 0 ? "" : fmt::format("L{}:q={}", i % 5, 8 * i);
        e.status = i == 5   ? EvalStatus::failed
                   : i == 4 ? EvalStatus::nan
                   : i == 3 ? EvalStatus::pruned
                            : EvalStatus::done;
        e.wall_s = 0.5 * i;
        e.error = i == 5 ? "boom" : "";
        e.metrics = {{"tinystories.ppl", 4.5 + i, 0.1, 100, "ok", {{"protocol", "chunks"}, {"ctx", 256}}},
                     {"size.params", 260032.0 - 1000 * i, std::numeric_limits<double>::quiet_NaN(), 0, "ok", nullptr}};
        evals.push_back(std::move(e));
      }
      db.add_evaluations(study, model, evals);
      db.claim(study, model, "L4:down=16", "host:1", 60);
      db.save_strategy_state(study, {{"generation", 3}, {"population", {{1, 2}, {3, 4}}}});
    }
    std::vector<Seed> seeds;
    seeds.push_back({"generated results database", {seed_file("results.db", read_file(path), false)}, 1});
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    ResultsDb::Options options;
    options.busy_timeout_seconds = 2;
    ResultsDb db(dir / "results.db", options);
    for (const auto& study : db.studies()) {
      db.find_study(study.name);
      db.counts(study.id);
      std::set<std::string> names;
      db.for_each_evaluation(study.id, [&](const EvaluationRecord& r) {
        for (const auto& m : r.metrics) names.insert(m.name);
      });
      names.insert("tinystories.ppl");
      db.metric_rows(study.id, {names.begin(), names.end()});
      db.load_strategy_state(study.id);
      db.status_of(study.id, "L1:q=8");
    }
    db.integrity_check();
  };
  t.structured = corrupt_rows;
  t.structured_percent = 50;
  t.default_cases = 2000;
  return t;
}

#ifdef RANKSCOPE_POSTGRES
// --db URIs: libpq parses them, rankscope rebuilds them without the password. Whatever the text,
// the result is a one-line Error or a URI that libpq reads as the given one without its password.
Target pguri_target() {
  Target t;
  t.name = "pguri";
  t.description = "PostgreSQL URIs given to --db: redacted without their password, or one Error (db/pg_connection.*)";
  t.seeds = [](const fs::path&) {
    std::vector<Seed> seeds;
    for (const char* uri : {"postgresql://alice:s3cretpw@db.example:5433/study?sslmode=disable&application_name=x",
                            "postgres://bob@[::1]:5432/db?password=hunter2pw", "postgresql://host/db",
                            "postgresql://%61lice:p%40sswordx@h%6fst/d%62?connect_timeout=5",
                            "postgresql:///db?host=/tmp&port=5432&user=u&password=longpassword"}) {
      seeds.push_back({uri, {seed_file("uri.txt", uri, false)}, 1});
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    // A URI comes from the command line, never from a file: the harness's FIFOs and missing files
    // say nothing about it.
    std::error_code ec;
    if (!fs::is_regular_file(dir / "uri.txt", ec)) return;
    const std::string uri = read_file(dir / "uri.txt");
    std::string redacted;
    try {
      redacted = redact_postgres_url(uri);
    } catch (const Error& e) {
      const std::string message = e.what();
      if (message.find('\n') != std::string::npos) throw std::runtime_error("a multi-line error: " + message);
      // libpq quotes the text it could not read (which may be the password): no quoted text of
      // it is repeated, only "..." in its place.
      std::string rest = message;
      for (size_t at; (at = rest.find("\"...\"")) != std::string::npos;) rest.erase(at, 5);
      if (rest.find('"') != std::string::npos) throw std::runtime_error("the error quotes the URI: " + message);
      return;
    }
    // The redacted URI must read (by libpq) as the given one without its password: no password,
    // every other value the same.
    std::map<std::string, std::string> given, back;
    auto parse = [](const std::string& text, std::map<std::string, std::string>& out) {
      char* err = nullptr;
      PQconninfoOption* options = PQconninfoParse(text.c_str(), &err);
      if (err != nullptr) PQfreemem(err);
      if (options == nullptr) return false;
      for (const PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
        if (o->val != nullptr && *o->val != '\0') out[o->keyword] = o->val;
      }
      PQconninfoFree(options);
      return true;
    };
    if (!parse(uri, given)) throw std::runtime_error("redacted a URI libpq cannot parse: " + uri);
    if (!parse(redacted, back)) throw std::runtime_error("the redacted URI does not parse: " + redacted);
    if (back.count("password") != 0 || back.count("sslpassword") != 0) {
      throw std::runtime_error("a password survived in " + redacted);
    }
    given.erase("password");
    given.erase("sslpassword");
    if (back != given) throw std::runtime_error("the redacted URI " + redacted + " reads differently from " + uri);
  };
  t.default_cases = 3000;
  return t;
}
#endif

// The guided strategy's saved state (search/guided.cpp): restore() of a mutated state returns or
// throws Error, and a restored strategy asks and is told without failing.
Target guided_state_target() {
  Target t;
  t.name = "guided";
  t.description = "guided strategy states: restore, then ask and tell (search/guided.cpp)";
  static const std::vector<int64_t> radices = {3, 4, 2, 3};
  auto options = [] {
    StrategyOptions o;
    o.seed = 5;
    o.objectives = parse_objectives("q:min,size:min");
    o.priors["q"] = {{0, 0.5, 1}, {0, 0.1, 0.4, 2}, {0, 1}, {0, 0.2, 0.3}};
    o.priors["size"] = {{0, -1, -2}, {0, -3, -5, -6}, {0, -2}, {0, -1, -4}};
    o.exact = {"size"};
    o.initial = 2;
    o.batch = 3;
    return o;
  };
  auto evaluate = [](const Point& p) {
    double q = 1, size = 20;
    for (size_t k = 0; k < p.size(); ++k) {
      q += 0.3 * static_cast<double>(p[k] * (k + 1));
      size -= static_cast<double>(p[k]);
    }
    return Observation{p, {{"q", q}, {"size", size}}, true};
  };
  t.seeds = [=](const fs::path&) {
    std::vector<Seed> seeds;
    auto s = make_strategy("guided", radices, options());
    for (int step = 0; step < 4; ++step) {
      const auto asked = s->ask(3);
      std::vector<Observation> told;
      for (const auto& p : asked) told.push_back(evaluate(p));
      if (step == 3) told.pop_back();  // one point pending
      s->tell(told);
      seeds.push_back({fmt::format("after {} asks", step + 1), {seed_file("state.json", s->state().dump(), true)}, 1});
    }
    return seeds;
  };
  t.run = [=](const fs::path& dir) {
    // A state comes from the results store, never from a file: the harness's FIFOs and missing
    // files say nothing about it.
    std::error_code ec;
    if (!fs::is_regular_file(dir / "state.json", ec)) return;
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(read_file(dir / "state.json"));
    } catch (const nlohmann::json::exception&) {
      return;  // not JSON: the store never hands such a state over
    }
    auto s = make_strategy("guided", radices, options());
    s->restore(state);
    for (int step = 0; step < 3; ++step) {
      std::vector<Observation> told;
      for (const auto& p : s->ask(3)) told.push_back(evaluate(p));
      s->tell(told);
    }
  };
  t.default_cases = 1500;
  return t;
}

std::vector<Target> all_targets() {
  return {safetensors_target(), model_target(), tokenizer_target(), npy_target(),
          tasks_target(),       cache_target(), db_target(), guided_state_target()
#ifdef RANKSCOPE_POSTGRES
          , pguri_target()
#endif
  };
}

}  // namespace rankscope::fuzz
