// Full thin SVD on the GPU through the Gram matrix in fp64: G = W^T W (cuBLAS DSYRK), its
// eigendecomposition (cuSOLVER DSYEVD), s = sqrt(eigenvalues) descending, U = W V diag(1/s).
// fp64 keeps the squared condition number harmless for fp32 weights: singular values are accurate
// to about 1e-8 of the largest, far below fp32 factors' own rounding.
#include <algorithm>
#include <cmath>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include "core/base/error.hpp"
#include "core/compute/cuda/cuda_backend.hpp"

namespace rankscope {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA {}: {}", what, cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS {}: {}", what, cublasGetStatusString(s));
}
void check(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS) fail("cuSOLVER {}: status {}", what, static_cast<int>(s));
}

// Device memory freed at scope exit.
struct DeviceArray {
  double* p = nullptr;
  explicit DeviceArray(size_t n, const char* what) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(double)) != cudaSuccess) {
      cudaGetLastError();
      fail("out of GPU memory: {} needs {:.1f} MiB", what, static_cast<double>(n * sizeof(double)) / (1 << 20));
    }
  }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

struct Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  Handles() {
    check(cublasCreate(&blas), "cublasCreate");
    check(cusolverDnCreate(&solver), "cusolverDnCreate");
  }
  ~Handles() {
    cusolverDnDestroy(solver);
    cublasDestroy(blas);
  }
};

