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

}  // namespace rankscope
