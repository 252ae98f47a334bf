// The CUDA backend against the CPU reference: fp32 logits of the golden sequences (Llama, BERT),
// KV-cache continuation, factored linears, on-device log-softmax scoring, bf16 task metrics,
// sweeps and out-of-memory. Cases that need a GPU say SKIPPED where none is visible (ctest
// reports them skipped); scripts/test-gpu.sh builds with CUDA and runs them on one.
#include <cmath>
#include <random>
#include <tuple>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/compute/backend.hpp"
#include "core/compute/cpu/cpu_backend.hpp"
#include "core/decompose/decompose.hpp"
#include "core/decompose/calibration.hpp"
#include "core/decompose/linalg.hpp"
#include "core/io/npy.hpp"
#include "core/models/bert.hpp"
#include "core/models/llama.hpp"
#include "core/space/config_string.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/fidelity.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

#define RS_REQUIRE_GPU()                                                                           \
  do {                                                                                             \
    if (cuda_device_count() == 0) {                                                                \
      WARN("SKIPPED: no CUDA GPU visible" << (cuda_built() ? "" : " (built without CUDA)"));       \
      return;                                                                                      \
    }                                                                                              \
  } while (0)

// fp32 on the GPU runs the same arithmetic in another order (cuBLAS kernels, a one-pass online
// softmax): the bound, 1e-4 absolute on logits of magnitude ~10.
constexpr float kFp32Tolerance = 1e-4f;

std::shared_ptr<Backend> gpu(ComputeType type) { return make_backend(parse_device("cuda"), type); }

const char* const kGoldenNames[] = {"once", "slice64", "slice256"};

std::vector<std::vector<TokenId>> golden_batch() {
  const auto seqs = test::read_json(test::shared_data("stories260K-hf/golden") / "sequences.json");
  std::vector<std::vector<TokenId>> batch;
  for (const char* name : kGoldenNames) batch.push_back(seqs[name]["ids"].get<std::vector<TokenId>>());
  return batch;
}

float max_abs_diff(const Mat& a, const Mat& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return (a - b).cwiseAbs().maxCoeff();
}

// name -> value of an `eval --json` run.
std::map<std::string, double> metrics_of(const std::string& json_text) {
  std::map<std::string, double> out;
  const auto j = nlohmann::json::parse(json_text);
  for (const auto& r : j["results"]) out[r["name"].get<std::string>()] = r["value"].is_number() ? r["value"].get<double>() : NAN;
  return out;
}

}  // namespace

TEST_CASE("device option: cuda without a visible GPU is a one-line error, auto falls back to the CPU", "[gpu][cli]") {
  const auto model = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(model);
  CHECK_THROWS_WITH(parse_device("gpu"), Contains("unknown device 'gpu'"));
  CHECK_THROWS_WITH(parse_device("cuda:x"), Contains("unknown device"));
  CHECK(parse_device("cuda:3").index == 3);
  if (cuda_device_count() > 0) {
    // With a GPU, auto takes it and cuda:N beyond the visible ones is the error.
    const auto a = test::run_cli("eval " + model.string() + " --tasks tinystories --limit 2 --json");
    REQUIRE(a.exit_code == 0);
    CHECK(nlohmann::json::parse(a.out)["results"][0]["protocol"]["device"] == "cuda");
    const auto r = test::run_cli("eval " + model.string() + " --tasks tinystories --limit 2 --device cuda:99");
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Contains("--device cuda:99") && Contains("GPU(s) visible"));
    return;
  }
  const auto r = test::run_cli("eval " + model.string() + " --tasks tinystories --limit 2 --device cuda");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Contains("--device cuda") &&
                        Contains(cuda_built() ? "no CUDA GPU is visible" : "built without CUDA"));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  const auto a = test::run_cli("eval " + model.string() + " --tasks tinystories --limit 2 --json");
  REQUIRE(a.exit_code == 0);
  const auto j = nlohmann::json::parse(a.out);
  CHECK(j["results"][0]["protocol"]["device"] == "cpu");
  CHECK(j["results"][0]["protocol"]["dtype"] == "fp32");
  // Experiment files take the same key.
  const auto dir = test::scratch_dir("device-experiment");
  test::write_text(dir / "x.ini", "study = s\nmodel = " + model.string() + "\ntasks = tinystories\nlimit = 2\n"
                   "objectives = tinystories.ppl:min\nstrategy = list\nconfig = L0:q=4\ndevice = cuda\n");
  const auto x = test::run_cli("sweep " + (dir / "x.ini").string() + " --db " + (dir / "x.db").string() +
                               " --data-dir " + test::shared_data("").string());
  CHECK(x.exit_code == 1);
  CHECK_THAT(x.err, Contains("--device cuda"));
  const auto y = test::run_cli("sweep " + (dir / "x.ini").string() + " --db " + (dir / "x.db").string() +
                               " --data-dir " + test::shared_data("").string() + " --device cpu");
  CHECK(y.exit_code == 0);
}

