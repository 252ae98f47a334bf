// The interactive report (report --out DIR writes DIR/index.html): short configuration labels,
// metric directions, the ridge importance of cells, the single-matrix sensitivities and the
// embedded JSON on synthetic studies; then real sweeps of stories260K-hf reported and the page
// opened in headless Chromium, its DOM checked against `rankscope pareto` and the store.
#include <cmath>
#include <cstdio>
#include <random>
#include <regex>
#include <set>

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/report_html.hpp"
#include "core/io/model_config.hpp"
#include "core/space/config_string.hpp"
#include "db/results_db.hpp"
#include "test_support.hpp"

using namespace rankscope;
using namespace rankscope::cli;
namespace fs = std::filesystem;

namespace {

// The shapes of stories260K-hf (5 layers, hidden 64, MLP 172, 8 heads of 8, 4 KV heads), so the
// unit tests need nothing from ../shared.
constexpr const char* kTinyLlamaConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
  "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
  "vocab_size": 512, "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "hidden_act": "silu",
  "tie_word_embeddings": true
})";

fs::path tiny_model(const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << kTinyLlamaConfig;
  return dir;
}

std::string label_of(const std::string& config, const ModelConfig& model) {
  return short_label(parse_config(config, model), model);
}

MetricValue metric(const std::string& name, double value) {
  MetricValue m;
  m.name = name;
  m.value = value;
  m.stderr_ = 0.01 * value;
  m.n = 100;
  m.protocol = {{"task", name.substr(0, name.find('.'))}, {"shots", 0}};
  return m;
}

// A study in a fresh SQLite file whose model is `model_dir` (the report reads its config.json).
struct SyntheticStudy {
  ResultsDb db;
  int64_t study, model;
  SyntheticStudy(const fs::path& file, const fs::path& model_dir, const nlohmann::json& settings)
      : db(file), study(db.open_study("s", settings)), model(db.add_model({"h", model_dir.string(), "llama", 260032})) {}
  StudyInfo info() const { return *db.find_study("s"); }
};

// The cell index of the page's grid: layer * 7 + position in q k v o gate up down.
size_t cell(int64_t layer, MatrixKind kind) {
  return static_cast<size_t>(layer) * matrix_kinds(Arch::llama).size() + static_cast<size_t>(kind);
}

// The JSON embedded in a page.
nlohmann::json embedded(const std::string& html) {
  const std::string open = "<script type=\"application/json\" id=\"data\">";
  const size_t begin = html.find(open);
  REQUIRE(begin != std::string::npos);
  const size_t end = html.find("</script>", begin);
  REQUIRE(end != std::string::npos);
  return nlohmann::json::parse(html.substr(begin + open.size(), end - begin - open.size()));
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

bool have_chromium() { return std::system("command -v chromium >/dev/null 2>&1") == 0; }

// The DOM of `page` after its scripts ran, from headless Chromium (a profile of its own: ctest runs
// cases in parallel processes); with `screenshot`, also a PNG of it at 1400 x 2000.
// `flags` go to the DOM dump (e.g. a virtual time budget for the page's timers).
std::string chromium_dom(const fs::path& page, const fs::path& work, const fs::path& screenshot = {}, const std::string& flags = "") {
  const auto profile = work / "chromium-profile";
  const auto dom = work / "dom.html";
  // HOME and XDG directories of its own too: Chromium writes caches there despite --user-data-dir.
  const std::string home = "HOME='" + work.string() + "' XDG_CACHE_HOME='" + (work / "cache").string() + "' XDG_CONFIG_HOME='" +
                           (work / "config").string() + "' ";
  const std::string common = home + "timeout 180 chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage "
                             "--no-first-run --user-data-dir='" + profile.string() + "' ";
  const std::string url = "'file://" + fs::absolute(page).string() + "'";
  REQUIRE(std::system((common + flags + "--dump-dom " + url + " >'" + dom.string() + "' 2>/dev/null").c_str()) == 0);
  if (!screenshot.empty()) {
    fs::remove(screenshot);
    REQUIRE(std::system((common + "--hide-scrollbars --window-size=1400,2000 --screenshot='" + screenshot.string() + "' " + url +
                         " >/dev/null 2>&1").c_str()) == 0);
    CHECK(fs::file_size(screenshot) > 10000);
  }
  // The page's own script is in the DOM too: only the elements it made count.
  std::string text = test::slurp(dom);
  for (size_t at = text.find("<script"); at != std::string::npos; at = text.find("<script", at)) {
    const size_t end = text.find("</script>", at);
    REQUIRE(end != std::string::npos);
    text.erase(at, end + std::string("</script>").size() - at);
  }
  return text;
}

// The value of attribute `name` on the element with id `id` in a DOM dump ("" when absent).
std::string attribute(const std::string& dom, const std::string& id, const std::string& name) {
  const size_t at = dom.find("id=\"" + id + "\"");
  if (at == std::string::npos) return "";
  const size_t open = dom.rfind('<', at), close = dom.find('>', at);
  const std::string tag = dom.substr(open, close - open);
  std::smatch m;
  if (!std::regex_search(tag, m, std::regex(" " + name + "=\"([^\"]*)\""))) return "";
  return m[1];
}

// The HTML text of `s` as the page writes it.
std::string html_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

fs::path stories() { return test::shared_data("stories260K-hf"); }

}  // namespace

