// The decomposer: applies a configuration to a loaded model, replacing the chosen dense linears by
// factors truncated from the factor cache, and writes decomposed checkpoints.
//  - svd:    U_r diag(s_r) and V_r (two factors);
//  - tucker: U_r, core diag(s_r), V_r. For a matrix, Tucker-2 by HOOI from the HOSVD
//            initialisation (TensorLy's tucker(W, rank=[r, r])) converges to exactly the truncated
//            SVD (tests/test_linalg.cpp checks it), so both methods are truncations of one cached
//            full SVD per matrix.
//  - asvd, whiten (activation-aware, docs/methods.md): the SVD of W D for a transform D from
//            calibration activations (core/calibration.hpp), cached under a key of (weight, method,
//            D); two factors U_r diag(s_r) and D^{-T} V_r, so y = (x D^{-T} V_r) (U_r S_r)^T.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/decompose/calibration.hpp"
#include "core/space/config_string.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/io/model.hpp"

namespace rankscope {

struct DecomposeStats {
  int64_t matrices = 0;      // matrices decomposed
  int64_t factorized = 0;    // full SVDs computed (cache misses)
  int64_t cache_hits = 0;
  double seconds = 0.0;
  // Largest ||W - W_r||_F / ||W||_F over the decomposed matrices (from the cached spectra); for
  // asvd/whiten the error of W D, ||(W - W_r) D||_F / ||W D||_F (whiten: the relative output error
  // on the calibration activations).
  double max_relative_error = 0.0;
  // asvd/whiten: one line per transform that had to be regularised (a Gram matrix that is not
  // positive definite) or floored (inactive channels), naming the layer and hook site.
  std::vector<std::string> activation_notes;
};

// What the activation-aware methods need. A configuration with an asvd or whiten cell and no
// calibration is an Error (naming --calib).
struct ActivationOptions {
  std::shared_ptr<const Calibration> calibration;
  double asvd_alpha = 0.5;
};

// A factored Linear of rank r from a cached SVD; `bias` is kept.
Linear factored_linear(const CachedSvd& svd, int64_t rank, Method method, const Tensor& bias = {});

// A two-factor Linear of rank r from the cached SVD of W D: U = U_r diag(s_r), V = D^{-T} V_r.
Linear activation_factored_linear(const CachedSvd& svd_of_wd, int64_t rank, const ActivationTransform& transform,
                                  const Tensor& bias = {});

// The cached SVD of `weight` D (computed on a miss), keyed by the weight's content, the method and D.
std::shared_ptr<const CachedSvd> activation_factors(FactorCache& cache, const Tensor& weight,
                                                    const ActivationTransform& transform, int64_t rank = 0);

// Returns a copy of `base` (sharing its dense tensors) with the linears `config` selects factored.
// `base` must hold dense weights for those matrices. Throws Error otherwise, and when an asvd or
// whiten cell has no calibration in `activation`. The activations are those of the base model
// for every matrix (no sequential update after earlier truncations).
Model decompose_model(const Model& base, const Config& config, FactorCache& cache, DecomposeStats* stats = nullptr,
                      const ActivationOptions& activation = {});

// True when some cell of `config` uses asvd or whiten.
bool needs_calibration(const Config& config);

// Writes `model` as a checkpoint directory rankscope (and, with dense, any Hugging Face loader)
// reads: config.json from the source plus a "rankscope" section, model.safetensors in the
// config's torch_dtype, and the tokenizer files of the source. With `dense`, factored matrices are
// multiplied back (U G V^T) into ordinary weights. `canonical_config` is recorded: it should name
// every factored matrix of `model`, also those a decomposed source already stored.
// Every file is written to a temporary beside its final name and all are renamed into place only
// once each is whole: a failed write leaves no partial file (an existing checkpoint in `out_dir`
// stays as it was) and removes its temporaries.
struct CheckpointOptions {
  bool dense = false;
  // Hugging Face layout: the factored checkpoint plus modeling_rankscope.py and an auto_map in
  // config.json, so transformers loads it with trust_remote_code=True and runs each factored
  // matrix as two or three smaller products (docs/formats.md). Not with `dense`.
  bool hf = false;
  // Where the checkpoint came from, recorded in config.json's "rankscope" section: for example
  // {"base_model": {"path", "hash"}, "calibration": {...}, "asvd_alpha": 0.5}.
  nlohmann::json provenance = nlohmann::json::object();
};
void write_checkpoint(const Model& model, const std::filesystem::path& out_dir, const std::string& canonical_config,
                      const CheckpointOptions& options);

// The Python module written beside an `hf` checkpoint (core/decompose/modeling_rankscope.py).
std::string_view hf_modeling_source();

// The transformers auto class that loads an architecture ("AutoModelForCausalLM" for
// LlamaForCausalLM), or "" where the modeling file has no class for it.
std::string hf_auto_class(const std::string& architecture);

}  // namespace rankscope
