// SentencePiece `tokenizer.model` through Debian's libsentencepiece: the library is the
// reference implementation, so encoding and decoding are delegated to it entirely.
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

#include "core/base/error.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "core/tokenize/tokenizer_common.hpp"

namespace rankscope {

namespace {

// Library status messages may span lines; Error messages are one line.
std::string one_line(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::filesystem::path source,
                         std::unique_ptr<sentencepiece::SentencePieceProcessor> processor)
      : source_(std::move(source)), processor_(std::move(processor)) {
    const auto set_if_valid = [](std::optional<TokenId>& slot, int id) {
      if (id >= 0) slot = id;
    };
    set_if_valid(special_.bos, processor_->bos_id());
    set_if_valid(special_.eos, processor_->eos_id());
    set_if_valid(special_.unk, processor_->unk_id());
    set_if_valid(special_.pad, processor_->pad_id());
  }

  std::string kind() const override { return "sentencepiece"; }
  const std::filesystem::path& source() const override { return source_; }
  int32_t vocab_size() const override { return processor_->GetPieceSize(); }
  const SpecialTokens& special() const override { return special_; }

  // SentencePiece reads control-token text such as "<s>" as ordinary text, so parse_special
  // changes nothing; add_special_tokens adds BOS (what Llama's tokenizer does by default).
  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options) const override {
    std::vector<int> ids;
    const auto status = processor_->Encode(text, &ids);
    if (!status.ok()) {
      fail("{}: SentencePiece encode failed: {}", source_.string(), one_line(status.ToString()));
    }
    std::vector<TokenId> out;
    out.reserve(ids.size() + 1);
    if (options.add_special_tokens && special_.bos) out.push_back(*special_.bos);
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string decode(std::span<const TokenId> ids, const DecodeOptions& options) const override {
    std::vector<int> kept;
    kept.reserve(ids.size());
    for (TokenId id : ids) {
      check_id(id);
      // Control tokens decode to nothing in SentencePiece anyway; dropping them here also
      // keeps a pad id that is a normal piece in some models out of the text.
      if (options.skip_special && (id == special_.bos || id == special_.eos || id == special_.pad)) continue;
      kept.push_back(id);
    }
    std::string text;
    const auto status = processor_->Decode(kept, &text);
    if (!status.ok()) {
      fail("{}: SentencePiece decode failed: {}", source_.string(), one_line(status.ToString()));
    }
    return text;
  }

  std::string piece(TokenId id) const override {
    check_id(id);
    return processor_->IdToPiece(id);
  }

 private:
  void check_id(TokenId id) const {
    if (id < 0 || id >= vocab_size()) {
      fail("{}: token id {} out of range (vocabulary size {})", source_.string(), id, vocab_size());
    }
  }

  std::filesystem::path source_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  SpecialTokens special_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file) {
  require_regular_file(model_file);
  std::ifstream in(model_file, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", model_file.string());
  const std::string serialized((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
  if (serialized.empty()) fail("{}: empty file, not a SentencePiece model", model_file.string());

  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->LoadFromSerializedProto(serialized);
  if (!status.ok()) {
    // The library reports a failed protobuf parse as an internal error quoting its own source
    // line; say what it means instead.
    const std::string detail = one_line(status.ToString());
    if (detail.find("ParseFromArray") != std::string::npos) {
      fail("{}: not a SentencePiece model (does not parse as a SentencePiece ModelProto)",
           model_file.string());
    }
    fail("{}: not a SentencePiece model ({})", model_file.string(), detail);
  }
  if (processor->GetPieceSize() <= 0) {
    fail("{}: not a SentencePiece model (no pieces)", model_file.string());
  }
  return std::make_unique<SentencePieceTokenizer>(model_file, std::move(processor));
}

}  // namespace rankscope