TEST_CASE("report: short labels are the canonical string when short, a summary per choice otherwise") {
  const auto dir = test::scratch_dir("report-labels");
  const ModelConfig model = read_model_config(tiny_model(dir / "model"));
  CHECK(label_of("", model) == "base model");
  CHECK(label_of("L1,3:all=8", model) == "L1,3:all=8");
  // A method shared by every cell is written once, at the end.
  CHECK(label_of("L*:mlp=50%@svd", model) == "L*:mlp=50% @svd");
  CHECK(label_of("L0-2:q,k=25%@whiten;L3,4:mlp=12.5%@whiten", model) == "L0-2:q,k=25%;L3-4:mlp=12.5% @whiten");
  // Mixed methods stay with their rules.
  CHECK(label_of("L0:q=50%@svd;L1:k=50%", model) == encode_config(parse_config("L0:q=50%@svd;L1:k=50%", model), model));
  // Too long for the canonical form: the cells, then per choice (highest rank first) the kinds.
  const std::string scattered = "L0:q,k=50%@svd;L1:q=50%@svd;L2:k=50%@svd;L3:q,gate,up,down=25%@svd;L4:v=75%@svd";
  REQUIRE(encode_config(parse_config(scattered, model), model).size() > 40);
  CHECK(label_of(scattered, model) == "9 cells: v 75%; q,k 50%; q,mlp 25% @svd");
  CHECK(label_of("L0:q,k,v,o,up=30%;L1:q,k,v,o,up=30%;L2:q=20%;L3:k=20%;L4:v=20%;L4:o=10%", model) ==
        "14 cells: attn,up 30%; q,k,v 20%; o 10%");
  // Every kind at a choice, or kinds too long: the number of cells at each choice.
  CHECK(label_of("L0:attn=50%;L1:mlp=50%;L2:attn=25%;L3:mlp=25%;L4:q=25%", model) == "15 cells: 7×50%; 8×25%");
  CHECK(label_of("L0:q,k,v=60%;L1:gate,up=60%;L2:k,v,o=40%;L3:up,down=40%;L4:q=60%", model) == "11 cells: 6×60%; 5×40%");
  // Many choices: those that do not fit are counted.
  const std::string many = "L0:q=90%;L1:k=80%;L2:v=70%;L3:o=60%;L4:gate=50%;L0:up=40%;L1:down=30%;L2:q=20%";
  const std::string label = label_of(many, model);
  CHECK(label == "8 cells: 1×90%; 1×80%; 1×70%; 1×60%; +4 more");
  // Every choice in the counts form, in up to 48 characters.
  CHECK(label_of("L0:q,k,v=75%;L1:gate,up=75%;L2:k,v,o=50%;L3:up,down=25%;L4:q,k,v,o,gate,up=12.5%", model) ==
        "16 cells: 5×75%; 3×50%; 2×25%; 6×12.5%");
  CHECK(label_of("L0:q,k,v=75%;L1:q,k,v=50%;L2:q,k,v=37.5%;L3:q,k,v=25%;L4:attn=12.5%", model) ==
        "16 cells: 3×75%; 3×50%; 3×37.5%; 3×25%; 4×12.5%");
}

