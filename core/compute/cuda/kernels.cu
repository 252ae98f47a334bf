#include "core/compute/cuda/kernels.cuh"
#include "core/compute/cuda/device_common.cuh"

#include <cmath>
#include <cstdio>
#include <limits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>


namespace rankscope::cuda {

namespace {

using namespace detail;

unsigned blocks_for(int64_t n, int per_block = kBlock) {
  return static_cast<unsigned>(std::min<int64_t>((n + per_block - 1) / per_block, int64_t{1} << 20));
}

// Sum over a block of kBlock threads; every thread gets the result.
template <typename V>
__device__ V block_sum(V v) {
  __shared__ V partial[kBlock / kWarp];
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  V total = 0;
  for (int i = 0; i < kBlock / kWarp; ++i) total += partial[i];
  return total;
}

// ---- element-wise ----

template <typename Ti, typename To>
__global__ void convert_kernel(const Ti* src, To* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    dst[i] = from_float<To>(to_float(src[i]));
  }
}

template <typename T>
__global__ void embed_kernel(const T* table, const int32_t* ids, int64_t cols, float* x, bool accumulate) {
  const int64_t r = blockIdx.x;
  const T* src = table + int64_t{ids[r]} * cols;
  float* dst = x + r * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = to_float(src[c]);
    dst[c] = accumulate ? dst[c] + v : v;
  }
}

template <typename To>
__global__ void rms_norm_kernel(const float* x, const float* w, float eps, int64_t cols, To* out) {
  const int64_t r = blockIdx.x;
  const float* row = x + r * cols;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += row[c] * row[c];
  const float mean_sq = block_sum(ss) / static_cast<float>(cols);
  const float scale = 1.0f / sqrtf(mean_sq + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = from_float<To>(row[c] * scale * w[c]);
}

template <typename T>
__global__ void segment_rms_norm_kernel(T* x, int64_t d, const float* w, float eps) {
  T* seg = x + int64_t{blockIdx.x} * d;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = to_float(seg[c]);
    ss += v * v;
  }
  const float scale = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(d) + eps);
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) seg[c] = from_float<T>(to_float(seg[c]) * scale * w[c]);
}

// Four consecutive values to `out` (16 bytes of fp32, 8 of bf16/fp16; out 4-element aligned).
template <typename To>
__device__ __forceinline__ void store4(To* out, float4 v) {
  if constexpr (sizeof(To) == 4) {
    *reinterpret_cast<float4*>(out) = v;
  } else {
    To t[4] = {from_float<To>(v.x), from_float<To>(v.y), from_float<To>(v.z), from_float<To>(v.w)};
    *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(t);
  }
}

// rms_norm_kernel for rows of cols <= 4 * Per * kBlock values, cols a multiple of 4 and 16-byte
// aligned rows: the row is read once, 16 bytes a load, and kept in registers.
template <typename To, int Per>
__global__ void __launch_bounds__(kBlock) rms_norm_vec_kernel(const float* x, const float* w, float eps, int cols, To* out) {
  const int64_t r = blockIdx.x;
  const auto* row = reinterpret_cast<const float4*>(x + r * cols);
  const auto* w4 = reinterpret_cast<const float4*>(w);
  const int n4 = cols / 4;
  float4 v[Per];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < Per; ++k) {
    const int i = threadIdx.x + k * kBlock;
    v[k] = i < n4 ? row[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
  }
  const float scale = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(cols) + eps);
#pragma unroll
  for (int k = 0; k < Per; ++k) {
    const int i = threadIdx.x + k * kBlock;
    if (i < n4) {
      const float4 g = w4[i];
      store4(out + r * cols + 4 * int64_t{i},
             make_float4(v[k].x * scale * g.x, v[k].y * scale * g.y, v[k].z * scale * g.z, v[k].w * scale * g.w));
    }
  }
}

