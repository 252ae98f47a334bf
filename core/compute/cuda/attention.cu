// Attention kernels: a tensor-core (WMMA) kernel for bf16/fp16 heads of 64 or 128 values and a
// general one for every type and head size up to kMaxHeadDim.
#include <cmath>
#include <mutex>
#include <set>
#include <tuple>

#include <mma.h>

#include "core/compute/cuda/device_common.cuh"
#include "core/compute/cuda/kernels.cuh"

namespace rankscope::cuda {

namespace {

using namespace detail;

// ---- attention ----
//
// One block per (query tile, head, sequence): kWarps warps, each owning kQueriesPerWarp query
// rows. Keys and values are staged through shared memory kKeyTile at a time (fp32, K rows padded
// by one float so that lane j reading key j's row is free of bank conflicts). For each query the
// lane j scores key j of the tile, then an online softmax (running max and sum) updates the
// output accumulators, each lane owning d/32 of the head's d values.
constexpr int kWarps = 4;
constexpr int kQueriesPerWarp = 4;
constexpr int kQueryTile = kWarps * kQueriesPerWarp;
constexpr int kKeyTile = kWarp;

// PerLane = ceil(d / 32): the head values each lane accumulates (registers, hence a template).
template <typename T, int PerLane>
__global__ void __launch_bounds__(kWarps* kWarp)
    attention_kernel(const T* q, int64_t ld_q, const SequenceDesc* seqs, int64_t n_head, int64_t group, int64_t d,
                     bool causal, float scale, T* ctx, int64_t ld_ctx) {
  const SequenceDesc s = seqs[blockIdx.z];
  const int64_t t_begin = int64_t{blockIdx.x} * kQueryTile;
  if (t_begin >= s.n_tokens) return;
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / group;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  extern __shared__ float shared[];
  float* k_tile = shared;                        // [kKeyTile x (d + 1)]
  float* v_tile = k_tile + kKeyTile * (d + 1);   // [kKeyTile x d]
  float* q_tile = v_tile + kKeyTile * d;         // [kQueryTile x d]

  const int64_t t_end = min(t_begin + kQueryTile, s.n_tokens);
  for (int64_t i = threadIdx.x; i < kQueryTile * d; i += blockDim.x) {
    const int64_t t = t_begin + i / d;
    q_tile[i] = t < t_end ? to_float(q[(s.q_row0 + t) * ld_q + h * d + i % d]) * scale : 0.0f;
  }
  float m[kQueriesPerWarp], l[kQueriesPerWarp], acc[kQueriesPerWarp][PerLane];
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
#pragma unroll
    for (int e = 0; e < PerLane; ++e) acc[qi][e] = 0.0f;
  }
  // Keys any query of the tile can see.
  const int64_t n_keys = causal ? s.n_past + t_end : s.n_past + s.n_tokens;
  const T* k = static_cast<const T*>(s.k);
  const T* v = static_cast<const T*>(s.v);
  const float masked = -3.402823466e38f;  // the most negative float, as transformers adds
  for (int64_t j0 = 0; j0 < n_keys; j0 += kKeyTile) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < kKeyTile * d; i += blockDim.x) {
      const int64_t j = j0 + i / d, e = i % d;
      const bool in = j < n_keys;
      k_tile[(i / d) * (d + 1) + e] = in ? to_float(k[j * s.ld_kv + kvh * d + e]) : 0.0f;
      v_tile[i] = in ? to_float(v[j * s.ld_kv + kvh * d + e]) : 0.0f;
    }
    __syncthreads();
    const int64_t j = j0 + lane;
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
      const int64_t t = t_begin + warp * kQueriesPerWarp + qi;
      if (t >= t_end) break;
      const float* qrow = q_tile + (t - t_begin) * d;
      const float* krow = k_tile + lane * (d + 1);
      float score = 0.0f;
      for (int64_t e = 0; e < d; ++e) score += qrow[e] * krow[e];
      bool visible = j < n_keys && (!causal || j <= s.n_past + t) && (s.window == 0 || j > s.n_past + t - s.window);
      if (visible && s.mask != nullptr && j >= s.n_past && s.mask[j - s.n_past] == 0) score += masked;
      if (!visible) score = -INFINITY;
      const float tile_max = warp_max(score);
      if (tile_max == -INFINITY) continue;  // nothing visible in this tile
      const float m_new = fmaxf(m[qi], tile_max);
      const float p = expf(score - m_new);
      const float correction = expf(m[qi] - m_new);
      l[qi] = l[qi] * correction + warp_sum(p);
      m[qi] = m_new;
#pragma unroll
      for (int e = 0; e < PerLane; ++e) acc[qi][e] *= correction;
      for (int jj = 0; jj < kKeyTile; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
        const float* vrow = v_tile + jj * d;
#pragma unroll
        for (int e = 0; e < PerLane; ++e) {
          if (lane + e * kWarp < d) acc[qi][e] += pj * vrow[lane + e * kWarp];
        }
      }
    }
  }
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    const int64_t t = t_begin + warp * kQueriesPerWarp + qi;
    if (t >= t_end) break;
    T* out = ctx + (s.q_row0 + t) * ld_ctx + h * d;
