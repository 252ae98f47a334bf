// Dense factorizations against independent references: Eckart-Young on matrices whose spectrum is
// known (built in double) or computed by Eigen in double, HOOI against the truncated SVD, the
// randomized SVD against the optimal error, and one test per bad input.
#include <cmath>
#include <limits>
#include <utility>

#include "core/base/error.hpp"
#include "core/decompose/linalg.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

using test::random_matrix;

namespace {

using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

// Orthonormal columns [rows x cols] from the QR of a Gaussian matrix, in double.
MatD random_orthonormal(int64_t rows, int64_t cols, uint32_t seed) {
  const MatD g = random_matrix(rows, cols, seed).cast<double>();
  return Eigen::HouseholderQR<MatD>(g).householderQ() * MatD::Identity(rows, cols);
}

// W = Q1 diag(s) Q2^T [m x n] with random orthonormal Q1, Q2, formed in double, then rounded.
Mat with_spectrum(int64_t m, int64_t n, const VecD& s, uint32_t seed) {
  const MatD w = random_orthonormal(m, s.size(), seed) * s.asDiagonal() *
                 random_orthonormal(n, s.size(), seed + 1).transpose();
  return w.cast<float>();
}

VecD geometric_spectrum(int64_t k, double ratio) {
  VecD s(k);
  for (int64_t i = 0; i < k; ++i) s[i] = std::pow(ratio, static_cast<double>(i));
  return s;
}

VecD harmonic_spectrum(int64_t k) {
  VecD s(k);
  for (int64_t i = 0; i < k; ++i) s[i] = 1.0 / static_cast<double>(i + 1);
  return s;
}

// The singular values of the fp32 matrix itself, by Eigen in double.
VecD reference_spectrum(const Mat& w) {
  return Eigen::BDCSVD<MatD>(w.cast<double>()).singularValues();
}

// sqrt(sum_{i >= r} s_i^2): the Eckart-Young optimum at rank r.
double tail_norm(const VecD& s, int64_t r) { return s.tail(s.size() - r).norm(); }

// ||W - U_r diag(s_r) V_r^T||_F, the product formed explicitly in double.
double reconstruction_error(const Mat& w, const Svd& svd, int64_t r) {
  const MatD w_r = svd.u.leftCols(r).cast<double>() * svd.s.head(r).cast<double>().asDiagonal() *
                   svd.v.leftCols(r).cast<double>().transpose();
  return (w.cast<double>() - w_r).norm();
}

double orthonormality_error(const Mat& q) {
  const MatD qd = q.cast<double>();
  return (qd.transpose() * qd - MatD::Identity(q.cols(), q.cols())).cwiseAbs().maxCoeff();
}

bool descending(const Eigen::VectorXf& s) {
  for (int64_t i = 1; i < s.size(); ++i) {
    if (s[i] > s[i - 1]) return false;
  }
  return true;
}

// Shapes, factor orthonormality, singular values against `s_ref`, and the rank-r errors (explicit
// and truncation_error) against the Eckart-Young tail, within relative 1e-4.
void check_full_svd(const Mat& w, const Svd& svd, const VecD& s_ref, std::initializer_list<int64_t> ranks) {
  const int64_t m = w.rows(), n = w.cols(), k = std::min(m, n);
  REQUIRE(svd.rank() == k);
  REQUIRE(svd.u.rows() == m);
  REQUIRE(svd.u.cols() == k);
  REQUIRE(svd.v.rows() == n);
  REQUIRE(svd.v.cols() == k);
  CHECK(descending(svd.s));
  CHECK((svd.s.cast<double>() - s_ref).cwiseAbs().maxCoeff() <= 1e-5 * s_ref[0]);
  CHECK(orthonormality_error(svd.u) <= 1e-5);
  CHECK(orthonormality_error(svd.v) <= 1e-5);
  CHECK(reconstruction_error(w, svd, k) <= 1e-5 * s_ref.norm());
  for (int64_t r : ranks) {
    const double optimum = tail_norm(s_ref, r);
    INFO("rank " << r << " of " << m << "x" << n);
    CHECK(std::abs(reconstruction_error(w, svd, r) - optimum) <= 1e-4 * optimum);
    CHECK(std::abs(truncation_error(w, svd, r) - optimum) <= 1e-4 * optimum);
  }
}

const char* backend_name(SvdBackend backend) { return backend == SvdBackend::lapack ? "lapack" : "eigen"; }

}  // namespace

