#include "evaluators/evaluator.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/mapped_file.hpp"
#include "core/base/splitmix.hpp"
#include "core/io/model_hash.hpp"
#include "evaluators/fidelity.hpp"
#include "evaluators/perplexity.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string read_text_file(const std::filesystem::path& path) {
  std::string text = read_whole_file(path);
  if (text.empty()) fail("{}: text file is empty", path.string());
  return text;
}

int64_t count_words(const std::string& text) {  // Python's len(re.split(r"\s+", text))
  int64_t n = 1;
  bool in_space = false;
  for (unsigned char ch : text) {
    const bool space = ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
    if (space && !in_space) ++n;
    in_space = space;
  }
  return n;
}

std::string ids_key(const std::vector<TokenId>& ids) {
  const XXH128_hash_t h = XXH3_128bits(ids.data(), ids.size() * sizeof(TokenId));
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

const char* kSpecialTasks[] = {"size", "latency", "fidelity"};

}  // namespace

// A perplexity task, tokenised once.
struct Evaluator::TextTask {
  std::string name;
  std::string protocol;  // llamacpp | chunks | rolling
  int64_t ctx = 0;
  std::vector<TokenId> ids;                       // llamacpp / chunks: the whole text, no BOS
  std::vector<std::vector<TokenId>> doc_ids;      // rolling: per document
  std::vector<int64_t> words, bytes;              // rolling: per document
  std::vector<std::string> doc_texts;             // rolling, with log_samples: each document's text
  std::vector<std::string> files;
  std::string data_key;
};

