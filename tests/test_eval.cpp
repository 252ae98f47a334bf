// The multiple-choice / classification harness against brute force and golden numbers, and the
// eval command end to end.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/models/bert.hpp"
#include "core/models/llama.hpp"
#include "core/io/model.hpp"
#include "evaluators/evaluator.hpp"
#include "evaluators/harness.hpp"
#include "evaluators/lm_eval_output.hpp"
#include "evaluators/loglikelihood.hpp"
#include "evaluators/tasks.hpp"
#include "fixtures.hpp"
#include "test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

std::filesystem::path stories() { return test::shared_data("stories260K-hf"); }

// log p(cont[i] | context + cont[:i]) summed, each token from its own forward pass of the whole
// prefix (no batching, no cache), left-truncated to the model's window as lm-eval does.
double brute_force_loglikelihood(const Model& model, const std::vector<TokenId>& context, const std::vector<TokenId>& cont) {
  std::vector<TokenId> whole = context;
  whole.insert(whole.end(), cont.begin(), cont.end());
  const auto max_len = static_cast<size_t>(model.config.n_ctx_train);
  double sum = 0.0;
  for (size_t i = 0; i < cont.size(); ++i) {
    const size_t end = context.size() + i;  // prefix whole[0:end] predicts whole[end]
    const size_t begin = whole.size() > max_len + 1 ? whole.size() - (max_len + 1) : 0;
    std::vector<std::vector<TokenId>> seq = {std::vector<TokenId>(whole.begin() + static_cast<long>(begin),
                                                                  whole.begin() + static_cast<long>(end))};
    const Mat logits = llama_forward(model, seq, {}, {.last_logits_only = true});
    const auto row = logits.row(0);
    double max = row.maxCoeff();
    double z = 0.0;
    for (int64_t v = 0; v < row.size(); ++v) z += std::exp(static_cast<double>(row[v]) - max);
    sum += static_cast<double>(row[whole[end]]) - max - std::log(z);
  }
  return sum;
}