TEST_CASE("GPU fp32: stories260K-hf logits of the golden sequences equal the CPU's and the golden ones", "[gpu][llama]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  const auto batch = golden_batch();
  const Mat cpu = llama_forward(model, batch);
  model.backend = gpu(ComputeType::f32);
  const Mat cuda = llama_forward(model, batch);
  CHECK(max_abs_diff(cuda, cpu) <= kFp32Tolerance);
  // Each golden sequence alone against transformers' logits.
  const auto gdir = test::shared_data("stories260K-hf/golden");
  const auto seqs = test::read_json(gdir / "sequences.json");
  for (const char* name : kGoldenNames) {
    const auto want = read_npy(gdir / seqs[name]["logits_file"].get<std::string>());
    const Mat got = llama_forward(model, std::vector<std::vector<TokenId>>{seqs[name]["ids"].get<std::vector<TokenId>>()});
    INFO(name);
    CHECK(max_abs_diff(got, ConstMatMap(want.values.data(), want.shape[0], want.shape[1])) <= kFp32Tolerance);
  }
  // Only the last rows.
  const Mat last = llama_forward(model, batch, {}, {.last_logits_only = true});
  CHECK(max_abs_diff(last.row(2), cpu.row(cpu.rows() - 1)) <= kFp32Tolerance);
}

TEST_CASE("GPU: Llama 3, Mistral (sliding window), Qwen2 (biases), Qwen3 (q/k norm) and Phi-3 (fused, partial rotary) equal "
          "transformers' logits and the CPU's",
          "[gpu][llama][families]") {
  RS_REQUIRE_GPU();
  const auto refs = std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs";
  for (const char* name : {"llama3", "mistral", "qwen2", "qwen3", "phi3"}) {
    INFO(name);
    auto model = load_model(refs / name);
    const auto inputs = test::read_json(refs / name / "inputs.json")["sequences"];
    std::vector<std::vector<TokenId>> batch;
    for (const auto& seq : inputs) batch.push_back(seq.get<std::vector<TokenId>>());
    const Mat cpu = llama_forward(model, batch);  // both sequences in one batch
    for (auto type : {ComputeType::f32, ComputeType::bf16}) {
      model.backend = gpu(type);
      const Mat cuda = llama_forward(model, batch);
      // bf16: inputs of every product rounded to 8 bits of mantissa, logits of magnitude ~3.
      CHECK(max_abs_diff(cuda, cpu) <= (type == ComputeType::f32 ? kFp32Tolerance : 0.1f));
      if (type != ComputeType::f32) continue;
      int64_t row0 = 0;
      for (size_t k = 0; k < batch.size(); ++k) {
        const auto want = read_npy(refs / name / fmt::format("logits_{}.npy", k));
        const auto n = static_cast<int64_t>(batch[k].size());
        CHECK(max_abs_diff(cuda.middleRows(row0, n), ConstMatMap(want.values.data(), want.shape[0], want.shape[1])) <=
              kFp32Tolerance);
        row0 += n;
      }
      // Continuing a KV cache one token at a time through the window.
      std::vector<KvCache> cache(1);
      const auto& seq = batch.back();
      Mat stepped(static_cast<int64_t>(seq.size()), cpu.cols());
      for (size_t t = 0; t < seq.size(); ++t) {
        const Mat row = llama_forward(model, std::vector<std::vector<TokenId>>{{seq[t]}}, cache);
        stepped.row(static_cast<int64_t>(t)) = row.row(0);
      }
      CHECK(max_abs_diff(stepped, cpu.bottomRows(static_cast<int64_t>(seq.size()))) <= kFp32Tolerance);
    }
    model.backend = nullptr;
  }
}

TEST_CASE("GPU: Phi-3's fused cells decomposed as a whole (one product split by columns) equal the CPU's", "[gpu][llama][families]") {
  RS_REQUIRE_GPU();
  const auto refs = std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs";
  const auto base = load_model(refs / "phi3");
  FactorCache cache(test::scratch_dir("gpu_phi3_cache"));
  auto model = decompose_model(base, parse_config("L0:qkv=16@svd;L1:q,k=8;L*:gate_up=40%", base.config), cache);
  const auto inputs = test::read_json(refs / "phi3" / "inputs.json")["sequences"];
  std::vector<std::vector<TokenId>> batch;
  for (const auto& seq : inputs) batch.push_back(seq.get<std::vector<TokenId>>());
  const Mat cpu = llama_forward(model, batch);
  for (auto type : {ComputeType::f32, ComputeType::bf16}) {
    INFO(compute_type_name(type));
    model.backend = gpu(type);
    CHECK(max_abs_diff(llama_forward(model, batch), cpu) <= (type == ComputeType::f32 ? kFp32Tolerance : 0.1f));
  }
  // The dense base on the same device after it: the parts' views are not confused with anything.
  auto dense = base;
  dense.backend = model.backend;
  CHECK(max_abs_diff(llama_forward(dense, batch), llama_forward(base, batch)) <= 0.1f);
}