TEST_CASE("report: default directions and the script-safe JSON") {
  CHECK(default_minimize("tinystories.ppl"));
  CHECK(default_minimize("size.params"));
  CHECK(default_minimize("fidelity.kl"));
  CHECK(!default_minimize("arc_easy.acc"));
  CHECK(!default_minimize("hellaswag.acc_norm"));
  CHECK(!default_minimize("mrpc.f1"));
  CHECK(!default_minimize("sst2.mcc"));
  CHECK(!default_minimize("size.reduction_pct"));
  const nlohmann::json j = {{"note", "</script><script>alert(1)</script><!--"}, {"x", 1.5}};
  const std::string text = json_for_script(j);
  CHECK(text.find('<') == std::string::npos);
  CHECK(nlohmann::json::parse(text) == j);
}

TEST_CASE("report: ridge importance finds the one cell that drives the metric") {
  std::mt19937_64 rng(7);
  const size_t n = 80, p = 35, driver = 12, constant = 20;
  std::uniform_int_distribution<int> level(0, 3);
  std::normal_distribution<double> noise(0.0, 0.01);
  std::vector<std::vector<double>> x(n, std::vector<double>(p, 0.0));
  std::vector<double> y(n);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < p; ++j) x[i][j] = j == constant ? 0.5 : 0.25 * level(rng);
    y[i] = 2.0 + 3.0 * x[i][driver] + noise(rng);
  }
  const RidgeImportance fit = ridge_importance(x, y);
  REQUIRE(fit.n == n);
  const size_t top = static_cast<size_t>(std::max_element(fit.importance.begin(), fit.importance.end()) - fit.importance.begin());
  CHECK(top == driver);
  CHECK(fit.importance[driver] > 0.8);
  CHECK(fit.effect[driver] > 0);
  CHECK(!fit.varied[constant]);
  CHECK(fit.importance[constant] == 0.0);
  double sum = 0;
  for (double v : fit.importance) sum += v;
  CHECK(sum == Approx(1.0));
  CHECK(fit.r2 > 0.95);  // below 1: the ridge penalty shrinks the coefficient
  CHECK(fit.r2_loo > 0.9);
  CHECK(fit.r2_loo <= fit.r2);

  // Two equal drivers share the importance; a NaN target drops its row.
  for (size_t i = 0; i < n; ++i) y[i] = x[i][3] + x[i][30];
  y[5] = NAN;
  const RidgeImportance two = ridge_importance(x, y);
  CHECK(two.n == n - 1);
  CHECK(two.importance[3] == Approx(two.importance[30]).epsilon(0.2));
  for (size_t j = 0; j < p; ++j) {
    if (j != 3 && j != 30) CHECK(two.importance[j] < 0.5 * std::min(two.importance[3], two.importance[30]));
  }

  // Too few rows: nothing estimated.
  const RidgeImportance none = ridge_importance({x[0], x[1]}, {1.0, 2.0});
  CHECK(none.n == 2);
  for (double v : none.importance) CHECK(v == 0.0);
}

TEST_CASE("report: a synthetic study where only L3 gate matters gives it the largest importance") {
  const auto dir = test::scratch_dir("report-importance");
  const auto model_dir = tiny_model(dir / "model");
  const ModelConfig model = read_model_config(model_dir);
  SyntheticStudy s(dir / "r.db", model_dir,
                   {{"model_hash", "h"}, {"objectives", "tinystories.ppl:min,size.params:min"}, {"space", {{"kind", "per-matrix"}}}});
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int> pick(0, 3);
  const std::vector<std::string> choices = {"", "75%", "50%", "25%"};
  std::vector<NewEvaluation> evals;
  std::set<std::string> seen;
  while (evals.size() < 60) {
    std::string config;
    double gate_removed = 0;
    for (int64_t layer = 0; layer < 5; ++layer) {
      for (MatrixKind kind : matrix_kinds(Arch::llama)) {
        const int c = pick(rng);
        if (c == 0) continue;
        config += fmt::format("{}L{}:{}={}@svd", config.empty() ? "" : ";", layer, matrix_kind_name(kind), choices[c]);
        if (layer == 3 && kind == MatrixKind::gate) gate_removed = 0.25 * c;
      }
    }
    const std::string canonical = encode_config(parse_config(config, model), model);
    if (!seen.insert(canonical).second) continue;
    NewEvaluation e;
    e.config = canonical;
    e.metrics = {metric("tinystories.ppl", 5.0 * std::exp(2.0 * gate_removed)), metric("size.params", 260032 - 1000.0 * seen.size())};
    evals.push_back(e);
  }
  REQUIRE(s.db.add_evaluations(s.study, s.model, evals) == 60);
  const nlohmann::json data = report_data(s.db, s.info(), {});
  const auto& heat = data["heatmap"];
  REQUIRE(heat["mode"] == "importance");
  CHECK(heat["layers"] == 5);
  CHECK(heat["matrices"].size() == 7);
  const auto& ppl = heat["by_metric"]["tinystories.ppl"];
  CHECK(ppl["n"] == 60);
  CHECK(ppl["log"] == true);
  const std::vector<double> importance = ppl["importance"];
  const size_t top = static_cast<size_t>(std::max_element(importance.begin(), importance.end()) - importance.begin());
  CHECK(top == cell(3, MatrixKind::gate));
  CHECK(importance[cell(3, MatrixKind::gate)] > 0.5);
  // The page's data: every evaluation, labelled, with the study's objectives as its default pair.
  CHECK(data["evals"].size() == 60);
  CHECK(data["objectives"][0]["metric"] == "tinystories.ppl");
  CHECK(data["metrics"].size() == 2);
  for (const auto& e : data["evals"]) CHECK(e["label"].get<std::string>().size() <= 48);
  // Protocols: the shared part once per metric, nothing left per evaluation.
  CHECK(data["protocols"]["shared"][1]["task"] == "tinystories");
  CHECK(data["protocols"]["own"].size() == 1);
}

