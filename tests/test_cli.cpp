// The rankscope executable as a user runs it: exit codes, one-line errors, outputs.
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "cli/options.hpp"
#include "core/io/npy.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

using test::RunResult;
using test::slurp;

RunResult run(const std::string& args, const std::string& prefix = "") { return test::run_cli(args, prefix); }

// The OpenMP settings every libgomp that starts in `rankscope ARGS` prints (OMP_DISPLAY_ENV), run
// with `env ENV` after removing the caller's wait policy and spin count.
std::string openmp_settings(const std::string& env, const std::string& args) {
  const auto err = std::filesystem::path(RANKSCOPE_BINARY_DIR) / "test-scratch" /
                   ("cli.omp." + std::to_string(::getpid()) + ".err");
  std::filesystem::create_directories(err.parent_path());
  const std::string cmd = "cd '" RANKSCOPE_SOURCE_DIR "' && env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OMP_DISPLAY_ENV=verbose " +
                          env + " '" RANKSCOPE_EXE "' " + args + " >/dev/null 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
  const std::string text = slurp(err);
  std::filesystem::remove(err);
  return text;
}

int line_count(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST_CASE("every option is declared once", "[cli]") {
  std::set<std::string> names;
  for (const auto& def : cli::option_defs()) {
    INFO(def.name);
    CHECK(names.insert(def.name).second);
    CHECK_FALSE(def.help.empty());
    CHECK_FALSE(def.commands.empty());
  }
  // Another spelling never shadows an option or another spelling.
  for (const auto& def : cli::option_defs()) {
    for (const auto& alias : def.aliases) {
      INFO(def.name << " alias " << alias);
      CHECK(names.insert(alias).second);
    }
  }
  cli::Params params;
  for (const char* command : {"info", "generate", "classify", "forward", "config", "space", "decompose"}) {
    CHECK_NOTHROW(cli::options_for(command, params));
  }
}

TEST_CASE("usage errors print one line and exit 2, --help exits 0", "[cli]") {
  for (const char* command : {"info", "generate", "classify", "forward", "config", "space", "decompose"}) {
    INFO(command);
    const auto bad = run(std::string(command) + " --no-such-option");
    CHECK(bad.exit_code == 2);
    CHECK(line_count(bad.err) == 1);
    CHECK_THAT(bad.err, Contains("no-such-option") && Contains("usage"));
    const auto help = run(std::string(command) + " --help");
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.out, Contains("usage: rankscope"));
  }
  CHECK(run("").exit_code == 2);
  CHECK(run("frobnicate").exit_code == 2);
  CHECK(run("generate m --tokens notanumber").exit_code == 2);
  CHECK(run("--help").exit_code == 0);
}

TEST_CASE("bad input exits 1 with one line naming the file", "[cli][errors]") {
  const auto missing = run("info does/not/exist");
  CHECK(missing.exit_code == 1);
  CHECK(line_count(missing.err) == 1);
  CHECK_THAT(missing.err, Contains("does/not/exist"));

  const auto dir = test::scratch_dir("cli_bad_config");
  test::write_text(dir / "config.json", "{ not json");
  const auto malformed = run("info " + dir.string());
  CHECK(malformed.exit_code == 1);
  CHECK(line_count(malformed.err) == 1);
  CHECK_THAT(malformed.err, Contains((dir / "config.json").string()) && Contains("malformed JSON"));
}

TEST_CASE("info on stories260K-hf and on a shapes-only Llama-2-7B config", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto r = run("info ../shared/data/stories260K-hf");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, Contains("LlamaForCausalLM") && Contains("260,032 total") && Contains("F32") &&
                        Contains("model.layers.4.mlp.down_proj.weight") && Contains("64 x 172"));
  const auto big = run("info ../shared/configs/llama-2-7b");
  REQUIRE(big.exit_code == 0);
  CHECK_THAT(big.out, Contains("6,738,415,616 total") && Contains("shapes only") && Contains("11008 x 4096"));
  const auto json = run("info ../shared/configs/llama-2-7b --json");
  REQUIRE(json.exit_code == 0);
  const auto j = nlohmann::json::parse(json.out);
  CHECK(j["params_total"] == 6738415616);
  CHECK(j["matrices"].size() == 224);
}

