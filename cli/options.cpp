#include "cli/options.hpp"

#include <fstream>
#include <iostream>

namespace rankscope::cli {

namespace po = boost::program_options;

namespace {

// An option writing Params::*field, with the default taken from a default-constructed Params.
template <typename T>
OptionDef opt(std::string name, T Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), help, nullptr};
  def.add = [name, field, help](po::options_description& desc, Params& params) {
    auto* value = po::value<T>(&(params.*field));
    if constexpr (std::is_same_v<T, std::string>) {
      if (!(Params{}.*field).empty()) value->default_value(Params{}.*field);
    } else {
      value->default_value(Params{}.*field);
    }
    desc.add_options()(name.c_str(), value, help.c_str());
  };
  return def;
}

OptionDef flag(std::string name, bool Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), help, nullptr};
  def.add = [name, field, help](po::options_description& desc, Params& params) {
    desc.add_options()(name.c_str(), po::bool_switch(&(params.*field)), help.c_str());
  };
  return def;
}

// A repeatable option collecting every value (command line and experiment file) into a list.
OptionDef list_opt(std::string name, std::vector<std::string> Params::*field, std::set<std::string> commands, std::string help) {
  OptionDef def{name, std::move(commands), help, nullptr};
  def.add = [name, field, help](po::options_description& desc, Params& params) {
    desc.add_options()(name.c_str(), po::value<std::vector<std::string>>(&(params.*field))->composing(), help.c_str());
  };
  return def;
}

const std::set<std::string> kModelCommands = {"info", "generate", "classify", "forward", "config", "space", "decompose", "eval", "sweep"};

}  // namespace

