// CudaBackend: activations in stream-ordered device memory, weights resident in the compute type,
// products through cuBLAS (fp32 accumulation), everything else in kernels.cu. One stream per
// backend; only downloads and scores synchronise.
#include "core/compute/cuda/cuda_backend.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <unordered_map>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/compute/cuda/kernels.cuh"

namespace rankscope {

namespace {

size_t element_size(ComputeType t) { return t == ComputeType::f32 ? 4 : 2; }

cudaDataType cuda_type(ComputeType t) {
  switch (t) {
    case ComputeType::f32: return CUDA_R_32F;
    case ComputeType::bf16: return CUDA_R_16BF;
    case ComputeType::f16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA {}: {}", what, cudaGetErrorString(e));
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS {}: {}", what, cublasGetStatusString(s));
}

double mib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// The device state every allocation's deleter needs: it outlives the backend while buffers do.
struct Context {
  int index = 0;
  size_t limit = SIZE_MAX;  // RANKSCOPE_GPU_MEMORY_LIMIT_MIB
  std::atomic<size_t> in_use{0};
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  ~Context() {
    if (blas != nullptr) cublasDestroy(blas);
    if (blas_workspace != nullptr) cudaFree(blas_workspace);
    if (stream != nullptr) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
  }
};

// Per-operation GPU time (RANKSCOPE_CUDA_PROFILE=1): events around every operation, resolved at
// synchronisation points, printed to stderr when the backend goes.
class Profile {
 public:
  explicit Profile(cudaStream_t stream) : stream_(stream) {}
  ~Profile() {
    resolve();
    double total = 0;
    for (const auto& [name, t] : totals_) total += t.ms;
    std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    fmt::print(stderr, "rankscope CUDA profile: {:.1f} ms in operations\n", total);
    for (const auto& [name, t] : rows) {
      fmt::print(stderr, "  {:<16} {:>10.2f} ms {:>5.1f} % {:>8} calls\n", name, t.ms, 100.0 * t.ms / total, t.calls);
    }
    for (auto e : free_) cudaEventDestroy(e);
  }
  void begin(const char* name) {
    pending_.push_back({name, event(), event()});
    cudaEventRecord(pending_.back().start, stream_);
  }
  void end() { cudaEventRecord(pending_.back().stop, stream_); }
  // After the stream has synchronised.
  void resolve() {
    for (auto& p : pending_) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
        totals_[p.name].ms += ms;
        ++totals_[p.name].calls;
      }
      free_.push_back(p.start);
      free_.push_back(p.stop);
    }
    pending_.clear();
  }

