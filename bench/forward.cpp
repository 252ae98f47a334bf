// bench/forward: prefill throughput of one Llama-2-7B-shaped layer (hidden 4096, intermediate
// 11008, 32 heads, 512 tokens, random weights) through rankscope's real forward pass, against the
// best plain OpenBLAS SGEMM measured in the same run; then a 4096x4096 Linear factored at ranks
// 64/256/1024 against the dense one and the ideal FLOP ratio. Medians of repeated runs.
//
//   build/bench/forward [--reps N] [--tokens T]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/compute/gemm.hpp"
#include "core/models/llama.hpp"

using namespace rankscope;

namespace {

constexpr int64_t kHidden = 4096;
constexpr int64_t kIntermediate = 11008;
constexpr int64_t kHeads = 32;
constexpr int64_t kVocab = 32;  // a tiny head: the benchmark is about the block, not the logits

// Uniform values in [-scale, scale) from a fast 64-bit LCG (the content does not matter to speed).
Tensor random_tensor(std::vector<int64_t> shape, float scale, uint64_t seed) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (auto& x : v) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    x = scale * (static_cast<float>(state >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f);
  }
  return Tensor::owned(std::move(shape), std::move(v));
}

Model llama7b_one_layer() {
  Model m;
  auto& c = m.config;
  c.arch = Arch::llama;
  c.architecture = "LlamaForCausalLM";
  c.n_vocab = kVocab;
  c.n_embd = kHidden;
  c.n_ff = kIntermediate;
  c.n_layer = 1;
  c.n_head = kHeads;
  c.n_head_kv = kHeads;
  c.n_embd_head = kHidden / kHeads;
  c.n_ctx_train = 4096;
  c.norm_eps = 1e-5;
  m.has_weights = true;
  auto& w = m.weights;
  w.token_embd = random_tensor({kVocab, kHidden}, 1.0f, 1);
  w.output = w.token_embd;
  w.output_norm = random_tensor({kHidden}, 1.0f, 2);
  w.layers.resize(1);
  auto& l = w.layers[0];
  l.attn_norm = random_tensor({kHidden}, 1.0f, 3);
  l.ffn_norm = random_tensor({kHidden}, 1.0f, 4);
  uint64_t seed = 10;
  for (auto kind : matrix_kinds(Arch::llama)) {
    const bool wide = kind == MatrixKind::gate || kind == MatrixKind::up;
    const int64_t out = wide ? kIntermediate : kHidden;
    const int64_t in = kind == MatrixKind::down ? kIntermediate : kHidden;
    l[kind] = Linear::dense(random_tensor({out, in}, 1.0f / std::sqrt(static_cast<float>(in)), seed++));
  }
  return m;
}

