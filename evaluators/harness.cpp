#include "evaluators/harness.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <set>

#include "core/models/bert.hpp"
#include "core/base/error.hpp"
#include "core/base/splitmix.hpp"
#include "evaluators/loglikelihood.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Characters (Unicode code points) of a UTF-8 string, as Python's len().
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char ch : s) n += (ch & 0xC0) != 0x80;
  return n;
}

bool is_partial(const Doc& doc) { return doc.contexts.size() > 1; }

bool wants_metric(const Task& task, const std::string& metric) {
  return std::find(task.metrics.begin(), task.metrics.end(), metric) != task.metrics.end();
}

// The text a document contributes as a few-shot example: its context and its gold target.
std::string example_text(const Task& task, const Doc& doc) {
  const auto gold = static_cast<size_t>(doc.gold.empty() ? std::max(doc.label, 0) : doc.gold[0]);
  if (is_partial(doc)) return doc.contexts[gold] + task.target_delimiter + doc.continuations[0];
  if (task.kind == TaskKind::loglikelihood) return doc.contexts[0] + task.target_delimiter + doc.continuations[0];
  return doc.contexts[0] + task.target_delimiter + doc.continuations[gold];
}

// k few-shot examples for `doc`: MMLU takes the first k of its subject's dev rows; other tasks
// draw k distinct documents with a generator seeded by (seed, document index), so a document's
// examples do not depend on --limit or on the order documents run in. When the pool is the
// evaluation set, the document itself is never its own example.
std::vector<const Doc*> fewshot_examples(const Task& task, const Doc& doc, const EvalSettings& settings) {
  std::vector<const Doc*> out;
  const auto k = static_cast<size_t>(std::max<int64_t>(0, settings.num_fewshot));
  if (k == 0) return out;
  const auto& pool = task.fewshot_pool.empty() ? task.docs : task.fewshot_pool;
  const bool exclude_self = task.fewshot_pool.empty() || task.fewshot_pool_is_eval_set;
  if (task.fewshot_first_k) {
    for (const auto& d : pool) {
      if (out.size() == k) break;
      if (d.subject != doc.subject) continue;
      if (exclude_self && d.index == doc.index) continue;
      out.push_back(&d);
    }
  } else {
    std::mt19937_64 rng(splitmix64(settings.seed) ^ splitmix64(static_cast<uint64_t>(doc.index) + 1));
    std::set<size_t> chosen;
    const size_t available = pool.size() - (exclude_self ? 1 : 0);
    while (out.size() < std::min(k, available)) {
      const size_t i = std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng);
      if (exclude_self && pool[i].index == doc.index) continue;
      if (!chosen.insert(i).second) continue;
      out.push_back(&pool[i]);
    }
  }
  if (out.size() < k) {
    fail("task {}: {} few-shot examples asked for, only {} available{}", task.name, k, out.size(),
         doc.subject.empty() ? "" : " for subject " + doc.subject);
  }
  return out;
}

struct Encoded {
  std::vector<ChoiceGroup> groups;
  std::vector<size_t> first_group;  // per doc: index of its first group
  std::vector<std::string> prompts; // per group: its rendered context (only with log_samples)
};

// lm-eval's requests for each document: (context, target_delimiter + choice) pairs, one shared
// context per document, or one context per choice for partial scoring.
Encoded encode_docs(const Model& model, const Task& task, const EvalSettings& settings) {
  const auto& tok = model.require_tokenizer();
  std::vector<TokenId> prefix;
  if (settings.bos) {
    if (!model.config.bos_token_id) fail("{}: --bos given but config.json names no BOS token", model.dir.string());
    prefix.push_back(static_cast<TokenId>(*model.config.bos_token_id));
  }
  TokenId eot = 0;
  if (tok.special().eos) {
    eot = *tok.special().eos;
  } else if (model.config.eos_token_id) {
    eot = static_cast<TokenId>(*model.config.eos_token_id);
  }
  Encoded enc;
  for (const auto& doc : task.docs) {
    enc.first_group.push_back(enc.groups.size());
    if (is_partial(doc)) {
      for (size_t i = 0; i < doc.contexts.size(); ++i) {
        std::string context = render_context(task, doc, i, settings);
        auto pair = encode_pair(tok, context, task.target_delimiter + doc.continuations[0], prefix, eot);
        enc.groups.push_back({std::move(pair.context), {std::move(pair.continuation)}});
        if (settings.log_samples) enc.prompts.push_back(std::move(context));
      }
      continue;
    }
    const std::string context = render_context(task, doc, 0, settings);
    if (settings.log_samples) enc.prompts.push_back(context);
    ChoiceGroup group;
    for (const auto& choice : doc.continuations) {
      auto pair = encode_pair(tok, context, task.target_delimiter + choice, prefix, eot);
      if (group.continuations.empty()) group.context = std::move(pair.context);
      group.continuations.push_back(std::move(pair.continuation));
    }
    enc.groups.push_back(std::move(group));
  }
  return enc;
}

