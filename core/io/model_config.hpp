// The blueprint of a model: hyperparameters read from a Hugging Face config.json. No weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/compute/op_params.hpp"

namespace rankscope {

enum class Arch { llama, bert };

// Which head a BERT checkpoint carries (from its `architectures` entry).
enum class BertHead { none, sequence_classification, masked_lm };

// A matrix stored factored in a checkpoint written by `rankscope decompose` (config.json
// "rankscope": {"factored": {module: {"method", "rank"}}}; tensors MODULE.U, MODULE.core, MODULE.V).
struct FactoredMatrix {
  std::string method;  // "tucker" or "svd"
  int64_t rank = 0;
};

struct ModelConfig {
  std::filesystem::path source;   // the config.json it was read from
  Arch arch = Arch::llama;
  std::string architecture;       // as written, e.g. "LlamaForCausalLM"
  BertHead bert_head = BertHead::none;

  int64_t n_vocab = 0;
  int64_t n_embd = 0;             // hidden_size
  int64_t n_ff = 0;               // intermediate_size
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;          // == n_head without GQA
  int64_t n_embd_head = 0;        // head_dim
  int64_t n_ctx_train = 0;        // max_position_embeddings
  double norm_eps = 1e-5;         // rms_norm_eps (Llama) or layer_norm_eps (BERT)
  Activation activation = Activation::silu;
  std::string torch_dtype;        // declared storage type, informational

  // Llama
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_embeddings = false;
  bool attention_bias = false;   // biases on q, k, v and o
  bool qkv_bias = false;         // biases on q, k and v only (Qwen2); implied by attention_bias
  bool mlp_bias = false;
  bool qk_norm = false;          // Qwen3: RMSNorm of each head of q and k (q_norm, k_norm [head_dim]) before RoPE
  // Sliding-window attention: per layer, the keys a query sees (0 = all). Mistral: every layer
  // when sliding_window is set; Qwen2/3: the layers config.json's layer_types marks
  // sliding_attention (or, without layer_types, those from max_window_layers on when
  // use_sliding_window). A query at position p sees keys p - window < j <= p.
  std::vector<int64_t> layer_window;
  // Phi-3: q, k, v stored as one tensor (self_attn.qkv_proj) and gate, up as one (mlp.gate_up_proj).
  bool fused = false;
  // Rotary dimensions of each head (partial_rotary_factor x head_dim; Phi-3 and others may rotate
  // part of a head): the first n_rot of each head are rotated, the rest pass. 0 = the whole head.
  int64_t n_rot = 0;
  int64_t rotary_dims() const { return n_rot > 0 ? n_rot : n_embd_head; }
  int64_t window(int64_t layer) const {
    return layer_window.empty() ? 0 : layer_window[static_cast<size_t>(layer)];
  }

  // BERT
  int64_t n_type_vocab = 0;
  std::vector<std::string> labels;  // id2label in id order (sequence classification)

  // Written by rankscope decompose: the configuration applied and the matrices stored factored.
  std::string rankscope_config;
  std::map<std::string, FactoredMatrix> factored;  // by module name (weight name without ".weight")
  // Where it came from (written since 0.1.0's --format hf): the base model's path and content
  // hash, and the whole "rankscope" section as JSON text (calibration, svd backend, ...).
  std::string rankscope_base_path;
  std::string rankscope_base_hash;
  std::string rankscope_section;

  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;

  int64_t n_embd_q() const { return n_head * n_embd_head; }
  int64_t n_embd_kv() const { return n_head_kv * n_embd_head; }
  std::string arch_name() const { return arch == Arch::llama ? "llama" : "bert"; }
};

// Reads a config.json (or the config.json inside a directory). Throws Error naming the file for
// malformed JSON, an unknown architecture, or a missing or inconsistent hyperparameter.
ModelConfig read_model_config(const std::filesystem::path& path);

}  // namespace rankscope
