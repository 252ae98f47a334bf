// rankscope config MODEL --canonical STR: a configuration string in its canonical form.
#include <iostream>

#include "cli/commands.hpp"
#include "core/space/config_string.hpp"
#include "core/base/error.hpp"
#include "core/io/model.hpp"

namespace rankscope::cli {

int run_config(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given (a model directory or config.json: it fixes layers, matrices and shapes)");
  const Model model = load_model(params.model, {.weights = false, .tokenizer = false});
  const Config config = parse_config(params.canonical, model.config);
  std::cout << encode_config(config, model.config) << "\n";
  return 0;
}

}  // namespace rankscope::cli
