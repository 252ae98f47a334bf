#include "core/io/model_config.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"

namespace rankscope {

namespace {

using nlohmann::json;

constexpr const char* kSupported =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, BertModel, "
    "BertForSequenceClassification, BertForMaskedLM";

// Sane maxima of the hyperparameters, far above any real model (Llama 3.1 405B: hidden 16384,
// intermediate 53248, 126 layers, 128 heads, vocabulary 128256, context 131072) and small enough
// that every product of them the loader forms (shapes, parameter counts: at most
// 2^24 x 2^20 x 2^12 x 7) stays far below 2^63. A value beyond one is a corrupt file, refused
// before anything is sized with it.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxHidden = int64_t{1} << 18;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxLayers = int64_t{1} << 12;
constexpr int64_t kMaxHeads = int64_t{1} << 14;
constexpr int64_t kMaxHeadDim = int64_t{1} << 14;
constexpr int64_t kMaxPositions = int64_t{1} << 24;
constexpr int64_t kMaxTypeVocab = int64_t{1} << 16;
constexpr int64_t kMaxLabels = int64_t{1} << 16;

struct Reader {
  const json& j;
  std::string where;

  int64_t required_int(const char* key, int64_t max) const {
    if (!j.contains(key)) fail("{}: missing '{}'", where, key);
    return positive(key, j[key], max);
  }
  int64_t optional_int(const char* key, int64_t fallback, int64_t max) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    return positive(key, j[key], max);
  }
  int64_t positive(const char* key, const json& v, int64_t max) const {
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() <= 0) ||
        (v.is_number_unsigned() && v.get<uint64_t>() == 0)) {
      fail("{}: '{}' must be a positive integer, found {}", where, key, printable(v.dump()));
    }
    // Compared unsigned: a value above INT64_MAX must not wrap into range through get<int64_t>().
    if ((v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(max)) ||
        (!v.is_number_unsigned() && v.get<int64_t>() > max)) {
      fail("{}: '{}' is {}, above the sane maximum {}", where, key, printable(v.dump()), max);
    }
    return v.get<int64_t>();
  }
  double number(const json& obj, const char* key, double fallback) const {
    if (!obj.contains(key) || obj[key].is_null()) return fallback;
    if (!obj[key].is_number()) fail("{}: '{}' must be a number, found {}", where, key, printable(obj[key].dump()));
    const double v = obj[key].get<double>();
    if (!std::isfinite(v)) fail("{}: '{}' must be a finite number, found {}", where, key, printable(obj[key].dump()));
    return v;
  }
  // A number that must be positive (RoPE base and factors).
  double positive_number(const json& obj, const char* key, double fallback) const {
    const double v = number(obj, key, fallback);
    if (!(v > 0)) fail("{}: '{}' must be positive, found {}", where, key, v);
    return v;
  }
  bool boolean(const char* key, bool fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean()) fail("{}: '{}' must be true or false", where, key);
    return j[key].get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_string()) fail("{}: '{}' must be a string", where, key);
    return j[key].get<std::string>();
  }
  // Token ids may be null, an integer, or a list (Llama 3 lists several EOS ids: take the first).
  std::optional<int64_t> token_id(const char* key) const {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const json& v = j[key].is_array() && !j[key].empty() ? j[key][0] : j[key];
    if (!v.is_number_integer()) fail("{}: '{}' must be a token id", where, key);
    return v.get<int64_t>();
  }
};

Activation parse_activation(const std::string& name, const std::string& where) {
  if (name == "silu" || name == "swish") return Activation::silu;
  if (name == "gelu") return Activation::gelu_erf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::gelu_tanh;
  if (name == "relu") return Activation::relu;
  fail("{}: unsupported hidden_act '{}'", where, printable(name));
}

