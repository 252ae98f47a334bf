#include "cli/options.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <fstream>
#include <iostream>

#include <boost/lexical_cast.hpp>

#include "core/base/suggest.hpp"


namespace rankscope {

// program_options reads a Limit through this (found by argument-dependent lookup): a value that
// is not one is a usage error naming the option and saying what --limit takes.
void validate(boost::any& value, const std::vector<std::string>& tokens, Limit* /*type*/, int /*overload*/) {
  namespace po = boost::program_options;
  po::validators::check_first_occurrence(value);
  const std::string& text = po::validators::get_single_string(tokens);
  std::string why;
  const auto limit = Limit::parse(text, &why);
  if (!limit) throw po::error_with_option_name("%canonical_option%: '" + text + "' " + why);
  value = *limit;
}

}  // namespace rankscope

namespace rankscope::cli {

namespace po = boost::program_options;

namespace {

// A default as a user writes it: 0.9, not 0.90000000000000002 (the shortest text that reads back
// as the same value).
template <typename T>
std::string default_text(const T& value) {
  if constexpr (std::is_same_v<T, std::string>) {
    return value;
  } else if constexpr (std::is_same_v<T, Limit>) {
    return value.text();
  } else {
    std::array<char, 64> buf{};
    const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value);
    return ec == std::errc() ? std::string(buf.data(), end) : boost::lexical_cast<std::string>(value);
  }
}

// The other spellings of `self`, each declared as an option of its own that parses a value as
// `semantic()` makes (unbound: parse_command_line renames it to self.name before storing it).
template <typename Semantic>
void declare_aliases(const OptionDef& self, po::options_description& desc, Semantic semantic) {
  for (const auto& alias : self.aliases) {
    desc.add_options()(alias.c_str(), semantic(), ("the same as --" + self.name + " (lm-evaluation-harness's spelling)").c_str());
  }
}

// An option writing Params::*field, with the default taken from a default-constructed Params (or
// the command's own, command_default) and printed as written.
template <typename T>
OptionDef opt(std::string name, T Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), std::move(help)};
  def.declare = [field](const OptionDef& self, po::options_description& desc, Params& params, const std::string& command) {
    auto* value = po::value<T>(&(params.*field));
    T initial = Params{}.*field;
    if (const auto it = self.command_default.find(command); it != self.command_default.end()) {
      initial = boost::lexical_cast<T>(it->second);
    }
    if constexpr (std::is_same_v<T, std::string>) {
      if (!initial.empty()) value->default_value(initial, initial);
    } else {
      value->default_value(initial, default_text(initial));
    }
    desc.add_options()(self.name.c_str(), value, self.help_for(command).c_str());
    declare_aliases(self, desc, [] { return po::value<T>(); });
  };
  return def;
}

OptionDef flag(std::string name, bool Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), std::move(help)};
  def.declare = [field](const OptionDef& self, po::options_description& desc, Params& params, const std::string& command) {
    desc.add_options()(self.name.c_str(), po::bool_switch(&(params.*field)), self.help_for(command).c_str());
    declare_aliases(self, desc, [] { return po::bool_switch(); });
  };
  return def;
}

// A repeatable option collecting every value (command line and experiment file) into a list.
OptionDef list_opt(std::string name, std::vector<std::string> Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), std::move(help)};
  def.declare = [field](const OptionDef& self, po::options_description& desc, Params& params, const std::string& command) {
    desc.add_options()(self.name.c_str(), po::value<std::vector<std::string>>(&(params.*field))->composing(),
                       self.help_for(command).c_str());
    declare_aliases(self, desc, [] { return po::value<std::vector<std::string>>()->composing(); });
  };
  return def;
}

// The help of `def` for the commands named in `help`, where the option means something else there.
OptionDef per_command(OptionDef def, std::map<std::string, std::string> help) {
  def.command_help = std::move(help);
  return def;
}

// Other spellings of `def` (lm-eval's), accepted wherever `def` is.
OptionDef aliased(OptionDef def, std::vector<std::string> aliases) {
  def.aliases = std::move(aliases);
  return def;
}