// The SVD of w [m x n] row-major with m >= n: u [m x n], s [n], v [n x n], row-major.
void svd_tall(const std::vector<double>& w, int64_t m, int64_t n, std::vector<float>& u, std::vector<float>& s,
              std::vector<float>& v) {
  Handles h;
  const int M = static_cast<int>(m), N = static_cast<int>(n);
  // Row-major W [m x n] is the column-major A = W^T [n x m], leading dimension n.
  DeviceArray a(static_cast<size_t>(m * n), "the matrix (fp64)");
  DeviceArray g(static_cast<size_t>(n * n), "its Gram matrix");
  DeviceArray eig(static_cast<size_t>(n), "eigenvalues");
  check(cudaMemcpy(a.p, w.data(), w.size() * sizeof(double), cudaMemcpyHostToDevice), "cudaMemcpy");
  // G = A A^T = W^T W [n x n], lower triangle.
  const double one = 1.0, zero = 0.0;
  check(cublasDsyrk(h.blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, N, M, &one, a.p, N, &zero, g.p, N), "DSYRK");
  int lwork = 0;
  check(cusolverDnDsyevd_bufferSize(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, N, g.p, N, eig.p, &lwork),
        "DSYEVD workspace");
  DeviceArray work(static_cast<size_t>(lwork), "DSYEVD workspace");
  int* info_d = nullptr;
  check(cudaMalloc(&info_d, sizeof(int)), "cudaMalloc");
  const cusolverStatus_t st =
      cusolverDnDsyevd(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, N, g.p, N, eig.p, work.p, lwork, info_d);
  int info = 0;
  cudaMemcpy(&info, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(info_d);
  check(st, "DSYEVD");
  if (info != 0) fail("cuSOLVER DSYEVD on a {}x{} Gram matrix failed (info {})", n, n, info);
  // Eigenvalues ascending: singular values are their square roots in reverse order.
  std::vector<double> lambda(static_cast<size_t>(n));
  check(cudaMemcpy(lambda.data(), eig.p, lambda.size() * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
  std::vector<double> sigma(static_cast<size_t>(n)), inv(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) sigma[j] = std::sqrt(std::max(0.0, lambda[n - 1 - j]));
  // Directions whose singular value is lost in rounding get a zero column of U (weight 0 anyway).
  const double floor = sigma.empty() ? 0.0 : sigma[0] * 1e-12;
  for (int64_t j = 0; j < n; ++j) inv[j] = sigma[j] > floor ? 1.0 / sigma[j] : 0.0;
  // Reverse the eigenvector columns: Vd column j = eigenvector n-1-j (column-major [n x n]).
  std::vector<double> g_host(static_cast<size_t>(n * n));
  check(cudaMemcpy(g_host.data(), g.p, g_host.size() * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
  std::vector<double> vd(static_cast<size_t>(n * n));
  for (int64_t j = 0; j < n; ++j) {
    std::copy_n(g_host.data() + (n - 1 - j) * n, n, vd.data() + j * n);
  }
  check(cudaMemcpy(g.p, vd.data(), vd.size() * sizeof(double), cudaMemcpyHostToDevice), "cudaMemcpy");
  // C = Vd^T A [n x m] column-major = row-major U [m x n] before scaling; then row j of C times 1/s_j.
  DeviceArray c(static_cast<size_t>(m * n), "U");
  check(cublasDgemm(h.blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, N, &one, g.p, N, a.p, N, &zero, c.p, N), "DGEMM");
  DeviceArray inv_d(static_cast<size_t>(n), "scales");
  check(cudaMemcpy(inv_d.p, inv.data(), inv.size() * sizeof(double), cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cublasDdgmm(h.blas, CUBLAS_SIDE_LEFT, N, M, c.p, N, inv_d.p, 1, c.p, N), "DDGMM");
  std::vector<double> u_host(static_cast<size_t>(m * n));
  check(cudaMemcpy(u_host.data(), c.p, u_host.size() * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
  u.assign(u_host.begin(), u_host.end());
  s.assign(sigma.begin(), sigma.end());
  // V row-major [n x n]: V[i][j] = Vd(i, j) = vd[j * n + i].
  v.resize(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) v[i * n + j] = static_cast<float>(vd[j * n + i]);
  }
}

}  // namespace

void cuda_svd_full(const float* w, int64_t m, int64_t n, std::vector<float>& u, std::vector<float>& s,
                   std::vector<float>& v, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  if (m >= n) {
    std::vector<double> wd(w, w + m * n);
    svd_tall(wd, m, n, u, s, v);
    return;
  }
  // W^T = V S U^T: the SVD of the tall transpose with the factors swapped.
  std::vector<double> wt(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) wt[j * m + i] = w[i * n + j];
  }
  svd_tall(wt, n, m, v, s, u);
}

namespace {

struct FloatArray {
  float* p = nullptr;
  FloatArray(size_t n, const char* what) {
    if (cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(float)) != cudaSuccess) {
      cudaGetLastError();
      fail("out of GPU memory: {} needs {:.1f} MiB", what, static_cast<double>(n * sizeof(float)) / (1 << 20));
    }
  }
  ~FloatArray() { cudaFree(p); }
  FloatArray(const FloatArray&) = delete;
  FloatArray& operator=(const FloatArray&) = delete;
};

// Replaces the column-major rows x cols matrix a (rows >= cols) by the Q of its QR.
void orthonormalize(Handles& h, float* a, int rows, int cols) {
  int lwork_qr = 0, lwork_q = 0;
  FloatArray tau(static_cast<size_t>(cols), "QR scalars");
  check(cusolverDnSgeqrf_bufferSize(h.solver, rows, cols, a, rows, &lwork_qr), "SGEQRF workspace");
  check(cusolverDnSorgqr_bufferSize(h.solver, rows, cols, cols, a, rows, tau.p, &lwork_q), "SORGQR workspace");
  FloatArray work(static_cast<size_t>(std::max(lwork_qr, lwork_q)), "QR workspace");
  int* info_d = nullptr;
  check(cudaMalloc(&info_d, sizeof(int)), "cudaMalloc");
  int info_qr = 0, info_q = 0;
  const cusolverStatus_t s1 = cusolverDnSgeqrf(h.solver, rows, cols, a, rows, tau.p, work.p, lwork_qr, info_d);
  cudaMemcpy(&info_qr, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  const cusolverStatus_t s2 = cusolverDnSorgqr(h.solver, rows, cols, cols, a, rows, tau.p, work.p, lwork_q, info_d);
  cudaMemcpy(&info_q, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(info_d);
  check(s1, "SGEQRF");
  check(s2, "SORGQR");
  if (info_qr != 0 || info_q != 0) fail("cuSOLVER QR of a {}x{} sketch failed (info {}, {})", rows, cols, info_qr, info_q);
}

}  // namespace

void cuda_range_finder(const float* w, int64_t m, int64_t n, const float* omega_t, int64_t l, int power_iterations,
                       std::vector<float>& q_t, std::vector<float>& b, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  Handles h;
  // fp32 without TF32: the products keep fp32 accuracy, as OpenBLAS's do.
  check(cublasSetMathMode(h.blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  const int M = static_cast<int>(m), N = static_cast<int>(n), L = static_cast<int>(l);
  // Row-major W [m x n] is the column-major W^T [n x m] (ld n); the sketches are column-major
  // Y [m x l] (ld m) and Z [n x l] (ld n): row-major Q^T [l x m] and Z^T [l x n], as on the CPU.
  FloatArray wd(static_cast<size_t>(m * n), "the matrix");
  FloatArray om(static_cast<size_t>(n * l), "the Gaussian sketch");
  FloatArray y(static_cast<size_t>(m * l), "the range sketch");
  FloatArray z(static_cast<size_t>(n * l), "the co-range sketch");
  check(cudaMemcpy(wd.p, w, static_cast<size_t>(m * n) * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(om.p, omega_t, static_cast<size_t>(n * l) * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
  const float one = 1.0f, zero = 0.0f;
  // Y = W Omega.
  check(cublasSgemm(h.blas, CUBLAS_OP_T, CUBLAS_OP_N, M, L, N, &one, wd.p, N, om.p, N, &zero, y.p, M), "SGEMM W Omega");
  orthonormalize(h, y.p, M, L);
  for (int it = 0; it < power_iterations; ++it) {
    // Z = W^T Q, orthonormalised; Y = W Z, orthonormalised.
    check(cublasSgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_N, N, L, M, &one, wd.p, N, y.p, M, &zero, z.p, N), "SGEMM W^T Q");
    orthonormalize(h, z.p, N, L);
    check(cublasSgemm(h.blas, CUBLAS_OP_T, CUBLAS_OP_N, M, L, N, &one, wd.p, N, z.p, N, &zero, y.p, M), "SGEMM W Z");
    orthonormalize(h, y.p, M, L);
  }
  // B^T = W^T Q [n x l] column-major: row-major B = Q^T W [l x n].
  check(cublasSgemm(h.blas, CUBLAS_OP_N, CUBLAS_OP_N, N, L, M, &one, wd.p, N, y.p, M, &zero, z.p, N), "SGEMM Q^T W");
  q_t.resize(static_cast<size_t>(l * m));
  b.resize(static_cast<size_t>(l * n));
  check(cudaMemcpy(q_t.data(), y.p, q_t.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  check(cudaMemcpy(b.data(), z.p, b.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
}

}  // namespace rankscope
