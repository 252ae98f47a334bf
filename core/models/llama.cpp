#include "core/models/llama.hpp"

#include <algorithm>
#include <cmath>

#include "core/base/error.hpp"
#include "core/compute/ops.hpp"

namespace rankscope {

namespace {

void check_ids(const Model& model, std::span<const std::vector<TokenId>> sequences) {
  for (const auto& seq : sequences) {
    if (seq.empty()) fail("empty token sequence");
    for (auto id : seq) {
      if (id < 0 || id >= model.config.n_vocab) {
        fail("token id {} is outside the vocabulary [0, {})", id, model.config.n_vocab);
      }
    }
  }
}

// Makes room for n_total positions in every layer of the cache, keeping what it holds.
void reserve(Backend& be, KvCache& cache, const ModelConfig& c, int64_t n_total) {
  if (cache.k.empty()) {
    cache.k.assign(static_cast<size_t>(c.n_layer), Buffer());
    cache.v.assign(static_cast<size_t>(c.n_layer), Buffer());
  }
  for (size_t l = 0; l < cache.k.size(); ++l) {
    if (!cache.k[l].empty() && cache.k[l].rows() >= n_total) continue;
    const int64_t capacity = std::max({n_total, 2 * cache.k[l].rows(), cache.capacity_hint});
    if (cache.k[l].empty()) {
      cache.k[l] = be.buffer(capacity, c.n_embd_kv(), Precision::compute);
      cache.v[l] = be.buffer(capacity, c.n_embd_kv(), Precision::compute);
      continue;
    }
    be.grow_rows(cache.k[l], capacity);
    be.grow_rows(cache.v[l], capacity);
  }
}

}  // namespace

Buffer llama_logits(const Model& model, std::span<const std::vector<TokenId>> sequences,
                    std::span<KvCache> caches, const LlamaOptions& options) {
  const auto& c = model.config;
  const auto& w = model.weights;
  if (c.arch != Arch::llama) fail("{}: llama_forward on a {} model", model.dir.string(), c.architecture);
  if (!model.has_weights) fail("{}: shapes-only model (no weights) cannot run", model.dir.string());
  RS_ASSERT(caches.empty() || caches.size() == sequences.size());
  RS_ASSERT(caches.empty() || options.layers < 0);  // a cache holds every layer
  check_ids(model, sequences);
  Backend& be = model.runtime();

  // Row offsets of each sequence in the concatenated batch and each token's position.
  SequenceLayout layout;
  layout.offset.assign(sequences.size() + 1, 0);
  std::vector<TokenId> ids;
  for (size_t s = 0; s < sequences.size(); ++s) {
    layout.offset[s + 1] = layout.offset[s] + static_cast<int64_t>(sequences[s].size());
    ids.insert(ids.end(), sequences[s].begin(), sequences[s].end());
  }
  const int64_t n_tokens = layout.n_rows();
  layout.positions.resize(static_cast<size_t>(n_tokens));
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int64_t n_past = caches.empty() ? 0 : caches[s].n_past;
    for (int64_t t = layout.offset[s]; t < layout.offset[s + 1]; ++t) {
      layout.positions[t] = n_past + (t - layout.offset[s]);
    }
    if (!caches.empty()) reserve(be, caches[s], c, n_past + layout.length(static_cast<int64_t>(s)));
  }
  be.rows_forwarded += n_tokens;
  const Rope rope(c.n_embd_head, c.rope_theta, c.rope_scaling, c.n_rot);
  const AttentionShape shape{.n_head = c.n_head, .n_head_kv = c.n_head_kv, .n_embd_head = c.n_embd_head, .causal = true};
  Mat host;  // hooks' copy of a device buffer
  auto hook = [&](HookSite site, int64_t layer, const Buffer& b) {
    if (options.hook != nullptr) (*options.hook)(site, layer, be.host_view(b, host));
    if (options.device_hook != nullptr) (*options.device_hook)(site, layer, b);
  };
  const int64_t n_blocks = options.layers < 0 ? c.n_layer : std::min(options.layers, c.n_layer);

