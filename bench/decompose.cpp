// bench/decompose: the dense factorizations behind the decomposer on Llama-2-7B shapes (random
// fp32 weights), each against a baseline measured in the same run:
//  1. full thin SVD by LAPACK sgesdd against Eigen's BDCSVD (4096x4096 and 4096x11008);
//  2. randomized SVD at rank 128 against the full SVD on 4096x4096 matrices with decaying
//     spectra: speed-up, and reconstruction error against the optimal (truncated SVD) error, with
//     the default oversampling (10) and with 40;
//  3. the full SVDs of one whole layer (q, k, v, o, gate, up, down) with the faster backend;
//  4. Tucker-2 HOOI at rank 256 of a 4096x4096 matrix from a cached SVD against from scratch.
// Medians of --reps runs, except that a measurement whose first run takes over 30 s is run once
// (the output says which).
//
//   build/bench/decompose [--quick] [--reps N] [--cache-only]   (--quick: 2048x2048 and 2048x5504)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>

#include "core/decompose/decompose.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/linalg.hpp"

using namespace rankscope;

namespace {

constexpr double kRepeatLimitSeconds = 30.0;  // a first run longer than this is not repeated
constexpr int64_t kRandomizedRank = 128;
constexpr int64_t kMoreOversample = 40;  // against the default 10: slow decays need a wider sketch
constexpr int64_t kTuckerRank = 256;

// Uniform values in [-1, 1) from a 64-bit LCG: SVD time depends on the shape and the spectrum's
// shape (a random matrix's Marchenko-Pastur one), not on the values.
Mat random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
  Mat m(rows, cols);
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t i = 0; i < m.size(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    m.data()[i] = static_cast<float>(state >> 40) / static_cast<float>(1ull << 23) - 1.0f;
  }
  return m;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

struct Timing {
  double seconds = 0.0;  // median of the runs
  int runs = 0;
  std::string runs_text() const { return runs == 1 ? "1 run" : fmt::format("median of {}", runs); }
};

// Runs `fn` `reps` times (once if the first run exceeds kRepeatLimitSeconds); the median.
Timing measure(int reps, const std::function<void()>& fn) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(seconds_since(start));
    if (t.front() > kRepeatLimitSeconds) break;
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], static_cast<int>(t.size())};
}

// ||W - U_r diag(s_r) V_r^T||_F, the rank-r product formed by SGEMM, the norm summed in double.
double residual_norm(const Mat& w, const Svd& svd, int64_t r) {
  const Mat us = svd.u.leftCols(r) * svd.s.head(r).asDiagonal();
  const Mat v = svd.v.leftCols(r);
  Mat w_r(w.rows(), w.cols());
  gemm_xwt(us.data(), w.rows(), r, v.data(), w.cols(), w_r.data());
  double sum = 0.0;
  for (int64_t i = 0; i < w.size(); ++i) {
    const double d = static_cast<double>(w.data()[i]) - w_r.data()[i];
    sum += d * d;
  }
  return std::sqrt(sum);
}

// The 1-minute load average: other work on a 2-core machine makes OpenMP-parallel LAPACK much
// slower (a thread descheduled at each of sgebrd's many barriers), so it is printed with the times.
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  return in >> one ? one : "?";
}

const char* backend_name(SvdBackend b) { return b == SvdBackend::lapack ? "LAPACK sgesdd" : "Eigen BDCSVD"; }

