// Size accounting of a configuration: parameters, bytes and FLOPs per token before and after.
// A decomposed matrix [out x in] at rank r counts in*r + r*r + r*out parameters (tucker: the
// paper's three factors) or in*r + r*out (svd, asvd, whiten: two factors). The size reduction is
// 100 * removed / total, as the paper's "Decomposition Percentage".
//
// "Before" is always the dense model. A checkpoint written by `rankscope decompose` (config.json
// "rankscope.factored") already stores some matrices factored: they count factored "after" (and
// a configuration may factor further matrices, never one stored factored: Error, as
// decompose_model). Every path (info, eval --tasks size with or without weights loaded, decompose)
// gives the same figures for the same checkpoint and configuration.
#pragma once

#include <cstdint>
#include <vector>

#include "core/space/config_string.hpp"
#include "core/io/model.hpp"
#include "core/io/model_config.hpp"

namespace rankscope {

// One matrix factored in a size report (stored factored in the checkpoint, or by the configuration).
struct FactoredSize {
  int64_t layer = 0;
  MatrixKind kind = MatrixKind::q;
  int64_t n_out = 0;
  int64_t n_in = 0;
  int64_t rank = 0;
  Method method = Method::tucker;
  bool stored = false;            // stored factored in the checkpoint (not by the configuration)
  int64_t params_factored = 0;    // factored_params(n_out, n_in, rank, method)
  int64_t break_even_rank = 0;    // break_even_rank(n_out, n_in, method)
  int64_t params_dense() const { return n_out * n_in; }
  bool not_smaller() const { return params_factored >= params_dense(); }
};

struct SizeReport {
  int64_t params_before = 0;         // the dense model
  int64_t params_after = 0;
  int64_t decomposable_before = 0;   // parameters of the decomposable matrices, dense
  int64_t decomposable_after = 0;
  int64_t n_decomposed = 0;          // matrices factored (stored factored + configured)
  int64_t n_stored_factored = 0;     // of which stored factored in the checkpoint
  int64_t bytes_per_param = 4;       // of the storage dtype (torch_dtype)
  // FLOPs per token of every weight product (7 or 6 matrices per block and the output head;
  // attention scores, norms and activations excluded: they do not change with a configuration).
  int64_t flops_per_token_before = 0;
  int64_t flops_per_token_after = 0;
  std::vector<FactoredSize> factored;  // every factored matrix, by layer and matrix kind

  int64_t bytes_before() const { return params_before * bytes_per_param; }
  int64_t bytes_after() const { return params_after * bytes_per_param; }
  double reduction_pct() const;  // 100 * (before - after) / before
};

// `dense_total` is the dense model's parameter count (dense_param_count). The matrices `model`
// stores factored count as stored; `config` factors further ones. Throws Error when a cell of
// `config` names a matrix the checkpoint already stores factored.
SizeReport size_report(const ModelConfig& model, int64_t dense_total, const Config& config);

// The parameter count of the dense model behind `model`: as loaded, every factored linear counted
// as its dense [out x in] weight (plus bias); shapes-only: config_param_count (which counts the
// shapes config.json implies, dense, also for a decomposed checkpoint). Equal on both paths.
int64_t dense_param_count(const Model& model);

// The matrices a decomposed checkpoint stores factored (config.json "rankscope.factored", module
// names with or without the "bert." prefix), with absolute ranks; empty for an ordinary checkpoint.
std::vector<ResolvedCell> stored_factored_cells(const ModelConfig& model);

// Parameters of one matrix [out x in] decomposed at `rank` by `method`.
int64_t factored_params(int64_t n_out, int64_t n_in, int64_t rank, Method method);

// The largest rank r at which the factored form of a matrix [out x in] is smaller than dense
// (factored_params(out, in, r, method) < out * in): svd r*(out+in) < out*in, tucker
// r*(out+in) + r*r < out*in. 0 when no rank is (a 1 x 1 matrix).
int64_t break_even_rank(int64_t n_out, int64_t n_in, Method method);

}  // namespace rankscope