#pragma unroll
    for (int e = 0; e < PerLane; ++e) {
      if (lane + e * kWarp < d) out[lane + e * kWarp] = from_float<T>(acc[qi][e] / l[qi]);
    }
  }
}

// ---- attention on tensor cores (bf16/fp16) ----
//
// One block per (64 queries, head, sequence), 4 warps of 16 query rows. Q, K and V tiles are staged
// in shared memory as they are; S = Q K^T and O += P V run as 16x16x16 WMMA products with fp32
// accumulation. Two passes over the keys: the first finds each row's softmax maximum and sum, the
// second forms the normalised probabilities P (rounded to the compute type) and accumulates P V,
// so the output accumulators never need rescaling. Scores are kept in base 2 (scaled by log2 e), so
// the exponentials are single exp2 instructions. A warp's P tile reuses its S tile's shared memory,
// so that three blocks fit an SM.
namespace wmma = nvcuda::wmma;
constexpr int kTcRows = 16;                   // query rows per warp
constexpr int kTcQueries = kWarps * kTcRows;  // per block
constexpr int kTcKeys = 64;                   // keys per tile
// Row strides of the score (fp32) and probability tiles, padded so that the lanes of a warp,
// reading 16 rows in a staggered column order, hit 32 different banks.
constexpr int kSStride = kTcKeys + 4;
constexpr int kPStride = kTcKeys + 8;
static_assert(kPStride * 2 <= kSStride * 4, "a warp's P tile fits in its S tile");
constexpr int kTcBlocksPerSm = 3;

// Row stride of the Q, K and V tiles in shared memory: D plus 8 elements (16 bytes), so that the
// 16 rows a WMMA fragment reads start in different banks (with a stride of D = 64 or 128 values,
// 128 or 256 bytes, every row started in the same bank and the loads were serialised).
template <int D>
__host__ __device__ constexpr int tile_stride() { return D + 8; }