void read_rope(const Reader& r, ModelConfig& c) {
  const json& j = r.j;
  // transformers 5 writes rope_parameters; 4.x writes rope_theta and rope_scaling at top level.
  const json* params = j.contains("rope_parameters") && j["rope_parameters"].is_object()
                           ? &j["rope_parameters"] : nullptr;
  c.rope_theta = r.positive_number(j, "rope_theta", params ? r.positive_number(*params, "rope_theta", 10000.0) : 10000.0);
  // Partial rotary embedding (Phi-3, transformers 5 in rope_parameters, 4.x at top level): the
  // first int(head_dim x factor) dimensions of each head rotate, as transformers computes them.
  const double partial = r.positive_number(j, "partial_rotary_factor",
                                           params ? r.positive_number(*params, "partial_rotary_factor", 1.0) : 1.0);
  if (partial > 1.0) fail("{}: partial_rotary_factor {} is above 1", r.where, partial);
  const auto n_rot = static_cast<int64_t>(static_cast<double>(c.n_embd_head) * partial);
  if (n_rot < 2 || n_rot % 2 != 0) {
    fail("{}: partial_rotary_factor {} of head_dim {} gives {} rotary dimensions (must be even and at least 2)", r.where,
         partial, c.n_embd_head, n_rot);
  }
  c.n_rot = n_rot == c.n_embd_head ? 0 : n_rot;
  const json* scaling = j.contains("rope_scaling") && j["rope_scaling"].is_object()
                            ? &j["rope_scaling"] : params;
  if (scaling == nullptr) return;
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (scaling->contains(key) && (*scaling)[key].is_string()) type = (*scaling)[key];
  }
  if (type.empty() || type == "default") return;
  auto& s = c.rope_scaling;
  s.factor = r.positive_number(*scaling, "factor", 1.0);
  if (type == "linear") {
    s.kind = RopeScaling::Kind::linear;
  } else if (type == "llama3") {
    s.kind = RopeScaling::Kind::llama3;
    s.low_freq_factor = r.positive_number(*scaling, "low_freq_factor", 1.0);
    s.high_freq_factor = r.positive_number(*scaling, "high_freq_factor", 4.0);
    const double original = r.positive_number(*scaling, "original_max_position_embeddings", 8192);
    if (original > static_cast<double>(kMaxPositions)) {
      fail("{}: original_max_position_embeddings {} is above the sane maximum {}", r.where, original, kMaxPositions);
    }
    s.original_max_position = static_cast<int64_t>(original);
  } else {
    fail("{}: unsupported RoPE scaling type '{}' (supported: default, linear, llama3)", r.where, printable(type));
  }
}

// Which layers attend through a sliding window, and how wide (ModelConfig::layer_window).
void read_sliding_window(const Reader& r, ModelConfig& c) {
  const json& j = r.j;
  const int64_t window = r.optional_int("sliding_window", 0, kMaxPositions);
  std::vector<bool> sliding(static_cast<size_t>(c.n_layer), false);
  if (j.contains("layer_types") && !j["layer_types"].is_null()) {
    const json& types = j["layer_types"];
    if (!types.is_array() || types.size() != static_cast<size_t>(c.n_layer)) {
      fail("{}: 'layer_types' must list one type per layer ({})", r.where, c.n_layer);
    }
    for (size_t l = 0; l < types.size(); ++l) {
      if (types[l] == "sliding_attention") {
        sliding[l] = true;
      } else if (types[l] != "full_attention") {
        fail("{}: layer_types[{}] is {}, not full_attention or sliding_attention", r.where, l, printable(types[l].dump()));
      }
    }
  } else if (c.architecture == "MistralForCausalLM" || c.architecture == "Phi3ForCausalLM") {
    sliding.assign(sliding.size(), window > 0);
  } else if (c.architecture == "Qwen2ForCausalLM" || c.architecture == "Qwen3ForCausalLM") {
    if (r.boolean("use_sliding_window", false)) {
      const int64_t from = r.optional_int("max_window_layers", 28, kMaxLayers);  // transformers' default
      for (int64_t l = from; l < c.n_layer; ++l) sliding[static_cast<size_t>(l)] = true;
    }
  }
  if (std::find(sliding.begin(), sliding.end(), true) == sliding.end()) return;
  if (window == 0) fail("{}: layers use sliding_attention but 'sliding_window' is not set", r.where);
  c.layer_window.assign(static_cast<size_t>(c.n_layer), 0);
  for (size_t l = 0; l < sliding.size(); ++l) c.layer_window[l] = sliding[l] ? window : 0;
}

}  // namespace