TEST_CASE("report: a single-space study gives the change of each matrix alone from the base model") {
  const auto dir = test::scratch_dir("report-single");
  const auto model_dir = tiny_model(dir / "model");
  SyntheticStudy s(dir / "r.db", model_dir,
                   {{"model_hash", "h"}, {"objectives", "tinystories.ppl:min,size.params:min"}, {"space", {{"kind", "single"}}}});
  const auto eval = [](const std::string& config, double ppl, double params) {
    NewEvaluation e;
    e.config = config;
    e.metrics = {metric("tinystories.ppl", ppl), metric("size.params", params), metric("arc_easy.acc", 0.3)};
    return e;
  };
  REQUIRE(s.db.add_evaluations(s.study, s.model,
                               {eval("", 5.0, 260032), eval("L2:q=50%@svd", 7.0, 259000), eval("L0:down=50%@svd", 5.5, 250000),
                                eval("L2:q=25%@svd", 9.0, 258000)}) == 4);
  const nlohmann::json heat = report_data(s.db, s.info(), {})["heatmap"];
  REQUIRE(heat["mode"] == "single");
  CHECK(heat["choices"] == nlohmann::json({"50%@svd", "25%@svd"}));
  const auto& ppl = heat["by_metric"]["tinystories.ppl"];
  CHECK(ppl["base"] == 5.0);
  CHECK(ppl["delta"][0][cell(2, MatrixKind::q)].get<double>() == Approx(2.0));
  CHECK(ppl["delta"][0][cell(0, MatrixKind::down)].get<double>() == Approx(0.5));
  CHECK(ppl["delta"][1][cell(2, MatrixKind::q)].get<double>() == Approx(4.0));
  CHECK(ppl["delta"][1][cell(0, MatrixKind::down)].is_null());
  CHECK(ppl["delta"][0][cell(4, MatrixKind::v)].is_null());
  CHECK(heat["by_metric"]["arc_easy.acc"]["delta"][0][cell(2, MatrixKind::q)].get<double>() == Approx(0.0));
}