 private:
  struct Pending {
    std::string name;
    cudaEvent_t start, stop;
  };
  struct Total {
    double ms = 0;
    int64_t calls = 0;
  };
  cudaEvent_t event() {
    if (!free_.empty()) {
      auto e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    cudaEventCreate(&e);
    return e;
  }
  cudaStream_t stream_;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_;
  std::map<std::string, Total> totals_;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(int index, ComputeType type) : type_(type) {
    ctx_ = std::make_shared<Context>();
    ctx_->index = index;
    if (const char* cap = std::getenv("RANKSCOPE_GPU_MEMORY_LIMIT_MIB"); cap != nullptr && *cap != '\0') {
      char* end = nullptr;
      const double value = std::strtod(cap, &end);
      if (end == cap || *end != '\0' || !(value > 0)) {
        fail("RANKSCOPE_GPU_MEMORY_LIMIT_MIB: '{}' is not a positive number of MiB", cap);
      }
      ctx_->limit = static_cast<size_t>(value * 1024.0 * 1024.0);
    }
    check(cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    name_ = fmt::format("cuda:{} ({})", index, prop.name);
    check(cudaStreamCreateWithFlags(&ctx_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cublasCreate(&ctx_->blas), "cublasCreate");
    check(cublasSetStream(ctx_->blas, ctx_->stream), "cublasSetStream");
    // fp32 stays fp32: no TF32 tensor-op shortcuts, so GPU fp32 matches the CPU.
    check(cublasSetMathMode(ctx_->blas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    // The workspace cuBLAS recommends for Hopper (32 MiB; 4 MiB before it), set after the stream
    // (cublasSetStream resets it): GEMM kernels that split K need it.
    constexpr size_t kBlasWorkspace = size_t{32} << 20;
    if (cudaMalloc(&ctx_->blas_workspace, kBlasWorkspace) == cudaSuccess) {
      ctx_->in_use += kBlasWorkspace;
      check(cublasSetWorkspace(ctx_->blas, ctx_->blas_workspace, kBlasWorkspace), "cublasSetWorkspace");
    } else {
      cudaGetLastError();
      ctx_->blas_workspace = nullptr;  // cuBLAS's own default workspace then
    }
    // Freed blocks stay in the stream-ordered pool for reuse instead of going back to the driver.
    cudaMemPool_t pool = nullptr;
    check(cudaDeviceGetDefaultMemPool(&pool, index), "cudaDeviceGetDefaultMemPool");
    uint64_t threshold = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "cudaMemPoolSetAttribute");
    void* pinned = nullptr;
    if (cudaMallocHost(&pinned, kPinnedBytes) == cudaSuccess) {
      pinned_ = static_cast<std::byte*>(pinned);
    } else {
      cudaGetLastError();  // small uploads then go from pageable memory
    }
    if (const char* p = std::getenv("RANKSCOPE_CUDA_PROFILE"); p != nullptr && std::string(p) == "1") {
      profile_ = std::make_unique<Profile>(ctx_->stream);
    }
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(ctx_->stream);
    profile_.reset();
    if (pinned_ != nullptr) cudaFreeHost(pinned_);
  }

  std::string device_name() const override { return name_; }
  std::string device_kind() const override { return "cuda"; }
  ComputeType compute_type() const override { return type_; }

  Buffer buffer(int64_t rows, int64_t cols, Precision precision) override {
    const ComputeType t = precision == Precision::f32 ? ComputeType::f32 : type_;
    auto mem = allocate(static_cast<size_t>(rows * cols) * element_size(t),
                        fmt::format("a [{} x {}] {} activation buffer", rows, cols, compute_type_name(t)));
    void* data = mem.get();
    return Buffer(rows, cols, t, std::move(mem), data);
  }

  void grow_rows(Buffer& b, int64_t rows) override {
    const Scope scope(profile_.get(), "grow_rows");
    if (!b.empty() && b.rows() >= rows) return;
    const ComputeType t = b.empty() ? type_ : b.type();
    auto mem = allocate(static_cast<size_t>(rows * b.cols()) * element_size(t),
                        fmt::format("a KV cache of {} rows x {}", rows, b.cols()));
    if (!b.empty()) {
      check(cudaMemcpyAsync(mem.get(), b.data(), static_cast<size_t>(b.rows() * b.cols()) * element_size(t),
                            cudaMemcpyDeviceToDevice, ctx_->stream),
            "cudaMemcpyAsync (grow)");
    }
    void* data = mem.get();
    b = Buffer(rows, b.cols(), t, std::move(mem), data);
  }

  Buffer upload(const Mat& m, Precision precision) override {
    Buffer b = buffer(m.rows(), m.cols(), precision);
    const auto count = static_cast<size_t>(m.size());
    if (b.type() == ComputeType::f32) {
      check(cudaMemcpyAsync(b.data(), m.data(), count * 4, cudaMemcpyHostToDevice, ctx_->stream), "cudaMemcpyAsync (upload)");
    } else {
      auto staging = upload(m.data(), count * 4, "an fp32 upload");
      check(cuda::convert(staging.get(), ComputeType::f32, b.data(), b.type(), static_cast<int64_t>(count), ctx_->stream),
            "convert kernel");
    }
    return b;
  }

  Mat download(const Buffer& b) override { return download_rows(b, 0, b.rows()); }

  Mat download_rows(const Buffer& b, int64_t row0, int64_t n) override {
    Mat out(n, b.cols());
    if (n == 0) return out;
    const size_t count = static_cast<size_t>(n * b.cols());
    const auto* src = static_cast<const std::byte*>(b.data()) + static_cast<size_t>(row0 * b.cols()) * element_size(b.type());
    std::shared_ptr<void> widened;
    if (b.type() != ComputeType::f32) {
      widened = allocate(count * 4, "an fp32 copy for download");
      check(cuda::convert(src, b.type(), widened.get(), ComputeType::f32, static_cast<int64_t>(count), ctx_->stream), "convert kernel");
      src = static_cast<const std::byte*>(widened.get());
    }
    check(cudaMemcpyAsync(out.data(), src, count * 4, cudaMemcpyDeviceToHost, ctx_->stream), "cudaMemcpyAsync (download)");
    synchronize();
    return out;
  }

  const Mat& host_view(const Buffer& b, Mat& scratch) override {
    scratch = download(b);
    return scratch;
  }

  void embed(const Tensor& table, std::span<const TokenId> ids, Buffer& x, bool accumulate) override {
    const Scope scope(profile_.get(), "embed");
    RS_ASSERT(x.type() == ComputeType::f32 && x.rows() == static_cast<int64_t>(ids.size()));
    const void* t = resident(table, type_);
    auto d_ids = upload(ids.data(), ids.size_bytes(), "token ids");
    check(cuda::embed(t, type_, static_cast<const int32_t*>(d_ids.get()), x.rows(), x.cols(), static_cast<float*>(x.data()),
                accumulate, ctx_->stream), "embed kernel");
  }

  void rms_norm(const Buffer& x, const Tensor& weight, double eps, Buffer& out) override {
    const Scope scope(profile_.get(), "rms_norm");
    RS_ASSERT(x.type() == ComputeType::f32 && out.rows() >= x.rows());
    check(cuda::rms_norm(static_cast<const float*>(x.data()), f32(weight), eps, x.rows(), x.cols(), out.data(), out.type(),
                   ctx_->stream), "rms_norm kernel");
  }

  void layer_norm(Buffer& x, const Tensor& weight, const Tensor& bias, double eps, Buffer* copy) override {
    const Scope scope(profile_.get(), "layer_norm");
    RS_ASSERT(x.type() == ComputeType::f32);
    const bool has_copy = copy != nullptr && !copy->empty() && copy->data() != x.data();
    check(cuda::layer_norm(static_cast<float*>(x.data()), f32(weight), f32(bias), eps, x.rows(), x.cols(),
                     has_copy ? copy->data() : nullptr, has_copy ? copy->type() : ComputeType::f32, ctx_->stream), "layer_norm kernel");
  }

  void linear(const Linear& w, const Buffer& x, Buffer& y, bool accumulate) override {
    static const char* const kNames[] = {"linear.none", "linear.dense", "linear.svd", "linear.tucker"};
    const Scope scope(profile_.get(), kNames[static_cast<int>(w.form())]);
    RS_ASSERT(x.cols() == w.n_in() && y.cols() == w.n_out() && y.rows() >= x.rows());
    const int64_t n = x.rows();
    // Products take both operands in the compute type.
    std::shared_ptr<void> converted;
    const void* in = x.data();
    if (x.type() != type_) {
      converted = allocate(static_cast<size_t>(n * x.cols()) * element_size(type_), "a converted linear input");
      check(cuda::convert(x.data(), x.type(), converted.get(), type_, n * x.cols(), ctx_->stream), "convert kernel");
      in = converted.get();
    }
    const float beta = accumulate ? 1.0f : 0.0f;
    switch (w.form()) {
      case Linear::Form::none: RS_ASSERT(!"linear through an empty Linear"); break;
      case Linear::Form::dense:
        gemm_xwt(in, n, w.n_in(), resident(w.weight(), type_), w.n_out(), y.data(), y.type(), beta);
        break;
      case Linear::Form::svd: {
        const int64_t r = w.u().cols();
        auto t = allocate(static_cast<size_t>(n * r) * element_size(type_), "a factored product");
        gemm_xb(in, n, w.n_in(), resident(w.v(), type_), r, t.get(), type_, 0.0f);      // [n x r] = x V
        gemm_xwt(t.get(), n, r, resident(w.u(), type_), w.n_out(), y.data(), y.type(), beta);  // t U^T
        break;
      }
      case Linear::Form::tucker: {
        const int64_t r1 = w.core().rows(), r2 = w.core().cols();
        auto t2 = allocate(static_cast<size_t>(n * r2) * element_size(type_), "a factored product");
        auto t1 = allocate(static_cast<size_t>(n * r1) * element_size(type_), "a factored product");
        gemm_xb(in, n, w.n_in(), resident(w.v(), type_), r2, t2.get(), type_, 0.0f);        // x V
        gemm_xwt(t2.get(), n, r2, resident(w.core(), type_), r1, t1.get(), type_, 0.0f);    // t2 G^T
        gemm_xwt(t1.get(), n, r1, resident(w.u(), type_), w.n_out(), y.data(), y.type(), beta);  // t1 U^T
        break;
      }
    }
    if (!w.bias().empty()) check(cuda::add_bias(y.data(), y.type(), f32(w.bias()), n, w.n_out(), ctx_->stream), "add_bias kernel");
  }

  void head_rms_norm(Buffer& x, int64_t n_heads, const Tensor& weight, double eps) override {
    const Scope scope(profile_.get(), "head_rms_norm");
    RS_ASSERT(x.cols() == n_heads * weight.numel());
    check(cuda::segment_rms_norm(x.data(), x.type(), x.rows() * n_heads, weight.numel(), f32(weight), eps, ctx_->stream),
          "segment_rms_norm kernel");
  }

  void rope(Buffer& x, int64_t n_heads, const Rope& rope, const SequenceLayout& layout) override {
    const Scope scope(profile_.get(), "rope");
    // The (cos, sin) table of this batch's positions, computed once for every layer and head.
    const auto& positions = layout.positions;
    std::vector<float> inv(rope.inv_freq().begin(), rope.inv_freq().end());
    if (positions != positions_host_ || inv != inv_freq_host_ || !rope_table_) {
      positions_host_ = positions;
      inv_freq_host_ = inv;
      auto d_positions = upload(positions.data(), positions.size() * sizeof(int64_t), "positions");
      auto d_inv = upload(inv.data(), inv.size() * sizeof(float), "RoPE frequencies");
      const auto half = static_cast<int64_t>(inv.size());
      rope_table_ = allocate(positions.size() * static_cast<size_t>(half) * 2 * sizeof(float), "a RoPE table");
      check(cuda::rope_table(static_cast<const int64_t*>(d_positions.get()), static_cast<const float*>(d_inv.get()),
                             static_cast<int64_t>(positions.size()), half, static_cast<float*>(rope_table_.get()),
                             ctx_->stream),
            "rope_table kernel");
    }
    check(cuda::rope(x.data(), x.type(), x.rows(), n_heads, rope.n_embd_head(), rope.n_rot(),
                     static_cast<const float*>(rope_table_.get()), ctx_->stream),
          "rope kernel");
  }

  void attention(const AttentionShape& shape, const Buffer& q, const Buffer& k, const Buffer& v,
                 const SequenceLayout& layout, std::span<KvCache> caches, int64_t layer,
                 std::span<const std::vector<uint8_t>> masks, Buffer& ctx) override {
    const Scope scope(profile_.get(), "attention");
    RS_ASSERT(q.type() == k.type() && k.type() == v.type() && ctx.type() == q.type());
    if (shape.n_embd_head > cuda::kMaxHeadDim) {
      fail("{}: attention heads of {} values are not supported (at most {})", name_, shape.n_embd_head, cuda::kMaxHeadDim);
    }
    const int64_t n_seq = layout.n_seq();
    int64_t max_tokens = 0;
    for (int64_t s = 0; s < n_seq; ++s) max_tokens = std::max(max_tokens, layout.length(s));
    const size_t elem = element_size(k.type());
    const int64_t kv_cols = k.cols();
    std::vector<cuda::SequenceDesc> descs(static_cast<size_t>(n_seq));
    if (!caches.empty()) {
      // Append the batch's keys and values at each cache's n_past, then attend over the caches.
      std::vector<cuda::AppendDesc> to_k(static_cast<size_t>(n_seq)), to_v(static_cast<size_t>(n_seq));
      for (int64_t s = 0; s < n_seq; ++s) {
        auto& cache = caches[s];
        Buffer& ck = cache.k[layer];
        Buffer& cv = cache.v[layer];
        RS_ASSERT(ck.type() == k.type() && ck.rows() >= cache.n_past + layout.length(s));
        to_k[s] = {layout.offset[s], layout.length(s),
                   static_cast<std::byte*>(ck.data()) + static_cast<size_t>(cache.n_past * kv_cols) * elem};
        to_v[s] = {layout.offset[s], layout.length(s),
                   static_cast<std::byte*>(cv.data()) + static_cast<size_t>(cache.n_past * kv_cols) * elem};
        descs[s] = {layout.offset[s], layout.length(s), cache.n_past, ck.data(), cv.data(), kv_cols, nullptr};
      }
      auto d_k = upload(to_k.data(), to_k.size() * sizeof(cuda::AppendDesc), "KV cache descriptors");
      auto d_v = upload(to_v.data(), to_v.size() * sizeof(cuda::AppendDesc), "KV cache descriptors");
      check(cuda::append_rows(k.data(), kv_cols, static_cast<const cuda::AppendDesc*>(d_k.get()), n_seq, max_tokens, kv_cols,
                        k.type(), ctx_->stream), "append_rows kernel");
      check(cuda::append_rows(v.data(), kv_cols, static_cast<const cuda::AppendDesc*>(d_v.get()), n_seq, max_tokens, kv_cols,
                        v.type(), ctx_->stream), "append_rows kernel");
    } else {
      for (int64_t s = 0; s < n_seq; ++s) {
        const size_t row0 = static_cast<size_t>(layout.offset[s] * kv_cols) * elem;
        descs[s] = {layout.offset[s], layout.length(s), 0, static_cast<const std::byte*>(k.data()) + row0,
                    static_cast<const std::byte*>(v.data()) + row0, kv_cols, nullptr};
      }
    }
    std::shared_ptr<void> d_masks;
    if (!masks.empty()) {
      std::vector<uint8_t> all;
      std::vector<int64_t> at(static_cast<size_t>(n_seq), -1);
      for (int64_t s = 0; s < n_seq; ++s) {
        if (masks[s].empty()) continue;
        at[s] = static_cast<int64_t>(all.size());
        all.insert(all.end(), masks[s].begin(), masks[s].end());
      }
      if (!all.empty()) {
        d_masks = upload(all.data(), all.size(), "attention masks");
        for (int64_t s = 0; s < n_seq; ++s) {
          if (at[s] >= 0) descs[s].mask = static_cast<const uint8_t*>(d_masks.get()) + at[s];
        }
      }
    }
    RS_ASSERT(shape.window == 0 || shape.causal);
    for (auto& d : descs) d.window = shape.window;
    auto d_descs = upload(descs.data(), descs.size() * sizeof(cuda::SequenceDesc), "attention descriptors");
    check(cuda::attention(q.data(), q.cols(), static_cast<const cuda::SequenceDesc*>(d_descs.get()), n_seq, max_tokens,
                    shape.n_head, shape.n_head_kv, shape.n_embd_head, shape.causal, ctx.data(), ctx.cols(), q.type(),
                    kv_cols % 8 == 0, ctx_->stream), "attention kernel");
  }

  void activation(Buffer& x, Activation act) override {
    const Scope scope(profile_.get(), "activation");
    check(cuda::activation(x.data(), x.type(), x.rows() * x.cols(), act, ctx_->stream), "activation kernel");
  }

  void gated_activation(Buffer& gate, const Buffer& up, Activation act) override {
    const Scope scope(profile_.get(), "gated_activation");
    RS_ASSERT(gate.type() == up.type());
    check(cuda::gated_activation(gate.data(), up.data(), gate.type(), gate.rows() * gate.cols(), act, ctx_->stream), "gated_activation kernel");
  }

  void add(Buffer& x, const Buffer& y) override {
    const Scope scope(profile_.get(), "add");
    RS_ASSERT(x.type() == ComputeType::f32);
    check(cuda::add(static_cast<float*>(x.data()), y.data(), y.type(), x.rows() * x.cols(), ctx_->stream), "add kernel");
  }

  void gather_rows(const Buffer& x, std::span<const int64_t> rows, Buffer& out) override {
    const Scope scope(profile_.get(), "gather_rows");
    RS_ASSERT(x.type() == out.type());
    auto d_rows = upload(rows.data(), rows.size_bytes(), "row indices");
    check(cuda::gather_rows(x.data(), static_cast<const int64_t*>(d_rows.get()), static_cast<int64_t>(rows.size()), x.cols(),
                      out.data(), x.type(), ctx_->stream), "gather_rows kernel");
  }

  void copy_columns(const Buffer& x, int64_t col0, Buffer& out) override {
    const Scope scope(profile_.get(), "copy_columns");
    RS_ASSERT(x.type() == out.type() && x.rows() == out.rows() && col0 >= 0 && col0 + out.cols() <= x.cols());
    if (out.rows() == 0 || out.cols() == 0) return;
    const size_t elem = element_size(x.type());
    const auto* src = static_cast<const std::byte*>(x.data()) + static_cast<size_t>(col0) * elem;
    check(cudaMemcpy2DAsync(out.data(), static_cast<size_t>(out.cols()) * elem, src, static_cast<size_t>(x.cols()) * elem,
                            static_cast<size_t>(out.cols()) * elem, static_cast<size_t>(out.rows()), cudaMemcpyDeviceToDevice,
                            ctx_->stream),
          "cudaMemcpy2DAsync (copy_columns)");
  }

  void tanh(Buffer& x) override { check(cuda::tanh_inplace(x.data(), x.type(), x.rows() * x.cols(), ctx_->stream), "tanh_inplace kernel"); }

  std::vector<TokenScore> score(const Buffer& logits, std::span<const int64_t> rows,
                                std::span<const TokenId> targets) override {
    std::optional<Scope> scope(std::in_place, profile_.get(), "score");
    RS_ASSERT(logits.type() == ComputeType::f32 && rows.size() == targets.size());
    const size_t n = rows.size();
    std::vector<TokenScore> out(n);
    if (n == 0) return out;
    auto d_rows = upload(rows.data(), rows.size_bytes(), "scored rows");
    auto d_targets = upload(targets.data(), targets.size_bytes(), "scored targets");
    auto d_logprob = allocate(n * sizeof(double), "scores");
    auto d_argmax = allocate(n, "scores");
    check(cuda::score(static_cast<const float*>(logits.data()), logits.cols(), static_cast<const int64_t*>(d_rows.get()),
                static_cast<const int32_t*>(d_targets.get()), static_cast<int64_t>(n),
                static_cast<double*>(d_logprob.get()), static_cast<uint8_t*>(d_argmax.get()), ctx_->stream), "score kernel");
    std::vector<double> logprob(n);
    std::vector<uint8_t> argmax(n);
    check(cudaMemcpyAsync(logprob.data(), d_logprob.get(), n * sizeof(double), cudaMemcpyDeviceToHost, ctx_->stream),
          "cudaMemcpyAsync (scores)");
    check(cudaMemcpyAsync(argmax.data(), d_argmax.get(), n, cudaMemcpyDeviceToHost, ctx_->stream),
          "cudaMemcpyAsync (scores)");
    scope.reset();
    synchronize();
    for (size_t i = 0; i < n; ++i) out[i] = {logprob[i], argmax[i] != 0};
    return out;
  }

  std::vector<RowComparison> compare_rows(const Buffer& logits, std::span<const int64_t> rows,
                                          std::span<const TokenId> targets, const float* base,
                                          float* log_probs) override {
    std::optional<Scope> scope(std::in_place, profile_.get(), "compare_rows");
    RS_ASSERT(logits.type() == ComputeType::f32 && rows.size() == targets.size());
    const auto n = static_cast<int64_t>(rows.size());
    const int64_t n_vocab = logits.cols();
    std::vector<RowComparison> out(static_cast<size_t>(n));
    if (n == 0) return out;
    // Rows a chunk: the base and log-probability rows that travel stay within 256 MiB each.
    const int64_t chunk = std::max<int64_t>(1, (int64_t{256} << 20) / (n_vocab * 4));
    const size_t max_rows = static_cast<size_t>(std::min(chunk, n));
    std::shared_ptr<void> d_base, d_out;
    if (base != nullptr) d_base = allocate(max_rows * static_cast<size_t>(n_vocab) * 4, "base log-probabilities");
    if (log_probs != nullptr) d_out = allocate(max_rows * static_cast<size_t>(n_vocab) * 4, "log-probabilities");
    auto d_kl = allocate(static_cast<size_t>(n) * sizeof(double), "row comparisons");
    auto d_logprob = allocate(static_cast<size_t>(n) * sizeof(double), "row comparisons");
    auto d_argmax = allocate(static_cast<size_t>(n) * sizeof(int32_t), "row comparisons");
    auto d_rows = upload(rows.data(), rows.size_bytes(), "compared rows");
    auto d_targets = upload(targets.data(), targets.size_bytes(), "compared targets");
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t m = std::min(chunk, n - r0);
      const size_t bytes = static_cast<size_t>(m * n_vocab) * 4;
      if (base != nullptr) {
        check(cudaMemcpyAsync(d_base.get(), base + r0 * n_vocab, bytes, cudaMemcpyHostToDevice, ctx_->stream),
              "cudaMemcpyAsync (base log-probabilities)");
      }
      check(cuda::compare_rows(static_cast<const float*>(logits.data()), n_vocab,
                               static_cast<const int64_t*>(d_rows.get()) + r0, static_cast<const int32_t*>(d_targets.get()) + r0,
                               m, static_cast<const float*>(d_base.get()), static_cast<float*>(d_out.get()),
                               static_cast<double*>(d_kl.get()) + r0, static_cast<double*>(d_logprob.get()) + r0,
                               static_cast<int32_t*>(d_argmax.get()) + r0, ctx_->stream),
            "compare_rows kernel");
      if (log_probs != nullptr) {
        check(cudaMemcpyAsync(log_probs + r0 * n_vocab, d_out.get(), bytes, cudaMemcpyDeviceToHost, ctx_->stream),
              "cudaMemcpyAsync (log-probabilities)");
      }
      // The host side of the next chunk's copies is pageable: the stream orders them.
    }
    std::vector<double> kl(static_cast<size_t>(n)), logprob(static_cast<size_t>(n));
    std::vector<int32_t> argmax(static_cast<size_t>(n));
    check(cudaMemcpyAsync(kl.data(), d_kl.get(), kl.size() * sizeof(double), cudaMemcpyDeviceToHost, ctx_->stream), "cudaMemcpyAsync");
    check(cudaMemcpyAsync(logprob.data(), d_logprob.get(), logprob.size() * sizeof(double), cudaMemcpyDeviceToHost, ctx_->stream),
          "cudaMemcpyAsync");
    check(cudaMemcpyAsync(argmax.data(), d_argmax.get(), argmax.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, ctx_->stream),
          "cudaMemcpyAsync");
    scope.reset();
    synchronize();
    for (size_t i = 0; i < out.size(); ++i) out[i] = {kl[i], logprob[i], argmax[i]};
    return out;
  }

  // X^T X by DSYRK in float64 over the rows widened to float64 a chunk at a time.
  class Gram final : public GramAccumulator {
   public:
    Gram(CudaBackend& be, int64_t width) : be_(be) {
      width_ = width;
      const auto w = static_cast<size_t>(width);
      gram_ = be.allocate(w * w * sizeof(double), fmt::format("a [{} x {}] float64 Gram matrix", width, width));
      abs_sum_ = be.allocate(w * sizeof(double), "column sums");
      check(cudaMemsetAsync(gram_.get(), 0, w * w * sizeof(double), be.ctx_->stream), "cudaMemsetAsync");
      check(cudaMemsetAsync(abs_sum_.get(), 0, w * sizeof(double), be.ctx_->stream), "cudaMemsetAsync");
    }
    void add(const Buffer& x) override {
      const Scope scope(be_.profile_.get(), "gram");
      RS_ASSERT(x.cols() == width_);
      check(cuda::add_abs_column_sums(x.data(), x.type(), x.rows(), width_, static_cast<double*>(abs_sum_.get()),
                                      be_.ctx_->stream),
            "abs_column_sums kernel");
      const int64_t chunk = std::max<int64_t>(1, (int64_t{256} << 20) / (width_ * 8));
      auto wide = be_.allocate(static_cast<size_t>(std::min(chunk, x.rows()) * width_) * sizeof(double), "float64 activations");
      const double one = 1.0;
      for (int64_t r0 = 0; r0 < x.rows(); r0 += chunk) {
        const int64_t m = std::min(chunk, x.rows() - r0);
        const auto* src = static_cast<const std::byte*>(x.data()) + static_cast<size_t>(r0 * width_) * element_size(x.type());
        check(cuda::widen_to_double(src, x.type(), m * width_, static_cast<double*>(wide.get()), be_.ctx_->stream),
              "widen kernel");
        // Row-major X [m x width] is the column-major X^T [width x m]: C += X^T X = A A^T.
        check(cublasDsyrk(be_.ctx_->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, static_cast<int>(width_), static_cast<int>(m),
                          &one, static_cast<const double*>(wide.get()), static_cast<int>(width_), &one,
                          static_cast<double*>(gram_.get()), static_cast<int>(width_)),
              "DSYRK (calibration statistics)");
      }
      rows_ += x.rows();
    }
    void read(double* abs_sum, double* gram) override {
      const auto w = static_cast<size_t>(width_);
      check(cudaMemcpyAsync(abs_sum, abs_sum_.get(), w * sizeof(double), cudaMemcpyDeviceToHost, be_.ctx_->stream), "cudaMemcpyAsync");
      check(cudaMemcpyAsync(gram, gram_.get(), w * w * sizeof(double), cudaMemcpyDeviceToHost, be_.ctx_->stream), "cudaMemcpyAsync");
      be_.synchronize();
    }

   private:
    CudaBackend& be_;
    std::shared_ptr<void> gram_, abs_sum_;
  };

  std::unique_ptr<GramAccumulator> gram_accumulator(int64_t width) override { return std::make_unique<Gram>(*this, width); }

  int64_t free_memory() const override {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    // Blocks freed into the stream-ordered pool are free to us but not to the driver.
    cudaMemPool_t pool = nullptr;
    uint64_t reserved = 0, used = 0;
    if (cudaDeviceGetDefaultMemPool(&pool, ctx_->index) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved) == cudaSuccess &&
        cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used) == cudaSuccess && reserved > used) {
      free_bytes += static_cast<size_t>(reserved - used);
    }
    cudaGetLastError();
    const size_t capped = ctx_->limit > ctx_->in_use ? ctx_->limit - ctx_->in_use : 0;
    return static_cast<int64_t>(std::min(free_bytes, capped));
  }

  void synchronize() override {
    check(cudaStreamSynchronize(ctx_->stream), "cudaStreamSynchronize");
    if (profile_) profile_->resolve();
  }

  void trim() override {
    purge_expired();
    transient_.clear();
    check(cudaStreamSynchronize(ctx_->stream), "cudaStreamSynchronize");
    cudaMemPool_t pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&pool, ctx_->index) == cudaSuccess) cudaMemPoolTrimTo(pool, 0);
  }

