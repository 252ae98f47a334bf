// Full thin SVD on the GPU through the Gram matrix in fp64: G = W^T W (cuBLAS DSYRK), its
// eigendecomposition (cuSOLVER DSYEVD), s = sqrt(eigenvalues) descending, U = W V diag(1/s).
// fp64 keeps the squared condition number harmless for fp32 weights: singular values are accurate
// to about 1e-8 of the largest, far below fp32 factors' own rounding.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <cmath>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/compute/cuda/cuda_backend.hpp"
#include "core/compute/cuda/kernels.cuh"

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

// cuBLAS and cuSOLVER handles of this thread on one device, created once: creating them costs
// more than a small factorization.
struct Handles {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  Handles() {
    check(cublasCreate(&blas), "cublasCreate");
    check(cusolverDnCreate(&solver), "cusolverDnCreate");
    // fp32 stays fp32: no TF32 shortcuts in the sketches' products.
    check(cublasSetMathMode(blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  }
  ~Handles() {
    cusolverDnDestroy(solver);
    cublasDestroy(blas);
  }
  Handles(const Handles&) = delete;
  Handles& operator=(const Handles&) = delete;
};

Handles& handles(int device) {
  thread_local std::map<int, std::unique_ptr<Handles>> per_device;
  auto& h = per_device[device];
  if (!h) h = std::make_unique<Handles>();
  return *h;
}

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

// Phase times of one factorization on stderr with RANKSCOPE_CUDA_PROFILE=1 (where time goes).
class Phases {
 public:
  Phases() {
    const char* p = std::getenv("RANKSCOPE_CUDA_PROFILE");
    on_ = p != nullptr && std::string(p) == "1";
    last_ = std::chrono::steady_clock::now();
  }
  void mark(const char* name) {
    if (!on_) return;
    cudaDeviceSynchronize();
    const auto now = std::chrono::steady_clock::now();
    line_ += fmt::format(" {} {:.0f} ms", name, std::chrono::duration<double, std::milli>(now - last_).count());
    last_ = now;
  }
  ~Phases() {
    if (on_) std::fprintf(stderr, "svd phases:%s\n", line_.c_str());
  }

 private:
  bool on_ = false;
  std::chrono::steady_clock::time_point last_;
  std::string line_;
};

}  // namespace

// W [m x n] row-major is the column-major A = W^T [n x m] (ld n). With k = min(m, n), the Gram
// matrix of the short side (tall: W^T W = A A^T; wide: W W^T = A^T A, both [k x k]) is
// eigendecomposed; its eigenvectors are one factor, the other is W times them over s.
void cuda_svd_full(const float* w, int64_t m, int64_t n, std::vector<float>& u, std::vector<float>& s,
                   std::vector<float>& v, int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  Handles& h = handles(device);
  Phases phases;
  const bool tall = m >= n;
  const int64_t k = std::min(m, n), other = std::max(m, n);
  const int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  DeviceArray a(static_cast<size_t>(m * n), "the matrix (fp64)");
  {
    FloatArray wf(static_cast<size_t>(m * n), "the matrix");
    check(cudaMemcpy(wf.p, w, static_cast<size_t>(m * n) * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    check(cuda::widen_to_double(wf.p, ComputeType::f32, m * n, a.p, nullptr), "widen kernel");
  }
  phases.mark("upload");
  DeviceArray g(static_cast<size_t>(k * k), "its Gram matrix");
  DeviceArray eig(static_cast<size_t>(k), "eigenvalues");
  const double one = 1.0, zero = 0.0;
  check(cublasDsyrk(h.blas, CUBLAS_FILL_MODE_LOWER, tall ? CUBLAS_OP_N : CUBLAS_OP_T, K, tall ? M : N, &one, a.p, N, &zero,
                    g.p, K),
        "DSYRK");
  phases.mark("syrk");
  int lwork = 0;
  check(cusolverDnDsyevd_bufferSize(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, K, g.p, K, eig.p, &lwork),
        "DSYEVD workspace");
  DeviceArray work(static_cast<size_t>(lwork), "DSYEVD workspace");
  int* info_d = nullptr;
  check(cudaMalloc(&info_d, sizeof(int)), "cudaMalloc");
  const cusolverStatus_t st =
      cusolverDnDsyevd(h.solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, K, g.p, K, eig.p, work.p, lwork, info_d);
  int info = 0;
  cudaMemcpy(&info, info_d, sizeof(int), cudaMemcpyDeviceToHost);
  cudaFree(info_d);
  check(st, "DSYEVD");
  if (info != 0) fail("cuSOLVER DSYEVD on a {}x{} Gram matrix failed (info {})", k, k, info);
  phases.mark("syevd");
  // Eigenvalues ascending: singular values are their square roots in reverse order.
  std::vector<double> lambda(static_cast<size_t>(k));
  check(cudaMemcpy(lambda.data(), eig.p, lambda.size() * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
  std::vector<double> sigma(static_cast<size_t>(k)), inv(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) sigma[j] = std::sqrt(std::max(0.0, lambda[k - 1 - j]));
  // Directions whose singular value is lost in rounding get a zero column (weight 0 anyway).
  const double floor = sigma.empty() ? 0.0 : sigma[0] * 1e-12;
  for (int64_t j = 0; j < k; ++j) inv[j] = sigma[j] > floor ? 1.0 / sigma[j] : 0.0;
  // The other factor before scaling, in ascending eigen order: C = Ev^T A (tall: [k x m]
  // column-major = row-major [m x k], rows W v_j) or C = Ev^T A^T (wide: row-major [n x k], rows
  // W^T u_j).
  DeviceArray c(static_cast<size_t>(other * k), "the other factor");
  check(cublasDgemm(h.blas, CUBLAS_OP_T, tall ? CUBLAS_OP_N : CUBLAS_OP_T, K, static_cast<int>(other), tall ? N : M, &one,
                    g.p, K, a.p, N, &zero, c.p, K),
        "DGEMM");
  DeviceArray inv_d(static_cast<size_t>(k), "scales");
  check(cudaMemcpy(inv_d.p, inv.data(), inv.size() * sizeof(double), cudaMemcpyHostToDevice), "cudaMemcpy");
  FloatArray f_other(static_cast<size_t>(other * k), "the other factor (fp32)");
  FloatArray f_eig(static_cast<size_t>(k * k), "the eigenvector factor (fp32)");
  check(cuda::reverse_columns(c.p, other, k, inv_d.p, f_other.p, nullptr), "reverse_columns kernel");
  check(cuda::eigenvectors_descending(g.p, k, f_eig.p, nullptr), "eigenvectors kernel");
  phases.mark("factors");
  std::vector<float>& big = tall ? u : v;    // [other x k]
  std::vector<float>& small = tall ? v : u;  // [k x k]
  big.resize(static_cast<size_t>(other * k));
  small.resize(static_cast<size_t>(k * k));
  check(cudaMemcpy(big.data(), f_other.p, big.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  check(cudaMemcpy(small.data(), f_eig.p, small.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  s.assign(sigma.begin(), sigma.end());
  phases.mark("download");
}

namespace {

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
  Handles& h = handles(device);
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