template <typename To>
__global__ void layer_norm_kernel(float* x, const float* w, const float* b, float eps, int64_t cols, To* copy) {
  const int64_t r = blockIdx.x;
  float* row = x + r * cols;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += row[c];
  const float mean = block_sum(s) / static_cast<float>(cols);
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += (row[c] - mean) * (row[c] - mean);
  const float scale = 1.0f / sqrtf(block_sum(ss) / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = (row[c] - mean) * scale * w[c] + b[c];
    row[c] = v;
    if (copy != nullptr) copy[r * cols + c] = from_float<To>(v);
  }
}

template <typename T>
__global__ void add_bias_kernel(T* y, const float* bias, int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    y[i] = from_float<T>(to_float(y[i]) + bias[i % cols]);
  }
}

__global__ void rope_table_kernel(const int64_t* positions, const float* inv_freq, int64_t n, int64_t half, float* table) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    // Angles in fp32 as transformers computes them; precise sinf/cosf.
    const float angle = static_cast<float>(positions[i / half]) * inv_freq[i % half];
    sincosf(angle, &table[2 * i + 1], &table[2 * i]);
  }
}

// Head stride d; the first `rot` values of each head rotate (partial rotary when rot < d).
template <typename T>
__global__ void rope_kernel(T* x, int64_t n_heads, int64_t d, int64_t rot, const float* table) {
  const int64_t r = blockIdx.x;
  const int64_t half = rot / 2;
  const float* cs = table + r * half * 2;
  T* row = x + r * n_heads * d;
  for (int64_t i = threadIdx.x; i < n_heads * half; i += blockDim.x) {
    const int64_t h = i / half, j = i % half;
    const float c = cs[2 * j], s = cs[2 * j + 1];
    T* head = row + h * d;
    const float a = to_float(head[j]), b = to_float(head[j + half]);
    head[j] = from_float<T>(a * c - b * s);
    head[j + half] = from_float<T>(b * c + a * s);
  }
}

// RoPE on 16 bytes a thread: block r rotates row r; thread i takes head i / groups and the V values
// j0 = (i % groups) * V .. j0 + V - 1 of its first half with their partners j + half (half a
// multiple of V, rows 16-byte aligned). 32-bit index arithmetic: 64-bit division is a long
// software sequence on the GPU.
template <typename T>
__global__ void rope_vec_kernel(T* x, int n_heads, int d, int rot, const float* table) {
  constexpr int V = 16 / sizeof(T);
  const int64_t r = blockIdx.x;
  const int half = rot / 2, groups = half / V;
  const float* cs_row = table + r * half * 2;
  T* row = x + r * n_heads * d;
  for (int i = threadIdx.x; i < n_heads * groups; i += blockDim.x) {
    const int h = i / groups, j0 = (i % groups) * V;
    T* head = row + h * d;
    uint4 a4 = *reinterpret_cast<const uint4*>(head + j0);
    uint4 b4 = *reinterpret_cast<const uint4*>(head + j0 + half);
    const auto* cs = reinterpret_cast<const float4*>(cs_row + 2 * j0);  // V (cos, sin) pairs
    T* a = reinterpret_cast<T*>(&a4);
    T* b = reinterpret_cast<T*>(&b4);
#pragma unroll
    for (int k = 0; k < V / 2; ++k) {
      const float4 t = cs[k];
      const float a0 = to_float(a[2 * k]), b0 = to_float(b[2 * k]);
      const float a1 = to_float(a[2 * k + 1]), b1 = to_float(b[2 * k + 1]);
      a[2 * k] = from_float<T>(a0 * t.x - b0 * t.y);
      b[2 * k] = from_float<T>(b0 * t.x + a0 * t.y);
      a[2 * k + 1] = from_float<T>(a1 * t.z - b1 * t.w);
      b[2 * k + 1] = from_float<T>(b1 * t.z + a1 * t.w);
    }
    *reinterpret_cast<uint4*>(head + j0) = a4;
    *reinterpret_cast<uint4*>(head + j0 + half) = b4;
  }
}

__device__ __forceinline__ float activate(float v, Activation act) {
  switch (act) {
    // __expf and __fdividef: a few ulp from expf and '/', far below the bf16/fp16 rounding of the
    // result and the 1e-4 the fp32 path is held to; __fdividef(v, inf) is 0, as v / inf.
    case Activation::silu: return __fdividef(v, 1.0f + __expf(-v));
    case Activation::gelu_erf: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case Activation::gelu_tanh: return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case Activation::relu: return v > 0.0f ? v : 0.0f;
  }
  return v;
}

