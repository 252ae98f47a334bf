// The subcommands, one file each.
#pragma once

#include <memory>

#include "cli/options.hpp"
#include "core/decompose/decompose.hpp"
#include "core/space/design_space.hpp"
#include "core/decompose/factor_cache.hpp"
#include "evaluators/evaluator.hpp"

namespace rankscope::cli {

int run_info(const Params& params);
int run_generate(const Params& params);
int run_classify(const Params& params);
int run_forward(const Params& params);
int run_config(const Params& params);
int run_space(const Params& params);
int run_decompose(const Params& params);
int run_eval(const Params& params);
int run_sweep(const Params& params);
int run_pareto(const Params& params);
int run_studies(const Params& params);
int run_export(const Params& params);
int run_report(const Params& params);
int run_db(const Params& params);
int run_sensitivity(const Params& params);
int run_allocate(const Params& params);

// --svd-backend as a factor-cache policy (decompose, eval).
SvdPolicy svd_policy(const std::string& backend);
// The model --config describes, as eval, generate and forward run it: `base` decomposed by
// `config` (factors from --cache-dir by --svd-backend, @asvd/@whiten calibrated by the --calib
// options; calibration notes on stderr), exactly what `decompose --config` writes; nullptr for the
// base configuration. `activation`, when given, receives the calibration used (to record it).
std::unique_ptr<Model> configured_model(const Model& base, const Config& config, const Params& params,
                                        ActivationOptions* activation = nullptr);
// --space, --ranks, --choices, --group-size, --method as a design-space spec (space, sweep).
SpaceSpec space_spec(const Params& params);
// The evaluation options shared by eval and sweep (tasks, limit, few-shot, protocols, ...).
EvalRequest eval_request(const Params& params);
// Comma-separated list, items trimmed, empty items dropped.
std::vector<std::string> split_list(const std::string& text);

}  // namespace rankscope::cli
