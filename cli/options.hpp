// Command-line options of every subcommand. Each option is declared once in options.cpp, beside
// its help text and default, and writes one field of Params; a subcommand lists which it takes.
// Experiment files (later) use the same names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "evaluators/limit.hpp"

namespace rankscope {
struct CalibrationOptions;  // evaluators/calibration.hpp
struct Model;               // core/io/model.hpp
}

namespace rankscope::cli {

struct Params {
  std::string model;          // positional MODEL
  int threads = 0;            // 0 = all cores
  std::string device = "auto";  // cpu | cuda | cuda:N | auto
  std::string dtype = "auto";   // GPU compute type: auto (the checkpoint's) | fp32 | bf16 | fp16
  bool json = false;
  // generate
  std::string prompt;
  int64_t tokens = 64;
  bool ignore_eos = false;
  // classify
  std::string text;
  std::string text_pair;
  // forward (and --config, with the decomposition options, on generate and forward too)
  std::string ids;
  std::string type_ids;
  std::string out;
  bool hidden = false;
  // info, decompose, config
  std::string config;
  std::string canonical;
  // space
  std::string space = "paper";
  std::string ranks = "1";
  std::string choices = "dense,50%,25%,12.5%,1";
  int64_t group_size = 4;
  bool fused = false;  // space/sweep: a fused model's fused cells as knobs (SpaceSpec::fused)
  std::string method = "tucker";
  int64_t list = 0;
  int64_t sample = 0;
  uint64_t seed = 0;
  std::string index;
  // decompose
  bool dense = false;
  std::string cache_dir = "rankscope-cache";
  std::string svd_backend = "lapack";
  // decompose, eval, sweep: calibration of the activation-aware methods (asvd, whiten)
  std::string calib;
  int64_t calib_samples = 64;
  int64_t calib_ctx = 256;
  uint64_t calib_seed = 0;
  double asvd_alpha = 0.5;
  // eval
  std::string tasks;
  Limit limit;  // a number of documents (windows), or a fraction of them; -1 = all
  int64_t num_fewshot = 0;
  int64_t ctx = 0;
  std::string ppl_protocol;
  std::string name;
  bool bos = false;
  std::string data_dir = "../shared/data";
  int64_t batch_size = 8;
  int64_t batch_tokens = 16384;
  bool no_context_reuse = false;
  int64_t latency_batch = 1;
  int64_t latency_tokens = 128;
  int64_t latency_reps = 10;
  std::string fidelity_text;
  std::string output_path;  // eval: lm-eval's results JSON (a directory, or a .json path)
  bool log_samples = false; // eval: lm-eval's per-document samples_<task>_<date>.jsonl beside it
  // sweep, pareto, studies, export, report
  std::string experiment;               // positional EXPERIMENT.ini of sweep
  std::vector<std::string> configs;     // every --config / config = line (sweep: the list)
  std::string db;
  std::string study;
  std::string strategy = "evolutionary";
  int64_t budget = 100;
  int64_t population = 16;
  int64_t batch = 4;    // guided
  int64_t initial = 4;  // guided
  int64_t generations = 0;
  double mutation_rate = -1.0;
  double crossover_rate = 0.9;
  std::string objectives;
  std::string constraints;
  std::string target;
  std::string evaluate;  // allocate: tasks to run the allocation and the uniform configuration on
  bool include_base = false;
  bool prune = false;  // sweep: early stopping of hopeless evaluations
  double stale_after = 600.0;
  std::string where;
  bool include_pruned = false;  // pareto, report: pruned evaluations (partial metrics) join the front
  bool delete_study = false;  // studies --study NAME --delete
  std::string rename;         // studies --study NAME --rename NEW
  // db
  std::string action;         // positional: copy
  std::string from, to;       // db copy --from A --to B
  std::string format = "table";
  std::string ref;
};

struct OptionDef {
  std::string name;                   // long name, without "--"
  std::set<std::string> commands;     // subcommands that accept it
  std::string help;                   // what it means to every command not in command_help
  // Other spellings of the same option (lm-evaluation-harness's: num_fewshot for num-fewshot),
  // on the command line and in experiment files alike; each is renamed to `name` when parsed, so
  // it writes the same field, and giving two spellings of one option is an error.
  std::vector<std::string> aliases;
  std::map<std::string, std::string> command_help;     // where its meaning differs by command
  std::map<std::string, std::string> command_default;  // a default other than Params{}'s, as written
  std::vector<std::string> choices;                    // an enumeration's values (empty: any value)
  std::map<std::string, std::vector<std::string>> command_choices;  // where they differ by command
  // Declares the option as `command` takes it (help, default) into `desc`, bound to its Params
  // field; called as def.declare(def, desc, params, command).
  std::function<void(const OptionDef& self, boost::program_options::options_description& desc, Params& params,
                     const std::string& command)>
      declare;

  const std::string& help_for(const std::string& command) const;
  const std::vector<std::string>& choices_for(const std::string& command) const;
};

// Every option of every subcommand.
const std::vector<OptionDef>& option_defs();

// The options of one subcommand, bound to `params` (plus --help).
boost::program_options::options_description options_for(const std::string& command, Params& params);

struct Command {
  std::string name;
  std::string summary;
  std::string usage;  // after "rankscope NAME"
  std::function<int(const Params&)> run;
  // Options that must be given (on the command line or, for sweep, in the experiment file); "a|b":
  // one of them. A missing one is a usage error.
  std::vector<std::string> required = {};
  // Further checks of the parsed options that are usage errors (e.g. an unknown task name): returns
  // the one-line message, or "" when all is well.
  std::function<std::string(const Params&)> check = nullptr;
};
const std::vector<Command>& commands();

// --calib, --calib-samples, --calib-ctx, --calib-seed and --data-dir (decompose, eval, sweep) as
// the options of evaluators/calibration.hpp, caching under `cache_dir`. Defined in cmd_decompose.cpp.
CalibrationOptions calibration_options(const Params& params, const std::filesystem::path& cache_dir);

// Puts `model` on the device --device and --dtype name (model.backend). Defined in commands.cpp.
void place_model(Model& model, const Params& params);

// Parses argv for `command` into params. Returns nullopt to go on, or the exit code to stop
// with: 0 after --help, 2 after a usage error (which prints one line).
std::optional<int> parse_command_line(const Command& command, int argc, const char* const* argv, Params& params);

}  // namespace rankscope::cli
