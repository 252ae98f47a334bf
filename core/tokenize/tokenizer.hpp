// Tokenizers: text <-> token ids for the three forms real checkpoints ship.
//  - SentencePiece `tokenizer.model` (Llama 2), through libsentencepiece;
//  - Hugging Face `tokenizer.json` with a BPE model and byte fallback (what Llama checkpoints
//    converted by transformers ship), or a WordPiece model (BERT);
//  - BERT WordPiece from `vocab.txt` (basic tokenizer: clean text, CJK split, lower-casing and
//    accent stripping, punctuation split; then greedy longest-match-first with "##").
//
// `encode` never adds special tokens (no BOS, no [CLS]/[SEP]); callers add what their model
// expects through the ids in `special()`. All strings are UTF-8.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/tensor.hpp"

namespace rankscope {


struct SpecialTokens {
  std::optional<TokenId> bos;
  std::optional<TokenId> eos;
  std::optional<TokenId> unk;
  std::optional<TokenId> pad;
  std::optional<TokenId> cls;
  std::optional<TokenId> sep;
  std::optional<TokenId> mask;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // "sentencepiece", "hf-bpe", "wordpiece": for `info` and error messages.
  virtual std::string kind() const = 0;
  // The file this tokenizer was read from.
  virtual const std::filesystem::path& source() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual const SpecialTokens& special() const = 0;

  // Text to ids, without any special token added.
  virtual std::vector<TokenId> encode(std::string_view text) const = 0;
  // Ids to text. Special tokens (BOS/EOS/CLS/SEP/PAD) are skipped.
  virtual std::string decode(std::span<const TokenId> ids) const = 0;
  // The vocabulary string of one id (e.g. "▁the", "##ing", "<0x0A>").
  virtual std::string piece(TokenId id) const = 0;
};

// Readers for each form. Each throws rankscope::Error naming the file when it is missing,
// unreadable, or a file of another kind (e.g. a tokenizer.json given as tokenizer.model).
std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file);
std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::filesystem::path& json_file);
// `lower_case` also strips accents, as BERT uncased does.
std::unique_ptr<Tokenizer> load_wordpiece_vocab(const std::filesystem::path& vocab_file,
                                                bool lower_case);

// The tokenizer of a model directory, or nullptr when it has none. Order of preference:
// tokenizer.model (SentencePiece), tokenizer.json, vocab.txt (lower-casing read from
// tokenizer_config.json's do_lower_case, default true). Throws Error if a file exists but
// cannot be read as what its name says.
std::unique_ptr<Tokenizer> find_tokenizer(const std::filesystem::path& model_dir);

}  // namespace rankscope
