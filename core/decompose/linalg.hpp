// Dense factorizations behind the decomposer, on row-major fp32 matrices.
//  - full thin SVD (LAPACK sgesdd from OpenBLAS, or Eigen's BDCSVD);
//  - randomized SVD (Halko, Martinsson & Tropp 2011: Gaussian sketch, power iterations with
//    re-orthonormalisation, SVD of the small projected matrix), with its error;
//  - Tucker-2 of a matrix by HOOI with HOSVD initialisation, to a tolerance, as TensorLy's
//    tucker(W, rank=[r1, r2]) does.
#pragma once

#include <cstdint>
#include <optional>

#include "core/base/tensor.hpp"

namespace rankscope {

// W [m x n] ~ U diag(s) V^T with U [m x k], s [k] descending, V [n x k]; k = min(m, n) for a full
// SVD, the requested rank for a truncated/randomized one.
struct Svd {
  Mat u;
  Eigen::VectorXf s;
  Mat v;
  int64_t rank() const { return s.size(); }
};

// cuda: on GPU 0 through the fp64 Gram matrix (builds with -DRANKSCOPE_CUDA=ON).
enum class SvdBackend { lapack, eigen, cuda };

// Full thin SVD. Throws Error if the backend reports failure (e.g. NaN input).
Svd svd_full(const Mat& w, SvdBackend backend = SvdBackend::lapack);

struct RandomizedSvdOptions {
  int64_t oversample = 40;  // 10 gives 1.0156x the optimal error on a 0.99^i spectrum at rank 128; 40 gives 1.0016x
  int power_iterations = 2;
  uint64_t seed = 0;
  // cuda: the sketches, power iterations and the small SVD on GPU 0 (same Gaussian sketch).
  SvdBackend backend = SvdBackend::lapack;
};
// Rank-r randomized SVD.
Svd svd_randomized(const Mat& w, int64_t rank, const RandomizedSvdOptions& options = {});

// Frobenius norm of W - U_r diag(s_r) V_r^T, computed without forming it when possible
// (||W||^2 - ||s_r||^2 for orthonormal factors), clamped at 0.
double truncation_error(const Mat& w, const Svd& svd, int64_t rank);

// W ~ U G V^T with U [m x r1], G [r1 x r2], V [n x r2], U and V orthonormal.
struct Tucker2 {
  Mat u;
  Mat core;
  Mat v;
  int iterations = 0;      // HOOI sweeps run
  double rel_error = 0.0;  // ||W - U G V^T||_F / ||W||_F
};

struct HooiOptions {
  double tol = 1e-8;     // stop when the relative error changes by less than this (TensorLy's default)
  int max_iterations = 100;
};
// Tucker-2 by HOOI. `init` (a full or truncated SVD of w with at least max(r1, r2) components)
// gives the HOSVD initialisation; without it one is computed.
Tucker2 tucker2_hooi(const Mat& w, int64_t r1, int64_t r2, const HooiOptions& options = {},
                     const Svd* init = nullptr);

// Number of full/randomized SVDs computed by this process (tests assert cache hits with it).
int64_t factorization_count();

}  // namespace rankscope