  // x [n_tokens x n_embd]: the residual stream, fp32.
  Buffer x = be.buffer(n_tokens, c.n_embd, Precision::f32);
  be.embed(w.token_embd, ids, x, false);
  // Scratch buffers in the compute type, allocated once for all layers.
  Buffer h = be.buffer(n_tokens, c.n_embd, Precision::compute);
  Buffer q = be.buffer(n_tokens, c.n_embd_q(), Precision::compute);
  Buffer k = be.buffer(n_tokens, c.n_embd_kv(), Precision::compute);
  Buffer v = be.buffer(n_tokens, c.n_embd_kv(), Precision::compute);
  Buffer ctx = be.buffer(n_tokens, c.n_embd_q(), Precision::compute);
  Buffer gate = be.buffer(n_tokens, c.n_ff, Precision::compute);
  Buffer up = be.buffer(n_tokens, c.n_ff, Precision::compute);
  // A fused cell decomposed as a whole (Phi-3's qkv or gate_up) runs as one product whose output
  // columns are then its parts; each kind's buffer is made once, when a layer first needs it.
  Buffer fused_qkv, fused_gate_up;
  auto fused_linear = [&](const Linear& lin, const Buffer& in, Buffer& fused, std::initializer_list<Buffer*> parts) {
    if (fused.empty()) fused = be.buffer(n_tokens, lin.n_out(), Precision::compute);
    RS_ASSERT(fused.cols() == lin.n_out());
    be.linear(lin, in, fused, false);
    int64_t col = 0;
    for (Buffer* part : parts) {
      be.copy_columns(fused, col, *part);
      col += part->cols();
    }
    RS_ASSERT(col == lin.n_out());
  };
  for (int64_t l = 0; l < n_blocks; ++l) {
    const auto& layer = w.layers[static_cast<size_t>(l)];
    // Attention: h = RMSNorm(x); q, k, v = h Wq^T, h Wk^T, h Wv^T; RoPE on q and k.
    be.rms_norm(x, layer.attn_norm, c.norm_eps, h);                   // [n_tokens x n_embd]
    hook(HookSite::attn_in, l, h);
    if (!layer[MatrixKind::qkv].empty()) {
      fused_linear(layer[MatrixKind::qkv], h, fused_qkv, {&q, &k, &v});
    } else {
      be.linear(layer[MatrixKind::q], h, q, false);                    // [n_tokens x n_head*d]
      be.linear(layer[MatrixKind::k], h, k, false);                    // [n_tokens x n_head_kv*d]
      be.linear(layer[MatrixKind::v], h, v, false);
    }
    if (c.qk_norm) {  // Qwen3: RMSNorm of each head of q and k before RoPE
      be.head_rms_norm(q, c.n_head, layer.q_norm, c.norm_eps);
      be.head_rms_norm(k, c.n_head_kv, layer.k_norm, c.norm_eps);
    }
    be.rope(q, c.n_head, rope, layout);
    be.rope(k, c.n_head_kv, rope, layout);
    // ctx [n_tokens x n_head*d]: causal softmax(q k^T / sqrt(d)) v per sequence and head, over
    // the cached keys too.
    AttentionShape layer_shape = shape;
    layer_shape.window = c.window(l);
    be.attention(layer_shape, q, k, v, layout, caches, l, {}, ctx);
    hook(HookSite::attn_ctx, l, ctx);
    be.linear(layer[MatrixKind::o], ctx, x, true);                     // x += ctx Wo^T
    // MLP: h = RMSNorm(x); x += down(silu(gate(h)) * up(h)).
    be.rms_norm(x, layer.ffn_norm, c.norm_eps, h);
    hook(HookSite::ffn_in, l, h);
    if (!layer[MatrixKind::gate_up].empty()) {
      fused_linear(layer[MatrixKind::gate_up], h, fused_gate_up, {&gate, &up});
    } else {
      be.linear(layer[MatrixKind::gate], h, gate, false);              // [n_tokens x n_ff]
      be.linear(layer[MatrixKind::up], h, up, false);
    }
    be.gated_activation(gate, up, c.activation);
    hook(HookSite::ffn_act, l, gate);
    be.linear(layer[MatrixKind::down], gate, x, true);                 // x += act Wdown^T
    hook(HookSite::block_out, l, x);
  }
  if (!caches.empty()) {
    for (size_t s = 0; s < sequences.size(); ++s) caches[s].n_past += layout.length(static_cast<int64_t>(s));
  }
  if (options.layers >= 0) return {};

  // Final RMSNorm and logits = h W_out^T, fp32.
  if (options.last_logits_only) {
    std::vector<int64_t> last(sequences.size());
    for (size_t s = 0; s < sequences.size(); ++s) last[s] = layout.offset[s + 1] - 1;
    Buffer rows = be.buffer(static_cast<int64_t>(last.size()), c.n_embd, Precision::f32);
    be.gather_rows(x, last, rows);
    x = rows;
  }
  Buffer normed = be.buffer(x.rows(), c.n_embd, Precision::compute);
  be.rms_norm(x, w.output_norm, c.norm_eps, normed);
  Buffer logits = be.buffer(x.rows(), c.n_vocab, Precision::f32);    // [rows x n_vocab]
  be.linear(Linear::dense(w.output), normed, logits, false);
  return logits;
}

Mat llama_forward(const Model& model, std::span<const std::vector<TokenId>> sequences,
                  std::span<KvCache> caches, const LlamaOptions& options) {
  return model.runtime().download(llama_logits(model, sequences, caches, options));
}

std::vector<TokenId> llama_generate_greedy(const Model& model, const std::vector<TokenId>& prompt,
                                           int64_t n_new, bool stop_at_eos,
                                           const std::function<void(TokenId)>& on_token) {
  std::vector<TokenId> generated;
  std::vector<KvCache> cache(1);
  std::vector<std::vector<TokenId>> step = {prompt};
  const auto eos = model.config.eos_token_id;
  for (int64_t i = 0; i < n_new; ++i) {
    if (cache[0].n_past + static_cast<int64_t>(step[0].size()) > model.config.n_ctx_train) break;
    const Mat logits = llama_forward(model, step, cache, {.last_logits_only = true});
    Eigen::Index next = 0;
    logits.row(0).maxCoeff(&next);
    if (stop_at_eos && eos && next == *eos) break;
    generated.push_back(static_cast<TokenId>(next));
    if (on_token) on_token(static_cast<TokenId>(next));
    step[0] = {static_cast<TokenId>(next)};
  }
  return generated;
}

}  // namespace rankscope