 private:
  // Weights of models that are gone (a previous configuration's factors) free their memory.
  void purge_expired() {
    for (auto it = resident_.begin(); it != resident_.end();) {
      it = it->second.owner.expired() ? resident_.erase(it) : std::next(it);
    }
  }

  // Brackets one operation for the profile (no-op without RANKSCOPE_CUDA_PROFILE).
  struct Scope {
    Profile* profile;
    Scope(Profile* p, const char* name) : profile(p) {
      if (profile != nullptr) profile->begin(name);
    }
    ~Scope() {
      if (profile != nullptr) profile->end();
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
  };

  struct Resident {
    std::weak_ptr<const void> owner;
    std::shared_ptr<void> mem;
  };

  // Stream-ordered device memory, freed on the stream when the last reference goes. Out of
  // memory is an Error naming what did not fit.
  std::shared_ptr<void> allocate(size_t bytes, const std::string& what) {
    bytes = std::max<size_t>(bytes, 1);
    if (ctx_->in_use + bytes > ctx_->limit) {
      fail("out of GPU memory on {}: {} needs {:.1f} MiB, {:.1f} MiB of the {:.1f} MiB allowed "
           "(RANKSCOPE_GPU_MEMORY_LIMIT_MIB) are in use", name_, what, mib(bytes), mib(ctx_->in_use), mib(ctx_->limit));
    }
    void* p = nullptr;
    cudaError_t e = cudaMallocAsync(&p, bytes, ctx_->stream);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      // Expired weights may still hold memory: drop them and try once more.
      trim();
      e = cudaMallocAsync(&p, bytes, ctx_->stream);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      fail("out of GPU memory on {}: {} needs {:.1f} MiB, {:.1f} MiB of {:.1f} MiB free ({})", name_, what, mib(bytes),
           mib(free_bytes), mib(total_bytes), cudaGetErrorString(e));
    }
    ctx_->in_use += bytes;
    auto ctx = ctx_;
    return std::shared_ptr<void>(p, [ctx, bytes](void* q) {
      cudaFreeAsync(q, ctx->stream);
      ctx->in_use -= bytes;
    });
  }

