#include "core/decompose/linalg.hpp"

#ifdef RANKSCOPE_CUDA
#include "core/compute/cuda/cuda_backend.hpp"
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <Eigen/SVD>
#include <cblas.h>

#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"

// LAPACK as exported by the OpenBLAS we link (Fortran calling convention: everything by
// pointer, column-major, a hidden length after the arguments for each character argument).
// Declared here rather than through lapacke, which would bring in a second OpenBLAS build.
extern "C" {
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork,
             int* iwork, int* info, size_t jobz_len);
void sgeqrf_(const int* m, const int* n, float* a, const int* lda, float* tau, float* work,
             const int* lwork, int* info);
void sorgqr_(const int* m, const int* n, const int* k, float* a, const int* lda, const float* tau,
             float* work, const int* lwork, int* info);
}
static_assert(sizeof(blasint) == sizeof(int), "LAPACK is declared with 32-bit integers");

namespace rankscope {

namespace {

std::atomic<int64_t> g_factorizations{0};

// Margin of the fp32 noise model of HOOI's error estimate (fp32_resolution): the sweep-to-sweep
// jitter of e^2 measured at a fixed point was about 5 eps on 72x48 matrices and 0.3 eps on
// 4096x4096 ones, against 34 eps and 256 eps from the model.
constexpr double kFp32NoiseFactor = 4.0;

using ColMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

int lapack_int(int64_t v, const char* what) {
  if (v > INT_MAX) fail("{} = {} does not fit LAPACK's 32-bit integers", what, v);
  return static_cast<int>(v);
}

// A workspace size returned by a LAPACK query (as a float), rounded up: older LAPACKs round
// large sizes down when they store them in a float.
int workspace_size(float query) {
  const double size = std::ceil(static_cast<double>(query) * (1.0 + 1e-6));
  return lapack_int(static_cast<int64_t>(size), "LAPACK workspace");
}

void check_matrix(const Mat& w, const char* what) {
  if (w.rows() == 0 || w.cols() == 0) fail("{}: empty {}x{} matrix", what, w.rows(), w.cols());
  if (!w.allFinite()) fail("{}: the {}x{} matrix has NaN or Inf entries", what, w.rows(), w.cols());
}

double squared_norm(const Mat& w) {
  double sum = 0.0;
  for (int64_t i = 0; i < w.size(); ++i) sum += static_cast<double>(w.data()[i]) * w.data()[i];
  return sum;
}

// dst [cols x rows] = src [rows x cols]^T, row-major both, by cache-sized tiles.
void transpose_copy(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 64;
#pragma omp parallel for schedule(static)
  for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
    for (int64_t j0 = 0; j0 < cols; j0 += kTile) {
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * rows + i] = src[i * cols + j];
      }
    }
  }
}

// Thin SVD by sgesdd of a column-major A with rows >= cols: sgesdd starts a tall matrix with a
// QR, and its LQ path for wide ones ran 1.7x slower (5504x2048). A row-major W [m x n] as stored
// is the column-major W^T [n x m], so a wide or square W is factored as A = W^T = Ua S Va^T in
// place of a copy (W = Va S Ua^T) and a tall W as A = W after one transposing copy. Either way
// LAPACK's VT (column-major k x cols) is already a row-major factor of W (U for A = W^T, V for
// A = W) and Ua the other one after a transposing copy.
Svd svd_lapack(const Mat& w) {
  const int64_t m = w.rows(), n = w.cols(), k = std::min(m, n);
  const bool tall = m > n;
  const int64_t rows_a = tall ? m : n, cols_a = tall ? n : m;
  const int rows_int = lapack_int(rows_a, "rows"), cols_int = lapack_int(cols_a, "columns");
  const int k_int = static_cast<int>(k);
  lapack_int(m * n, "matrix size");
  std::vector<float> a(static_cast<size_t>(w.size()));  // sgesdd overwrites its input
  if (tall) {
    transpose_copy(w.data(), m, n, a.data());
  } else {
    std::copy(w.data(), w.data() + w.size(), a.begin());
  }
  std::vector<float> ua(static_cast<size_t>(rows_a * k));
  Mat vt_a(cols_a, k);
  Eigen::VectorXf s(k);
  std::vector<int> iwork(static_cast<size_t>(8 * k));
  const char jobz = 'S';
  int info = 0;
  int lwork = -1;
  float query = 0.0f;
  sgesdd_(&jobz, &rows_int, &cols_int, a.data(), &rows_int, s.data(), ua.data(), &rows_int, vt_a.data(),
          &k_int, &query, &lwork, iwork.data(), &info, 1);
  if (info != 0) fail("sgesdd workspace query on a {}x{} matrix failed (info {})", m, n, info);
  lwork = workspace_size(query);
  std::vector<float> work(static_cast<size_t>(lwork));
  sgesdd_(&jobz, &rows_int, &cols_int, a.data(), &rows_int, s.data(), ua.data(), &rows_int, vt_a.data(),
          &k_int, work.data(), &lwork, iwork.data(), &info, 1);
  if (info != 0) fail("sgesdd on a {}x{} matrix failed (info {})", m, n, info);
  Mat u_a(rows_a, k);
  transpose_copy(ua.data(), k, rows_a, u_a.data());
  if (tall) return {std::move(u_a), std::move(s), std::move(vt_a)};
  return {std::move(vt_a), std::move(s), std::move(u_a)};
}

