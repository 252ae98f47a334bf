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
#include <climits>
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

// The statistics of every (layer, site) of one calibration. Small ones live in memory; those
// loaded from the cache stay in the file (kept open) and are read one site at a time, so that a
// Llama-2-7B calibration (44 GB of Gram matrices) never has to fit in host memory.
class Calibration {
 public:
  using Where = std::pair<int64_t, HookSite>;
  std::string key;            // 32 hex digits: model content + data identity + settings
  nlohmann::json info;        // source, samples, ctx, seed, tokens, ... (recorded with results)

  // The statistics of `site` in `layer`; Error when the calibration has none (another model) or
  // its file cannot be read.
  std::shared_ptr<const SiteStats> at(int64_t layer, HookSite site) const;
  // Every (layer, site) held, in order.
  std::vector<Where> sites() const;
  size_t size() const { return memory_.size() + index_.size(); }
  // Adds (or replaces) in-memory statistics.
  void put(int64_t layer, HookSite site, SiteStats stats);
  bool file_backed() const { return !index_.empty(); }

 private:
  friend std::optional<Calibration> load_calibration(const std::filesystem::path& path, const std::string& key);
  struct Entry {
    uint64_t offset = 0;  // of the abs_sum values in the file
    int64_t width = 0, rows = 0;
  };
  struct File;
  std::map<Where, std::shared_ptr<const SiteStats>> memory_;
  std::map<Where, Entry> index_;
  std::shared_ptr<File> file_;
};

// Accumulates the statistics of the four decomposable-input sites over forward passes on the
// model's backend (on a GPU in float64 there): pass device_hook() to llama_logits
// (LlamaOptions::device_hook) or bert_forward, then take() each finished site. Only layers in
// [first_layer, end_layer) are kept.
class CalibrationAccumulator {
 public:
  explicit CalibrationAccumulator(Backend& backend, int64_t first_layer = 0, int64_t end_layer = INT64_MAX);
  const DeviceHook& device_hook() const { return hook_; }
  void add(HookSite site, int64_t layer, const Buffer& activations);
  // The sites seen, in order.
  std::vector<Calibration::Where> sites() const;
  // The statistics of one site (full symmetric Gram matrix), freeing its accumulator.
  SiteStats take(int64_t layer, HookSite site);
  // Every site into a Calibration held in memory.
  Calibration finish(std::string key, nlohmann::json info);

 private:
  Backend& backend_;
  int64_t first_, end_;
  std::map<Calibration::Where, std::unique_ptr<GramAccumulator>> sites_;
  DeviceHook hook_;
};

// A calibration file written one site at a time: a unique temporary beside `path`, renamed into
// place by commit() (removed when the writer is destroyed without it). Throws Error naming the
// file when it cannot be written.
class CalibrationWriter {
 public:
  CalibrationWriter(std::filesystem::path path, const std::string& key, const nlohmann::json& info);
  ~CalibrationWriter();
  CalibrationWriter(const CalibrationWriter&) = delete;
  CalibrationWriter& operator=(const CalibrationWriter&) = delete;
  void add(int64_t layer, HookSite site, const SiteStats& stats);
  void commit();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// <dir>/calib/<key>.bin (docs/methods.md, "Calibration cache files"). Written to a temporary name
// and renamed (through CalibrationWriter); throws Error naming the file when it cannot be written.
std::filesystem::path calibration_path(const std::filesystem::path& cache_dir, const std::string& key);
void save_calibration(const std::filesystem::path& path, const Calibration& calibration);
// The calibration stored at `path` under `key` (file-backed: the checksum is verified reading
// the file once, the statistics are read when asked for), or nullopt when the file is absent,
// truncated, corrupt (checksum), of another version or of another key: the caller recomputes and
// rewrites it.
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