int run_cli(const std::string& args, std::string* out = nullptr) {
  const std::string cmd = std::string(RANKSCOPE_EXE) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) text.append(buf, n);
  const int status = pclose(pipe);
  if (out) *out = text;
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("ARC-Easy: per-choice log-likelihoods equal a token-by-token brute force, with and without context reuse") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_easy.jsonl"));
  const Model model = load_model(stories());
  const Task task = load_task("arc_easy", {.data_dir = test::shared_data(""), .limit = 20});
  REQUIRE(task.docs.size() == 20);
  const auto& tok = model.require_tokenizer();
  std::vector<ChoiceGroup> groups;
  for (const auto& doc : task.docs) {
    ChoiceGroup g;
    for (const auto& choice : doc.continuations) {
      auto pair = encode_pair(tok, doc.contexts[0], " " + choice, {}, 2);
      g.context = pair.context;
      g.continuations.push_back(pair.continuation);
    }
    groups.push_back(g);
  }
  const auto reused = loglikelihoods(model, groups, {.reuse_context = true, .groups_per_batch = 7});
  const auto scratch = loglikelihoods(model, groups, {.reuse_context = false});
  // Sorted by context length and batched by a token budget (the GPU's batching): same numbers.
  const auto sorted = loglikelihoods(model, groups, {.reuse_context = true, .groups_per_batch = 1 << 20, .token_budget = 150});
  int multi_token = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t k = 0; k < groups[g].continuations.size(); ++k) {
      const double expected = brute_force_loglikelihood(model, groups[g].context, groups[g].continuations[k]);
      CHECK(reused[g][k].logprob == Approx(expected).margin(1e-4));
      CHECK(scratch[g][k].logprob == Approx(expected).margin(1e-4));
      CHECK(sorted[g][k].logprob == Approx(expected).margin(1e-4));
      CHECK(sorted[g][k].greedy == reused[g][k].greedy);
      CHECK(reused[g][k].n_tokens == static_cast<int64_t>(groups[g].continuations[k].size()));
      CHECK_FALSE(reused[g][k].truncated);
      multi_token += groups[g].continuations[k].size() > 1;
    }
  }
  CHECK(multi_token > 40);  // the cache really served continuations of several tokens

  // acc and acc_norm from those log-likelihoods: acc_norm divides by characters, not tokens.
  const TaskReport report = evaluate_task(model, task, {});
  REQUIRE(report.metrics.size() == 2);
  // evaluate_task batches the questions otherwise than `reused` (7 per pass), so its
  // log-likelihoods differ in their last bits (test::fp32_forward_rel_tol): a question whose best
  // choice leads by less than that bound may go either way (on Haswell one of these 20 does), so
  // it counts as a possible hit, not a certain one. Every other question must agree.
  const double rel_tol = test::fp32_forward_rel_tol(model.config, model.config.n_ctx_train);
  double acc_min = 0.0, acc_max = 0.0, norm_min = 0.0, norm_max = 0.0, acc_norm_tokens = 0.0;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto gold = static_cast<size_t>(task.docs[g].gold[0]);
    const auto raw = [&](size_t i) { return reused[g][i].logprob; };
    const auto norm = [&](size_t i) { return reused[g][i].logprob / static_cast<double>(task.docs[g].continuations[i].size()); };
    const auto per_tok = [&](size_t i) { return reused[g][i].logprob / static_cast<double>(reused[g][i].n_tokens); };
    // Whether gold is certainly / possibly the argmax of `score` (ties to the lowest index).
    const auto hit = [&](const auto& score, double& certain, double& possible) {
      bool surely = true, maybe = true;
      for (size_t k = 0; k < reused[g].size(); ++k) {
        if (k == gold) continue;
        const double margin = rel_tol * (std::abs(score(gold)) + std::abs(score(k)));
        const bool k_wins = k < gold ? score(k) >= score(gold) : score(k) > score(gold);
        surely = surely && !k_wins && std::abs(score(k) - score(gold)) > margin;
        maybe = maybe && !(k_wins && std::abs(score(k) - score(gold)) > margin);
      }
      certain += surely;
      possible += maybe;
    };
    hit(raw, acc_min, acc_max);
    hit(norm, norm_min, norm_max);
    size_t best_tok = 0;
    for (size_t k = 1; k < reused[g].size(); ++k) {
      if (per_tok(k) > per_tok(best_tok)) best_tok = k;
    }
    acc_norm_tokens += best_tok == gold;
  }
  CHECK(report.metrics[0].name() == "arc_easy.acc");
  CHECK(report.metrics[0].value >= acc_min / 20.0 - 1e-12);
  CHECK(report.metrics[0].value <= acc_max / 20.0 + 1e-12);
  CHECK(acc_max - acc_min <= 2.0);  // near-ties are rare: the check still pins the accuracy
  CHECK(report.metrics[1].name() == "arc_easy.acc_norm");
  CHECK(report.metrics[1].value >= norm_min / 20.0 - 1e-12);
  CHECK(report.metrics[1].value <= norm_max / 20.0 + 1e-12);
  CHECK(norm_max - norm_min <= 2.0);
  CHECK(report.metrics[0].n == 20);
  CHECK(report.protocol["num_fewshot"] == 0);
  CHECK(report.protocol["bos"] == false);
  INFO("acc_norm by tokens would be " << acc_norm_tokens / 20.0);
}

TEST_CASE("acc_norm counts Unicode characters, not bytes or tokens") {
  RS_REQUIRE_SHARED(stories());
  const Model model = load_model(stories());
  // Two choices; the second is 3 characters in 6 bytes ("ééé").
  Task task;
  task.name = "unicode";
  task.metrics = {"acc", "acc_norm"};
  Doc doc;
  doc.contexts = {"Once upon a time"};
  doc.continuations = {"the", "ééé"};
  doc.gold = {1};
  task.docs = {doc};
  const auto& tok = model.require_tokenizer();
  std::vector<ChoiceGroup> groups(1);
  for (const auto& c : doc.continuations) {
    auto p = encode_pair(tok, doc.contexts[0], " " + c, {}, 2);
    groups[0].context = p.context;
    groups[0].continuations.push_back(p.continuation);
  }
  const auto ll = loglikelihoods(model, groups);
  const bool second_by_chars = ll[0][1].logprob / 3.0 > ll[0][0].logprob / 3.0;
  const auto report = evaluate_task(model, task, {});
  CHECK(report.metrics[1].value == (second_by_chars ? 1.0 : 0.0));
}

