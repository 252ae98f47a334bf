#include "core/decompose/factor_cache.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/mapped_file.hpp"

namespace rankscope {

namespace {

constexpr char kMagic[8] = {'R', 'S', 'F', 'A', 'C', 'T', '0', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 128;
constexpr size_t kKeyChars = 32;

// The fixed-size header at the start of every cache file (little-endian, as the host).
struct Header {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t m, n, k;
  char key[kKeyChars];
  uint64_t payload_bytes;
  uint64_t checksum;  // XXH3-64 of the payload
  double norm2;       // ||W||_F^2, for the error of every truncation
};
static_assert(sizeof(Header) <= kHeaderBytes);

size_t payload_bytes(int64_t m, int64_t n, int64_t k) {
  return static_cast<size_t>(k * m + k + k * n) * sizeof(float);
}

}  // namespace

std::string matrix_content_key(const Tensor& weight) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  const int64_t shape[2] = {weight.rows(), weight.cols()};
  XXH3_128bits_update(state, shape, sizeof shape);
  XXH3_128bits_update(state, weight.data, static_cast<size_t>(weight.numel()) * sizeof(float));
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

CachedSvd::CachedSvd(std::shared_ptr<const MappedFile> file, int64_t m, int64_t n, int64_t k, double norm2,
                     size_t payload_offset)
    : file_(std::move(file)), m_(m), n_(n), k_(k), norm2_(norm2), payload_offset_(payload_offset) {}

double CachedSvd::relative_error(int64_t r) const {
  RS_ASSERT(r >= 0 && r <= k_);
  if (norm2_ <= 0) return 0.0;
  double kept = 0;
  for (int64_t i = 0; i < r; ++i) kept += static_cast<double>(sv()[i]) * sv()[i];
  return std::sqrt(std::max(0.0, norm2_ - kept) / norm2_);
}

const float* CachedSvd::ut() const {
  return reinterpret_cast<const float*>(file_->bytes().data() + payload_offset_);
}
const float* CachedSvd::sv() const { return ut() + k_ * m_; }
const float* CachedSvd::vt() const { return sv() + k_; }

Mat CachedSvd::u(int64_t r) const {
  RS_ASSERT(r >= 1 && r <= k_);
  return ConstMatMap(ut(), r, m_).transpose();  // only the first r rows of U^T are read
}
Eigen::VectorXf CachedSvd::s(int64_t r) const {
  RS_ASSERT(r >= 1 && r <= k_);
  return Eigen::Map<const Eigen::VectorXf>(sv(), r);
}
Mat CachedSvd::v(int64_t r) const {
  RS_ASSERT(r >= 1 && r <= k_);
  return ConstMatMap(vt(), r, n_).transpose();
}

FactorCache::FactorCache(std::filesystem::path dir, SvdPolicy policy) : dir_(std::move(dir)), policy_(policy) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  if (ec || !std::filesystem::is_directory(dir_)) fail("{}: cannot create the factor cache directory: {}", dir_.string(), ec.message());
  remove_stale_temporaries(dir_);  // of killed writers
}

std::shared_ptr<const CachedSvd> FactorCache::try_open(const std::filesystem::path& path, int64_t rows, int64_t cols,
                                                       const std::string& key, int64_t expected_k) const {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) return nullptr;
  // Something else under a cache file's name (a FIFO, a directory, a device) is not a stale
  // entry to overwrite: say so instead of waiting on it or failing to rename over it.
  if (!std::filesystem::is_regular_file(status)) {
    fail("{}: in the factor cache but not a regular file; remove it", path.string());
  }
  std::shared_ptr<const MappedFile> file;
  try {
    file = MappedFile::open(path);
  } catch (const Error&) {
    return nullptr;
  }
  const auto bytes = file->bytes();
  if (bytes.size() < kHeaderBytes) return nullptr;
  Header h;
  std::memcpy(&h, bytes.data(), sizeof h);
  const auto m = static_cast<int64_t>(h.m), n = static_cast<int64_t>(h.n), k = static_cast<int64_t>(h.k);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion || m != rows ||
      n != cols || k != expected_k || std::string_view(h.key, kKeyChars) != key ||
      h.payload_bytes != payload_bytes(m, n, k) || bytes.size() != kHeaderBytes + h.payload_bytes) {
    return nullptr;
  }
  if (XXH3_64bits(bytes.data() + kHeaderBytes, h.payload_bytes) != h.checksum) return nullptr;
  return std::make_shared<const CachedSvd>(std::move(file), m, n, k, h.norm2, kHeaderBytes);
}