const std::vector<OptionDef>& option_defs() {
  static const std::vector<OptionDef> defs = {
      opt("model", &Params::model, kModelCommands,
          "model directory (config.json + safetensors) or a config.json for shapes only; also the first positional argument"),
      opt("threads", &Params::threads, {"generate", "classify", "forward", "decompose", "eval", "sweep"}, "threads for BLAS and OpenMP (0 = all cores)"),
      flag("json", &Params::json, {"info", "eval", "studies"}, "print JSON instead of a table"),
      opt("prompt", &Params::prompt, {"generate"}, "prompt text (empty: start from BOS alone)"),
      opt("tokens", &Params::tokens, {"generate"}, "number of tokens to generate (greedy)"),
      flag("ignore-eos", &Params::ignore_eos, {"generate"}, "keep generating after the end-of-sequence token"),
      opt("text", &Params::text, {"classify", "eval"}, "classify: text to classify; eval: a text file to score perplexity on (metric FILESTEM.ppl)"),
      opt("text-pair", &Params::text_pair, {"classify"}, "second segment for sentence-pair tasks (token type 1)"),
      opt("ids", &Params::ids, {"forward"}, "comma-separated token ids, e.g. 1,403,407 (no special tokens are added)"),
      opt("type-ids", &Params::type_ids, {"forward"}, "comma-separated token type ids (BERT; default all 0)"),
      opt("out", &Params::out, {"forward", "decompose", "report"}, "output: .npy file (forward), checkpoint directory (decompose), report directory (report)"),
      flag("hidden", &Params::hidden, {"forward"}, "BERT: write the last hidden states [T, hidden] instead of the head's logits"),
      list_opt("config", &Params::configs, {"info", "decompose", "eval", "sweep"},
               "configuration string, e.g. \"L2,17,31:all=1\" or \"L0-15:q,k=64;L16-31:mlp=25%@svd\" (docs/config-strings.md); "
               "sweep: one per configuration of the list strategy (repeatable)"),
      opt("canonical", &Params::canonical, {"config"}, "configuration string to print in canonical form"),
      opt("space", &Params::space, {"space", "sweep"}, "design space: paper | per-matrix | grouped"),
      opt("ranks", &Params::ranks, {"space", "sweep"}, "paper space: comma-separated ranks (integers or percentages)"),
      opt("choices", &Params::choices, {"space", "sweep"}, "per-matrix/grouped spaces: comma-separated choices, dense allowed"),
      opt("group-size", &Params::group_size, {"space", "sweep"}, "grouped space: consecutive layers tied together"),
      opt("method", &Params::method, {"space", "sweep"}, "decomposition method of the space's points: tucker | svd | asvd | whiten (asvd, whiten: with --calib; docs/methods.md)"),
      opt("list", &Params::list, {"space"}, "print the first N points in index order"),
      opt("sample", &Params::sample, {"space"}, "print N points drawn uniformly (with --seed)"),
      opt("seed", &Params::seed, {"space", "eval", "sweep"}, "random seed: --sample (space), few-shot draws (eval)"),
      opt("index", &Params::index, {"space"}, "print the point at this index (a decimal integer of any size)"),
      flag("dense", &Params::dense, {"decompose"}, "write reconstructed dense weights (an ordinary Hugging Face checkpoint)"),
      opt("cache-dir", &Params::cache_dir, {"decompose", "eval", "sweep"}, "cache directory: full SVDs (factor cache) and the base model's outputs for fidelity, reused across runs"),
      opt("svd-backend", &Params::svd_backend, {"decompose", "eval", "sweep"}, "factorization: lapack | eigen (full SVD), randomized (rank-K randomized SVD, K the next power of two >= max(rank, 64), when K <= min(m, n)/4)"),
      opt("calib", &Params::calib, {"decompose", "eval", "sweep"},
          "calibration data of the activation-aware methods @asvd and @whiten: a text file, a .tsv file (its sentence "
          "column) or a task name (tinystories, sst2, ...); samples come from its second half (docs/methods.md)"),
      opt("calib-samples", &Params::calib_samples, {"decompose", "eval", "sweep"},
          "calibration: sequences drawn (causal LM: windows of --calib-ctx tokens; BERT: sentences)"),
      opt("calib-ctx", &Params::calib_ctx, {"decompose", "eval", "sweep"},
          "calibration: tokens per window (causal LM, BOS added) / at most per sentence (BERT)"),
      opt("calib-seed", &Params::calib_seed, {"decompose", "eval", "sweep"}, "calibration: seed of the sample draw"),
      opt("asvd-alpha", &Params::asvd_alpha, {"decompose", "eval", "sweep"},
          "@asvd: exponent alpha of the activation scaling diag(mean |x|)^alpha"),
      opt("tasks", &Params::tasks, {"eval", "sweep"},
          "comma-separated tasks: arc_easy, arc_challenge, hellaswag, winogrande, piqa, boolq, openbookqa, mmlu, truthfulqa_mc1, "
          "truthfulqa_mc2, lambada_openai, sst2, mrpc, wikitext2, tinystories, size, latency, fidelity, or a path to a .jsonl task "
          "(docs/tasks.md)"),
      opt("limit", &Params::limit, {"eval", "sweep"},
          "first N documents of each task in file order (MMLU: per subject; rolling perplexity: whole documents); llamacpp/chunks perplexity and fidelity: first N windows (-1 = all)"),
      opt("num-fewshot", &Params::num_fewshot, {"eval", "sweep"}, "few-shot examples per prompt (drawn with --seed; MMLU: the first k of dev)"),
      opt("ctx", &Params::ctx, {"eval", "sweep"}, "perplexity/fidelity window: text tokens per window (chunks, fidelity), positions per chunk with BOS (llamacpp), positions per window with the prefix token (rolling); 0 = the protocol's default (docs/evaluation.md)"),
      opt("ppl-protocol", &Params::ppl_protocol, {"eval", "sweep"},
          "perplexity protocol for every perplexity task: llamacpp | chunks | rolling (default: per task, docs/tasks.md)"),
      opt("name", &Params::name, {"eval"}, "task name of the --text perplexity (default: the file's stem)"),
      flag("bos", &Params::bos, {"eval", "sweep"}, "prepend BOS to every multiple-choice context (lm-eval 0.4.0 adds none)"),
      opt("data-dir", &Params::data_dir, {"decompose", "eval", "sweep"}, "directory of the benchmark data (the layout of ../shared/data)"),
      opt("batch-size", &Params::batch_size, {"eval", "sweep"}, "examples prefilled together (multiple choice) / sequences per pass (classification)"),
      flag("no-context-reuse", &Params::no_context_reuse, {"eval"},
           "score every choice from scratch instead of reusing the context's attention cache (same numbers, slower)"),
      opt("latency-batch", &Params::latency_batch, {"eval", "sweep"}, "latency task: sequences per forward pass"),
      opt("latency-tokens", &Params::latency_tokens, {"eval", "sweep"}, "latency task: tokens per sequence"),
      opt("latency-reps", &Params::latency_reps, {"eval", "sweep"}, "latency task: timed passes (median reported, after 2 warm-up passes)"),
      opt("fidelity-text", &Params::fidelity_text, {"eval", "sweep"},
          "fidelity task: text file the base and configured models are compared on (default: WikiText-2 raw test)"),
      opt("experiment", &Params::experiment, {"sweep"},
          "experiment file (INI, the option names of this command as keys; the command line overrides it); also the first positional argument"),
      opt("db", &Params::db, {"sweep", "pareto", "studies", "export", "report"}, "results database (SQLite; created when absent)"),
      opt("study", &Params::study, {"sweep", "pareto", "export", "report"}, "study name"),
      opt("strategy", &Params::strategy, {"sweep"}, "search strategy: list | exhaustive | random | greedy | evolutionary"),
      opt("budget", &Params::budget, {"sweep"},
          "total configurations the study evaluates (rerun with a larger budget to extend it)"),
      opt("population", &Params::population, {"sweep"}, "evolutionary: population size"),
      opt("generations", &Params::generations, {"sweep"}, "evolutionary: generations after the first (0 = until the budget)"),
      opt("mutation-rate", &Params::mutation_rate, {"sweep"}, "evolutionary: per-gene mutation probability (-1 = 1 / genes)"),
      opt("crossover-rate", &Params::crossover_rate, {"sweep"}, "evolutionary: probability that two parents cross over"),
      opt("objectives", &Params::objectives, {"sweep", "pareto", "report"},
          "objectives as METRIC:min|max, comma-separated, e.g. tinystories.ppl:min,size.params:min"),
      opt("constraints", &Params::constraints, {"sweep"}, "constraints, e.g. size.reduction_pct>=9 (comma-separated; ops >= <= > <)"),
      opt("target", &Params::target, {"sweep"}, "greedy: stop when every METRIC>=VALUE is reached, e.g. size.reduction_pct>=20"),
      flag("include-base", &Params::include_base, {"sweep"}, "evaluate the dense model as the baseline: first in a list, in the first population of evolutionary"),
      opt("stale-after", &Params::stale_after, {"sweep"},
          "seconds without a heartbeat after which another process's claim is taken over"),
      opt("where", &Params::where, {"pareto", "export", "report"},
          "filter on stored metrics, e.g. \"size.reduction_pct>=9 and arc_easy.acc>0.5\""),
      opt("format", &Params::format, {"pareto", "export"}, "output format: table | csv | json (export: csv | json)"),
      opt("ref", &Params::ref, {"pareto", "report"},
          "hypervolume reference point, one value per objective (default: the worst value of each objective plus 10 % of its range)"),
  };
  return defs;
}