TEST_CASE("a context longer than the window is truncated from the left as lm-eval does, and counted") {
  RS_REQUIRE_SHARED(stories());
  const Model model = load_model(stories());
  std::string long_context;
  for (int i = 0; i < 200; ++i) long_context += "Once upon a time there was a girl. ";
  Task task;
  task.name = "long";
  task.metrics = {"acc"};
  Doc doc;
  doc.contexts = {long_context + "She liked to"};
  doc.continuations = {"play", "run away"};
  doc.gold = {0};
  task.docs = {doc};
  const auto& tok = model.require_tokenizer();
  const auto pair = encode_pair(tok, doc.contexts[0], " run away", {}, 2);
  REQUIRE(static_cast<int64_t>(pair.context.size()) > model.config.n_ctx_train);
  const auto ll = loglikelihoods(model, std::vector<ChoiceGroup>{{pair.context, {pair.continuation}}});
  CHECK(ll[0][0].truncated);
  CHECK(ll[0][0].logprob == Approx(brute_force_loglikelihood(model, pair.context, pair.continuation)).margin(1e-4));
  const auto report = evaluate_task(model, task, {});
  CHECK(report.protocol["truncated"] == 1);
  CHECK(report.metrics[0].status == "ok");
}

TEST_CASE("a model producing NaN reports status nan, not a number") {
  RS_REQUIRE_SHARED(stories());
  const auto dir = test::scratch_dir("eval-nan");
  test::copy_model(stories(), dir / "m", {.edit_tensors = [](auto& tensors) {
                                            for (auto& t : tensors) {
                                              if (t.name != "model.layers.2.mlp.down_proj.weight") continue;
                                              Mat m = Mat::Constant(t.tensor.shape[0], t.tensor.shape[1], NAN);
                                              t.tensor = Tensor::from_matrix(m);
                                            }
                                          }});
  const Model model = load_model(dir / "m");
  Task task;
  task.name = "nan";
  task.metrics = {"acc", "acc_norm"};
  Doc doc;
  doc.contexts = {"Once upon a time"};
  doc.continuations = {"there", "a"};
  doc.gold = {0};
  task.docs = {doc, doc};
  const auto report = evaluate_task(model, task, {});
  REQUIRE(report.metrics.size() == 2);
  for (const auto& m : report.metrics) {
    CHECK(m.status == "nan");
    CHECK(std::isnan(m.value));
  }
  CHECK(report.protocol["nan_docs"] == 2);
}

TEST_CASE("bert-tiny-sst2: SST-2 dev accuracy equals the golden 687/872 exactly") {
  RS_REQUIRE_SHARED(test::shared_data("bert-tiny-sst2"));
  RS_REQUIRE_SHARED(test::shared_data("glue-sst2/dev.tsv"));
  const Model model = load_model(test::shared_data("bert-tiny-sst2"));
  const Task task = load_task("sst2", {.data_dir = test::shared_data("")});
  REQUIRE(task.docs.size() == 872);
  const auto report = evaluate_task(model, task, {});
  REQUIRE(report.metrics[0].name() == "sst2.acc");
  CHECK(report.metrics[0].value == 687.0 / 872.0);
  CHECK(report.metrics[0].n == 872);
  CHECK(report.protocol["model_kind"] == "sequence-classifier");
}