TEST_CASE("generate from an empty prompt tells the golden story", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto r = run("generate ../shared/data/stories260K-hf --tokens 24");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.out, StartsWith("Once upon a time, there was a little girl named Lily"));
  const auto prompted = run("generate ../shared/data/stories260K-hf --prompt 'Once upon a time' --tokens 8");
  REQUIRE(prompted.exit_code == 0);
  CHECK_THAT(prompted.out, StartsWith("Once upon a time, there was a little girl"));
}

TEST_CASE("generate on a checkpoint without tokenizer files says so", "[cli][errors]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("cli_no_tokenizer");
  test::copy_model(src, dir, {.copy_tokenizer = false});
  const auto r = run("generate " + dir.string() + " --tokens 4");
  CHECK(r.exit_code == 1);
  CHECK(line_count(r.err) == 1);
  CHECK_THAT(r.err, Contains(dir.string()) && Contains("no tokenizer"));
  // forward needs no text, so it works on the same checkpoint.
  CHECK(run("forward " + dir.string() + " --ids 1,403 --out " + (dir / "x.npy").string()).exit_code == 0);
}

TEST_CASE("forward writes the golden logits as .npy", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto dir = test::scratch_dir("cli_forward");
  const auto out = dir / "once.npy";
  const auto r = run("forward ../shared/data/stories260K-hf --ids 1,403,407,261,378 --out " + out.string());
  REQUIRE(r.exit_code == 0);
  const auto got = read_npy(out);
  const auto want = read_npy(test::shared_data("stories260K-hf/golden/logits_once.npy"));
  REQUIRE(got.shape == want.shape);
  float diff = 0;
  for (size_t i = 0; i < got.values.size(); ++i) diff = std::max(diff, std::abs(got.values[i] - want.values[i]));
  CHECK(diff <= 1e-4f);

  const auto bad = run("forward ../shared/data/stories260K-hf --ids 1,x --out " + out.string());
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("'x'"));
}