TEST_CASE("report: no evaluations, one metric or no model still give a valid page that says so") {
  const auto dir = test::scratch_dir("report-empty");
  const auto model_dir = tiny_model(dir / "model");
  {
    SyntheticStudy s(dir / "empty.db", model_dir,
                     {{"model_hash", "h"}, {"objectives", "tinystories.ppl:min,size.params:min"}, {"note", "</script><b>x</b>"}});
    const std::string html = report_html(s.db, s.info(), {});
    CHECK(count(html, "</script>") == 2);  // the data and the program, nothing in the data closes a tag
    const nlohmann::json data = embedded(html);
    CHECK(data["evals"].empty());
    CHECK(data["metrics"].empty());
    CHECK(data["settings"]["note"] == "</script><b>x</b>");
    std::ofstream(dir / "empty.html") << html;
  }
  {
    SyntheticStudy s(dir / "one.db", model_dir, {{"model_hash", "h"}, {"objectives", "tinystories.ppl:min"}});
    NewEvaluation e;
    e.config = "L1:q=50%";
    e.metrics = {metric("tinystories.ppl", 6.0)};
    REQUIRE(s.db.add_evaluations(s.study, s.model, {e}) == 1);
    const nlohmann::json data = report_data(s.db, s.info(), {});
    CHECK(data["metrics"].size() == 1);
    CHECK(data["evals"][0]["label"] == "L1:q=50%");
    CHECK(data["heatmap"]["by_metric"].empty());  // one evaluation: nothing to regress
    std::ofstream(dir / "one.html") << report_html(s.db, s.info(), {});
  }
  {
    SyntheticStudy s(dir / "lost.db", dir / "no-such-model", {{"model_hash", "h"}, {"objectives", "a.ppl:min,b.params:min"}});
    NewEvaluation e;
    e.config = "L1:q=50%";
    e.metrics = {metric("a.ppl", 6.0), metric("b.params", 7.0)};
    REQUIRE(s.db.add_evaluations(s.study, s.model, {e}) == 1);
    const nlohmann::json data = report_data(s.db, s.info(), {});
    CHECK(data["heatmap"]["mode"] == "none");
    CHECK_THAT(data["heatmap"]["reason"].get<std::string>(), Catch::Matchers::Contains("no-such-model"));
    CHECK(data["evals"][0]["label"] == "L1:q=50%");  // the canonical string stands in
    std::ofstream(dir / "lost.html") << report_html(s.db, s.info(), {});
  }
  if (!have_chromium()) {
    WARN("SKIPPED: chromium not installed (the pages were checked without a browser only)");
    return;
  }
  const std::string empty = chromium_dom(dir / "empty.html", dir);
  CHECK(attribute(empty, "plot", "data-points") == "0");
  CHECK_THAT(empty, Catch::Matchers::Contains("data-ready=\"1\"") && Catch::Matchers::Contains("No data: the plot needs two numeric metrics") &&
                        Catch::Matchers::Contains("No data: the study has no evaluations yet"));
  CHECK(count(empty, "class=\"eval-row") == 0);
  const std::string one = chromium_dom(dir / "one.html", dir);
  CHECK_THAT(one, Catch::Matchers::Contains("data-ready=\"1\"") && Catch::Matchers::Contains("No data: the plot needs two numeric metrics"));
  CHECK(count(one, "class=\"eval-row") == 1);
  const std::string lost = chromium_dom(dir / "lost.html", dir);
  CHECK_THAT(lost, Catch::Matchers::Contains("data-ready=\"1\"") && Catch::Matchers::Contains("No data: the model"));
  CHECK(attribute(lost, "plot", "data-points") == "1");
  CHECK(attribute(lost, "plot", "data-front") == "1");
}