// Rows [0, n) of a [Rows x D] tile (row stride tile_stride<D>()) from global rows of stride ld
// (zeros beyond n), in 16-byte copies. Every load of a thread is issued before its first store,
// so their latencies overlap (one after another they made the kernel wait on memory most of its
// time).
template <typename T, int D, int Rows>
__device__ void load_tile(T* dst, const T* src, int64_t ld, int64_t n) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kPerRow = D / kVec;
  constexpr int kThreads = kWarps * kWarp;
  constexpr int kPerThread = Rows * kPerRow / kThreads;
  static_assert(Rows * kPerRow % kThreads == 0, "tiles split evenly over the block");
  uint4 v[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * kThreads;
    const int r = i / kPerRow, c = (i % kPerRow) * kVec;
    v[k] = r < n ? *reinterpret_cast<const uint4*>(src + r * ld + c) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * kThreads;
    *reinterpret_cast<uint4*>(dst + (i / kPerRow) * tile_stride<D>() + (i % kPerRow) * kVec) = v[k];
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kWarps* kWarp, kTcBlocksPerSm)
    attention_tc_kernel(const T* q, int64_t ld_q, const SequenceDesc* seqs, int64_t group, bool causal, float scale,
                        T* ctx, int64_t ld_ctx) {
  const SequenceDesc s = seqs[blockIdx.z];
  const int64_t t_begin = int64_t{blockIdx.x} * kTcQueries;
  if (t_begin >= s.n_tokens) return;
  const int64_t h = blockIdx.y, kvh = h / group;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t t_end = min(t_begin + kTcQueries, s.n_tokens);
  const int64_t n_keys = causal ? s.n_past + t_end : s.n_past + s.n_tokens;

  constexpr int L = tile_stride<D>();
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_s = reinterpret_cast<T*>(smem);                                  // [kTcQueries x D], stride L
  T* k_s = q_s + kTcQueries * L;                                         // [kTcKeys x D], stride L
  T* v_s = k_s + kTcKeys * L;                                            // [kTcKeys x D], stride L
  float* s_w = reinterpret_cast<float*>(v_s + kTcKeys * L) + warp * kTcRows * kSStride;  // this warp's [16 x 64]
  T* p_w = reinterpret_cast<T*>(s_w);                                    // the same memory, once S is read

  load_tile<T, D, kTcQueries>(q_s, q + (s.q_row0 + t_begin) * ld_q + h * D, ld_q, t_end - t_begin);
  const T* k = static_cast<const T*>(s.k) + kvh * D;
  const T* v = static_cast<const T*>(s.v) + kvh * D;

  // This lane's share of the softmax: row lane/2 of the warp's 16, columns (lane%2)*32 + [0, 32)
  // visited from column stagger(i) so that the warp's reads fall in distinct banks.
  const int row = lane / 2, col0 = (lane % 2) * 32;
  const int stagger = row + 16 * (lane % 2);
  auto column = [&](int i) { return col0 + (i + stagger) % 32; };
  const int64_t t = t_begin + warp * kTcRows + row;  // its query, within the sequence
  const float masked = -3.402823466e38f;
  const float scale2 = scale * 1.4426950408889634f;  // scores in base 2
  auto score_at = [&](int c, int64_t j0) {
    const int64_t j = j0 + c;
    if (t >= t_end || j >= n_keys || (causal && j > s.n_past + t) || (s.window > 0 && j <= s.n_past + t - s.window)) {
      return -INFINITY;
    }
    float x = s_w[row * kSStride + c] * scale2;
    if (s.mask != nullptr && j >= s.n_past && s.mask[j - s.n_past] == 0) x += masked;
    return x;
  };
  // S = Q_w K^T for the staged key tile, into s_w.
  auto scores = [&] {
    for (int n = 0; n < kTcKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(a, q_s + warp * kTcRows * L + kk * 16, L);
        wmma::load_matrix_sync(b, k_s + n * 16 * L + kk * 16, L);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(s_w + n * 16, acc, kSStride, wmma::mem_row_major);
    }
    __syncwarp();
  };

  // Pass 1: each row's maximum m and sum l of exp(score - m).
  float m = -INFINITY, l = 0.0f;
  for (int64_t j0 = 0; j0 < n_keys; j0 += kTcKeys) {
    __syncthreads();
    load_tile<T, D, kTcKeys>(k_s, k + j0 * s.ld_kv, s.ld_kv, min(static_cast<int64_t>(kTcKeys), n_keys - j0));
    __syncthreads();
    scores();
    float x[32];
    float tile_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      x[i] = score_at(column(i), j0);
      tile_max = fmaxf(tile_max, x[i]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    float sum = 0.0f;
    if (m_new != -INFINITY) {
#pragma unroll
      for (int i = 0; i < 32; ++i) sum += exp2f(x[i] - m_new);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if (m_new != -INFINITY) {
      l = l * exp2f(m - m_new) + sum;
      m = m_new;
    }
    __syncwarp();
  }

  // Pass 2: P = exp(score - m) / l in the compute type, O += P V.
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[D / 16];
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::fill_fragment(o[n], 0.0f);
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  for (int64_t j0 = 0; j0 < n_keys; j0 += kTcKeys) {
    __syncthreads();
    const int64_t n_tile = min(static_cast<int64_t>(kTcKeys), n_keys - j0);
    load_tile<T, D, kTcKeys>(k_s, k + j0 * s.ld_kv, s.ld_kv, n_tile);
    load_tile<T, D, kTcKeys>(v_s, v + j0 * s.ld_kv, s.ld_kv, n_tile);
    __syncthreads();
    scores();
    float x[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) x[i] = score_at(column(i), j0);
    __syncwarp();  // every lane has read S before P overwrites it
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      p_w[row * kPStride + column(i)] = from_float<T>(x[i] == -INFINITY ? 0.0f : exp2f(x[i] - m) * inv_l);
    }
    __syncwarp();
    for (int kk = 0; kk < kTcKeys / 16; ++kk) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, p_w + kk * 16, kPStride);
#pragma unroll
      for (int n = 0; n < D / 16; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
        wmma::load_matrix_sync(b, v_s + kk * 16 * L + n * 16, L);
        wmma::mma_sync(o[n], a, b, o[n]);
      }
    }
    __syncwarp();
  }
  // Stage O through shared memory (the Q and K tiles' space) and write the valid rows.
  __syncthreads();
  float* o_w = reinterpret_cast<float*>(smem) + warp * kTcRows * D;
#pragma unroll
  for (int n = 0; n < D / 16; ++n) wmma::store_matrix_sync(o_w + n * 16, o[n], D, wmma::mem_row_major);
  __syncwarp();
  for (int i = lane; i < kTcRows * D; i += kWarp) {
    const int r = i / D, e = i % D;
    const int64_t tr = t_begin + warp * kTcRows + r;
    if (tr < t_end) ctx[(s.q_row0 + tr) * ld_ctx + h * D + e] = from_float<T>(o_w[i]);
  }
}