TEST_CASE("forward and classify on bert-tiny-sst2", "[cli]") {
  const auto model_dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(model_dir);
  const auto item = test::read_json(model_dir / "golden/dev_first32.json")["items"][0];
  const auto want = item["logits"].get<std::vector<float>>();
  std::string ids;
  for (const auto& id : item["input_ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id.get<int>());
  const auto dir = test::scratch_dir("cli_bert");
  REQUIRE(run("forward ../shared/data/bert-tiny-sst2 --ids " + ids + " --out " + (dir / "l.npy").string()).exit_code == 0);
  const auto logits = read_npy(dir / "l.npy");
  REQUIRE(logits.shape == std::vector<int64_t>{2});
  CHECK(std::abs(logits.values[0] - want[0]) <= 1e-4f);
  CHECK(std::abs(logits.values[1] - want[1]) <= 1e-4f);
  REQUIRE(run("forward ../shared/data/bert-tiny-sst2 --hidden --ids " + ids + " --out " + (dir / "h.npy").string()).exit_code == 0);
  CHECK(read_npy(dir / "h.npy").shape == std::vector<int64_t>{static_cast<int64_t>(item["input_ids"].size()), 128});

  const auto c = run("classify ../shared/data/bert-tiny-sst2 --text \"" + item["sentence"].get<std::string>() + "\"");
  REQUIRE(c.exit_code == 0);
  const double p_positive = 1.0 / (1.0 + std::exp(static_cast<double>(want[0] - want[1])));
  REQUIRE_THAT(c.out, Contains("negative") && Contains("positive"));
  const double printed = std::stod(c.out.substr(c.out.find("positive") + 8));
  CHECK(std::abs(printed - p_positive) <= 1e-5);
  CHECK(run("classify ../shared/data/stories260K-hf --text hi").exit_code == 1);
}

TEST_CASE("config, space and info --config on Llama-2-7B shapes", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_dir() / "configs" / "llama-2-7b");
  const auto canonical = run("config ../shared/configs/llama-2-7b --canonical 'L31,2,17:q,k,v,o,gate,up,down=1'");
  REQUIRE(canonical.exit_code == 0);
  CHECK(canonical.out == "L2,17,31:all=1\n");
  const auto bad = run("config ../shared/configs/llama-2-7b --canonical 'L2:qq=1'");
  CHECK(bad.exit_code == 1);
  CHECK(line_count(bad.err) == 1);
  CHECK_THAT(bad.err, Contains("qq"));
  const auto out_of_range = run("config ../shared/configs/llama-2-7b --canonical 'L32:q=1'");
  CHECK(out_of_range.exit_code == 1);
  CHECK_THAT(out_of_range.err, Contains("32"));

  const auto paper = run("space ../shared/configs/llama-2-7b --space paper --ranks 1 --list 3");
  REQUIRE(paper.exit_code == 0);
  CHECK_THAT(paper.out, Contains("549755813888") && Contains("log2      39.000000"));
  const auto per_matrix = run("space ../shared/configs/llama-2-7b --space per-matrix --choices dense,50%,25%,12.5%,6.25%,3.125%,16,1");
  REQUIRE(per_matrix.exit_code == 0);
  CHECK_THAT(per_matrix.out, Contains("log2      672.000000"));

  const auto info = run("info ../shared/configs/llama-2-7b --config 'L2,17,31:all=1'");
  REQUIRE(info.exit_code == 0);
  CHECK_THAT(info.out, Contains("size reduction       9.006438 %"));
}

TEST_CASE("decompose writes a checkpoint and a second run factorizes nothing", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto dir = test::scratch_dir("cli_decompose");
  const std::string common = "decompose ../shared/data/stories260K-hf --cache-dir " + (dir / "cache").string();
  const auto first = run(common + " --config 'L*:all=50%' --out " + (dir / "a").string());
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.out, Contains("35 matrices: 35 factorized, 0 from the cache"));
  const auto second = run(common + " --config 'L0-2:mlp=8@svd' --dense --out " + (dir / "b").string());
  REQUIRE(second.exit_code == 0);
  CHECK_THAT(second.out, Contains("9 matrices: 0 factorized, 9 from the cache"));
  const auto gen = run("generate " + (dir / "a").string() + " --tokens 4");
  CHECK(gen.exit_code == 0);
  const auto info = run("info " + (dir / "a").string());
  REQUIRE(info.exit_code == 0);
  CHECK_THAT(info.out, Contains("model.safetensors"));
  const auto bad = run(common + " --config 'L0:q=65' --out " + (dir / "c").string());
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("65"));
}

TEST_CASE("rankscope --version prints the version of CMakeLists.txt's project()", "[cli]") {
  const std::string cmake = slurp(std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "CMakeLists.txt");
  const auto at = cmake.find("project(rankscope VERSION ");
  REQUIRE(at != std::string::npos);
  const auto start = at + std::strlen("project(rankscope VERSION ");
  const std::string version = cmake.substr(start, cmake.find(' ', start) - start);
  for (const char* spelling : {"--version", "version"}) {
    const auto r = run(spelling);
    CHECK(r.exit_code == 0);
    CHECK(r.out == "rankscope " + version + "\n");
  }
}

