// The reference backend: fp32 on the host, Eigen for the row-wise operations and OpenBLAS SGEMM
// for the products (core/compute/ops, gemm, linear). Its buffers are Eigen matrices, so hooks
// see them without a copy.
#include "core/compute/cpu/cpu_backend.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/compute/ops.hpp"

namespace rankscope {

namespace {

Mat& mat(const Buffer& b) {
  RS_ASSERT(!b.empty());
  return *static_cast<Mat*>(b.storage().get());
}

Buffer wrap(std::shared_ptr<Mat> m) {
  auto* data = m->data();
  const auto rows = m->rows(), cols = m->cols();
  return Buffer(rows, cols, ComputeType::f32, std::shared_ptr<void>(std::move(m)), data);
}

// Queries are processed in blocks so that keys no query of a block can see are never touched:
// causal attention then costs about half of the full T x T products.
constexpr int64_t kQueryBlock = 64;

// Causal attention of one sequence, all heads: ctx rows [t0, t0+T) from q rows [t0, t0+T) and
// keys/values k, v [n_past+T x n_embd_kv] (row stride ld_kv).
void attend_causal(const AttentionShape& a, const Mat& q, int64_t t0, int64_t n_tokens, int64_t n_past,
                   const float* k, const float* v, int64_t ld_kv, Mat& ctx) {
  const int64_t d = a.n_embd_head;
  const int64_t group = a.n_head / a.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t n_blocks = (n_tokens + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t h = 0; h < a.n_head; ++h) {
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t kvh = h / group;
      const int64_t b0 = b * kQueryBlock;
      const int64_t nb = std::min(kQueryBlock, n_tokens - b0);
      const int64_t n_keys = n_past + b0 + nb;  // keys the block's last query sees
      Mat scores(nb, n_keys);
      // scores[nb x n_keys] = q_h k_h^T
      gemm_xwt(q.data() + (t0 + b0) * q.cols() + h * d, nb, d, k + kvh * d, n_keys, scores.data(), false,
               q.cols(), ld_kv, n_keys);
      for (int64_t t = 0; t < nb; ++t) {
        float* row = scores.row(t).data();
        const int64_t n_visible = n_past + b0 + t + 1;
        // A sliding window hides the keys before `first` (HF: p - window < j <= p).
        const int64_t first = a.window > 0 ? std::max<int64_t>(0, n_visible - a.window) : 0;
        Eigen::Map<Eigen::ArrayXf>(row + first, n_visible - first) *= scale;
        softmax_rows_inplace(row + first, 1, n_visible - first, n_keys);
        std::fill(row, row + first, 0.0f);
        std::fill(row + n_visible, row + n_keys, 0.0f);
      }
      // ctx_h[nb x d] = softmax(scores) v_h
      gemm_xb(scores.data(), nb, n_keys, v + kvh * d, d, ctx.data() + (t0 + b0) * ctx.cols() + h * d, false,
              n_keys, ld_kv, ctx.cols());
    }
  }
}

// Bidirectional attention of one sequence, all heads; masked keys get the most negative float
// added, as transformers does, so a fully masked row stays finite.
void attend_bidirectional(const AttentionShape& a, const Mat& q, const Mat& k, const Mat& v, int64_t t0, int64_t n,
                          const std::vector<uint8_t>* mask, Mat& ctx) {
  const int64_t d = a.n_embd_head;
  const int64_t group = a.n_head / a.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float masked = std::numeric_limits<float>::lowest();
#pragma omp parallel for schedule(dynamic)
  for (int64_t h = 0; h < a.n_head; ++h) {
    const int64_t kvh = h / group;
    Mat scores(n, n);
    gemm_xwt(q.data() + t0 * q.cols() + h * d, n, d, k.data() + t0 * k.cols() + kvh * d, n, scores.data(), false,
             q.cols(), k.cols(), n);
    scores *= scale;
    if (mask != nullptr && !mask->empty()) {
      for (int64_t j = 0; j < n; ++j) {
        if ((*mask)[j] == 0) scores.col(j).array() += masked;
      }
    }
    softmax_rows_inplace(scores.data(), n, n, n);
    gemm_xb(scores.data(), n, n, v.data() + t0 * v.cols() + kvh * d, d, ctx.data() + t0 * ctx.cols() + h * d, false,
            n, v.cols(), ctx.cols());
  }
}

}  // namespace

Buffer CpuBackend::buffer(int64_t rows, int64_t cols, Precision) { return wrap(std::make_shared<Mat>(rows, cols)); }

