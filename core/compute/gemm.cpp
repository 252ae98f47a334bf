#include "core/compute/gemm.hpp"

#include <cblas.h>
#include <omp.h>

namespace rankscope {

void gemm_xwt(const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* y,
              bool accumulate, int64_t ldx, int64_t ldw, int64_t ldy) {
  if (n == 0 || m == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
              static_cast<blasint>(m), static_cast<blasint>(k), 1.0f, x,
              static_cast<blasint>(ldx ? ldx : k), w, static_cast<blasint>(ldw ? ldw : k),
              accumulate ? 1.0f : 0.0f, y, static_cast<blasint>(ldy ? ldy : m));
}

void gemm_xb(const float* x, int64_t n, int64_t k, const float* b, int64_t m, float* y,
             bool accumulate, int64_t ldx, int64_t ldb, int64_t ldy) {
  if (n == 0 || m == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(n),
              static_cast<blasint>(m), static_cast<blasint>(k), 1.0f, x,
              static_cast<blasint>(ldx ? ldx : k), b, static_cast<blasint>(ldb ? ldb : m),
              accumulate ? 1.0f : 0.0f, y, static_cast<blasint>(ldy ? ldy : m));
}

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace rankscope
