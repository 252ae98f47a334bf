// Size accounting of a configuration: parameters, bytes and FLOPs per token before and after.
// A decomposed matrix [out x in] at rank r counts in*r + r*r + r*out parameters (tucker: the
// paper's three factors) or in*r + r*out (svd). The size reduction is 100 * removed / total,
// as the paper's "Decomposition Percentage".
#pragma once

#include <cstdint>

#include "core/config_string.hpp"
#include "core/model_config.hpp"

namespace rankscope {

struct SizeReport {
  int64_t params_before = 0;
  int64_t params_after = 0;
  int64_t decomposable_before = 0;   // parameters of the decomposable matrices, dense
  int64_t decomposable_after = 0;
  int64_t n_decomposed = 0;          // matrices factored
  int64_t bytes_per_param = 4;       // of the storage dtype (torch_dtype)
  // FLOPs per token of every weight product (7 or 6 matrices per block and the output head;
  // attention scores, norms and activations excluded: they do not change with a configuration).
  int64_t flops_per_token_before = 0;
  int64_t flops_per_token_after = 0;

  int64_t bytes_before() const { return params_before * bytes_per_param; }
  int64_t bytes_after() const { return params_after * bytes_per_param; }
  double reduction_pct() const;  // 100 * (before - after) / before
};

// `total_params` is the model's parameter count (Model::n_params() of the dense model).
SizeReport size_report(const ModelConfig& model, int64_t total_params, const Config& config);

// Parameters of one matrix [out x in] decomposed at `rank` by `method`.
int64_t factored_params(int64_t n_out, int64_t n_in, int64_t rank, Method method);

}  // namespace rankscope