template <typename T>
__global__ void activation_kernel(T* x, int64_t n, Activation act) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = from_float<T>(activate(to_float(x[i]), act));
  }
}

template <typename T>
__global__ void gated_activation_kernel(T* gate, const T* up, int64_t n, Activation act) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    gate[i] = from_float<T>(activate(to_float(gate[i]), act) * to_float(up[i]));
  }
}

// The same on 16 bytes a thread (n a multiple of their element count, 16-byte aligned buffers).
template <typename T>
__global__ void gated_activation_vec_kernel(uint4* gate, const uint4* up, int64_t n_vec, Activation act) {
  constexpr int kVec = 16 / sizeof(T);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n_vec; i += int64_t{gridDim.x} * blockDim.x) {
    uint4 g = gate[i];
    const uint4 u = up[i];
    T* gv = reinterpret_cast<T*>(&g);
    const T* uv = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int k = 0; k < kVec; ++k) gv[k] = from_float<T>(activate(to_float(gv[k]), act) * to_float(uv[k]));
    gate[i] = g;
  }
}

template <typename T>
__global__ void tanh_kernel(T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = from_float<T>(tanhf(to_float(x[i])));
  }
}

template <typename T>
__global__ void add_kernel(float* x, const T* y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    x[i] += to_float(y[i]);
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* x, const int64_t* rows, int64_t cols, T* out) {
  const int64_t i = blockIdx.x;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = x[rows[i] * cols + c];
}

template <typename T>
__global__ void append_rows_kernel(const T* src, int64_t ld, const AppendDesc* seqs, int64_t cols) {
  const AppendDesc s = seqs[blockIdx.y];
  const int64_t t = blockIdx.x;
  if (t >= s.n_tokens) return;
  const T* from = src + (s.src_row0 + t) * ld;
  T* to = static_cast<T*>(s.dst) + t * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) to[c] = from[c];
}

// ---- log-softmax scoring ----

__global__ void score_kernel(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets,
                             double* logprob, uint8_t* is_argmax) {
  const float* row = logits + rows[blockIdx.x] * n_vocab;
  __shared__ float best_value[kBlock];
  __shared__ int64_t best_index[kBlock];
  __shared__ int finite_flag;
  if (threadIdx.x == 0) finite_flag = 1;
  __syncthreads();
  float best = -INFINITY;
  int64_t index = n_vocab;
  bool finite = true;
  for (int64_t i = threadIdx.x; i < n_vocab; i += blockDim.x) {
    const float v = row[i];
    if (!isfinite(v)) finite = false;
    if (v > best) {  // strided: the first maximum within this thread's indices
      best = v;
      index = i;
    }
  }
  if (!finite) finite_flag = 0;
  best_value[threadIdx.x] = best;
  best_index[threadIdx.x] = index;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float ov = best_value[threadIdx.x + stride];
      const int64_t oi = best_index[threadIdx.x + stride];
      if (ov > best_value[threadIdx.x] || (ov == best_value[threadIdx.x] && oi < best_index[threadIdx.x])) {
        best_value[threadIdx.x] = ov;
        best_index[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  const float max = best_value[0];
  const int64_t argmax = best_index[0];
  if (!finite_flag) {
    if (threadIdx.x == 0) {
      logprob[blockIdx.x] = nan("");
      is_argmax[blockIdx.x] = 0;
    }
    return;
  }
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < n_vocab; i += blockDim.x) sum += exp(static_cast<double>(row[i]) - max);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    const int32_t target = targets[blockIdx.x];
    logprob[blockIdx.x] = static_cast<double>(row[target]) - max - log(sum);
    is_argmax[blockIdx.x] = argmax == target ? 1 : 0;
  }
}

