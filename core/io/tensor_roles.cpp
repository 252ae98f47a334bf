#include "core/io/tensor_roles.hpp"

#include <fmt/format.h>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

constexpr std::array<std::string_view, kNumMatrixKinds> kMatrixNames = {
    "q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up"};

// Module path of each matrix inside one block, per architecture ("{}" is the layer index).
std::string llama_matrix_module(MatrixKind kind) {
  switch (kind) {
    case MatrixKind::q: return "self_attn.q_proj";
    case MatrixKind::k: return "self_attn.k_proj";
    case MatrixKind::v: return "self_attn.v_proj";
    case MatrixKind::o: return "self_attn.o_proj";
    case MatrixKind::gate: return "mlp.gate_proj";
    case MatrixKind::up: return "mlp.up_proj";
    case MatrixKind::down: return "mlp.down_proj";
    case MatrixKind::qkv: return "self_attn.qkv_proj";
    case MatrixKind::gate_up: return "mlp.gate_up_proj";
  }
  return "";
}

// Module of a block matrix in a fused model: a fused cell is the fused tensor, a part of one is
// stored (when split) under the fused module: "self_attn.qkv_proj.q".
std::string fused_model_module(const ModelConfig& c, MatrixKind kind) {
  if (const auto group = fused_group(c, kind)) {
    return llama_matrix_module(*group) + "." + std::string(matrix_kind_name(kind));
  }
  return llama_matrix_module(kind);
}

std::string bert_matrix_module(MatrixKind kind) {
  switch (kind) {
    case MatrixKind::q: return "attention.self.query";
    case MatrixKind::k: return "attention.self.key";
    case MatrixKind::v: return "attention.self.value";
    case MatrixKind::o: return "attention.output.dense";
    case MatrixKind::up: return "intermediate.dense";
    case MatrixKind::down: return "output.dense";
    case MatrixKind::gate:
    case MatrixKind::qkv:
    case MatrixKind::gate_up: break;
  }
  return "";
}

bool matrix_has_bias(const ModelConfig& c, MatrixKind kind) {
  if (kind == MatrixKind::q || kind == MatrixKind::k || kind == MatrixKind::v) return c.qkv_bias || c.attention_bias;
  if (kind == MatrixKind::o) return c.attention_bias;
  return c.mlp_bias;
}

struct SpecList {
  std::vector<TensorSpec> specs;
  void add(Role role, int64_t layer, std::string name, std::vector<int64_t> shape,
           bool required = true, bool is_bias = false, std::optional<MatrixKind> matrix = {}) {
    specs.push_back({role, matrix, layer, is_bias, required, std::move(name), std::move(shape)});
  }
  // A linear module: weight [out, in] and, when present, bias [out].
  void linear(Role role, int64_t layer, const std::string& module, int64_t out, int64_t in,
              bool bias, bool required = true, std::optional<MatrixKind> matrix = {}) {
    add(role, layer, module + ".weight", {out, in}, required, false, matrix);
    if (bias) add(role, layer, module + ".bias", {out}, required, true, matrix);
  }
  // A LayerNorm: weight and bias [n].
  void layer_norm(Role role, int64_t layer, const std::string& module, int64_t n, bool required = true) {
    add(role, layer, module + ".weight", {n}, required);
    add(role, layer, module + ".bias", {n}, required, true);
  }
};

}  // namespace

std::pair<int64_t, int64_t> matrix_shape(const ModelConfig& c, MatrixKind kind) {
  switch (kind) {
    case MatrixKind::q: return {c.n_embd_q(), c.n_embd};
    case MatrixKind::k:
    case MatrixKind::v: return {c.n_embd_kv(), c.n_embd};
    case MatrixKind::o: return {c.n_embd, c.n_embd_q()};
    case MatrixKind::gate:
    case MatrixKind::up: return {c.n_ff, c.n_embd};
    case MatrixKind::down: return {c.n_embd, c.n_ff};
    case MatrixKind::qkv: return {c.n_embd_q() + 2 * c.n_embd_kv(), c.n_embd};
    case MatrixKind::gate_up: return {2 * c.n_ff, c.n_embd};
  }
  return {0, 0};
}