TEST_CASE("each command's help describes its own options, defaults as written", "[cli]") {
  // The help of `command`, its line wrapping undone.
  const auto help = [](const std::string& command) {
    const auto r = run(command + " --help");
    REQUIRE(r.exit_code == 0);
    std::string flat;
    for (char c : r.out) {
      if (!std::isspace(static_cast<unsigned char>(c))) flat += c;
      else if (!flat.empty() && flat.back() != ' ') flat += ' ';
    }
    return flat;
  };
  CHECK_THAT(help("forward"), Contains("the .npy file to write") && !Contains("report"));
  CHECK_THAT(help("report"), Contains("report.md") && !Contains(".npy"));
  // Only sweep creates a database.
  CHECK_THAT(help("sweep"), Contains("created when absent"));
  for (const char* reader : {"pareto", "studies", "export", "report"}) {
    INFO(reader);
    CHECK_THAT(help(reader), Contains("--db") && !Contains("created"));
  }
  CHECK_THAT(help("export"), Contains("--format arg (=csv) output format: csv | json") && !Contains("table"));
  CHECK_THAT(help("pareto"), Contains("--format arg (=table) output format: table | csv | json"));
  CHECK_THAT(help("classify"), Contains("--text arg text to classify"));
  CHECK_THAT(help("eval"), Contains("--text arg a text file to score perplexity on"));
  const auto sweep = help("sweep");
  CHECK_THAT(sweep, Contains("--crossover-rate arg (=0.9)") && Contains("--stale-after arg (=600)") &&
                        Contains("--mutation-rate arg (=-1)"));
  CHECK_THAT(sweep, !Contains("0.9000") && !Contains("600.0"));
  CHECK_THAT(help("eval"), Contains("--asvd-alpha arg (=0.5)"));
}

TEST_CASE("a missing required option is a usage error", "[cli]") {
  const std::pair<const char*, const char*> cases[] = {
      {"info", "MODEL is required"},
      {"classify ../shared/data/bert-tiny-sst2", "--text is required"},
      {"forward m --out x.npy", "--ids is required"},
      {"forward m --ids 1,2", "--out is required"},
      {"config m", "--canonical is required"},
      {"decompose m --config 'L0:q=1'", "--out is required"},
      {"eval m --limit 3", "--tasks or --text is required"},
      {"pareto --study s", "--db is required"},
      {"export --db x.db", "--study is required"},
      {"report --db x.db --study s", "--out is required"},
      {"studies", "--db is required"},
      {"sweep --db x.db --tasks size --objectives size.params:min", "--model is required (or `model =` in the experiment file)"},
  };
  for (const auto& [args, message] : cases) {
    INFO(args);
    const auto r = run(args);
    CHECK(r.exit_code == 2);
    CHECK(line_count(r.err) == 1);
    CHECK_THAT(r.err, Contains(message) && Contains("usage: rankscope"));
  }
}

TEST_CASE("unknown names suggest the closest valid one", "[cli]") {
  const auto command = run("evl m --tasks size");
  CHECK(command.exit_code == 2);
  CHECK_THAT(command.err, Contains("unknown command 'evl'") && Contains("did you mean 'eval'?"));
  const auto option = run("generate m --tokns 3");
  CHECK(option.exit_code == 2);
  CHECK(line_count(option.err) == 1);
  CHECK_THAT(option.err, Contains("--tokns") && Contains("did you mean '--tokens'?"));
  const auto strategy = run("sweep --model m --db x.db --tasks size --objectives size.params:min --strategy evolutionay");
  CHECK(strategy.exit_code == 2);
  CHECK_THAT(strategy.err, Contains("--strategy: unknown value 'evolutionay'") && Contains("did you mean 'evolutionary'?"));
  const auto format = run("export --db x.db --study s --format table");
  CHECK(format.exit_code == 2);
  CHECK_THAT(format.err, Contains("--format: unknown value 'table'") && Contains("one of csv, json"));
  const auto task = run("eval m --tasks arc_eazy,size");
  CHECK(task.exit_code == 2);
  CHECK_THAT(task.err, Contains("unknown task 'arc_eazy'") && Contains("did you mean 'arc_easy'?"));
  CHECK(run("space m --space per_matrix").exit_code == 2);
  CHECK_THAT(run("space m --space per_matrix").err, Contains("did you mean 'per-matrix'?"));
  const auto backend = run("decompose m --out d --svd-backend lapak");
  CHECK(backend.exit_code == 2);
  CHECK_THAT(backend.err, Contains("did you mean 'lapack'?"));
}

namespace {

// parse_command_line for `command` on `args` (after the command name), into `params`.
int parse(const std::string& command, std::vector<std::string> args, cli::Params& params) {
  args.insert(args.begin(), "rankscope-" + command);
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  const cli::Command cmd{command, "test", "ARGS", [](const cli::Params&) { return 0; }};
  return cli::parse_command_line(cmd, static_cast<int>(argv.size()), argv.data(), params).value_or(0);
}

}  // namespace

