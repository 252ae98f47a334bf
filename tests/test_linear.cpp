// The factored Linear: full-rank factors reproduce the dense product, truncated ones the
// truncated product, and parameter/FLOP counts follow the paper's three-factor formula.
#include "core/compute/linear.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

using test::random_matrix;
using test::tucker_factors;

TEST_CASE("full-rank factored Linear equals the dense one within 1e-5", "[linear]") {
  const int64_t out = 48, in = 40, n = 7;
  const Mat w = random_matrix(out, in, 11) * 0.2f;
  const Mat bias = random_matrix(1, out, 12);
  const Mat x = random_matrix(n, in, 13);
  const auto b = Tensor::from_matrix(bias);
  const Linear dense = Linear::dense(Tensor::from_matrix(w), b);
  const Mat y_dense = dense.forward(x);
  CHECK(y_dense.isApprox((x * w.transpose()).rowwise() + bias.row(0), 1e-5f));

  const auto f = tucker_factors(w, std::min(out, in), 3);
  const Linear tucker = Linear::tucker(Tensor::from_matrix(f.u), Tensor::from_matrix(f.core), Tensor::from_matrix(f.v), b);
  CHECK(tucker.form() == Linear::Form::tucker);
  CHECK((tucker.forward(x) - y_dense).cwiseAbs().maxCoeff() <= 1e-5f);

  const Mat u_svd = f.u * f.core;  // absorb the core: W = (U G) V^T
  const Linear svd = Linear::svd(Tensor::from_matrix(u_svd), Tensor::from_matrix(f.v), b);
  CHECK((svd.forward(x) - y_dense).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("a truncated factored Linear applies exactly its low-rank weight", "[linear]") {
  const int64_t out = 64, in = 96, r = 5;
  const Mat w = random_matrix(out, in, 21);
  const Mat x = random_matrix(9, in, 22);
  const auto f = tucker_factors(w, r, 5);
  const Linear tucker = Linear::tucker(Tensor::from_matrix(f.u), Tensor::from_matrix(f.core), Tensor::from_matrix(f.v));
  const Mat w_r = f.u * f.core * f.v.transpose();
  CHECK((tucker.forward(x) - x * w_r.transpose()).cwiseAbs().maxCoeff() <= 1e-4f);
  // The three-factor count of the paper: in*r + r*r + r*out.
  CHECK(tucker.n_params() == in * r + r * r + r * out);
  CHECK(tucker.flops_per_row() == 2 * (in * r + r * r + r * out));
  CHECK(tucker.rank() == r);
  const Linear svd = Linear::svd(Tensor::from_matrix(Mat(f.u * f.core)), Tensor::from_matrix(f.v));
  CHECK(svd.n_params() == in * r + r * out);
}

TEST_CASE("factor shapes that do not chain are refused", "[linear][errors]") {
  const auto u = Tensor::from_matrix(Mat::Zero(8, 3));
  const auto core = Tensor::from_matrix(Mat::Zero(4, 4));
  const auto v = Tensor::from_matrix(Mat::Zero(6, 4));
  CHECK_THROWS(Linear::tucker(u, core, v));
  CHECK_THROWS(Linear::svd(u, v));
}
