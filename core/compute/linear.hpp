// The one weight product of every forward pass: y = x W^T + b for a row of activations x.
// W is either dense (out x in) or factored, and a factored W is never multiplied back:
//  - svd:    W ~ U V^T,    U [out x r], V [in x r]          y = (x V) U^T
//  - tucker: W ~ U G V^T,  U [out x r1], G [r1 x r2], V [in x r2]
//            y = ((x V) G^T) U^T, the paper's three bias-free linears in -> r2 -> r1 -> out.
#pragma once

#include <cstdint>

#include "core/base/tensor.hpp"

namespace rankscope {

class Linear {
 public:
  enum class Form { none, dense, svd, tucker };

  Linear() = default;
  static Linear dense(Tensor weight, Tensor bias = {});
  static Linear svd(Tensor u, Tensor v, Tensor bias = {});
  static Linear tucker(Tensor u, Tensor core, Tensor v, Tensor bias = {});

  Form form() const { return form_; }
  bool empty() const { return form_ == Form::none; }
  int64_t n_out() const { return n_out_; }
  int64_t n_in() const { return n_in_; }
  // Inner dimension of a factored weight (r, or r1 = rows of the Tucker core); 0 for dense.
  int64_t rank() const;
  // Weight parameters (dense out*in; svd in*r + r*out; tucker in*r2 + r1*r2 + r1*out) + bias.
  int64_t n_params() const;
  // Floating-point operations (2 per multiply-add) to apply to one row, bias included.
  int64_t flops_per_row() const;

  const Tensor& weight() const { return weight_; }
  const Tensor& u() const { return u_; }
  const Tensor& core() const { return core_; }
  const Tensor& v() const { return v_; }
  const Tensor& bias() const { return bias_; }

  // y[n_rows x n_out] = x[n_rows x n_in] W^T + b. `x` and `y` must not alias.
  void forward(const float* x, int64_t n_rows, float* y) const;
  Mat forward(const Mat& x) const;

 private:
  void add_bias(float* y, int64_t n_rows) const;

  Form form_ = Form::none;
  int64_t n_out_ = 0;
  int64_t n_in_ = 0;
  Tensor weight_, u_, core_, v_, bias_;
};

}  // namespace rankscope
