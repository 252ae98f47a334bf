// Evaluation tasks: the documents of a benchmark, already rendered into lm-evaluation-harness
// (0.4) prompts, whatever the layout of the file they come from.
//
// A multiple-choice document is scored as lm-eval does: the log-likelihood of
// target_delimiter + choice given the context. Partial scoring (WinoGrande) has one context per
// choice and one shared continuation. Few-shot prompts are assembled by the evaluator from
// `description`, examples of the few-shot pool rendered as context + target_delimiter + gold
// choice, joined by `fewshot_delimiter`, then the document's own context.
//
// Built-in tasks (see docs/tasks.md for each prompt): arc_easy, arc_challenge, hellaswag,
// winogrande, piqa, boolq, openbookqa, mmlu, mmlu_<subject> (one subject of mmlu), truthfulqa_mc1,
// truthfulqa_mc2, lambada_openai, sst2, mrpc, wikitext2, wikitext (lm-eval's wikitext task: the
// same data, always scored by the rolling protocol), tinystories. Groups as lm-eval names them
// expand to their tasks (expand_task_groups). Any other name that is a path to a `.jsonl` file is
// read in the generic JSONL task format (docs/tasks.md), so a user adds a task without code.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "evaluators/limit.hpp"

namespace rankscope {

enum class TaskKind {
  multiple_choice,  // acc (sum log-likelihood), acc_norm (divided by the choice's characters); mc2
  loglikelihood,    // one context, one continuation: ppl (exp of -mean log-likelihood) and greedy acc
  perplexity,       // a text scored by a perplexity protocol (llamacpp, chunks, rolling)
  classification,   // sentence (pair) classification; BERT classifiers run it with their head,
                    // causal LMs as multiple choice over `choices`
};

struct Doc {
  // Multiple choice / loglikelihood. `contexts` holds one shared context, or one per choice for
  // partial scoring; `continuations` holds the choices (without the target delimiter), or the
  // single shared continuation for partial scoring.
  std::vector<std::string> contexts;
  std::vector<std::string> continuations;
  // Index of the correct choice; for truthfulqa_mc2 (and JSONL "gold": [..]) every true choice.
  std::vector<int> gold;
  // Prepended to the whole prompt (MMLU: "The following are multiple choice questions (with
  // answers) about SUBJECT.\n\n"); empty for most tasks.
  std::string description;
  std::string subject;  // MMLU subject ("abstract_algebra"); empty otherwise
  // Classification input (sst2, mrpc) and its label.
  std::string text_a, text_b;
  int label = -1;
  // Perplexity tasks: one document of text (wikitext2: one article; tinystories: the file).
  std::string text;
  int64_t word_count = 0;  // perplexity tasks: words and UTF-8 bytes of the raw document (lm-eval's
  int64_t byte_count = 0;  // word/byte perplexity denominators)
  int64_t index = 0;  // position in its file (few-shot draws exclude the document itself); MMLU:
                      // position in all subjects' test rows, subjects in alphabetical order
  int64_t line = 0;   // 1-based line in its file where it starts (error messages)
};

struct Task {
  std::string name;  // "arc_easy", or the JSONL task's name
  TaskKind kind = TaskKind::multiple_choice;
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  bool mc2 = false;  // truthfulqa_mc2 metric: normalised probability mass of the true choices
  std::vector<std::string> metrics;  // metric names this task reports ("acc", "acc_norm", "ppl", ...)
  std::vector<Doc> docs;             // documents to evaluate, in file order, after --limit
  int64_t n_docs_total = 0;          // documents before --limit (lm-eval's n-samples "original")
  // Few-shot examples. Empty: drawn from the full document set, excluding the document itself.
  std::vector<Doc> fewshot_pool;
  bool fewshot_first_k = false;      // MMLU: the first k of the pool (same subject) in order
  // The pool is the (unlimited) evaluation set itself: a document never serves as its own example.
  // Set for every task without a separate few-shot split; fewshot_pool is then empty when --limit
  // cut nothing (use `docs`), else the full uncut document list.
  bool fewshot_pool_is_eval_set = false;
  std::vector<std::filesystem::path> files;  // data files read (for the protocol record)
  // Perplexity tasks: the whole text as one string (llamacpp/chunks protocols score it as one
  // stream; rolling scores each doc of `docs` separately).
  std::string text;
  std::string prompt_summary;  // one line describing the prompt template, for reports
};

struct TaskLoadOptions {
  std::filesystem::path data_dir = "../shared/data";
  Limit limit;  // first N documents in file order, or ceil(fraction x documents) (MMLU: per subject); -1 = all
};

// Names of the built-in tasks, in the order above (mmlu_<subject> not listed: see task_names).
const std::vector<std::string>& builtin_task_names();

// lm-eval's group and tag names rankscope has the tasks of: "arc" and "ai2_arc" (arc_easy,
// arc_challenge), "truthfulqa" (truthfulqa_mc1, truthfulqa_mc2; lm-eval's group also holds the
// generative truthfulqa_gen, which rankscope does not have).
const std::vector<std::pair<std::string, std::vector<std::string>>>& task_groups();

// `names` with every group replaced by its tasks, in order, each task once (first place kept).
std::vector<std::string> expand_task_groups(const std::vector<std::string>& names);

// Every task name --tasks accepts without a path: the built-in tasks, the groups, and mmlu_<subject>
// for each subject file under `data_dir` (none when it cannot be listed). For suggestions.
std::vector<std::string> task_names(const std::filesystem::path& data_dir);

// Loads a built-in task by name, or a JSONL task file by path. Throws Error naming the file (and
// line) for a missing file, a malformed line, an empty choice list, or a gold index out of range.
Task load_task(const std::string& name_or_path, const TaskLoadOptions& options = {});

// lm-eval's text transformations, exposed for tests.
// wikitext_detokenizer() of lm_eval/tasks/wikitext/preprocess_wikitext.py, on one page.
std::string wikitext_detokenize(const std::string& page);
// preprocess() of lm_eval/tasks/hellaswag/utils.py.
std::string hellaswag_preprocess(const std::string& text);
// len(re.split(r"\s+", text)) in Python (Unicode whitespace): whitespace runs + 1.
int64_t python_word_count(const std::string& text);

}  // namespace rankscope
