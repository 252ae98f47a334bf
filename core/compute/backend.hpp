// The operations every forward pass is written against, and the devices that implement them.
//
// A Backend owns the device memory of activations (Buffer) and keeps the weights it has been
// handed resident: the first op that uses a weight Tensor uploads it (in the backend's compute
// type) and later ops reuse that copy for as long as the Tensor's storage lives. A model that
// differs from the base in a few factored matrices therefore only uploads those matrices.
//
// Implementations: CpuBackend (Eigen + OpenBLAS, fp32: the reference) and, in builds with
// -DRANKSCOPE_CUDA=ON, CudaBackend (cuBLAS products, fused kernels, fp32/bf16/fp16). The CUDA
// backend's device memory can be capped with RANKSCOPE_GPU_MEMORY_LIMIT_MIB (a GPU shared with
// other jobs); going over the cap is the same clear error as running out of memory.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/base/tensor.hpp"
#include "core/compute/linear.hpp"
#include "core/compute/op_params.hpp"
#include "core/compute/ops.hpp"

namespace rankscope {

std::string compute_type_name(ComputeType t);  // "fp32", "bf16", "fp16"
// Parses fp32|float32|bf16|bfloat16|fp16|float16; throws Error otherwise.
ComputeType parse_compute_type(const std::string& text);

// Which buffer type an op wants: the residual stream and logits stay fp32, the inputs of matrix
// products are in the compute type.
enum class Precision { f32, compute };

// A [rows x cols] row-major matrix of activations on a backend's device. Copies share storage.
class Buffer {
 public:
  Buffer() = default;
  Buffer(int64_t rows, int64_t cols, ComputeType type, std::shared_ptr<void> storage, void* data)
      : rows_(rows), cols_(cols), type_(type), storage_(std::move(storage)), data_(data) {}
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  ComputeType type() const { return type_; }
  bool empty() const { return data_ == nullptr; }
  void* data() const { return data_; }
  const std::shared_ptr<void>& storage() const { return storage_; }

 private:
  int64_t rows_ = 0, cols_ = 0;
  ComputeType type_ = ComputeType::f32;
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
};

// Keys and values of the past tokens of one sequence, per layer, on the backend that made them.
struct KvCache {
  std::vector<Buffer> k;  // per layer [capacity x n_embd_kv]
  std::vector<Buffer> v;
  int64_t n_past = 0;
  int64_t capacity_hint = 0;  // rows to allocate at first use (the positions it will hold), 0 = as needed
};

// Shapes of one attention call.
struct AttentionShape {
  int64_t n_head = 0;
  int64_t n_head_kv = 0;  // grouped-query attention: n_head / n_head_kv query heads share a kv head
  int64_t n_embd_head = 0;
  bool causal = true;
  int64_t window = 0;     // causal sliding window: a query at position p sees keys p - window < j <= p (0 = all)
};

// The sequences of a batch, concatenated along the rows of every activation buffer.
struct SequenceLayout {
  std::vector<int64_t> offset;     // [n_seq + 1] first row of each sequence
  std::vector<int64_t> positions;  // [n_rows] position of each row within its sequence (RoPE)
  int64_t n_seq() const { return static_cast<int64_t>(offset.size()) - 1; }
  int64_t n_rows() const { return offset.empty() ? 0 : offset.back(); }
  int64_t length(int64_t s) const { return offset[s + 1] - offset[s]; }
};

// log softmax(row)[target] in float64 and whether target is the row's first maximum; NaN when
// the row holds NaN/Inf.
struct TokenScore {
  double logprob = 0.0;
  bool is_argmax = false;
};

// One logit row judged against a reference distribution (fidelity), from float64 sums.
struct RowComparison {
  double kl = 0.0;       // KL(base || softmax(row)); 0 without a base
  double logprob = 0.0;  // log softmax(row)[target]
  int32_t argmax = 0;    // the row's first maximum
};

// Rows of activation statistics kept for a calibration: X^T X (lower triangle) and sum |x_j| of
// every row added, in float64 on the backend's device.
class GramAccumulator {
 public:
  virtual ~GramAccumulator() = default;
  // Adds the rows of x [rows x width].
  virtual void add(const Buffer& x) = 0;
  // abs_sum [width]; gram [width x width] column-major with its lower triangle filled (the upper
  // one is left as it is).
  virtual void read(double* abs_sum, double* gram) = 0;
  int64_t width() const { return width_; }
  int64_t rows() const { return rows_; }

 protected:
  int64_t width_ = 0, rows_ = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda:0 (NVIDIA H200)".
  virtual std::string device_name() const = 0;
  // "cpu", "cuda": what a result's protocol records with the dtype.
  virtual std::string device_kind() const = 0;
  virtual ComputeType compute_type() const = 0;

  // An uninitialised buffer.
  virtual Buffer buffer(int64_t rows, int64_t cols, Precision precision) = 0;
  // Grows a buffer to at least `rows` rows, keeping its content (KV caches).
  virtual void grow_rows(Buffer& b, int64_t rows) = 0;
  // A buffer holding m (converted to the compute type when precision says so).
  virtual Buffer upload(const Mat& m, Precision precision) = 0;
  virtual Mat download(const Buffer& b) = 0;
  // Rows [row0, row0 + n) of b.
  virtual Mat download_rows(const Buffer& b, int64_t row0, int64_t n) = 0;
  // The buffer as a host matrix, for hooks: the CPU's own storage, or a copy in `scratch`.
  virtual const Mat& host_view(const Buffer& b, Mat& scratch) = 0;

