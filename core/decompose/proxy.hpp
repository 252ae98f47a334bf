// Zero-cost sensitivity proxies (docs/search.md, "Proxies"): the error that truncating one matrix
// leaves in its layer's output, from the cached spectra alone (no forward pass). For a matrix W
// truncated to rank r by a method:
//  - svd, tucker: E = sum_{i>r} s_i(W)^2 = ||W - W_r||_F^2, the squared output error for inputs
//    of identity covariance;
//  - asvd:   the same of W D, D = diag(mean |x|)^alpha (the ASVD-scaled spectrum);
//  - whiten: the same of W S, S S^T = X^T X (+ lambda I when regularised): exactly
//    ||(W - W_r) X^T||_F^2, the squared output error summed over the calibration tokens X.
// `relative` is sqrt(E / ||W D||_F^2), the fraction of the (scaled) output norm lost.
//
// `propagated` (whiten) carries the error one step further, to the output of the block the matrix
// writes into (attention: o's output; MLP: down's), as a fraction of that output's norm over the
// calibration tokens. Per output row i of W with error energy R_i (exact from the SVD of W S):
//  - o, down write the block's output: R_i / B (so propagated == relative);
//  - v reaches it through attention and o: R_i g_i c_i / B, g_i = E[z^2] / E[v_i^2] the
//    attention's gain on that channel (z: o's inputs of the query heads reading this kv channel),
//    c_i = ||o's column||^2;
//  - gate, up reach it through the activation product and down: R_i g_i c_i / B with
//    g_i = E[h_i^2] / E[y_i^2] (h: down's input, y: this matrix's output; for up exactly E[act(gate)^2]
//    when the two are independent, for gate silu'(gate) up approximated by silu(gate)/gate up),
//    c_i = ||down's column||^2;
//  - q, k reach it through the softmax, which has no such linear gain: R_i / ||(W S)_qk||^2, their
//    relative error, as a share of the block's.
// B = ||o Z||^2 or ||down H||^2 over the calibration tokens. The diagonal of c (down^T down taken
// as diagonal) and the independence of gain and error are the approximations. On stories260K-hf the
// propagated proxy ranks single-matrix perplexity increases with Spearman rho 0.93 where relative
// gives 0.80 (tests/test_activation.cpp). Equal to `relative` for svd, tucker and asvd, and when
// o or down is not dense.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>
#include <memory>
#include <tuple>

#include "core/decompose/decompose.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/io/model.hpp"
#include "core/space/design_space.hpp"
#include "core/space/config_string.hpp"

namespace rankscope {

struct Proxy {
  int64_t layer = 0;
  MatrixKind kind = MatrixKind::q;
  Choice choice;
  int64_t rank = 0;          // absolute
  int64_t full_rank = 0;     // min(out, in)
  int64_t params_saved = 0;  // out*in - factored_params (negative above the break-even rank)
  double energy = 0;         // E above
  double relative = 0;       // sqrt(E / ||W D||_F^2)
  double propagated = 0;     // sqrt(the share of its block's output energy the error becomes), above
  // The RMS of the output error per token (whiten: sqrt(E / calibration tokens), exact on the
  // calibration data) or per input direction (svd, tucker, asvd: sqrt(E / in)).
  double rms = 0;
};

// Proxies of (layer, matrix, choice) cells of one model, computed on first use (the factor cache
// factorises what it does not hold yet) and remembered.
class ProxyCalculator {
 public:
  // `activation` must hold a calibration for asvd/whiten choices (Error naming --calib otherwise).
  ProxyCalculator(const Model& base, FactorCache& cache, ActivationOptions activation);
  const Proxy& proxy(int64_t layer, MatrixKind kind, const Choice& choice);
  // The sum over the configuration's cells of propagated^2: the prior of the guided strategy and
  // allocate's cost of a cell it has no measurement of.
  double config_score(const Config& config);

 private:
  const Model& base_;
  FactorCache& cache_;
  ActivationOptions activation_;
  std::map<std::tuple<int64_t, MatrixKind, Choice>, Proxy> memo_;
  std::map<std::tuple<Method, int64_t, HookSite>, ActivationTransform> transforms_;
  std::map<std::tuple<Method, int64_t, HookSite>, int64_t> rows_;  // calibration tokens of each site
  // whiten: per (layer, kind), t_j = sum_i w_i U_ij^2 over the SVD of W S (the propagated weight of
  // each singular direction) and sum_i w_i ||(W S)_i||^2; empty t when not available.
  struct Propagation {
    Eigen::VectorXd t;
    double total = 0;
  };
  const Propagation& propagation(int64_t layer, MatrixKind kind, const Tensor& weight, const CachedSvd& svd,
                                 const ActivationTransform& transform);
  std::map<std::pair<int64_t, MatrixKind>, Propagation> propagation_;
  // The output of a layer's attention (o) or MLP (down) block over the calibration tokens: its
  // energy B (0: not available), the writer's squared column norms c, its inputs' energies.
  struct BlockOutput {
    double energy = 0;
    Eigen::VectorXd column_norms2, input_energy;
  };
  const BlockOutput& block_output(int64_t layer, bool attention);
  std::map<std::pair<int64_t, bool>, BlockOutput> block_outputs_;
};

// Prior terms of a search over `space` (the guided strategy's StrategyOptions::priors/exact): per
// knob and digit, the change of each metric from the space's all-zero point when that knob alone
// takes that digit. size.params, size.bytes, size.reduction_pct and size.flops_per_token are exact
// (additive, from the size accounting) and listed in `exact`; every other metric gets the proxy
// score (config_score: the sum of the propagated errors squared).
struct SearchPriors {
  std::map<std::string, std::vector<std::vector<double>>> terms;
  std::set<std::string> exact;
};
SearchPriors search_priors(const Model& base, const DesignSpace& space, const std::vector<std::string>& metrics,
                           ProxyCalculator& proxies);

}  // namespace rankscope