TEST_CASE("report: index.html of a real sweep, opened in headless Chromium, shows the front pareto computes") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("report-sweep");
  const std::string db = (dir / "r.db").string();
  const std::string sweep = "sweep --model '" + stories().string() + "' --db '" + db + "' --study rnd --strategy evolutionary " +
                            "--population 8 --budget 12 --include-base --space per-matrix --choices dense,50%,25% --method svd " +
                            "--tasks tinystories,size --limit 3 --objectives tinystories.ppl:min,size.params:min --seed 5 " +
                            "--data-dir '" + test::shared_data("").string() + "'";
  const auto swept = test::run_cli(sweep);
  INFO(swept.out << swept.err);
  REQUIRE(swept.exit_code == 0);
  const auto report = test::run_cli("report --db '" + db + "' --study rnd --out '" + (dir / "report").string() + "'");
  INFO(report.out << report.err);
  REQUIRE(report.exit_code == 0);
  CHECK_THAT(report.out, Catch::Matchers::Contains("index.html"));
  const fs::path page = dir / "report" / "index.html";
  REQUIRE(fs::exists(page));
  const std::string html = test::slurp(page);
  CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // the only URL: the SVG namespace
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("<script src") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);

  const auto pareto = nlohmann::json::parse(
      test::run_cli("pareto --db '" + db + "' --study rnd --objectives tinystories.ppl:min,size.params:min --format json").out);
  ResultsDb rdb(db);
  const StudyInfo study = *rdb.find_study("rnd");
  const ModelConfig model = read_model_config(stories());
  std::vector<std::string> labels;
  rdb.for_each_evaluation(study.id, [&](const EvaluationRecord& r) { labels.push_back(short_label(parse_config(r.config, model), model)); });
  REQUIRE(labels.size() == 12);

  if (!have_chromium()) {
    WARN("SKIPPED: chromium not installed");
    return;
  }
  const fs::path screenshot = fs::path(RANKSCOPE_BINARY_DIR) / "report-screenshot.png";
  const std::string dom = chromium_dom(page, dir, screenshot);
  REQUIRE_THAT(dom, Catch::Matchers::Contains("data-ready=\"1\""));
  const size_t points = count(dom, "class=\"pt\"") + count(dom, "class=\"pt front\"");
  CHECK(points == pareto["evaluations"].get<size_t>());
  CHECK(attribute(dom, "plot", "data-points") == std::to_string(points));
  CHECK(count(dom, "class=\"pt front\"") == pareto["front"].size());
  CHECK(attribute(dom, "plot", "data-front") == std::to_string(pareto["front"].size()));
  CHECK(count(dom, "class=\"eval-row") == labels.size());
  CHECK(attribute(dom, "eval-table", "data-rows") == std::to_string(labels.size()));
  for (const auto& label : labels) CHECK_THAT(dom, Catch::Matchers::Contains(">" + html_text(label) + "</td>"));
  CHECK(attribute(dom, "count-done", "data-count") == std::to_string(study.counts.done));
  // The heat map: one cell per (layer, matrix), importance for a per-matrix study.
  CHECK(attribute(dom, "heatmap-table", "data-mode") == "importance");
  CHECK(count(dom, "data-layer=") == 5 * 7);
  CHECK_THAT(dom, Catch::Matchers::Contains("Ridge regression"));

  // The page reacts as pareto computes: a script appended to a copy drives the controls (perplexity
  // maximised, a --where filter, a sort) and writes what the page shows into the DOM.
  const std::string driver = R"(<script>
setTimeout(() => {
  const $ = (id) => document.getElementById(id), out = {};
  $('y-dir').value = 'max';
  $('y-dir').dispatchEvent(new Event('change'));
  out.front_ymax = $('plot').dataset.front;
  $('y-dir').value = 'min';
  $('y-dir').dispatchEvent(new Event('change'));
  const ppl = () => [...document.querySelectorAll('#eval-table th')].find((t) => t.textContent.startsWith('tinystories.ppl'));
  ppl().click();
  ppl().click();
  out.sorted_first = document.querySelector('#eval-table tbody tr.eval-row').dataset.id;
  $('filter-where').value = 'size.params<250000';
  $('filter-where').dispatchEvent(new Event('input'));
  setTimeout(() => {
    out.where_rows = $('eval-table').dataset.rows;
    out.where_front = $('plot').dataset.front;
    const pre = document.createElement('pre');
    pre.id = 'driven';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 500);
}, 100);
</script>)";
  std::string driven = html;
  driven.insert(driven.rfind("</body>"), driver);
  std::ofstream(dir / "driven.html") << driven;
  const std::string after = chromium_dom(dir / "driven.html", dir, {}, "--virtual-time-budget=5000 ");
  const size_t at = after.find("<pre id=\"driven\">");
  REQUIRE(at != std::string::npos);
  const auto shown = nlohmann::json::parse(after.substr(at + 17, after.find("</pre>", at) - at - 17));
  const auto front_of = [&](const std::string& args) {
    return nlohmann::json::parse(test::run_cli("pareto --db '" + db + "' --study rnd --format json " + args).out);
  };
  CHECK(shown["front_ymax"] == std::to_string(front_of("--objectives tinystories.ppl:max,size.params:min")["front"].size()));
  const auto where = front_of("--objectives tinystories.ppl:min,size.params:min --where 'size.params<250000'");
  CHECK(shown["where_front"] == std::to_string(where["front"].size()));
  CHECK(shown["where_rows"] == std::to_string(where["evaluations"].get<size_t>()));
  // Sorted by perplexity, largest first (the second click): the worst evaluation heads the table.
  const auto rows = rdb.metric_rows(study.id, {"tinystories.ppl"});
  const size_t worst = static_cast<size_t>(std::max_element(rows.rows.begin(), rows.rows.end()) - rows.rows.begin());
  CHECK(shown["sorted_first"] == std::to_string(rows.evaluation_ids[worst]));
}