TEST_CASE("GPU fp32: continuing KV caches on the device equals reading the whole sequences", "[gpu][llama]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  model.backend = gpu(ComputeType::f32);
  const auto whole = golden_batch();
  // Split every sequence after its first 3 tokens (or 1): context, then the rest through the cache.
  std::vector<std::vector<TokenId>> head, tail;
  for (const auto& s : whole) {
    const size_t cut = s.size() > 3 ? 3 : 1;
    head.emplace_back(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(cut));
    if (s.size() > cut) tail.emplace_back(s.begin() + static_cast<std::ptrdiff_t>(cut), s.end());
  }
  REQUIRE(tail.size() == whole.size());
  std::vector<KvCache> caches(whole.size());
  const Mat a = llama_forward(model, head, caches);
  const Mat b = llama_forward(model, tail, caches);
  const Mat full = llama_forward(model, whole);
  int64_t row_a = 0, row_b = 0, row = 0;
  for (size_t s = 0; s < whole.size(); ++s) {
    const auto n_head = static_cast<int64_t>(head[s].size()), n_tail = static_cast<int64_t>(tail[s].size());
    CHECK(max_abs_diff(a.middleRows(row_a, n_head), full.middleRows(row, n_head)) <= kFp32Tolerance);
    CHECK(max_abs_diff(b.middleRows(row_b, n_tail), full.middleRows(row + n_head, n_tail)) <= kFp32Tolerance);
    row_a += n_head;
    row_b += n_tail;
    row += n_head + n_tail;
    CHECK(caches[s].n_past == n_head + n_tail);
  }
}

TEST_CASE("GPU fp32: svd and tucker factored models equal the CPU's (two and three products, never multiplied back)",
          "[gpu][llama][linear]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  auto base = load_model(dir);
  const auto scratch = test::scratch_dir("gpu-factored");
  FactorCache cache(scratch / "cache");
  const auto batch = golden_batch();
  for (const char* text : {"L*:all=50%@svd", "L0,2,4:mlp=8@tucker;L1:attn=4@tucker"}) {
    INFO(text);
    base.backend = nullptr;
    const Model cpu_model = decompose_model(base, parse_config(text, base.config), cache);
    const Mat cpu = llama_forward(cpu_model, batch);
    Model gpu_model = cpu_model;
    gpu_model.backend = gpu(ComputeType::f32);
    CHECK(max_abs_diff(llama_forward(gpu_model, batch), cpu) <= kFp32Tolerance);
  }
}

TEST_CASE("GPU fp32: bert-tiny-sst2 classifier logits equal the golden ones, padding keys masked", "[gpu][bert]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  model.backend = gpu(ComputeType::f32);
  const auto items = test::read_json(dir / "golden/dev_first32.json")["items"];
  std::vector<BertInput> batch;
  for (const auto& item : items) {
    batch.push_back({item["input_ids"].get<std::vector<TokenId>>(), item["token_type_ids"].get<std::vector<TokenId>>(), {}});
  }
  const auto out = bert_forward(model, batch);
  REQUIRE(out.logits.rows() == 32);
  for (size_t i = 0; i < items.size(); ++i) {
    const auto want = items[i]["logits"].get<std::vector<float>>();
    for (int j = 0; j < 2; ++j) CHECK(std::abs(out.logits(static_cast<int64_t>(i), j) - want[j]) <= kFp32Tolerance);
  }
  // The first sentence padded with 5 masked [PAD] keys gives the same logits.
  BertInput padded = batch[0];
  padded.attention_mask.assign(padded.ids.size(), 1);
  for (int i = 0; i < 5; ++i) {
    padded.ids.push_back(0);
    padded.type_ids.push_back(0);
    padded.attention_mask.push_back(0);
  }
  const auto p = bert_forward(model, std::span(&padded, 1));
  CHECK(max_abs_diff(p.logits, out.logits.topRows(1)) <= kFp32Tolerance);
}

namespace {

// Attention of a batch of sequences through `be`: without caches (all rows at once), or the first
// `split` rows of every sequence into fresh caches and the rest continuing them. Returns ctx.
Mat run_attention(Backend& be, const AttentionShape& shape, const std::vector<int64_t>& lengths, const Mat& q,
                  const Mat& k, const Mat& v, int64_t split, const std::vector<std::vector<uint8_t>>& masks) {
  auto layout_of = [](const std::vector<int64_t>& lens) {
    SequenceLayout l;
    l.offset.assign(1, 0);
    for (auto n : lens) l.offset.push_back(l.offset.back() + n);
    return l;
  };
  const int64_t dq = q.cols(), dkv = k.cols();
  if (split == 0) {
    const auto layout = layout_of(lengths);
    Buffer ctx = be.buffer(q.rows(), dq, Precision::compute);
    Buffer bq = be.upload(q, Precision::compute), bk = be.upload(k, Precision::compute), bv = be.upload(v, Precision::compute);
    be.attention(shape, bq, bk, bv, layout, {}, 0, masks, ctx);
    return be.download(ctx);
  }
  // Rows of each sequence before and after `split`.
  std::vector<int64_t> first, second;
  std::vector<int64_t> rows_first, rows_second;
  int64_t row = 0;
  for (auto n : lengths) {
    first.push_back(split);
    second.push_back(n - split);
    for (int64_t i = 0; i < n; ++i) (i < split ? rows_first : rows_second).push_back(row + i);
    row += n;
  }
  auto pick = [](const Mat& m, const std::vector<int64_t>& rows) {
    Mat out(static_cast<int64_t>(rows.size()), m.cols());
    for (size_t i = 0; i < rows.size(); ++i) out.row(static_cast<int64_t>(i)) = m.row(rows[i]);
    return out;
  };
  std::vector<KvCache> caches(lengths.size());
  for (size_t s = 0; s < lengths.size(); ++s) {
    caches[s].k = {be.buffer(lengths[s], dkv, Precision::compute)};
    caches[s].v = {be.buffer(lengths[s], dkv, Precision::compute)};
  }
  Mat out(q.rows(), dq);
  for (int part = 0; part < 2; ++part) {
    const auto& rows = part == 0 ? rows_first : rows_second;
    const auto layout = layout_of(part == 0 ? first : second);
    Buffer ctx = be.buffer(static_cast<int64_t>(rows.size()), dq, Precision::compute);
    Buffer bq = be.upload(pick(q, rows), Precision::compute), bk = be.upload(pick(k, rows), Precision::compute),
           bv = be.upload(pick(v, rows), Precision::compute);
    be.attention(shape, bq, bk, bv, layout, caches, 0, {}, ctx);
    const Mat got = be.download(ctx);
    for (size_t i = 0; i < rows.size(); ++i) out.row(rows[i]) = got.row(static_cast<int64_t>(i));
    for (size_t s = 0; s < lengths.size(); ++s) caches[s].n_past += (part == 0 ? first : second)[s];
  }
  return out;
}

}  // namespace