TEST_CASE("few-shot prompts: seeded, never the document itself, MMLU takes the first k of dev") {
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_easy.jsonl"));
  const Task task = load_task("arc_easy", {.data_dir = test::shared_data(""), .limit = 5});
  EvalSettings s{.num_fewshot = 3, .seed = 7};
  const std::string a = render_context(task, task.docs[0], 0, s);
  CHECK(a == render_context(task, task.docs[0], 0, s));
  CHECK(a != render_context(task, task.docs[0], 0, {.num_fewshot = 3, .seed = 8}));
  CHECK(a.ends_with("\n\n" + task.docs[0].contexts[0]));
  // Three examples, none of them the document itself: its question appears exactly once.
  size_t count = 0;
  for (size_t p = a.find(task.docs[0].contexts[0]); p != std::string::npos; p = a.find(task.docs[0].contexts[0], p + 1)) ++count;
  CHECK(count == 1);
  size_t answers = 0;
  for (size_t p = a.find("\nAnswer: "); p != std::string::npos; p = a.find("\nAnswer: ", p + 1)) ++answers;
  CHECK(answers == 3);

  RS_REQUIRE_SHARED(test::shared_data("mmlu/dev/anatomy_dev.csv"));
  const Task mmlu = load_task("mmlu", {.data_dir = test::shared_data(""), .limit = 1});
  const Doc* anatomy = nullptr;
  for (const auto& d : mmlu.docs) {
    if (d.subject == "anatomy") anatomy = &d;
  }
  REQUIRE(anatomy != nullptr);
  const std::string prompt = render_context(mmlu, *anatomy, 0, {.num_fewshot = 2});
  CHECK(prompt.starts_with("The following are multiple choice questions (with answers) about anatomy.\n\n"));
  const Doc* first_dev = nullptr;
  for (const auto& d : mmlu.fewshot_pool) {
    if (d.subject == "anatomy") {
      first_dev = &d;
      break;
    }
  }
  REQUIRE(first_dev != nullptr);
  CHECK(prompt.find(first_dev->contexts[0] + " " + first_dev->continuations[static_cast<size_t>(first_dev->gold[0])] +
                    "\n\n") != std::string::npos);
}

TEST_CASE("rankscope eval: table and JSON with protocol and model hash and canonical config") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_easy.jsonl"));
  const auto cache = test::scratch_dir("eval-cli");
  std::string out;
  const std::string common = stories().string() + " --data-dir " + test::shared_data("").string() +
                             " --cache-dir " + cache.string();
  REQUIRE(run_cli("eval " + common + " --tasks arc_easy,size --limit 10 --config 'L0:q,k=4' --json", &out) == 0);
  const auto j = nlohmann::json::parse(out);
  CHECK(j["config"] == "L0:q,k=4");
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& r : j["results"]) by_name[r["name"]] = r;
  REQUIRE(by_name.count("arc_easy.acc"));
  REQUIRE(by_name.count("arc_easy.acc_norm"));
  REQUIRE(by_name.count("size.params"));
  REQUIRE(by_name.count("size.reduction_pct"));
  const auto& acc = by_name["arc_easy.acc"];
  CHECK(acc["n"] == 10);
  CHECK(acc["status"] == "ok");
  CHECK(acc["model_hash"].get<std::string>().size() == 32);
  CHECK(acc["config"] == "L0:q,k=4");
  CHECK(acc["protocol"]["num_fewshot"] == 0);
  CHECK(acc["protocol"]["seed"] == 0);
  CHECK(acc["protocol"]["bos"] == false);
  CHECK(acc["protocol"]["limit"] == 10);
  // q [64x64] and k [32x64] at rank 4: 4096 + 2048 dense -> 4*(64+4+64) + 4*(64+4+32) tucker.
  CHECK(by_name["size.params"]["value"] == 260032 - (4096 + 2048) + 4 * (64 + 4 + 64) + 4 * (64 + 4 + 32));

  // Latency: a median of timed passes, consistent units; rolling perplexity: --limit counts documents.
  REQUIRE(run_cli("eval " + common + " --tasks latency,wikitext2 --ppl-protocol rolling --limit 2 --latency-reps 3 --json", &out) == 0);
  INFO(out);
  by_name.clear();
  const auto timed = nlohmann::json::parse(out);
  for (const auto& r : timed["results"]) by_name[r["name"]] = r;
  const double ms_per_batch = by_name["latency.ms_per_batch"]["value"];
  const double ms_per_token = by_name["latency.ms_per_token"]["value"];
  const double tokens_per_s = by_name["latency.tokens_per_s"]["value"];
  CHECK(ms_per_batch > 0);
  CHECK(ms_per_token * 128 == Approx(ms_per_batch));
  CHECK(tokens_per_s * ms_per_token == Approx(1000.0));
  CHECK(by_name["latency.ms_per_batch"]["protocol"]["reps"] == 3);
  CHECK(by_name["wikitext2.ppl"]["protocol"]["documents"] == 2);
  CHECK(by_name["wikitext2.word_perplexity"]["status"] == "ok");

  REQUIRE(run_cli("eval " + common + " --tasks arc_easy --limit 3", &out) == 0);
  CHECK_THAT(out, Contains("arc_easy.acc_norm") && Contains("0-shot"));

  // An unknown task name and a missing --tasks are usage errors (exit 2), with the usage line.
  CHECK(run_cli("eval " + common + " --tasks no_such_task", &out) == 2);
  CHECK_THAT(out, Contains("no_such_task") && Contains("usage"));
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK(run_cli("eval " + common, &out) == 2);
  CHECK_THAT(out, Contains("--tasks"));
}

