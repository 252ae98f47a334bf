#include "evaluators/fidelity.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string_view>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/models/llama.hpp"
#include "core/base/mapped_file.hpp"
#include "core/io/model_hash.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- the cache file: cache_dir/fidelity/<key>.f32 ---------------------------------------------
// [header, 128 bytes][float32 log-softmax rows, n_tokens x n_vocab][float64 NLL, n_tokens]
// [int32 argmax, n_tokens]; little-endian (the host's). The checksum covers the payload.

constexpr char kMagic[8] = {'R', 'S', 'F', 'I', 'D', 'L', '0', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 128;
constexpr size_t kKeyChars = 32;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t reserved;
  uint64_t n_tokens, n_vocab, ctx;
  int64_t max_windows;
  char key[kKeyChars];
  uint64_t payload_bytes;
  uint64_t checksum;  // XXH3-64 of the payload
};
static_assert(sizeof(Header) <= kHeaderBytes);

uint64_t payload_bytes(int64_t n_tokens, int64_t n_vocab) {
  return static_cast<uint64_t>(n_tokens) *
         (static_cast<uint64_t>(n_vocab) * sizeof(float) + sizeof(double) + sizeof(int32_t));
}

// What a valid cache file holds, memory-mapped.
struct CachedBase {
  std::shared_ptr<const MappedFile> file;
  const float* rows = nullptr;  // [n_tokens x n_vocab]
  std::vector<double> nll;
  std::vector<int32_t> argmax;
};

// The cache file at `path` if it exists and validates against the expected shape and key;
// null otherwise (`existed` says whether there was a file at all).
std::unique_ptr<CachedBase> try_open(const std::filesystem::path& path, const std::string& key, int64_t n_tokens,
                                     int64_t n_vocab, int64_t ctx, int64_t max_windows, bool& existed) {
  existed = std::filesystem::exists(path);
  if (!existed) return nullptr;
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
  const uint64_t payload = payload_bytes(n_tokens, n_vocab);
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0 || h.version != kVersion ||
      h.n_tokens != static_cast<uint64_t>(n_tokens) || h.n_vocab != static_cast<uint64_t>(n_vocab) ||
      h.ctx != static_cast<uint64_t>(ctx) || h.max_windows != max_windows ||
      std::string_view(h.key, kKeyChars) != key || h.payload_bytes != payload ||
      bytes.size() != kHeaderBytes + payload) {
    return nullptr;
  }
  if (XXH3_64bits(bytes.data() + kHeaderBytes, payload) != h.checksum) return nullptr;
  auto c = std::make_unique<CachedBase>();
  const std::byte* p = bytes.data() + kHeaderBytes;
  c->rows = reinterpret_cast<const float*>(p);
  p += static_cast<size_t>(n_tokens * n_vocab) * sizeof(float);
  c->nll.resize(static_cast<size_t>(n_tokens));
  std::memcpy(c->nll.data(), p, c->nll.size() * sizeof(double));  // not 8-byte aligned in general
  p += c->nll.size() * sizeof(double);
  c->argmax.resize(static_cast<size_t>(n_tokens));
  std::memcpy(c->argmax.data(), p, c->argmax.size() * sizeof(int32_t));
  c->file = std::move(file);
  return c;
}

// A cache file being written: a unique temporary name, renamed into place by commit().
class CacheWriter {
 public:
  CacheWriter(std::filesystem::path path, const Header& header) : path_(std::move(path)), header_(header) {
    tmp_ = temporary_path(path_);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_errno(errno, "{}: cannot create", tmp_.string());
    state_ = XXH3_createState();
    XXH3_64bits_reset(state_);
    const char zeros[kHeaderBytes] = {};
    write_all(fd_, zeros, kHeaderBytes, tmp_);  // the real header goes in last
  }
  ~CacheWriter() {
    if (state_) XXH3_freeState(state_);
    if (fd_ >= 0) {
      ::close(fd_);
      std::error_code ec;
      std::filesystem::remove(tmp_, ec);
    }
  }
  CacheWriter(const CacheWriter&) = delete;
  CacheWriter& operator=(const CacheWriter&) = delete;

