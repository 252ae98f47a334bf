// An fp32 tensor as the model uses it: a row-major shape and a pointer to data whose lifetime is
// held by `owner` (a memory-mapped checkpoint file, or a buffer of widened/computed values).
#pragma once

#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace rankscope {

using TokenId = int32_t;

// Row-major fp32 matrix: activations are [tokens x features], weights [out x in].
using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatMap = Eigen::Map<Mat>;
using ConstMatMap = Eigen::Map<const Mat>;
using Vec = Eigen::VectorXf;

struct Tensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::shared_ptr<const void> owner;

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
  }
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
  ConstMatMap matrix() const { return ConstMatMap(data, rows(), cols()); }
  Eigen::Map<const Vec> vector() const { return Eigen::Map<const Vec>(data, numel()); }

  // A tensor owning a copy of `values` (row-major, numel(shape) elements).
  static Tensor owned(std::vector<int64_t> shape, std::vector<float> values) {
    auto storage = std::make_shared<std::vector<float>>(std::move(values));
    Tensor t;
    t.shape = std::move(shape);
    t.data = storage->data();
    t.owner = std::move(storage);
    return t;
  }
  static Tensor from_matrix(const Mat& m) {
    return owned({m.rows(), m.cols()}, std::vector<float>(m.data(), m.data() + m.size()));
  }
};

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace rankscope