po::options_description options_for(const std::string& command, Params& params) {
  po::options_description desc("Options");
  desc.add_options()("help,h", "show this help");
  for (const auto& def : option_defs()) {
    if (def.commands.contains(command)) def.add(desc, params);
  }
  return desc;
}

std::optional<int> parse_command_line(const Command& command, int argc, const char* const* argv, Params& params) {
  auto desc = options_for(command.name, params);
  po::positional_options_description positional;
  if (desc.find_nothrow("experiment", false) != nullptr) {
    positional.add("experiment", 1);
  } else if (desc.find_nothrow("model", false) != nullptr) {
    positional.add("model", 1);
  }
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).positional(positional).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: rankscope " << command.name << " " << command.usage << "\n"
                << command.summary << "\n\n" << desc;
      return 0;
    }
    // An experiment file holds the same options as INI keys; values already given on the
    // command line win (program_options keeps the first value stored), lists are merged.
    if (vm.count("experiment")) {
      const auto file = vm["experiment"].as<std::string>();
      try {
        std::ifstream in(file);
        if (!in) throw po::error("cannot read the file");
        po::store(po::parse_config_file(in, desc), vm);
      } catch (const po::error& e) {
        std::cerr << "rankscope " << command.name << ": " << file << ": " << e.what() << "\n";
        return 1;
      }
    }
    po::notify(vm);
    if (params.configs.size() > 1 && command.name != "sweep") {
      throw po::error("--config given more than once");
    }
    if (!params.configs.empty()) params.config = params.configs.front();
  } catch (const po::error& e) {
    std::cerr << "rankscope " << command.name << ": " << e.what() << " (usage: rankscope " << command.name
              << " " << command.usage << "; see --help)\n";
    return 2;
  }
  return std::nullopt;
}

}  // namespace rankscope::cli