// Raises a kernel's dynamic shared memory limit to `bytes` (once per kernel, device and size).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  static std::mutex mutex;
  static std::set<std::tuple<const void*, int, size_t>> done;
  int device = 0;
  cudaGetDevice(&device);
  const std::lock_guard<std::mutex> lock(mutex);
  if (done.insert({reinterpret_cast<const void*>(kernel), device, bytes}).second) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  }
}

template <typename T, int D>
cudaError_t launch_attention_tc(const void* q, int64_t ld_q, const SequenceDesc* seqs, int64_t n_seq, int64_t max_tokens,
                                int64_t n_head, int64_t group, bool causal, float scale, void* ctx, int64_t ld_ctx,
                                cudaStream_t stream) {
  constexpr int L = tile_stride<D>();
  const size_t shared = sizeof(T) * static_cast<size_t>(kTcQueries * L + 2 * kTcKeys * L) +
                        sizeof(float) * static_cast<size_t>(kWarps * kTcRows * kSStride);
  static_assert(sizeof(T) * (kTcQueries + kTcKeys) * L >= sizeof(float) * kWarps * kTcRows * D, "O staging fits");
  allow_shared(attention_tc_kernel<T, D>, shared);
  const dim3 grid(static_cast<unsigned>((max_tokens + kTcQueries - 1) / kTcQueries), static_cast<unsigned>(n_head),
                  static_cast<unsigned>(n_seq));
  attention_tc_kernel<T, D><<<grid, kWarps * kWarp, shared, stream>>>(static_cast<const T*>(q), ld_q, seqs, group, causal,
                                                                      scale, static_cast<T*>(ctx), ld_ctx);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention(const void* q, int64_t ld_q, const SequenceDesc* seqs, int64_t n_seq, int64_t max_tokens, int64_t n_head,
               int64_t n_head_kv, int64_t n_embd_head, bool causal, void* ctx, int64_t ld_ctx, ComputeType type,
               bool kv_aligned, cudaStream_t stream) {
  if (n_seq == 0 || max_tokens == 0) return cudaSuccess;
  if (n_embd_head < 1 || n_embd_head > kMaxHeadDim) return cudaErrorInvalidValue;
  const int64_t d = n_embd_head;
  // Tensor cores for bf16/fp16 heads of 64 or 128 values whose rows are 16-byte aligned.
  if (type != ComputeType::f32 && (d == 64 || d == 128) && ld_q % 8 == 0 && kv_aligned) {
    const float tc_scale = 1.0f / std::sqrt(static_cast<float>(d));
    const int64_t group = n_head / n_head_kv;
    if (type == ComputeType::bf16) {
      return d == 64 ? launch_attention_tc<__nv_bfloat16, 64>(q, ld_q, seqs, n_seq, max_tokens, n_head, group, causal,
                                                               tc_scale, ctx, ld_ctx, stream)
                     : launch_attention_tc<__nv_bfloat16, 128>(q, ld_q, seqs, n_seq, max_tokens, n_head, group, causal,
                                                                tc_scale, ctx, ld_ctx, stream);
    }
    return d == 64 ? launch_attention_tc<__half, 64>(q, ld_q, seqs, n_seq, max_tokens, n_head, group, causal, tc_scale,
                                                     ctx, ld_ctx, stream)
                   : launch_attention_tc<__half, 128>(q, ld_q, seqs, n_seq, max_tokens, n_head, group, causal, tc_scale,
                                                      ctx, ld_ctx, stream);
  }
  const size_t shared = sizeof(float) * static_cast<size_t>(kKeyTile * (d + 1) + kKeyTile * d + kQueryTile * d);
  const dim3 grid(static_cast<unsigned>((max_tokens + kQueryTile - 1) / kQueryTile), static_cast<unsigned>(n_head),
                  static_cast<unsigned>(n_seq));
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  dispatch(type, [&](auto t) {
    using T = decltype(t);
    auto launch = [&](auto kernel) {
      allow_shared(kernel, shared);
      kernel<<<grid, kWarps * kWarp, shared, stream>>>(static_cast<const T*>(q), ld_q, seqs, n_head,
                                                       n_head / n_head_kv, d, causal, scale, static_cast<T*>(ctx),
                                                       ld_ctx);
    };
    switch ((d + kWarp - 1) / kWarp) {
      case 1: launch(attention_kernel<T, 1>); break;
      case 2: launch(attention_kernel<T, 2>); break;
      case 3: launch(attention_kernel<T, 3>); break;
      case 4: launch(attention_kernel<T, 4>); break;
      case 5: launch(attention_kernel<T, 5>); break;
      case 6: launch(attention_kernel<T, 6>); break;
      case 7: launch(attention_kernel<T, 7>); break;
      default: launch(attention_kernel<T, 8>); break;
    }
  });
  return cudaGetLastError();
}

}  // namespace rankscope::cuda
