// The Llama forward pass (LlamaForCausalLM): token embeddings, per block RMSNorm -> grouped-query
// causal attention with RoPE -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm and
// logits. A batch holds sequences of different lengths; their tokens are concatenated so every
// weight product runs once for the whole batch (prefill), attention runs per (sequence, head).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/io/model.hpp"

namespace rankscope {

struct LlamaOptions {
  bool last_logits_only = false;  // logits of each sequence's last token only
  const Hook* hook = nullptr;
  const DeviceHook* device_hook = nullptr;
  // Run only the first `layers` blocks (hooks included) and return an empty buffer: no logits.
  // -1 = all blocks and the logits.
  int64_t layers = -1;
};

// Runs `sequences` on the model's backend (each continuing its cache when `caches` is non-empty:
// one per sequence; a cache's positions continue from its n_past). Returns logits on that
// backend: [sum of lengths x n_vocab] in batch order, or [n_sequences x n_vocab] with
// last_logits_only. Throws Error for an out-of-vocabulary id or an empty sequence.
Buffer llama_logits(const Model& model, std::span<const std::vector<TokenId>> sequences,
                    std::span<KvCache> caches = {}, const LlamaOptions& options = {});
// The same logits as a host matrix.
Mat llama_forward(const Model& model, std::span<const std::vector<TokenId>> sequences,
                  std::span<KvCache> caches = {}, const LlamaOptions& options = {});

// Greedy decoding with the KV cache: up to `n_new` argmax tokens after `prompt`, stopping before
// EOS when stop_at_eos and at the model's context length. `on_token` (optional) sees each new
// token as it is produced. Returns the new tokens.
std::vector<TokenId> llama_generate_greedy(const Model& model, const std::vector<TokenId>& prompt,
                                           int64_t n_new, bool stop_at_eos = true,
                                           const std::function<void(TokenId)>& on_token = {});

}  // namespace rankscope
