// The CUDA backend on a Llama-2-7B-shaped model (a config.json's shapes, random weights in the
// compute type), against a baseline measured on the same machine in the same run:
//   gemm        the card's bf16 GEMM ceiling through cuBLAS ([8192 x 4096] x [4096 x 11008])
//   throughput  scoring tokens/s: forward + log-softmax + gather of batch x seq requests, and the
//               fraction of the GEMM ceiling it reaches; with --baseline (transformers_baseline.py's
//               JSON from the same machine) the ratio to transformers
//   factored    all 7 matrices of every layer factored at ranks 64/256/1024 (svd: two products,
//               tucker: three) against dense: measured speed-up over the ideal FLOP ratio
//   svd         the full SVD of every decomposable matrix on the GPU (--svd-backend cuda)
//   calib       calibration statistics of every layer (Gram matrices and mean |x|, float64 on the
//               GPU, layer groups, written site by site): time and the host memory it took
//   ops         each operation of one layer alone at the throughput shape (where time goes)
//   paper       the paper's request set (arc_easy, arc_challenge, hellaswag, mmlu, truthfulqa_mc2,
//               winogrande; full, zero-shot) for one configuration: dense and L2,17,31:all=1
// Random factors stand in for real ones: only speed is measured here (accuracy: tests/test_gpu).
//   build/bench/gpu --config ../shared/configs/llama-2-7b --tokenizer ../shared/data/llama2-tokenizer
//                   [--data-dir ../shared/data] [--layers N] [--sections gemm,throughput,factored,paper]
//                   [--batch 64] [--seq 128] [--reps 5] [--baseline transformers.json] [--json out.json]
//                   [--paper-runs dense,paper]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/compute/backend.hpp"
#include "core/decompose/linalg.hpp"
#include "core/io/model.hpp"
#include "core/models/llama.hpp"
#include "core/space/config_string.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/evaluator.hpp"

using namespace rankscope;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A field of /proc/self/status in KiB (VmRSS, VmHWM); 0 when absent.
int64_t proc_status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Uniform values in [-scale, scale], filled in parallel (splitmix64 per element: no shared state).
Tensor random_tensor(std::vector<int64_t> shape, float scale, uint64_t seed) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    v[static_cast<size_t>(i)] = scale * (static_cast<float>(z >> 40) / static_cast<float>(1 << 23) - 1.0f);
  }
  return Tensor::owned(std::move(shape), std::move(v));
}

Linear random_linear(int64_t out, int64_t in, uint64_t seed) {
  return Linear::dense(random_tensor({out, in}, std::sqrt(3.0f / static_cast<float>(in)), seed));
}

// All 7 matrices of `layers` as random factors of rank r (svd: U, V; tucker: U, core, V).
void factor_layers(Model& m, const std::vector<int64_t>& layers, int64_t r, const std::string& method, uint64_t seed) {
  for (auto l : layers) {
    auto& layer = m.weights.layers[static_cast<size_t>(l)];
    for (auto kind : matrix_kinds(Arch::llama)) {
      const int64_t out = layer[kind].n_out(), in = layer[kind].n_in();
      const int64_t rr = std::min({r, out, in});
      Tensor u = random_tensor({out, rr}, std::sqrt(3.0f / static_cast<float>(rr)), seed++);
      Tensor v = random_tensor({in, rr}, std::sqrt(3.0f / static_cast<float>(in)), seed++);
      if (method == "svd") {
        layer[kind] = Linear::svd(u, v);
      } else {
        layer[kind] = Linear::tucker(u, random_tensor({rr, rr}, std::sqrt(3.0f / static_cast<float>(rr)), seed++), v);
      }
    }
  }
}

// FLOPs of one token's forward pass at `seq` tokens of causal context: every linear, attention
// (q k^T and weights v over on average seq/2 keys) and the head.
double flops_per_token(const Model& m, int64_t seq) {
  const auto& c = m.config;
  double f = 2.0 * static_cast<double>(c.n_embd * c.n_vocab);
  for (const auto& layer : m.weights.layers) {
    for (const auto& lin : layer.linear) f += static_cast<double>(lin.flops_per_row());
    f += 2.0 * 2.0 * static_cast<double>(c.n_embd_q()) * static_cast<double>(seq) / 2.0;
  }
  return f;
}

struct Throughput {
  double seconds = 0, tokens_per_s = 0, tflops = 0;
};

