// Runs a task on a model and reports its metrics, each with the protocol that produced it.
//
// Metric names are stable everywhere (database, objectives, reports): TASK.METRIC, e.g.
// arc_easy.acc, hellaswag.acc_norm, truthfulqa_mc2.acc, lambada_openai.ppl, sst2.acc,
// tinystories.ppl, mmlu.acc and per subject mmlu_abstract_algebra.acc.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/io/model.hpp"
#include "evaluators/tasks.hpp"

namespace rankscope {

struct MetricResult {
  std::string task;    // "arc_easy", "mmlu_anatomy", "size", "latency", "fidelity", ...
  std::string metric;  // "acc", "acc_norm", "ppl", ...
  double value = std::numeric_limits<double>::quiet_NaN();
  double stderr_ = std::numeric_limits<double>::quiet_NaN();  // NaN where none is defined
  int64_t n = 0;                                              // examples (or tokens) behind it
  std::string status = "ok";                                  // "ok", or "nan" (non-finite outputs)
  std::string name() const { return task + "." + metric; }
};

// One document as lm-eval's --log_samples records it: its requests, the model's answers and its
// own metric values, named as lm-eval names them. Collected only when EvalSettings::log_samples.
struct DocSample {
  std::string task;      // the task it belongs to: TASK, or mmlu_<subject> for a document of mmlu
  int64_t doc_id = 0;    // position among the documents of `task` evaluated (lm-eval's doc_id)
  nlohmann::json doc;    // the document's fields: context, choices, gold, subject, ...
  std::string target;    // lm-eval's doc_to_target as text: the gold index, or the continuation
  struct Request {
    std::vector<std::string> arguments;  // (context, target_delimiter + choice); rolling: (text); BERT: (a, b)
    nlohmann::json response;             // [loglikelihood, is_greedy]; rolling: loglikelihood; BERT: logits
  };
  std::vector<Request> requests;
  // Per-document values whose aggregation over the documents is the task's metric: acc, acc_norm
  // (means); lambada's perplexity (the loglikelihood; exp(-mean)); wikitext's word_perplexity
  // [loglikelihood, words] ...; f1 [gold, prediction].
  nlohmann::json metrics = nlohmann::json::object();
};

struct TaskReport {
  std::string task;
  std::vector<MetricResult> metrics;  // the task's own metrics first, then per-subject ones
  nlohmann::json protocol;            // everything needed to reproduce the numbers
  double seconds = 0.0;
  double fidelity = 1.0;              // share of the task's windows scored (< 1: stopped early)
  // lm-eval's view of the task (rankscope eval --output_path): its output_type
  // (multiple_choice, loglikelihood, loglikelihood_rolling; "" where lm-eval has no such task:
  // size, latency, fidelity, chunk perplexities) and its documents (perplexity by windows: windows)
  // before and after --limit.
  std::string output_type;
  int64_t n_original = 0, n_effective = 0;
  std::vector<DocSample> samples;     // one per document, only when EvalSettings::log_samples
};

// Whether a model runs on a GPU (batches sized by EvalSettings::batch_tokens).
bool on_gpu(const Model& model);

struct EvalSettings {
  int64_t num_fewshot = 0;
  uint64_t seed = 1234;           // few-shot draws (lm-eval's default seed)
  bool bos = false;               // prepend BOS to every context (lm-eval 0.4.0 adds none)
  Limit limit;                    // recorded; the task loader applies it
  bool log_samples = false;       // fill TaskReport::samples (one record per document)
  int64_t groups_per_batch = 8;   // contexts prefilled together
  bool reuse_context = true;      // one context pass per example, its KV cache reused per choice
  int64_t batch_size = 32;        // classification sequences per forward pass
  // On a GPU batches are sized by tokens instead: contexts sorted by length, up to this many
  // tokens per forward pass (multiple choice, perplexity windows, classification).
  int64_t batch_tokens = 16384;
  std::function<void(int64_t done, int64_t total)> progress;
};

// Multiple choice, loglikelihood and classification tasks (perplexity tasks: perplexity.hpp).
// A BERT sequence classifier runs classification tasks with its head; a causal LM runs them as
// multiple choice. Throws Error when the model cannot run the task.
TaskReport evaluate_task(const Model& model, const Task& task, const EvalSettings& settings);

// The full prompt of `doc` (description, few-shot examples, context) for context `i`.
std::string render_context(const Task& task, const Doc& doc, size_t i, const EvalSettings& settings);

// Sample standard error of a mean: sqrt(var(x, ddof=1) / n), as lm-eval's mean_stderr.
double mean_stderr(const std::vector<double>& values);

}  // namespace rankscope
