#include "core/bert.hpp"

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/ops.hpp"

namespace rankscope {

namespace {

void check_input(const Model& model, const BertInput& in) {
  const auto& c = model.config;
  const auto n = static_cast<int64_t>(in.ids.size());
  if (n == 0) fail("empty token sequence");
  if (n > c.n_ctx_train) fail("sequence of {} tokens exceeds max_position_embeddings {}", n, c.n_ctx_train);
  if (!in.type_ids.empty() && static_cast<int64_t>(in.type_ids.size()) != n) {
    fail("{} token type ids for {} tokens", in.type_ids.size(), n);
  }
  if (!in.attention_mask.empty() && static_cast<int64_t>(in.attention_mask.size()) != n) {
    fail("attention mask of length {} for {} tokens", in.attention_mask.size(), n);
  }
  for (auto id : in.ids) {
    if (id < 0 || id >= c.n_vocab) fail("token id {} is outside the vocabulary [0, {})", id, c.n_vocab);
  }
  for (auto id : in.type_ids) {
    if (id < 0 || id >= c.n_type_vocab) fail("token type id {} is outside [0, {})", id, c.n_type_vocab);
  }
}

// Bidirectional attention of one sequence, all heads; masked keys get the most negative float
// added, as transformers does, so a fully masked row stays finite.
void attend(const ModelConfig& c, const Mat& q, const Mat& k, const Mat& v, int64_t t0, int64_t n,
            const std::vector<uint8_t>& mask, Mat& ctx) {
  const int64_t d = c.n_embd_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const float masked = std::numeric_limits<float>::lowest();
#pragma omp parallel for schedule(dynamic)
  for (int64_t h = 0; h < c.n_head; ++h) {
    Mat scores(n, n);
    gemm_xwt(q.data() + t0 * q.cols() + h * d, n, d, k.data() + t0 * k.cols() + h * d, n,
             scores.data(), false, q.cols(), k.cols(), n);
    scores *= scale;
    if (!mask.empty()) {
      for (int64_t j = 0; j < n; ++j) {
        if (mask[j] == 0) scores.col(j).array() += masked;
      }
    }
    softmax_rows_inplace(scores.data(), n, n, n);
    gemm_xb(scores.data(), n, n, v.data() + t0 * v.cols() + h * d, d, ctx.data() + t0 * ctx.cols() + h * d,
            false, n, v.cols(), ctx.cols());
  }
}

}  // namespace

BertOutput bert_forward(const Model& model, std::span<const BertInput> batch, const Hook* hook_fn) {
  const auto& c = model.config;
  const auto& w = model.weights;
  if (c.arch != Arch::bert) fail("{}: bert_forward on a {} model", model.dir.string(), c.architecture);
  if (!model.has_weights) fail("{}: shapes-only model (no weights) cannot run", model.dir.string());
  std::vector<int64_t> offset(batch.size() + 1, 0);
  for (size_t s = 0; s < batch.size(); ++s) {
    check_input(model, batch[s]);
    offset[s + 1] = offset[s] + static_cast<int64_t>(batch[s].ids.size());
  }
  const int64_t n_tokens = offset.back();
  auto hook = [&](HookSite site, int64_t layer, const Mat& x) {
    if (hook_fn != nullptr) (*hook_fn)(site, layer, x);
  };

  // x [n_tokens x n_embd] = LayerNorm(word[id] + position[t] + type[type_id]).
  Mat x(n_tokens, c.n_embd);
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& in = batch[s];
    for (int64_t t = 0; t < static_cast<int64_t>(in.ids.size()); ++t) {
      const TokenId type = in.type_ids.empty() ? 0 : in.type_ids[t];
      x.row(offset[s] + t) = w.token_embd.matrix().row(in.ids[t]) + w.pos_embd.matrix().row(t) +
                             w.type_embd.matrix().row(type);
    }
  }
  layer_norm_inplace(x, w.embd_norm, w.embd_norm_bias, c.norm_eps);

