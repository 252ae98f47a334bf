// Honest numbers on every path: the size of a decomposed checkpoint whichever command asks,
// configurations that do not shrink a matrix, exact exports, escaped reports, writes that fail
// leaving no partial file, and temporaries of killed writers cleaned up.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/decompose/calibration.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/decompose/size.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

using test::RunResult;
using test::slurp;

RunResult run(const std::string& args, const std::string& prefix = "") { return test::run_cli(args, prefix); }

// Writes beyond `kib` KiB fail (EFBIG) instead of killing the process (SIGXFSZ ignored). dash
// counts ulimit -f in 512-byte blocks, bash in 1024: the limits below hold with either.
std::string file_size_limit(int blocks) { return "trap '' XFSZ; ulimit -f " + std::to_string(blocks) + ";"; }

std::vector<std::string> names_in(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

const std::filesystem::path stories() { return test::shared_data("stories260K-hf"); }

std::map<std::string, nlohmann::json> results_by_name(const std::string& json_text) {
  std::map<std::string, nlohmann::json> out;
  const auto j = nlohmann::json::parse(json_text);
  for (const auto& r : j["results"]) out[r["name"].get<std::string>()] = r;
  return out;
}

// stories260K-hf: 5 layers; q, o [64 x 64], k, v [32 x 64], gate, up [172 x 64], down [64 x 172];
// tied 512 x 64 embeddings; 260,032 parameters.
constexpr int64_t kStoriesParams = 260032;
constexpr int64_t kQ = 64 * 64, kK = 32 * 64, kMlp = 172 * 64;
constexpr int64_t kDecomposablePerLayer = 2 * kQ + 2 * kK + 3 * kMlp;
constexpr int64_t kHead = 512 * 64;

}  // namespace

TEST_CASE("break_even_rank is the last rank at which the factored form is smaller", "[honest][size]") {
  for (int64_t m = 1; m <= 40; ++m) {
    for (int64_t n = 1; n <= 40; ++n) {
      for (Method method : {Method::svd, Method::tucker, Method::asvd, Method::whiten}) {
        int64_t want = 0;
        for (int64_t r = 1; r <= std::min(m, n); ++r) {
          if (factored_params(m, n, r, method) < m * n) want = r;
        }
        INFO(m << " x " << n << " " << method_name(method));
        REQUIRE(break_even_rank(m, n, method) == want);
      }
    }
  }
  // svd: r (m + n) < m n; tucker: r^2 + r (m + n) < m n, r < 4096 (sqrt 2 - 1) = 1696.7 for 4096 x 4096.
  CHECK(break_even_rank(4096, 4096, Method::svd) == 2047);
  CHECK(break_even_rank(4096, 4096, Method::tucker) == 1696);
  CHECK(break_even_rank(11008, 4096, Method::svd) == 2985);  // 11008 * 4096 / 15104 = 2985.2
}

TEST_CASE("info --config warns of every matrix the configuration does not shrink, with its break-even rank",
          "[honest][size][cli]") {
  RS_REQUIRE_SHARED(stories());
  // L0:q svd 32: 32 * 128 = 4096 = dense; L1:q tucker 27: 27 * 128 + 27^2 = 4185 > 4096;
  // L2:q tucker 26: 4004 < 4096 (fine); L0:k [32 x 64] svd 22: 22 * 96 = 2112 > 2048.
  const std::string config = "L0:q=32@svd;L1:q=27;L2:q=26;L0:k=22@svd";
  const auto text = run("info " + stories().string() + " --config '" + config + "'");
  REQUIRE(text.exit_code == 0);
  CHECK_THAT(text.out, Contains("warning: L0:q [64 x 64] rank 32 @svd has 4,096 parameters >= 4,096 dense (break-even rank 31)"));
  CHECK_THAT(text.out, Contains("warning: L1:q [64 x 64] rank 27 @tucker has 4,185 parameters >= 4,096 dense (break-even rank 26)"));
  CHECK_THAT(text.out, Contains("warning: L0:k [32 x 64] rank 22 @svd has 2,112 parameters >= 2,048 dense (break-even rank 21)"));
  CHECK_THAT(text.out, !Contains("warning: L2:q"));

  const auto json = run("info " + stories().string() + " --config '" + config + "' --json");
  REQUIRE(json.exit_code == 0);
  const auto warnings = nlohmann::json::parse(json.out)["size"]["not_smaller_than_dense"];
  REQUIRE(warnings.size() == 3);
  CHECK(warnings[0]["layer"] == 0);
  CHECK(warnings[0]["matrix"] == "q");
  CHECK(warnings[0]["break_even_rank"] == 31);
  CHECK(warnings[1]["matrix"] == "k");
  CHECK(warnings[1]["params_factored"] == 2112);
  CHECK(warnings[2]["layer"] == 1);
  CHECK(warnings[2]["break_even_rank"] == 26);

  const auto fine = run("info " + stories().string() + " --config 'L*:all=25%'");
  REQUIRE(fine.exit_code == 0);
  CHECK_THAT(fine.out, !Contains("warning"));
}