  std::shared_ptr<void> upload(const void* host, size_t bytes, const char* what) {
    auto mem = allocate(bytes, what);
    if (bytes == 0) return mem;
    const void* src = host;
    if (pinned_ != nullptr && bytes <= kPinnedBytes / 4) {
      if (pinned_head_ + bytes > kPinnedBytes) {
        synchronize();  // every copy out of the ring has completed
        pinned_head_ = 0;
      }
      std::memcpy(pinned_ + pinned_head_, host, bytes);
      src = pinned_ + pinned_head_;
      pinned_head_ += (bytes + 255) / 256 * 256;
    }
    check(cudaMemcpyAsync(mem.get(), src, bytes, cudaMemcpyHostToDevice, ctx_->stream), "cudaMemcpyAsync (upload)");
    return mem;
  }

  // The device copy of a weight tensor in `type`, uploaded on first use and kept while the
  // tensor's storage lives.
  const void* resident(const Tensor& t, ComputeType type) {
    RS_ASSERT(!t.empty());
    const auto key = ResidentKey(t.data, t.numel(), type);
    if (auto it = resident_.find(key); it != resident_.end()) {
      if (!it->second.owner.expired()) return it->second.mem.get();
      resident_.erase(it);
    }
    purge_expired();
    const auto numel = static_cast<size_t>(t.numel());
    auto mem = allocate(numel * element_size(type), fmt::format("a {} weight {}", compute_type_name(type), shape_string(t.shape)));
    if (type == ComputeType::f32) {
      check(cudaMemcpyAsync(mem.get(), t.data, numel * 4, cudaMemcpyHostToDevice, ctx_->stream), "cudaMemcpyAsync (weights)");
    } else {
      // Through an fp32 staging buffer, converted on the device, a chunk at a time.
      constexpr size_t kChunk = size_t{16} << 20;  // elements
      auto staging = allocate(std::min(numel, kChunk) * 4, "a weight staging buffer");
      for (size_t i = 0; i < numel; i += kChunk) {
        const size_t n = std::min(kChunk, numel - i);
        check(cudaMemcpyAsync(staging.get(), t.data + i, n * 4, cudaMemcpyHostToDevice, ctx_->stream),
              "cudaMemcpyAsync (weights)");
        check(cuda::convert(staging.get(), ComputeType::f32, static_cast<std::byte*>(mem.get()) + i * element_size(type), type,
                      static_cast<int64_t>(n), ctx_->stream), "convert kernel");
      }
    }
    const void* data = mem.get();
    if (t.owner) {
      resident_[key] = Resident{t.owner, std::move(mem)};
    } else {
      // Storage of unknown lifetime: used for this operation only.
      transient_.push_back(std::move(mem));
      if (transient_.size() > kMaxTransient) transient_.erase(transient_.begin());
    }
    return data;
  }