Evaluator::Evaluator(const Model& base, EvalRequest request) : base_(base), request_(std::move(request)) {
  const auto& c = base_.config;
  auto default_ctx = [&](const std::string& protocol) -> int64_t {
    if (request_.ctx > 0) return request_.ctx;
    if (protocol == "rolling") return c.n_ctx_train;          // lm-eval: the model's max length
    if (protocol == "chunks") return std::min<int64_t>(512, c.n_ctx_train - 1);
    return std::min<int64_t>(512, c.n_ctx_train);             // llama.cpp's default n_ctx
  };
  auto make_text = [&](const std::string& name, const std::string& protocol, int64_t ctx, const std::string& text,
                       const std::vector<Doc>& docs, const std::vector<std::filesystem::path>& files) {
    if (c.arch != Arch::llama) fail("{}: perplexity task {} needs a causal LM, this is {}", base_.dir.string(), name, c.architecture);
    if (protocol != "llamacpp" && protocol != "chunks" && protocol != "rolling") {
      fail("--ppl-protocol: unknown protocol '{}' (llamacpp, chunks or rolling)", protocol);
    }
    const auto& tok = base_.require_tokenizer();
    auto t = std::make_unique<TextTask>();
    t->name = name;
    t->protocol = protocol;
    t->ctx = ctx;
    for (const auto& f : files) t->files.push_back(f.string());
    if (protocol == "rolling") {
      for (const auto& d : docs) {
        t->doc_ids.push_back(tok.encode(d.text));
        t->words.push_back(d.word_count > 0 ? d.word_count : count_words(d.text));
        t->bytes.push_back(d.byte_count > 0 ? d.byte_count : static_cast<int64_t>(d.text.size()));
        if (request_.settings.log_samples) t->doc_texts.push_back(d.text);
      }
      std::vector<TokenId> all;
      for (const auto& d : t->doc_ids) all.insert(all.end(), d.begin(), d.end());
      t->data_key = ids_key(all);
    } else {
      t->ids = tok.encode(text);
      t->data_key = ids_key(t->ids);
    }
    return t;
  };

  request_.tasks = expand_task_groups(request_.tasks);  // arc -> arc_easy, arc_challenge ...
  for (const auto& name : request_.tasks) {
    if (name.empty()) continue;
    if (std::find(order_.begin(), order_.end(), name) != order_.end()) continue;  // listed twice
    order_.push_back(name);
    if (std::find(std::begin(kSpecialTasks), std::end(kSpecialTasks), name) != std::end(kSpecialTasks)) continue;
    Task task = load_task(name, request_.load);
    if (task.kind == TaskKind::perplexity) {
      std::string protocol = request_.ppl_protocol;
      if (protocol.empty()) protocol = task.name == "tinystories" ? "chunks" : "llamacpp";
      if (task.name == "wikitext") protocol = "rolling";  // lm-eval's wikitext task is loglikelihood_rolling
      int64_t ctx = default_ctx(protocol);
      if (request_.ctx == 0 && task.name == "tinystories" && protocol == "chunks") ctx = std::min<int64_t>(256, ctx);
      texts_[name] = make_text(task.name, protocol, ctx, task.text, task.docs, task.files);
    } else {
      tasks_.emplace(name, std::move(task));
    }
  }
  if (!request_.text_file.empty()) {
    const std::string name = request_.text_name.empty() ? request_.text_file.stem().string() : request_.text_name;
    const std::string protocol = request_.ppl_protocol.empty() ? "llamacpp" : request_.ppl_protocol;
    const std::string text = read_text_file(request_.text_file);
    Doc doc;
    doc.text = text;
    doc.word_count = count_words(text);
    doc.byte_count = static_cast<int64_t>(text.size());
    texts_[name] = make_text(name, protocol, default_ctx(protocol), text, {doc}, {request_.text_file});
    order_.push_back(name);
  }
  if (std::find(order_.begin(), order_.end(), "fidelity") != order_.end() && classifier_fidelity_wanted()) {
    // A sequence classifier: the label distributions on SST-2's dev sentences (or the lines of
    // --fidelity-text), the base's computed once here.
    const auto& tok = base_.require_tokenizer();
    std::vector<std::pair<std::string, std::string>> texts;
    if (request_.fidelity_text.empty()) {
      TaskLoadOptions all = request_.load;
      all.limit = Limit();
      const Task sst2 = load_task("sst2", all);
      for (const auto& doc : sst2.docs) texts.emplace_back(doc.text_a, doc.text_b);
      classifier_source_ = sst2.files.empty() ? std::string("sst2") : sst2.files.front().string();
    } else {
      std::istringstream lines(read_text_file(request_.fidelity_text));
      for (std::string line; std::getline(lines, line);) {
        if (line.find_first_not_of(" \t\r") != std::string::npos) texts.emplace_back(line, "");
      }
      classifier_source_ = request_.fidelity_text.string();
      if (texts.empty()) fail("{}: no non-empty line to classify (fidelity inputs)", classifier_source_);
    }
    const auto& limit = request_.load.limit;
    const auto total = static_cast<int64_t>(texts.size());
    const int64_t n = limit.all() ? total : std::min(total, limit.is_fraction() ? limit.of(total) : limit.count);
    for (int64_t i = 0; i < n; ++i) {
      const auto& [a, b] = texts[static_cast<size_t>(i)];
      classifier_inputs_.push_back(bert_encode(tok, a, b, base_.config.n_ctx_train));
    }
    classifier_base_ = classifier_log_probs(base_, classifier_inputs_, std::max<int64_t>(1, request_.settings.batch_size));
    if (!classifier_base_.allFinite()) fail("{}: the base model's own label logits are not finite", base_.dir.string());
  } else if (std::find(order_.begin(), order_.end(), "fidelity") != order_.end()) {
    auto path = request_.fidelity_text.empty() ? request_.load.data_dir / "wikitext-2-raw" / "wiki.test.raw"
                                                : request_.fidelity_text;
    const std::string text = read_text_file(path);
    fidelity_ = make_text("fidelity", "chunks", default_ctx("chunks"), text, {}, {path});
  }
  base_hash_ = model_content_hash(base_);
}

Evaluator::~Evaluator() = default;

namespace {

// The mean per token over windows scored (their sums and token counts), and the standard error of
// that mean from the spread of the windows' own means (tokens within a window are not
// independent); infinite for fewer than two windows. No finite-population correction.
std::pair<double, double> window_mean(const std::vector<double>& window_sums, const std::vector<int64_t>& window_tokens) {
  const auto k = static_cast<int64_t>(window_sums.size());
  double sum = 0, tokens = 0;
  for (int64_t i = 0; i < k; ++i) {
    sum += window_sums[static_cast<size_t>(i)];
    tokens += static_cast<double>(window_tokens[static_cast<size_t>(i)]);
  }
  const double mean = tokens > 0 ? sum / tokens : kNaN;
  double ss = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double m = window_sums[static_cast<size_t>(i)] / static_cast<double>(std::max<int64_t>(1, window_tokens[static_cast<size_t>(i)]));
    ss += (m - mean) * (m - mean);
  }
  const double sd = k > 1 ? std::sqrt(ss / static_cast<double>(k - 1)) : std::numeric_limits<double>::infinity();
  return {mean, k > 0 ? sd / std::sqrt(static_cast<double>(k)) : std::numeric_limits<double>::infinity()};
}

