// The small kernels of the CUDA backend. Every launcher takes the element type of its buffers as
// a ComputeType and runs on `stream`; fp32 is used for the residual stream, norms' weights and
// biases, bf16/fp16/fp32 for the inputs and outputs of matrix products. All arithmetic is fp32
// (log-softmax sums in fp64). Launchers return the launch's error (cudaSuccess when it started).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "core/compute/op_params.hpp"

namespace rankscope::cuda {

// dst[i] = src[i] for n elements, converting between element types.
cudaError_t convert(const void* src, ComputeType src_type, void* dst, ComputeType dst_type, int64_t n, cudaStream_t stream);

// x[i, :] (fp32) = table[ids[i], :] (+ x[i, :] when accumulate); ids on the device.
cudaError_t embed(const void* table, ComputeType table_type, const int32_t* ids, int64_t n_rows, int64_t cols, float* x,
           bool accumulate, cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * weight per row; x fp32, weight fp32.
cudaError_t rms_norm(const float* x, const float* weight, double eps, int64_t rows, int64_t cols, void* out,
              ComputeType out_type, cudaStream_t stream);

// RMSNorm of each d-value segment of x [segments x d] in place, in x's type (fp32 sums); weight
// fp32 [d] (Qwen3's per-head q_norm, k_norm: the rows of q as n_heads segments each).
cudaError_t segment_rms_norm(void* x, ComputeType type, int64_t segments, int64_t d, const float* weight, double eps,
                             cudaStream_t stream);

// x = (x - mean) / sqrt(var + eps) * weight + bias per row in place (fp32); copy (optional)
// receives the result in copy_type.
cudaError_t layer_norm(float* x, const float* weight, const float* bias, double eps, int64_t rows, int64_t cols, void* copy,
                ComputeType copy_type, cudaStream_t stream);

// y[r, :] += bias.
cudaError_t add_bias(void* y, ComputeType type, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);

// table[r, j] = (cos, sin)(positions[r] * inv_freq[j]) for j < half (fp32 angles, as transformers).
cudaError_t rope_table(const int64_t* positions, const float* inv_freq, int64_t rows, int64_t half, float* table,
                       cudaStream_t stream);
// Rotary embedding in place with a table of rope_table: the first n_rot values of each head of
// n_embd_head rotate (n_rot == n_embd_head: the whole head).
cudaError_t rope(void* x, ComputeType type, int64_t rows, int64_t n_heads, int64_t n_embd_head, int64_t n_rot,
                 const float* table,
                 cudaStream_t stream);

// x = act(x); gate = act(gate) * up; x = tanh(x); x (fp32) += y.
cudaError_t activation(void* x, ComputeType type, int64_t n, Activation act, cudaStream_t stream);
cudaError_t gated_activation(void* gate, const void* up, ComputeType type, int64_t n, Activation act, cudaStream_t stream);
cudaError_t tanh_inplace(void* x, ComputeType type, int64_t n, cudaStream_t stream);
cudaError_t add(float* x, const void* y, ComputeType y_type, int64_t n, cudaStream_t stream);

// out[i, :] = x[rows[i], :]; rows on the device.
cudaError_t gather_rows(const void* x, const int64_t* rows, int64_t n_rows, int64_t cols, void* out, ComputeType type,
                 cudaStream_t stream);

// One sequence of an attention call.
struct SequenceDesc {
  int64_t q_row0;    // first row of the sequence in q and ctx
  int64_t n_tokens;  // its rows
  int64_t n_past;    // keys before them (cached)
  const void* k;     // keys [n_past + n_tokens x ld_kv] (a cache, or q's rows of k)
  const void* v;
  int64_t ld_kv;
  const uint8_t* mask;  // [n_tokens] 0 = padding key; null = none (bidirectional only)
  int64_t window = 0;  // causal sliding window: query t sees keys j > n_past + t - window (0 = all)
};

// ctx = softmax(q k^T / sqrt(d) [+ mask]) v for every sequence and head (causal: key j visible
// to query t when j <= n_past + t). seqs on the device. Head size at most kMaxHeadDim. bf16/fp16
// heads of 64 or 128 values run on tensor cores when every K/V row stride is a multiple of 8
// elements (kv_aligned) and q's is too.
constexpr int64_t kMaxHeadDim = 256;
cudaError_t attention(const void* q, int64_t ld_q, const SequenceDesc* seqs, int64_t n_seq, int64_t max_tokens, int64_t n_head,
               int64_t n_head_kv, int64_t n_embd_head, bool causal, void* ctx, int64_t ld_ctx, ComputeType type,
               bool kv_aligned, cudaStream_t stream);

// cache[s][n_past + t, :] = src[q_row0 + t, :] for every sequence (appends a batch's k or v).
struct AppendDesc {
  int64_t src_row0;
  int64_t n_tokens;
  void* dst;  // the cache's row n_past
};
cudaError_t append_rows(const void* src, int64_t ld, const AppendDesc* seqs, int64_t n_seq, int64_t max_tokens, int64_t cols,
                 ComputeType type, cudaStream_t stream);

// Per scored row i: logprob[i] = log softmax(logits[rows[i], :])[targets[i]] (fp64 sums) and
// argmax[i] = 1 when targets[i] is the row's first maximum; NaN when the row is not finite.
cudaError_t score(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets, int64_t n, double* logprob,
           uint8_t* is_argmax, cudaStream_t stream);

// Per row i of n (logits[rows[i], :]): the float64 log-softmax; log_probs[i, :] (optional) = it
// rounded to float32; logprob[i] at targets[i]; argmax[i] the first maximum; with base
// ([n x n_vocab] float32 log-probabilities, optional) kl[i] = KL(base_i || row) over the row's
// float32-rounded log-probabilities.
cudaError_t compare_rows(const float* logits, int64_t n_vocab, const int64_t* rows, const int32_t* targets, int64_t n,
                         const float* base, float* log_probs, double* kl, double* logprob, int32_t* argmax,
                         cudaStream_t stream);

// x [rows x width] in `type` -> out [rows x width] float64 (for the statistics of a calibration).
cudaError_t widen_to_double(const void* x, ComputeType type, int64_t n, double* out, cudaStream_t stream);
// acc[j] += sum over the rows of |x[r, j]| (float64, a fixed order per column: reproducible).
cudaError_t add_abs_column_sums(const void* x, ComputeType type, int64_t rows, int64_t width, double* acc,
                                cudaStream_t stream);

// out[i, j] = src[i, cols - 1 - j] * scale[j] (scale optional): row-major [rows x cols], float64 in,
// float32 out (the factors of an SVD from an ascending eigendecomposition).
cudaError_t reverse_columns(const double* src, int64_t rows, int64_t cols, const double* scale, float* out,
                            cudaStream_t stream);
// out[i, j] = ev[(k - 1 - j) * k + i]: the column-major eigenvectors ev [k x k] as row-major
// float32 factor columns, largest eigenvalue first.
cudaError_t eigenvectors_descending(const double* ev, int64_t k, float* out, cudaStream_t stream);

}  // namespace rankscope::cuda
