// One entry point for every evaluation rankscope runs: benchmark tasks, perplexity protocols,
// fidelity to the base model, size and latency. The `eval` command runs it once; a sweep builds
// it once (tasks are read and tokenised once) and runs it for every configuration.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/space/config_string.hpp"
#include <Eigen/Core>

#include "core/io/model.hpp"
#include "core/models/bert.hpp"
#include "evaluators/efficiency.hpp"
#include "evaluators/harness.hpp"
#include "evaluators/tasks.hpp"

namespace rankscope {

struct PerplexityResult;  // perplexity.hpp

struct EvalRequest {
  // Task names: the built-in tasks (tasks.hpp) and groups (arc, truthfulqa: expanded here),
  // "size", "latency", "fidelity", or .jsonl paths.
  std::vector<std::string> tasks;
  std::filesystem::path text_file;  // --text: perplexity of any text file
  std::string text_name;            // its task name (default: the file's stem)
  TaskLoadOptions load;             // data directory and --limit
  EvalSettings settings;            // few-shot, seed, BOS, batching, log_samples
  int64_t ctx = 0;                  // perplexity/fidelity window (0: per protocol default)
  std::string ppl_protocol;         // "" (per-task default), llamacpp, chunks, rolling
  LatencyOptions latency;
  std::filesystem::path fidelity_text;  // default: WikiText-2 raw test under load.data_dir
  std::filesystem::path cache_dir;      // base-model outputs for fidelity ("" = none)
};

// Reports progress as (label, done, total); the label is the task name.
using ProgressFn = std::function<void(const std::string& label, int64_t done, int64_t total)>;

// Early stopping of hopeless evaluations (sweep --prune). The windows of a perplexity task are
// scored in a seeded random order, so that every prefix is a random sample of them; at growing
// prefixes (`stages`, shares of its windows, at least min_windows), `stop` sees the estimate of the task's complete
// perplexity so far with an interval of z standard errors (per-window mean NLLs, with the finite
// population correction, through exp); returning true stops the evaluation there: that task's
// report covers the windows scored (fidelity < 1) and the tasks after it are not run.
struct PartialEstimate {
  std::string metric;                 // TASK.ppl
  double value = 0, lo = 0, hi = 0;   // exp(mean NLL), exp(mean NLL -+ z se)
  int64_t done = 0, total = 0;        // units scored, of
  std::string unit = "windows";       // what done/total count: windows, documents, inputs
};
// Early stopping (sweep --prune): a perplexity task scores its windows, a multiple-choice or
// classification task whose metrics are shares of documents (acc, acc_norm; not mc2, f1 or
// per-subject ones) its documents, and the fidelity task its windows (causal LM) or inputs
// (sequence classifier), in a seeded random order; at each stage (a share of them) the estimate of
// each such metric goes to `stop`, and a true answer ends the evaluation there.
struct EarlyStop {
  std::function<bool(const PartialEstimate&)> stop;
  std::vector<double> stages = {0.125, 0.25, 0.5, 0.75};
  double z = 3.0;
  int64_t min_windows = 8;   // no decision on fewer windows
  uint64_t shuffle_seed = 1; // windows scored in this seeded random order (PerplexityOptions)
};

// The estimate of a perplexity task's complete value from its first windows (their NLL sums and
// scored tokens) out of `total`: exported for its test.
PartialEstimate estimate_perplexity(const std::vector<double>& window_nll_sums, const std::vector<int64_t>& window_tokens,
                                    int64_t total, double z);

// The same for a share of 0/1 outcomes (accuracy): `correct` of `done` documents scored, drawn at
// random without replacement from `total`. The complete value is (correct + (total - done) q) /
// total for the unscored documents' share q; q's interval is the scored share +- z standard errors
// (with the finite-population correction and the (k+1)/(n+2) variance, so that 0 or 1 of n is
// not certain), clipped to [0, 1]: lo and hi never leave the bounds the unscored documents allow.
PartialEstimate estimate_share(int64_t correct, int64_t done, int64_t total, double z);

// The same for a mean of non-negative per-unit values (fidelity's KL): `done` of `total` units
// scored at random without replacement, their mean and the standard error of that mean; the
// interval is mean +- z se sqrt(1 - done/total), its low end at least 0.
PartialEstimate estimate_mean(double mean, double stderr_of_mean, int64_t done, int64_t total, double z);

// The positions 0..total-1 in the seeded random order early stopping scores them in (the same for
// every configuration of a study: seeded by `seed` and the task's name), and the ends of its
// stages (shares of `total`, none below min_windows; the last is `total`).
std::vector<size_t> staged_order(const EarlyStop& early, const std::string& task, int64_t total);
std::vector<int64_t> stage_ends(const EarlyStop& early, int64_t total);

class Evaluator {
 public:
  // Loads every task named in `request` (errors surface here, before any model runs).
  Evaluator(const Model& base, EvalRequest request);
  ~Evaluator();
  Evaluator(const Evaluator&) = delete;
  Evaluator& operator=(const Evaluator&) = delete;

  // Evaluates `candidate` (the base model with `config` applied). Every report's protocol also
  // records the base model's content hash and the canonical configuration.
  // With `early` (its stop set), a perplexity task may stop the run early (see EarlyStop): the
  // last report then has fidelity < 1 and later tasks are missing.
  std::vector<TaskReport> run(const Model& candidate, const Config& config, const ProgressFn& progress = {},
                              const EarlyStop* early = nullptr) const;

  // The name (TASK.METRIC) of every metric run() can report, in request order, known before
  // anything runs: objectives, constraints and filters are checked against it.
  std::vector<std::string> metric_names() const;

  const EvalRequest& request() const { return request_; }

 private:
  struct TextTask;
  TaskReport run_perplexity(const Model& model, const TextTask& text, const ProgressFn& progress,
                            const EarlyStop* early) const;
  TaskReport run_fidelity(const Model& candidate, const ProgressFn& progress, const EarlyStop* early) const;
  TaskReport run_task_staged(const Model& candidate, const Task& task, const EvalSettings& settings,
                             const EarlyStop& early) const;
  TaskReport run_classifier_fidelity(const Model& candidate, const EarlyStop* early) const;
  bool classifier_fidelity_wanted() const;
  void add_rolling_samples(const TextTask& t, const PerplexityResult& r, TaskReport& report) const;

  const Model& base_;
  EvalRequest request_;
  std::vector<std::string> order_;  // task names in request order
  std::map<std::string, Task> tasks_;
  std::map<std::string, std::unique_ptr<TextTask>> texts_;  // perplexity tasks, tokenised once
  std::unique_ptr<TextTask> fidelity_;
  // A sequence classifier's fidelity: its inputs and the base's label log-probabilities, once.
  std::vector<BertInput> classifier_inputs_;
  Eigen::MatrixXd classifier_base_;
  std::string classifier_source_;
  std::string base_hash_;
};

}  // namespace rankscope