TEST_CASE("Evaluator::metric_names lists exactly the metrics a run reports, before it runs") {
  RS_REQUIRE_SHARED(stories());
  const Model model = load_model(stories());
  EvalRequest request;
  request.tasks = {"tinystories", "size", "fidelity", "arc_easy", "latency"};
  request.load.data_dir = test::shared_data("");
  request.load.limit = 2;
  request.latency.reps = 1;
  request.latency.tokens = 8;
  const Evaluator evaluator(model, request);
  std::vector<std::string> produced;
  for (const auto& report : evaluator.run(model, Config{}))
    for (const auto& m : report.metrics) produced.push_back(m.name());
  std::vector<std::string> promised = evaluator.metric_names();
  std::sort(produced.begin(), produced.end());
  std::sort(promised.begin(), promised.end());
  CHECK(produced == promised);
  CHECK(std::count(promised.begin(), promised.end(), "arc_easy.acc_norm") == 1);
  CHECK(std::count(promised.begin(), promised.end(), "size.params") == 1);
}

namespace {

// `rankscope eval MODEL --data-dir ../shared/data ARGS --json` (stdout and stderr apart): every
// result by name.
std::map<std::string, nlohmann::json> eval_results(const std::string& args) {
  const auto r = test::run_cli("eval " + stories().string() + " --data-dir " + test::shared_data("").string() + " " + args + " --json");
  INFO(args << "\n" << r.err);
  REQUIRE(r.exit_code == 0);
  std::map<std::string, nlohmann::json> by_name;
  const auto j = nlohmann::json::parse(r.out);
  for (const auto& m : j["results"]) by_name[m["name"].get<std::string>()] = m;
  return by_name;
}

// The results of `task` in `a` and `b` agree exactly: the same metrics, values, errors and counts.
void check_same_task(const std::map<std::string, nlohmann::json>& a, const std::map<std::string, nlohmann::json>& b,
                     const std::string& task) {
  int compared = 0;
  for (const auto& [name, m] : a) {
    if (m["task"] != task) continue;
    INFO(name);
    REQUIRE(b.count(name) == 1);
    CHECK(m["value"] == b.at(name)["value"]);
    CHECK(m["stderr"] == b.at(name)["stderr"]);
    CHECK(m["n"] == b.at(name)["n"]);
    ++compared;
  }
  CHECK(compared > 0);
}

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// The one file in `dir` whose name starts with `prefix`.
std::filesystem::path only_file(const std::filesystem::path& dir, const std::string& prefix) {
  std::vector<std::filesystem::path> found;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename().string().starts_with(prefix)) found.push_back(e.path());
  }
  INFO(dir.string() << " " << prefix);
  REQUIRE(found.size() == 1);
  return found[0];
}

}  // namespace

