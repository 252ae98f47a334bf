// The subcommands, one file each.
#pragma once

#include "cli/options.hpp"
#include "core/factor_cache.hpp"

namespace rankscope::cli {

int run_info(const Params& params);
int run_generate(const Params& params);
int run_classify(const Params& params);
int run_forward(const Params& params);
int run_config(const Params& params);
int run_space(const Params& params);
int run_decompose(const Params& params);
int run_eval(const Params& params);

// --svd-backend as a factor-cache policy (decompose, eval).
SvdPolicy svd_policy(const std::string& backend);

}  // namespace rankscope::cli