// Whether `done` of `total` windows (scored one batch at a time) has reached a stage not checked
// yet (`next_stage`, advanced past every stage reached) with enough windows to decide on.
bool stage_due(const EarlyStop& early, size_t& next_stage, int64_t done, int64_t total) {
  const double share = static_cast<double>(done) / static_cast<double>(total);
  bool due = false;
  while (next_stage < early.stages.size() && share >= early.stages[next_stage]) {
    due = true;
    ++next_stage;
  }
  return due && done >= std::max<int64_t>(2, early.min_windows);
}

}  // namespace

PartialEstimate estimate_perplexity(const std::vector<double>& window_nll_sums, const std::vector<int64_t>& window_tokens,
                                    int64_t total, double z) {
  PartialEstimate e;
  const auto k = static_cast<int64_t>(window_nll_sums.size());
  e.done = k;
  e.total = total;
  // The complete value is the mean over all `total` windows, of which k are known (finite
  // population correction 1 - k/total).
  const auto [mean, se_mean] = window_mean(window_nll_sums, window_tokens);
  const double fpc = total > 0 ? std::max(0.0, 1.0 - static_cast<double>(k) / static_cast<double>(total)) : 1.0;
  const double se = se_mean * std::sqrt(fpc);
  e.value = std::exp(mean);
  e.lo = std::exp(mean - z * se);
  e.hi = std::exp(mean + z * se);
  return e;
}

PartialEstimate estimate_share(int64_t correct, int64_t done, int64_t total, double z) {
  RS_ASSERT(done >= 1 && done <= total && correct >= 0 && correct <= done);
  PartialEstimate e;
  e.done = done;
  e.total = total;
  e.unit = "documents";
  const auto k = static_cast<double>(correct), n = static_cast<double>(done), N = static_cast<double>(total);
  const double p = k / n;
  e.value = p;
  const double pv = (k + 1.0) / (n + 2.0);
  const double se = total > 1 ? std::sqrt(pv * (1.0 - pv) / n * (N - n) / (N - 1.0)) : 0.0;
  const double q_lo = std::max(0.0, p - z * se), q_hi = std::min(1.0, p + z * se);
  e.lo = (k + (N - n) * q_lo) / N;
  e.hi = (k + (N - n) * q_hi) / N;
  return e;
}

