#include "core/decompose/calibration.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>

#include <Eigen/Cholesky>
#include <fmt/format.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/base/mapped_file.hpp"

namespace rankscope {

namespace {

constexpr HookSite kSites[] = {HookSite::attn_in, HookSite::attn_ctx, HookSite::ffn_in, HookSite::ffn_act};

constexpr char kMagic[8] = {'R', 'S', 'C', 'A', 'L', 'I', 'B', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 128;
constexpr size_t kKeyChars = 32;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t n_entries;
  char key[kKeyChars];
  uint64_t info_bytes;
  uint64_t payload_bytes;  // everything after the header
  uint64_t checksum;       // XXH3-64 of the payload
};
static_assert(sizeof(Header) <= kHeaderBytes);

struct EntryHeader {
  int64_t layer, site, width, rows;
};

// asvd: channels below this fraction of the largest mean |x| are floored to it.
constexpr double kAsvdFloor = 1e-6;
// whiten: first regularisation (x mean diagonal), growth per retry, pivot floor (x mean diagonal).
constexpr double kWhitenLambda = 1e-6;
constexpr double kWhitenGrowth = 10.0;
constexpr double kWhitenPivotFloor = 1e-8;
constexpr int kWhitenAttempts = 40;

std::string hex128(const XXH128_hash_t& h) { return fmt::format("{:016x}{:016x}", h.high64, h.low64); }

}  // namespace

HookSite input_site(MatrixKind kind) {
  switch (kind) {
    case MatrixKind::q:
    case MatrixKind::k:
    case MatrixKind::v:
    case MatrixKind::qkv: return HookSite::attn_in;
    case MatrixKind::o: return HookSite::attn_ctx;
    case MatrixKind::gate:
    case MatrixKind::up:
    case MatrixKind::gate_up: return HookSite::ffn_in;
    case MatrixKind::down: return HookSite::ffn_act;
  }
  return HookSite::attn_in;
}

std::string site_name(HookSite site) {
  static constexpr const char* kNames[] = {"attn_in", "attn_ctx", "ffn_in", "ffn_act", "block_out"};
  return kNames[static_cast<size_t>(site)];
}

Eigen::VectorXd SiteStats::mean_abs() const {
  if (rows <= 0) return Eigen::VectorXd::Zero(width);
  return abs_sum / static_cast<double>(rows);
}

// The open cache file of a file-backed calibration: reads go to this inode even if another
// process renames a new file over the name.
struct Calibration::File {
  std::filesystem::path path;
  int fd = -1;
  ~File() {
    if (fd >= 0) ::close(fd);
  }
};

namespace {

// Reads exactly `size` bytes at `offset`; false on a short read or an error.
bool read_at(int fd, void* data, size_t size, uint64_t offset) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return true;
}

}  // namespace

std::shared_ptr<const SiteStats> Calibration::at(int64_t layer, HookSite site) const {
  if (const auto it = memory_.find({layer, site}); it != memory_.end()) return it->second;
  const auto it = index_.find({layer, site});
  if (it == index_.end()) {
    fail("calibration {} has no activations for {} (recorded on another model?)", key, hook_name(site, layer));
  }
  const Entry& e = it->second;
  auto s = std::make_shared<SiteStats>();
  s->width = e.width;
  s->rows = e.rows;
  s->abs_sum.resize(e.width);
  s->gram.resize(e.width, e.width);
  const auto w = static_cast<size_t>(e.width);
  if (!read_at(file_->fd, s->abs_sum.data(), w * sizeof(double), e.offset) ||
      !read_at(file_->fd, s->gram.data(), w * w * sizeof(double), e.offset + w * sizeof(double))) {
    fail_errno(errno, "{}: cannot read the statistics of {}", file_->path.string(), hook_name(site, layer));
  }
  return s;
}

std::vector<Calibration::Where> Calibration::sites() const {
  std::vector<Where> out;
  for (const auto& [where, s] : memory_) out.push_back(where);
  for (const auto& [where, e] : index_) out.push_back(where);
  std::sort(out.begin(), out.end());
  return out;
}

void Calibration::put(int64_t layer, HookSite site, SiteStats stats) {
  index_.erase({layer, site});
  memory_[{layer, site}] = std::make_shared<const SiteStats>(std::move(stats));
}

