// The factor cache: every decomposable matrix is factorized once (a full thin SVD) and every rank
// of every method is then a truncation of it. One file per matrix content, beside the results
// database, memory-mapped on read; see docs/formats.md ("Factor cache files").
//
// Safety: a file is written under a temporary name and renamed into place, so readers see
// either nothing or a whole file; on read the header (magic, version, shape, content key) and an
// XXH3 checksum of the payload are verified, and a file that fails is treated as absent and
// rewritten. Concurrent writers of the same key each write a whole valid file; the last rename wins.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/linalg.hpp"
#include "core/mapped_file.hpp"
#include "core/tensor.hpp"

namespace rankscope {

// 128-bit content key of a weight matrix (XXH3-128 over its shape and fp32 values), as 32 hex digits.
std::string matrix_content_key(const Tensor& weight);

// A full SVD W = U diag(s) V^T stored as U^T [k x m], s [k], V^T [k x n] (row-major), so the
// rank-r truncation is the first r rows of each: a contiguous prefix of the mapping.
class CachedSvd {
 public:
  CachedSvd(std::shared_ptr<const MappedFile> file, int64_t m, int64_t n, int64_t k, size_t payload_offset);
  int64_t m() const { return m_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
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
  size_t payload_offset_;
};

class FactorCache {
 public:
  // Creates `dir` if needed. Throws Error naming it when it cannot.
  explicit FactorCache(std::filesystem::path dir, SvdBackend backend = SvdBackend::lapack);

  // The full SVD of `weight` [m x n]: from the cache, or computed, stored and mapped.
  std::shared_ptr<const CachedSvd> svd(const Tensor& weight);

  const std::filesystem::path& dir() const { return dir_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  std::shared_ptr<const CachedSvd> try_open(const std::filesystem::path& path, const Tensor& weight,
                                            const std::string& key) const;
  std::filesystem::path dir_;
  SvdBackend backend_;
  std::atomic<int64_t> hits_{0};
  std::atomic<int64_t> misses_{0};
};

}  // namespace rankscope