__global__ void compare_kernel(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets,
                               const float* base, float* log_probs, double* kl, double* logprob, int32_t* argmax) {
  const int64_t i = blockIdx.x;
  const float* row = logits + rows[i] * n_vocab;
  __shared__ float best_value[kBlock];
  __shared__ int64_t best_index[kBlock];
  float best = row[0];
  int64_t index = 0;
  for (int64_t v = threadIdx.x; v < n_vocab; v += blockDim.x) {
    if (row[v] > best) {  // strided: the first maximum within this thread's indices
      best = row[v];
      index = v;
    }
  }
  best_value[threadIdx.x] = best;
  best_index[threadIdx.x] = index;
  __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const float ov = best_value[threadIdx.x + stride];
      const int64_t oi = best_index[threadIdx.x + stride];
      const float mv = best_value[threadIdx.x];
      const int64_t mi = best_index[threadIdx.x];
      if (ov > mv || (ov == mv && oi < mi)) {
        best_value[threadIdx.x] = ov;
        best_index[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  const double max = best_value[0];
  double sum = 0.0;
  for (int64_t v = threadIdx.x; v < n_vocab; v += blockDim.x) sum += exp(static_cast<double>(row[v]) - max);
  sum = block_sum(sum);
  const double lse = log(sum);
  double k = 0.0;
  const float* lb = base != nullptr ? base + i * n_vocab : nullptr;
  float* out = log_probs != nullptr ? log_probs + i * n_vocab : nullptr;
  if (lb != nullptr || out != nullptr) {
    for (int64_t v = threadIdx.x; v < n_vocab; v += blockDim.x) {
      const auto lc = static_cast<float>(static_cast<double>(row[v]) - max - lse);
      if (out != nullptr) out[v] = lc;
      if (lb != nullptr) {
        const double lpb = lb[v];
        k += exp(lpb) * (lpb - static_cast<double>(lc));
      }
    }
  }
  if (lb != nullptr) k = block_sum(k);
  if (threadIdx.x == 0) {
    kl[i] = k;
    logprob[i] = static_cast<double>(row[targets[i]]) - max - lse;
    argmax[i] = static_cast<int32_t>(best_index[0]);
  }
}

template <typename T>
__global__ void widen_kernel(const T* x, double* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<double>(to_float(x[i]));
  }
}

template <typename T>
__global__ void abs_column_sum_kernel(const T* x, int64_t rows, int64_t width, double* acc) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= width) return;
  double s = 0.0;
  for (int64_t r = 0; r < rows; ++r) s += fabs(static_cast<double>(to_float(x[r * width + j])));
  acc[j] += s;
}

__global__ void reverse_columns_kernel(const double* src, int64_t rows, int64_t cols, const double* scale, float* out) {
  const int64_t n = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e % cols;
    const double v = src[i * cols + cols - 1 - j];
    out[e] = static_cast<float>(scale != nullptr ? v * scale[j] : v);
  }
}

__global__ void eigenvectors_descending_kernel(const double* ev, int64_t k, float* out) {
  const int64_t n = k * k;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / k, j = e % k;
    out[e] = static_cast<float>(ev[(k - 1 - j) * k + i]);
  }
}

}  // namespace

cudaError_t reverse_columns(const double* src, int64_t rows, int64_t cols, const double* scale, float* out,
                            cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((rows * cols + kBlock - 1) / kBlock, 65535));
  reverse_columns_kernel<<<blocks, kBlock, 0, stream>>>(src, rows, cols, scale, out);
  return cudaGetLastError();
}

cudaError_t eigenvectors_descending(const double* ev, int64_t k, float* out, cudaStream_t stream) {
  if (k == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((k * k + kBlock - 1) / kBlock, 65535));
  eigenvectors_descending_kernel<<<blocks, kBlock, 0, stream>>>(ev, k, out);
  return cudaGetLastError();
}

cudaError_t compare_rows(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets, int64_t n,
                         const float* base, float* log_probs, double* kl, double* logprob, int32_t* argmax,
                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  compare_kernel<<<static_cast<unsigned>(n), kBlock, 0, stream>>>(logits, n_vocab, rows, targets, base, log_probs, kl,
                                                                  logprob, argmax);
  return cudaGetLastError();
}

