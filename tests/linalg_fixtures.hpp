// Random matrices and exact Tucker-2 factors (from a double-precision SVD) for the tests.
#pragma once

#include <random>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/compute/linear.hpp"

namespace rankscope::test {

inline Mat random_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Mat m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = dist(rng);
  return m;
}

struct Factors {
  Mat u, core, v;  // W ~ U core V^T
};

// Rank-r Tucker-2 factors of w from its SVD, the core rotated by random orthogonal matrices so it
// is a full r x r matrix (not diagonal) and every factor is exercised.
inline Factors tucker_factors(const Mat& w, int64_t r, uint32_t seed) {
  Eigen::BDCSVD<Eigen::MatrixXd> svd(w.cast<double>(), Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd q1 = Eigen::HouseholderQR<Eigen::MatrixXd>(random_matrix(r, r, seed).cast<double>()).householderQ();
  const Eigen::MatrixXd q2 = Eigen::HouseholderQR<Eigen::MatrixXd>(random_matrix(r, r, seed + 1).cast<double>()).householderQ();
  const Eigen::MatrixXd s = svd.singularValues().head(r).asDiagonal();
  return {(svd.matrixU().leftCols(r) * q1).cast<float>(), (q1.transpose() * s * q2).cast<float>(),
          (svd.matrixV().leftCols(r) * q2).cast<float>()};
}

// A full-rank Tucker-2 Linear equal to the dense `lin` (bias kept).
inline Linear full_rank_tucker(const Linear& lin, uint32_t seed) {
  const Mat w = lin.weight().matrix();
  const auto f = tucker_factors(w, std::min(w.rows(), w.cols()), seed);
  return Linear::tucker(Tensor::from_matrix(f.u), Tensor::from_matrix(f.core), Tensor::from_matrix(f.v), lin.bias());
}

}  // namespace rankscope::test
