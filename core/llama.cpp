#include "core/llama.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/gemm.hpp"
#include "core/ops.hpp"

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

void reserve(KvCache& cache, const ModelConfig& c, int64_t n_total) {
  if (cache.k.empty()) {
    cache.k.assign(static_cast<size_t>(c.n_layer), Mat());
    cache.v.assign(static_cast<size_t>(c.n_layer), Mat());
  }
  for (size_t l = 0; l < cache.k.size(); ++l) {
    if (cache.k[l].rows() >= n_total) continue;
    const int64_t capacity = std::max(n_total, 2 * cache.k[l].rows());
    cache.k[l].conservativeResize(capacity, c.n_embd_kv());
    cache.v[l].conservativeResize(capacity, c.n_embd_kv());
  }
}

// Queries are processed in blocks so that keys no query of a block can see are never touched:
// causal attention then costs about half of the full T x T products.
constexpr int64_t kQueryBlock = 64;

// Causal attention of one sequence, all heads: ctx rows [t0, t0+T) from q rows [t0, t0+T) and
// keys/values k, v [n_past+T x n_embd_kv] (row stride ld_kv).
void attend(const ModelConfig& c, const Mat& q, int64_t t0, int64_t n_tokens, int64_t n_past,
            const float* k, const float* v, int64_t ld_kv, Mat& ctx) {
  const int64_t d = c.n_embd_head;
  const int64_t group = c.n_head / c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t n_blocks = (n_tokens + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int64_t h = 0; h < c.n_head; ++h) {
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t kvh = h / group;
      const int64_t b0 = b * kQueryBlock;
      const int64_t nb = std::min(kQueryBlock, n_tokens - b0);
      const int64_t n_keys = n_past + b0 + nb;  // keys the block's last query sees
      Mat scores(nb, n_keys);
      // scores[nb x n_keys] = q_h k_h^T
      gemm_xwt(q.data() + (t0 + b0) * q.cols() + h * d, nb, d, k + kvh * d, n_keys, scores.data(), false,
               q.cols(), ld_kv, n_keys);
      for (int64_t t = 0; t < nb; ++t) {
        float* row = scores.row(t).data();
        const int64_t n_visible = n_past + b0 + t + 1;
        Eigen::Map<Eigen::ArrayXf>(row, n_visible) *= scale;
        softmax_rows_inplace(row, 1, n_visible, n_keys);
        std::fill(row + n_visible, row + n_keys, 0.0f);
      }
      // ctx_h[nb x d] = softmax(scores) v_h
      gemm_xb(scores.data(), nb, n_keys, v + kvh * d, d, ctx.data() + (t0 + b0) * ctx.cols() + h * d, false,
              n_keys, ld_kv, ctx.cols());
    }
  }
}

}  // namespace