namespace {

int64_t next_power_of_two(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

}  // namespace

std::shared_ptr<const CachedSvd> FactorCache::factors(const Tensor& weight, int64_t rank) {
  RS_ASSERT(weight.shape.size() == 2);
  return lookup(matrix_content_key(weight), weight.rows(), weight.cols(), rank,
                [&weight] { return Mat(weight.matrix()); });
}

std::shared_ptr<const CachedSvd> FactorCache::factors_keyed(const std::string& key, int64_t m, int64_t n,
                                                            const std::function<Mat()>& make, int64_t rank) {
  RS_ASSERT(key.size() == kKeyChars);
  return lookup(key, m, n, rank, make);
}

std::shared_ptr<const CachedSvd> FactorCache::lookup(const std::string& key, int64_t m, int64_t n, int64_t rank,
                                                     const std::function<Mat()>& make) {
  const int64_t full_k = std::min(m, n);
  if (rank < 0 || rank > full_k) fail("rank {} is outside [1, {}] for a {} x {} matrix", rank, full_k, m, n);
  const auto full_path = dir_ / (key + ".svd");
  auto randomized_path = [&](int64_t k) { return dir_ / fmt::format("{}.r{}.svd", key, k); };
  if (auto cached = try_open(full_path, m, n, key, full_k)) {
    ++hits_;
    return cached;
  }
  const int64_t k = next_power_of_two(std::max<int64_t>({rank, policy_.min_rank, 1}));
  const bool randomized = policy_.randomized && rank > 0 && k <= full_k / 4;
  if (rank > 0) {
    for (int64_t kk = next_power_of_two(std::max<int64_t>(rank, 1)); kk <= full_k / 4; kk *= 2) {
      if (auto cached = try_open(randomized_path(kk), m, n, key, kk)) {
        ++hits_;
        return cached;
      }
    }
  }
  ++misses_;
  const Mat w = make();
  RS_ASSERT(w.rows() == m && w.cols() == n);
  if (randomized) {
    RandomizedSvdOptions options = policy_.options;
    options.backend = policy_.backend;
    return store(randomized_path(k), w, key, svd_randomized(w, k, options));
  }
  return store(full_path, w, key, svd_full(w, policy_.backend));
}

std::shared_ptr<const CachedSvd> FactorCache::store(const std::filesystem::path& path, const Mat& w,
                                                    const std::string& key, const Svd& svd) const {
  const int64_t m = w.rows(), n = w.cols(), k = svd.rank();
  const Mat ut = svd.u.transpose();  // [k x m]
  const Mat vt = svd.v.transpose();  // [k x n]

  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.m = static_cast<uint64_t>(m);
  h.n = static_cast<uint64_t>(n);
  h.k = static_cast<uint64_t>(k);
  std::memcpy(h.key, key.data(), kKeyChars);
  h.payload_bytes = payload_bytes(m, n, k);
  h.norm2 = w.cast<double>().squaredNorm();
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, ut.data(), static_cast<size_t>(ut.size()) * sizeof(float));
  XXH3_64bits_update(state, svd.s.data(), static_cast<size_t>(k) * sizeof(float));
  XXH3_64bits_update(state, vt.data(), static_cast<size_t>(vt.size()) * sizeof(float));
  h.checksum = XXH3_64bits_digest(state);
  XXH3_freeState(state);