  Mat q, k, v, ctx(n_tokens, c.n_embd), proj, inter;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const auto& layer = w.layers[static_cast<size_t>(l)];
    hook(HookSite::attn_in, l, x);
    q = layer[MatrixKind::q].forward(x);  // [n_tokens x n_embd]
    k = layer[MatrixKind::k].forward(x);
    v = layer[MatrixKind::v].forward(x);
    for (size_t s = 0; s < batch.size(); ++s) {
      attend(c, q, k, v, offset[s], offset[s + 1] - offset[s], batch[s].attention_mask, ctx);
    }
    hook(HookSite::attn_ctx, l, ctx);
    // x = LayerNorm(x + o(ctx))
    proj = layer[MatrixKind::o].forward(ctx);
    x += proj;
    layer_norm_inplace(x, layer.attn_norm, layer.attn_norm_bias, c.norm_eps);
    hook(HookSite::ffn_in, l, x);
    // x = LayerNorm(x + down(gelu(up(x))))
    inter = layer[MatrixKind::up].forward(x);  // [n_tokens x n_ff]
    activation_inplace(inter, c.activation);
    hook(HookSite::ffn_act, l, inter);
    proj = layer[MatrixKind::down].forward(inter);
    x += proj;
    layer_norm_inplace(x, layer.ffn_norm, layer.ffn_norm_bias, c.norm_eps);
    hook(HookSite::block_out, l, x);
  }

  BertOutput out;
  if (!w.pooler.empty()) {
    // pooled [n_sequences x n_embd] = tanh(W h[CLS] + b), h[CLS] the first token of each sequence.
    Mat first(static_cast<int64_t>(batch.size()), c.n_embd);
    for (size_t s = 0; s < batch.size(); ++s) first.row(static_cast<int64_t>(s)) = x.row(offset[s]);
    out.pooled = w.pooler.forward(first);
    out.pooled = out.pooled.array().tanh();
  }
  if (c.bert_head == BertHead::sequence_classification) {
    out.logits = w.classifier.forward(out.pooled);  // [n_sequences x n_labels]
  } else if (c.bert_head == BertHead::masked_lm) {
    Mat t = w.mlm_transform.forward(x);
    activation_inplace(t, c.activation);
    layer_norm_inplace(t, w.mlm_norm, w.mlm_norm_bias, c.norm_eps);
    out.logits.resize(n_tokens, c.n_vocab);  // [n_tokens x n_vocab]
    gemm_xwt(t.data(), n_tokens, c.n_embd, w.mlm_decoder.data, c.n_vocab, out.logits.data());
    out.logits.rowwise() += w.mlm_bias.vector().transpose();
  }
  out.hidden = std::move(x);
  return out;
}

BertInput bert_encode(const Tokenizer& tokenizer, std::string_view a, std::string_view b, int64_t max_len) {
  const auto& sp = tokenizer.special();
  if (!sp.cls || !sp.sep) fail("{}: tokenizer has no [CLS]/[SEP] tokens", tokenizer.source().string());
  auto ids_a = tokenizer.encode(a);
  std::vector<TokenId> ids_b;
  const bool pair = !b.empty();
  if (pair) ids_b = tokenizer.encode(b);
  const int64_t specials = pair ? 3 : 2;
  while (static_cast<int64_t>(ids_a.size() + ids_b.size()) + specials > max_len && !(ids_a.empty() && ids_b.empty())) {
    if (ids_a.size() > ids_b.size()) {
      ids_a.pop_back();
    } else {
      ids_b.pop_back();
    }
  }
  BertInput in;
  in.ids.push_back(*sp.cls);
  in.ids.insert(in.ids.end(), ids_a.begin(), ids_a.end());
  in.ids.push_back(*sp.sep);
  in.type_ids.assign(in.ids.size(), 0);
  if (pair) {
    in.ids.insert(in.ids.end(), ids_b.begin(), ids_b.end());
    in.ids.push_back(*sp.sep);
    in.type_ids.resize(in.ids.size(), 1);
  }
  return in;
}

}  // namespace rankscope
