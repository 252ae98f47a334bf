#include "core/compute/ops.hpp"

#include <cmath>
#include <numbers>

#include <omp.h>

#include "core/base/error.hpp"

namespace rankscope {

void rms_norm(const Mat& x, const Tensor& weight, double eps, Mat& out) {
  out.resize(x.rows(), x.cols());
  const auto w = weight.vector();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < x.rows(); ++r) {
    const float mean_sq = x.row(r).squaredNorm() / static_cast<float>(x.cols());
    const float scale = 1.0f / std::sqrt(mean_sq + static_cast<float>(eps));
    out.row(r) = (x.row(r) * scale).cwiseProduct(w.transpose());
  }
}

void head_rms_norm_inplace(Mat& x, int64_t n_heads, const Tensor& weight, double eps) {
  const int64_t d = weight.numel();
  RS_ASSERT(x.cols() == n_heads * d);
  const auto w = weight.vector();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < x.rows(); ++r) {
    for (int64_t h = 0; h < n_heads; ++h) {
      auto head = x.row(r).segment(h * d, d);
      const float mean_sq = head.squaredNorm() / static_cast<float>(d);
      head = (head * (1.0f / std::sqrt(mean_sq + static_cast<float>(eps)))).cwiseProduct(w.transpose());
    }
  }
}

void layer_norm_inplace(Mat& x, const Tensor& weight, const Tensor& bias, double eps) {
  const auto w = weight.vector();
  const auto b = bias.vector();
  const auto n = static_cast<float>(x.cols());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < x.rows(); ++r) {
    auto row = x.row(r);
    const float mean = row.sum() / n;
    row.array() -= mean;
    const float var = row.squaredNorm() / n;
    row *= 1.0f / std::sqrt(var + static_cast<float>(eps));
    row = row.cwiseProduct(w.transpose()) + b.transpose();
  }
}

namespace {

inline float apply_activation(float v, Activation act) {
  switch (act) {
    case Activation::silu: return v / (1.0f + std::exp(-v));
    case Activation::gelu_erf: return 0.5f * v * (1.0f + std::erf(v * static_cast<float>(std::numbers::sqrt2 / 2)));
    case Activation::gelu_tanh: {
      constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * v * (1.0f + std::tanh(kC * (v + 0.044715f * v * v * v)));
    }
    case Activation::relu: return v > 0 ? v : 0.0f;
  }
  return v;
}

}  // namespace

namespace {

// Applies act to n values in place; SiLU (the hot one) through Eigen's vectorised exp.
void activate(float* p, int64_t n, Activation act) {
  if (act == Activation::silu) {
    Eigen::Map<Eigen::ArrayXf> a(p, n);
    a = a / (1.0f + (-a).exp());
    return;
  }
  for (int64_t i = 0; i < n; ++i) p[i] = apply_activation(p[i], act);
}

}  // namespace

void activation_inplace(Mat& x, Activation act) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < x.rows(); ++r) activate(x.row(r).data(), x.cols(), act);
}

void gated_activation_inplace(Mat& gate, const Mat& up, Activation act) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < gate.rows(); ++r) {
    activate(gate.row(r).data(), gate.cols(), act);
    gate.row(r).array() *= up.row(r).array();
  }
}

void softmax_rows_inplace(float* s, int64_t n_rows, int64_t n_cols, int64_t ld) {
  for (int64_t r = 0; r < n_rows; ++r) {
    Eigen::Map<Eigen::ArrayXf> row(s + r * ld, n_cols);
    row = (row - row.maxCoeff()).exp();
    row /= row.sum();
  }
}

Rope::Rope(int64_t n_embd_head, double theta, const RopeScaling& s, int64_t n_rot)
    : n_embd_head_(n_embd_head), n_rot_(n_rot > 0 ? n_rot : n_embd_head) {
  RS_ASSERT(n_rot_ % 2 == 0 && n_rot_ <= n_embd_head_);
  const int64_t half = n_rot_ / 2;
  inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    inv_freq_[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(n_rot_));
  }
  if (s.kind == RopeScaling::Kind::linear) {
    for (auto& f : inv_freq_) f /= s.factor;
  } else if (s.kind == RopeScaling::Kind::llama3) {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth blend between.
    const double low_freq_wavelen = static_cast<double>(s.original_max_position) / s.low_freq_factor;
    const double high_freq_wavelen = static_cast<double>(s.original_max_position) / s.high_freq_factor;
    for (auto& f : inv_freq_) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (static_cast<double>(s.original_max_position) / wavelen - s.low_freq_factor) /
                              (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
}

void Rope::apply(Mat& x, int64_t n_heads, const std::vector<int64_t>& positions) const {
  const int64_t half = n_rot_ / 2;
#pragma omp parallel
  {
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < x.rows(); ++r) {
      for (int64_t i = 0; i < half; ++i) {
        // Angles in float, as transformers computes them (position * inv_freq in fp32).
        const float angle = static_cast<float>(positions[r]) * static_cast<float>(inv_freq_[i]);
        cos_t[i] = std::cos(angle);
        sin_t[i] = std::sin(angle);
      }
      float* row = x.row(r).data();
      for (int64_t h = 0; h < n_heads; ++h) {
        float* head = row + h * n_embd_head_;
        for (int64_t i = 0; i < half; ++i) {
          const float a = head[i];
          const float b = head[i + half];
          head[i] = a * cos_t[i] - b * sin_t[i];
          head[i + half] = b * cos_t[i] + a * sin_t[i];
        }
      }
    }
  }
}

}  // namespace rankscope