std::string llama_module(const ModelConfig& c, int64_t layer, MatrixKind kind) {
  return fmt::format("model.layers.{}.{}", layer, fused_model_module(c, kind));
}

bool is_fused_kind(MatrixKind kind) { return kind == MatrixKind::qkv || kind == MatrixKind::gate_up; }

std::vector<MatrixKind> fused_kinds(const ModelConfig& c) {
  if (!c.fused) return {};
  return {MatrixKind::qkv, MatrixKind::gate_up};
}

std::vector<MatrixKind> fused_parts(MatrixKind kind) {
  if (kind == MatrixKind::qkv) return {MatrixKind::q, MatrixKind::k, MatrixKind::v};
  if (kind == MatrixKind::gate_up) return {MatrixKind::gate, MatrixKind::up};
  return {kind};
}

std::optional<MatrixKind> fused_group(const ModelConfig& c, MatrixKind part) {
  if (!c.fused) return std::nullopt;
  if (part == MatrixKind::q || part == MatrixKind::k || part == MatrixKind::v) return MatrixKind::qkv;
  if (part == MatrixKind::gate || part == MatrixKind::up) return MatrixKind::gate_up;
  return std::nullopt;
}

int64_t fused_row_offset(const ModelConfig& c, MatrixKind part) {
  switch (part) {
    case MatrixKind::k: return c.n_embd_q();
    case MatrixKind::v: return c.n_embd_q() + c.n_embd_kv();
    case MatrixKind::up: return c.n_ff;
    default: return 0;
  }
}

std::string_view matrix_kind_name(MatrixKind kind) { return kMatrixNames[static_cast<size_t>(kind)]; }

std::optional<MatrixKind> matrix_kind_from_name(std::string_view name) {
  for (size_t i = 0; i < kNumMatrixKinds; ++i) {
    if (kMatrixNames[i] == name) return kAllMatrixKinds[i];
  }
  return std::nullopt;
}