TEST_CASE("eval --limit 0.1 scores ceil(0.1 x N) documents, with the numbers of --limit that count") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("mmlu/test/anatomy_test.csv"));
  RS_REQUIRE_SHARED(test::shared_data("wikitext-2-raw/wiki.test.raw"));
  const auto tenth = eval_results("--tasks arc_challenge,mmlu_anatomy --limit 0.1");
  // arc_challenge: ceil(0.1 x 1172) = ceil(117.2) = 118; mmlu_anatomy: ceil(13.5) = 14.
  check_same_task(tenth, eval_results("--tasks arc_challenge --limit 118"), "arc_challenge");
  check_same_task(tenth, eval_results("--tasks mmlu_anatomy --limit 14"), "mmlu_anatomy");
  const auto& arc = tenth.at("arc_challenge.acc");
  CHECK(arc["n"] == 118);
  CHECK(arc["protocol"]["limit"] == 0.1);
  CHECK(arc["protocol"]["n_docs"] == 118);
  CHECK(arc["protocol"]["n_docs_total"] == 1172);
  CHECK(tenth.at("mmlu_anatomy.acc")["n"] == 14);
  // Rolling perplexity counts pages: ceil(0.02 x 62) = ceil(1.24) = 2.
  const auto pages = eval_results("--tasks wikitext --limit 0.02");
  check_same_task(pages, eval_results("--tasks wikitext --limit 2"), "wikitext");
  const auto& wiki = pages.at("wikitext.word_perplexity");
  CHECK(wiki["protocol"]["protocol"] == "rolling");
  CHECK(wiki["protocol"]["documents"] == 2);
  CHECK(wiki["protocol"]["documents_in_text"] == 62);
}

TEST_CASE("eval --tasks arc is arc_easy and arc_challenge, truthfulqa both mc tasks") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_challenge.jsonl"));
  const auto group = eval_results("--tasks arc --limit 4");
  const auto tasks = eval_results("--tasks arc_easy,arc_challenge --limit 4");
  CHECK(group.size() == 4);
  check_same_task(group, tasks, "arc_easy");
  check_same_task(group, tasks, "arc_challenge");
  std::vector<std::string> names;
  for (const auto& [name, m] : eval_results("--tasks truthfulqa --limit 2")) names.push_back(name);
  CHECK(names == std::vector<std::string>{"truthfulqa_mc1.acc", "truthfulqa_mc2.acc"});
}

TEST_CASE("eval --tasks mmlu_SUBJECT equals that subject's row of mmlu") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("mmlu/test/anatomy_test.csv"));
  const auto mmlu = eval_results("--tasks mmlu --limit 2 --num-fewshot 1");
  const auto anatomy = eval_results("--tasks mmlu_anatomy --limit 2 --num_fewshot 1");
  REQUIRE(mmlu.count("mmlu_anatomy.acc") == 1);
  REQUIRE(anatomy.count("mmlu_anatomy.acc") == 1);
  CHECK(anatomy.size() == 1);
  CHECK(anatomy.at("mmlu_anatomy.acc")["value"] == mmlu.at("mmlu_anatomy.acc")["value"]);
  CHECK(anatomy.at("mmlu_anatomy.acc")["n"] == 2);
  CHECK(mmlu.at("mmlu_anatomy.acc")["n"] == 2);
  CHECK(anatomy.at("mmlu_anatomy.acc")["protocol"]["num_fewshot"] == 1);
}

