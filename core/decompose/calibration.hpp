// Calibration statistics for the activation-aware decomposition methods (asvd, whiten;
// docs/methods.md): per (layer, hook site) the activations X [rows x width] that enter the
// decomposable matrices, summarised as
//   - sum over rows of |x_j| per input channel j (asvd: s_j = mean |x_j|), and
//   - the Gram matrix X^T X (whiten),
// both accumulated in double. Matrices fed by one site share its statistics: q, k, v (attn_in),
// o (attn_ctx), gate, up (ffn_in), down (ffn_act).
//
// Statistics come from forward passes of the base model (CalibrationAccumulator's hook), are
// cached on disk (save_calibration / load_calibration, checksummed, written atomically) and turn
// into the transform D of each method (asvd_transform, whiten_transform): the decomposer takes the
// SVD of W D, truncates it, and folds D^{-1} back into the right factor.
// The data side (which text, which samples) lives in evaluators/calibration.hpp.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include "core/space/config_string.hpp"
#include "core/io/model.hpp"

namespace rankscope {

// The hook site whose activations are the input of matrix `kind`.
HookSite input_site(MatrixKind kind);
// "attn_in", "attn_ctx", "ffn_in", "ffn_act", "block_out".
std::string site_name(HookSite site);

struct SiteStats {
  int64_t width = 0;
  int64_t rows = 0;           // activation rows (tokens) seen
  Eigen::VectorXd abs_sum;    // [width] sum over rows of |x_j|
  Eigen::MatrixXd gram;       // [width x width] X^T X, symmetric
  Eigen::VectorXd mean_abs() const;  // abs_sum / rows (zeros when rows == 0)
};

struct Calibration {
  std::string key;            // 32 hex digits: model content + data identity + settings
  nlohmann::json info;        // source, samples, ctx, seed, tokens, ... (recorded with results)
  std::map<std::pair<int64_t, HookSite>, SiteStats> sites;
  // The statistics of `site` in `layer`; Error when the calibration has none (another model).
  const SiteStats& at(int64_t layer, HookSite site) const;
};

// Accumulates the statistics of the four decomposable-input sites over forward passes: pass
// hook() to llama_forward (LlamaOptions::hook) or bert_forward, then take the result.
class CalibrationAccumulator {
 public:
  CalibrationAccumulator();
  const Hook& hook() const { return hook_; }
  void add(HookSite site, int64_t layer, const Mat& activations);
  Calibration finish(std::string key, nlohmann::json info);

 private:
  std::map<std::pair<int64_t, HookSite>, SiteStats> sites_;
  Hook hook_;
};

// <dir>/calib/<key>.bin (docs/methods.md, "Calibration cache files"). Written to a temporary name
// and renamed; throws Error naming the file when it cannot be written.
std::filesystem::path calibration_path(const std::filesystem::path& cache_dir, const std::string& key);
void save_calibration(const std::filesystem::path& path, const Calibration& calibration);
// The calibration stored at `path` under `key`, or nullopt when the file is absent, truncated,
// corrupt (checksum), of another version or of another key: the caller recomputes and rewrites it.
std::optional<Calibration> load_calibration(const std::filesystem::path& path, const std::string& key);

// The transform D of an activation-aware method for one input site: the decomposer factorises
// W D [out x in] and maps the right factor back, W ~ (U_r S_r) (D^{-T} V_r)^T.
struct ActivationTransform {
  Method method = Method::svd;
  int64_t width = 0;
  Eigen::VectorXd scale;  // asvd: D = diag(scale), scale_j = max(s_j, floor)^alpha
  Eigen::MatrixXd chol;   // whiten: lower-triangular S with S S^T = X^T X + lambda I
  double lambda = 0.0;    // whiten: regularisation added to the diagonal (0 = none needed)
  int64_t floored = 0;    // asvd: channels whose mean |x| was raised to the floor
  std::string key;        // 32 hex digits: the method and D's values
  std::string note;       // why D was regularised / floored, one line; empty when it was not

  // W D for W [out x width], computed in double.
  Mat apply(const Mat& w) const;
  // D^{-T} V for V [width x r] (whiten: a triangular solve, no inverse is formed).
  Mat unapply_right(const Mat& v) const;
};

// asvd: D = diag(s)^alpha, s the mean |x| per channel. Channels with s below 1e-6 max(s) (never
// active in the calibration data) are floored there; all-zero statistics give D = I.
ActivationTransform asvd_transform(const SiteStats& stats, double alpha);
// whiten: D = S, the Cholesky factor of X^T X. When X^T X is not (numerically) positive definite
// (fewer rows than channels, dead channels), lambda I is added, lambda = 1e-6 x its mean diagonal
// and then x10 until every pivot of S^2 exceeds 1e-8 x the mean diagonal; `note` says so. Throws
// Error for non-finite statistics.
ActivationTransform whiten_transform(const SiteStats& stats);

}  // namespace rankscope