  const float* f32(const Tensor& t) { return static_cast<const float*>(resident(t, ComputeType::f32)); }

  // y[n x m] (+)= x[n x k] W^T, W row-major [m x k]: column-major Y^T = W X^T.
  void gemm_xwt(const void* x, int64_t n, int64_t k, const void* w, int64_t m, void* y, ComputeType y_type, float beta) {
    const float alpha = 1.0f;
    check(cublasGemmEx(ctx_->blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
                       static_cast<int>(k), &alpha, w, cuda_type(type_), static_cast<int>(k), x, cuda_type(type_),
                       static_cast<int>(k), &beta, y, cuda_type(y_type), static_cast<int>(m), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "GEMM x W^T");
  }

  // y[n x m] (+)= x[n x k] B, B row-major [k x m]: column-major Y^T = B^T X^T.
  void gemm_xb(const void* x, int64_t n, int64_t k, const void* b, int64_t m, void* y, ComputeType y_type, float beta) {
    const float alpha = 1.0f;
    check(cublasGemmEx(ctx_->blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(m), static_cast<int>(n),
                       static_cast<int>(k), &alpha, b, cuda_type(type_), static_cast<int>(m), x, cuda_type(type_),
                       static_cast<int>(k), &beta, y, cuda_type(y_type), static_cast<int>(m), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "GEMM x B");
  }

  // A weight is its data, its size and the type it is held in: views of one tensor's rows (the
  // parts of Phi-3's fused qkv_proj) may start at the same address with different sizes.
  using ResidentKey = std::tuple<const float*, int64_t, ComputeType>;
  struct KeyHash {
    size_t operator()(const ResidentKey& k) const {
      return std::hash<const void*>()(std::get<0>(k)) ^ (std::hash<int64_t>()(std::get<1>(k)) << 3) ^
             (static_cast<size_t>(std::get<2>(k)) << 1);
    }
  };
  static constexpr size_t kMaxTransient = 64;

  ComputeType type_;
  std::string name_;
  std::shared_ptr<Context> ctx_;
  std::unique_ptr<Profile> profile_;
  std::unordered_map<ResidentKey, Resident, KeyHash> resident_;
  std::vector<std::shared_ptr<void>> transient_;
  std::vector<int64_t> positions_host_;
  std::vector<float> inv_freq_host_;
  std::shared_ptr<void> rope_table_;
  // Pinned staging for small uploads, so that they do not wait for the stream: a ring whose
  // start is reused only after the stream has drained.
  std::byte* pinned_ = nullptr;
  size_t pinned_head_ = 0;
  static constexpr size_t kPinnedBytes = size_t{32} << 20;
};

}  // namespace

int cuda_visible_devices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::shared_ptr<Backend> make_cuda_backend(int index, ComputeType type) { return std::make_shared<CudaBackend>(index, type); }

}  // namespace rankscope