TEST_CASE("eval --output_path writes lm-eval's results JSON with the numbers of --json, --log_samples one line per document") {
  RS_REQUIRE_SHARED(stories());
  RS_REQUIRE_SHARED(test::shared_data("mmlu/test/anatomy_test.csv"));
  RS_REQUIRE_SHARED(test::shared_data("wikitext-2-raw/wiki.test.raw"));
  const auto dir = test::scratch_dir("eval-output-path");
  const std::string model = stories().string();
  const auto r = test::run_cli("eval " + model + " --data-dir " + test::shared_data("").string() +
                               " --tasks arc_easy,lambada_openai,truthfulqa_mc2,mmlu_anatomy,wikitext --limit 3 --json"
                               " --output_path " + dir.string() + " --log_samples");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto printed = nlohmann::json::parse(r.out)["results"];

  // DIR/<model, runs of "/" as "__">/results_<date>.json, the samples beside it.
  std::string sanitized;
  for (size_t i = 0; i < model.size(); ++i) {
    if (model[i] != '/') sanitized += model[i];
    else if (i == 0 || model[i - 1] != '/') sanitized += "__";
  }
  const auto run_dir = dir / sanitized;
  REQUIRE(std::filesystem::is_directory(run_dir));
  const auto results_path = only_file(run_dir, "results_");
  const std::string date_id = results_path.stem().string().substr(std::string("results_").size());
  const auto j = nlohmann::json::parse(test::slurp(results_path));
  for (const char* key : {"results", "versions", "n-shot", "higher_is_better", "configs", "n-samples", "config",
                          "model_hash", "date", "rankscope_version", "group_subtasks"}) {
    INFO(key);
    CHECK(j.contains(key));
  }
  CHECK(j["config"]["model_path"] == model);
  CHECK(j["config"]["limit"] == 3);
  CHECK(j["model_hash"] == printed[0]["model_hash"]);
  CHECK(j["configs"]["arc_easy"]["output_type"] == "multiple_choice");
  CHECK(j["configs"]["wikitext"]["output_type"] == "loglikelihood_rolling");
  CHECK(j["configs"]["lambada_openai"]["output_type"] == "loglikelihood");
  CHECK(j["versions"]["truthfulqa_mc2"] == 2.0);
  CHECK(j["n-shot"]["arc_easy"] == 0);
  CHECK(j["higher_is_better"]["arc_easy"]["acc"] == true);
  CHECK(j["higher_is_better"]["wikitext"]["word_perplexity"] == false);
  CHECK(j["n-samples"]["arc_easy"] == nlohmann::json{{"original", 2376}, {"effective", 3}});
  CHECK(j["n-samples"]["wikitext"] == nlohmann::json{{"original", 62}, {"effective", 3}});

  // Every printed number is in the file, exactly (lm-eval's names: lambada's ppl is perplexity).
  for (const auto& m : printed) {
    const std::string task = m["task"], metric = m["metric"] == "ppl" && task == "lambada_openai" ? "perplexity" : m["metric"];
    INFO(task << "." << metric);
    REQUIRE(j["results"][task].contains(metric + ",none"));
    CHECK(j["results"][task][metric + ",none"] == m["value"]);
    CHECK(j["results"][task][metric + "_stderr,none"] == (m["stderr"].is_null() ? nlohmann::json("N/A") : m["stderr"]));
    CHECK(j["results"][task]["alias"] == task);
  }

  // Samples: one line per document; the per-document values aggregate to the task's numbers.
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& m : printed) by_name[m["task"].get<std::string>() + "." + m["metric"].get<std::string>()] = m;
  for (const char* task : {"arc_easy", "truthfulqa_mc2", "mmlu_anatomy"}) {
    INFO(task);
    const auto lines = read_jsonl(run_dir / ("samples_" + std::string(task) + "_" + date_id + ".jsonl"));
    const auto& acc = by_name.at(std::string(task) + ".acc");
    REQUIRE(static_cast<int64_t>(lines.size()) == acc["n"].get<int64_t>());
    double sum = 0.0;
    for (size_t i = 0; i < lines.size(); ++i) {
      const auto& s = lines[i];
      CHECK(s["doc_id"] == i);
      CHECK(s["filter"] == "none");
      CHECK(s["arguments"].size() == s["doc"]["choices"].size());
      CHECK(s["resps"].size() == s["arguments"].size());
      // Log-likelihoods as lm-eval's strings; the first choice's request is its context and " " + choice.
      CHECK(s["arguments"]["gen_args_0"]["arg_1"] == " " + s["doc"]["choices"][0].get<std::string>());
      CHECK(s["resps"][0][0] == s["filtered_resps"][0]);
      CHECK(std::isfinite(std::stod(s["filtered_resps"][0][0].get<std::string>())));
      sum += s["acc"].get<double>();
    }
    CHECK(sum / static_cast<double>(lines.size()) == acc["value"].get<double>());
  }
  const auto lambada = read_jsonl(run_dir / ("samples_lambada_openai_" + date_id + ".jsonl"));
  REQUIRE(lambada.size() == 3);
  double ll = 0.0, greedy = 0.0;
  for (const auto& s : lambada) {
    ll += s["perplexity"].get<double>();
    greedy += s["acc"].get<double>();
    CHECK(s["target"] == s["arguments"]["gen_args_0"]["arg_1"]);
  }
  CHECK(std::exp(-(ll / 3.0)) == by_name.at("lambada_openai.ppl")["value"].get<double>());
  CHECK(greedy / 3.0 == by_name.at("lambada_openai.acc")["value"].get<double>());
  const auto wiki = read_jsonl(run_dir / ("samples_wikitext_" + date_id + ".jsonl"));
  REQUIRE(wiki.size() == 3);
  double nll = 0.0, words = 0.0;
  for (const auto& s : wiki) {
    nll -= s["word_perplexity"][0].get<double>();
    words += s["word_perplexity"][1].get<double>();
  }
  // Per-document sums of the window sums, added in another grouping than the task's total: equal
  // to float64 rounding (about 1e-16 relative per addition over a few hundred windows).
  CHECK(std::exp(nll / words) == Approx(by_name.at("wikitext.word_perplexity")["value"].get<double>()).epsilon(1e-12));

  // A PATH ending in .json: STEM_<date>.json beside it, the samples in its directory.
  const auto file_dir = test::scratch_dir("eval-output-file");
  const auto f = test::run_cli("eval " + model + " --data-dir " + test::shared_data("").string() +
                               " --tasks arc_easy --limit 2 --output-path " + (file_dir / "run.json").string() + " --log-samples");
  REQUIRE(f.exit_code == 0);
  const auto written = only_file(file_dir, "run_");
  CHECK(written.extension() == ".json");
  CHECK(nlohmann::json::parse(test::slurp(written))["results"]["arc_easy"]["acc,none"].is_number());
  CHECK(read_jsonl(only_file(file_dir, "samples_arc_easy_")).size() == 2);
}

