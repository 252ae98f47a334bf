// Small row-wise operations of the forward passes, on [tokens x features] row-major buffers.
#pragma once

#include <cstdint>

#include <vector>

#include "core/compute/op_params.hpp"
#include "core/base/tensor.hpp"

namespace rankscope {

// out = x / sqrt(mean(x^2) + eps) * weight, per row (Llama RMSNorm).
void rms_norm(const Mat& x, const Tensor& weight, double eps, Mat& out);
// The same within each of the n_heads heads of every row, in place (Qwen3's q_norm, k_norm):
// weight [n_embd_head], x [n x n_heads*n_embd_head].
void head_rms_norm_inplace(Mat& x, int64_t n_heads, const Tensor& weight, double eps);
// x = (x - mean) / sqrt(var + eps) * weight + bias, per row, in place (LayerNorm, biased var).
void layer_norm_inplace(Mat& x, const Tensor& weight, const Tensor& bias, double eps);
// x = act(x) elementwise, in place.
void activation_inplace(Mat& x, Activation act);
// gate = act(gate) * up elementwise (SwiGLU when act is silu), in place into gate.
void gated_activation_inplace(Mat& gate, const Mat& up, Activation act);
// Numerically stable softmax over the first n_cols entries of each of n_rows rows (row stride ld).
void softmax_rows_inplace(float* s, int64_t n_rows, int64_t n_cols, int64_t ld);

// Rotary position embedding in the Hugging Face "rotate_half" layout: within each head of
// `n_embd_head` values, element i pairs with i + n_embd_head/2.
class Rope {
 public:
  // `n_rot` (even, at most n_embd_head; 0 = n_embd_head) rotary dimensions per head: the first
  // n_rot of each head rotate in pairs (i, i + n_rot/2) at frequencies theta^(-2i/n_rot), the rest
  // pass unchanged (partial rotary embedding, transformers' Phi-3).
  Rope(int64_t n_embd_head, double theta, const RopeScaling& scaling, int64_t n_rot = 0);
  // Rotates the heads of every row of x [n x n_heads*n_embd_head] by its row's position.
  void apply(Mat& x, int64_t n_heads, const std::vector<int64_t>& positions) const;
  int64_t n_embd_head() const { return n_embd_head_; }
  int64_t n_rot() const { return n_rot_; }
  const std::vector<double>& inv_freq() const { return inv_freq_; }

 private:
  int64_t n_embd_head_;
  int64_t n_rot_;
  std::vector<double> inv_freq_;  // [n_rot / 2]
};

}  // namespace rankscope