CalibrationAccumulator::CalibrationAccumulator(Backend& backend, int64_t first_layer, int64_t end_layer)
    : backend_(backend),
      first_(first_layer),
      end_(end_layer),
      hook_([this](HookSite site, int64_t layer, const Buffer& x) { add(site, layer, x); }) {}

void CalibrationAccumulator::add(HookSite site, int64_t layer, const Buffer& x) {
  if (std::find(std::begin(kSites), std::end(kSites), site) == std::end(kSites)) return;
  if (layer < first_ || layer >= end_) return;
  auto& acc = sites_[{layer, site}];
  if (!acc) acc = backend_.gram_accumulator(x.cols());
  RS_ASSERT(acc->width() == x.cols());
  acc->add(x);
}

std::vector<Calibration::Where> CalibrationAccumulator::sites() const {
  std::vector<Calibration::Where> out;
  for (const auto& [where, acc] : sites_) out.push_back(where);
  return out;
}

SiteStats CalibrationAccumulator::take(int64_t layer, HookSite site) {
  const auto it = sites_.find({layer, site});
  RS_ASSERT(it != sites_.end());
  SiteStats s;
  s.width = it->second->width();
  s.rows = it->second->rows();
  s.abs_sum.resize(s.width);
  s.gram.resize(s.width, s.width);
  it->second->read(s.abs_sum.data(), s.gram.data());
  sites_.erase(it);
  s.gram.triangularView<Eigen::StrictlyUpper>() = s.gram.transpose();
  return s;
}

Calibration CalibrationAccumulator::finish(std::string key, nlohmann::json info) {
  Calibration c;
  c.key = std::move(key);
  c.info = std::move(info);
  for (const auto& [layer, site] : sites()) c.put(layer, site, take(layer, site));
  return c;
}

std::filesystem::path calibration_path(const std::filesystem::path& cache_dir, const std::string& key) {
  return cache_dir / "calib" / (key + ".bin");
}

struct CalibrationWriter::State {
  std::filesystem::path path, tmp;
  Header header{};
  int fd = -1;
  XXH3_state_t* hash = nullptr;
  uint64_t payload = 0;
  ~State() {
    if (hash != nullptr) XXH3_freeState(hash);
    if (fd >= 0) {
      ::close(fd);
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
    }
  }
  void write(const void* data, size_t size) {
    XXH3_64bits_update(hash, data, size);
    write_all(fd, data, size, tmp);
    payload += size;
  }
};