TEST_CASE("full SVD of random matrices meets Eckart-Young, both backends", "[linalg]") {
  const auto backend = GENERATE(SvdBackend::lapack, SvdBackend::eigen);
  // Square-ish, wide and tall both ways, and shapes past sgesdd's QR/LQ crossover (ratio 11/6).
  const auto shape = GENERATE(std::pair<int64_t, int64_t>{80, 56}, std::pair<int64_t, int64_t>{56, 80},
                              std::pair<int64_t, int64_t>{160, 64}, std::pair<int64_t, int64_t>{64, 160});
  INFO(backend_name(backend) << " " << shape.first << "x" << shape.second);
  const Mat w = random_matrix(shape.first, shape.second, 7);
  const int64_t k = std::min(shape.first, shape.second);
  check_full_svd(w, svd_full(w, backend), reference_spectrum(w), {1, k / 4, k / 2, 3 * k / 4});
}

TEST_CASE("full SVD recovers a known decaying spectrum, both backends", "[linalg]") {
  const auto backend = GENERATE(SvdBackend::lapack, SvdBackend::eigen);
  const auto shape = GENERATE(std::pair<int64_t, int64_t>{96, 64}, std::pair<int64_t, int64_t>{64, 96});
  INFO(backend_name(backend) << " " << shape.first << "x" << shape.second);
  const VecD s = geometric_spectrum(64, 0.9);
  const Mat w = with_spectrum(shape.first, shape.second, s, 21);
  // Ranks whose tail is >= 8% of ||W||, so that fp32 rounding stays below 1e-4 of it.
  check_full_svd(w, svd_full(w, backend), s, {1, 8, 24});
}

TEST_CASE("full SVD counts one factorization per call", "[linalg]") {
  const Mat w = random_matrix(12, 9, 3);
  const int64_t before = factorization_count();
  svd_full(w);
  svd_full(w, SvdBackend::eigen);
  CHECK(factorization_count() == before + 2);
}

TEST_CASE("HOOI on a matrix reconstructs the truncated SVD and converges at once", "[linalg][tucker]") {
  const VecD s = geometric_spectrum(48, 0.9);
  const Mat w = with_spectrum(72, 48, s, 31);
  const Svd svd = svd_full(w);
  const double norm = s.norm();
  const auto ranks = GENERATE(std::pair<int64_t, int64_t>{8, 8}, std::pair<int64_t, int64_t>{12, 6},
                              std::pair<int64_t, int64_t>{5, 10});
  const bool with_init = GENERATE(true, false);
  const auto [r1, r2] = ranks;
  INFO("ranks (" << r1 << ", " << r2 << ")" << (with_init ? " from a cached SVD" : " from scratch"));

  const int64_t before = factorization_count();
  const Tucker2 t = tucker2_hooi(w, r1, r2, {}, with_init ? &svd : nullptr);
  // A cached SVD saves the one full SVD; the inner SVDs of the sweeps are never counted.
  CHECK(factorization_count() == before + (with_init ? 0 : 1));
  REQUIRE(t.u.rows() == 72);
  REQUIRE(t.u.cols() == r1);
  REQUIRE(t.core.rows() == r1);
  REQUIRE(t.core.cols() == r2);
  REQUIRE(t.v.rows() == 48);
  REQUIRE(t.v.cols() == r2);
  CHECK(orthonormality_error(t.u) <= 1e-5);
  CHECK(orthonormality_error(t.v) <= 1e-5);
  CHECK(t.iterations >= 1);
  CHECK(t.iterations <= 3);

  // A rank-(r1, r2) Tucker-2 of a matrix is its rank-min(r1, r2) truncation.
  const int64_t r = std::min(r1, r2);
  const MatD w_svd = svd.u.leftCols(r).cast<double>() * svd.s.head(r).cast<double>().asDiagonal() *
                     svd.v.leftCols(r).cast<double>().transpose();
  const MatD w_tucker = t.u.cast<double>() * t.core.cast<double>() * t.v.cast<double>().transpose();
  CHECK((w_tucker - w_svd).norm() <= 1e-5 * norm);
  CHECK(std::abs(t.rel_error - tail_norm(s, r) / norm) <= 1e-4 * tail_norm(s, r) / norm);
  CHECK(std::abs((w.cast<double>() - w_tucker).norm() / norm - t.rel_error) <= 1e-5);
}