size_t argmax(const std::vector<double>& v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

MetricResult mean_metric(const std::string& task, const std::string& metric, const std::vector<double>& values,
                         int64_t n_nan) {
  MetricResult m{.task = task, .metric = metric, .n = static_cast<int64_t>(values.size())};
  if (n_nan > 0) {
    m.status = "nan";
    return m;
  }
  double sum = 0.0;
  for (double v : values) sum += v;
  m.value = values.empty() ? kNaN : sum / static_cast<double>(values.size());
  m.stderr_ = mean_stderr(values);
  return m;
}

nlohmann::json base_protocol(const Model& model, const Task& task, const EvalSettings& settings) {
  nlohmann::json p;
  p["task"] = task.name;
  std::vector<std::string> files;
  for (const auto& f : task.files) files.push_back(f.string());
  p["files"] = files;
  p["n_docs"] = task.docs.size();  // evaluated, after --limit
  p["limit"] = settings.limit;     // as asked: a count, or a fraction (then n_docs_total is what it was taken of)
  if (settings.limit.is_fraction()) p["n_docs_total"] = std::max<int64_t>(task.n_docs_total, static_cast<int64_t>(task.docs.size()));
  p["num_fewshot"] = settings.num_fewshot;
  p["seed"] = settings.seed;
  p["prompt"] = task.prompt_summary;
  return p;
}

// A document's fields for its sample record, under the generic JSONL task format's key names.
nlohmann::json doc_fields(const Task& task, const Doc& doc) {
  nlohmann::json j = nlohmann::json::object();
  if (is_partial(doc)) {
    j["context_options"] = doc.contexts;
    j["continuation"] = doc.continuations[0];
  } else if (!doc.contexts.empty()) {
    j["context"] = doc.contexts[0];
    if (task.kind == TaskKind::loglikelihood) {
      j["continuation"] = doc.continuations[0];
    } else {
      j["choices"] = doc.continuations;
    }
  }
  if (task.mc2) {
    j["gold"] = doc.gold;
  } else if (!doc.gold.empty()) {
    j["gold"] = doc.gold[0];
  }
  if (!doc.text_a.empty()) j["text_a"] = doc.text_a;
  if (!doc.text_b.empty()) j["text_b"] = doc.text_b;
  if (doc.label >= 0) j["label"] = doc.label;
  if (!doc.subject.empty()) j["subject"] = doc.subject;
  j["index"] = doc.index;
  j["line"] = doc.line;
  return j;
}

// lm-eval's doc_to_target as text: the continuation for loglikelihood and partial scoring, else
// the gold index.
std::string doc_target(const Task& task, const Doc& doc) {
  if (task.kind == TaskKind::loglikelihood || is_partial(doc)) return task.target_delimiter + doc.continuations[0];
  return std::to_string(doc.gold.empty() ? doc.label : doc.gold[0]);
}

// Where each document's sample belongs: TASK, or TASK_<subject> when the task spans several
// subjects (mmlu), each numbered from 0 as lm-eval numbers its subtasks' documents.
std::vector<std::pair<std::string, int64_t>> sample_ids(const Task& task) {
  std::set<std::string> subjects;
  for (const auto& d : task.docs) subjects.insert(d.subject);
  std::vector<std::pair<std::string, int64_t>> ids;
  std::map<std::string, int64_t> next;
  for (const auto& d : task.docs) {
    const std::string name = subjects.size() > 1 ? task.name + "_" + d.subject : task.name;
    ids.emplace_back(name, next[name]++);
  }
  return ids;
}

TaskReport evaluate_causal(const Model& model, const Task& task, const EvalSettings& settings) {
  const auto enc = encode_docs(model, task, settings);
  const bool gpu = on_gpu(model);
  const LoglikelihoodOptions ll_options{.reuse_context = settings.reuse_context,
                                        .groups_per_batch = gpu ? int64_t{1} << 30 : settings.groups_per_batch,
                                        .token_budget = gpu ? settings.batch_tokens : 0,
                                        .progress = settings.progress};
  const auto lls = loglikelihoods(model, enc.groups, ll_options);

  TaskReport report{.task = task.name, .protocol = base_protocol(model, task, settings)};
  const auto ids = settings.log_samples ? sample_ids(task) : std::vector<std::pair<std::string, int64_t>>{};
  int64_t n_truncated = 0, n_nan = 0;
  std::vector<double> acc, acc_norm, logprob, greedy;
  std::map<std::string, std::vector<double>> subject_acc;
  for (size_t d = 0; d < task.docs.size(); ++d) {
    const Doc& doc = task.docs[d];
    // Log-likelihood per choice.
    std::vector<double> ll;
    std::vector<bool> is_greedy;
    bool truncated = false;
    const size_t g0 = enc.first_group[d];
    const size_t n_groups = (d + 1 < task.docs.size() ? enc.first_group[d + 1] : enc.groups.size()) - g0;
    DocSample* sample = nullptr;
    if (settings.log_samples) {
      report.samples.push_back({.task = ids[d].first, .doc_id = ids[d].second, .doc = doc_fields(task, doc),
                                .target = doc_target(task, doc)});
      sample = &report.samples.back();
    }
    for (size_t g = g0; g < g0 + n_groups; ++g) {
      for (size_t c = 0; c < lls[g].size(); ++c) {
        const auto& r = lls[g][c];
        ll.push_back(r.logprob);
        is_greedy.push_back(r.greedy);
        truncated = truncated || r.truncated;
        if (sample) {
          const std::string& choice = is_partial(doc) ? doc.continuations[0] : doc.continuations[c];
          sample->requests.push_back({.arguments = {enc.prompts[g], task.target_delimiter + choice},
                                      .response = {r.logprob, r.greedy}});
        }
      }
    }
    n_truncated += truncated;
    const bool finite = std::all_of(ll.begin(), ll.end(), [](double x) { return std::isfinite(x); });
    n_nan += !finite;

    if (task.kind == TaskKind::loglikelihood) {
      logprob.push_back(ll[0]);
      greedy.push_back(is_greedy[0] ? 1.0 : 0.0);
      if (sample) sample->metrics = {{"perplexity", ll[0]}, {"acc", greedy.back()}};
      continue;
    }
    const std::vector<int> gold = doc.gold.empty() ? std::vector<int>{doc.label} : doc.gold;
    if (task.mc2) {
      // Probability mass of the true choices, normalised over all choices.
      const double max = *std::max_element(ll.begin(), ll.end());
      double total = 0.0, truth = 0.0;
      std::set<int> gold_set(gold.begin(), gold.end());
      for (size_t i = 0; i < ll.size(); ++i) {
        const double p = std::exp(ll[i] - max);
        total += p;
        if (gold_set.count(static_cast<int>(i))) truth += p;
      }
      acc.push_back(finite ? truth / total : kNaN);
      if (sample) sample->metrics = {{"acc", acc.back()}};
      continue;
    }
    const double hit = static_cast<int>(argmax(ll)) == gold[0] ? 1.0 : 0.0;
    acc.push_back(hit);
    if (sample) sample->metrics["acc"] = hit;
    if (!doc.subject.empty()) subject_acc[doc.subject].push_back(hit);
    if (!is_partial(doc)) {
      std::vector<double> normed(ll.size());
      for (size_t i = 0; i < ll.size(); ++i) {
        normed[i] = ll[i] / static_cast<double>(std::max<int64_t>(1, code_points(doc.continuations[i])));
      }
      acc_norm.push_back(static_cast<int>(argmax(normed)) == gold[0] ? 1.0 : 0.0);
      if (sample && wants_metric(task, "acc_norm")) sample->metrics["acc_norm"] = acc_norm.back();
    }
  }

  auto wants = [&](const std::string& metric) { return wants_metric(task, metric); };
  if (task.kind == TaskKind::loglikelihood) {
    MetricResult ppl{.task = task.name, .metric = "ppl", .n = static_cast<int64_t>(logprob.size())};
    if (n_nan > 0) {
      ppl.status = "nan";
    } else {
      double sum = 0.0;
      for (double x : logprob) sum += x;
      const double mean = sum / static_cast<double>(logprob.size());
      ppl.value = std::exp(-mean);
      ppl.stderr_ = ppl.value * mean_stderr(logprob);  // delta method
    }
    report.metrics.push_back(ppl);
    report.metrics.push_back(mean_metric(task.name, "acc", greedy, n_nan));
  } else {
    report.metrics.push_back(mean_metric(task.name, "acc", acc, n_nan));
    if (!acc_norm.empty() && wants("acc_norm")) report.metrics.push_back(mean_metric(task.name, "acc_norm", acc_norm, n_nan));
    if (subject_acc.size() > 1) {
      for (const auto& [subject, values] : subject_acc) {
        report.metrics.push_back(mean_metric(task.name + "_" + subject, "acc", values, n_nan));
      }
    }
  }
  report.output_type = task.kind == TaskKind::loglikelihood ? "loglikelihood" : "multiple_choice";
  report.protocol["model_kind"] = "causal-lm";
  report.protocol["scoring"] = task.mc2 ? "mc2: normalised probability mass of the true choices"
                               : task.kind == TaskKind::loglikelihood
                                   ? "loglikelihood of target; ppl = exp(-mean ll), acc = greedy match"
                                   : "loglikelihood of target_delimiter + choice; acc = argmax sum, acc_norm = argmax sum / characters";
  report.protocol["target_delimiter"] = task.target_delimiter;
  report.protocol["fewshot_delimiter"] = task.fewshot_delimiter;
  report.protocol["bos"] = settings.bos;
  report.protocol["tokenization"] = "lm-eval 0.4.0: context and context+continuation encoded separately, no special tokens";
  report.protocol["max_length"] = model.config.n_ctx_train;
  report.protocol["truncated"] = n_truncated;
  report.protocol["nan_docs"] = n_nan;
  report.protocol["context_reuse"] = settings.reuse_context;
  return report;
}

TaskReport evaluate_classifier(const Model& model, const Task& task, const EvalSettings& settings) {
  const auto& tok = model.require_tokenizer();
  const int64_t n = static_cast<int64_t>(task.docs.size());
  const int64_t n_labels = static_cast<int64_t>(model.config.labels.size());
  std::vector<double> correct;
  int64_t tp = 0, fp = 0, fn = 0, n_nan = 0, n_truncated = 0;
  // On a GPU: as many sentences as fit the token budget at the model's window.
  const int64_t batch = on_gpu(model) ? std::max<int64_t>(settings.batch_size, settings.batch_tokens / model.config.n_ctx_train)
                                      : std::max<int64_t>(1, settings.batch_size);
  const bool f1_wanted = wants_metric(task, "f1");
  std::vector<DocSample> samples;
  const auto ids = settings.log_samples ? sample_ids(task) : std::vector<std::pair<std::string, int64_t>>{};
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t b1 = std::min(n, b0 + batch);
    std::vector<BertInput> inputs;
    for (int64_t i = b0; i < b1; ++i) {
      const Doc& doc = task.docs[static_cast<size_t>(i)];
      if (doc.label < 0 || doc.label >= n_labels) {
        fail("task {}: document {} has label {}, the model has {} labels", task.name, doc.index, doc.label, n_labels);
      }
      const auto full = static_cast<int64_t>(tok.encode(doc.text_a).size() +
                                             (doc.text_b.empty() ? 0 : tok.encode(doc.text_b).size() + 1)) + 2;
      n_truncated += full > model.config.n_ctx_train;
      inputs.push_back(bert_encode(tok, doc.text_a, doc.text_b, model.config.n_ctx_train));
    }
    const auto out = bert_forward(model, inputs);
    for (int64_t i = b0; i < b1; ++i) {
      const auto row = out.logits.row(i - b0);
      const Doc& doc = task.docs[static_cast<size_t>(i)];
      DocSample* sample = nullptr;
      if (settings.log_samples) {
        const auto& id = ids[static_cast<size_t>(i)];
        std::vector<std::string> arguments = {doc.text_a};
        if (!doc.text_b.empty()) arguments.push_back(doc.text_b);
        std::vector<double> logits;
        for (Eigen::Index c = 0; c < row.size(); ++c) logits.push_back(row[c]);
        samples.push_back({.task = id.first, .doc_id = id.second, .doc = doc_fields(task, doc),
                           .target = doc_target(task, doc), .requests = {{.arguments = arguments, .response = logits}}});
        sample = &samples.back();
      }
      if (!row.allFinite()) {
        ++n_nan;
        correct.push_back(kNaN);
        if (sample) sample->metrics["acc"] = kNaN;
        continue;
      }
      Eigen::Index pred = 0;
      row.maxCoeff(&pred);
      const int label = doc.label;
      correct.push_back(pred == label ? 1.0 : 0.0);
      tp += pred == 1 && label == 1;
      fp += pred == 1 && label != 1;
      fn += pred != 1 && label == 1;
      if (sample) {
        sample->metrics["acc"] = correct.back();
        if (f1_wanted) sample->metrics["f1"] = {label, static_cast<int64_t>(pred)};  // lm-eval's (gold, pred)
      }
    }
    if (settings.progress) settings.progress(b1, n);
  }
  TaskReport report{.task = task.name, .protocol = base_protocol(model, task, settings)};
  report.samples = std::move(samples);
  report.output_type = "multiple_choice";  // lm-eval's GLUE tasks; the model's head answers here
  report.metrics.push_back(mean_metric(task.name, "acc", correct, n_nan));
  if (f1_wanted) {
    MetricResult f1{.task = task.name, .metric = "f1", .n = n};
    if (n_nan > 0) {
      f1.status = "nan";
    } else {
      f1.value = tp == 0 ? 0.0 : 2.0 * static_cast<double>(tp) / static_cast<double>(2 * tp + fp + fn);
    }
    report.metrics.push_back(f1);
  }
  report.protocol["model_kind"] = "sequence-classifier";
  report.protocol["scoring"] = "argmax of the classifier logits; [CLS] a [SEP] (b [SEP]), longest-first truncation";
  report.protocol["max_length"] = model.config.n_ctx_train;
  report.protocol["truncated"] = n_truncated;
  report.protocol["nan_docs"] = n_nan;
  return report;
}

}  // namespace