double median_seconds(int reps, const std::function<void()>& fn) {
  fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  int64_t tokens = 512;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::stoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--tokens") == 0) tokens = std::stoll(argv[i + 1]);
  }
  set_num_threads(0);
  fmt::print("threads {}, tokens {}, median of {} runs\n\n", num_threads(), tokens, reps);

  // The layer: FLOPs of its 7 products, causal attention (q k^T and p v over the visible keys
  // only), and the tiny logits head.
  const Model model = llama7b_one_layer();
  const int64_t d = kHidden / kHeads;
  double linear_flops = 0;
  for (auto kind : matrix_kinds(Arch::llama)) {
    linear_flops += static_cast<double>(model.weights.layers[0][kind].flops_per_row()) * static_cast<double>(tokens);
  }
  const double attention_flops = 2.0 * 2.0 * kHeads * d * static_cast<double>(tokens) * static_cast<double>(tokens + 1) / 2.0;
  const double head_flops = 2.0 * static_cast<double>(tokens) * kHidden * kVocab;
  const double layer_flops = linear_flops + attention_flops + head_flops;
  std::vector<std::vector<TokenId>> batch(1);
  for (int64_t t = 0; t < tokens; ++t) batch[0].push_back(static_cast<TokenId>(t % kVocab));

  // Baseline: plain SGEMMs of the layer's own shapes and a square one, each repeated to about the
  // layer's FLOPs; the best is the reference.
  struct Shape { int64_t m, k, n; const char* what; };
  const Shape shapes[] = {{tokens, kHidden, kHidden, "T x 4096 x 4096 (q,k,v,o)"},
                          {tokens, kHidden, kIntermediate, "T x 4096 x 11008 (gate,up)"},
                          {tokens, kIntermediate, kHidden, "T x 11008 x 4096 (down)"},
                          {2048, 2048, 2048, "2048 x 2048 x 2048 (square)"}};
  double best_gflops = 0;
  std::function<double()> best_run;  // runs the best SGEMM once at ~layer FLOPs, returns GFLOP/s
  fmt::print("{:<32} {:>10} {:>10}\n", "SGEMM baseline (OpenBLAS)", "ms", "GFLOP/s");
  std::vector<Tensor> keep;
  for (const auto& s : shapes) {
    keep.push_back(random_tensor({s.m, s.k}, 1.0f, 100));
    keep.push_back(random_tensor({s.n, s.k}, 1.0f, 101));
    auto c = std::make_shared<std::vector<float>>(static_cast<size_t>(s.m * s.n));
    const float* a = keep[keep.size() - 2].data;
    const float* b = keep.back().data;
    const double flops = 2.0 * static_cast<double>(s.m * s.k * s.n);
    const int repeat = std::max(1, static_cast<int>(layer_flops / flops + 0.5));
    auto once = [=] {
      const auto start = std::chrono::steady_clock::now();
      for (int r = 0; r < repeat; ++r) gemm_xwt(a, s.m, s.k, b, s.n, c->data());
      return flops * repeat / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * 1e-9;
    };
    std::vector<double> g;
    for (int i = 0; i <= reps / 2; ++i) g.push_back(once());
    std::sort(g.begin(), g.end());
    const double gflops = g[g.size() / 2];
    if (gflops > best_gflops) {
      best_gflops = gflops;
      best_run = once;
    }
    fmt::print("{:<32} {:>10.1f} {:>10.1f}   (x{} = {:.1f} GFLOP)\n", s.what, flops * repeat / gflops * 1e-6, gflops,
               repeat, flops * repeat * 1e-9);
  }

  // The layer, each run paired with a run of the best SGEMM right after it, so both see the same
  // machine; the ratio is the median of the per-pair ratios.
  llama_forward(model, batch);  // warm-up
  std::vector<double> layer_ms, layer_gf, sgemm_gf, ratio;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    llama_forward(model, batch);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double base = best_run();
    layer_ms.push_back(sec * 1e3);
    layer_gf.push_back(layer_flops / sec * 1e-9);
    sgemm_gf.push_back(base);
    ratio.push_back(layer_gf.back() / base);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  fmt::print("\n{:<32} {:>10.1f} {:>10.1f}   ({:.1f} GFLOP: linears {:.1f}, attention {:.1f})\n",
             "Llama-2-7B layer prefill", median(layer_ms), median(layer_gf), layer_flops * 1e-9, linear_flops * 1e-9,
             attention_flops * 1e-9);
  fmt::print("{:<32} {:>10} {:>10.1f}   (paired runs)\n", "best SGEMM", "", median(sgemm_gf));
  fmt::print("layer / best SGEMM: {:.3f} median of {} pairs (min {:.3f}, max {:.3f}; target >= 0.85)   {:.0f} tokens/s\n\n",
             median(ratio), reps, *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()),
             static_cast<double>(tokens) / median(layer_ms) * 1e3);

  // Factored vs dense 4096 x 4096 Linear on T rows.
  const Tensor x = random_tensor({tokens, kHidden}, 1.0f, 200);
  std::vector<float> y(static_cast<size_t>(tokens * kHidden));
  const Linear dense = Linear::dense(random_tensor({kHidden, kHidden}, 0.02f, 201));
  const double dense_s = median_seconds(reps, [&] { dense.forward(x.data, tokens, y.data()); });
  fmt::print("4096x4096 Linear, {} rows: dense {:.2f} ms\n", tokens, dense_s * 1e3);
  fmt::print("{:>6} {:>8} {:>12} {:>14} {:>14} {:>10}\n", "rank", "form", "ms", "ideal speedup", "measured", "ratio");
  for (int64_t r : {64, 256, 1024}) {
    const Linear tucker = Linear::tucker(random_tensor({kHidden, r}, 0.02f, 300 + r), random_tensor({r, r}, 0.02f, 400 + r),
                                         random_tensor({kHidden, r}, 0.02f, 500 + r));
    const Linear svd = Linear::svd(random_tensor({kHidden, r}, 0.02f, 600 + r), random_tensor({kHidden, r}, 0.02f, 700 + r));
    for (const Linear* lin : {&tucker, &svd}) {
      const double s = median_seconds(reps, [&] { lin->forward(x.data, tokens, y.data()); });
      const double ideal = static_cast<double>(dense.flops_per_row()) / static_cast<double>(lin->flops_per_row());
      const double measured = dense_s / s;
      fmt::print("{:>6} {:>8} {:>12.3f} {:>14.2f} {:>14.2f} {:>10.2f}\n", r,
                 lin->form() == Linear::Form::tucker ? "tucker" : "svd", s * 1e3, ideal, measured, measured / ideal);
    }
  }
  return 0;
}
