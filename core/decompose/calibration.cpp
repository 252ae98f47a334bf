#include "core/decompose/calibration.hpp"

#include <fcntl.h>
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
    case MatrixKind::v: return HookSite::attn_in;
    case MatrixKind::o: return HookSite::attn_ctx;
    case MatrixKind::gate:
    case MatrixKind::up: return HookSite::ffn_in;
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

const SiteStats& Calibration::at(int64_t layer, HookSite site) const {
  const auto it = sites.find({layer, site});
  if (it == sites.end()) {
    fail("calibration {} has no activations for {} (recorded on another model?)", key, hook_name(site, layer));
  }
  return it->second;
}

CalibrationAccumulator::CalibrationAccumulator()
    : hook_([this](HookSite site, int64_t layer, const Mat& x) { add(site, layer, x); }) {}

void CalibrationAccumulator::add(HookSite site, int64_t layer, const Mat& x) {
  if (std::find(std::begin(kSites), std::end(kSites), site) == std::end(kSites)) return;
  auto& s = sites_[{layer, site}];
  if (s.width == 0) {
    s.width = x.cols();
    s.abs_sum = Eigen::VectorXd::Zero(s.width);
    s.gram = Eigen::MatrixXd::Zero(s.width, s.width);
  }
  RS_ASSERT(s.width == x.cols());
  const Eigen::MatrixXd xd = x.cast<double>();
  s.abs_sum += xd.cwiseAbs().colwise().sum().transpose();
  s.gram.selfadjointView<Eigen::Lower>().rankUpdate(xd.transpose());  // lower triangle += X^T X
  s.rows += x.rows();
}

Calibration CalibrationAccumulator::finish(std::string key, nlohmann::json info) {
  Calibration c;
  c.key = std::move(key);
  c.info = std::move(info);
  for (auto& [where, s] : sites_) {
    s.gram.triangularView<Eigen::StrictlyUpper>() = s.gram.transpose();
  }
  c.sites = std::move(sites_);
  sites_.clear();
  return c;
}

std::filesystem::path calibration_path(const std::filesystem::path& cache_dir, const std::string& key) {
  return cache_dir / "calib" / (key + ".bin");
}

void save_calibration(const std::filesystem::path& path, const Calibration& c) {
  RS_ASSERT(c.key.size() == kKeyChars);
  std::string payload = c.info.dump();
  const uint64_t info_bytes = payload.size();
  for (const auto& [where, s] : c.sites) {
    const EntryHeader e{where.first, static_cast<int64_t>(where.second), s.width, s.rows};
    payload.append(reinterpret_cast<const char*>(&e), sizeof e);
    payload.append(reinterpret_cast<const char*>(s.abs_sum.data()), static_cast<size_t>(s.width) * sizeof(double));
    // Column-major and symmetric: the same bytes as row-major.
    payload.append(reinterpret_cast<const char*>(s.gram.data()), static_cast<size_t>(s.width * s.width) * sizeof(double));
  }
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.n_entries = static_cast<uint32_t>(c.sites.size());
  std::memcpy(h.key, c.key.data(), kKeyChars);
  h.info_bytes = info_bytes;
  h.payload_bytes = payload.size();
  h.checksum = XXH3_64bits(payload.data(), payload.size());

  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) fail("{}: cannot create the calibration cache directory: {}", path.parent_path().string(), ec.message());
  remove_stale_temporaries(path.parent_path());  // of killed writers, before adding one
  const auto tmp = temporary_path(path);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail_errno(errno, "{}: cannot create", tmp.string());
  try {
    char header[kHeaderBytes] = {};
    std::memcpy(header, &h, sizeof h);
    write_all(fd, header, kHeaderBytes, tmp);
    write_all(fd, payload.data(), payload.size(), tmp);
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(tmp);
    throw;
  }
  ::close(fd);
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("{}: cannot rename the written temporary into place", path.string());
  }
}

std::optional<Calibration> load_calibration(const std::filesystem::path& path, const std::string& key) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) return std::nullopt;
  // Something else under the file's name (a FIFO, a directory) is not ours to replace.
  if (!std::filesystem::is_regular_file(status)) {
    fail("{}: in the calibration cache but not a regular file; remove it", path.string());
  }
  std::shared_ptr<const MappedFile> file;
  try {
    file = MappedFile::open(path);
  } catch (const Error&) {
    return std::nullopt;
  }
  const auto bytes = file->bytes();
  if (bytes.size() < kHeaderBytes) return std::nullopt;
  Header h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion ||
      std::string_view(h.key, kKeyChars) != key || h.payload_bytes != bytes.size() - kHeaderBytes ||
      h.info_bytes > h.payload_bytes) {
    return std::nullopt;
  }
  const auto* payload = reinterpret_cast<const char*>(bytes.data() + kHeaderBytes);
  if (XXH3_64bits(payload, h.payload_bytes) != h.checksum) return std::nullopt;
  Calibration c;
  c.key = key;
  try {
    c.info = parse_json_text(std::string_view(payload, h.info_bytes), path.string());
  } catch (const Error&) {
    return std::nullopt;
  }
  size_t pos = h.info_bytes;
  const size_t end = h.payload_bytes;
  for (uint32_t i = 0; i < h.n_entries; ++i) {
    EntryHeader e;
    if (end - pos < sizeof e) return std::nullopt;
    std::memcpy(&e, payload + pos, sizeof e);
    pos += sizeof e;
    if (e.width <= 0 || e.width > (int64_t{1} << 20) || e.rows < 0 || e.site < 0 || e.site > 3) return std::nullopt;
    const size_t need = static_cast<size_t>(e.width + e.width * e.width) * sizeof(double);
    if (end - pos < need) return std::nullopt;
    SiteStats s;
    s.width = e.width;
    s.rows = e.rows;
    s.abs_sum.resize(e.width);
    s.gram.resize(e.width, e.width);
    std::memcpy(s.abs_sum.data(), payload + pos, static_cast<size_t>(e.width) * sizeof(double));
    std::memcpy(s.gram.data(), payload + pos + static_cast<size_t>(e.width) * sizeof(double),
                static_cast<size_t>(e.width * e.width) * sizeof(double));
    pos += need;
    c.sites[{e.layer, static_cast<HookSite>(e.site)}] = std::move(s);
  }
  if (pos != end) return std::nullopt;
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