Svd svd_eigen(const Mat& w) {
  Eigen::BDCSVD<Eigen::MatrixXf> bdc(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
  if (bdc.info() != Eigen::Success) fail("Eigen BDCSVD on a {}x{} matrix failed", w.rows(), w.cols());
  return {bdc.matrixU(), bdc.singularValues(), bdc.matrixV()};
}

Svd svd_gpu(const Mat& w) {
#ifdef RANKSCOPE_CUDA
  if (cuda_visible_devices() == 0) fail("--svd-backend cuda: no CUDA GPU is visible");
  const int64_t m = w.rows(), n = w.cols(), k = std::min(m, n);
  std::vector<float> u, s, v;
  cuda_svd_full(w.data(), m, n, u, s, v);
  return {ConstMatMap(u.data(), m, k), Eigen::Map<const Eigen::VectorXf>(s.data(), k), ConstMatMap(v.data(), n, k)};
#else
  fail("--svd-backend cuda: this rankscope was built without CUDA (configure with -DRANKSCOPE_CUDA=ON)");
#endif
}

// svd_full without counting: the inner SVDs of randomized SVD and HOOI.
Svd svd_uncounted(const Mat& w, SvdBackend backend) {
  check_matrix(w, "SVD");
  switch (backend) {
    case SvdBackend::lapack: return svd_lapack(w);
    case SvdBackend::eigen: return svd_eigen(w);
    case SvdBackend::cuda: return svd_gpu(w);
  }
  return svd_lapack(w);
}

// Replaces the column-major rows x cols matrix `a` (rows >= cols) by the thin Q of its
// Householder QR (sgeqrf + sorgqr, blocked and multithreaded by OpenBLAS).
void orthonormalize_columns(float* a, int64_t rows, int64_t cols) {
  const int m = lapack_int(rows, "rows"), n = lapack_int(cols, "columns");
  RS_ASSERT(m >= n);
  std::vector<float> tau(static_cast<size_t>(n));
  int info = 0, lwork = -1;
  float query_qr = 0.0f, query_q = 0.0f;
  sgeqrf_(&m, &n, a, &m, tau.data(), &query_qr, &lwork, &info);
  sorgqr_(&m, &n, &n, a, &m, tau.data(), &query_q, &lwork, &info);
  lwork = std::max(workspace_size(query_qr), workspace_size(query_q));
  std::vector<float> work(static_cast<size_t>(std::max(lwork, 1)));
  sgeqrf_(&m, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) fail("sgeqrf on a {}x{} matrix failed (info {})", rows, cols, info);
  sorgqr_(&m, &n, &n, a, &m, tau.data(), work.data(), &lwork, &info);
  if (info != 0) fail("sorgqr on a {}x{} matrix failed (info {})", rows, cols, info);
}

// `want` orthonormal columns [rows x want] starting with the `top` ones. When `top` has fewer
// columns (a HOOI step whose projected matrix has rank below the Tucker rank), the rest come from
// `previous` (the factor being replaced) orthogonalised against `top`: TensorLy takes LAPACK's
// arbitrary completion there; keeping the previous subspace is as valid and deterministic.
Mat complete_basis(const Mat& top, const Mat& previous, int64_t want) {
  if (top.cols() >= want) return top.leftCols(want);
  const int64_t rows = top.rows();
  const int64_t cols = std::min(rows, top.cols() + previous.cols());
  ColMat basis(rows, cols);
  basis.leftCols(top.cols()) = top;
  basis.rightCols(cols - top.cols()) = previous.leftCols(cols - top.cols());
  orthonormalize_columns(basis.data(), rows, cols);
  return basis.leftCols(want);
}

// The smallest change of HOOI's relative error e that fp32 factors can resolve. ||G||^2 carries
// rounding of about eps * sqrt(max(m, n)) relative to ||W||^2 (the long fp32 products, and U and
// V orthonormal only to that accuracy), so e^2 is known to that much and e to that over (e + e').
// Below it e jitters from sweep to sweep at the fixed point and a tol of 1e-8 would never be met:
// the stopping test uses the larger of the two.
double fp32_resolution(int64_t m, int64_t n, double e_previous, double e) {
  const double e2_noise = kFp32NoiseFactor * std::numeric_limits<float>::epsilon() *
                          std::sqrt(static_cast<double>(std::max(m, n)));
  return std::min(e2_noise / (e_previous + e), std::sqrt(e2_noise));
}

}  // namespace

