#include "cli/commands.hpp"

namespace rankscope::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"info", "architecture, hyperparameters, decomposable matrices and parameter counts of a model",
       "MODEL [--config STR] [--json]", run_info},
      {"generate", "greedy text generation from a causal LM (smoke test)",
       "MODEL [--prompt TEXT] [--tokens N]", run_generate},
      {"classify", "label probabilities of a BERT sequence classifier (smoke test)",
       "MODEL --text TEXT [--text-pair TEXT]", run_classify},
      {"forward", "write a model's output for one token sequence as a NumPy .npy file",
       "MODEL --ids 1,403,407 [--type-ids 0,0,0] [--hidden] --out FILE.npy", run_forward},
      {"config", "print a configuration string in canonical form (checked against MODEL)",
       "MODEL --canonical STR", run_config},
      {"space", "count, list, sample or index the points of a design space",
       "MODEL [--space paper|per-matrix|grouped] [--ranks 1] [--choices ...] [--list N | --sample N --seed S | --index I]",
       run_space},
      {"decompose", "decompose a model by a configuration and write the checkpoint",
       "MODEL --config STR --out DIR [--dense] [--cache-dir DIR]", run_decompose},
      {"eval", "evaluate a model (optionally decomposed by --config) on benchmark tasks, perplexity, fidelity, size and latency",
       "MODEL [--config STR] --tasks T1,T2 [--limit N] [--num-fewshot K] [--seed S] [--ctx N] "
       "[--ppl-protocol llamacpp|chunks|rolling] [--text FILE] [--json]",
       run_eval},
      {"sweep", "run or continue a study: a search strategy proposes configurations, each is decomposed, evaluated and stored",
       "EXPERIMENT.ini [--db FILE] [--study NAME] [--budget N] [any option of the file]", run_sweep},
      {"pareto", "the Pareto front of a study over any objectives, with its hypervolume",
       "--db FILE --study NAME --objectives A:min,B:max [--where EXPR] [--format table|csv|json] [--ref R1,R2]", run_pareto},
      {"studies", "the studies of a results database with their counts and best points", "--db FILE [--json]", run_studies},
      {"export", "every evaluation of a study with all its metrics", "--db FILE --study NAME [--format csv|json] [--where EXPR]",
       run_export},
      {"report", "a Pareto-front plot (SVG) and a markdown table of a study", "--db FILE --study NAME --out DIR [--objectives ...]",
       run_report},
  };
  return table;
}

}  // namespace rankscope::cli