TEST_CASE("lm-eval's spellings are the same options, on the command line and in experiment files", "[cli]") {
  cli::Params p;
  REQUIRE(parse("eval", {"m", "--tasks", "arc_easy", "--num_fewshot", "5", "--output_path", "out/", "--log_samples",
                         "--limit", "0.1", "--batch_size", "3"},
                p) == 0);
  CHECK(p.num_fewshot == 5);
  CHECK(p.output_path == "out/");
  CHECK(p.log_samples);
  CHECK(p.limit.is_fraction());
  CHECK(p.limit.fraction == 0.1);
  CHECK(p.batch_size == 3);
  cli::Params q;
  REQUIRE(parse("eval", {"m", "--tasks", "arc_easy", "--num-fewshot", "5", "--output-path", "out/", "--log-samples", "--limit", "7"}, q) == 0);
  CHECK(q.num_fewshot == 5);
  CHECK(q.output_path == "out/");
  CHECK(q.log_samples);
  CHECK(q.limit == Limit(7));
  cli::Params both;
  CHECK(parse("eval", {"m", "--tasks", "size", "--num_fewshot", "1", "--num-fewshot", "2"}, both) == 2);
  cli::Params both_flags;
  CHECK(parse("eval", {"m", "--tasks", "size", "--log-samples", "--log_samples", "--output-path", "o"}, both_flags) == 2);
  const auto r = run("eval m --tasks size --output-path a --output_path b");
  CHECK(r.exit_code == 2);
  CHECK(line_count(r.err) == 1);
  CHECK_THAT(r.err, Contains("--output-path and --output_path are two spellings of one option"));
  // A misspelt lm-eval option suggests the lm-eval spelling.
  CHECK_THAT(run("eval m --tasks size --num_fewshots 2").err, Contains("did you mean '--num_fewshot'?"));

  // Experiment files take them too; the command line still wins over the file.
  const auto dir = test::scratch_dir("cli_aliases");
  test::write_text(dir / "x.ini", "model = m\nnum_fewshot = 4\nbatch_size = 2\nlimit = 0.25\n");
  cli::Params from_file;
  REQUIRE(parse("sweep", {(dir / "x.ini").string()}, from_file) == 0);
  CHECK(from_file.num_fewshot == 4);
  CHECK(from_file.batch_size == 2);
  CHECK(from_file.limit == Limit::share(0.25));
  cli::Params overridden;
  REQUIRE(parse("sweep", {(dir / "x.ini").string(), "--num-fewshot", "1"}, overridden) == 0);
  CHECK(overridden.num_fewshot == 1);
  test::write_text(dir / "y.ini", "model = m\nnum_fewshot = 4\nnum-fewshot = 3\n");
  const auto twice = run("sweep " + (dir / "y.ini").string());
  CHECK(twice.exit_code == 1);
  CHECK(line_count(twice.err) == 1);
  CHECK_THAT(twice.err, Contains((dir / "y.ini").string()) && Contains("num_fewshot and num-fewshot are two spellings"));
}

TEST_CASE("eval --limit takes a count, -1, or a fraction in (0, 1), anything else is a usage error", "[cli]") {
  CHECK(Limit::parse("200") == Limit(200));
  CHECK(Limit::parse("-1") == Limit());
  CHECK(Limit::parse("0.1") == Limit::share(0.1));
  CHECK(Limit::parse("5.0") == Limit(5));  // lm-eval: int(5.0)
  CHECK(Limit::parse("1e2") == Limit(100));
  for (const char* bad : {"1.5", "0", "0.0", "-2", "-0.5", "abc", "", "nan", "inf", "1e400"}) {
    INFO(bad);
    CHECK_FALSE(Limit::parse(bad).has_value());
  }
  CHECK(Limit::share(0.25).text() == "0.25");
  CHECK(Limit(12).text() == "12");
  // Results and study settings record a count as the integer they always did.
  CHECK(nlohmann::json(Limit(12)).dump() == "12");
  CHECK(nlohmann::json(Limit()).dump() == "-1");
  CHECK(nlohmann::json(Limit::share(0.1)).dump() == "0.1");
  for (const char* bad : {"1.5", "0", "x"}) {
    INFO(bad);
    const auto r = run(std::string("eval m --tasks size --limit ") + bad);
    CHECK(r.exit_code == 2);
    CHECK(line_count(r.err) == 1);
    CHECK_THAT(r.err, Contains("--limit") && Contains(std::string("'") + bad + "'"));
  }
}

