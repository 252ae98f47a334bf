#include "core/compute/linear.hpp"

#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"

namespace rankscope {

namespace {
void check_bias(const Tensor& bias, int64_t n_out) {
  if (!bias.empty() && bias.numel() != n_out) {
    fail("bias has {} elements, expected {}", bias.numel(), n_out);
  }
}
}  // namespace

Linear Linear::dense(Tensor weight, Tensor bias) {
  if (weight.shape.size() != 2) fail("dense weight must be 2-D, got {}", shape_string(weight.shape));
  Linear l;
  l.form_ = Form::dense;
  l.n_out_ = weight.rows();
  l.n_in_ = weight.cols();
  check_bias(bias, l.n_out_);
  l.weight_ = std::move(weight);
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::svd(Tensor u, Tensor v, Tensor bias) {
  if (u.shape.size() != 2 || v.shape.size() != 2 || u.cols() != v.cols()) {
    fail("svd factors must be U [out x r] and V [in x r], got {} and {}", shape_string(u.shape),
         shape_string(v.shape));
  }
  Linear l;
  l.form_ = Form::svd;
  l.n_out_ = u.rows();
  l.n_in_ = v.rows();
  check_bias(bias, l.n_out_);
  l.u_ = std::move(u);
  l.v_ = std::move(v);
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::tucker(Tensor u, Tensor core, Tensor v, Tensor bias) {
  if (u.shape.size() != 2 || core.shape.size() != 2 || v.shape.size() != 2 ||
      core.rows() != u.cols() || core.cols() != v.cols()) {
    fail("tucker factors must be U [out x r1], G [r1 x r2], V [in x r2], got {}, {} and {}",
         shape_string(u.shape), shape_string(core.shape), shape_string(v.shape));
  }
  Linear l;
  l.form_ = Form::tucker;
  l.n_out_ = u.rows();
  l.n_in_ = v.rows();
  check_bias(bias, l.n_out_);
  l.u_ = std::move(u);
  l.core_ = std::move(core);
  l.v_ = std::move(v);
  l.bias_ = std::move(bias);
  return l;
}

int64_t Linear::rank() const { return form_ == Form::svd || form_ == Form::tucker ? u_.cols() : 0; }

int64_t Linear::n_params() const {
  int64_t n = bias_.empty() ? 0 : n_out_;
  switch (form_) {
    case Form::none: return 0;
    case Form::dense: return n + n_out_ * n_in_;
    case Form::svd: return n + (n_in_ + n_out_) * u_.cols();
    case Form::tucker: return n + n_in_ * v_.cols() + core_.numel() + n_out_ * u_.cols();
  }
  return n;
}

int64_t Linear::flops_per_row() const {
  const int64_t weights = n_params() - (bias_.empty() ? 0 : n_out_);
  return 2 * weights + (bias_.empty() ? 0 : n_out_);
}

void Linear::add_bias(float* y, int64_t n_rows) const {
  if (bias_.empty()) return;
  MatMap(y, n_rows, n_out_).rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias_.data, n_out_);
}

void Linear::forward(const float* x, int64_t n_rows, float* y) const {
  switch (form_) {
    case Form::none:
      RS_ASSERT(!"forward through an empty Linear");
      break;
    case Form::dense:
      gemm_xwt(x, n_rows, n_in_, weight_.data, n_out_, y);
      break;
    case Form::svd: {
      const int64_t r = u_.cols();
      Mat t(n_rows, r);
      gemm_xb(x, n_rows, n_in_, v_.data, r, t.data());  // [n x r] = x V
      gemm_xwt(t.data(), n_rows, r, u_.data, n_out_, y);  // [n x out] = t U^T
      break;
    }
    case Form::tucker: {
      const int64_t r1 = core_.rows();
      const int64_t r2 = core_.cols();
      Mat t2(n_rows, r2);
      Mat t1(n_rows, r1);
      gemm_xb(x, n_rows, n_in_, v_.data, r2, t2.data());       // [n x r2] = x V
      gemm_xwt(t2.data(), n_rows, r2, core_.data, r1, t1.data());  // [n x r1] = t2 G^T
      gemm_xwt(t1.data(), n_rows, r1, u_.data, n_out_, y);       // [n x out] = t1 U^T
      break;
    }
  }
  add_bias(y, n_rows);
}

Mat Linear::forward(const Mat& x) const {
  RS_ASSERT(x.cols() == n_in_);
  Mat y(x.rows(), n_out_);
  forward(x.data(), x.rows(), y.data());
  return y;
}

}  // namespace rankscope