CalibrationWriter::CalibrationWriter(std::filesystem::path path, const std::string& key, const nlohmann::json& info)
    : state_(std::make_unique<State>()) {
  RS_ASSERT(key.size() == kKeyChars);
  auto& st = *state_;
  st.path = std::move(path);
  std::error_code ec;
  std::filesystem::create_directories(st.path.parent_path(), ec);
  if (ec) fail("{}: cannot create the calibration cache directory: {}", st.path.parent_path().string(), ec.message());
  remove_stale_temporaries(st.path.parent_path());  // of killed writers, before adding one
  st.tmp = temporary_path(st.path);
  st.fd = ::open(st.tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (st.fd < 0) fail_errno(errno, "{}: cannot create", st.tmp.string());
  st.hash = XXH3_createState();
  XXH3_64bits_reset(st.hash);
  std::memcpy(st.header.magic, kMagic, sizeof kMagic);
  st.header.version = kVersion;
  std::memcpy(st.header.key, key.data(), kKeyChars);
  const char zeros[kHeaderBytes] = {};
  write_all(st.fd, zeros, kHeaderBytes, st.tmp);  // the real header goes in last
  const std::string text = info.dump();
  st.header.info_bytes = text.size();
  st.write(text.data(), text.size());
}

CalibrationWriter::~CalibrationWriter() = default;

void CalibrationWriter::add(int64_t layer, HookSite site, const SiteStats& s) {
  auto& st = *state_;
  RS_ASSERT(st.fd >= 0);
  const EntryHeader e{layer, static_cast<int64_t>(site), s.width, s.rows};
  st.write(&e, sizeof e);
  st.write(s.abs_sum.data(), static_cast<size_t>(s.width) * sizeof(double));
  // Column-major and symmetric: the same bytes as row-major.
  st.write(s.gram.data(), static_cast<size_t>(s.width * s.width) * sizeof(double));
  ++st.header.n_entries;
}

void CalibrationWriter::commit() {
  auto& st = *state_;
  RS_ASSERT(st.fd >= 0);
  st.header.payload_bytes = st.payload;
  st.header.checksum = XXH3_64bits_digest(st.hash);
  char header[kHeaderBytes] = {};
  std::memcpy(header, &st.header, sizeof st.header);
  if (::lseek(st.fd, 0, SEEK_SET) != 0) fail_errno(errno, "{}: seek failed", st.tmp.string());
  write_all(st.fd, header, kHeaderBytes, st.tmp);
  if (::close(st.fd) != 0) {
    const int err = errno;
    st.fd = -1;
    std::error_code ec;
    std::filesystem::remove(st.tmp, ec);
    fail_errno(err, "{}: close failed", st.tmp.string());
  }
  st.fd = -1;
  std::error_code ec;
  std::filesystem::rename(st.tmp, st.path, ec);
  if (ec) {
    std::filesystem::remove(st.tmp, ec);
    fail("{}: cannot rename the written temporary into place", st.path.string());
  }
}

void save_calibration(const std::filesystem::path& path, const Calibration& c) {
  CalibrationWriter writer(path, c.key, c.info);
  for (const auto& [layer, site] : c.sites()) writer.add(layer, site, *c.at(layer, site));
  writer.commit();
}

std::optional<Calibration> load_calibration(const std::filesystem::path& path, const std::string& key) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) return std::nullopt;
  // Something else under the file's name (a FIFO, a directory) is not ours to replace.
  if (!std::filesystem::is_regular_file(status)) {
    fail("{}: in the calibration cache but not a regular file; remove it", path.string());
  }
  auto file = std::make_shared<Calibration::File>();
  file->path = path;
  file->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file->fd < 0) return std::nullopt;
  struct stat st {};
  if (::fstat(file->fd, &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kHeaderBytes) return std::nullopt;
  Header h;
  if (!read_at(file->fd, &h, sizeof h, 0)) return std::nullopt;
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion ||
      std::string_view(h.key, kKeyChars) != key || h.payload_bytes != size - kHeaderBytes ||
      h.info_bytes > h.payload_bytes) {
    return std::nullopt;
  }
  // The checksum, reading the file a block at a time (never all of it at once).
  {
    constexpr size_t kBlockBytes = size_t{16} << 20;
    std::vector<char> block(static_cast<size_t>(std::min<uint64_t>(kBlockBytes, std::max<uint64_t>(h.payload_bytes, 1))));
    XXH3_state_t* state = XXH3_createState();
    XXH3_64bits_reset(state);
    bool ok = true;
    for (uint64_t pos = 0; pos < h.payload_bytes && ok;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), h.payload_bytes - pos));
      ok = read_at(file->fd, block.data(), n, kHeaderBytes + pos);
      if (ok) XXH3_64bits_update(state, block.data(), n);
      pos += n;
    }
    const uint64_t digest = XXH3_64bits_digest(state);
    XXH3_freeState(state);
    if (!ok || digest != h.checksum) return std::nullopt;
  }
  Calibration c;
  c.key = key;
  std::string info_text(static_cast<size_t>(h.info_bytes), '\0');
  if (!read_at(file->fd, info_text.data(), info_text.size(), kHeaderBytes)) return std::nullopt;
  try {
    c.info = parse_json_text(info_text, path.string());
  } catch (const Error&) {
    return std::nullopt;
  }
  uint64_t pos = h.info_bytes;
  const uint64_t end = h.payload_bytes;
  for (uint32_t i = 0; i < h.n_entries; ++i) {
    EntryHeader e;
    if (end - pos < sizeof e) return std::nullopt;
    if (!read_at(file->fd, &e, sizeof e, kHeaderBytes + pos)) return std::nullopt;
    pos += sizeof e;
    if (e.width <= 0 || e.width > (int64_t{1} << 20) || e.rows < 0 || e.site < 0 || e.site > 3) return std::nullopt;
    const uint64_t need = static_cast<uint64_t>(e.width + e.width * e.width) * sizeof(double);
    if (end - pos < need) return std::nullopt;
    const Calibration::Where where{e.layer, static_cast<HookSite>(e.site)};
    if (c.index_.count(where) != 0) return std::nullopt;  // one entry per site
    c.index_[where] = {kHeaderBytes + pos, e.width, e.rows};
    pos += need;
  }
  if (pos != end) return std::nullopt;
  c.file_ = std::move(file);
  return c;
}

