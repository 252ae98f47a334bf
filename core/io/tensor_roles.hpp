// Tensor roles and the one table that maps them to checkpoint names (Hugging Face layout).
// Loading a model is a walk over `expected_tensors(config)`: each entry is created with its
// role, layer and shape, and validated against the checkpoint.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/io/model_config.hpp"

namespace rankscope {

// The weight matrices a configuration may decompose, in the paper's mask order
// (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj). BERT has no gate:
// q/k/v = attention.self.{query,key,value}, o = attention.output.dense,
// up = intermediate.dense, down = output.dense.
// Phi-3 stores q, k, v as one tensor (qkv_proj, rows q then k then v) and gate, up as one
// (gate_up_proj, rows gate then up). Those models have two more kinds, the fused cells `qkv` and
// `gate_up`: one matrix decomposed as a whole (one right factor shared by its parts). A layer holds
// a fused cell or its parts, never both. Every other model has the seven (BERT six) parts only.
enum class MatrixKind { q, k, v, o, gate, up, down, qkv, gate_up };
constexpr size_t kNumMatrixKinds = 9;
constexpr std::array<MatrixKind, kNumMatrixKinds> kAllMatrixKinds = {
    MatrixKind::q, MatrixKind::k, MatrixKind::v, MatrixKind::o,
    MatrixKind::gate, MatrixKind::up, MatrixKind::down, MatrixKind::qkv, MatrixKind::gate_up};

std::string_view matrix_kind_name(MatrixKind kind);  // "q", "k", ..., "down", "qkv", "gate_up"
std::optional<MatrixKind> matrix_kind_from_name(std::string_view name);
// The matrix kinds (parts) an architecture has, in mask order: Llama q..down, BERT without gate.
std::vector<MatrixKind> matrix_kinds(Arch arch);
// The fused cells of a model: {qkv, gate_up} where config.json stores them fused (Phi-3), else none.
std::vector<MatrixKind> fused_kinds(const ModelConfig& config);
bool is_fused_kind(MatrixKind kind);
// The parts of a fused kind in row order (qkv: q, k, v; gate_up: gate, up); {kind} for a part.
std::vector<MatrixKind> fused_parts(MatrixKind kind);
// The fused cell holding `part` in a fused model (q, k, v: qkv; gate, up: gate_up), or nullopt.
std::optional<MatrixKind> fused_group(const ModelConfig& config, MatrixKind part);
// Shape [out, in] of a block matrix of any kind (a fused cell: its parts stacked).
std::pair<int64_t, int64_t> matrix_shape(const ModelConfig& config, MatrixKind kind);
// Module path of a block matrix of a Llama-family model ("model.layers.3.self_attn.qkv_proj" for a
// fused cell; a part of a fused tensor as rankscope stores it split: "...qkv_proj.q").
std::string llama_module(const ModelConfig& config, int64_t layer, MatrixKind kind);
// First row of `part` inside its fused cell's tensor.
int64_t fused_row_offset(const ModelConfig& config, MatrixKind part);

enum class Role {
  token_embd,     // [n_vocab, n_embd]
  pos_embd,       // BERT [n_ctx_train, n_embd]
  type_embd,      // BERT [n_type_vocab, n_embd]
  embd_norm,      // BERT embeddings.LayerNorm
  attn_norm,      // Llama input_layernorm (pre-attention RMSNorm)
  q_norm,         // Qwen3 self_attn.q_norm [head_dim] (per-head RMSNorm of q)
  k_norm,         // Qwen3 self_attn.k_norm [head_dim]
  matrix,         // one of the decomposable MatrixKind linears
  attn_out_norm,  // BERT attention.output.LayerNorm (post-attention)
  ffn_norm,       // Llama post_attention_layernorm (pre-MLP RMSNorm)
  ffn_out_norm,   // BERT output.LayerNorm (post-MLP)
  output_norm,    // Llama model.norm
  output,         // Llama lm_head [n_vocab, n_embd] (absent when tied)
  pooler,         // BERT pooler.dense [n_embd, n_embd]
  classifier,     // BERT classifier [n_labels, n_embd]
  mlm_transform,  // BERT cls.predictions.transform.dense
  mlm_norm,       // BERT cls.predictions.transform.LayerNorm
  mlm_decoder,    // BERT cls.predictions.decoder [n_vocab, n_embd] (tied when absent)
  mlm_bias,       // BERT cls.predictions.bias [n_vocab]
};

struct TensorSpec {
  Role role = Role::token_embd;
  std::optional<MatrixKind> matrix;  // for Role::matrix
  int64_t layer = -1;                // -1 for tensors outside the blocks
  bool is_bias = false;
  bool required = true;              // false: loaded when present (tied heads, optional pooler)
  std::string name;                  // checkpoint name
  std::vector<int64_t> shape;
};

// Every tensor a checkpoint of `config` holds or may hold, in load order. `bert_prefix` is
// "bert." for BERT models with a head and "" for bare BertModel checkpoints saved without it.
// A fused model lists each fused tensor (required) followed by its parts (optional): rankscope
// writes a fused tensor as its parts (MODULE.q, MODULE.k, ...) when a part is factored, and the
// loader accepts either form.
std::vector<TensorSpec> expected_tensors(const ModelConfig& config, const std::string& bert_prefix = "bert.");

// One decomposable weight matrix of a model.
struct MatrixInfo {
  int64_t layer = 0;
  MatrixKind kind = MatrixKind::q;
  int64_t n_out = 0;
  int64_t n_in = 0;
  std::string name;  // checkpoint name of the weight
  int64_t n_params() const { return n_out * n_in; }
};
// The parts (matrix_kinds), layer-major in mask order. A part of a fused tensor is named as rankscope
// stores it split ("model.layers.0.self_attn.qkv_proj.q.weight").
std::vector<MatrixInfo> decomposable_matrices(const ModelConfig& config);
// The fused cells (fused_kinds), layer-major; named by the checkpoint's fused tensor. Empty for
// models without fused tensors.
std::vector<MatrixInfo> fused_matrices(const ModelConfig& config);

// Parameter count of a model as its config describes it (required tensors, plus optional ones
// `expected_tensors` marks as counted). Used for shapes-only models.
int64_t config_param_count(const ModelConfig& config);

}  // namespace rankscope