std::vector<MatrixKind> matrix_kinds(Arch arch) {
  if (arch == Arch::llama) {
    return {MatrixKind::q, MatrixKind::k, MatrixKind::v, MatrixKind::o, MatrixKind::gate, MatrixKind::up, MatrixKind::down};
  }
  return {MatrixKind::q, MatrixKind::k, MatrixKind::v, MatrixKind::o, MatrixKind::up, MatrixKind::down};
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& c, const std::string& bert_prefix) {
  SpecList s;
  if (c.arch == Arch::llama) {
    s.add(Role::token_embd, -1, "model.embed_tokens.weight", {c.n_vocab, c.n_embd});
    for (int64_t l = 0; l < c.n_layer; ++l) {
      const auto block = fmt::format("model.layers.{}.", l);
      s.add(Role::attn_norm, l, block + "input_layernorm.weight", {c.n_embd});
      for (auto kind : matrix_kinds(c.arch)) {
        if (kind == MatrixKind::gate) s.add(Role::ffn_norm, l, block + "post_attention_layernorm.weight", {c.n_embd});
        if (const auto group = fused_group(c, kind)) {
          // Phi-3: the fused tensor (no biases), then its parts as rankscope writes them split.
          if (fused_parts(*group).front() == kind) {
            const auto [fout, fin] = matrix_shape(c, *group);
            s.linear(Role::matrix, l, block + llama_matrix_module(*group), fout, fin, false, true, *group);
          }
          const auto [out, in] = matrix_shape(c, kind);
          s.linear(Role::matrix, l, block + fused_model_module(c, kind), out, in, false, false, kind);
          continue;
        }
        const auto [out, in] = matrix_shape(c, kind);
        s.linear(Role::matrix, l, block + llama_matrix_module(kind), out, in, matrix_has_bias(c, kind),
                 true, kind);
        if (kind == MatrixKind::k && c.qk_norm) {
          s.add(Role::q_norm, l, block + "self_attn.q_norm.weight", {c.n_embd_head});
          s.add(Role::k_norm, l, block + "self_attn.k_norm.weight", {c.n_embd_head});
        }
      }
    }
    s.add(Role::output_norm, -1, "model.norm.weight", {c.n_embd});
    s.add(Role::output, -1, "lm_head.weight", {c.n_vocab, c.n_embd}, !c.tie_embeddings);
    return std::move(s.specs);
  }

  const auto& p = bert_prefix;
  s.add(Role::token_embd, -1, p + "embeddings.word_embeddings.weight", {c.n_vocab, c.n_embd});
  s.add(Role::pos_embd, -1, p + "embeddings.position_embeddings.weight", {c.n_ctx_train, c.n_embd});
  s.add(Role::type_embd, -1, p + "embeddings.token_type_embeddings.weight", {c.n_type_vocab, c.n_embd});
  s.layer_norm(Role::embd_norm, -1, p + "embeddings.LayerNorm", c.n_embd);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const auto block = fmt::format("{}encoder.layer.{}.", p, l);
    for (auto kind : matrix_kinds(c.arch)) {
      const auto [out, in] = matrix_shape(c, kind);
      s.linear(Role::matrix, l, block + bert_matrix_module(kind), out, in, true, true, kind);
      if (kind == MatrixKind::o) s.layer_norm(Role::attn_out_norm, l, block + "attention.output.LayerNorm", c.n_embd);
      if (kind == MatrixKind::down) s.layer_norm(Role::ffn_out_norm, l, block + "output.LayerNorm", c.n_embd);
    }
  }
  switch (c.bert_head) {
    case BertHead::none:
      s.linear(Role::pooler, -1, p + "pooler.dense", c.n_embd, c.n_embd, true, false);
      break;
    case BertHead::sequence_classification:
      s.linear(Role::pooler, -1, p + "pooler.dense", c.n_embd, c.n_embd, true);
      s.linear(Role::classifier, -1, "classifier", static_cast<int64_t>(c.labels.size()), c.n_embd, true);
      break;
    case BertHead::masked_lm:
      s.linear(Role::mlm_transform, -1, "cls.predictions.transform.dense", c.n_embd, c.n_embd, true);
      s.layer_norm(Role::mlm_norm, -1, "cls.predictions.transform.LayerNorm", c.n_embd);
      s.add(Role::mlm_decoder, -1, "cls.predictions.decoder.weight", {c.n_vocab, c.n_embd}, false);
      s.add(Role::mlm_bias, -1, "cls.predictions.bias", {c.n_vocab});
      break;
  }
  return std::move(s.specs);
}

std::vector<MatrixInfo> decomposable_matrices(const ModelConfig& c) {
  std::vector<MatrixInfo> out;
  for (const auto& spec : expected_tensors(c)) {
    if (spec.role != Role::matrix || spec.is_bias || is_fused_kind(*spec.matrix)) continue;
    out.push_back({spec.layer, *spec.matrix, spec.shape[0], spec.shape[1], spec.name});
  }
  return out;
}

std::vector<MatrixInfo> fused_matrices(const ModelConfig& c) {
  std::vector<MatrixInfo> out;
  if (!c.fused) return out;
  for (const auto& spec : expected_tensors(c)) {
    if (spec.role != Role::matrix || spec.is_bias || !is_fused_kind(*spec.matrix)) continue;
    out.push_back({spec.layer, *spec.matrix, spec.shape[0], spec.shape[1], spec.name});
  }
  return out;
}

int64_t config_param_count(const ModelConfig& c) {
  int64_t total = 0;
  for (const auto& spec : expected_tensors(c)) {
    // Optional tensors: a bare BertModel counts its pooler (transformers adds one by default);
    // tied heads count once, through the embeddings.
    const bool counted = spec.required || spec.role == Role::pooler;
    if (!counted) continue;
    // read_model_config bounds every dimension so that this cannot overflow; checked anyway, as
    // a config built in code is not validated.
    int64_t n = 1;
    for (auto d : spec.shape) {
      if (d < 0 || __builtin_mul_overflow(n, d, &n)) fail("{}: tensor '{}' is too large", c.source.string(), spec.name);
    }
    if (__builtin_add_overflow(total, n, &total)) fail("{}: the parameter count overflows", c.source.string());
  }
  return total;
}

}  // namespace rankscope
