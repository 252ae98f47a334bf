// The matrix products every forward pass is made of, on row-major fp32 data, through OpenBLAS
// SGEMM (OpenMP build: called inside an OpenMP parallel region it runs on the calling thread).
#pragma once

#include <cstdint>

namespace rankscope {

// Y[n x m] = X[n x k] * W^T (+ Y when accumulate), W row-major [m x k]: a Linear's y = x W^T.
// ldx/ldw/ldy are row strides (0 = dense: k, k, m).
void gemm_xwt(const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* y,
              bool accumulate = false, int64_t ldx = 0, int64_t ldw = 0, int64_t ldy = 0);

// Y[n x m] = X[n x k] * B (+ Y when accumulate), B row-major [k x m].
void gemm_xb(const float* x, int64_t n, int64_t k, const float* b, int64_t m, float* y,
             bool accumulate = false, int64_t ldx = 0, int64_t ldb = 0, int64_t ldy = 0);

// Threads used by BLAS and OpenMP regions (0 = all cores).
void set_num_threads(int n);
int num_threads();

}  // namespace rankscope