TEST_CASE("GPU attention kernels equal the CPU's: fp32 exactly to rounding, bf16 on tensor cores within bf16 rounding",
          "[gpu][attention]") {
  RS_REQUIRE_GPU();
  const std::vector<int64_t> lengths = {5, 70, 131, 64};
  const int64_t n_rows = 5 + 70 + 131 + 64;
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t d : {64, 128, 40}) {
    const AttentionShape shape{.n_head = 4, .n_head_kv = 2, .n_embd_head = d, .causal = true};
    Mat q(n_rows, 4 * d), k(n_rows, 2 * d), v(n_rows, 2 * d);
    for (Mat* m : {&q, &k, &v}) {
      for (int64_t i = 0; i < m->size(); ++i) m->data()[i] = normal(rng);
    }
    for (const ComputeType type : {ComputeType::f32, ComputeType::bf16}) {
      auto be = gpu(type);
      // The inputs rounded to the compute type, so that only the kernel's own error remains.
      Mat qr = be->download(be->upload(q, Precision::compute));
      Mat kr = be->download(be->upload(k, Precision::compute));
      Mat vr = be->download(be->upload(v, Precision::compute));
      // fp32: reassociation only; bf16: probabilities and outputs rounded to 8 bits (2^-9 relative
      // each) over outputs of magnitude <= max |v| ~ 4.
      const float tol = type == ComputeType::f32 ? 1e-5f : 0.05f;
      for (const int64_t split : {int64_t{0}, int64_t{3}}) {
        INFO("d " << d << " " << compute_type_name(type) << " split " << split);
        const Mat want = run_attention(cpu_backend(), shape, lengths, qr, kr, vr, split, {});
        const Mat got = run_attention(*be, shape, lengths, qr, kr, vr, split, {});
        CHECK(max_abs_diff(got, want) <= tol);
      }
      // Bidirectional with padding keys masked (BERT).
      AttentionShape bi = shape;
      bi.causal = false;
      std::vector<std::vector<uint8_t>> masks;
      for (auto n : lengths) {
        std::vector<uint8_t> mask(static_cast<size_t>(n), 1);
        for (int64_t i = n * 3 / 4; i < n; ++i) mask[static_cast<size_t>(i)] = 0;
        masks.push_back(mask);
      }
      INFO("bidirectional d " << d << " " << compute_type_name(type));
      CHECK(max_abs_diff(run_attention(*be, bi, lengths, qr, kr, vr, 0, masks),
                         run_attention(cpu_backend(), bi, lengths, qr, kr, vr, 0, masks)) <= tol);
    }
  }
}