TEST_CASE("a decomposed checkpoint reports its factored size against the dense model on every path",
          "[honest][size][cli]") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("honest-decomposed-size");
  const std::string cache = " --cache-dir " + (dir / "cache").string();
  const auto ckpt = (dir / "ckpt").string();
  // attn at 25 % by svd: q, o rank 16, k, v rank 8; mlp of layers 0-2 at 12.5 % (rank 8) by tucker.
  const auto made = run("decompose " + stories().string() + " --config 'L*:attn=25%@svd;L0-2:mlp=12.5%' --out " + ckpt + cache);
  REQUIRE(made.exit_code == 0);
  const int64_t attn_saved = 5 * (2 * (kQ - 16 * 128) + 2 * (kK - 8 * 96));
  const int64_t mlp_factored = 64 * 8 + 8 * 8 + 8 * 172;
  const int64_t mlp_saved = 3 * 3 * (kMlp - mlp_factored);
  const int64_t params = kStoriesParams - attn_saved - mlp_saved;
  REQUIRE(params == 145248);
  const int64_t flops_before = 2 * (5 * kDecomposablePerLayer + kHead);
  const int64_t flops_after = flops_before - 2 * (attn_saved + mlp_saved);
  const double reduction = 100.0 * static_cast<double>(attn_saved + mlp_saved) / kStoriesParams;
  CHECK_THAT(made.out, Contains(fmt::format("parameters    {} -> {}", kStoriesParams, params)));

  // info with no --config: the checkpoint's own size.
  const auto info = run("info " + ckpt + " --json");
  REQUIRE(info.exit_code == 0);
  const auto j = nlohmann::json::parse(info.out);
  REQUIRE(j.contains("size"));
  CHECK(j["params_total"] == params);  // the weights as loaded
  CHECK(j["size"]["params_before"] == kStoriesParams);
  CHECK(j["size"]["params_after"] == params);
  CHECK(j["size"]["matrices_stored_factored"] == 29);
  CHECK(j["size"]["flops_per_token_before"] == flops_before);
  CHECK(j["size"]["flops_per_token_after"] == flops_after);
  CHECK(j["size"]["reduction_pct"].get<double>() == Approx(reduction).epsilon(1e-12));
  const auto info_text = run("info " + ckpt);
  REQUIRE(info_text.exit_code == 0);
  CHECK_THAT(info_text.out, Contains("29 matrices stored factored") &&
                                Contains("parameters           260,032 -> 145,248"));

  // eval --tasks size: shapes only, and with the weights loaded for latency: the same figures.
  for (const std::string tasks : {"size", "size,latency --latency-reps 1 --latency-tokens 8"}) {
    INFO(tasks);
    const auto eval = run("eval " + ckpt + " --tasks " + tasks + " --json" + cache);
    INFO(eval.err);
    REQUIRE(eval.exit_code == 0);
    auto by_name = results_by_name(eval.out);
    CHECK(by_name["size.params"]["value"] == params);
    CHECK(by_name["size.flops_per_token"]["value"] == flops_after);
    CHECK(by_name["size.reduction_pct"]["value"].get<double>() == Approx(reduction).epsilon(1e-12));
    CHECK(by_name["size.params"]["protocol"]["params_before"] == kStoriesParams);
    CHECK(by_name["size.params"]["protocol"]["matrices_stored_factored"] == 29);
  }

  // A configuration on top of the checkpoint factors further matrices; the stored ones stay.
  const int64_t more = params - 2 * 3 * (kMlp - 8 * (172 + 64));
  const auto eval_more = run("eval " + ckpt + " --tasks size --config 'L3-4:mlp=8@svd' --json" + cache);
  REQUIRE(eval_more.exit_code == 0);
  CHECK(results_by_name(eval_more.out)["size.params"]["value"] == more);
  const auto info_more = run("info " + ckpt + " --config 'L3-4:mlp=8@svd' --json");
  REQUIRE(info_more.exit_code == 0);
  CHECK(nlohmann::json::parse(info_more.out)["size"]["params_after"] == more);
  // Written out, the result records every factored matrix and reports the same size.
  const auto again = run("decompose " + ckpt + " --config 'L3-4:mlp=8@svd' --out " + (dir / "again").string() + cache);
  REQUIRE(again.exit_code == 0);
  CHECK_THAT(again.out, Contains(fmt::format("parameters    {} -> {}", kStoriesParams, more)));
  const auto config = nlohmann::json::parse(slurp(dir / "again" / "config.json"))["rankscope"];
  CHECK(config["factored"].size() == 29 + 6);
  // attn everywhere (q, o rank 16, k, v rank 8) and mlp of layers 0-2 (rank 8, tucker) stored, and
  // mlp of layers 3-4 now (rank 8, svd): canonically merged with k, v of layers 3-4.
  CHECK(config["config"] == "L0-2:k,v=8@svd;L0-2:mlp=8;L*:q,o=16@svd;L3-4:k,v,gate,up,down=8@svd");
  const auto info_again = run("info " + (dir / "again").string() + " --json");
  REQUIRE(info_again.exit_code == 0);
  CHECK(nlohmann::json::parse(info_again.out)["size"]["params_after"] == more);

  // A matrix stored factored cannot be configured again, on any path.
  const auto twice = run("info " + ckpt + " --config 'L0:q=4'");
  CHECK(twice.exit_code == 1);
  CHECK_THAT(twice.err, Contains("already factored"));
  CHECK(run("eval " + ckpt + " --tasks size --config 'L0:q=4'" + cache).exit_code == 1);
}

