// The CUDA implementation of Backend (built with -DRANKSCOPE_CUDA=ON). Declared without CUDA
// types so that host code can include it.
#pragma once

#include <memory>
#include <vector>

#include "core/compute/backend.hpp"

namespace rankscope {

// GPUs the CUDA runtime sees (0 when there is no driver or no device).
int cuda_visible_devices();

// A backend on GPU `index` computing in `type` (fp32: cuBLAS SGEMM without TF32; bf16/fp16:
// tensor-core GEMMs with fp32 accumulation). Throws Error when the device cannot be opened.
std::shared_ptr<Backend> make_cuda_backend(int index, ComputeType type);

// Full thin SVD of w [m x n] (row-major) on GPU `device`: u [m x k], s [k] descending, v [n x k]
// row-major, k = min(m, n). Through the fp64 Gram matrix and cuSOLVER's symmetric eigensolver.
void cuda_svd_full(const float* w, int64_t m, int64_t n, std::vector<float>& u, std::vector<float>& s,
                   std::vector<float>& v, int device = 0);

// The range finder of a randomized SVD on GPU `device` (fp32 products without TF32, cuSOLVER QR):
// from the Gaussian sketch omega_t [l x n] (row-major), `power_iterations` rounds of
// Q <- orth(W orth(W^T Q)); returns q_t = Q^T [l x m] and b = Q^T W [l x n], row-major.
void cuda_range_finder(const float* w, int64_t m, int64_t n, const float* omega_t, int64_t l, int power_iterations,
                       std::vector<float>& q_t, std::vector<float>& b, int device = 0);

}  // namespace rankscope