  void write(const void* data, size_t size) {
    XXH3_64bits_update(state_, data, size);
    write_all(fd_, data, size, tmp_);
  }
  void commit() {
    header_.checksum = XXH3_64bits_digest(state_);
    char header[kHeaderBytes] = {};
    std::memcpy(header, &header_, sizeof header_);
    if (::lseek(fd_, 0, SEEK_SET) != 0) fail("{}: seek failed: {}", tmp_.string(), std::strerror(errno));
    write_all(fd_, header, kHeaderBytes, tmp_);
    // No fsync: a killed process cannot leave a partial file under the final name (the rename comes
    // after the last write), and a file whose data did not reach the disk fails its checksum.
    if (::close(fd_) != 0) {
      const int err = errno;
      fd_ = -1;
      fail_errno(err, "{}: close failed", tmp_.string());
    }
    fd_ = -1;
    std::error_code ec;
    std::filesystem::rename(tmp_, path_, ec);
    if (ec) {
      const int err = ec.value();
      std::filesystem::remove(tmp_, ec);
      fail_errno(err, "{}: cannot rename the fidelity cache file into place", path_.string());
    }
  }

 private:
  std::filesystem::path path_, tmp_;
  Header header_;
  int fd_ = -1;
  XXH3_state_t* state_ = nullptr;
};

}  // namespace