void CpuBackend::grow_rows(Buffer& b, int64_t rows) {
  if (b.empty()) {
    b = buffer(rows, b.cols(), Precision::f32);
    return;
  }
  if (b.rows() >= rows) return;
  Mat& m = mat(b);
  m.conservativeResize(rows, m.cols());
  b = Buffer(m.rows(), m.cols(), ComputeType::f32, b.storage(), m.data());
}

Buffer CpuBackend::upload(const Mat& m, Precision) { return wrap(std::make_shared<Mat>(m)); }

Mat CpuBackend::download(const Buffer& b) { return mat(b); }

Mat CpuBackend::download_rows(const Buffer& b, int64_t row0, int64_t n) { return mat(b).middleRows(row0, n); }

const Mat& CpuBackend::host_view(const Buffer& b, Mat&) { return mat(b); }

void CpuBackend::embed(const Tensor& table, std::span<const TokenId> ids, Buffer& x, bool accumulate) {
  Mat& out = mat(x);
  RS_ASSERT(out.rows() == static_cast<int64_t>(ids.size()) && out.cols() == table.cols());
  const auto t = table.matrix();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (accumulate) {
      out.row(static_cast<int64_t>(i)) += t.row(ids[i]);
    } else {
      out.row(static_cast<int64_t>(i)) = t.row(ids[i]);
    }
  }
}

void CpuBackend::rms_norm(const Buffer& x, const Tensor& weight, double eps, Buffer& out) {
  rankscope::rms_norm(mat(x), weight, eps, mat(out));
}

void CpuBackend::layer_norm(Buffer& x, const Tensor& weight, const Tensor& bias, double eps, Buffer* copy) {
  layer_norm_inplace(mat(x), weight, bias, eps);
  if (copy != nullptr && !copy->empty() && copy->data() != x.data()) mat(*copy) = mat(x);
}

void CpuBackend::linear(const Linear& w, const Buffer& x, Buffer& y, bool accumulate) {
  const Mat& in = mat(x);
  Mat& out = mat(y);
  RS_ASSERT(in.cols() == w.n_in() && out.cols() == w.n_out() && out.rows() >= in.rows());
  if (!accumulate) {
    w.forward(in.data(), in.rows(), out.data());
    return;
  }
  Mat product(in.rows(), w.n_out());
  w.forward(in.data(), in.rows(), product.data());
  out.topRows(in.rows()) += product;
}

void CpuBackend::head_rms_norm(Buffer& x, int64_t n_heads, const Tensor& weight, double eps) {
  head_rms_norm_inplace(mat(x), n_heads, weight, eps);
}

void CpuBackend::rope(Buffer& x, int64_t n_heads, const Rope& rope, const SequenceLayout& layout) {
  rope.apply(mat(x), n_heads, layout.positions);
}

void CpuBackend::attention(const AttentionShape& shape, const Buffer& q, const Buffer& k, const Buffer& v,
                           const SequenceLayout& layout, std::span<KvCache> caches, int64_t layer,
                           std::span<const std::vector<uint8_t>> masks, Buffer& ctx) {
  const Mat& mq = mat(q);
  const Mat& mk = mat(k);
  const Mat& mv = mat(v);
  Mat& out = mat(ctx);
  for (int64_t s = 0; s < layout.n_seq(); ++s) {
    const int64_t t0 = layout.offset[s];
    const int64_t len = layout.length(s);
    if (!shape.causal) {
      attend_bidirectional(shape, mq, mk, mv, t0, len, masks.empty() ? nullptr : &masks[s], out);
      continue;
    }
    if (caches.empty()) {
      attend_causal(shape, mq, t0, len, 0, mk.data() + t0 * mk.cols(), mv.data() + t0 * mv.cols(), mk.cols(), out);
      continue;
    }
    auto& cache = caches[s];
    Mat& ck = mat(cache.k[layer]);
    Mat& cv = mat(cache.v[layer]);
    ck.middleRows(cache.n_past, len) = mk.middleRows(t0, len);
    cv.middleRows(cache.n_past, len) = mv.middleRows(t0, len);
    attend_causal(shape, mq, t0, len, cache.n_past, ck.data(), cv.data(), ck.cols(), out);
  }
}

void CpuBackend::activation(Buffer& x, Activation act) { activation_inplace(mat(x), act); }

void CpuBackend::gated_activation(Buffer& gate, const Buffer& up, Activation act) {
  gated_activation_inplace(mat(gate), mat(up), act);
}

void CpuBackend::add(Buffer& x, const Buffer& y) { mat(x) += mat(y); }

void CpuBackend::gather_rows(const Buffer& x, std::span<const int64_t> rows, Buffer& out) {
  const Mat& in = mat(x);
  Mat& o = mat(out);
  for (size_t i = 0; i < rows.size(); ++i) o.row(static_cast<int64_t>(i)) = in.row(rows[i]);
}

