// Device helpers shared by the CUDA kernel files: element conversions, type dispatch, warp sums.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "core/compute/op_params.hpp"

namespace rankscope::cuda::detail {

constexpr int kBlock = 256;
constexpr int kWarp = 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

// Calls f(T{}) with T the element type of `type`.
template <typename F>
void dispatch(ComputeType type, F&& f) {
  switch (type) {
    case ComputeType::f32: f(float{}); return;
    case ComputeType::bf16: f(__nv_bfloat16{}); return;
    case ComputeType::f16: f(__half{}); return;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace rankscope::cuda::detail
