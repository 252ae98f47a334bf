// Tokenizers: text <-> token ids for the three forms real checkpoints ship.
//  - SentencePiece `tokenizer.model` (Llama 2), through libsentencepiece;
//  - Hugging Face `tokenizer.json` with a BPE model, either with byte fallback (what Llama 2
//    checkpoints converted by transformers ship) or byte-level (GPT-2, Llama 3, Qwen2.5/3,
//    Mistral-Nemo: ByteLevel and regex Split pre-tokenizers), or a WordPiece model (BERT);
//  - BERT WordPiece from `vocab.txt` (basic tokenizer: clean text, CJK split, lower-casing and
//    accent stripping, punctuation split; then greedy longest-match-first with "##").
//
// `encode(text)` adds no special tokens (no BOS, no [CLS]/[SEP]) and maps special-token text
// ("<|begin_of_text|>", "[SEP]") to its id; EncodeOptions changes either. All strings are UTF-8.
// Text that is not is read with each invalid byte as U+FFFD (before a regular expression: each
// maximal ill-formed sequence), except where the bytes themselves can be kept: byte fallback, and
// byte-level BPE without a regular expression.
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


// How `encode` treats special tokens; the defaults are `encode(text)`'s.
struct EncodeOptions {
  // Special tokens written in the text become their ids (the tokenizers library's default).
  // false: their text is tokenized like any other (its `encode_special_tokens = True`, for text
  // that must not inject control tokens). Non-special added tokens are matched either way.
  // SentencePiece never matches special-token text.
  bool parse_special = true;
  // The special tokens the model expects around a sequence, as the tokenizers library's
  // `add_special_tokens=True`: tokenizer.json's post-processor (Llama 3: BOS; BERT: [CLS] ...
  // [SEP]; GPT-2, Qwen: none); SentencePiece: BOS; vocab.txt: [CLS] ... [SEP].
  bool add_special_tokens = false;
};

struct DecodeOptions {
  // Leave out special tokens (BOS/EOS/CLS/SEP/PAD/MASK and tokenizer.json's special added
  // tokens), as `skip_special_tokens=True`; false keeps their text.
  bool skip_special = true;
};

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

  // "sentencepiece", "hf-bpe", "hf-bpe-byte-level", "wordpiece": for `info` and error messages.
  virtual std::string kind() const = 0;
  // The file this tokenizer was read from.
  virtual const std::filesystem::path& source() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual const SpecialTokens& special() const = 0;

  // Text to ids. Safe to call from several threads at once.
  virtual std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options) const = 0;
  // Text to ids, without any special token added (special-token text maps to its id).
  std::vector<TokenId> encode(std::string_view text) const { return encode(text, EncodeOptions{}); }
  // Ids to text. Throws Error for an id outside the vocabulary.
  virtual std::string decode(std::span<const TokenId> ids, const DecodeOptions& options) const = 0;
  // Ids to text, special tokens skipped.
  std::string decode(std::span<const TokenId> ids) const { return decode(ids, DecodeOptions{}); }
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