FidelityResult fidelity(const Model& base, const Model& candidate, const std::vector<TokenId>& ids,
                        const FidelityOptions& options) {
  const auto& c = base.config;
  if (c.arch != Arch::llama) fail("{}: fidelity needs a causal LM, not {}", base.dir.string(), c.architecture);
  if (candidate.config.arch != Arch::llama) {
    fail("{}: fidelity needs a causal LM, not {}", candidate.dir.string(), candidate.config.architecture);
  }
  if (candidate.config.n_vocab != c.n_vocab) {
    fail("the candidate's vocabulary ({}) is not the base model's ({})", candidate.config.n_vocab, c.n_vocab);
  }
  if (!c.bos_token_id) fail("{}: fidelity windows need a BOS token and config.json names none", base.dir.string());
  const int64_t ctx = options.ctx;
  if (ctx < 1 || ctx + 1 > std::min(c.n_ctx_train, candidate.config.n_ctx_train)) {
    fail("window of {} tokens (+ BOS) does not fit the model's {} positions", ctx,
         std::min(c.n_ctx_train, candidate.config.n_ctx_train));
  }
  if (options.windows_per_batch < 1) fail("windows per batch must be at least 1, not {}", options.windows_per_batch);
  if (options.max_windows == 0 || options.max_windows < -1) {
    fail("the fidelity limit must be a positive number of windows, not {}", options.max_windows);
  }
  if (ids.empty()) fail("no tokens to score");
  const auto bos = static_cast<TokenId>(*c.bos_token_id);
  const int64_t n_vocab = c.n_vocab;
  const auto n = static_cast<int64_t>(ids.size());
  int64_t n_windows = (n + ctx - 1) / ctx;
  if (options.max_windows > 0) n_windows = std::min(n_windows, options.max_windows);
  const int64_t n_tokens = std::min(n, n_windows * ctx);  // ids[0 : n_tokens] are scored

  FidelityResult r;

  // The base side: from the cache, or computed here (and written to the cache).
  std::unique_ptr<CachedBase> cached;
  std::unique_ptr<CacheWriter> writer;
  std::string key;
  if (!options.cache_dir.empty()) {
    const XXH128_hash_t ids_hash = XXH3_128bits(ids.data(), static_cast<size_t>(n_tokens) * sizeof(TokenId));
    std::string identity =
        fmt::format("rankscope fidelity v{}\nbase {}\ndata {}\nids {:016x}{:016x}\nctx {}\nmax_windows {}\nbos {}\n",
                    kVersion, model_content_hash(base), options.data_key, ids_hash.high64, ids_hash.low64, ctx,
                    options.max_windows, bos);
    // Base outputs computed in bf16/fp16 on a GPU are another cache entry than fp32 ones.
    const ComputeType type = base.runtime().compute_type();
    if (type != ComputeType::f32) identity += fmt::format("dtype {}\n", compute_type_name(type));
    const XXH128_hash_t h = XXH3_128bits(identity.data(), identity.size());
    key = fmt::format("{:016x}{:016x}", h.high64, h.low64);
    const auto dir = options.cache_dir / "fidelity";
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec || !std::filesystem::is_directory(dir)) fail("{}: cannot create the fidelity cache directory: {}", dir.string(), ec.message());
    remove_stale_temporaries(dir);  // left by writers that were killed
    r.cache_file = dir / (key + ".f32");
    bool existed = false;
    cached = try_open(r.cache_file, key, n_tokens, n_vocab, ctx, options.max_windows, existed);
    r.base_from_cache = cached != nullptr;
    r.cache_rejected = existed && !cached;
    if (!cached) {
      Header h{};
      std::memcpy(h.magic, kMagic, sizeof kMagic);
      h.version = kVersion;
      h.n_tokens = static_cast<uint64_t>(n_tokens);
      h.n_vocab = static_cast<uint64_t>(n_vocab);
      h.ctx = static_cast<uint64_t>(ctx);
      h.max_windows = options.max_windows;
      std::memcpy(h.key, key.data(), kKeyChars);
      h.payload_bytes = payload_bytes(n_tokens, n_vocab);
      writer = std::make_unique<CacheWriter>(r.cache_file, h);
    }
  }
  std::vector<double> base_nll = cached ? cached->nll : std::vector<double>(static_cast<size_t>(n_tokens));
  std::vector<int32_t> base_argmax = cached ? cached->argmax : std::vector<int32_t>(static_cast<size_t>(n_tokens));

  // Per scored position (in text order): KL, candidate NLL, argmax agreement.
  std::vector<double> kl(static_cast<size_t>(n_tokens)), cand_nll(static_cast<size_t>(n_tokens));
  std::vector<char> agree(static_cast<size_t>(n_tokens));
  std::vector<float> fresh_rows;  // the batch's base rows when not cached

  // One batch of windows: the model inputs ([BOS] + window), the logit row of each scored position
  // and that position's place in the text.
  struct Batch {
    std::vector<std::vector<TokenId>> inputs;
    std::vector<int64_t> rows, positions;
    std::vector<TokenId> targets;
  };
  auto make_batch = [&](std::span<const int64_t> windows) {
    Batch b;
    int64_t row0 = 0;
    for (const int64_t w : windows) {
      std::vector<TokenId> input = {bos};
      for (int64_t t = w * ctx; t < std::min(n_tokens, (w + 1) * ctx); ++t) {
        const TokenId id = ids[static_cast<size_t>(t)];
        if (id < 0 || id >= n_vocab) fail("token id {} is outside the vocabulary [0, {})", id, n_vocab);
        input.push_back(id);
        b.rows.push_back(row0 + (t - w * ctx));
        b.positions.push_back(t);
        b.targets.push_back(id);  // the next token of the text, scored from the position before it
      }
      row0 += static_cast<int64_t>(input.size());
      b.inputs.push_back(std::move(input));
    }
    return b;
  };
  // The base side of a batch: its log-softmax rows (into fresh_rows), NLLs and argmaxes.
  auto run_base = [&](const Batch& b) {
    const auto n_pos = static_cast<int64_t>(b.rows.size());
    fresh_rows.resize(static_cast<size_t>(n_pos * n_vocab));
    Backend& be = base.runtime();
    const auto scores = be.compare_rows(llama_logits(base, b.inputs), b.rows, b.targets, nullptr, fresh_rows.data());
    bool ok = true;
    for (int64_t i = 0; i < n_pos; ++i) {
      const auto& sc = scores[static_cast<size_t>(i)];
      base_nll[static_cast<size_t>(b.positions[static_cast<size_t>(i)])] = -sc.logprob;
      base_argmax[static_cast<size_t>(b.positions[static_cast<size_t>(i)])] = sc.argmax;
      ok = ok && std::isfinite(sc.logprob);
    }
    if (!ok) fail("{}: the base model gives NaN/Inf log-probabilities on this text", base.dir.string());
    if (writer) writer->write(fresh_rows.data(), fresh_rows.size() * sizeof(float));
  };
  auto finish_writer = [&] {
    if (!writer) return;
    writer->write(base_nll.data(), base_nll.size() * sizeof(double));
    writer->write(base_argmax.data(), base_argmax.size() * sizeof(int32_t));
    writer->commit();
    writer.reset();
  };

  // Staged (early stopping): the windows in a seeded random order, so that every prefix is a random
  // sample of them, and the base side whole first (the cache file, or kept in memory without one).
  const bool staged = static_cast<bool>(options.keep_going);
  std::vector<int64_t> order(static_cast<size_t>(n_windows));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::vector<float> base_all;  // staged without a cache directory: every base row, in text order
  const float* base_text_rows = cached ? cached->rows : nullptr;
  if (staged) {
    std::mt19937_64 rng(options.shuffle_seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL);
    std::shuffle(order.begin(), order.end(), rng);
    if (!cached) {
      for (int64_t w0 = 0; w0 < n_windows; w0 += options.windows_per_batch) {
        std::vector<int64_t> windows;
        for (int64_t w = w0; w < std::min(n_windows, w0 + options.windows_per_batch); ++w) windows.push_back(w);
        run_base(make_batch(windows));
        if (!writer) base_all.insert(base_all.end(), fresh_rows.begin(), fresh_rows.end());
      }
      if (writer) {
        finish_writer();
        bool existed = false;
        cached = try_open(r.cache_file, key, n_tokens, n_vocab, ctx, options.max_windows, existed);
        if (!cached) fail("{}: the fidelity cache file just written cannot be read back", r.cache_file.string());
        base_text_rows = cached->rows;
      } else {
        base_text_rows = base_all.data();
      }
    }
  }

  std::vector<char> window_done(static_cast<size_t>(n_windows), 0);
  std::vector<double> window_kl;      // staged: KL sum of each window scored, in scoring order
  std::vector<int64_t> window_tokens;
  std::vector<float> gathered;        // staged: the batch's base rows, gathered from the text's
  if (options.progress) options.progress(0, n_windows);
  for (int64_t w0 = 0; w0 < n_windows; w0 += options.windows_per_batch) {
    const int64_t w1 = std::min(n_windows, w0 + options.windows_per_batch);
    const std::span<const int64_t> windows(order.data() + w0, static_cast<size_t>(w1 - w0));
    const Batch b = make_batch(windows);
    const auto n_pos = static_cast<int64_t>(b.rows.size());
    const float* base_rows = nullptr;  // [n_pos x n_vocab], this batch's
    if (staged) {
      gathered.resize(static_cast<size_t>(n_pos * n_vocab));
      for (int64_t i = 0; i < n_pos; ++i) {
        std::memcpy(gathered.data() + i * n_vocab, base_text_rows + b.positions[static_cast<size_t>(i)] * n_vocab,
                    static_cast<size_t>(n_vocab) * sizeof(float));
      }
      base_rows = gathered.data();
    } else if (cached) {
      base_rows = cached->rows + b.positions.front() * n_vocab;  // text order: the batch's rows are contiguous
    } else {
      run_base(b);
      base_rows = fresh_rows.data();
    }

    // The candidate's logits stay on its device; only per-position results come back.
    Backend& be = candidate.runtime();
    const auto scores = be.compare_rows(llama_logits(candidate, b.inputs), b.rows, b.targets, base_rows, nullptr);
    for (int64_t i = 0; i < n_pos; ++i) {
      const auto& sc = scores[static_cast<size_t>(i)];
      const auto k = static_cast<size_t>(b.positions[static_cast<size_t>(i)]);
      kl[k] = sc.kl;
      cand_nll[k] = -sc.logprob;
      agree[k] = sc.argmax == base_argmax[k];
    }
    for (const int64_t w : windows) {
      window_done[static_cast<size_t>(w)] = 1;
      if (!staged) continue;
      double sum = 0;
      int64_t count = 0;
      for (int64_t t = w * ctx; t < std::min(n_tokens, (w + 1) * ctx); ++t, ++count) sum += kl[static_cast<size_t>(t)];
      window_kl.push_back(sum);
      window_tokens.push_back(count);
    }
    if (options.progress) options.progress(w1, n_windows);
    if (staged && w1 < n_windows && !options.keep_going(window_kl, window_tokens, n_windows)) {
      r.stopped = true;
      break;
    }
  }
  finish_writer();

  // Sums in text order over the windows scored (independent of threads, batching and the order
  // they were scored in).
  double kl_sum = 0, kl_sq = 0, base_sum = 0, cand_sum = 0;
  int64_t n_agree = 0, scored = 0, windows_scored = 0;
  for (int64_t w = 0; w < n_windows; ++w) {
    if (!window_done[static_cast<size_t>(w)]) continue;
    ++windows_scored;
    for (auto k = static_cast<size_t>(w * ctx); k < static_cast<size_t>(std::min(n_tokens, (w + 1) * ctx)); ++k, ++scored) {
      kl_sum += kl[k];
      kl_sq += kl[k] * kl[k];
      base_sum += base_nll[k];
      cand_sum += cand_nll[k];
      n_agree += agree[k];
      if (!std::isfinite(kl[k]) || !std::isfinite(cand_nll[k])) r.finite = false;
    }
  }
  r.n_windows_total = n_windows;
  r.n_windows = windows_scored;
  r.n_tokens = scored;
  const auto nt = static_cast<double>(scored);
  r.ppl_base = std::exp(base_sum / nt);
  if (!r.finite) {
    r.kl = r.kl_stderr = r.top1 = r.ppl_candidate = r.ppl_ratio = kNaN;
    return r;
  }
  r.kl = kl_sum / nt;
  const double variance = kl_sq / nt - r.kl * r.kl;
  r.kl_stderr = (n_tokens > 1 && variance > 0) ? std::sqrt(variance / (nt - 1)) : 0.0;
  r.top1 = static_cast<double>(n_agree) / nt;
  r.ppl_candidate = std::exp(cand_sum / nt);
  r.ppl_ratio = r.ppl_candidate / r.ppl_base;
  return r;
}