// An enumeration: a value outside `choices` is a usage error that suggests the closest one.
OptionDef one_of(OptionDef def, std::vector<std::string> choices) {
  def.choices = std::move(choices);
  return def;
}

const std::set<std::string> kModelCommands = {"info", "generate", "classify", "forward", "config", "space", "decompose", "eval", "sweep", "sensitivity", "allocate", "report"};

}  // namespace

const std::vector<OptionDef>& option_defs() {
  static const std::vector<OptionDef> defs = {
      per_command(opt("model", &Params::model, kModelCommands,
                      "model directory (config.json + safetensors) or a config.json for shapes only; also the first positional argument"),
                  {{"sweep", "model directory (config.json + safetensors) or a config.json for shapes only; or `model =` in the experiment file"},
                   {"report", "the study's model (a directory or its config.json; shapes suffice) for index.html's layer x matrix "
                              "heat map (default: the path the store records for the study's model)"}}),
      opt("threads", &Params::threads, {"generate", "classify", "forward", "decompose", "eval", "sweep", "sensitivity", "allocate"}, "threads for BLAS and OpenMP (0 = all cores)"),
      opt("device", &Params::device, {"generate", "classify", "forward", "decompose", "eval", "sweep", "allocate"},
          "where forward passes run: cpu | cuda | cuda:N | auto (a GPU when one is visible and the build has CUDA)"),
      one_of(opt("dtype", &Params::dtype, {"generate", "classify", "forward", "decompose", "eval", "sweep", "allocate"},
                 "number type on a GPU: auto (the checkpoint's: bf16, fp16 or fp32) | fp32 | bf16 | fp16; the CPU computes in fp32"),
             {"auto", "fp32", "bf16", "fp16"}),
      flag("json", &Params::json, {"info", "eval", "studies", "sensitivity", "allocate"}, "print JSON instead of a table"),
      opt("prompt", &Params::prompt, {"generate"}, "prompt text (empty: start from BOS alone)"),
      opt("tokens", &Params::tokens, {"generate"}, "number of tokens to generate (greedy)"),
      flag("ignore-eos", &Params::ignore_eos, {"generate"}, "keep generating after the end-of-sequence token"),
      per_command(opt("text", &Params::text, {"classify", "eval"}, "text to classify"),
                  {{"eval", "a text file to score perplexity on (metric FILESTEM.ppl)"}}),
      opt("text-pair", &Params::text_pair, {"classify"}, "second segment for sentence-pair tasks (token type 1)"),
      opt("ids", &Params::ids, {"forward"}, "comma-separated token ids, e.g. 1,403,407 (no special tokens are added)"),
      opt("type-ids", &Params::type_ids, {"forward"}, "comma-separated token type ids (BERT; default all 0)"),
      per_command(opt("out", &Params::out, {"forward", "decompose", "report", "sensitivity", "allocate"}, "the .npy file to write"),
                  {{"decompose", "the checkpoint directory to write"},
                   {"report", "the directory to write index.html, report.md and pareto.svg into"}}),
      flag("hidden", &Params::hidden, {"forward"}, "BERT: write the last hidden states [T, hidden] instead of the head's logits"),
      per_command(list_opt("config", &Params::configs, {"info", "decompose", "eval", "sweep", "generate", "forward"},
                           "configuration string, e.g. \"L2,17,31:all=1\" or \"L0-15:q,k=64;L16-31:mlp=25%@svd\" (docs/config-strings.md)"),
                  {{"info", "configuration string whose size to report (parameters, bytes, reduction %, FLOPs per token), e.g. \"L2,17,31:all=1\""},
                   {"eval", "configuration string: evaluate the model decomposed by it, e.g. \"L*:mlp=50%@svd\" (docs/config-strings.md)"},
                   {"generate", "configuration string: generate with the model decomposed by it (as eval and decompose do), e.g. \"L*:mlp=50%@svd\""},
                   {"forward", "configuration string: run the model decomposed by it (as eval and decompose do), e.g. \"L*:mlp=50%@svd\""},
                   {"sweep", "a configuration of the list strategy, e.g. \"L*:mlp=50%@svd\" (repeatable: one per configuration)"}}),
      opt("canonical", &Params::canonical, {"config"}, "configuration string to print in canonical form"),
      one_of(opt("space", &Params::space, {"space", "sweep"},
                 "design space: paper | per-matrix | grouped | single (each matrix alone at each choice)"),
             {"paper", "per-matrix", "grouped", "single"}),
      opt("ranks", &Params::ranks, {"space", "sweep"}, "paper space: comma-separated ranks (integers or percentages)"),
      opt("choices", &Params::choices, {"space", "sweep", "sensitivity", "allocate"}, "per-matrix/grouped spaces: comma-separated choices, dense allowed"),
      opt("group-size", &Params::group_size, {"space", "sweep"}, "grouped space: consecutive layers tied together"),
      flag("fused", &Params::fused, {"space", "sweep"},
           "models storing fused tensors (Phi-3): knobs on the fused cells qkv and gate_up (with o, down) instead of q, k, v, gate, up"),
      one_of(opt("method", &Params::method, {"space", "sweep", "sensitivity", "allocate"},
                 "decomposition method of the space's points: tucker | svd | asvd | whiten (asvd, whiten: with --calib; docs/methods.md)"),
             {"tucker", "svd", "asvd", "whiten"}),
      opt("list", &Params::list, {"space"}, "print the first N points in index order"),
      opt("sample", &Params::sample, {"space"}, "print N points drawn uniformly (with --seed)"),
      per_command(opt("seed", &Params::seed, {"space", "eval", "sweep", "allocate"}, "random seed of --sample"),
                  {{"eval", "random seed of the few-shot draws"},
                   {"sweep", "random seed of the strategy (and of the few-shot draws)"}}),
      opt("index", &Params::index, {"space"}, "print the point at this index (a decimal integer of any size)"),
      flag("dense", &Params::dense, {"decompose"}, "write reconstructed dense weights (an ordinary Hugging Face checkpoint)"),
      opt("cache-dir", &Params::cache_dir, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"}, "cache directory: full SVDs (factor cache) and the base model's outputs for fidelity, reused across runs"),
      one_of(opt("svd-backend", &Params::svd_backend, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"},
                 "factorization: lapack | eigen | cuda (full SVD; cuda: on the GPU through the fp64 Gram matrix), randomized (rank-K randomized SVD, K the next power of two >= max(rank, 64), when K <= min(m, n)/4)"),
             {"lapack", "eigen", "cuda", "randomized"}),
      opt("calib", &Params::calib, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"},
          "calibration data of the activation-aware methods @asvd and @whiten: a text file, a .tsv file (its sentence "
          "column) or a task name (tinystories, sst2, ...); samples come from its second half (docs/methods.md)"),
      opt("calib-samples", &Params::calib_samples, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"},
          "calibration: sequences drawn (causal LM: windows of --calib-ctx tokens; BERT: sentences)"),
      opt("calib-ctx", &Params::calib_ctx, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"},
          "calibration: tokens per window (causal LM, BOS added) / at most per sentence (BERT)"),
      opt("calib-seed", &Params::calib_seed, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"}, "calibration: seed of the sample draw"),
      opt("asvd-alpha", &Params::asvd_alpha, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"},
          "@asvd: exponent alpha of the activation scaling diag(mean |x|)^alpha"),
      opt("tasks", &Params::tasks, {"eval", "sweep"},
          "comma-separated tasks: arc_easy, arc_challenge, hellaswag, winogrande, piqa, boolq, openbookqa, mmlu, mmlu_SUBJECT, "
          "truthfulqa_mc1, truthfulqa_mc2, lambada_openai, sst2, mrpc, wikitext2, wikitext (lm-eval's: rolling), tinystories, "
          "size, latency, fidelity, groups arc (ai2_arc), truthfulqa, or a path to a .jsonl task (docs/tasks.md)"),
      opt("limit", &Params::limit, {"eval", "sweep", "allocate"},
          "first N documents of each task in file order (MMLU: per subject; rolling perplexity: whole documents); llamacpp/chunks "
          "perplexity and fidelity: first N windows. A fraction in (0, 1): ceil(fraction x N) of each task's N, as lm-eval (-1 = all)"),
      aliased(opt("num-fewshot", &Params::num_fewshot, {"eval", "sweep", "allocate"}, "few-shot examples per prompt (drawn with --seed; MMLU: the first k of dev)"),
              {"num_fewshot"}),
      opt("ctx", &Params::ctx, {"eval", "sweep", "allocate"}, "perplexity/fidelity window: text tokens per window (chunks, fidelity), positions per chunk with BOS (llamacpp), positions per window with the prefix token (rolling); 0 = the protocol's default (docs/evaluation.md)"),
      one_of(opt("ppl-protocol", &Params::ppl_protocol, {"eval", "sweep", "allocate"},
                 "perplexity protocol for every perplexity task: llamacpp | chunks | rolling (default: per task, docs/tasks.md)"),
             {"llamacpp", "chunks", "rolling"}),
      opt("name", &Params::name, {"eval"}, "task name of the --text perplexity (default: the file's stem)"),
      flag("bos", &Params::bos, {"eval", "sweep", "allocate"}, "prepend BOS to every multiple-choice context (lm-eval 0.4.0 adds none)"),
      opt("data-dir", &Params::data_dir, {"decompose", "eval", "sweep", "sensitivity", "allocate", "generate", "forward"}, "directory of the benchmark data (the layout of ../shared/data)"),
      aliased(opt("batch-size", &Params::batch_size, {"eval", "sweep", "allocate"}, "examples prefilled together (multiple choice) / sequences per pass (classification)"),
              {"batch_size"}),
      opt("batch-tokens", &Params::batch_tokens, {"eval", "sweep", "allocate"},
          "on a GPU: tokens per forward pass; contexts are sorted by length and batched up to it (--batch-size is then a minimum)"),
      flag("no-context-reuse", &Params::no_context_reuse, {"eval", "allocate"},
           "score every choice from scratch instead of reusing the context's attention cache (same numbers, slower)"),
      opt("latency-batch", &Params::latency_batch, {"eval", "sweep", "allocate"}, "latency task: sequences per forward pass"),
      opt("latency-tokens", &Params::latency_tokens, {"eval", "sweep", "allocate"}, "latency task: tokens per sequence"),
      opt("latency-reps", &Params::latency_reps, {"eval", "sweep", "allocate"}, "latency task: timed passes (median reported, after 2 warm-up passes)"),
      opt("fidelity-text", &Params::fidelity_text, {"eval", "sweep", "allocate"},
          "fidelity task: text file the base and configured models are compared on (default: WikiText-2 raw test)"),
      aliased(opt("output-path", &Params::output_path, {"eval"},
                  "also write the results as lm-evaluation-harness does: a directory (DIR/MODEL_SANITIZED/results_DATE.json) "
                  "or a .json path (STEM_DATE.json beside it)"),
              {"output_path"}),
      aliased(flag("log-samples", &Params::log_samples, {"eval"},
                   "with --output-path: one line per document (requests, log-likelihoods, metrics) in samples_TASK_DATE.jsonl "
                   "beside the results, as lm-eval's --log_samples"),
              {"log_samples"}),
      opt("experiment", &Params::experiment, {"sweep"},
          "experiment file (INI, the option names of this command as keys; the command line overrides it); also the first positional argument"),
      per_command(opt("db", &Params::db, {"sweep", "pareto", "studies", "export", "report", "allocate"},
                      "results store to read: a SQLite file written by rankscope sweep, or a PostgreSQL server "
                      "postgresql://USER@HOST:PORT/DBNAME (PG* variables fill in what it leaves out)"),
                  {{"sweep", "results store: a SQLite file (created when absent), or a PostgreSQL server "
                             "postgresql://USER@HOST:PORT/DBNAME shared by workers on several hosts (the schema is created "
                             "when absent); or `db =` in the experiment file"}}),
      per_command(opt("study", &Params::study, {"sweep", "pareto", "studies", "export", "report", "db", "allocate"}, "study name"),
                  {{"sweep", "study name (default: the experiment file's name without .ini)"},
                   {"studies", "the study to --delete or --rename"},
                   {"db", "copy only this study (default: every study)"}}),
      one_of(opt("strategy", &Params::strategy, {"sweep"},
                 "search strategy: list | exhaustive | random | greedy | evolutionary | guided"),
             {"list", "exhaustive", "random", "greedy", "evolutionary", "guided"}),
      opt("budget", &Params::budget, {"sweep"},
          "total configurations the study evaluates (rerun with a larger budget to extend it)"),
      opt("population", &Params::population, {"sweep"}, "evolutionary: population size"),
      opt("batch", &Params::batch, {"sweep"}, "guided: configurations proposed at a time (fewer: each result informs the next)"),
      opt("initial", &Params::initial, {"sweep"}, "guided: configurations chosen from the proxies alone before the model is fitted"),
      opt("generations", &Params::generations, {"sweep"}, "evolutionary: generations after the first (0 = until the budget)"),
      opt("mutation-rate", &Params::mutation_rate, {"sweep"}, "evolutionary: per-gene mutation probability (-1 = 1 / genes)"),
      opt("crossover-rate", &Params::crossover_rate, {"sweep"}, "evolutionary: probability that two parents cross over"),
      per_command(opt("objectives", &Params::objectives, {"sweep", "pareto", "report", "allocate"},
                      "objectives as METRIC:min|max, comma-separated, e.g. tinystories.ppl:min,size.params:min "
                      "(default: the study's)"),
                  {{"sweep", "what the study optimises: METRIC:min|max, comma-separated, e.g. "
                             "tinystories.ppl:min,size.params:min; or `objectives =` in the experiment file"}}),
      opt("constraints", &Params::constraints, {"sweep"}, "constraints, e.g. size.reduction_pct>=9 (comma-separated; ops >= <= > <)"),
      per_command(opt("target", &Params::target, {"sweep", "allocate"},
                      "greedy: stop when every METRIC>=VALUE is reached, e.g. size.reduction_pct>=20"),
                  {{"allocate", "the size to reach: size.reduction_pct=P or size.params=N"}}),
      opt("evaluate", &Params::evaluate, {"allocate"},
          "tasks to evaluate the allocation and the uniform-rank configuration of the same size on, e.g. tinystories,size"),
      flag("prune", &Params::prune, {"sweep"},
           "early stopping: stop a configuration's perplexity, accuracy (acc, acc_norm) or fidelity (kl, top1) task at "
           "1/8, 1/4, 1/2 or 3/4 of its windows, documents or inputs once the optimistic end of its 3-sd interval is "
           "dominated by a complete evaluation (sizes exact); stored with status pruned"),
      flag("include-base", &Params::include_base, {"sweep"}, "evaluate the dense model as the baseline: first in a list, in the first population of evolutionary"),
      opt("stale-after", &Params::stale_after, {"sweep"},
          "seconds without a heartbeat after which another process's claim is taken over"),
      opt("where", &Params::where, {"pareto", "export", "report"},
          "filter on stored metrics: METRIC OP NUMBER conditions (OP one of >= <= > <) joined by 'and' (or ','), "
          "e.g. \"size.reduction_pct>=9 and arc_easy.acc>0.5\""),
      flag("include-pruned", &Params::include_pruned, {"pareto", "report"},
           "let evaluations stopped early (status pruned: metrics on a prefix of the data) join the front; by default "
           "only complete ones (done) do"),
      flag("delete", &Params::delete_study, {"studies"},
           "delete the study named by --study and everything recorded for it"),
      opt("rename", &Params::rename, {"studies"}, "rename the study named by --study to this name"),
      one_of(opt("action", &Params::action, {"db"}, "what to do: copy (also the first positional argument)"), {"copy"}),
      opt("from", &Params::from, {"db"}, "copy: the store to read (a SQLite file or postgresql://...)"),
      opt("to", &Params::to, {"db"}, "copy: the store to write (created when absent)"),
      [] {
        auto def = one_of(per_command(opt("format", &Params::format, {"pareto", "export", "decompose"}, "output format: table | csv | json"),
                                      {{"export", "output format: csv | json"},
                                       {"decompose", "checkpoint layout: rankscope (factors as U, core, V tensors) | hf (the same, plus a "
                                                     "modeling file: transformers loads it with trust_remote_code=True and runs it factored)"}}),
                          {"table", "csv", "json"});
        def.command_choices["export"] = {"csv", "json"};
        def.command_default["export"] = "csv";
        def.command_choices["decompose"] = {"rankscope", "hf"};
        def.command_default["decompose"] = "rankscope";
        return def;
      }(),
      per_command(opt("ref", &Params::ref, {"pareto", "report", "sweep"},
                      "hypervolume reference point, one value per objective (default: the worst value of each objective plus 10 % of its range)"),
                  {{"sweep", "guided: the hypervolume reference point, one value per objective in their order: worse than "
                             "this counts for nothing (default: a constraint's bound on the objective, else its worst "
                             "measured value plus 10 % of its range)"}}),
  };
  return defs;
}

const std::string& OptionDef::help_for(const std::string& command) const {
  const auto it = command_help.find(command);
  return it != command_help.end() ? it->second : help;
}

const std::vector<std::string>& OptionDef::choices_for(const std::string& command) const {
  const auto it = command_choices.find(command);
  return it != command_choices.end() ? it->second : choices;
}

po::options_description options_for(const std::string& command, Params& params) {
  po::options_description desc("Options");
  desc.add_options()("help,h", "show this help");
  for (const auto& def : option_defs()) {
    if (def.commands.contains(command)) def.declare(def, desc, params, command);
  }
  return desc;
}

namespace {

// The options `command` takes, as candidates for a suggestion.
std::vector<std::string> option_names(const std::string& command) {
  std::vector<std::string> names = {"--help"};
  for (const auto& def : option_defs()) {
    if (!def.commands.contains(command)) continue;
    names.push_back("--" + def.name);
    for (const auto& alias : def.aliases) names.push_back("--" + alias);
  }
  return names;
}

// Renames every other spelling in `parsed` to the option it spells (num_fewshot -> num-fewshot),
// so that it is stored, checked and written as that option. Returns the error when one source
// (the command line, or an experiment file) gives two spellings of one option, else "".
// `dashes`: how the source writes names ("--" on the command line, "" in an experiment file).
std::string resolve_aliases(const std::string& command, po::parsed_options& parsed, const std::string& dashes) {
  std::map<std::string, std::string> option_of;  // alias -> option
  for (const auto& def : option_defs()) {
    if (!def.commands.contains(command)) continue;
    for (const auto& alias : def.aliases) option_of[alias] = def.name;
  }
  std::map<std::string, std::string> spelling;  // option -> the first spelling given
  for (auto& o : parsed.options) {
    const auto alias = option_of.find(o.string_key);
    const std::string name = alias == option_of.end() ? o.string_key : alias->second;
    const auto [first, inserted] = spelling.emplace(name, o.string_key);
    if (!inserted && first->second != o.string_key) {
      return dashes + first->second + " and " + dashes + o.string_key + " are two spellings of one option: give it once";
    }
    o.string_key = name;
  }
  return "";
}

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// po's message for an unknown option, with the closest option of the command when there is one.
std::string unknown_option_message(const po::unknown_option& e, const std::string& command) {
  std::string name = e.get_option_name();
  if (!name.starts_with("-")) name = "--" + name;  // experiment files name options without dashes
  return e.what() + did_you_mean(name, option_names(command));
}

// The first enumeration value of `vm` outside its choices, as a message; "" when there is none.
// Only values given (not defaults) are checked.
std::string check_choices(const std::string& command, const po::variables_map& vm) {
  for (const auto& def : option_defs()) {
    const auto& choices = def.choices_for(command);
    if (choices.empty() || !def.commands.contains(command) || !vm.count(def.name) || vm[def.name].defaulted()) continue;
    const auto& value = vm[def.name].as<std::string>();
    if (std::find(choices.begin(), choices.end(), value) != choices.end()) continue;
    return "--" + def.name + ": unknown value '" + value + "'" + did_you_mean(value, choices) + " (one of " + joined(choices) + ")";
  }
  return "";
}

bool given(const po::variables_map& vm, const std::string& name) { return vm.count(name) && !vm[name].defaulted(); }

// The first of command.required that is missing, as a message; "" when all are there.
std::string check_required(const Command& command, const po::variables_map& vm) {
  for (const auto& entry : command.required) {
    std::vector<std::string> alternatives;
    for (size_t start = 0; start <= entry.size();) {
      const size_t bar = std::min(entry.find('|', start), entry.size());
      alternatives.push_back(entry.substr(start, bar - start));
      start = bar + 1;
    }
    if (std::any_of(alternatives.begin(), alternatives.end(), [&](const auto& a) { return given(vm, a); })) continue;
    if (alternatives.size() == 1 && alternatives[0] == "model" && command.name != "sweep") {
      return "MODEL is required (a model directory, or a config.json for shapes only)";
    }
    std::string names;
    for (size_t i = 0; i < alternatives.size(); ++i) {
      names += (i == 0 ? "" : i + 1 == alternatives.size() ? " or " : ", ") + ("--" + alternatives[i]);
    }
    std::string message = names + " is required";
    if (command.name == "sweep") message += " (or `" + alternatives[0] + " =` in the experiment file)";
    return message;
  }
  return "";
}

}  // namespace

std::optional<int> parse_command_line(const Command& command, int argc, const char* const* argv, Params& params) {
  auto desc = options_for(command.name, params);
  po::positional_options_description positional;
  if (desc.find_nothrow("experiment", false) != nullptr) {
    positional.add("experiment", 1);
  } else if (desc.find_nothrow("action", false) != nullptr) {
    positional.add("action", 1);
  } else if (desc.find_nothrow("model", false) != nullptr) {
    positional.add("model", 1);
  }
  const auto usage_error = [&](const std::string& message) {
    std::cerr << "rankscope " << command.name << ": " << message << " (usage: rankscope " << command.name << " "
              << command.usage << "; see --help)\n";
    return 2;
  };
  po::variables_map vm;
  try {
    auto parsed = po::command_line_parser(argc, argv).options(desc).positional(positional).run();
    if (const auto message = resolve_aliases(command.name, parsed, "--"); !message.empty()) return usage_error(message);
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << "usage: rankscope " << command.name << " " << command.usage << "\n"
                << command.summary << "\n\n" << desc;
      return 0;
    }
    if (const auto message = check_choices(command.name, vm); !message.empty()) return usage_error(message);
    // An experiment file holds the same options as INI keys; values already given on the
    // command line win (program_options keeps the first value stored), lists are merged. Its
    // mistakes are bad input (exit 1, naming the file), not usage errors.
    if (vm.count("experiment")) {
      const auto file = vm["experiment"].as<std::string>();
      const auto bad_file = [&](const std::string& message) {
        std::cerr << "rankscope " << command.name << ": " << file << ": " << message << "\n";
        return 1;
      };
      try {
        std::error_code ec;
        if (std::filesystem::exists(file, ec) && !std::filesystem::is_regular_file(file, ec))
          throw po::error("not a regular file");
        std::ifstream in(file);
        if (!in) throw po::error("cannot read the file");
        auto parsed = po::parse_config_file(in, desc);
        if (const auto message = resolve_aliases(command.name, parsed, ""); !message.empty()) throw po::error(message);
        po::store(parsed, vm);
      } catch (const po::unknown_option& e) {
        return bad_file(unknown_option_message(e, command.name));
      } catch (const po::error& e) {
        return bad_file(e.what());
      }
      if (const auto message = check_choices(command.name, vm); !message.empty()) return bad_file(message);
    }
    po::notify(vm);
    if (params.configs.size() > 1 && command.name != "sweep") {
      throw po::error("--config given more than once");
    }
    if (!params.configs.empty()) params.config = params.configs.front();
    if (const auto message = check_required(command, vm); !message.empty()) return usage_error(message);
    if (command.check) {
      if (const auto message = command.check(params); !message.empty()) return usage_error(message);
    }
  } catch (const po::unknown_option& e) {
    return usage_error(unknown_option_message(e, command.name));
  } catch (const po::error& e) {
    return usage_error(e.what());
  }
  return std::nullopt;
}

}  // namespace rankscope::cli
