// rankscope space MODEL --space KIND ...: exact size of a design space; list, sample or index it.
#include <random>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/space/design_space.hpp"
#include "core/base/error.hpp"
#include "core/io/model.hpp"

namespace rankscope::cli {

namespace {

void print_point(const DesignSpace& space, const ModelConfig& model, const std::vector<int64_t>& digits) {
  const auto config = space.to_config(digits);
  const auto text = encode_config(config, model);
  fmt::print("{}\t{}\n", space.index_of(digits).str(), text.empty() ? "(base model)" : text);
}

}  // namespace

SpaceSpec space_spec(const Params& params) {
  SpaceSpec spec;
  spec.kind = params.space;
  spec.method = parse_method(params.method);
  spec.group_size = params.group_size;
  spec.fused = params.fused;
  if (spec.kind == "paper") {
    for (const auto& c : parse_space_choices(params.ranks, spec.method)) {
      if (c.dense) fail("--ranks: 'dense' is not a rank of the paper space");
      spec.ranks.push_back(c.choice.rank);
    }
  } else {
    spec.choices = parse_space_choices(params.choices, spec.method);
  }
  return spec;
}

int run_space(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  const Model model = load_model(params.model, {.weights = false, .tokenizer = false});
  const SpaceSpec spec = space_spec(params);
  const auto space = make_design_space(model.config, spec);
  const BigInt count = space->count();
  fmt::print("space     {}\n", space->describe());
  fmt::print("points    {}\n", count.str());
  fmt::print("log2      {:.6f}\n", log2_big(count));
  if (params.list > 0) {
    fmt::print("first {} points (index, configuration):\n", params.list);
    for (BigInt i = 0; i < count && i < params.list; ++i) print_point(*space, model.config, space->point_at(i));
  }
  if (params.sample > 0) {
    fmt::print("{} points drawn uniformly, seed {} (index, configuration):\n", params.sample, params.seed);
    std::mt19937_64 rng(params.seed);
    for (int64_t i = 0; i < params.sample; ++i) print_point(*space, model.config, space->sample(rng));
  }
  if (!params.index.empty()) {
    BigInt index;
    try {
      index = BigInt(params.index);
    } catch (const std::exception&) {
      fail("--index: '{}' is not a non-negative integer", params.index);
    }
    print_point(*space, model.config, space->point_at(index));
  }
  return 0;
}

}  // namespace rankscope::cli