TEST_CASE("GPU RMSNorm, RoPE and gated SiLU equal the CPU's at Llama shapes, vectorised and general kernels",
          "[gpu][ops]") {
  RS_REQUIRE_GPU();
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](int64_t rows, int64_t cols) {
    Mat m(rows, cols);
    for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
    return m;
  };
  // Element by element: fp32 differs by reassociation and a few-ulp exp only; bf16 rounds each
  // result to 8 significant bits (half an ulp: 2^-9 relative), the rest is fp32 arithmetic.
  auto check_close = [](const Mat& got, const Mat& want, ComputeType type) {
    REQUIRE(got.rows() == want.rows());
    REQUIRE(got.cols() == want.cols());
    const float rel = type == ComputeType::f32 ? 1e-5f : 1.0f / 256;
    int64_t bad = 0;
    for (int64_t i = 0; i < got.size(); ++i) {
      if (!(std::abs(got.data()[i] - want.data()[i]) <= rel * std::abs(want.data()[i]) + 1e-5f)) ++bad;
    }
    CHECK(bad == 0);
  };
  for (const ComputeType type : {ComputeType::f32, ComputeType::bf16}) {
    auto be = gpu(type);
    Backend& cpu = cpu_backend();
    auto rounded = [&](const Mat& m) { return be->download(be->upload(m, Precision::compute)); };
    // RMSNorm: 4 and 8 vectors a thread, and the general kernel (cols not a multiple of 4, and
    // beyond the vectorised width).
    for (const int64_t cols : {int64_t{4096}, int64_t{6144}, int64_t{4098}, int64_t{9000}}) {
      INFO("rms_norm cols " << cols << " " << compute_type_name(type));
      const Mat x = random(19, cols), w = random(1, cols);
      const Tensor weight = Tensor::owned({cols}, std::vector<float>(w.data(), w.data() + w.size()));
      Buffer out = be->buffer(19, cols, Precision::compute);
      be->rms_norm(be->upload(x, Precision::f32), weight, 1e-5, out);
      Buffer want = cpu.buffer(19, cols, Precision::compute);
      cpu.rms_norm(cpu.upload(x, Precision::f32), weight, 1e-5, want);
      check_close(be->download(out), cpu.download(want), type);
    }
    // RoPE on q (32 heads) and k (8 heads) of 128 values, and heads of 12 (general kernel), over
    // three sequences whose positions continue caches.
    SequenceLayout layout;
    layout.offset = {0, 5, 45, 77};
    for (int64_t s = 0; s < 3; ++s) {
      for (int64_t t = 0; t < layout.length(s); ++t) layout.positions.push_back(100 * s + t);
    }
    // Partial rotary (Phi-3): 32 of 96 (vector kernel), 8 of 16, 6 of 12 (general kernel).
    for (const auto& [heads, d, rot] : {std::tuple<int64_t, int64_t, int64_t>{32, 128, 0}, {8, 128, 0}, {4, 64, 0},
                                        {3, 12, 0}, {4, 96, 32}, {2, 16, 8}, {3, 12, 6}}) {
      INFO("rope heads " << heads << " d " << d << " rot " << rot << " " << compute_type_name(type));
      const Rope rope(d, 10000.0, RopeScaling{}, rot);
      const Mat x = rounded(random(77, heads * d));
      Buffer got = be->upload(x, Precision::compute);
      be->rope(got, heads, rope, layout);
      Buffer want = cpu.upload(x, Precision::compute);
      cpu.rope(want, heads, rope, layout);
      check_close(be->download(got), cpu.download(want), type);
    }
    // Gated SiLU: 16-byte vectors, and the general kernel (an odd count).
    for (const int64_t cols : {int64_t{11008}, int64_t{1001}}) {
      INFO("gated_activation cols " << cols << " " << compute_type_name(type));
      Mat g = rounded(random(13, cols)), u = rounded(random(13, cols));
      g.row(0).setConstant(-100.0f);  // exp overflows: silu is -0
      Buffer got = be->upload(g, Precision::compute);
      be->gated_activation(got, be->upload(u, Precision::compute), Activation::silu);
      Buffer want = cpu.upload(g, Precision::compute);
      cpu.gated_activation(want, cpu.upload(u, Precision::compute), Activation::silu);
      check_close(be->download(got), cpu.download(want), type);
    }
  }
}

TEST_CASE("GPU SVD (fp64 Gram matrix, cuSOLVER) equals LAPACK's: singular values, reconstruction, orthonormal factors",
          "[gpu][linalg]") {
  RS_REQUIRE_GPU();
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{300, 200}, {200, 300}, {256, 256}}) {
    INFO(m << " x " << n);
    // A decaying spectrum, as trained weights have: W = A diag(0.97^i) B.
    Mat a(m, std::min(m, n)), b(std::min(m, n), n);
    for (Mat* x : {&a, &b}) {
      for (int64_t i = 0; i < x->size(); ++i) x->data()[i] = normal(rng);
    }
    for (int64_t i = 0; i < a.cols(); ++i) a.col(i) *= std::pow(0.97f, static_cast<float>(i));
    const Mat w = a * b;
    const Svd want = svd_full(w, SvdBackend::lapack);
    const Svd got = svd_full(w, SvdBackend::cuda);
    REQUIRE(got.rank() == want.rank());
    // fp32 LAPACK is accurate to ~eps * s_max; the fp64 Gram path to ~1e-8 s_max.
    const float s_max = want.s(0);
    CHECK((got.s - want.s).cwiseAbs().maxCoeff() <= 1e-5f * s_max);
    const Mat back = got.u * got.s.asDiagonal() * got.v.transpose();
    CHECK((back - w).norm() <= 1e-5f * w.norm());
    // Columns with a singular value above the noise are orthonormal.
    const int64_t k = (got.s.array() > 1e-4f * s_max).count();
    const Mat utu = got.u.leftCols(k).transpose() * got.u.leftCols(k);
    const Mat vtv = got.v.leftCols(k).transpose() * got.v.leftCols(k);
    CHECK((utu - Mat::Identity(k, k)).cwiseAbs().maxCoeff() <= 1e-4f);
    CHECK((vtv - Mat::Identity(k, k)).cwiseAbs().maxCoeff() <= 1e-4f);
  }
}

