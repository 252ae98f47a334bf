// Parameters of operations that a model's config.json selects: the activation function and the
// RoPE frequency scaling. Kept apart from the config reader so the operations do not depend on it.
#pragma once

#include <cstdint>

namespace rankscope {

// The number type a backend multiplies in. Accumulation is always fp32 (and the residual stream
// of the forward passes stays fp32).
enum class ComputeType { f32, bf16, f16 };

enum class Activation { silu, gelu_erf, gelu_tanh, relu };

// RoPE frequency scaling (config.json `rope_scaling` / `rope_parameters`).
struct RopeScaling {
  enum class Kind { none, linear, llama3 };
  Kind kind = Kind::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

}  // namespace rankscope