ModelConfig read_model_config(const std::filesystem::path& path) {
  std::error_code ec;  // a path that cannot be examined (a link loop) is reported as not a config
  const auto file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  const std::string where = file.string();
  const auto status = std::filesystem::status(file, ec);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) fail("{}: not a regular file", where);
  if (!std::filesystem::is_regular_file(status)) fail("{}: cannot open (a model is a directory with config.json)", where);
  const json j = read_json_file(file);
  if (!j.is_object()) fail("{}: not a JSON object", where);

  ModelConfig c;
  c.source = file;
  const Reader r{j, where};
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    c.architecture = j["architectures"][0];
  } else {
    // Older configs name only the model type.
    const auto type = r.string("model_type", "");
    if (type == "llama") c.architecture = "LlamaForCausalLM";
    else if (type == "mistral") c.architecture = "MistralForCausalLM";
    else if (type == "qwen2") c.architecture = "Qwen2ForCausalLM";
    else if (type == "qwen3") c.architecture = "Qwen3ForCausalLM";
    else if (type == "phi3") c.architecture = "Phi3ForCausalLM";
    else if (type == "bert") c.architecture = "BertModel";
    else fail("{}: no 'architectures' entry and unknown model_type '{}' (supported: {})", where, printable(type), kSupported);
  }

  // The Llama family: one forward (core/models/llama.cpp), with each member's features as flags.
  if (c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM" ||
      c.architecture == "Qwen2ForCausalLM" || c.architecture == "Qwen3ForCausalLM" ||
      c.architecture == "Phi3ForCausalLM") {
    c.arch = Arch::llama;
  } else if (c.architecture == "BertModel") {
    c.arch = Arch::bert;
    c.bert_head = BertHead::none;
  } else if (c.architecture == "BertForSequenceClassification") {
    c.arch = Arch::bert;
    c.bert_head = BertHead::sequence_classification;
  } else if (c.architecture == "BertForMaskedLM") {
    c.arch = Arch::bert;
    c.bert_head = BertHead::masked_lm;
  } else {
    fail("{}: unknown architecture '{}' (supported: {})", where, printable(c.architecture), kSupported);
  }

  c.n_vocab = r.required_int("vocab_size", kMaxVocab);
  c.n_embd = r.required_int("hidden_size", kMaxHidden);
  c.n_ff = r.required_int("intermediate_size", kMaxIntermediate);
  c.n_layer = r.required_int("num_hidden_layers", kMaxLayers);
  c.n_head = r.required_int("num_attention_heads", kMaxHeads);
  c.n_head_kv = r.optional_int("num_key_value_heads", c.n_head, kMaxHeads);
  c.n_embd_head = r.optional_int("head_dim", c.n_embd / c.n_head, kMaxHeadDim);
  if (c.n_embd_head < 1) {
    fail("{}: hidden_size {} is smaller than num_attention_heads {} (no head_dim given)", where, c.n_embd, c.n_head);
  }
  c.n_ctx_train = r.optional_int("max_position_embeddings", 2048, kMaxPositions);
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", "float32"));
  c.bos_token_id = r.token_id("bos_token_id");
  c.eos_token_id = r.token_id("eos_token_id");
  c.pad_token_id = r.token_id("pad_token_id");
  if (c.n_head % c.n_head_kv != 0) {
    fail("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", where, c.n_head,
         c.n_head_kv);
  }
  if (c.n_embd_head % 2 != 0 && c.arch == Arch::llama) {
    fail("{}: head_dim {} must be even for RoPE", where, c.n_embd_head);
  }

  if (c.arch == Arch::llama) {
    c.norm_eps = r.number(j, "rms_norm_eps", 1e-6);
    c.activation = parse_activation(r.string("hidden_act", "silu"), where);
    c.tie_embeddings = r.boolean("tie_word_embeddings", false);
    c.attention_bias = r.boolean("attention_bias", false);
    c.mlp_bias = r.boolean("mlp_bias", false);
    if (c.architecture == "Qwen2ForCausalLM") c.qkv_bias = true;  // built in: q, k, v biased, o not
    c.qkv_bias = c.qkv_bias || c.attention_bias;
    c.qk_norm = c.architecture == "Qwen3ForCausalLM";
    if (c.architecture == "Phi3ForCausalLM") {
      // Phi3Attention and Phi3MLP build qkv_proj, o_proj, gate_up_proj and down_proj without biases.
      c.fused = true;
      c.attention_bias = c.qkv_bias = c.mlp_bias = false;
    }
    read_rope(r, c);
    read_sliding_window(r, c);
  } else {
    c.norm_eps = r.number(j, "layer_norm_eps", 1e-12);
    c.activation = parse_activation(r.string("hidden_act", "gelu"), where);
    c.n_type_vocab = r.optional_int("type_vocab_size", 2, kMaxTypeVocab);
    c.tie_embeddings = true;  // the MLM decoder is tied to the word embeddings when absent
    c.attention_bias = true;
    c.mlp_bias = true;
    const auto position_type = r.string("position_embedding_type", "absolute");
    if (position_type != "absolute") {
      fail("{}: unsupported position_embedding_type '{}' (only absolute)", where, printable(position_type));
    }
    if (c.n_embd_head * c.n_head != c.n_embd) {
      fail("{}: hidden_size {} is not num_attention_heads x head size", where, c.n_embd);
    }
    if (c.bert_head == BertHead::sequence_classification) {
      int64_t n_labels = r.optional_int("num_labels", 0, kMaxLabels);
      if (j.contains("id2label") && j["id2label"].is_object()) {
        n_labels = static_cast<int64_t>(j["id2label"].size());
        c.labels.assign(static_cast<size_t>(n_labels), "");
        for (const auto& [key, value] : j["id2label"].items()) {
          int64_t id = -1;
          const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
          if (ec != std::errc() || end != key.data() + key.size() || id < 0 || id >= n_labels || !value.is_string()) {
            fail("{}: bad id2label entry '{}'", where, printable(key));
          }
          c.labels[static_cast<size_t>(id)] = value;
        }
      }
      if (n_labels == 0) n_labels = 2;  // transformers' default
      if (c.labels.empty()) {
        for (int64_t i = 0; i < n_labels; ++i) c.labels.push_back("LABEL_" + std::to_string(i));
      }
    }
  }
  if (j.contains("rankscope") && j["rankscope"].is_object()) {
    const auto& rs = j["rankscope"];
    c.rankscope_config = rs.contains("config") && rs["config"].is_string() ? rs["config"].get<std::string>() : "";
    if (rs.contains("base_model") && rs["base_model"].is_object()) {
      const auto& b = rs["base_model"];
      if (b.contains("path") && b["path"].is_string()) c.rankscope_base_path = b["path"].get<std::string>();
      if (b.contains("hash") && b["hash"].is_string()) c.rankscope_base_hash = b["hash"].get<std::string>();
    }
    c.rankscope_section = rs.dump();
    if (rs.contains("factored") && rs["factored"].is_object()) {
      for (const auto& [module, f] : rs["factored"].items()) {
        if (!f.is_object() || !f.contains("method") || !f["method"].is_string() || !f.contains("rank") ||
            !f["rank"].is_number_integer() || f["rank"].get<int64_t>() <= 0 || f["rank"].get<int64_t>() > kMaxHidden ||
            (f["rank"].is_number_unsigned() && f["rank"].get<uint64_t>() > static_cast<uint64_t>(kMaxHidden)) ||
            (f["method"] != "tucker" && f["method"] != "svd")) {
          fail("{}: rankscope.factored entry '{}' needs a method (tucker or svd) and a positive rank", where, printable(module));
        }
        c.factored[module] = {f["method"].get<std::string>(), f["rank"].get<int64_t>()};
      }
    }
  }
  return c;
}

}  // namespace rankscope
