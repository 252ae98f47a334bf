// A loaded model: its blueprint (ModelConfig), its weights (ModelWeights) and, when the checkpoint
// ships one, its tokenizer. Scratch state of a forward pass lives elsewhere (llama.hpp, bert.hpp).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/compute/backend.hpp"
#include "core/compute/linear.hpp"
#include "core/io/model_config.hpp"
#include "core/base/tensor.hpp"
#include "core/io/tensor_roles.hpp"
#include "core/tokenize/tokenizer.hpp"

namespace rankscope {

struct LayerWeights {
  // Indexed by MatrixKind; BERT leaves `gate` empty. A fused model (Phi-3) holds q, k, v (gate,
  // up) as dense views of the fused tensor's rows, or factored each, and `qkv` (`gate_up`) empty;
  // or, when the fused cell is decomposed as a whole, `qkv` factored and its parts empty.
  std::array<Linear, kNumMatrixKinds> linear;
  // Llama: input_layernorm (RMSNorm before attention). BERT: attention.output.LayerNorm.
  Tensor attn_norm, attn_norm_bias;
  // Llama: post_attention_layernorm (RMSNorm before the MLP). BERT: output.LayerNorm.
  Tensor ffn_norm, ffn_norm_bias;
  // Qwen3: per-head RMSNorm weights of q and k [head_dim].
  Tensor q_norm, k_norm;

  Linear& operator[](MatrixKind kind) { return linear[static_cast<size_t>(kind)]; }
  const Linear& operator[](MatrixKind kind) const { return linear[static_cast<size_t>(kind)]; }
};

// The dense weight of a fused cell (Phi-3's qkv or gate_up) from its parts, which must all be
// dense: a view of the checkpoint's fused tensor when the parts are its adjacent rows (as loaded),
// else their rows stacked into a new tensor. Its bias likewise (empty when the parts have none).
Tensor fused_dense_weight(const LayerWeights& layer, MatrixKind fused);
Tensor fused_dense_bias(const LayerWeights& layer, MatrixKind fused);
// True when a layer holds the parts of `fused` separately and one of them is factored: such a
// layer is written as its parts (MODULE.q, ...), not as the fused tensor.
bool stored_split(const LayerWeights& layer, MatrixKind fused);

struct ModelWeights {
  Tensor token_embd;                    // [n_vocab, n_embd]
  std::vector<LayerWeights> layers;     // [n_layer]
  // Llama
  Tensor output_norm;                   // [n_embd]
  Tensor output;                        // [n_vocab, n_embd]; shares token_embd's data when tied
  // BERT
  Tensor pos_embd, type_embd;           // [n_ctx_train, n_embd], [n_type_vocab, n_embd]
  Tensor embd_norm, embd_norm_bias;     // [n_embd]
  Linear pooler;                        // [n_embd -> n_embd], empty when the checkpoint has none
  Linear classifier;                    // [n_embd -> n_labels]
  Linear mlm_transform;                 // [n_embd -> n_embd]
  Tensor mlm_norm, mlm_norm_bias;       // [n_embd]
  Tensor mlm_decoder;                   // [n_vocab, n_embd]; shares token_embd's data when tied
  Tensor mlm_bias;                      // [n_vocab]
};

struct Model {
  ModelConfig config;
  std::filesystem::path dir;            // the checkpoint directory
  bool has_weights = false;             // false: shapes only (config.json alone)
  ModelWeights weights;
  std::shared_ptr<const Tokenizer> tokenizer;  // null when the checkpoint ships no tokenizer files
  std::string storage_dtype;            // e.g. "F32", "BF16" (computed in fp32 either way)
  std::vector<std::filesystem::path> weight_files;
  std::vector<std::string> ignored_tensors;  // in the checkpoint but unused (e.g. position_ids)
  std::string bert_prefix = "bert.";         // "" for a bare BertModel saved without it
  // Where forward passes run (null: the CPU). Models decomposed from this one share it, so the
  // weights they have in common stay resident on the device.
  std::shared_ptr<Backend> backend;

  Backend& runtime() const { return backend ? *backend : cpu_backend(); }

  // The tokenizer, or an Error saying this checkpoint has none.
  const Tokenizer& require_tokenizer() const;
  // Parameters of the model as it runs (factored linears counted by their factors; tied
  // embeddings once). For a shapes-only model, the count its config.json implies.
  int64_t n_params() const;
  // Parameters of the decomposable matrices (dense out*in or their factors; no biases).
  int64_t n_decomposable_params() const;
  // Every tensor of the model under its checkpoint name, in load order; a factored matrix appears
  // as MODULE.U, MODULE.core (tucker), MODULE.V instead of MODULE.weight. Tied heads are omitted.
  std::vector<std::pair<std::string, Tensor>> named_tensors() const;
};

struct LoadOptions {
  bool weights = true;    // false: read config.json (and tokenizer) only
  bool tokenizer = true;
};

// Loads a Hugging Face model directory (config.json + model.safetensors, or
// model.safetensors.index.json and its shards), or a bare config.json (shapes only). Every
// tensor is checked against config.json (presence, shape, dtype). Throws Error naming the file
// and the problem.
Model load_model(const std::filesystem::path& path, const LoadOptions& options = {});

// Hook points of the forward passes, in order within a block. Each receives the activations of
// every token in the batch (sequences concatenated), [n_tokens x width].
enum class HookSite {
  attn_in,   // input of q/k/v (Llama: after RMSNorm; BERT: block input)
  attn_ctx,  // input of o (attention output before projection)
  ffn_in,    // input of gate/up
  ffn_act,   // input of down (after the activation)
  block_out, // residual stream leaving the block
};
std::string hook_name(HookSite site, int64_t layer);  // "blk.3.ffn_act"
using Hook = std::function<void(HookSite site, int64_t layer, const Mat& activations)>;
// The same on the backend's device: the activations stay there (calibration statistics).
using DeviceHook = std::function<void(HookSite site, int64_t layer, const Buffer& activations)>;

}  // namespace rankscope