TEST_CASE("forward --out and decompose --out: a failed write leaves no partial file", "[honest][files][cli]") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("honest-failed-writes");
  // 20 tokens of logits: 20 x 512 x 4 = 40,960 bytes, past a limit of at most 16 KiB.
  std::string ids = "1";
  for (int i = 1; i < 20; ++i) ids += "," + std::to_string(100 + i);
  const auto npy = dir / "npy";
  std::filesystem::create_directories(npy);
  const auto forward = run("forward " + stories().string() + " --ids " + ids + " --out " + (npy / "x.npy").string(),
                           file_size_limit(16));
  CHECK(forward.exit_code == 1);
  CHECK_THAT(forward.err, Contains("x.npy"));
  CHECK(names_in(npy).empty());
  const auto whole = run("forward " + stories().string() + " --ids " + ids + " --out " + (npy / "x.npy").string());
  REQUIRE(whole.exit_code == 0);
  CHECK(names_in(npy) == std::vector<std::string>{"x.npy"});

  // decompose: the factor cache filled first (files of at most 60 KB), then a checkpoint of
  // ~580 KB written under a limit of at most 160 KiB.
  const std::string cache = " --cache-dir " + (dir / "cache").string();
  const std::string config = " --config 'L*:all=50%'";
  REQUIRE(run("decompose " + stories().string() + config + " --out " + (dir / "warm").string() + cache).exit_code == 0);
  const auto out = dir / "ckpt";
  const auto failed = run("decompose " + stories().string() + config + " --out " + out.string() + cache, file_size_limit(160));
  CHECK(failed.exit_code == 1);
  CHECK_THAT(failed.err, Contains("model.safetensors"));
  CHECK_FALSE(std::filesystem::exists(out));  // nothing left, not even the directory it made
  // Over an existing checkpoint, a failed write leaves the old one whole.
  REQUIRE(run("decompose " + stories().string() + config + " --out " + out.string() + cache).exit_code == 0);
  const auto before = names_in(out);
  const std::string weights = slurp(out / "model.safetensors");
  const auto failed_again = run("decompose " + stories().string() + " --config 'L*:all=75%' --out " + out.string() + cache,
                                file_size_limit(160));
  CHECK(failed_again.exit_code == 1);
  CHECK(names_in(out) == before);
  CHECK(slurp(out / "model.safetensors") == weights);
}