cudaError_t widen_to_double(const void* x, ComputeType type, int64_t n, double* out, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    const auto blocks = static_cast<unsigned>(std::min<int64_t>((n + kBlock - 1) / kBlock, 65535));
    widen_kernel<<<blocks, kBlock, 0, stream>>>(static_cast<const T*>(x), out, n);
  });
  return cudaGetLastError();
}

cudaError_t add_abs_column_sums(const void* x, ComputeType type, int64_t rows, int64_t width, double* acc,
                                cudaStream_t stream) {
  if (rows == 0 || width == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    const auto blocks = static_cast<unsigned>((width + kBlock - 1) / kBlock);
    abs_column_sum_kernel<<<blocks, kBlock, 0, stream>>>(static_cast<const T*>(x), rows, width, acc);
  });
  return cudaGetLastError();
}

cudaError_t convert(const void* src, ComputeType src_type, void* dst, ComputeType dst_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(src_type, [&](auto ti) {
    using Ti = decltype(ti);
    dispatch(dst_type, [&](auto to) {
      using To = decltype(to);
      convert_kernel<<<blocks_for(n), kBlock, 0, stream>>>(static_cast<const Ti*>(src), static_cast<To*>(dst), n);
    });
  });
  return cudaGetLastError();
}

cudaError_t embed(const void* table, ComputeType table_type, const int32_t* ids, int64_t n_rows, int64_t cols, float* x,
           bool accumulate, cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  dispatch(table_type, [&](auto t) {
    using T = decltype(t);
    embed_kernel<<<static_cast<unsigned>(n_rows), kBlock, 0, stream>>>(static_cast<const T*>(table), ids, cols, x,
                                                                       accumulate);
  });
  return cudaGetLastError();
}

cudaError_t segment_rms_norm(void* x, ComputeType type, int64_t segments, int64_t d, const float* weight, double eps,
                             cudaStream_t stream) {
  if (segments == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    segment_rms_norm_kernel<<<static_cast<unsigned>(segments), kBlock, 0, stream>>>(static_cast<T*>(x), d, weight,
                                                                                    static_cast<float>(eps));
  });
  return cudaGetLastError();
}

cudaError_t rms_norm(const float* x, const float* weight, double eps, int64_t rows, int64_t cols, void* out,
              ComputeType out_type, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const bool vec = cols % 4 == 0 && cols <= 8 * 4 * kBlock && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(weight) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  dispatch(out_type, [&](auto t) {
    using T = decltype(t);
    const auto grid = static_cast<unsigned>(rows);
    const auto e = static_cast<float>(eps);
    if (vec && cols <= 4 * 4 * kBlock) {
      rms_norm_vec_kernel<T, 4><<<grid, kBlock, 0, stream>>>(x, weight, e, static_cast<int>(cols), static_cast<T*>(out));
    } else if (vec) {
      rms_norm_vec_kernel<T, 8><<<grid, kBlock, 0, stream>>>(x, weight, e, static_cast<int>(cols), static_cast<T*>(out));
    } else {
      rms_norm_kernel<<<grid, kBlock, 0, stream>>>(x, weight, e, cols, static_cast<T*>(out));
    }
  });
  return cudaGetLastError();
}

cudaError_t layer_norm(float* x, const float* weight, const float* bias, double eps, int64_t rows, int64_t cols, void* copy,
                ComputeType copy_type, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch(copy_type, [&](auto t) {
    using T = decltype(t);
    layer_norm_kernel<<<static_cast<unsigned>(rows), kBlock, 0, stream>>>(x, weight, bias, static_cast<float>(eps),
                                                                          cols, static_cast<T*>(copy));
  });
  return cudaGetLastError();
}

cudaError_t add_bias(void* y, ComputeType type, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    add_bias_kernel<<<blocks_for(rows * cols), kBlock, 0, stream>>>(static_cast<T*>(y), bias, rows, cols);
  });
  return cudaGetLastError();
}