// forward + log-softmax + gather of every position, median of `reps` timed steps after 2 warm-ups.
Throughput measure(const Model& m, int64_t batch, int64_t seq, int reps) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<TokenId> id(3, static_cast<TokenId>(m.config.n_vocab - 1));
  std::vector<std::vector<TokenId>> seqs(static_cast<size_t>(batch), std::vector<TokenId>(static_cast<size_t>(seq)));
  std::vector<int64_t> rows;
  std::vector<TokenId> targets;
  for (auto& s : seqs) {
    for (auto& t : s) {
      t = id(rng);
      rows.push_back(static_cast<int64_t>(rows.size()));
      targets.push_back(id(rng));
    }
  }
  Backend& be = m.runtime();
  auto step = [&] {
    const Buffer logits = llama_logits(m, seqs);
    (void)be.score(logits, rows, targets);  // synchronises
  };
  step();
  step();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    step();
    times.push_back(seconds_since(t0));
  }
  Throughput t;
  t.seconds = median(times);
  t.tokens_per_s = static_cast<double>(batch * seq) / t.seconds;
  t.tflops = t.tokens_per_s * flops_per_token(m, seq) / 1e12;
  return t;
}

std::set<std::string> split(const std::string& s) {
  std::set<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.insert(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = "../shared/configs/llama-2-7b", tokenizer_dir = "../shared/data/llama2-tokenizer";
  std::string data_dir = "../shared/data", sections_text = "gemm,throughput,factored,paper", baseline_path, json_path;
  std::string paper_runs = "dense,paper";
  std::string device = "cuda", dtype = "bf16", paper_tasks = "arc_easy,arc_challenge,hellaswag,mmlu,truthfulqa_mc2,winogrande";
  int64_t layers = 0, batch = 64, seq = 128, limit = -1, batch_tokens = 16384;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--config") config_path = v;
    else if (a == "--tokenizer") tokenizer_dir = v;
    else if (a == "--data-dir") data_dir = v;
    else if (a == "--sections") sections_text = v;
    else if (a == "--baseline") baseline_path = v;
    else if (a == "--json") json_path = v;
    else if (a == "--device") device = v;
    else if (a == "--dtype") dtype = v;
    else if (a == "--tasks") paper_tasks = v;
    else if (a == "--paper-runs") paper_runs = v;
    else if (a == "--layers") layers = std::stoll(v);
    else if (a == "--batch") batch = std::stoll(v);
    else if (a == "--seq") seq = std::stoll(v);
    else if (a == "--limit") limit = std::stoll(v);
    else if (a == "--batch-tokens") batch_tokens = std::stoll(v);
    else if (a == "--reps") reps = std::stoi(v);
    else {
      fmt::print(stderr, "gpu: unknown option {}\n", a);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines appear as they are measured, even if killed
  const auto sections = split(sections_text);
  nlohmann::json report;
  try {
    Model m = load_model(config_path, {.weights = false, .tokenizer = false});
    auto& c = m.config;
    if (layers > 0) c.n_layer = layers;
    const auto t_build = Clock::now();
    auto& w = m.weights;
    uint64_t seed = 1;
    w.token_embd = random_tensor({c.n_vocab, c.n_embd}, 1.0f, seed++);
    w.output = random_tensor({c.n_vocab, c.n_embd}, std::sqrt(3.0f / static_cast<float>(c.n_embd)), seed++);
    w.output_norm = random_tensor({c.n_embd}, 1.0f, seed++);
    w.layers.assign(static_cast<size_t>(c.n_layer), LayerWeights{});
    for (auto& l : w.layers) {
      l.attn_norm = random_tensor({c.n_embd}, 1.0f, seed++);
      l.ffn_norm = random_tensor({c.n_embd}, 1.0f, seed++);
      l[MatrixKind::q] = random_linear(c.n_embd_q(), c.n_embd, seed++);
      l[MatrixKind::k] = random_linear(c.n_embd_kv(), c.n_embd, seed++);
      l[MatrixKind::v] = random_linear(c.n_embd_kv(), c.n_embd, seed++);
      l[MatrixKind::o] = random_linear(c.n_embd, c.n_embd_q(), seed++);
      l[MatrixKind::gate] = random_linear(c.n_ff, c.n_embd, seed++);
      l[MatrixKind::up] = random_linear(c.n_ff, c.n_embd, seed++);
      l[MatrixKind::down] = random_linear(c.n_embd, c.n_ff, seed++);
    }
    m.has_weights = true;
    m.storage_dtype = "BF16";
    m.backend = make_backend(parse_device(device), parse_compute_type(dtype));
    Backend& be = m.runtime();
    fmt::print("model: {} ({} layers, hidden {}, ffn {}, vocab {}), {} parameters, random weights built in {:.1f} s\n",
               config_path, c.n_layer, c.n_embd, c.n_ff, c.n_vocab, m.n_params(), seconds_since(t_build));
    fmt::print("device: {}, compute type {}\n", be.device_name(), compute_type_name(be.compute_type()));
    report["device"] = be.device_name();
    report["dtype"] = compute_type_name(be.compute_type());
    report["layers"] = c.n_layer;

    double ceiling = 0;
    if (sections.count("gemm")) {
      const int64_t n = 8192, k = c.n_embd, out = c.n_ff;
      const Linear lin = random_linear(out, k, 999);
      Buffer x = be.upload(Mat::Random(n, k), Precision::compute);
      Buffer y = be.buffer(n, out, Precision::compute);
      be.linear(lin, x, y, false);
      be.synchronize();
      std::vector<double> times;
      constexpr int kInner = 10;
      for (int i = 0; i < 7; ++i) {
        const auto t0 = Clock::now();
        for (int j = 0; j < kInner; ++j) be.linear(lin, x, y, false);
        be.synchronize();
        times.push_back(seconds_since(t0) / kInner);
      }
      ceiling = 2.0 * static_cast<double>(n * k * out) / median(times) / 1e12;
      fmt::print("gemm: [{} x {}] x [{} x {}] {}, median {:.3f} ms, {:.0f} TFLOP/s (the ceiling below)\n", n, k, k, out,
                 compute_type_name(be.compute_type()), median(times) * 1e3, ceiling);
      report["gemm_tflops"] = ceiling;
    }

    if (sections.count("ops")) {
      // Each operation of one layer alone at the throughput shape (batch x seq rows): where the time
      // beyond the products goes.
      const int64_t n = batch * seq;
      SequenceLayout layout;
      layout.offset.assign(1, 0);
      for (int64_t i = 0; i < batch; ++i) layout.offset.push_back(layout.offset.back() + seq);
      for (int64_t i = 0; i < n; ++i) layout.positions.push_back(i % seq);
      Buffer x = be.upload(Mat::Random(n, c.n_embd), Precision::f32);
      Buffer h = be.buffer(n, c.n_embd, Precision::compute);
      Buffer q = be.upload(Mat::Random(n, c.n_embd_q()), Precision::compute);
      Buffer k = be.upload(Mat::Random(n, c.n_embd_kv()), Precision::compute);
      Buffer v = be.upload(Mat::Random(n, c.n_embd_kv()), Precision::compute);
      Buffer ctx = be.buffer(n, c.n_embd_q(), Precision::compute);
      Buffer gate = be.upload(Mat::Random(n, c.n_ff), Precision::compute);
      Buffer up = be.upload(Mat::Random(n, c.n_ff), Precision::compute);
      const Rope rope(c.n_embd_head, c.rope_theta, c.rope_scaling);
      const AttentionShape shape{.n_head = c.n_head, .n_head_kv = c.n_head_kv, .n_embd_head = c.n_embd_head, .causal = true};
      const auto& layer = w.layers[0];
      auto time_op = [&](const char* name, double bytes, const std::function<void()>& op) {
        op();
        be.synchronize();
        std::vector<double> times;
        for (int i = 0; i < 7; ++i) {
          const auto t0 = Clock::now();
          for (int j = 0; j < 10; ++j) op();
          be.synchronize();
          times.push_back(seconds_since(t0) / 10);
        }
        const double t = median(times);
        fmt::print("ops: {:<16} {:8.3f} ms per call, {:6.0f} GB/s\n", name, t * 1e3, bytes / t / 1e9);
        report["ops"][name] = t * 1e3;
      };
      const double act = static_cast<double>(n * c.n_embd);
      const double es = be.compute_type() == ComputeType::f32 ? 4.0 : 2.0;
      time_op("rms_norm", act * (4 + es), [&] { be.rms_norm(x, layer.attn_norm, c.norm_eps, h); });
      time_op("rope(q)", act * 2 * es, [&] { be.rope(q, c.n_head, rope, layout); });
      time_op("attention", act * 4 * es, [&] { be.attention(shape, q, k, v, layout, {}, 0, {}, ctx); });
      time_op("gated_activation", static_cast<double>(n * c.n_ff) * 3 * es, [&] { be.gated_activation(gate, up, c.activation); });
      time_op("linear(q)", act * 2 * es, [&] { be.linear(layer[MatrixKind::q], h, q, false); });
      gate = be.upload(Mat::Random(n, c.n_ff), Precision::compute);  // the activation above changed it
      time_op("linear(down)+=", act * 8, [&] { be.linear(layer[MatrixKind::down], gate, x, true); });
    }

    Throughput dense;
    if (sections.count("throughput") || sections.count("factored")) {
      dense = measure(m, batch, seq, reps);
      fmt::print("throughput: dense, {} x {} tokens: median {:.1f} ms, {:.0f} tokens/s, {:.0f} TFLOP/s", batch, seq,
                 dense.seconds * 1e3, dense.tokens_per_s, dense.tflops);
      if (ceiling > 0) fmt::print(" ({:.0f} % of the GEMM ceiling)", 100.0 * dense.tflops / ceiling);
      fmt::print("\n");
      report["throughput"] = {{"batch", batch}, {"seq", seq}, {"ms", dense.seconds * 1e3},
                              {"tokens_per_s", dense.tokens_per_s}, {"tflops", dense.tflops}};
      if (!baseline_path.empty()) {
        std::ifstream in(baseline_path);
        const auto base = nlohmann::json::parse(in);
        const double theirs = base["dense"]["tokens_per_s"].get<double>();
        fmt::print("throughput: transformers {:.0f} tokens/s on the same shapes: rankscope/transformers = {:.2f}x\n", theirs,
                   dense.tokens_per_s / theirs);
        report["throughput"]["transformers_tokens_per_s"] = theirs;
        report["throughput"]["ratio"] = dense.tokens_per_s / theirs;
      }
    }

    if (sections.count("factored")) {
      std::vector<int64_t> all(static_cast<size_t>(c.n_layer));
      for (int64_t l = 0; l < c.n_layer; ++l) all[static_cast<size_t>(l)] = l;
      for (const std::string method : {"svd", "tucker"}) {
        for (const int64_t r : {64, 256, 1024}) {
          Model f = m;
          factor_layers(f, all, r, method, 5000);
          const Throughput t = measure(f, batch, seq, reps);
          const double speedup = dense.seconds / t.seconds;
          const double ideal = flops_per_token(m, seq) / flops_per_token(f, seq);
          fmt::print("factored: {} rank {}: {:.0f} tokens/s, speed-up {:.2f}x, ideal {:.2f}x, measured/ideal {:.2f}\n", method,
                     r, t.tokens_per_s, speedup, ideal, speedup / ideal);
          report["factored"].push_back({{"method", method}, {"rank", r}, {"tokens_per_s", t.tokens_per_s},
                                        {"speedup", speedup}, {"ideal", ideal}, {"efficiency", speedup / ideal}});
          f = Model{};
          be.trim();
        }
      }
    }

    if (sections.count("svd")) {
      // Full SVD of every decomposable matrix (7 per layer) through --svd-backend cuda.
      const auto t0 = Clock::now();
      int64_t count = 0;
      for (const auto& layer : w.layers) {
        for (const auto& lin : layer.linear) {
          const Mat weight = lin.weight().matrix();
          (void)svd_full(weight, SvdBackend::cuda);
          ++count;
        }
      }
      const double wall = seconds_since(t0);
      fmt::print("svd: {} matrices factorized (full SVD, GPU) in {:.1f} s ({:.2f} s each)\n", count, wall,
                 wall / static_cast<double>(count));
      report["svd"] = {{"matrices", count}, {"seconds", wall}};
      // Randomized SVD at rank 1024 (the factor cache's choice for ranks up to 1024 of a
      // 4096-wide matrix) on the GPU and on the CPU, one layer's matrices.
      for (const SvdBackend backend : {SvdBackend::cuda, SvdBackend::lapack}) {
        RandomizedSvdOptions o;
        o.backend = backend;
        const auto t1 = Clock::now();
        int64_t n = 0;
        for (const auto& lin : w.layers[0].linear) {
          const Mat weight = lin.weight().matrix();
          (void)svd_randomized(weight, 1024, o);
          ++n;
        }
        const double each = seconds_since(t1) / static_cast<double>(n);
        fmt::print("svd: randomized rank 1024 on the {}: {:.2f} s a matrix (layer 0's {})\n",
                   backend == SvdBackend::cuda ? "GPU" : "CPU", each, n);
        report["svd"][backend == SvdBackend::cuda ? "randomized_gpu_s" : "randomized_cpu_s"] = each;
      }
    }

    if (sections.count("calib")) {
      auto tok = load_sentencepiece(std::filesystem::path(tokenizer_dir) / "tokenizer.model");
      m.tokenizer = std::shared_ptr<const Tokenizer>(std::move(tok));
      CalibrationOptions o;
      o.source = "wikitext2";
      o.data_dir = data_dir;
      o.samples = 64;
      o.ctx = 512;
      o.cache_dir = "bench-gpu-calib-cache";
      std::filesystem::remove_all(o.cache_dir);
      // Host memory: the peak resident set from here on (VmHWM after resetting it) over the resident
      // set before.
      const int64_t rss_before = proc_status_kib("VmRSS");
      std::ofstream("/proc/self/clear_refs") << "5";
      const auto t0 = Clock::now();
      const auto calibration = calibrate(m, o);
      const double wall = seconds_since(t0);
      const int64_t peak = proc_status_kib("VmHWM");
      const auto bytes = std::filesystem::file_size(calibration_path(o.cache_dir, calibration->key));
      fmt::print("calib: {} samples x {} tokens, {} sites, {:.1f} GB of statistics written in {:.1f} s; host memory "
                 "peak {:.2f} GB above the {:.2f} GB before\n",
                 o.samples, o.ctx, calibration->size(), static_cast<double>(bytes) / 1e9, wall,
                 static_cast<double>(peak - rss_before) / (1024.0 * 1024.0), static_cast<double>(rss_before) / (1024.0 * 1024.0));
      report["calib"] = {{"seconds", wall}, {"bytes", bytes}, {"host_peak_extra_kib", peak - rss_before}};
      std::filesystem::remove_all(o.cache_dir);
    }

    if (sections.count("paper")) {
      auto tok = load_sentencepiece(std::filesystem::path(tokenizer_dir) / "tokenizer.model");
      m.tokenizer = std::shared_ptr<const Tokenizer>(std::move(tok));
      EvalRequest request;
      for (const auto& t : split(paper_tasks)) request.tasks.push_back(t);
      request.load.data_dir = data_dir;
      request.load.limit = limit;
      request.settings.batch_tokens = batch_tokens;
      const auto t_load = Clock::now();
      const Evaluator evaluator(m, request);
      fmt::print("paper: tasks {} loaded in {:.1f} s (limit {})\n", paper_tasks, seconds_since(t_load), limit);
      // The paper's configuration: all matrices of layers 2, 17 and 31 at rank 1 (those present).
      std::vector<int64_t> paper_layers;
      std::string paper_config;
      for (int64_t l : {2, 17, 31}) {
        if (l >= c.n_layer) continue;
        paper_layers.push_back(l);
        paper_config += (paper_config.empty() ? "L" : ",") + std::to_string(l);
      }
      paper_config += ":all=1";
      std::vector<std::string> configs;
      const auto runs = split(paper_runs);
      if (runs.count("dense")) configs.push_back(std::string());
      if (runs.count("paper") && !paper_layers.empty()) configs.push_back(paper_config);
      for (const std::string& text : configs) {
        Model candidate = m;
        if (!text.empty()) factor_layers(candidate, paper_layers, 1, "tucker", 9000);
        const Config config = parse_config(text, m.config);
        const auto t0 = Clock::now();
        const int64_t rows_before = be.rows_forwarded;
        const auto reports = evaluator.run(candidate, config);
        const double wall = seconds_since(t0);
        const auto rows = static_cast<double>(be.rows_forwarded - rows_before);
        // The floor: every token's linear FLOPs at the measured GEMM ceiling.
        fmt::print("paper: {} token rows through the model, {:.0f} tokens/s; at the GEMM ceiling ({:.0f} TFLOP/s) their "
                   "products alone take {:.1f} s\n",
                   rows, rows / wall, ceiling, ceiling > 0 ? rows * flops_per_token(candidate, 0) / (ceiling * 1e12) : 0.0);
        std::string per_task;
        for (const auto& r : reports) per_task += fmt::format("{}{} {:.1f} s", per_task.empty() ? "" : ", ", r.task, r.seconds);
        fmt::print("paper: {}: {}\n", text.empty() ? "dense" : text, per_task);
        fmt::print("paper: {} : {:.1f} s for the whole request set ({} tasks)\n", text.empty() ? "dense" : text, wall,
                   reports.size());
        report["paper"].push_back({{"config", text}, {"seconds", wall}});
      }
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "gpu: error: {}\n", e.what());
    return 1;
  }
  if (!json_path.empty()) std::ofstream(json_path) << report.dump(2) << "\n";
  return 0;
}