Eigen::MatrixXd classifier_log_probs(const Model& model, std::span<const BertInput> inputs, int64_t batch) {
  if (model.config.arch != Arch::bert || model.config.bert_head != BertHead::sequence_classification) {
    fail("{}: classifier fidelity needs a sequence classifier (BertForSequenceClassification), not {}", model.dir.string(),
         model.config.architecture);
  }
  const auto n = static_cast<int64_t>(inputs.size());
  const auto n_labels = static_cast<int64_t>(model.config.labels.size());
  Eigen::MatrixXd out(n, n_labels);
  for (int64_t b0 = 0; b0 < n; b0 += std::max<int64_t>(1, batch)) {
    const int64_t b1 = std::min(n, b0 + std::max<int64_t>(1, batch));
    const auto logits = bert_forward(model, inputs.subspan(static_cast<size_t>(b0), static_cast<size_t>(b1 - b0))).logits;
    RS_ASSERT(logits.rows() == b1 - b0 && logits.cols() == n_labels);
    for (int64_t i = b0; i < b1; ++i) {
      const Eigen::RowVectorXd row = logits.row(i - b0).cast<double>();
      const double m = row.maxCoeff();
      const double lse = m + std::log((row.array() - m).exp().sum());
      out.row(i) = row.array() - lse;
    }
  }
  return out;
}