TEST_CASE("lm-eval's formats: Python's str of a float, sanitized model names, date ids") {
  // Expected strings as Python 3 prints str(x).
  const std::pair<double, const char*> floats[] = {
      {1.0, "1.0"},        {-5.300000000000001, "-5.300000000000001"}, {0.1, "0.1"},      {1e-05, "1e-05"},
      {0.0001, "0.0001"},  {1.5e16, "1.5e+16"},                        {1e16, "1e+16"},   {9999999999999998.0, "9999999999999998.0"},
      {100.0, "100.0"},    {-0.0, "-0.0"},                             {1234.5, "1234.5"}, {-2.5e-07, "-2.5e-07"},
      {123456789012345678.0, "1.2345678901234568e+17"}};
  for (const auto& [value, text] : floats) {
    INFO(text);
    CHECK(python_float_str(value) == text);
  }
  CHECK(python_float_str(std::nan("")) == "nan");
  CHECK(python_float_str(-INFINITY) == "-inf");
  CHECK(lm_eval_sanitize_model_name("../shared/data/stories260K-hf") == "..__shared__data__stories260K-hf");
  CHECK(lm_eval_sanitize_model_name("meta-llama/Llama-2-7b-hf") == "meta-llama__Llama-2-7b-hf");
  CHECK(lm_eval_sanitize_model_name("a//b:c") == "a__b__c");
  const auto id = lm_eval_date_id(std::chrono::system_clock::now());
  INFO(id);
  CHECK(id.size() >= 19);
  CHECK(id[4] == '-');
  CHECK(id[10] == 'T');
  CHECK(id[13] == '-');
  CHECK(id.find(':') == std::string::npos);
  const auto paths = lm_eval_paths("out/run.json", "m", "D");
  CHECK(paths.results == std::filesystem::path("out/run_D.json"));
  CHECK(lm_eval_samples_path(paths, "arc_easy", "D") == std::filesystem::path("out/samples_arc_easy_D.jsonl"));
  CHECK(lm_eval_paths("out", "a/b", "D").results == std::filesystem::path("out/a__b/results_D.json"));
}