Mat llama_forward(const Model& model, std::span<const std::vector<TokenId>> sequences,
                  std::span<KvCache> caches, const LlamaOptions& options) {
  const auto& c = model.config;
  const auto& w = model.weights;
  if (c.arch != Arch::llama) fail("{}: llama_forward on a {} model", model.dir.string(), c.architecture);
  if (!model.has_weights) fail("{}: shapes-only model (no weights) cannot run", model.dir.string());
  RS_ASSERT(caches.empty() || caches.size() == sequences.size());
  check_ids(model, sequences);

  // Token offsets of each sequence in the concatenated batch and each token's position.
  std::vector<int64_t> offset(sequences.size() + 1, 0);
  for (size_t s = 0; s < sequences.size(); ++s) {
    offset[s + 1] = offset[s] + static_cast<int64_t>(sequences[s].size());
  }
  const int64_t n_tokens = offset.back();
  std::vector<int64_t> positions(static_cast<size_t>(n_tokens));
  for (size_t s = 0; s < sequences.size(); ++s) {
    const int64_t n_past = caches.empty() ? 0 : caches[s].n_past;
    for (int64_t t = offset[s]; t < offset[s + 1]; ++t) positions[t] = n_past + (t - offset[s]);
    if (!caches.empty()) reserve(caches[s], c, n_past + (offset[s + 1] - offset[s]));
  }
  const Rope rope(c);
  auto hook = [&](HookSite site, int64_t layer, const Mat& x) {
    if (options.hook != nullptr) (*options.hook)(site, layer, x);
  };

  // x [n_tokens x n_embd]: the residual stream.
  Mat x(n_tokens, c.n_embd);
  for (size_t s = 0; s < sequences.size(); ++s) {
    for (int64_t t = offset[s]; t < offset[s + 1]; ++t) {
      x.row(t) = w.token_embd.matrix().row(sequences[s][t - offset[s]]);
    }
  }
  // Scratch buffers, allocated once for all layers.
  Mat h(n_tokens, c.n_embd), q(n_tokens, c.n_embd_q()), k(n_tokens, c.n_embd_kv()), v(n_tokens, c.n_embd_kv());
  Mat ctx(n_tokens, c.n_embd_q()), proj(n_tokens, c.n_embd), gate(n_tokens, c.n_ff), up(n_tokens, c.n_ff);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const auto& layer = w.layers[static_cast<size_t>(l)];
    // Attention: h = RMSNorm(x); q, k, v = h Wq^T, h Wk^T, h Wv^T; RoPE on q and k.
    rms_norm(x, layer.attn_norm, c.norm_eps, h);                      // [n_tokens x n_embd]
    hook(HookSite::attn_in, l, h);
    layer[MatrixKind::q].forward(h.data(), n_tokens, q.data());       // [n_tokens x n_head*d]
    layer[MatrixKind::k].forward(h.data(), n_tokens, k.data());       // [n_tokens x n_head_kv*d]
    layer[MatrixKind::v].forward(h.data(), n_tokens, v.data());
    rope.apply(q, c.n_head, positions);
    rope.apply(k, c.n_head_kv, positions);
    // ctx [n_tokens x n_head*d]: causal softmax(q k^T / sqrt(d)) v per sequence and head.
    for (size_t s = 0; s < sequences.size(); ++s) {
      const int64_t t0 = offset[s];
      const int64_t len = offset[s + 1] - t0;
      if (caches.empty()) {
        attend(c, q, t0, len, 0, k.data() + t0 * k.cols(), v.data() + t0 * v.cols(), k.cols(), ctx);
        continue;
      }
      auto& cache = caches[s];
      cache.k[l].middleRows(cache.n_past, len) = k.middleRows(t0, len);
      cache.v[l].middleRows(cache.n_past, len) = v.middleRows(t0, len);
      attend(c, q, t0, len, cache.n_past, cache.k[l].data(), cache.v[l].data(), c.n_embd_kv(), ctx);
    }
    hook(HookSite::attn_ctx, l, ctx);
    layer[MatrixKind::o].forward(ctx.data(), n_tokens, proj.data());  // [n_tokens x n_embd]
    x += proj;
    // MLP: h = RMSNorm(x); x += down(silu(gate(h)) * up(h)).
    rms_norm(x, layer.ffn_norm, c.norm_eps, h);
    hook(HookSite::ffn_in, l, h);
    layer[MatrixKind::gate].forward(h.data(), n_tokens, gate.data()); // [n_tokens x n_ff]
    layer[MatrixKind::up].forward(h.data(), n_tokens, up.data());
    gated_activation_inplace(gate, up, c.activation);
    hook(HookSite::ffn_act, l, gate);
    layer[MatrixKind::down].forward(gate.data(), n_tokens, proj.data());  // [n_tokens x n_embd]
    x += proj;
    hook(HookSite::block_out, l, x);
  }
  if (!caches.empty()) {
    for (size_t s = 0; s < sequences.size(); ++s) caches[s].n_past += offset[s + 1] - offset[s];
  }

  // Final RMSNorm and logits = h W_out^T.
  if (options.last_logits_only) {
    Mat last(static_cast<int64_t>(sequences.size()), c.n_embd);
    for (size_t s = 0; s < sequences.size(); ++s) last.row(static_cast<int64_t>(s)) = x.row(offset[s + 1] - 1);
    x.swap(last);
  }
  rms_norm(x, w.output_norm, c.norm_eps, h);
  Mat logits(h.rows(), c.n_vocab);                                    // [rows x n_vocab]
  gemm_xwt(h.data(), h.rows(), c.n_embd, w.output.data, c.n_vocab, logits.data());
  return logits;
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