TEST_CASE("eval --log-samples needs --output-path, an output path that cannot be written is bad input", "[cli][errors]") {
  const auto alone = run("eval m --tasks size --log_samples");
  CHECK(alone.exit_code == 2);
  CHECK(line_count(alone.err) == 1);
  CHECK_THAT(alone.err, Contains("--log-samples") && Contains("needs --output-path"));

  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto dir = test::scratch_dir("cli_output_path");
  test::write_text(dir / "file", "not a directory");
  const auto blocked = (dir / "file" / "out").string();
  const auto r = run("eval ../shared/data/stories260K-hf --tasks size --output_path " + blocked);
  CHECK(r.exit_code == 1);
  CHECK(line_count(r.err) == 1);
  CHECK_THAT(r.err, Contains("--output-path " + blocked) && Contains("cannot create"));
}

TEST_CASE("forward and generate --config run the model decompose --config writes", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_data("stories260K-hf"));
  const auto dir = test::scratch_dir("cli_forward_config");
  const std::string cache = " --cache-dir " + (dir / "cache").string();
  const std::string config = " --config 'L*:attn=50%@svd;L0-2:mlp=12.5%'";
  REQUIRE(run("decompose ../shared/data/stories260K-hf" + config + cache + " --out " + (dir / "ckpt").string()).exit_code == 0);
  const std::string ids = " --ids 1,403,407,261,378,300,42";
  REQUIRE(run("forward ../shared/data/stories260K-hf" + config + cache + ids + " --out " + (dir / "a.npy").string()).exit_code == 0);
  REQUIRE(run("forward " + (dir / "ckpt").string() + ids + " --out " + (dir / "b.npy").string()).exit_code == 0);
  REQUIRE(run("forward ../shared/data/stories260K-hf" + ids + " --out " + (dir / "dense.npy").string()).exit_code == 0);
  const auto a = read_npy(dir / "a.npy"), b = read_npy(dir / "b.npy"), dense = read_npy(dir / "dense.npy");
  REQUIRE(a.shape == b.shape);
  // The same factors (the checkpoint stores them as the float32 the decomposer made) through the
  // same factored products in the same order: the same bits.
  CHECK(a.values == b.values);
  CHECK(a.values != dense.values);  // the configuration changed the model

  const auto gen_config = run("generate ../shared/data/stories260K-hf --tokens 12" + config + cache);
  const auto gen_ckpt = run("generate " + (dir / "ckpt").string() + " --tokens 12");
  REQUIRE(gen_config.exit_code == 0);
  REQUIRE(gen_ckpt.exit_code == 0);
  CHECK(gen_config.out == gen_ckpt.out);
  const auto bad = run("forward ../shared/data/stories260K-hf --config 'L0:q=65'" + cache + ids + " --out " + (dir / "c.npy").string());
  CHECK(bad.exit_code == 1);
  CHECK_THAT(bad.err, Contains("65"));
}

TEST_CASE("an unknown key in an experiment file is bad input naming the file", "[cli][errors]") {
  const auto dir = test::scratch_dir("cli_experiment_typo");
  test::write_text(dir / "x.ini", "model = m\nstrategy = greedy\nbudgte = 4\n");
  const auto r = run("sweep " + (dir / "x.ini").string());
  CHECK(r.exit_code == 1);
  CHECK(line_count(r.err) == 1);
  CHECK_THAT(r.err, Contains((dir / "x.ini").string()) && Contains("budgte") && Contains("did you mean '--budget'?"));
}

