#include "core/models/bert.hpp"

#include <cmath>
#include <limits>

#include "core/base/error.hpp"

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

}  // namespace

BertOutput bert_forward(const Model& model, std::span<const BertInput> batch, const Hook* hook_fn,
                        const DeviceHook* device_hook) {
  const auto& c = model.config;
  const auto& w = model.weights;
  if (c.arch != Arch::bert) fail("{}: bert_forward on a {} model", model.dir.string(), c.architecture);
  if (!model.has_weights) fail("{}: shapes-only model (no weights) cannot run", model.dir.string());
  Backend& be = model.runtime();
  SequenceLayout layout;
  layout.offset.assign(batch.size() + 1, 0);
  std::vector<TokenId> ids, positions, types;
  std::vector<std::vector<uint8_t>> masks;
  for (size_t s = 0; s < batch.size(); ++s) {
    const auto& in = batch[s];
    check_input(model, in);
    layout.offset[s + 1] = layout.offset[s] + static_cast<int64_t>(in.ids.size());
    ids.insert(ids.end(), in.ids.begin(), in.ids.end());
    for (int64_t t = 0; t < static_cast<int64_t>(in.ids.size()); ++t) {
      positions.push_back(static_cast<TokenId>(t));
      types.push_back(in.type_ids.empty() ? 0 : in.type_ids[t]);
    }
    masks.push_back(in.attention_mask);
  }
  const int64_t n_tokens = layout.n_rows();
  const AttentionShape shape{.n_head = c.n_head, .n_head_kv = c.n_head_kv, .n_embd_head = c.n_embd_head, .causal = false};
  Mat host;  // hooks' copy of a device buffer
  auto hook = [&](HookSite site, int64_t layer, const Buffer& b) {
    if (hook_fn != nullptr) (*hook_fn)(site, layer, be.host_view(b, host));
    if (device_hook != nullptr) (*device_hook)(site, layer, b);
  };

  // x [n_tokens x n_embd] = LayerNorm(word[id] + position[t] + type[type_id]), fp32; xc is its
  // copy in the compute type, the input of the products.
  Buffer x = be.buffer(n_tokens, c.n_embd, Precision::f32);
  Buffer xc = be.buffer(n_tokens, c.n_embd, Precision::compute);
  be.embed(w.token_embd, ids, x, false);
  be.embed(w.pos_embd, positions, x, true);
  be.embed(w.type_embd, types, x, true);
  be.layer_norm(x, w.embd_norm, w.embd_norm_bias, c.norm_eps, &xc);
  Buffer q = be.buffer(n_tokens, c.n_embd_q(), Precision::compute);
  Buffer k = be.buffer(n_tokens, c.n_embd_kv(), Precision::compute);
  Buffer v = be.buffer(n_tokens, c.n_embd_kv(), Precision::compute);
  Buffer ctx = be.buffer(n_tokens, c.n_embd_q(), Precision::compute);
  Buffer inter = be.buffer(n_tokens, c.n_ff, Precision::compute);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const auto& layer = w.layers[static_cast<size_t>(l)];
    hook(HookSite::attn_in, l, xc);
    be.linear(layer[MatrixKind::q], xc, q, false);  // [n_tokens x n_embd]
    be.linear(layer[MatrixKind::k], xc, k, false);
    be.linear(layer[MatrixKind::v], xc, v, false);
    be.attention(shape, q, k, v, layout, {}, l, masks, ctx);
    hook(HookSite::attn_ctx, l, ctx);
    // x = LayerNorm(x + o(ctx))
    be.linear(layer[MatrixKind::o], ctx, x, true);
    be.layer_norm(x, layer.attn_norm, layer.attn_norm_bias, c.norm_eps, &xc);
    hook(HookSite::ffn_in, l, xc);
    // x = LayerNorm(x + down(gelu(up(x))))
    be.linear(layer[MatrixKind::up], xc, inter, false);  // [n_tokens x n_ff]
    be.activation(inter, c.activation);
    hook(HookSite::ffn_act, l, inter);
    be.linear(layer[MatrixKind::down], inter, x, true);
    be.layer_norm(x, layer.ffn_norm, layer.ffn_norm_bias, c.norm_eps, &xc);
    hook(HookSite::block_out, l, x);
  }
  BertOutput out;
  const auto n_seq = static_cast<int64_t>(batch.size());
  Buffer pooled;
  if (!w.pooler.empty()) {
    // pooled [n_sequences x n_embd] = tanh(W h[CLS] + b), h[CLS] the first token of each sequence.
    Buffer first = be.buffer(n_seq, c.n_embd, Precision::compute);
    be.gather_rows(xc, std::span(layout.offset).first(batch.size()), first);
    pooled = be.buffer(n_seq, c.n_embd, Precision::compute);
    be.linear(w.pooler, first, pooled, false);
    be.tanh(pooled);
    out.pooled = be.download(pooled);
  }
  if (c.bert_head == BertHead::sequence_classification) {
    Buffer logits = be.buffer(n_seq, w.classifier.n_out(), Precision::f32);  // [n_sequences x n_labels]
    be.linear(w.classifier, pooled, logits, false);
    out.logits = be.download(logits);
  } else if (c.bert_head == BertHead::masked_lm) {
    Buffer t = be.buffer(n_tokens, c.n_embd, Precision::f32);
    Buffer tc = be.buffer(n_tokens, c.n_embd, Precision::compute);
    be.linear(w.mlm_transform, xc, t, false);
    be.activation(t, c.activation);
    be.layer_norm(t, w.mlm_norm, w.mlm_norm_bias, c.norm_eps, &tc);
    Buffer logits = be.buffer(n_tokens, c.n_vocab, Precision::f32);  // [n_tokens x n_vocab]
    be.linear(Linear::dense(w.mlm_decoder, w.mlm_bias), tc, logits, false);
    out.logits = be.download(logits);
  }
  out.hidden = be.download(x);
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
