// rankscope generate MODEL [--config STR] --prompt TEXT --tokens N: greedy continuation, streamed to
// stdout, of the model as stored or decomposed by --config.
#include <chrono>
#include <iostream>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/models/llama.hpp"

namespace rankscope::cli {

int run_generate(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.tokens < 0) fail("--tokens must be >= 0, got {}", params.tokens);
  set_num_threads(params.threads);
  Model base = load_model(params.model);
  place_model(base, params);
  if (base.config.arch != Arch::llama) {
    fail("{}: generate needs a causal LM; {} is not one (try classify)", params.model, base.config.architecture);
  }
  if (!base.has_weights) fail("{}: no weights (shapes-only config.json); cannot generate", params.model);
  const auto& tok = base.require_tokenizer();
  const auto decomposed = configured_model(base, parse_config(params.config, base.config), params);
  const Model& model = decomposed ? *decomposed : base;
  std::vector<TokenId> prompt;
  if (tok.special().bos) {
    prompt.push_back(*tok.special().bos);
  } else if (model.config.bos_token_id) {
    prompt.push_back(static_cast<TokenId>(*model.config.bos_token_id));
  }
  const auto text_ids = tok.encode(params.prompt);
  prompt.insert(prompt.end(), text_ids.begin(), text_ids.end());
  if (prompt.empty()) fail("{}: empty prompt and no BOS token to start from", params.model);

  std::cout << params.prompt << std::flush;
  // Stream: decode prompt+generated so far and print what is new (pieces may merge across tokens).
  std::vector<TokenId> all(text_ids);
  std::string printed = tok.decode(all);
  const auto start = std::chrono::steady_clock::now();
  const auto generated = llama_generate_greedy(model, prompt, params.tokens, !params.ignore_eos, [&](TokenId next) {
    all.push_back(next);
    const std::string text = tok.decode(all);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::cout << text.substr(printed.size()) << std::flush;
    }
    printed = text;
  });
  const auto n_generated = static_cast<int64_t>(generated.size());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "\n";
  std::cerr << fmt::format("[{} prompt tokens, {} generated in {:.3f} s: {:.1f} tokens/s]\n", prompt.size(),
                           n_generated, seconds, seconds > 0 ? static_cast<double>(n_generated) / seconds : 0.0);
  return 0;
}

}  // namespace rankscope::cli
