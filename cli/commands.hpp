// The subcommands, one file each.
#pragma once

#include "cli/options.hpp"

namespace rankscope::cli {

int run_info(const Params& params);
int run_generate(const Params& params);
int run_classify(const Params& params);
int run_forward(const Params& params);
int run_config(const Params& params);
int run_space(const Params& params);
int run_decompose(const Params& params);

}  // namespace rankscope::cli