// 5. The factor cache: the first request of a matrix factorizes it and writes the file; every
// later one (another rank, another process) maps the file, verifies its checksum and truncates.
void bench_cache(int64_t hidden, int reps) {
  constexpr int64_t kRank = 256;
  fmt::print("5. factor cache, {0} x {0} matrix, rank {1} (tucker factors)\n", hidden, kRank);
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("rankscope-bench-cache-{}", ::getpid());
  std::filesystem::remove_all(dir);
  Mat w(hidden, hidden);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = dist(rng);
  const Tensor weight = Tensor::from_matrix(w);
  Linear lin;
  const Timing miss = measure(1, [&] {
    FactorCache cache(dir);
    lin = factored_linear(*cache.factors(weight, kRank), kRank, Method::tucker);
  });
  const Timing hit = measure(std::max(reps, 5), [&] {
    FactorCache cache(dir);  // a fresh cache object, as another process would have
    lin = factored_linear(*cache.factors(weight, kRank), kRank, Method::tucker);
  });
  fmt::print("   factorize + write (baseline, cache miss)  {:>8.3f} s ({})\n", miss.seconds, miss.runs_text());
  fmt::print("   map + verify + truncate (cache hit)       {:>8.3f} s ({})\n", hit.seconds, hit.runs_text());
  fmt::print("   speed-up from the cache: {:.0f}x; file {:.0f} MB\n\n", miss.seconds / hit.seconds,
             static_cast<double>(std::filesystem::file_size(dir / (matrix_content_key(weight) + ".svd"))) / 1e6);
  std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 3;
  bool quick = false;
  bool cache_only = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--cache-only") == 0) cache_only = true;
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::max(1, std::stoi(argv[++i]));
  }
  const int64_t hidden = quick ? 2048 : 4096;
  const int64_t intermediate = quick ? 5504 : 11008;
  set_num_threads(0);
  const auto bench_start = std::chrono::steady_clock::now();
  fmt::print("machine: {} cores, {} BLAS/OpenMP threads; fp32; medians of up to {} runs{}; load average {}\n\n",
             std::thread::hardware_concurrency(), num_threads(), reps, quick ? " (--quick sizes)" : "", load_average());

  if (cache_only) {
    bench_cache(hidden, reps);
    return 0;
  }

  // 1. Full thin SVD: LAPACK against Eigen's BDCSVD (the baseline).
  fmt::print("1. full thin SVD, random matrix           {:>22} {:>22} {:>9} {:>12}\n", "LAPACK sgesdd",
             "Eigen BDCSVD (baseline)", "speed-up", "max |ds|/s0");
  const Mat square = random_matrix(hidden, hidden, 1);
  const Mat wide = random_matrix(hidden, intermediate, 2);
  Svd square_svd;  // kept: its random orthonormal factors build section 2's matrices, and section 4's init
  double lapack_seconds = 0.0, eigen_seconds = 0.0;
  Timing square_timing[2], wide_timing[2];  // [LAPACK, Eigen]
  for (const Mat* w : {&square, &wide}) {
    Svd lapack, eigen;
    const Timing tl = measure(reps, [&] { lapack = svd_full(*w, SvdBackend::lapack); });
    const Timing te = measure(reps, [&] { eigen = svd_full(*w, SvdBackend::eigen); });
    const double agree = (lapack.s - eigen.s).cwiseAbs().maxCoeff() / lapack.s[0];
    fmt::print("   {:>5} x {:<5} {:>24} {:>10.2f} s ({:>9}) {:>10.2f} s ({:>9}) {:>8.2f}x {:>12.1e}\n", w->rows(),
               w->cols(), w == &square ? "(q,k,v,o)" : "(down)", tl.seconds, tl.runs_text(), te.seconds,
               te.runs_text(), te.seconds / tl.seconds, agree);
    lapack_seconds += tl.seconds;
    eigen_seconds += te.seconds;
    Timing* timing = w == &square ? square_timing : wide_timing;
    timing[0] = tl;
    timing[1] = te;
    if (w == &square) square_svd = std::move(lapack);
  }
  const SvdBackend chosen = lapack_seconds <= eigen_seconds ? SvdBackend::lapack : SvdBackend::eigen;
  fmt::print("   target: LAPACK >= 1.5x faster than Eigen; faster backend (used below): {}\n\n", backend_name(chosen));

  // 2. Randomized SVD against the full SVD, on W = U diag(s) V^T with U, V the (Haar random)
  // singular vectors of the random square matrix above; the default options and more oversampling.
  fmt::print("2. rank-{} randomized SVD vs full SVD ({}), {} x {}, 2 power iterations\n", kRandomizedRank,
             backend_name(chosen), hidden, hidden);
  fmt::print("   {:<14} {:>10} {:>22} {:>22} {:>9} {:>16} {:>16}\n", "spectrum", "oversample", "full SVD (baseline)",
             "randomized", "speed-up", "error / optimal", "error / full SVD");
  struct Spectrum {
    const char* name;
    std::function<float(int64_t)> s;
  };
  const Spectrum spectra[] = {{"s_i = 0.99^i", [](int64_t i) { return std::pow(0.99f, static_cast<float>(i)); }},
                              {"s_i = 1/(i+1)", [](int64_t i) { return 1.0f / static_cast<float>(i + 1); }}};
  for (const auto& spectrum : spectra) {
    Eigen::VectorXf s(hidden);
    for (int64_t i = 0; i < hidden; ++i) s[i] = spectrum.s(i);
    const Mat us = square_svd.u * s.asDiagonal();
    Mat w(hidden, hidden);
    gemm_xwt(us.data(), hidden, hidden, square_svd.v.data(), hidden, w.data());
    Svd full;
    const Timing tf = measure(1, [&] { full = svd_full(w, chosen); });
    const double optimal = s.tail(hidden - kRandomizedRank).cast<double>().norm();
    const double full_error = residual_norm(w, full, kRandomizedRank);
    for (const int64_t oversample : {RandomizedSvdOptions{}.oversample, kMoreOversample}) {
      RandomizedSvdOptions options;
      options.oversample = oversample;
      Svd randomized;
      const Timing tr = measure(std::max(reps, 5), [&] { randomized = svd_randomized(w, kRandomizedRank, options); });
      const double error = residual_norm(w, randomized, kRandomizedRank);
      fmt::print("   {:<14} {:>10} {:>10.2f} s ({:>9}) {:>10.3f} s ({:>9}) {:>8.1f}x {:>16.5f} {:>16.5f}\n",
                 spectrum.name, oversample == RandomizedSvdOptions{}.oversample ? fmt::format("{} (dflt)", oversample)
                                                                             : fmt::format("{}", oversample),
                 tf.seconds, tf.runs_text(), tr.seconds, tr.runs_text(), tf.seconds / tr.seconds, error / optimal,
                 error / full_error);
    }
  }
  fmt::print("   targets: speed-up >= 20x, error / optimal <= 1.01 (optimal: sqrt(sum of s_i^2, i >= {}))\n\n",
             kRandomizedRank);

  // 3. One Llama-2-7B layer's seven matrices, each factorized once.
  fmt::print("3. full SVDs of one layer ({}), one run each\n", backend_name(chosen));
  struct LayerMatrix {
    const char* name;
    int64_t rows, cols;
  };
  const LayerMatrix layer[] = {{"q", hidden, hidden},       {"k", hidden, hidden},       {"v", hidden, hidden},
                               {"o", hidden, hidden},       {"gate", intermediate, hidden},
                               {"up", intermediate, hidden}, {"down", hidden, intermediate}};
  double layer_seconds = 0.0;
  uint64_t seed = 10;
  for (const auto& lm : layer) {
    const Mat w = random_matrix(lm.rows, lm.cols, seed++);
    const Timing t = measure(1, [&] { svd_full(w, chosen); });
    fmt::print("   {:<5} {:>5} x {:<5} {:>8.2f} s\n", lm.name, lm.rows, lm.cols, t.seconds);
    layer_seconds += t.seconds;
  }
  const int chosen_index = chosen == SvdBackend::lapack ? 0 : 1;
  const int other_index = 1 - chosen_index;
  // The other backend's layer from section 1's times (gate and up timed as their transposes).
  const double other_layer = 4.0 * square_timing[other_index].seconds + 3.0 * wide_timing[other_index].seconds;
  const double chosen_estimate = 4.0 * square_timing[chosen_index].seconds + 3.0 * wide_timing[chosen_index].seconds;
  fmt::print("   layer total {:.1f} s (section 1 predicts {:.1f} s); 32 such layers ~ {:.0f} min on this machine\n",
             layer_seconds, chosen_estimate, 32.0 * layer_seconds / 60.0);
  fmt::print("   {} would take ~{:.0f} s for the layer (from section 1): {:.2f}x\n\n",
             backend_name(chosen == SvdBackend::lapack ? SvdBackend::eigen : SvdBackend::lapack), other_layer,
             other_layer / layer_seconds);

  // 4. Tucker-2 HOOI: from the cached full SVD (what the factor cache gives) against from scratch.
  fmt::print("4. Tucker-2 HOOI at rank ({0}, {0}) of the {1} x {1} random matrix\n", kTuckerRank, hidden);
  Tucker2 cached, scratch;
  const Timing tc = measure(reps, [&] { cached = tucker2_hooi(square, kTuckerRank, kTuckerRank, {}, &square_svd); });
  const Timing ts = measure(1, [&] { scratch = tucker2_hooi(square, kTuckerRank, kTuckerRank); });
  fmt::print("   from scratch (baseline, full SVD + sweeps) {:>8.2f} s ({}), {} sweeps, rel. error {:.6f}\n",
             ts.seconds, ts.runs_text(), scratch.iterations, scratch.rel_error);
  fmt::print("   from the cached SVD                        {:>8.2f} s ({}), {} sweeps, rel. error {:.6f}\n",
             tc.seconds, tc.runs_text(), cached.iterations, cached.rel_error);
  fmt::print("   speed-up from the cache: {:.1f}x\n\n", ts.seconds / tc.seconds);

  bench_cache(hidden, reps);
  fmt::print("total {:.0f} s; load average {}\n", seconds_since(bench_start), load_average());
  return 0;
}
