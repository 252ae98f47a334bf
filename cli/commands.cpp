#include "cli/commands.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/base/suggest.hpp"
#include "core/decompose/decompose.hpp"
#include "core/io/model.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/tasks.hpp"

namespace rankscope::cli {

namespace {

// --tasks names built-in tasks, groups, mmlu_<subject>, the three measurements of the model itself,
// or .jsonl files: an unknown name is a usage error that suggests the closest task.
std::string check_tasks(const Params& params) {
  std::vector<std::string> known = task_names(params.data_dir);
  const bool subjects_known = std::any_of(known.begin(), known.end(), [](const auto& n) { return n.starts_with("mmlu_"); });
  for (const char* special : {"size", "latency", "fidelity"}) known.emplace_back(special);
  for (const auto& task : split_list(params.tasks)) {
    if (std::find(known.begin(), known.end(), task) != known.end() || std::filesystem::path(task).extension() == ".jsonl") {
      continue;
    }
    // Without the MMLU files the subjects are not known: loading the task says what is missing.
    if (!subjects_known && task.starts_with("mmlu_")) continue;
    return "--tasks: unknown task '" + task + "'" + did_you_mean(task, known) +
           " (see --help for the tasks; or a path to a .jsonl task file)";
  }
  return "";
}

// eval: the tasks, and --log-samples only beside the results it belongs to (as lm-eval requires).
std::string check_eval(const Params& params) {
  if (params.log_samples && params.output_path.empty()) {
    return "--log-samples (--log_samples) needs --output-path (--output_path): the samples are written beside the results";
  }
  return check_tasks(params);
}

}  // namespace

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"info", "architecture, hyperparameters, decomposable matrices and parameter counts of a model",
       "MODEL [--config STR] [--json]", run_info, {"model"}},
      {"generate", "greedy text generation from a causal LM (smoke test)",
       "MODEL [--config STR] [--prompt TEXT] [--tokens N]", run_generate, {"model"}},
      {"classify", "label probabilities of a BERT sequence classifier (smoke test)",
       "MODEL --text TEXT [--text-pair TEXT]", run_classify, {"model", "text"}},
      {"forward", "write a model's output for one token sequence as a NumPy .npy file",
       "MODEL [--config STR] --ids 1,403,407 [--type-ids 0,0,0] [--hidden] --out FILE.npy", run_forward, {"model", "ids", "out"}},
      {"config", "print a configuration string in canonical form (checked against MODEL)",
       "MODEL --canonical STR", run_config, {"model", "canonical"}},
      {"space", "count, list, sample or index the points of a design space",
       "MODEL [--space paper|per-matrix|grouped] [--ranks 1] [--choices ...] [--list N | --sample N --seed S | --index I]",
       run_space, {"model"}},
      {"decompose", "decompose a model by a configuration and write the checkpoint",
       "MODEL --config STR --out DIR [--dense] [--cache-dir DIR]", run_decompose, {"model", "out"}},
      {"sensitivity", "zero-cost sensitivity proxies: the output error of every matrix at every choice, from its spectrum",
       "MODEL [--choices 75%,50%,25%] [--method whiten --calib tinystories] [--out FILE.csv|.json] [--json]",
       run_sensitivity, {"model"}},
      {"allocate", "the configuration of least predicted damage at a size target (exact rank allocation from the proxies or a study's measured single-matrix sensitivities)",
       "MODEL --target size.reduction_pct=20 [--choices ...] [--method whiten --calib ...] [--evaluate TASKS]",
       run_allocate, {"model", "target"}},
      {"eval", "evaluate a model (optionally decomposed by --config) on benchmark tasks, perplexity, fidelity, size and latency",
       "MODEL [--config STR] --tasks T1,T2 [--limit N|F] [--num-fewshot K] [--seed S] [--ctx N] "
       "[--ppl-protocol llamacpp|chunks|rolling] [--text FILE] [--json] [--output-path PATH [--log-samples]]",
       run_eval, {"model", "tasks|text"}, check_eval},
      {"sweep", "run or continue a study: a search strategy proposes configurations, each is decomposed, evaluated and stored",
       "EXPERIMENT.ini [--db FILE] [--study NAME] [--budget N] [any option of the file]", run_sweep,
       {"model", "db", "tasks", "objectives"}, check_tasks},
      {"pareto", "the Pareto front of a study over any objectives, with its hypervolume",
       "--db FILE --study NAME --objectives A:min,B:max [--where EXPR] [--format table|csv|json] [--ref R1,R2]", run_pareto,
       {"db", "study"}},
      {"studies", "the studies of a results database with their counts and best points; delete or rename one", "--db FILE [--json] | --db FILE --study NAME --delete | --db FILE --study NAME --rename NEW", run_studies,
       {"db"}},
      {"export", "every evaluation of a study with all its metrics", "--db FILE --study NAME [--format csv|json] [--where EXPR]",
       run_export, {"db", "study"}},
      {"report", "a study as an interactive page (index.html), a Pareto-front plot (SVG) and a markdown table", "--db FILE --study NAME --out DIR [--objectives ...] [--model DIR]",
       run_report, {"db", "study", "out"}},
      {"db", "copy studies between results stores (SQLite files, PostgreSQL servers), merging without duplicates",
       "copy --from A --to B [--study NAME]", run_db, {"action", "from", "to"}},
  };
  return table;
}

std::unique_ptr<Model> configured_model(const Model& base, const Config& config, const Params& params,
                                        ActivationOptions* activation) {
  if (config.is_base()) return nullptr;
  FactorCache cache(params.cache_dir, svd_policy(params.svd_backend));
  ActivationOptions used = activation_options(base, config, calibration_options(params, params.cache_dir), params.asvd_alpha);
  DecomposeStats stats;
  auto model = std::make_unique<Model>(decompose_model(base, config, cache, &stats, used));
  for (const auto& note : stats.activation_notes) fmt::print(stderr, "calibration: {}\n", note);
  if (activation) *activation = std::move(used);
  return model;
}

void place_model(Model& model, const Params& params) {
  const Device device = parse_device(params.device);
  ComputeType type = ComputeType::f32;
  if (params.dtype != "auto") {
    type = parse_compute_type(params.dtype);
  } else if (model.storage_dtype == "BF16") {
    type = ComputeType::bf16;
  } else if (model.storage_dtype == "F16") {
    type = ComputeType::f16;
  }
  model.backend = make_backend(device, type);
  if (model.backend->device_kind() == "cpu" && params.dtype != "auto" && type != ComputeType::f32) {
    fail("--dtype {}: the CPU computes in fp32 (give --device cuda, or --dtype auto)", params.dtype);
  }
}

}  // namespace rankscope::cli