TEST_CASE("report: a single-space sweep's heat map shows each matrix's measured change") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("report-single-sweep");
  const std::string db = (dir / "r.db").string();
  const auto swept = test::run_cli("sweep --model '" + stories().string() + "' --db '" + db + "' --study one --strategy exhaustive " +
                                   "--budget 8 --space single --choices dense,50% --method svd --tasks tinystories,size --limit 3 " +
                                   "--objectives tinystories.ppl:min,size.params:min --data-dir '" + test::shared_data("").string() + "'");
  INFO(swept.out << swept.err);
  REQUIRE(swept.exit_code == 0);
  REQUIRE(test::run_cli("report --db '" + db + "' --study one --out '" + (dir / "report").string() + "'").exit_code == 0);
  // The expected changes, from the store.
  ResultsDb rdb(db);
  const ModelConfig model = read_model_config(stories());
  const auto rows = rdb.metric_rows(rdb.find_study("one")->id, {"tinystories.ppl"});
  double base = NAN;
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    if (rows.configs[i].empty()) base = rows.rows[i][0];
  }
  REQUIRE(std::isfinite(base));
  const nlohmann::json data = embedded(test::slurp(dir / "report" / "index.html"));
  REQUIRE(data["heatmap"]["mode"] == "single");
  size_t measured = 0;
  for (size_t i = 0; i < rows.rows.size(); ++i) {
    if (rows.configs[i].empty()) continue;
    const Config c = parse_config(rows.configs[i], model);
    REQUIRE(c.cells.size() == 1);
    const auto& [where, choice] = *c.cells.begin();
    const double delta = data["heatmap"]["by_metric"]["tinystories.ppl"]["delta"][0][cell(where.first, where.second)];
    CHECK(delta == Approx(rows.rows[i][0] - base));
    ++measured;
  }
  CHECK(measured == 7);
  if (!have_chromium()) {
    WARN("SKIPPED: chromium not installed");
    return;
  }
  const std::string dom = chromium_dom(dir / "report" / "index.html", dir, fs::path(RANKSCOPE_BINARY_DIR) / "report-single-screenshot.png");
  REQUIRE_THAT(dom, Catch::Matchers::Contains("data-ready=\"1\""));
  CHECK(attribute(dom, "heatmap-table", "data-mode") == "single");
  CHECK(count(dom, "data-eval=") == 7);  // the measured cells link to their evaluations
  CHECK_THAT(dom, Catch::Matchers::Contains("Measured sensitivity"));
}

TEST_CASE("report --model: the heat map finds the model where the recorded relative path does not resolve") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("report-model");
  const std::string db = (dir / "r.db").string();
  // The sweep runs from the repository root and records the model as typed there: ../shared/...
  const auto swept = test::run_cli("sweep --model ../shared/data/stories260K-hf --db '" + db + "' --study m --strategy random "
                                   "--budget 3 --space per-matrix --choices dense,50% --method svd --tasks size "
                                   "--objectives size.params:min,size.flops_per_token:min --seed 2");
  INFO(swept.out << swept.err);
  REQUIRE(swept.exit_code == 0);
  // report from another directory: the relative path no longer resolves.
  const std::string exe = RANKSCOPE_EXE;
  auto report = [&](const std::string& extra, const fs::path& out) {
    const std::string cmd = "cd '" + dir.string() + "' && '" + exe + "' report --db '" + db + "' --study m --out '" +
                            out.string() + "'" + extra + " > /dev/null 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
    return test::slurp(out / "index.html");
  };
  const std::string without = report("", dir / "without");
  CHECK(without.find("\"mode\":\"none\"") != std::string::npos);
  CHECK(without.find("could not be read") != std::string::npos);
  const std::string with = report(" --model '" + stories().string() + "'", dir / "with");
  CHECK(with.find("\"mode\":\"importance\"") != std::string::npos);
  // A --model that does not read is the user's error, not a page without a heat map.
  const auto typo = test::run_cli("report --db '" + db + "' --study m --out '" + (dir / "typo").string() + "' --model /no/such/model");
  CHECK(typo.exit_code == 1);
  CHECK_THAT(typo.err, Catch::Matchers::Contains("/no/such/model"));
  CHECK_FALSE(fs::exists(dir / "typo" / "index.html"));
}