  // Whole file under a unique temporary name, then renamed into place. Temporaries of this entry
  // left by killed writers go first (those of other entries went when the cache was opened).
  remove_stale_temporaries(dir_, path.filename().string());
  const auto tmp = temporary_path(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno(errno, "{}: cannot create", tmp.string());
  try {
    char header[kHeaderBytes] = {};
    std::memcpy(header, &h, sizeof h);
    write_all(fd, header, kHeaderBytes, tmp);
    write_all(fd, ut.data(), static_cast<size_t>(ut.size()) * sizeof(float), tmp);
    write_all(fd, svd.s.data(), static_cast<size_t>(k) * sizeof(float), tmp);
    write_all(fd, vt.data(), static_cast<size_t>(vt.size()) * sizeof(float), tmp);
    // No fsync: a killed process cannot leave a partial file under the final name (the rename
    // comes after the last write), and after a power loss a file whose data did not reach the
    // disk fails its checksum and is recomputed.
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(tmp);
    throw;
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("{}: cannot rename the written temporary into place", path.string());
  }
  auto stored = try_open(path, m, n, key, k);
  if (!stored) fail("{}: factor cache file unreadable right after writing it", path.string());
  return stored;
}

namespace {

// This host's name as it appears in temporary names: [A-Za-z0-9-] only.
const std::string& host_tag() {
  static const std::string tag = [] {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') return std::string("host");
    std::string t = host;
    for (char& c : t) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '-';
    }
    return t;
  }();
  return tag;
}

bool parse_pid(std::string_view text, int64_t* pid) {
  if (text.empty() || text.size() > 18) return false;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *pid = v;
  return v > 0;
}

// True when no process `pid` exists on this host (EPERM: it exists, owned by someone else).
bool process_gone(int64_t pid) {
  if (pid > std::numeric_limits<pid_t>::max()) return true;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

std::filesystem::path temporary_path(const std::filesystem::path& path) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return path.parent_path() / fmt::format("{}.tmp.{}.{}.{:x}", path.filename().string(), host_tag(), ::getpid(), rng());
}

void write_atomically(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& write) {
  const auto tmp = temporary_path(path);
  auto remove_temporaries = [&] {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    std::filesystem::remove(std::filesystem::path(tmp.string() + ".tmp"), ec);  // write_safetensors' own
  };
  try {
    write(tmp);
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) fail_errno(ec.value(), "{}: cannot rename the written temporary into place", path.string());
  } catch (const Error& e) {
    remove_temporaries();
    // The message names the file the user asked for, not the temporary that is gone.
    std::string message = e.what();
    for (size_t at; (at = message.find(tmp.string())) != std::string::npos;) message.replace(at, tmp.string().size(), path.string());
    if (dynamic_cast<const TransientError*>(&e) != nullptr) throw TransientError(message);
    throw Error(message);
  } catch (...) {
    remove_temporaries();
    throw;
  }
}

void write_new_file(const std::filesystem::path& path, std::string_view bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno(errno, "{}: cannot create", path.string());
  try {
    write_all(fd, bytes.data(), bytes.size(), path);
  } catch (...) {
    ::close(fd);
    throw;
  }
  if (::close(fd) != 0) fail_errno(errno, "{}: write failed", path.string());
}

void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  write_atomically(path, [&](const std::filesystem::path& tmp) { write_new_file(tmp, bytes); });
}

int64_t remove_stale_temporaries(const std::filesystem::path& dir, std::string_view prefix) {
  constexpr std::string_view kMarker = ".tmp.";
  int64_t removed = 0;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  const auto now = std::filesystem::file_time_type::clock::now();
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t marker = name.rfind(kMarker);
    if (marker == std::string::npos || marker == 0 || !std::string_view(name).substr(0, marker).starts_with(prefix)) continue;
    // After the marker: HOST.PID.RANDOM, or PID.RANDOM (earlier versions, this host).
    std::vector<std::string_view> parts;
    std::string_view rest = std::string_view(name).substr(marker + kMarker.size());
    for (size_t dot; (dot = rest.find('.')) != std::string_view::npos; rest.remove_prefix(dot + 1)) parts.push_back(rest.substr(0, dot));
    parts.push_back(rest);
    int64_t pid = 0;
    if (parts.size() < 2 || parts.size() > 3 || !parse_pid(parts[parts.size() - 2], &pid)) continue;
    const bool this_host = parts.size() == 2 || parts[0] == host_tag();
    std::error_code time_ec;
    const auto written = it->last_write_time(time_ec);
    const bool old = !time_ec && now - written > kStaleTemporaryAge;
    if (!(this_host && process_gone(pid)) && !old) continue;
    std::error_code rm_ec;
    if (std::filesystem::remove(it->path(), rm_ec)) ++removed;
  }
  return removed;
}

}  // namespace rankscope