void CpuBackend::copy_columns(const Buffer& x, int64_t col0, Buffer& out) {
  const Mat& in = mat(x);
  Mat& o = mat(out);
  RS_ASSERT(in.rows() == o.rows() && col0 >= 0 && col0 + o.cols() <= in.cols());
  o = in.middleCols(col0, o.cols());
}

void CpuBackend::tanh(Buffer& x) { mat(x) = mat(x).array().tanh(); }

std::vector<TokenScore> CpuBackend::score(const Buffer& logits, std::span<const int64_t> rows,
                                          std::span<const TokenId> targets) {
  const Mat& l = mat(logits);
  RS_ASSERT(rows.size() == targets.size());
  std::vector<TokenScore> out(rows.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(rows.size()); ++i) {
    out[static_cast<size_t>(i)] = score_row(l.row(rows[static_cast<size_t>(i)]).data(), l.cols(),
                                            targets[static_cast<size_t>(i)]);
  }
  return out;
}

std::vector<RowComparison> CpuBackend::compare_rows(const Buffer& logits, std::span<const int64_t> rows,
                                                    std::span<const TokenId> targets, const float* base,
                                                    float* log_probs) {
  const Mat& l = mat(logits);
  RS_ASSERT(rows.size() == targets.size());
  const int64_t n_vocab = l.cols();
  std::vector<RowComparison> out(rows.size());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(rows.size()); ++i) {
    const float* x = l.row(rows[static_cast<size_t>(i)]).data();
    double max = x[0];
    int64_t argmax = 0;
    for (int64_t v = 1; v < n_vocab; ++v) {
      if (x[v] > x[argmax]) argmax = v;
      max = std::max(max, static_cast<double>(x[v]));
    }
    double sum = 0.0;
    for (int64_t v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(x[v]) - max);
    const double lse = std::log(sum);
    RowComparison& r = out[static_cast<size_t>(i)];
    r.argmax = static_cast<int32_t>(argmax);
    r.logprob = static_cast<double>(x[targets[static_cast<size_t>(i)]]) - max - lse;
    if (log_probs != nullptr) {
      float* o = log_probs + i * n_vocab;
      for (int64_t v = 0; v < n_vocab; ++v) o[v] = static_cast<float>(static_cast<double>(x[v]) - max - lse);
    }
    if (base != nullptr) {
      const float* lb = base + i * n_vocab;
      double kl = 0.0;
      for (int64_t v = 0; v < n_vocab; ++v) {
        const auto lc = static_cast<float>(static_cast<double>(x[v]) - max - lse);
        const double lpb = lb[v];
        kl += std::exp(lpb) * (lpb - static_cast<double>(lc));
      }
      r.kl = kl;
    }
  }
  return out;
}

namespace {

// X^T X and sum |x| in double on the host (Eigen's symmetric rank update, lower triangle).
class CpuGramAccumulator final : public GramAccumulator {
 public:
  explicit CpuGramAccumulator(int64_t width)
      : abs_sum_(Eigen::VectorXd::Zero(width)), gram_(Eigen::MatrixXd::Zero(width, width)) {
    width_ = width;
  }
  void add(const Buffer& x) override {
    const Mat& m = mat(x);
    RS_ASSERT(m.cols() == width_);
    const Eigen::MatrixXd xd = m.cast<double>();
    abs_sum_ += xd.cwiseAbs().colwise().sum().transpose();
    gram_.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());
    rows_ += m.rows();
  }
  void read(double* abs_sum, double* gram) override {
    std::copy_n(abs_sum_.data(), width_, abs_sum);
    for (int64_t j = 0; j < width_; ++j) {
      std::copy(gram_.data() + j * width_ + j, gram_.data() + (j + 1) * width_, gram + j * width_ + j);
    }
  }

 private:
  Eigen::VectorXd abs_sum_;
  Eigen::MatrixXd gram_;
};

}  // namespace

std::unique_ptr<GramAccumulator> CpuBackend::gram_accumulator(int64_t width) {
  return std::make_unique<CpuGramAccumulator>(width);
}

TokenScore score_row(const float* row, int64_t n_vocab, TokenId target) {
  float max = row[0];
  int64_t argmax = 0;
  bool finite = true;
  for (int64_t i = 0; i < n_vocab; ++i) {
    if (!std::isfinite(row[i])) finite = false;
    if (row[i] > max) {
      max = row[i];
      argmax = i;
    }
  }
  if (!finite) return {std::numeric_limits<double>::quiet_NaN(), false};
  double sum = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - max);
  return {static_cast<double>(row[target]) - max - std::log(sum), argmax == target};
}

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace rankscope
