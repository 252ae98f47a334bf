// The CPU implementation of Backend (fp32, Eigen + OpenBLAS): the reference the others match.
#pragma once

#include "core/compute/backend.hpp"

namespace rankscope {

class CpuBackend final : public Backend {
 public:
  std::string device_name() const override { return "cpu"; }
  std::string device_kind() const override { return "cpu"; }
  ComputeType compute_type() const override { return ComputeType::f32; }

  Buffer buffer(int64_t rows, int64_t cols, Precision precision) override;
  void grow_rows(Buffer& b, int64_t rows) override;
  Buffer upload(const Mat& m, Precision precision) override;
  Mat download(const Buffer& b) override;
  Mat download_rows(const Buffer& b, int64_t row0, int64_t n) override;
  const Mat& host_view(const Buffer& b, Mat& scratch) override;

  void embed(const Tensor& table, std::span<const TokenId> ids, Buffer& x, bool accumulate) override;
  void rms_norm(const Buffer& x, const Tensor& weight, double eps, Buffer& out) override;
  void layer_norm(Buffer& x, const Tensor& weight, const Tensor& bias, double eps, Buffer* copy) override;
  void linear(const Linear& w, const Buffer& x, Buffer& y, bool accumulate) override;
  void head_rms_norm(Buffer& x, int64_t n_heads, const Tensor& weight, double eps) override;
  void rope(Buffer& x, int64_t n_heads, const Rope& rope, const SequenceLayout& layout) override;
  void attention(const AttentionShape& shape, const Buffer& q, const Buffer& k, const Buffer& v,
                 const SequenceLayout& layout, std::span<KvCache> caches, int64_t layer,
                 std::span<const std::vector<uint8_t>> masks, Buffer& ctx) override;
  void activation(Buffer& x, Activation act) override;
  void gated_activation(Buffer& gate, const Buffer& up, Activation act) override;
  void add(Buffer& x, const Buffer& y) override;
  void gather_rows(const Buffer& x, std::span<const int64_t> rows, Buffer& out) override;
  void copy_columns(const Buffer& x, int64_t col0, Buffer& out) override;
  void tanh(Buffer& x) override;
  std::vector<TokenScore> score(const Buffer& logits, std::span<const int64_t> rows,
                                std::span<const TokenId> targets) override;
  std::vector<RowComparison> compare_rows(const Buffer& logits, std::span<const int64_t> rows,
                                          std::span<const TokenId> targets, const float* base,
                                          float* log_probs) override;
  std::unique_ptr<GramAccumulator> gram_accumulator(int64_t width) override;
};

// log softmax(row)[target] in float64 (the reference every backend's score() matches).
TokenScore score_row(const float* row, int64_t n_vocab, TokenId target);

}  // namespace rankscope
