// The BERT forward pass (post-LN encoder): word + position + token-type embeddings -> LayerNorm;
// per block self-attention (padding keys masked) -> o -> residual -> LayerNorm, then
// up -> GELU -> down -> residual -> LayerNorm; pooler tanh(W h[CLS] + b) and whichever head the
// checkpoint has (sequence classifier or masked-LM decoder).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/model.hpp"

namespace rankscope {

struct BertInput {
  std::vector<TokenId> ids;           // with [CLS] ... [SEP] already added
  std::vector<TokenId> type_ids;      // empty = all 0
  std::vector<uint8_t> attention_mask;  // empty = all 1; 0 marks padding keys
};

struct BertOutput {
  Mat hidden;  // [sum of lengths x n_embd] last hidden states, sequences concatenated
  Mat pooled;  // [n_sequences x n_embd] pooler output (empty when the checkpoint has no pooler)
  Mat logits;  // classifier: [n_sequences x n_labels]; masked LM: [sum of lengths x n_vocab]
};

BertOutput bert_forward(const Model& model, std::span<const BertInput> batch, const Hook* hook = nullptr);

}  // namespace rankscope