  // x[i] = table[ids[i]] (+ x[i] when accumulate); table [n x cols] of weights.
  virtual void embed(const Tensor& table, std::span<const TokenId> ids, Buffer& x, bool accumulate) = 0;
  // out = x / sqrt(mean(x^2) + eps) * weight, per row.
  virtual void rms_norm(const Buffer& x, const Tensor& weight, double eps, Buffer& out) = 0;
  // x = (x - mean) / sqrt(var + eps) * weight + bias per row, in place; `copy` (optional, may be
  // empty) receives the result in its own type too.
  virtual void layer_norm(Buffer& x, const Tensor& weight, const Tensor& bias, double eps, Buffer* copy) = 0;
  // y = x W^T + b (+ y when accumulate). Factored weights run as two (svd) or three (tucker)
  // products, never multiplied back.
  virtual void linear(const Linear& w, const Buffer& x, Buffer& y, bool accumulate) = 0;
  // RMSNorm of each of the n_heads heads of every row of x, in place; weight [head_dim].
  virtual void head_rms_norm(Buffer& x, int64_t n_heads, const Tensor& weight, double eps) = 0;
  // Rotary position embedding of every head of every row, by the row's position.
  virtual void rope(Buffer& x, int64_t n_heads, const Rope& rope, const SequenceLayout& layout) = 0;
  // ctx = softmax(q k^T / sqrt(d) [+ mask]) v per sequence and head. With caches (one per sequence)
  // k and v of the batch are appended at each cache's n_past for `layer` and attention runs over
  // the cached keys too; masks (optional, per sequence) mark padding keys with 0.
  virtual void attention(const AttentionShape& shape, const Buffer& q, const Buffer& k, const Buffer& v,
                         const SequenceLayout& layout, std::span<KvCache> caches, int64_t layer,
                         std::span<const std::vector<uint8_t>> masks, Buffer& ctx) = 0;
  // x = act(x).
  virtual void activation(Buffer& x, Activation act) = 0;
  // gate = act(gate) * up.
  virtual void gated_activation(Buffer& gate, const Buffer& up, Activation act) = 0;
  // x += y.
  virtual void add(Buffer& x, const Buffer& y) = 0;
  // out[i] = x[rows[i]].
  virtual void gather_rows(const Buffer& x, std::span<const int64_t> rows, Buffer& out) = 0;
  // out = the columns col0 .. col0 + out.cols() - 1 of x (same type): the parts of a fused product.
  virtual void copy_columns(const Buffer& x, int64_t col0, Buffer& out) = 0;
  // x = tanh(x).
  virtual void tanh(Buffer& x) = 0;
  // Scores row rows[i] of logits against targets[i]; only the scores leave the device.
  virtual std::vector<TokenScore> score(const Buffer& logits, std::span<const int64_t> rows,
                                        std::span<const TokenId> targets) = 0;
  // For row rows[i] of logits: its log-softmax in float64, written rounded to float32 into
  // `log_probs` (host [n x n_vocab], optional); the log-probability of targets[i]; its argmax; and
  // with `base` (host float32 log-probabilities [n x n_vocab]) KL(base_i || row), the row's
  // log-probabilities rounded to float32 like base's so that equal models give exactly 0. NaN
  // propagates. Only these results (and log_probs when asked) leave the device.
  virtual std::vector<RowComparison> compare_rows(const Buffer& logits, std::span<const int64_t> rows,
                                                  std::span<const TokenId> targets, const float* base,
                                                  float* log_probs) = 0;
  // A zeroed accumulator of activation statistics of `width` channels on this device.
  virtual std::unique_ptr<GramAccumulator> gram_accumulator(int64_t width) = 0;
  // Bytes of device memory free for new allocations (host backends: a large number).
  virtual int64_t free_memory() const { return int64_t{1} << 62; }
  // Frees cached weights whose host storage is gone and scratch memory (between evaluations).
  virtual void trim() {}
  // Waits for every queued operation (timing).
  virtual void synchronize() {}

  // Token rows the forward passes have run through this backend (a statistic for benchmarks).
  std::atomic<int64_t> rows_forwarded{0};
};

// The process-wide CPU backend.
Backend& cpu_backend();

// Where to run: --device cpu|cuda|cuda:N|auto.
struct Device {
  enum class Kind { cpu, cuda, automatic };
  Kind kind = Kind::automatic;
  int index = 0;
  std::string text() const;  // as the user writes it
};
// Throws Error for anything but cpu, cuda, cuda:N, auto.
Device parse_device(const std::string& text);
// Whether this build has the CUDA backend, and how many GPUs it sees (0 without CUDA).
bool cuda_built();
int cuda_device_count();
// The backend for `device`: auto takes GPU 0 when one is visible. `type` is the compute type
// on a GPU (the CPU computes in fp32). Throws Error for cuda on a build without CUDA or with
// no GPU visible, naming which.
std::shared_ptr<Backend> make_backend(const Device& device, ComputeType type);

}  // namespace rankscope