TEST_CASE("temporaries of killed writers are removed when a cache is opened or written, live ones are not",
          "[honest][files][cache]") {
  const auto dir = test::scratch_dir("honest-stale-temporaries");
  char host[256] = {};
  REQUIRE(::gethostname(host, sizeof host - 1) == 0);
  std::string tag = host;
  for (char& c : tag) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
  }
  // No process has a pid above 2^22, Linux's largest pid_max.
  const std::string dead = "4194305";
  const std::string live = std::to_string(::getpid());
  const std::string key = "0123456789abcdef0123456789abcdef";
  auto touch = [&](const std::string& name) {
    std::ofstream(dir / name) << "partial";
    return name;
  };
  const auto dead_here = touch(key + ".svd.tmp." + tag + "." + dead + ".1a2b");
  const auto dead_old_format = touch(key + ".r64.svd.tmp." + dead + ".3c4d");
  const auto live_here = touch(key + ".svd.tmp." + tag + "." + live + ".5e6f");
  const auto elsewhere_recent = touch(key + ".svd.tmp.another-host." + dead + ".7a8b");
  const auto elsewhere_old = touch(key + ".svd.tmp.another-host." + dead + ".9c0d");
  std::filesystem::last_write_time(dir / elsewhere_old,
                                   std::filesystem::file_time_type::clock::now() - kStaleTemporaryAge - std::chrono::hours(1));
  const auto not_ours = touch("notes.tmp.txt");
  const auto entry = touch(key + ".svd");

  FactorCache cache(dir);
  std::vector<std::string> kept = {key + ".svd", elsewhere_recent, live_here, not_ours};
  std::sort(kept.begin(), kept.end());
  CHECK(names_in(dir) == kept);
  (void)dead_here;
  (void)dead_old_format;
  (void)entry;

  // The calibration cache: when an entry is written, killed writers' temporaries in it go.
  const auto calib = dir / "calib";
  std::filesystem::create_directories(calib);
  std::ofstream(calib / (key + ".bin.tmp." + tag + "." + dead + ".ab")) << "partial";
  const auto calib_live = key + ".bin.tmp." + tag + "." + live + ".cd";
  std::ofstream(calib / calib_live) << "partial";
  Calibration c;
  c.key = key;
  c.info = {{"source", "test"}};
  save_calibration(calibration_path(dir, key), c);
  CHECK(names_in(calib) == std::vector<std::string>{key + ".bin", calib_live});
}

TEST_CASE("write_file_atomically: whole file or none, no temporary left", "[honest][files]") {
  const auto dir = test::scratch_dir("honest-atomic");
  write_file_atomically(dir / "a.txt", "first");
  write_file_atomically(dir / "a.txt", "second");
  CHECK(slurp(dir / "a.txt") == "second");
  std::filesystem::create_directories(dir / "b.txt" / "inside");  // a directory in the way
  CHECK_THROWS_WITH(write_file_atomically(dir / "b.txt", "x"), Contains("b.txt"));
  CHECK(names_in(dir) == std::vector<std::string>{"a.txt", "b.txt"});
}

namespace {

// One CSV record (RFC 4180 quoting, no line breaks inside fields).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        out.back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        out.back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

// "2026-11-29T04:48:14.918024Z" as Unix seconds; NaN when it is not of that form.
double parse_iso8601_utc(const std::string& s) {
  std::tm tm{};
  int micros = -1;
  char z = 0;
  if (s.size() != 27 || std::sscanf(s.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%6d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &micros, &z) != 8 || z != 'Z') {
    return std::nan("");
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(timegm(&tm)) + micros * 1e-6;
}

// A study of 5 configurations of stories260K-hf on a JSONL task whose name needs escaping in
// markdown, tinystories (a metric with a standard error) and size, under a study name that needs
// escaping everywhere.
const std::string kOddStudy = "S<b>&\"q|`t";

std::string make_study(const std::filesystem::path& dir) {
  std::ofstream(dir / "t.jsonl") << "{\"rankscope_task\": {\"name\": \"_odd_name_\"}}\n"
                                    "{\"context\": \"Once upon a time there was a\", \"choices\": [\" girl\", \" dog\"], \"gold\": 0}\n"
                                    "{\"context\": \"The cat sat on the\", \"choices\": [\" mat\", \" sky\"], \"gold\": 0}\n";
  const std::string db = (dir / "r.db").string();
  const auto sweep = run("sweep --model " + stories().string() + " --db " + db + " --study '" + kOddStudy +
                         "' --strategy random --budget 5 --space per-matrix --choices dense,50%,25% --method svd --tasks " +
                         (dir / "t.jsonl").string() + ",tinystories,size --limit 2 --objectives '_odd_name_.acc:max,size.params:min'"
                         " --seed 1 --data-dir " + test::shared_data("").string());
  INFO(sweep.err);
  REQUIRE(sweep.exit_code == 0);
  return " --db " + db + " --study '" + kOddStudy + "'";
}

}  // namespace

TEST_CASE("export --format csv: every number reads back exactly, times in ISO 8601 UTC, stderr beside each metric",
          "[honest][export][cli]") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("honest-export");
  const std::string study = make_study(dir);
  const auto csv = run("export" + study + " --format csv");
  REQUIRE(csv.exit_code == 0);
  const auto json = run("export" + study + " --format json");
  REQUIRE(json.exit_code == 0);
  const auto evaluations = nlohmann::json::parse(json.out)["evaluations"];
  REQUIRE(evaluations.size() == 5);

