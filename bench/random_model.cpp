// A Llama-shaped checkpoint with random weights, written the way transformers writes one (bf16
// safetensors shards, one per layer, with model.safetensors.index.json), for the studies that need a
// model of a real size but no real weights exist (bench/scaleout.sh: Llama-2-7B on several GPUs).
//
//   random_model --config ../shared/configs/llama-2-7b/config.json
//       --tokenizer ../shared/data/llama2-tokenizer --out /tmp/llama-2-7b-random [--seed 1]
//
// Linear weights are uniform in +-sqrt(3 / in) (unit output variance for unit inputs), the
// embedding uniform in +-sqrt(3), norms 1: logits stay finite and spread, which is all a speed or
// scale-out study asks of them. The same seed writes the same bytes on any machine.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/splitmix.hpp"
#include "core/base/json_file.hpp"
#include "core/io/model_config.hpp"
#include "core/io/safetensors.hpp"

namespace fs = std::filesystem;
using namespace rankscope;

namespace {

std::vector<float> uniform(int64_t n, float scale, uint64_t stream) {
  std::vector<float> v(static_cast<size_t>(n));
  // splitmix64 is counter-based: every element's value depends on (seed, tensor, index) alone,
  // and blocks fill in parallel with the same result.
  const uint64_t base = splitmix64(stream);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = splitmix64(base + static_cast<uint64_t>(i));
    const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
    v[static_cast<size_t>(i)] = scale * (2.0f * u - 1.0f);
  }
  return v;
}

struct Pending {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  if (!f.flush()) fail("{}: cannot write", path.string());
}

void usage() {
  std::puts("usage: random_model --config CONFIG.json --out DIR [--tokenizer DIR] [--seed N] [--dtype bf16|f16|f32]");
}

}  // namespace

int main(int argc, char** argv) {
  fs::path config_path, out, tokenizer;
  uint64_t seed = 1;
  std::string dtype_name = "bf16";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "random_model: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--config") config_path = next();
    else if (a == "--out") out = next();
    else if (a == "--tokenizer") tokenizer = next();
    else if (a == "--seed") seed = std::stoull(next());
    else if (a == "--dtype") dtype_name = next();
    else if (a == "-h" || a == "--help") { usage(); return 0; }
    else { std::fprintf(stderr, "random_model: unknown argument '%s'\n", a.c_str()); usage(); return 2; }
  }
  if (config_path.empty() || out.empty()) { usage(); return 2; }
  try {
    if (fs::is_directory(config_path)) config_path /= "config.json";
    const DType dtype = dtype_name == "bf16" ? DType::bf16 : dtype_name == "f16" ? DType::f16 : DType::f32;
    if (dtype_name != "bf16" && dtype_name != "f16" && dtype_name != "f32") fail("--dtype: '{}' is not bf16, f16 or f32", dtype_name);
    nlohmann::json config = read_json_file(config_path);
    const ModelConfig c = read_model_config(config_path);
    if (c.arch != Arch::llama) fail("{}: not a Llama-family config ({})", config_path.string(), c.architecture);
    fs::create_directories(out);
    config["torch_dtype"] = dtype_name == "bf16" ? "bfloat16" : dtype_name == "f16" ? "float16" : "float32";
    write_text(out / "config.json", config.dump(2) + "\n");
    if (!tokenizer.empty()) {
      for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"}) {
        if (fs::exists(tokenizer / name)) fs::copy_file(tokenizer / name, out / name, fs::copy_options::overwrite_existing);
      }
    }
    uint64_t stream = seed << 20;
    auto lin = [&](const std::string& name, int64_t rows, int64_t cols) {
      return Pending{name, {rows, cols}, uniform(rows * cols, std::sqrt(3.0f / static_cast<float>(cols)), stream++)};
    };
    auto ones = [&](const std::string& name, int64_t n) {
      ++stream;
      return Pending{name, {n}, std::vector<float>(static_cast<size_t>(n), 1.0f)};
    };
    const int n_shards = static_cast<int>(c.n_layer) + 1;
    nlohmann::json index;
    index["metadata"] = {{"total_size", 0}};
    int64_t params = 0, bytes = 0;
    auto write_shard = [&](int s, std::vector<Pending> tensors) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n_shards);
      std::vector<TensorToWrite> w;
      for (const auto& t : tensors) {
        w.push_back({t.name, t.shape, std::span<const float>(t.values), dtype});
        index["weight_map"][t.name] = file;
        params += static_cast<int64_t>(t.values.size());
        bytes += static_cast<int64_t>(t.values.size()) * (dtype == DType::f32 ? 4 : 2);
      }
      write_safetensors(out / file, w, {{"format", "pt"}});
    };
    for (int l = 0; l < n_shards - 1; ++l) {
      const std::string p = fmt::format("model.layers.{}.", l);
      std::vector<Pending> t;
      t.push_back(ones(p + "input_layernorm.weight", c.n_embd));
      t.push_back(ones(p + "post_attention_layernorm.weight", c.n_embd));
      t.push_back(lin(p + "self_attn.q_proj.weight", c.n_embd_q(), c.n_embd));
      t.push_back(lin(p + "self_attn.k_proj.weight", c.n_embd_kv(), c.n_embd));
      t.push_back(lin(p + "self_attn.v_proj.weight", c.n_embd_kv(), c.n_embd));
      t.push_back(lin(p + "self_attn.o_proj.weight", c.n_embd, c.n_embd_q()));
      t.push_back(lin(p + "mlp.gate_proj.weight", c.n_ff, c.n_embd));
      t.push_back(lin(p + "mlp.up_proj.weight", c.n_ff, c.n_embd));
      t.push_back(lin(p + "mlp.down_proj.weight", c.n_embd, c.n_ff));
      write_shard(l, std::move(t));
      std::fprintf(stderr, "\rrandom_model: layer %d/%d", l + 1, n_shards - 1);
    }
    std::vector<Pending> t;
    t.push_back(Pending{"model.embed_tokens.weight", {c.n_vocab, c.n_embd}, uniform(c.n_vocab * c.n_embd, std::sqrt(3.0f), stream++)});
    t.push_back(ones("model.norm.weight", c.n_embd));
    if (!c.tie_embeddings) t.push_back(lin("lm_head.weight", c.n_vocab, c.n_embd));
    write_shard(n_shards - 1, std::move(t));
    index["metadata"]["total_size"] = bytes;
    write_text(out / "model.safetensors.index.json", index.dump(2) + "\n");
    std::fprintf(stderr, "\n");
    fmt::print("random_model: {} ({} layers, hidden {}, ffn {}, vocab {}): {} parameters, {:.2f} GB of {} in {}\n",
               config_path.string(), c.n_layer, c.n_embd, c.n_ff, c.n_vocab, params, static_cast<double>(bytes) / 1e9,
               dtype_name, out.string());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "random_model: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