Mat ActivationTransform::apply(const Mat& w) const {
  RS_ASSERT(w.cols() == width);
  if (method == Method::asvd) return (w.cast<double>() * scale.asDiagonal()).cast<float>();
  return (w.cast<double>() * chol.triangularView<Eigen::Lower>()).cast<float>();
}

Mat ActivationTransform::unapply_right(const Mat& v) const {
  RS_ASSERT(v.rows() == width);
  if (method == Method::asvd) return (scale.cwiseInverse().asDiagonal() * v.cast<double>()).cast<float>();
  // D^{-T} V: solve S^T X = V with the upper-triangular S^T.
  const Eigen::MatrixXd x = chol.transpose().triangularView<Eigen::Upper>().solve(v.cast<double>());
  return x.cast<float>();
}

namespace {

std::string transform_key(Method method, const double* values, size_t n, int64_t width) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  const std::string tag = fmt::format("rankscope-transform-v1|{}|{}", method_name(method), width);
  XXH3_128bits_update(state, tag.data(), tag.size());
  XXH3_128bits_update(state, values, n * sizeof(double));
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  return hex128(h);
}

}  // namespace

ActivationTransform asvd_transform(const SiteStats& stats, double alpha) {
  if (!std::isfinite(alpha) || alpha < 0) fail("--asvd-alpha must be a finite number >= 0, got {}", alpha);
  ActivationTransform t;
  t.method = Method::asvd;
  t.width = stats.width;
  Eigen::VectorXd s = stats.mean_abs();
  if (!s.allFinite()) fail("calibration statistics are not finite (mean |x| has NaN or Inf)");
  const double max_s = stats.width > 0 ? s.maxCoeff() : 0.0;
  if (max_s <= 0) {
    s.setOnes();
    t.floored = stats.width;
    t.note = fmt::format("every channel of its {} had mean |x| = 0 in the calibration data: plain SVD", stats.width);
  } else {
    const double floor = kAsvdFloor * max_s;
    for (int64_t j = 0; j < stats.width; ++j) {
      if (s[j] < floor) {
        s[j] = floor;
        ++t.floored;
      }
    }
    if (t.floored > 0) {
      t.note = fmt::format("{} of {} channels inactive in the calibration data (mean |x| < {:g} x the largest) floored there",
                           t.floored, stats.width, kAsvdFloor);
    }
  }
  t.scale = s.array().pow(alpha).matrix();
  t.key = transform_key(t.method, t.scale.data(), static_cast<size_t>(t.scale.size()), t.width);
  return t;
}

ActivationTransform whiten_transform(const SiteStats& stats) {
  ActivationTransform t;
  t.method = Method::whiten;
  t.width = stats.width;
  const Eigen::MatrixXd& g = stats.gram;
  if (!g.allFinite()) fail("calibration statistics are not finite (the Gram matrix has NaN or Inf)");
  const double mean_diag = stats.width > 0 ? g.diagonal().mean() : 0.0;
  const double base = mean_diag > 0 ? mean_diag : 1.0;
  double lambda = 0.0;
  bool ok = false;
  for (int attempt = 0; attempt < kWhitenAttempts && !ok; ++attempt) {
    Eigen::MatrixXd a = g;
    if (lambda > 0) a.diagonal().array() += lambda;
    const Eigen::LLT<Eigen::MatrixXd> llt(a);
    if (llt.info() == Eigen::Success) {
      Eigen::MatrixXd l = llt.matrixL();
      const double min_pivot = l.diagonal().array().square().minCoeff();
      if (l.allFinite() && min_pivot > kWhitenPivotFloor * base) {
        t.chol = std::move(l);
        ok = true;
        break;
      }
    }
    lambda = lambda == 0.0 ? kWhitenLambda * base : lambda * kWhitenGrowth;
  }
  if (!ok) fail("cannot whiten: the Gram matrix of {} channels stays singular after regularisation", stats.width);
  t.lambda = lambda;
  if (lambda > 0) {
    t.note = fmt::format("Gram matrix X^T X not positive definite ({} activation rows for {} channels): added {:.3g} I "
                         "({:.0e} of its mean diagonal)",
                         stats.rows, stats.width, lambda, lambda / base);
  }
  t.key = transform_key(t.method, t.chol.data(), static_cast<size_t>(t.chol.size()), t.width);
  return t;
}

}  // namespace rankscope