TEST_CASE("randomized SVD is within 1% of the optimum on decaying spectra", "[linalg][randomized]") {
  const int64_t rank = 32;
  const auto shape = GENERATE(std::pair<int64_t, int64_t>{512, 1024}, std::pair<int64_t, int64_t>{1024, 512});
  const bool harmonic = GENERATE(true, false);
  INFO(shape.first << "x" << shape.second << (harmonic ? ", s_i = 1/i" : ", s_i = 0.95^i"));
  const VecD s = harmonic ? harmonic_spectrum(512) : geometric_spectrum(512, 0.95);
  const Mat w = with_spectrum(shape.first, shape.second, s, 41);

  const int64_t before = factorization_count();
  const Svd svd = svd_randomized(w, rank);
  CHECK(factorization_count() == before + 1);
  REQUIRE(svd.rank() == rank);
  REQUIRE(svd.u.rows() == shape.first);
  REQUIRE(svd.u.cols() == rank);
  REQUIRE(svd.v.rows() == shape.second);
  REQUIRE(svd.v.cols() == rank);
  CHECK(descending(svd.s));
  CHECK(orthonormality_error(svd.u) <= 1e-5);
  CHECK(orthonormality_error(svd.v) <= 1e-5);
  const double optimum = tail_norm(s, rank);
  const double error = reconstruction_error(w, svd, rank);
  CHECK(error <= 1.01 * optimum);
  CHECK(error >= (1.0 - 1e-4) * optimum);
  CHECK(std::abs(truncation_error(w, svd, rank) - error) <= 1e-3 * error);
  const VecD s_error = (svd.s.cast<double>() - s.head(rank)).cwiseQuotient(s.head(rank)).cwiseAbs();
  // The leading singular values are accurate; the last few of a slow (1/i) decay are not, nor
  // need they be (they measure 2-3% low here): the guarantee is on the error.
  CHECK(s_error.head(rank / 2).maxCoeff() <= 1e-3);
}

TEST_CASE("randomized SVD with the sketch clamped to min(m, n) is exact", "[linalg][randomized]") {
  const Mat w = random_matrix(40, 30, 51);
  const VecD s_ref = reference_spectrum(w);
  const Svd svd = svd_randomized(w, 25, {.oversample = 10, .power_iterations = 0, .seed = 3});
  REQUIRE(svd.rank() == 25);
  CHECK(std::abs(reconstruction_error(w, svd, 25) - tail_norm(s_ref, 25)) <= 1e-4 * tail_norm(s_ref, 25));
  // The same seed gives the same factors.
  const Svd again = svd_randomized(w, 25, {.oversample = 10, .power_iterations = 0, .seed = 3});
  CHECK(again.s == svd.s);
}

TEST_CASE("truncation_error at rank 0 is ||W|| and at full rank is ~0", "[linalg]") {
  const Mat w = random_matrix(20, 30, 61);
  const Svd svd = svd_full(w);
  CHECK(std::abs(truncation_error(w, svd, 0) - w.cast<double>().norm()) <= 1e-6 * w.norm());
  CHECK(truncation_error(w, svd, 20) <= 1e-3 * w.norm());
}

TEST_CASE("NaN or Inf input is refused by every factorization", "[linalg][errors]") {
  Mat w = random_matrix(16, 12, 71);
  const float bad = GENERATE(std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity());
  w(5, 7) = bad;
  CHECK_THROWS_AS(svd_full(w), Error);
  CHECK_THROWS_AS(svd_full(w, SvdBackend::eigen), Error);
  CHECK_THROWS_AS(svd_randomized(w, 4), Error);
  CHECK_THROWS_AS(tucker2_hooi(w, 4, 4), Error);
  CHECK_THROWS_AS(svd_full(Mat(0, 5)), Error);
}

TEST_CASE("ranks outside [1, min(m, n)] are refused", "[linalg][errors]") {
  const Mat w = random_matrix(16, 12, 81);
  const Svd svd = svd_full(w);
  CHECK_THROWS_AS(svd_randomized(w, 0), Error);
  CHECK_THROWS_AS(svd_randomized(w, 13), Error);
  CHECK_THROWS_AS(svd_randomized(w, 4, {.oversample = -1}), Error);
  CHECK_THROWS_AS(tucker2_hooi(w, 0, 4, {}, &svd), Error);
  CHECK_THROWS_AS(tucker2_hooi(w, 4, 0, {}, &svd), Error);
  CHECK_THROWS_AS(tucker2_hooi(w, 13, 4, {}, &svd), Error);
  CHECK_THROWS_AS(tucker2_hooi(w, 4, 13, {}, &svd), Error);
  CHECK_THROWS_AS(truncation_error(w, svd, 13), Error);
  CHECK_THROWS_AS(truncation_error(w, svd, -1), Error);
  // An initial SVD with too few components, or of another shape.
  const Svd short_svd = svd_randomized(w, 3);
  CHECK_THROWS_AS(tucker2_hooi(w, 4, 4, {}, &short_svd), Error);
  const Svd other = svd_full(random_matrix(12, 16, 82));
  CHECK_THROWS_AS(tucker2_hooi(w, 4, 4, {}, &other), Error);
}