TEST_CASE("GPU log-softmax scoring equals the CPU's float64 reference, first maximum and NaN rows included", "[gpu]") {
  RS_REQUIRE_GPU();
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  const int64_t rows = 37, vocab = 32000;
  Mat logits(rows, vocab);
  for (int64_t i = 0; i < logits.size(); ++i) logits.data()[i] = normal(rng);
  logits(3, 100) = logits(3, 200) = 1e3f;  // a tie: the first maximum is the argmax
  logits(5, 17) = NAN;
  logits(6, 9) = INFINITY;
  std::vector<int64_t> pick;
  std::vector<TokenId> targets;
  for (int64_t i = 0; i < rows; ++i) {
    pick.push_back(rows - 1 - i);
    targets.push_back(static_cast<TokenId>((i * 7919) % vocab));
  }
  targets[rows - 1 - 3] = 100;
  targets[rows - 1 - 4] = 200;
  pick[rows - 1 - 4] = 3;  // row 3 scored twice: once at its first maximum, once at the tie
  auto be = gpu(ComputeType::f32);
  const auto got = be->score(be->upload(logits, Precision::f32), pick, targets);
  for (size_t i = 0; i < pick.size(); ++i) {
    const TokenScore want = score_row(logits.row(pick[i]).data(), vocab, targets[i]);
    INFO("row " << pick[i] << " target " << targets[i]);
    if (std::isnan(want.logprob)) {
      CHECK(std::isnan(got[i].logprob));
      continue;
    }
    // Both sum exp in float64 over the same float32 values, in another order: ~1e-15 relative.
    CHECK(std::abs(got[i].logprob - want.logprob) <= 1e-12 * std::max(1.0, std::abs(want.logprob)));
    CHECK(got[i].is_argmax == want.is_argmax);
  }
  CHECK(got[rows - 1 - 3].is_argmax);
  CHECK_FALSE(got[rows - 1 - 4].is_argmax);
}

TEST_CASE("GPU fidelity rows: KL, log-probabilities and argmax equal the CPU's float64 reference", "[gpu][fidelity]") {
  RS_REQUIRE_GPU();
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const int64_t rows = 19, vocab = 32000;
  Mat logits(rows, vocab), other(rows, vocab);
  for (int64_t i = 0; i < logits.size(); ++i) {
    logits.data()[i] = normal(rng);
    other.data()[i] = logits.data()[i] + 0.3f * normal(rng);
  }
  std::vector<int64_t> pick;
  std::vector<TokenId> targets;
  for (int64_t i = 0; i < rows; ++i) {
    pick.push_back((i * 5) % rows);
    targets.push_back(static_cast<TokenId>((i * 7919) % vocab));
  }
  auto be = gpu(ComputeType::f32);
  // The base side: log-probabilities written out, as the fidelity cache stores them.
  Mat base_cpu(rows, vocab), base_gpu(rows, vocab);
  const auto want_base = cpu_backend().compare_rows(cpu_backend().upload(other, Precision::f32), pick, targets, nullptr,
                                                    base_cpu.data());
  const auto got_base = be->compare_rows(be->upload(other, Precision::f32), pick, targets, nullptr, base_gpu.data());
  // log p = x - max - log(sum exp): float64 sums in another order, rounded to float32.
  CHECK((base_gpu - base_cpu).cwiseAbs().maxCoeff() <= 1e-5f);
  const auto want = cpu_backend().compare_rows(cpu_backend().upload(logits, Precision::f32), pick, targets, base_cpu.data(), nullptr);
  const auto got = be->compare_rows(be->upload(logits, Precision::f32), pick, targets, base_cpu.data(), nullptr);
  for (size_t i = 0; i < pick.size(); ++i) {
    INFO("row " << pick[i]);
    CHECK(got_base[i].argmax == want_base[i].argmax);
    CHECK(std::abs(got_base[i].logprob - want_base[i].logprob) <= 1e-12 * std::max(1.0, std::abs(want_base[i].logprob)));
    CHECK(got[i].argmax == want[i].argmax);
    CHECK(std::abs(got[i].logprob - want[i].logprob) <= 1e-12 * std::max(1.0, std::abs(want[i].logprob)));
    // Terms exp(lpb) (lpb - lc) with lc rounded to float32 on both sides: a flip of the last bit
    // of one lc moves KL by at most exp(lpb) * ulp(lc) ~ 1e-7 in total.
    CHECK(std::abs(got[i].kl - want[i].kl) <= 1e-6 * std::max(1.0, want[i].kl));
    CHECK(want[i].kl > 0.01);
  }
  // Equal rows: exactly 0, as on the CPU.
  const auto same = be->compare_rows(be->upload(other, Precision::f32), pick, targets, base_gpu.data(), nullptr);
  for (const auto& r : same) CHECK(r.kl == 0.0);
}