double mean_stderr(const std::vector<double>& values) {
  const auto n = static_cast<double>(values.size());
  if (values.size() < 2) return kNaN;
  double mean = 0.0;
  for (double v : values) mean += v;
  mean /= n;
  double ss = 0.0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (n - 1.0) / n);
}

std::string render_context(const Task& task, const Doc& doc, size_t i, const EvalSettings& settings) {
  std::string prompt = doc.description;
  for (const Doc* ex : fewshot_examples(task, doc, settings)) prompt += example_text(task, *ex) + task.fewshot_delimiter;
  return prompt + doc.contexts[i];
}

TaskReport evaluate_task(const Model& model, const Task& task, const EvalSettings& settings) {
  if (!model.has_weights) fail("{}: no weights (shapes-only config.json); cannot run task {}", model.dir.string(), task.name);
  if (task.docs.empty()) fail("task {}: no documents to evaluate", task.name);
  const auto start = std::chrono::steady_clock::now();
  TaskReport report;
  const auto& c = model.config;
  switch (task.kind) {
    case TaskKind::perplexity:
      fail("task {} is a perplexity task; it runs through the perplexity protocols", task.name);
    case TaskKind::classification:
      if (c.arch == Arch::bert) {
        if (c.bert_head != BertHead::sequence_classification) {
          fail("{}: task {} needs a BertForSequenceClassification head, this is {}", model.dir.string(), task.name,
               c.architecture);
        }
        report = evaluate_classifier(model, task, settings);
      } else {
        report = evaluate_causal(model, task, settings);
      }
      break;
    case TaskKind::multiple_choice:
    case TaskKind::loglikelihood:
      if (c.arch != Arch::llama) fail("{}: task {} needs a causal LM, this is {}", model.dir.string(), task.name, c.architecture);
      report = evaluate_causal(model, task, settings);
      break;
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.n_effective = static_cast<int64_t>(task.docs.size());
  report.n_original = std::max(task.n_docs_total, report.n_effective);
  return report;
}

bool on_gpu(const Model& model) { return model.runtime().device_kind() != "cpu"; }

}  // namespace rankscope