cudaError_t rope_table(const int64_t* positions, const float* inv_freq, int64_t rows, int64_t half, float* table,
                       cudaStream_t stream) {
  if (rows * half == 0) return cudaSuccess;
  rope_table_kernel<<<blocks_for(rows * half), kBlock, 0, stream>>>(positions, inv_freq, rows * half, half, table);
  return cudaGetLastError();
}

cudaError_t rope(void* x, ComputeType type, int64_t rows, int64_t n_heads, int64_t n_embd_head, int64_t n_rot,
                 const float* table, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    constexpr int V = 16 / sizeof(T);
    const int64_t half = n_rot / 2;
    // 16-byte loads need every head (stride n_embd_head) and its second half aligned too.
    if (half % V == 0 && n_embd_head % V == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(table) % 16 == 0 && n_heads * n_embd_head < (int64_t{1} << 30)) {
      const auto threads = static_cast<unsigned>(std::min<int64_t>(kBlock, n_heads * (half / V)));
      rope_vec_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(
          static_cast<T*>(x), static_cast<int>(n_heads), static_cast<int>(n_embd_head), static_cast<int>(n_rot), table);
    } else {
      rope_kernel<<<static_cast<unsigned>(rows), kBlock, 0, stream>>>(static_cast<T*>(x), n_heads, n_embd_head, n_rot,
                                                                      table);
    }
  });
  return cudaGetLastError();
}

cudaError_t activation(void* x, ComputeType type, int64_t n, Activation act, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    activation_kernel<<<blocks_for(n), kBlock, 0, stream>>>(static_cast<T*>(x), n, act);
  });
  return cudaGetLastError();
}

cudaError_t gated_activation(void* gate, const void* up, ComputeType type, int64_t n, Activation act, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    constexpr int kVec = 16 / sizeof(T);
    const bool aligned = reinterpret_cast<uintptr_t>(gate) % 16 == 0 && reinterpret_cast<uintptr_t>(up) % 16 == 0;
    if (aligned && n % kVec == 0) {
      gated_activation_vec_kernel<T><<<blocks_for(n / kVec), kBlock, 0, stream>>>(
          static_cast<uint4*>(gate), static_cast<const uint4*>(up), n / kVec, act);
    } else {
      gated_activation_kernel<<<blocks_for(n), kBlock, 0, stream>>>(static_cast<T*>(gate), static_cast<const T*>(up), n,
                                                                    act);
    }
  });
  return cudaGetLastError();
}

cudaError_t tanh_inplace(void* x, ComputeType type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    tanh_kernel<<<blocks_for(n), kBlock, 0, stream>>>(static_cast<T*>(x), n);
  });
  return cudaGetLastError();
}

cudaError_t add(float* x, const void* y, ComputeType y_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch(y_type, [&](auto t) {
    using T = decltype(t);
    add_kernel<<<blocks_for(n), kBlock, 0, stream>>>(x, static_cast<const T*>(y), n);
  });
  return cudaGetLastError();
}

cudaError_t gather_rows(const void* x, const int64_t* rows, int64_t n_rows, int64_t cols, void* out, ComputeType type,
                 cudaStream_t stream) {
  if (n_rows == 0) return cudaSuccess;
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    gather_rows_kernel<<<static_cast<unsigned>(n_rows), kBlock, 0, stream>>>(static_cast<const T*>(x), rows, cols,
                                                                             static_cast<T*>(out));
  });
  return cudaGetLastError();
}

cudaError_t append_rows(const void* src, int64_t ld, const AppendDesc* seqs, int64_t n_seq, int64_t max_tokens, int64_t cols,
                 ComputeType type, cudaStream_t stream) {
  if (n_seq == 0 || max_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(max_tokens), static_cast<unsigned>(n_seq));
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    append_rows_kernel<<<grid, kBlock, 0, stream>>>(static_cast<const T*>(src), ld, seqs, cols);
  });
  return cudaGetLastError();
}

cudaError_t score(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets, int64_t n, double* logprob,
           uint8_t* is_argmax, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  score_kernel<<<static_cast<unsigned>(n), kBlock, 0, stream>>>(logits, n_vocab, rows, targets, logprob, is_argmax);
  return cudaGetLastError();
}

}  // namespace rankscope::cuda