TEST_CASE("GPU fidelity: a decomposed stories260K-hf against its base equals the CPU's (fp32)", "[gpu][fidelity]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  auto ids = test::read_json(dir / "golden/tinystories_val_50k_ids.json")["ids"].get<std::vector<TokenId>>();
  ids.resize(3000);
  FactorCache cache(test::scratch_dir("gpu_fidelity_factors"));
  FidelityOptions o;
  o.ctx = 128;
  o.windows_per_batch = 4;
  auto run = [&](std::shared_ptr<Backend> backend, bool staged) {
    Model b = base;
    if (backend) b.backend = backend;
    const Model cand = decompose_model(b, parse_config("L*:all=50%", b.config), cache);
    FidelityOptions so = o;
    // Early stopping's path: the base side whole first, the windows in a seeded order.
    if (staged) so.keep_going = [](const std::vector<double>&, const std::vector<int64_t>&, int64_t) { return true; };
    return fidelity(b, cand, ids, so);
  };
  const FidelityResult cpu = run(nullptr, false);
  for (const bool staged : {false, true}) {
    INFO("staged " << staged);
    const FidelityResult cuda = run(gpu(ComputeType::f32), staged);
    CHECK(cuda.n_tokens == cpu.n_tokens);
    CHECK(cpu.kl > 0.01);
    // fp32 logits agree to 1e-4: KL (a mean of ~1e-1) and perplexities to 1e-4 relative.
    CHECK(std::abs(cuda.kl - cpu.kl) <= 1e-4 * cpu.kl);
    CHECK(std::abs(cuda.ppl_base - cpu.ppl_base) <= 1e-4 * cpu.ppl_base);
    CHECK(std::abs(cuda.ppl_candidate - cpu.ppl_candidate) <= 1e-4 * cpu.ppl_candidate);
    CHECK(std::abs(cuda.top1 - cpu.top1) <= 3.0 / static_cast<double>(cpu.n_tokens));  // near-ties may flip
  }
}

TEST_CASE("GPU calibration: float64 statistics on the device equal the CPU's and layer groups read back lazily",
          "[gpu][activation]") {
  RS_REQUIRE_GPU();
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.samples = 6;
  o.ctx = 64;
  const auto cpu = calibrate(model, o);
  model.backend = gpu(ComputeType::f32);
  o.memory_mib = 1;  // two groups of layers
  o.cache_dir = test::scratch_dir("gpu_calibration");
  const auto cuda = calibrate(model, o);
  CHECK(cuda->file_backed());
  CHECK(cuda->info.at("device") == "cuda");
  REQUIRE(cuda->sites() == cpu->sites());
  for (const auto& [layer, site] : cpu->sites()) {
    INFO(hook_name(site, layer));
    const auto a = cpu->at(layer, site);
    const auto b = cuda->at(layer, site);
    CHECK(a->rows == b->rows);
    // Activations agree to ~1e-6 relative (fp32 in another order); the sums are float64.
    CHECK((a->gram - b->gram).norm() <= 1e-5 * a->gram.norm());
    CHECK((a->abs_sum - b->abs_sum).norm() <= 1e-5 * a->abs_sum.norm());
  }
  // A whiten decomposition from the GPU's statistics runs and is finite.
  FactorCache cache(test::scratch_dir("gpu_calibration_factors"));
  const Model dec = decompose_model(model, parse_config("L*:all=50%@whiten", model.config), cache, nullptr, {cuda, 0.5});
  CHECK(llama_forward(dec, golden_batch()).allFinite());
}

TEST_CASE("GPU randomized SVD equals the CPU's from the same sketch: singular values and error", "[gpu][linalg]") {
  RS_REQUIRE_GPU();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{600, 400}, {400, 600}}) {
    INFO(m << " x " << n);
    Mat a(m, std::min(m, n)), b(std::min(m, n), n);
    for (Mat* x : {&a, &b}) {
      for (int64_t i = 0; i < x->size(); ++i) x->data()[i] = normal(rng);
    }
    for (int64_t i = 0; i < a.cols(); ++i) a.col(i) *= std::pow(0.98f, static_cast<float>(i));
    const Mat w = a * b;
    RandomizedSvdOptions o;
    const Svd want = svd_randomized(w, 64, o);
    o.backend = SvdBackend::cuda;
    const Svd got = svd_randomized(w, 64, o);
    REQUIRE(got.rank() == 64);
    // The same sketch through fp32 products in another order: the captured subspace and its
    // singular values agree to fp32 accuracy relative to the largest.
    CHECK((got.s - want.s).cwiseAbs().maxCoeff() <= 1e-4f * want.s(0));
    CHECK(std::abs(truncation_error(w, got, 64) - truncation_error(w, want, 64)) <= 1e-3 * truncation_error(w, want, 64));
    const Mat utu = got.u.transpose() * got.u;
    CHECK((utu - Mat::Identity(64, 64)).cwiseAbs().maxCoeff() <= 1e-4f);
  }
}

