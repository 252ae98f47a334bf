// The decomposer: applies a configuration to a loaded model, replacing the chosen dense linears by
// factors truncated from the factor cache, and writes decomposed checkpoints.
//  - svd:    U_r diag(s_r) and V_r (two factors);
//  - tucker: U_r, core diag(s_r), V_r. For a matrix, Tucker-2 by HOOI from the HOSVD
//            initialisation (TensorLy's tucker(W, rank=[r, r])) converges to exactly the truncated
//            SVD (tests/test_linalg.cpp checks it), so both methods are truncations of one cached
//            full SVD per matrix.
#pragma once

#include <cstdint>
#include <filesystem>

#include "core/config_string.hpp"
#include "core/factor_cache.hpp"
#include "core/model.hpp"

namespace rankscope {

struct DecomposeStats {
  int64_t matrices = 0;      // matrices decomposed
  int64_t factorized = 0;    // full SVDs computed (cache misses)
  int64_t cache_hits = 0;
  double seconds = 0.0;
  // Largest ||W - W_r||_F / ||W||_F over the decomposed matrices (from the cached spectra).
  double max_relative_error = 0.0;
};

// A factored Linear of rank r from a cached SVD; `bias` is kept.
Linear factored_linear(const CachedSvd& svd, int64_t rank, Method method, const Tensor& bias = {});

// Returns a copy of `base` (sharing its dense tensors) with the linears `config` selects factored.
// `base` must hold dense weights for those matrices. Throws Error otherwise.
Model decompose_model(const Model& base, const Config& config, FactorCache& cache, DecomposeStats* stats = nullptr);

// Writes `model` as a checkpoint directory rankscope (and, with dense, any Hugging Face loader)
// reads: config.json from the source plus a "rankscope" section, model.safetensors in the
// config's torch_dtype, and the tokenizer files of the source. With `dense`, factored matrices are
// multiplied back (U G V^T) into ordinary weights. `canonical_config` is recorded.
void write_checkpoint(const Model& model, const std::filesystem::path& out_dir, const std::string& canonical_config,
                      bool dense);

}  // namespace rankscope