ClassifierFidelityResult classifier_fidelity(const Eigen::MatrixXd& base, const Eigen::MatrixXd& cand) {
  if (base.rows() != cand.rows() || base.cols() != cand.cols()) {
    fail("classifier fidelity: base scores {} x {} but the candidate {} x {}", base.rows(), base.cols(), cand.rows(), cand.cols());
  }
  ClassifierFidelityResult r;
  r.n = base.rows();
  if (r.n == 0) fail("classifier fidelity: no inputs to score");
  if (!cand.allFinite()) {
    r.finite = false;
    r.kl = r.kl_stderr = r.top1 = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  double sum = 0, sum_sq = 0, agree = 0;
  for (int64_t i = 0; i < r.n; ++i) {
    double kl = 0;
    for (int64_t c = 0; c < base.cols(); ++c) kl += std::exp(base(i, c)) * (base(i, c) - cand(i, c));
    kl = std::max(0.0, kl);  // rounding can leave a tiny negative sum for equal distributions
    sum += kl;
    sum_sq += kl * kl;
    Eigen::Index a = 0, b = 0;
    base.row(i).maxCoeff(&a);
    cand.row(i).maxCoeff(&b);
    agree += a == b ? 1.0 : 0.0;
  }
  const auto n = static_cast<double>(r.n);
  r.kl = sum / n;
  r.kl_stderr = r.n > 1 ? std::sqrt(std::max(0.0, sum_sq / n - r.kl * r.kl) / (n - 1)) : 0.0;
  r.top1 = agree / n;
  return r;
}

}  // namespace rankscope
