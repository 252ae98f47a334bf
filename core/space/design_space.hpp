// Design spaces: products of knobs whose points map to configurations (the enumerator).
//  - paper:      a subset of layers x a subset of the model's matrix kinds x one rank from a list,
//                shared by all chosen matrices (Llama-2-7B, ranks {1}: 2^32 x 2^7 = 2^39 points).
//  - per-matrix: every (layer, matrix) independently takes one choice from a list that may
//                include dense (Llama-2-7B with 8 choices: 8^224).
//  - grouped:    per-matrix choices tied across blocks of `group_size` consecutive layers.
//  - single:     the base model and every (layer, matrix) decomposed alone at each non-dense choice
//                (one knob): measured single-matrix sensitivities, e.g. for `rankscope allocate`.
// On a model storing fused tensors (Phi-3) the matrices are the seven parts, or with `fused` the
// cells qkv, o, gate_up, down.
// Counts are exact big integers; every point has an index in [0, count) (mixed radix), maps to a
// Config and, through it, to its canonical string.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <boost/multiprecision/cpp_int.hpp>

#include "core/space/config_string.hpp"

namespace rankscope {

using BigInt = boost::multiprecision::cpp_int;

// A choice of the per-matrix and grouped spaces; `dense` leaves the matrix undecomposed.
struct SpaceChoice {
  bool dense = false;
  Choice choice;
};
// Parses "dense,50%,25%,12.5%,1" (`method` applied to every non-dense entry without its own
// "@METHOD", e.g. "dense,25%@svd,25%@whiten"). Throws Error.
std::vector<SpaceChoice> parse_space_choices(std::string_view text, Method method);

struct SpaceSpec {
  std::string kind = "paper";            // paper | per-matrix | grouped | single
  std::vector<RankSpec> ranks;           // paper: the rank list
  std::vector<SpaceChoice> choices;      // per-matrix / grouped
  int64_t group_size = 1;                // grouped
  Method method = Method::tucker;
  // Models storing fused tensors (Phi-3): knobs on the fused cells qkv and gate_up (with o and
  // down) instead of the seven parts. An Error for any other model.
  bool fused = false;
};

// The matrix kinds a space's knobs range over, in mask order (SpaceSpec::fused).
std::vector<MatrixKind> space_kinds(const ModelConfig& model, bool fused);

class DesignSpace {
 public:
  virtual ~DesignSpace() = default;
  virtual std::string describe() const = 0;
  // Exact number of points.
  virtual BigInt count() const = 0;
  // Digits of a point: one integer per knob, knob i in [0, radix(i)).
  virtual std::vector<int64_t> radices() const = 0;
  virtual Config to_config(const std::vector<int64_t>& digits) const = 0;
  // The point of a configuration, or nullopt when the configuration is not in this space. For
  // points that map to the same configuration (the paper space's empty subsets all give the base
  // model) the smallest index is returned.
  virtual std::optional<std::vector<int64_t>> from_config(const Config& config) const = 0;

  // Mixed-radix conversions (knob 0 least significant). Throw Error when index >= count().
  std::vector<int64_t> point_at(const BigInt& index) const;
  BigInt index_of(const std::vector<int64_t>& digits) const;
  // A uniformly random point.
  std::vector<int64_t> sample(std::mt19937_64& rng) const;
};

// Builds a space for `model`. Throws Error for an empty rank/choice list or a rank above a
// matrix's full rank.
std::unique_ptr<DesignSpace> make_design_space(const ModelConfig& model, const SpaceSpec& spec);

// log2 of a positive big integer (for printing).
double log2_big(const BigInt& n);

}  // namespace rankscope