PartialEstimate estimate_mean(double mean, double stderr_of_mean, int64_t done, int64_t total, double z) {
  RS_ASSERT(done >= 1 && done <= total);
  PartialEstimate e;
  e.done = done;
  e.total = total;
  e.value = mean;
  const double fpc = std::max(0.0, 1.0 - static_cast<double>(done) / static_cast<double>(total));
  const double se = done > 1 ? stderr_of_mean * std::sqrt(fpc) : (fpc > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  e.lo = std::max(0.0, mean - z * se);
  e.hi = mean + z * se;
  return e;
}

std::vector<size_t> staged_order(const EarlyStop& early, const std::string& task, int64_t total) {
  std::vector<size_t> order(static_cast<size_t>(total));
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(splitmix64(early.shuffle_seed) ^ splitmix64(XXH3_64bits(task.data(), task.size())));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

std::vector<int64_t> stage_ends(const EarlyStop& early, int64_t total) {
  std::vector<int64_t> ends;
  for (const double share : early.stages) {
    const auto end = static_cast<int64_t>(std::ceil(share * static_cast<double>(total)));
    if (end >= std::max<int64_t>(1, early.min_windows) && end < total && (ends.empty() || end > ends.back())) ends.push_back(end);
  }
  ends.push_back(total);
  return ends;
}

TaskReport Evaluator::run_task_staged(const Model& candidate, const Task& task, const EvalSettings& settings,
                                      const EarlyStop& early) const {
  const auto total = static_cast<int64_t>(task.docs.size());
  // The documents in a seeded random order (the same for every configuration of a study).
  const std::vector<size_t> order = staged_order(early, task.name, total);
  const std::vector<int64_t> ends = stage_ends(early, total);
  // Each stage a task of its documents (in file order); few-shot examples from the whole set, as
  // the complete evaluation draws them.
  Task stage = task;
  if (task.fewshot_pool.empty()) {
    stage.fewshot_pool = task.docs;
    stage.fewshot_pool_is_eval_set = true;
  }
  std::map<std::string, double> correct;  // metric -> documents counted correct so far
  std::map<std::string, std::string> status;
  nlohmann::json protocol;
  int64_t done = 0, truncated = 0, nan_docs = 0;
  for (size_t s = 0; s < ends.size(); ++s) {
    std::vector<size_t> picked(order.begin() + done, order.begin() + ends[s]);
    std::sort(picked.begin(), picked.end());
    stage.docs.clear();
    for (const auto i : picked) stage.docs.push_back(task.docs[i]);
    EvalSettings one = settings;
    if (settings.progress) {
      one.progress = [&, done](int64_t d, int64_t) { settings.progress(done + d, total); };
    }
    TaskReport r = evaluate_task(candidate, stage, one);
    for (const auto& m : r.metrics) {
      // A share of m.n documents: its count is an integer (rounded back from the mean exactly).
      correct[m.metric] += m.status == "ok" ? std::round(m.value * static_cast<double>(m.n)) : 0.0;
      if (m.status != "ok") status[m.metric] = m.status;
    }
    truncated += r.protocol.value("truncated", int64_t{0});
    nan_docs += r.protocol.value("nan_docs", int64_t{0});
    protocol = r.protocol;
    done = ends[s];
    bool stop = false;
    if (done < total) {
      for (const auto& [metric, k] : correct) {
        if (status.contains(metric)) continue;
        PartialEstimate e = estimate_share(std::llround(k), done, total, early.z);
        e.metric = task.name + "." + metric;
        stop = stop || early.stop(e);
      }
    }
    if (stop || done == total) {
      TaskReport report = r;
      report.metrics.clear();
      for (const auto& [metric, k] : correct) {
        MetricResult m{.task = task.name, .metric = metric, .n = done};
        if (status.contains(metric)) {
          m.status = status[metric];
        } else {
          m.value = k / static_cast<double>(done);
          m.stderr_ = done > 1 ? std::sqrt(m.value * (1.0 - m.value) / static_cast<double>(done - 1)) : kNaN;
        }
        report.metrics.push_back(m);
      }
      // The task's metrics in its own order (acc before acc_norm).
      std::stable_sort(report.metrics.begin(), report.metrics.end(), [&](const MetricResult& a, const MetricResult& b) {
        auto rank = [&](const std::string& m) { return std::find(task.metrics.begin(), task.metrics.end(), m) - task.metrics.begin(); };
        return rank(a.metric) < rank(b.metric);
      });
      report.protocol = protocol;
      report.protocol["n_docs"] = done;
      report.protocol["truncated"] = truncated;
      report.protocol["nan_docs"] = nan_docs;
      report.protocol["document_order_seed"] = early.shuffle_seed;
      report.n_effective = done;
      if (done < total) {
        report.fidelity = static_cast<double>(done) / static_cast<double>(total);
        report.protocol["documents_total"] = total;
        report.protocol["early_stop"] = {{"stages", early.stages}, {"z", early.z}, {"min_documents", early.min_windows},
                                         {"document_order_seed", early.shuffle_seed}};
      }
      return report;
    }
  }
  RS_ASSERT(false);
  return {};
}

namespace {

// Whether early stopping can score a task by stages: its metrics are all shares of documents.
bool stageable(const Task& task) {
  if (task.mc2 || task.kind == TaskKind::loglikelihood) return false;
  for (const auto& m : task.metrics) {
    if (m != "acc" && m != "acc_norm") return false;
  }
  std::set<std::string> subjects;
  for (const auto& d : task.docs) subjects.insert(d.subject);
  return subjects.size() <= 1;
}

}  // namespace

TaskReport Evaluator::run_perplexity(const Model& model, const TextTask& t, const ProgressFn& progress,
                                     const EarlyStop* early) const {
  PerplexityOptions options;
  options.ctx = t.ctx;
  options.windows_per_batch = std::max<int64_t>(1, request_.settings.groups_per_batch);
  if (on_gpu(model) && t.ctx > 0) {
    options.windows_per_batch = std::max(options.windows_per_batch, request_.settings.batch_tokens / t.ctx);
  }
  options.max_windows = request_.load.limit;  // windows: a count, or a share of the text's
  if (progress) options.progress = [&](int64_t done, int64_t total) { progress(t.name, done, total); };
  size_t next_stage = 0;  // the first stage not yet checked
  if (early && early->stop) {
    options.shuffle_seed = early->shuffle_seed;
    options.keep_going = [&](const std::vector<double>& sums, const std::vector<int64_t>& tokens, int64_t total) {
      if (!stage_due(*early, next_stage, static_cast<int64_t>(sums.size()), total)) return true;
      PartialEstimate e = estimate_perplexity(sums, tokens, total, early->z);
      e.metric = t.name + ".ppl";
      return !early->stop(e);
    };
  }
  PerplexityResult r;
  if (t.protocol == "llamacpp") {
    r = perplexity_llamacpp(model, t.ids, options);
  } else if (t.protocol == "chunks") {
    r = perplexity_chunks(model, t.ids, options);
  } else {
    const auto& c = model.config;
    std::optional<int64_t> prefix = request_.settings.bos ? c.bos_token_id : c.eos_token_id;
    if (!prefix) fail("{}: the rolling protocol needs an {} token and config.json names none", model.dir.string(),
                      request_.settings.bos ? "BOS" : "EOS");
    // lm-eval's --limit counts documents: the rolling protocol scores the first N whole documents
    // (or ceil(fraction x documents)).
    options.max_windows = -1;
    const auto n_docs = static_cast<size_t>(request_.load.limit.of(static_cast<int64_t>(t.doc_ids.size())));
    const std::vector<std::vector<TokenId>> docs(t.doc_ids.begin(), t.doc_ids.begin() + static_cast<long>(n_docs));
    const std::vector<int64_t> words(t.words.begin(), t.words.begin() + static_cast<long>(n_docs));
    const std::vector<int64_t> bytes(t.bytes.begin(), t.bytes.begin() + static_cast<long>(n_docs));
    r = perplexity_rolling(model, docs, words, bytes, static_cast<TokenId>(*prefix), options);
  }
  TaskReport report{.task = t.name};
  if (r.stopped) report.fidelity = static_cast<double>(r.n_windows) / static_cast<double>(r.n_windows_total);
  if (t.protocol == "rolling") {  // lm-eval's loglikelihood_rolling: counted in documents
    report.output_type = "loglikelihood_rolling";
    report.n_original = static_cast<int64_t>(t.doc_ids.size());
    report.n_effective = r.n_docs;
  } else {
    report.n_original = r.n_windows_all;
    report.n_effective = r.n_windows;
  }
  if (request_.settings.log_samples && t.protocol == "rolling") add_rolling_samples(t, r, report);
  const std::string status = r.finite ? "ok" : "nan";
  auto add = [&](const char* metric, double value, double err, int64_t n) {
    report.metrics.push_back({.task = t.name, .metric = metric, .value = r.finite ? value : kNaN, .stderr_ = r.finite ? err : kNaN,
                              .n = n, .status = status});
  };
  add("ppl", r.ppl, r.ppl_stderr, r.n_scored);
  if (t.protocol == "rolling") {
    add("word_perplexity", r.word_perplexity, kNaN, r.n_words);
    add("byte_perplexity", r.byte_perplexity, kNaN, r.n_bytes);
    add("bits_per_byte", r.bits_per_byte, kNaN, r.n_bytes);
  }
  report.protocol = {{"task", t.name},
                     {"protocol", t.protocol},
                     {"ctx", t.ctx},
                     {"windows", r.n_windows},
                     {"documents", t.protocol == "rolling" ? r.n_docs : int64_t{1}},
                     {"tokens_scored", r.n_scored},
                     {"limit", request_.load.limit},
                     {"files", t.files},
                     {"data_key", t.data_key},
                     {"bos", request_.settings.bos}};
  if (r.stopped) {  // stopped early: the windows it would have scored, and the rule that stopped it
    report.protocol["windows_total"] = r.n_windows_total;
  }
  if (request_.load.limit.is_fraction()) {  // what the fraction was taken of
    report.protocol[t.protocol == "rolling" ? "documents_in_text" : "windows_in_text"] = report.n_original;
  }
  if (options.shuffle_seed != 0 && t.protocol != "rolling") {  // the order scored (complete evaluations too; rolling keeps text order)
    report.protocol["early_stop"] = {{"stages", early->stages}, {"z", early->z}, {"min_windows", early->min_windows},
                                     {"window_order_seed", early->shuffle_seed}};
  }
  if (t.protocol == "rolling") report.protocol["prefix_token"] = request_.settings.bos ? "BOS" : "EOS (lm-eval 0.4.0)";
  return report;
}

void Evaluator::add_rolling_samples(const TextTask& t, const PerplexityResult& r, TaskReport& report) const {
  for (size_t d = 0; d < r.doc_nll_sums.size(); ++d) {
    const double ll = -r.doc_nll_sums[d];
    DocSample sample{.task = t.name, .doc_id = static_cast<int64_t>(d), .target = t.doc_texts[d]};
    sample.doc = {{"text", t.doc_texts[d]}, {"word_count", t.words[d]}, {"byte_count", t.bytes[d]}};
    sample.requests.push_back({.arguments = {t.doc_texts[d]}, .response = ll});
    // lm-eval's wikitext process_results: (loglikelihood, words) and (loglikelihood, bytes) pairs.
    sample.metrics = {{"word_perplexity", {ll, t.words[d]}},
                      {"byte_perplexity", {ll, t.bytes[d]}},
                      {"bits_per_byte", {ll, t.bytes[d]}}};
    report.samples.push_back(std::move(sample));
  }
}

bool Evaluator::classifier_fidelity_wanted() const {
  return base_.config.arch == Arch::bert && base_.config.bert_head == BertHead::sequence_classification;
}

TaskReport Evaluator::run_classifier_fidelity(const Model& candidate, const EarlyStop* early) const {
  const int64_t batch = std::max<int64_t>(1, request_.settings.batch_size);
  const auto total = static_cast<int64_t>(classifier_inputs_.size());
  auto report_of = [&](const ClassifierFidelityResult& r) {
    TaskReport report{.task = "fidelity"};
    const std::string status = r.finite ? "ok" : "nan";
    report.metrics.push_back({.task = "fidelity", .metric = "kl", .value = r.kl, .stderr_ = r.kl_stderr, .n = r.n, .status = status});
    report.metrics.push_back({.task = "fidelity", .metric = "top1", .value = r.top1, .stderr_ = kNaN, .n = r.n, .status = status});
    report.protocol = {{"task", "fidelity"},
                       {"protocol", "classifier"},
                       {"inputs", r.n},
                       {"files", {classifier_source_}},
                       {"ctx", base_.config.n_ctx_train},
                       {"definition", "mean over inputs of KL(p_base || p_config) of the softmax over labels (float64); "
                                      "top1 = share of inputs whose argmax label agrees"}};
    return report;
  };
  if (!early || !early->stop) return report_of(classifier_fidelity(classifier_base_, classifier_log_probs(candidate, classifier_inputs_, batch)));
  // Staged: the inputs in a seeded random order; after each stage the complete mean KL and top1
  // share are estimated from the inputs scored. The candidate's rows are placed at their inputs'
  // places, so that a complete evaluation sums them in input order, as the unstaged one does.
  const std::vector<size_t> order = staged_order(*early, "fidelity", total);
  const std::vector<int64_t> ends = stage_ends(*early, total);
  Eigen::MatrixXd candidate_rows(classifier_base_.rows(), classifier_base_.cols());
  int64_t done = 0;
  for (const int64_t end : ends) {
    std::vector<size_t> picked(order.begin() + done, order.begin() + end);
    std::sort(picked.begin(), picked.end());
    std::vector<BertInput> inputs;
    for (const auto i : picked) inputs.push_back(classifier_inputs_[i]);
    const Eigen::MatrixXd lp = classifier_log_probs(candidate, inputs, batch);
    for (size_t j = 0; j < picked.size(); ++j) candidate_rows.row(static_cast<Eigen::Index>(picked[j])) = lp.row(static_cast<Eigen::Index>(j));
    done = end;
    if (done == total) break;
    // The inputs scored so far, in input order.
    std::vector<size_t> scored(order.begin(), order.begin() + done);
    std::sort(scored.begin(), scored.end());
    Eigen::MatrixXd b(done, classifier_base_.cols()), c(done, classifier_base_.cols());
    for (int64_t j = 0; j < done; ++j) {
      b.row(j) = classifier_base_.row(static_cast<Eigen::Index>(scored[static_cast<size_t>(j)]));
      c.row(j) = candidate_rows.row(static_cast<Eigen::Index>(scored[static_cast<size_t>(j)]));
    }
    const auto r = classifier_fidelity(b, c);
    if (!r.finite) continue;  // NaN: nothing to estimate; the complete evaluation reports it
    PartialEstimate kl = estimate_mean(r.kl, r.kl_stderr, done, total, early->z);
    kl.metric = "fidelity.kl";
    kl.unit = "inputs";
    PartialEstimate top1 = estimate_share(std::llround(r.top1 * static_cast<double>(done)), done, total, early->z);
    top1.metric = "fidelity.top1";
    top1.unit = "inputs";
    if (early->stop(kl) || early->stop(top1)) {
      TaskReport report = report_of(r);
      report.fidelity = static_cast<double>(done) / static_cast<double>(total);
      report.n_effective = done;
      report.protocol["inputs_total"] = total;
      report.protocol["input_order_seed"] = early->shuffle_seed;
      report.protocol["early_stop"] = {{"stages", early->stages}, {"z", early->z}, {"min_inputs", early->min_windows},
                                       {"input_order_seed", early->shuffle_seed}};
      return report;
    }
  }
  TaskReport report = report_of(classifier_fidelity(classifier_base_, candidate_rows));
  report.protocol["input_order_seed"] = early->shuffle_seed;
  return report;
}

TaskReport Evaluator::run_fidelity(const Model& candidate, const ProgressFn& progress, const EarlyStop* early) const {
  if (classifier_fidelity_wanted()) return run_classifier_fidelity(candidate, early);
  FidelityOptions options;
  options.ctx = fidelity_->ctx;
  // Default 8 windows; --limit N windows, or a share of the text's windows (the chunk protocol's).
  const auto& limit = request_.load.limit;
  const auto text_windows = (static_cast<int64_t>(fidelity_->ids.size()) + fidelity_->ctx - 1) / std::max<int64_t>(1, fidelity_->ctx);
  options.max_windows = limit.all() ? 8 : limit.is_fraction() ? limit.of(text_windows) : limit.count;
  options.windows_per_batch = std::max<int64_t>(1, request_.settings.groups_per_batch);
  options.cache_dir = request_.cache_dir;
  options.data_key = fidelity_->data_key;
  if (progress) options.progress = [&](int64_t done, int64_t total) { progress("fidelity", done, total); };
  size_t next_stage = 0;  // the first stage not yet checked
  if (early && early->stop) {
    options.shuffle_seed = early->shuffle_seed;
    options.keep_going = [&](const std::vector<double>& sums, const std::vector<int64_t>& tokens, int64_t total) {
      const auto k = static_cast<int64_t>(sums.size());
      if (!stage_due(*early, next_stage, k, total)) return true;
      // The mean KL per position over the windows so far, its standard error from the windows' own means.
      const auto [mean, se_mean] = window_mean(sums, tokens);
      if (!std::isfinite(mean) || !std::isfinite(se_mean)) return true;  // NaN: the complete evaluation reports it
      PartialEstimate e = estimate_mean(mean, se_mean, k, total, early->z);
      e.metric = "fidelity.kl";
      return !early->stop(e);
    };
  }
  const FidelityResult f = fidelity(base_, candidate, fidelity_->ids, options);
  TaskReport report{.task = "fidelity"};
  const std::string status = f.finite ? "ok" : "nan";
  auto add = [&](const char* metric, double value, double err) {
    report.metrics.push_back({.task = "fidelity", .metric = metric, .value = f.finite ? value : kNaN,
                              .stderr_ = f.finite ? err : kNaN, .n = f.n_tokens, .status = status});
  };
  add("kl", f.kl, f.kl_stderr);
  add("top1", f.top1, kNaN);
  add("ppl_ratio", f.ppl_ratio, kNaN);
  report.protocol = {{"task", "fidelity"},
                     {"protocol", "chunks"},
                     {"ctx", fidelity_->ctx},
                     {"max_windows", options.max_windows},
                     {"tokens", f.n_tokens},
                     {"files", fidelity_->files},
                     {"data_key", fidelity_->data_key},
                     {"base_ppl", f.ppl_base},
                     {"candidate_ppl", f.ppl_candidate},
                     {"base_from_cache", f.base_from_cache},
                     {"definition", "mean over scored tokens of KL(p_base || p_config); top1 = argmax agreement; "
                                    "ppl_ratio = ppl_config / ppl_base"}};
  report.n_original = f.n_windows_total;
  report.n_effective = f.n_windows;
  if (early && early->stop) report.protocol["window_order_seed"] = early->shuffle_seed;
  if (f.stopped) {  // stopped early: the windows it would have scored, and the rule that stopped it
    report.fidelity = static_cast<double>(f.n_windows) / static_cast<double>(f.n_windows_total);
    report.protocol["windows"] = f.n_windows;
    report.protocol["windows_total"] = f.n_windows_total;
    report.protocol["early_stop"] = {{"stages", early->stages}, {"z", early->z}, {"min_windows", early->min_windows},
                                     {"window_order_seed", early->shuffle_seed}};
  }
  return report;
}

std::vector<std::string> Evaluator::metric_names() const {
  std::vector<std::string> names;
  auto add = [&](const std::string& task, std::initializer_list<const char*> metrics) {
    for (const char* m : metrics) names.push_back(task + "." + m);
  };
  for (const auto& name : order_) {
    if (name == "size") {
      add("size", {"params", "bytes", "reduction_pct", "flops_per_token"});
    } else if (name == "latency") {
      add("latency", {"ms_per_batch", "ms_per_token", "tokens_per_s"});
    } else if (name == "fidelity") {
      if (classifier_fidelity_wanted()) {
        add("fidelity", {"kl", "top1"});
      } else {
        add("fidelity", {"kl", "top1", "ppl_ratio"});
      }
    } else if (auto it = texts_.find(name); it != texts_.end()) {
      add(it->second->name, {"ppl"});
      if (it->second->protocol == "rolling") add(it->second->name, {"word_perplexity", "byte_perplexity", "bits_per_byte"});
    } else {
      const Task& task = tasks_.at(name);
      for (const auto& m : task.metrics) names.push_back(task.name + "." + m);
      std::set<std::string> subjects;
      for (const auto& d : task.docs)
        if (!d.subject.empty()) subjects.insert(d.subject);
      if (subjects.size() > 1)
        for (const auto& s : subjects) names.push_back(task.name + "_" + s + ".acc");
    }
  }
  return names;
}

std::vector<TaskReport> Evaluator::run(const Model& candidate, const Config& config, const ProgressFn& progress,
                                       const EarlyStop* early) const {
  const std::string canonical = encode_config(config, base_.config);
  std::vector<TaskReport> reports;
  for (const auto& name : order_) {
    const auto start = std::chrono::steady_clock::now();
    TaskReport report;
    if (name == "size") {
      report = size_metrics(base_, config);
    } else if (name == "latency") {
      report = measure_latency(candidate, request_.latency);
    } else if (name == "fidelity") {
      report = run_fidelity(candidate, progress, early);
    } else if (auto it = texts_.find(name); it != texts_.end()) {
      report = run_perplexity(candidate, *it->second, progress, early);
    } else {
      const Task& task = tasks_.at(name);
      EvalSettings settings = request_.settings;
      settings.limit = request_.load.limit;  // recorded (the loader applied it)
      if (progress) settings.progress = [&](int64_t done, int64_t total) { progress(task.name, done, total); };
      report = early && early->stop && stageable(task) && !settings.log_samples
                   ? run_task_staged(candidate, task, settings, *early)
                   : evaluate_task(candidate, task, settings);
    }
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.protocol["model_hash"] = base_hash_;
    // A checkpoint rankscope decomposed records the model it came from.
    if (!base_.config.rankscope_base_hash.empty()) report.protocol["base_model_hash"] = base_.config.rankscope_base_hash;
    report.protocol["config"] = canonical;
    // Where it ran and in which number type: fp32 on the CPU, the backend's type on a GPU.
    if (name != "size") {
      report.protocol["device"] = candidate.runtime().device_kind();
      report.protocol["device_name"] = candidate.runtime().device_name();
      report.protocol["dtype"] = compute_type_name(candidate.runtime().compute_type());
    }
    const bool stopped = report.fidelity < 1.0;
    reports.push_back(std::move(report));
    if (stopped) break;  // early stopping: the tasks after it are not run
  }
  return reports;
}

}  // namespace rankscope
