// The BERT forward pass (post-LN encoder): word + position + token-type embeddings -> LayerNorm;
// per block self-attention (padding keys masked) -> o -> residual -> LayerNorm, then
// up -> GELU -> down -> residual -> LayerNorm; pooler tanh(W h[CLS] + b) and whichever head the
// checkpoint has (sequence classifier or masked-LM decoder).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/io/model.hpp"

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

// [CLS] a [SEP] (b [SEP]) with token types 0 / 1, as BERT tokenizers encode a sentence (pair).
// Longer than `max_len`: tokens are cut from the end of the longer segment first (Hugging Face's
// "longest_first"). Throws Error when the tokenizer has no [CLS]/[SEP].
BertInput bert_encode(const Tokenizer& tokenizer, std::string_view a, std::string_view b, int64_t max_len);

BertOutput bert_forward(const Model& model, std::span<const BertInput> batch, const Hook* hook = nullptr,
                        const DeviceHook* device_hook = nullptr);

}  // namespace rankscope
