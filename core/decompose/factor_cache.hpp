// The factor cache: every decomposable matrix is factorized once (a full thin SVD, or optionally a
// randomized one of bounded rank) and every rank of every method is then a truncation of it. One file per matrix content, beside the results
// database, memory-mapped on read; see docs/formats.md ("Factor cache files").
//
// Safety: a file is written under a temporary name and renamed into place, so readers see
// either nothing or a whole file; on read the header (magic, version, shape, content key) and an
// XXH3 checksum of the payload are verified, and a file that fails is treated as absent and
// rewritten. Concurrent writers of the same key each write a whole valid file; the last rename wins.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/decompose/linalg.hpp"
#include "core/base/mapped_file.hpp"
#include "core/base/tensor.hpp"

namespace rankscope {

// 128-bit content key of a weight matrix (XXH3-128 over its shape and fp32 values), as 32 hex digits.
std::string matrix_content_key(const Tensor& weight);

// A thin SVD W ~ U diag(s) V^T (full: k = min(m, n); randomized: k < min(m, n)) stored as
// U^T [k x m], s [k], V^T [k x n] (row-major), so the rank-r truncation is the first r rows of
// each: a contiguous prefix of the mapping.
class CachedSvd {
 public:
  CachedSvd(std::shared_ptr<const MappedFile> file, int64_t m, int64_t n, int64_t k, double norm2,
            size_t payload_offset);
  int64_t m() const { return m_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  bool full() const { return k_ == std::min(m_, n_); }
  // ||W - U_r S_r V_r^T||_F / ||W||_F of the rank-r truncation (exact for orthonormal factors:
  // the optimum for a full SVD, the achieved error for a randomized one).
  double relative_error(int64_t r) const;
  // ||W||_F^2 (of the factorized matrix: W D for asvd/whiten).
  double norm2() const { return norm2_; }
  // U_r [m x r], s_r, V_r [n x r] as owned row-major matrices (r <= k).
  Mat u(int64_t r) const;
  Eigen::VectorXf s(int64_t r) const;
  Mat v(int64_t r) const;

 private:
  const float* ut() const;
  const float* sv() const;
  const float* vt() const;
  std::shared_ptr<const MappedFile> file_;
  int64_t m_, n_, k_;
  double norm2_;  // ||W||_F^2
  size_t payload_offset_;
};

// How the cache factorizes a matrix it does not hold yet.
struct SvdPolicy {
  SvdBackend backend = SvdBackend::lapack;
  // Randomized SVD (Halko et al.) of rank K = the next power of two >= max(rank, min_rank)
  // instead of a full SVD, when K <= min(m, n) / 4; a later request above K computes more.
  bool randomized = false;
  int64_t min_rank = 64;
  RandomizedSvdOptions options;
};

class FactorCache {
 public:
  // Creates `dir` if needed. Throws Error naming it when it cannot.
  explicit FactorCache(std::filesystem::path dir, SvdPolicy policy = {});

  // Factors of `weight` [m x n] good for every rank up to `rank` (0: the full SVD): a cached
  // full SVD, else a cached randomized one with k >= rank, else computed per the policy, stored
  // and mapped.
  std::shared_ptr<const CachedSvd> factors(const Tensor& weight, int64_t rank = 0);

  // The same for a matrix [m x n] named by `key` (32 hex digits) instead of its content, built by
  // `make` only on a miss: the activation-scaled matrices W D of asvd/whiten, keyed by the weight's
  // content key, the method and the transform D (docs/methods.md). Same files, same policy.
  std::shared_ptr<const CachedSvd> factors_keyed(const std::string& key, int64_t m, int64_t n,
                                                 const std::function<Mat()>& make, int64_t rank = 0);

  const std::filesystem::path& dir() const { return dir_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  std::shared_ptr<const CachedSvd> lookup(const std::string& key, int64_t m, int64_t n, int64_t rank,
                                          const std::function<Mat()>& make);
  std::shared_ptr<const CachedSvd> try_open(const std::filesystem::path& path, int64_t m, int64_t n,
                                            const std::string& key, int64_t k) const;
  std::shared_ptr<const CachedSvd> store(const std::filesystem::path& path, const Mat& w, const std::string& key,
                                         const Svd& svd) const;
  std::filesystem::path dir_;
  SvdPolicy policy_;
  std::atomic<int64_t> hits_{0};
  std::atomic<int64_t> misses_{0};
};

// Temporaries of atomic writes (the factor cache, the calibration cache, checkpoints, reports).
// A file PATH is written as PATH.tmp.HOST.PID.RANDOM in the same directory (HOST: this host's name,
// characters other than [A-Za-z0-9-] replaced by '-') and renamed over PATH, so a reader sees the
// old file, the whole new one, or none.
std::filesystem::path temporary_path(const std::filesystem::path& path);

// Creates `path`, which must not exist yet, holding `bytes`. Throws Error naming it when it cannot.
void write_new_file(const std::filesystem::path& path, std::string_view bytes);

// Writes `bytes` to temporary_path(path) and renames it to `path`. On any error the temporary is
// removed and Error names `path`: no partial file is ever left under either name.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

// Runs `write` on temporary_path(path) and renames the result to `path`; when `write` or the rename
// throws, the temporary (and a file `write` may have left at the temporary's own ".tmp") is removed
// and the error propagates.
void write_atomically(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& write);

// A temporary left by a writer that died: older than this, whoever wrote it, is abandoned (no
// writer keeps one open for long: the data is computed before the file is created).
constexpr std::chrono::hours kStaleTemporaryAge{6};

// Removes the temporaries in `dir` (names NAME.tmp.HOST.PID.RANDOM, or NAME.tmp.PID.RANDOM of
// earlier versions, taken as this host's) whose NAME starts with `prefix` and whose writer is gone:
// written on this host by a process that no longer exists, or older than kStaleTemporaryAge. A
// live writer's temporary is left alone. Errors (a vanished file, no permission) are ignored.
// Returns how many were removed.
int64_t remove_stale_temporaries(const std::filesystem::path& dir, std::string_view prefix = {});

}  // namespace rankscope