TEST_CASE("a file where a model directory is expected says so", "[cli][errors]") {
  const auto file = test::shared_data("stories260K-hf/model.safetensors");
  RS_REQUIRE_SHARED(file);
  for (const char* command : {"info", "generate", "eval --tasks size"}) {
    INFO(command);
    const auto r = run(std::string(command) + " ../shared/data/stories260K-hf/model.safetensors");
    CHECK(r.exit_code == 1);
    CHECK(line_count(r.err) == 1);
    CHECK_THAT(r.err, Contains("model.safetensors: is a file, not a model directory"));
  }
  // A bare config.json is still a (shapes-only) model.
  CHECK(run("info ../shared/data/stories260K-hf/config.json").exit_code == 0);
}

TEST_CASE("pareto --where grammar errors say what is wrong and where", "[cli][errors]") {
  RS_REQUIRE_SHARED(test::shared_dir() / "configs" / "llama-2-7b");
  const auto dir = test::scratch_dir("cli_where");
  const auto db = (dir / "w.db").string();
  // A one-evaluation study, size only: no weights needed.
  const auto sweep = run("sweep --model ../shared/configs/llama-2-7b --db " + db +
                         " --study s --tasks size --objectives size.params:min,size.reduction_pct:max --strategy list "
                         "--config 'L0:q=1' --budget 1");
  REQUIRE(sweep.exit_code == 0);
  const std::string query = "pareto --db " + db + " --study s --where ";
  CHECK(run(query + "'size.params<=7e9 and size.reduction_pct>0'").exit_code == 0);
  const std::pair<const char*, const char*> cases[] = {
      {"size.params<=7e9 and", "expected a condition after 'and', found the end at character 21"},
      {"size.params=7e9", "'=' is not supported after 'size.params' (compare with >=, <=, > or <) at character 12"},
      {"size.params>=abc", "'abc' is not a finite number at character 14"},
      {"size.params>=1 or size.params<2", "'or' is not supported"},
      {"size.params>=1 size.params<2", "expected 'and' or ',' after 'size.params>=1', found 'size.params<2' at character 16"},
      {"(size.params>=1)", "parentheses are not supported"},
      {"size.params", "expected >=, <=, > or < after 'size.params', found the end at character 12"},
      {">=5", "expected a metric name"},
  };
  for (const auto& [where, message] : cases) {
    INFO(where);
    const auto r = run(query + "'" + where + "'");
    CHECK(r.exit_code == 1);
    CHECK(line_count(r.err) == 1);
    CHECK_THAT(r.err, Contains(std::string("--where \"") + where + "\"") && Contains(message));
  }
}

TEST_CASE("every command runs with idle OpenMP threads sleeping unless the user chose a policy", "[cli]") {
  RS_REQUIRE_SHARED(test::shared_dir() / "configs" / "llama-2-7b");
  const std::string command = "config ../shared/configs/llama-2-7b --canonical 'L0:q=1'";
  // libgomp reads the policy when it loads: the first process prints the default, the process
  // it re-executes prints PASSIVE with no spinning; nothing runs after that.
  const auto unset = openmp_settings("", command);
  const auto last = unset.rfind("GOMP_SPINCOUNT = ");
  REQUIRE(last != std::string::npos);
  CHECK(unset.substr(last, std::strlen("GOMP_SPINCOUNT = '0'")) == "GOMP_SPINCOUNT = '0'");
  CHECK_THAT(unset, Contains("OMP_WAIT_POLICY = 'PASSIVE'"));
  // A policy or spin count the user set is kept, and there is no re-execution (one libgomp start).
  const auto active = openmp_settings("OMP_WAIT_POLICY=ACTIVE", command);
  CHECK_THAT(active, Contains("OMP_WAIT_POLICY = 'ACTIVE'"));
  CHECK(active.find("GOMP_SPINCOUNT") == active.rfind("GOMP_SPINCOUNT"));
  const auto spin = openmp_settings("GOMP_SPINCOUNT=1000", command);
  CHECK_THAT(spin, Contains("GOMP_SPINCOUNT = '1000'"));
  CHECK(spin.find("GOMP_SPINCOUNT") == spin.rfind("GOMP_SPINCOUNT"));
}
