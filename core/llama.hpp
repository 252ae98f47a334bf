// The Llama forward pass (LlamaForCausalLM): token embeddings, per block RMSNorm -> grouped-query
// causal attention with RoPE -> residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm and
// logits. A batch holds sequences of different lengths; their tokens are concatenated so every
// weight product runs once for the whole batch (prefill), attention runs per (sequence, head).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/model.hpp"

namespace rankscope {

// Keys and values of one sequence's past tokens, so it can be continued (generation, shared
// contexts). Positions continue from n_past.
struct KvCache {
  std::vector<Mat> k;  // per layer [capacity x n_embd_kv]
  std::vector<Mat> v;
  int64_t n_past = 0;
};

struct LlamaOptions {
  bool last_logits_only = false;  // logits of each sequence's last token only
  const Hook* hook = nullptr;
};

// Runs `sequences` (each continuing its cache when `caches` is non-empty: one per sequence).
// Returns logits: [sum of lengths x n_vocab] in batch order, or [n_sequences x n_vocab] with
// last_logits_only. Throws Error for an out-of-vocabulary id or an empty sequence.
Mat llama_forward(const Model& model, std::span<const std::vector<TokenId>> sequences,
                  std::span<KvCache> caches = {}, const LlamaOptions& options = {});

// Greedy decoding with the KV cache: up to `n_new` argmax tokens after `prompt`, stopping before
// EOS when stop_at_eos and at the model's context length. `on_token` (optional) sees each new
// token as it is produced. Returns the new tokens.
std::vector<TokenId> llama_generate_greedy(const Model& model, const std::vector<TokenId>& prompt,
                                           int64_t n_new, bool stop_at_eos = true,
                                           const std::function<void(TokenId)>& on_token = {});

}  // namespace rankscope