  std::istringstream lines(csv.out);
  std::string line;
  REQUIRE(std::getline(lines, line));
  const auto header = csv_fields(line);
  auto column = [&](const std::string& name) {
    const auto it = std::find(header.begin(), header.end(), name);
    REQUIRE(it != header.end());
    return static_cast<size_t>(it - header.begin());
  };
  const size_t ppl = column("tinystories.ppl");
  CHECK(header.at(ppl + 1) == "tinystories.ppl_stderr");
  const size_t params = column("size.params");
  CHECK(header.at(params + 1) == "size.params_stderr");
  const size_t finished = column("finished_at"), claimed = column("claimed_at"), wall = column("wall_s");
  size_t rows = 0;
  for (; std::getline(lines, line); ++rows) {
    const auto fields = csv_fields(line);
    REQUIRE(fields.size() == header.size());
    const auto& e = evaluations.at(rows);
    CHECK(std::stoll(fields[0]) == e["evaluation"].get<int64_t>());
    // Exactly the stored doubles (JSON carries them at full precision).
    for (size_t c = 8; c < header.size(); c += 2) {
      INFO(header[c] << " " << fields[c]);
      const auto& m = e["metrics"].at(header[c]);
      CHECK(std::strtod(fields[c].c_str(), nullptr) == m["value"].get<double>());
      if (m["stderr"].is_null()) {
        CHECK(fields[c + 1].empty());
      } else {
        CHECK(std::strtod(fields[c + 1].c_str(), nullptr) == m["stderr"].get<double>());
      }
    }
    CHECK(!fields[ppl + 1].empty());  // perplexity has a standard error
    CHECK(std::strtod(fields[wall].c_str(), nullptr) == e["wall_s"].get<double>());
    // Microseconds: the round trip through ISO 8601 is within half of one, plus the double's ulp.
    CHECK(std::abs(parse_iso8601_utc(fields[finished]) - e["finished_at"].get<double>()) <= 0.5e-6 + 1e-6);
    CHECK(std::abs(parse_iso8601_utc(fields[claimed]) - e["claimed_at"].get<double>()) <= 0.5e-6 + 1e-6);
  }
  CHECK(rows == 5);
}

TEST_CASE("report escapes names in SVG and markdown and writes whole files or none", "[honest][report][cli]") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("honest-report");
  const std::string study = make_study(dir);
  const auto out = dir / "report";
  REQUIRE(run("report" + study + " --out " + out.string()).exit_code == 0);
  const std::string svg = slurp(out / "pareto.svg");
  CHECK_THAT(svg, Contains(">S&lt;b&gt;&amp;&quot;q|`t: 5 evaluations"));
  CHECK_THAT(svg, !Contains("<b>"));
  const std::string md = slurp(out / "report.md");
  // The study name in a code span fenced longer than its backtick; the metric's underscores
  // escaped (they would start emphasis); configurations in code spans.
  CHECK_THAT(md, Contains("# Study ``S<b>&\"q|`t``\n"));
  CHECK_THAT(md, Contains("| id | \\_odd\\_name\\_.acc | size.params | configuration |"));
  CHECK(names_in(out) == std::vector<std::string>{"index.html", "pareto.svg", "report.md"});
  // index.html embeds the name in its data as JSON with '<' escaped: never as markup.
  CHECK_THAT(slurp(out / "index.html"), !Contains("S<b>"));

  // report.md cannot be replaced (a directory stands there): an error naming it, no temporary left.
  const auto blocked = dir / "blocked";
  std::filesystem::create_directories(blocked / "report.md" / "inside");
  const auto failed = run("report" + study + " --out " + blocked.string());
  CHECK(failed.exit_code == 1);
  CHECK_THAT(failed.err, Contains("report.md"));
  CHECK(names_in(blocked) == std::vector<std::string>{"index.html", "pareto.svg", "report.md"});
  CHECK(slurp(blocked / "pareto.svg") == svg);
}