Svd svd_full(const Mat& w, SvdBackend backend) {
  Svd svd = svd_uncounted(w, backend);
  ++g_factorizations;
  return svd;
}

Svd svd_randomized(const Mat& w, int64_t rank, const RandomizedSvdOptions& options) {
  check_matrix(w, "randomized SVD");
  const int64_t m = w.rows(), n = w.cols(), k_max = std::min(m, n);
  if (rank < 1 || rank > k_max) fail("randomized SVD: rank {} outside [1, {}] for a {}x{} matrix", rank, k_max, m, n);
  if (options.oversample < 0 || options.power_iterations < 0) {
    fail("randomized SVD: negative oversampling ({}) or power iterations ({})", options.oversample,
         options.power_iterations);
  }
  const int64_t l = std::min(rank + options.oversample, k_max);

  // Sketches are kept transposed, row-major [l x rows]: that is the column-major [rows x l]
  // matrix LAPACK's QR takes, so no product or QR needs a transposing copy.
  // Omega [n x l] Gaussian; Y^T = Omega^T W^T [l x m].
  Mat omega_t(l, n);
  std::mt19937_64 rng(options.seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  for (int64_t i = 0; i < omega_t.size(); ++i) omega_t.data()[i] = gauss(rng);
  Mat q_t(l, m);
  Mat b(l, n);
  if (options.backend == SvdBackend::cuda) {
#ifdef RANKSCOPE_CUDA
    if (cuda_visible_devices() == 0) fail("--svd-backend cuda: no CUDA GPU is visible");
    std::vector<float> q, bv;
    cuda_range_finder(w.data(), m, n, omega_t.data(), l, options.power_iterations, q, bv);
    q_t = ConstMatMap(q.data(), l, m);
    b = ConstMatMap(bv.data(), l, n);
#else
    fail("--svd-backend cuda: this rankscope was built without CUDA (configure with -DRANKSCOPE_CUDA=ON)");
#endif
  } else {
    gemm_xwt(omega_t.data(), l, n, w.data(), m, q_t.data());
    orthonormalize_columns(q_t.data(), m, l);
    // Power iterations Q <- orth(W orth(W^T Q)): Z^T = Q^T W [l x n], Y^T = Z^T W^T [l x m].
    Mat z_t(l, n);
    for (int it = 0; it < options.power_iterations; ++it) {
      gemm_xb(q_t.data(), l, m, w.data(), n, z_t.data());
      orthonormalize_columns(z_t.data(), n, l);
      gemm_xwt(z_t.data(), l, n, w.data(), m, q_t.data());
      orthonormalize_columns(q_t.data(), m, l);
    }
    // B = Q^T W [l x n].
    gemm_xb(q_t.data(), l, m, w.data(), n, b.data());
  }
  // B = U_B S V^T; W ~ (Q U_B) S V^T.
  const Svd small = svd_uncounted(b, options.backend == SvdBackend::cuda ? SvdBackend::cuda : SvdBackend::lapack);
  Svd svd;
  svd.u = q_t.transpose() * small.u.leftCols(rank);
  svd.s = small.s.head(rank);
  svd.v = small.v.leftCols(rank);
  ++g_factorizations;
  return svd;
}

double truncation_error(const Mat& w, const Svd& svd, int64_t rank) {
  if (rank < 0 || rank > svd.rank()) fail("truncation error: rank {} outside [0, {}]", rank, svd.rank());
  // A full SVD holds the whole spectrum: summing its tail avoids the cancellation of
  // ||W||^2 - ||s_r||^2, which loses digits when the tail is small against ||W||.
  if (svd.rank() == std::min(w.rows(), w.cols())) {
    double tail = 0.0;
    for (int64_t i = rank; i < svd.rank(); ++i) tail += static_cast<double>(svd.s[i]) * svd.s[i];
    return std::sqrt(tail);
  }
  double kept = 0.0;
  for (int64_t i = 0; i < rank; ++i) kept += static_cast<double>(svd.s[i]) * svd.s[i];
  return std::sqrt(std::max(0.0, squared_norm(w) - kept));
}

Tucker2 tucker2_hooi(const Mat& w, int64_t r1, int64_t r2, const HooiOptions& options, const Svd* init) {
  check_matrix(w, "Tucker-2");
  const int64_t m = w.rows(), n = w.cols(), k_max = std::min(m, n);
  if (r1 < 1 || r2 < 1 || r1 > k_max || r2 > k_max) {
    fail("Tucker-2: ranks ({}, {}) outside [1, {}] for a {}x{} matrix", r1, r2, k_max, m, n);
  }
  if (options.max_iterations < 1) fail("Tucker-2: max_iterations {} < 1", options.max_iterations);
  Svd computed;
  if (init == nullptr) {
    computed = svd_full(w);
    init = &computed;
  }
  if (init->u.rows() != m || init->v.rows() != n || init->rank() < std::max(r1, r2) ||
      init->u.cols() != init->rank() || init->v.cols() != init->rank()) {
    fail("Tucker-2: the initial SVD (U {}x{}, V {}x{}) does not fit a {}x{} matrix at ranks ({}, {})",
         init->u.rows(), init->u.cols(), init->v.rows(), init->v.cols(), m, n, r1, r2);
  }

  // HOSVD initialisation: the leading singular vectors of W for each mode.
  Tucker2 t;
  t.u = init->u.leftCols(r1);
  t.v = init->v.leftCols(r2);
  const double norm2 = squared_norm(w);
  const double norm = std::sqrt(norm2);
  Mat wv(m, r2);    // W V
  Mat u_t(r1, m);   // U^T
  Mat z_t(r1, n);   // (W^T U)^T = U^T W
  t.core.resize(r1, r2);
  gemm_xb(w.data(), m, n, t.v.data(), r2, wv.data());
  double previous_error = 0.0;
  for (int it = 1; it <= options.max_iterations; ++it) {
    // U <- top-r1 left singular vectors of W V; V <- top-r2 left singular vectors of W^T U, i.e.
    // the right singular vectors of U^T W.
    t.u = complete_basis(svd_uncounted(wv, SvdBackend::lapack).u, t.u, r1);
    u_t = t.u.transpose();
    gemm_xb(u_t.data(), r1, m, w.data(), n, z_t.data());
    t.v = complete_basis(svd_uncounted(z_t, SvdBackend::lapack).v, t.v, r2);
    // G = U^T (W V); W V is reused by the next sweep.
    gemm_xb(w.data(), m, n, t.v.data(), r2, wv.data());
    gemm_xb(u_t.data(), r1, m, wv.data(), r2, t.core.data());
    // The factors are orthonormal, so ||W - U G V^T||^2 = ||W||^2 - ||G||^2.
    t.iterations = it;
    t.rel_error = norm > 0.0 ? std::sqrt(std::abs(norm2 - squared_norm(t.core))) / norm : 0.0;
    // TensorLy first compares after its third sweep; for a matrix the error is final after the
    // first, so comparing from the second gives the same factors one sweep sooner.
    const double tol = std::max(options.tol, fp32_resolution(m, n, previous_error, t.rel_error));
    if (it > 1 && std::abs(previous_error - t.rel_error) < tol) break;
    previous_error = t.rel_error;
  }
  return t;
}

int64_t factorization_count() { return g_factorizations.load(); }

}  // namespace rankscope