TEST_CASE("GPU bf16: ARC-Easy@200, SST-2 and TinyStories perplexity as on the CPU, protocol records device and dtype",
          "[gpu][eval][slow]") {
  RS_REQUIRE_GPU();
  const auto stories = test::shared_data("stories260K-hf");
  const auto bert = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(stories);
  RS_REQUIRE_SHARED(bert);
  const std::string data = " --data-dir " + test::shared_data("").string();
  for (const std::string dtype : {"fp32", "bf16"}) {
    INFO(dtype);
    const std::string llama = "eval " + stories.string() + " --tasks arc_easy --limit 200 --json" + data;
    const auto cpu = test::run_cli(llama + " --device cpu");
    const auto cuda = test::run_cli(llama + " --device cuda --dtype " + dtype);
    REQUIRE(cpu.exit_code == 0);
    REQUIRE(cuda.exit_code == 0);
    const auto m_cpu = metrics_of(cpu.out), m_cuda = metrics_of(cuda.out);
    CHECK(m_cuda.at("arc_easy.acc") == m_cpu.at("arc_easy.acc"));
    CHECK(m_cuda.at("arc_easy.acc_norm") == m_cpu.at("arc_easy.acc_norm"));
    const auto protocol = nlohmann::json::parse(cuda.out)["results"][0]["protocol"];
    CHECK(protocol["device"] == "cuda");
    CHECK(protocol["dtype"] == dtype);

    const std::string ppl = "eval " + stories.string() + " --tasks tinystories --limit 50 --json" + data;
    const auto p_cpu = metrics_of(test::run_cli(ppl + " --device cpu").out);
    const auto p_cuda = metrics_of(test::run_cli(ppl + " --device cuda --dtype " + dtype).out);
    const double rel = std::abs(p_cuda.at("tinystories.ppl") / p_cpu.at("tinystories.ppl") - 1.0);
    CHECK(rel <= 1e-3);
    WARN(dtype << ": TinyStories ppl CPU " << p_cpu.at("tinystories.ppl") << ", GPU " << p_cuda.at("tinystories.ppl")
               << " (relative difference " << rel << ")");

    const std::string sst = "eval " + bert.string() + " --tasks sst2 --json" + data;
    const auto s_cpu = metrics_of(test::run_cli(sst + " --device cpu").out);
    const auto s_cuda = metrics_of(test::run_cli(sst + " --device cuda --dtype " + dtype).out);
    CHECK(s_cuda.at("sst2.acc") == s_cpu.at("sst2.acc"));
  }
}

TEST_CASE("GPU sweep: a study on --device cuda stores the CPU study's configurations and metrics", "[gpu][sweep][slow]") {
  RS_REQUIRE_GPU();
  const auto stories = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(stories);
  const auto dir = test::scratch_dir("gpu-sweep");
  const std::string experiment = std::string(RANKSCOPE_SOURCE_DIR) + "/experiments/small/stories_rank_sweep.ini";
  const std::string common = "sweep " + experiment + " --data-dir " + test::shared_data("").string() + " --limit 40";
  REQUIRE(test::run_cli(common + " --db " + (dir / "cpu.db").string() + " --device cpu").exit_code == 0);
  REQUIRE(test::run_cli(common + " --db " + (dir / "gpu.db").string() + " --device cuda --dtype fp32").exit_code == 0);
  auto rows = [&](const std::string& db) {
    const auto r = test::run_cli("export --db " + (dir / db).string() + " --study small-stories-rank-sweep --format json");
    REQUIRE(r.exit_code == 0);
    return nlohmann::json::parse(r.out)["evaluations"];
  };
  const auto cpu = rows("cpu.db"), cuda = rows("gpu.db");
  REQUIRE(cpu.size() == cuda.size());
  REQUIRE(cpu.size() >= 4);
  for (size_t i = 0; i < cpu.size(); ++i) {
    CHECK(cpu[i]["config"] == cuda[i]["config"]);
    CHECK(cuda[i]["status"] == "done");
    for (const auto& [name, value] : cpu[i]["metrics"].items()) {
      REQUIRE(value["value"].is_number());
      const double a = value["value"].get<double>(), b = cuda[i]["metrics"][name]["value"].get<double>();
      INFO(cpu[i]["config"] << " " << name);
      CHECK(std::abs(a - b) <= 1e-4 * std::max(1.0, std::abs(a)));
      if (name.rfind("size.", 0) != 0) CHECK(cuda[i]["metrics"][name]["protocol"]["device"] == "cuda");
    }
  }
}

TEST_CASE("GPU out of memory is a clear error naming what did not fit and a sweep records the configuration as failed",
          "[gpu][oom]") {
  RS_REQUIRE_GPU();
  // A real cudaMallocAsync failure: far more than any GPU has.
  auto be = gpu(ComputeType::bf16);
  CHECK_THROWS_WITH(be->buffer(int64_t{1} << 24, int64_t{1} << 24, Precision::f32),
                    Contains("out of GPU memory") && Contains("activation buffer"));
  // The device still works afterwards.
  const Mat m = Mat::Constant(2, 3, 1.5f);
  CHECK(be->download(be->upload(m, Precision::f32)) == m);

  const auto stories = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(stories);
  const std::string cap = "RANKSCOPE_GPU_MEMORY_LIMIT_MIB=0.05";
  const auto r = test::run_cli("eval " + stories.string() + " --tasks tinystories --limit 2 --device cuda", cap);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Contains("out of GPU memory") && Contains("RANKSCOPE_GPU_MEMORY_LIMIT_MIB"));
  const auto dir = test::scratch_dir("gpu-oom-sweep");
  const std::string experiment = std::string(RANKSCOPE_SOURCE_DIR) + "/experiments/small/stories_rank_sweep.ini";
  const auto s = test::run_cli("sweep " + experiment + " --db " + (dir / "oom.db").string() + " --data-dir " +
                                   test::shared_data("").string() + " --limit 5 --device cuda",
                               cap);
  CHECK(s.exit_code == 0);
  CHECK_THAT(s.out, Contains("4 failed"));
}
