// BERT WordPiece from vocab.txt, following Hugging Face's BertTokenizer: special-token strings
// are matched literally first, then the basic tokenizer (clean text, space out CJK ideographs,
// NFC, whitespace split, lower-case and strip accents, split off punctuation), then greedy
// longest-match-first WordPiece with "##" continuations.
#include <algorithm>
#include <array>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/base/error.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "core/tokenize/tokenizer_common.hpp"
#include "core/tokenize/unicode.hpp"

namespace rankscope {

namespace {

// BERT maps any word longer than this to [UNK] without trying to split it.
constexpr size_t kMaxCharsPerWord = 100;
constexpr std::string_view kContinuationPrefix = "##";
constexpr std::string_view kUnkToken = "[UNK]";
constexpr std::string_view kClsToken = "[CLS]";
constexpr std::string_view kSepToken = "[SEP]";
constexpr std::string_view kPadToken = "[PAD]";
constexpr std::string_view kMaskToken = "[MASK]";

using tokenizer_detail::find_id;
using tokenizer_detail::VocabMap;

// One line per token, id = line number. A trailing newline does not start another token.
std::vector<std::string> parse_vocab_lines(const std::filesystem::path& path,
                                           std::string_view content) {
  if (content.empty()) fail("{}: empty vocabulary file", path.string());
  if (content.find('\0') != std::string_view::npos) {
    fail("{}: binary data, not a WordPiece vocabulary (one token per line)", path.string());
  }
  for (size_t pos = 0; pos < content.size();) {
    const unicode::Utf8Char ch = unicode::decode_utf8(content, pos);
    if (!ch.valid) {
      fail("{}: invalid UTF-8 at byte {}, not a WordPiece vocabulary", path.string(), pos);
    }
    pos += ch.length;
  }
  std::vector<std::string> pieces;
  size_t start = 0;
  while (start < content.size()) {
    size_t end = content.find('\n', start);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pieces.emplace_back(line);
    start = end + 1;
  }
  return pieces;
}

class WordPieceTokenizer final : public Tokenizer {
 public:
  WordPieceTokenizer(std::filesystem::path source, std::vector<std::string> pieces,
                     bool lower_case)
      : source_(std::move(source)), pieces_(std::move(pieces)), lower_case_(lower_case) {
    for (size_t id = 0; id < pieces_.size(); ++id) {
      // Later lines win on duplicates, as in BertTokenizer's load_vocab.
      vocab_[pieces_[id]] = static_cast<TokenId>(id);
    }
    special_.unk = lookup(kUnkToken);
    special_.cls = lookup(kClsToken);
    special_.sep = lookup(kSepToken);
    special_.pad = lookup(kPadToken);
    special_.mask = lookup(kMaskToken);
    if (!special_.unk) {
      fail("{}: no {} token, not a WordPiece vocabulary", source_.string(), kUnkToken);
    }
    for (std::string_view name : {kUnkToken, kClsToken, kSepToken, kPadToken, kMaskToken}) {
      if (lookup(name)) literal_specials_.emplace_back(name);
    }
  }

  std::string kind() const override { return "wordpiece"; }
  const std::filesystem::path& source() const override { return source_; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  const SpecialTokens& special() const override { return special_; }

  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options) const override {
    std::vector<TokenId> ids;
    if (options.add_special_tokens && special_.cls) ids.push_back(*special_.cls);
    // Special-token strings in the raw text map to their ids before any normalization, as
    // BertTokenizer's added-token split does (case-sensitive: "[cls]" is ordinary text).
    size_t segment_start = 0;
    size_t pos = 0;
    while (options.parse_special && pos < text.size()) {
      const std::optional<std::string_view> special = special_at(text, pos);
      if (!special) {
        ++pos;
        continue;
      }
      encode_plain(text.substr(segment_start, pos - segment_start), ids);
      ids.push_back(vocab_.find(*special)->second);
      pos += special->size();
      segment_start = pos;
    }
    encode_plain(text.substr(segment_start), ids);
    if (options.add_special_tokens && special_.sep) ids.push_back(*special_.sep);
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, const DecodeOptions& options) const override {
    // BertTokenizer's convert_tokens_to_string: join with spaces, then glue "##" pieces.
    std::string joined;
    for (TokenId id : ids) {
      check_id(id);
      if (options.skip_special && is_skipped_special(id)) continue;
      if (!joined.empty()) joined.push_back(' ');
      joined += pieces_[static_cast<size_t>(id)];
    }
    std::string out;
    out.reserve(joined.size());
    const std::string glue = " " + std::string(kContinuationPrefix);
    for (size_t pos = 0; pos < joined.size();) {
      if (joined.compare(pos, glue.size(), glue) == 0) {
        pos += glue.size();
        continue;
      }
      out.push_back(joined[pos]);
      ++pos;
    }
    const size_t first = out.find_first_not_of(' ');
    if (first == std::string::npos) return {};
    const size_t last = out.find_last_not_of(' ');
    return out.substr(first, last - first + 1);
  }

  std::string piece(TokenId id) const override {
    check_id(id);
    return pieces_[static_cast<size_t>(id)];
  }

 private:
  std::optional<TokenId> lookup(std::string_view token) const { return find_id(vocab_, token); }

  std::optional<std::string_view> special_at(std::string_view text, size_t pos) const {
    if (text[pos] != '[') return std::nullopt;
    std::optional<std::string_view> longest;
    for (const std::string& name : literal_specials_) {
      if (text.compare(pos, name.size(), name) != 0) continue;
      if (!longest || name.size() > longest->size()) longest = name;
    }
    return longest;
  }

  bool is_skipped_special(TokenId id) const {
    for (const auto& special : {special_.cls, special_.sep, special_.pad, special_.mask}) {
      if (special == id) return true;
    }
    return false;
  }

  void check_id(TokenId id) const {
    if (id < 0 || id >= vocab_size()) {
      fail("{}: token id {} out of range (vocabulary size {})", source_.string(), id, vocab_size());
    }
  }

  void encode_plain(std::string_view text, std::vector<TokenId>& ids) const {
    for (const std::u32string& word : basic_tokenize(text)) encode_word(word, ids);
  }

  // BERT's BasicTokenizer: the words that WordPiece then splits.
  std::vector<std::u32string> basic_tokenize(std::string_view text) const {
    std::u32string cleaned;
    cleaned.reserve(text.size());
    for (char32_t cp : unicode::to_code_points(text)) {
      // Invalid bytes decode to U+FFFD, which this step drops like BERT does.
      if (cp == 0 || cp == unicode::kReplacementChar || unicode::is_bert_control(cp)) continue;
      if (unicode::is_bert_whitespace(cp)) {
        cleaned.push_back(U' ');
      } else if (unicode::is_cjk_ideograph(cp)) {
        cleaned.push_back(U' ');
        cleaned.push_back(cp);
        cleaned.push_back(U' ');
      } else {
        cleaned.push_back(cp);
      }
    }
    // Accent stripping decomposes anyway; NFC only matters for the cased form.
    if (!lower_case_) {
      cleaned = unicode::to_code_points(unicode::normalize(unicode::to_utf8(cleaned),
                                                           unicode::NormalForm::Nfc));
    }

    std::vector<std::u32string> words;
    std::u32string word;
    const auto flush = [&] {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    };
    size_t pos = 0;
    while (pos < cleaned.size()) {
      if (unicode::is_whitespace(cleaned[pos])) {
        ++pos;
        continue;
      }
      size_t end = pos;
      while (end < cleaned.size() && !unicode::is_whitespace(cleaned[end])) ++end;
      std::u32string token = cleaned.substr(pos, end - pos);
      pos = end;
      if (lower_case_) {
        // Python's str.lower, which BertTokenizer uses, applies the Final_Sigma rule.
        token = unicode::strip_accents(unicode::to_lower_final_sigma(token));
      }
      for (char32_t cp : token) {
        if (unicode::is_bert_punctuation(cp)) {
          flush();
          words.emplace_back(1, cp);
        } else if (unicode::is_whitespace(cp)) {
          flush();
        } else {
          word.push_back(cp);
        }
      }
      flush();
    }
    return words;
  }

  void encode_word(std::u32string_view word, std::vector<TokenId>& ids) const {
    tokenizer_detail::wordpiece_encode(unicode::to_utf8(word), kContinuationPrefix, kMaxCharsPerWord, vocab_,
                                       *special_.unk, ids);
  }

  std::filesystem::path source_;
  std::vector<std::string> pieces_;
  VocabMap vocab_;
  bool lower_case_;
  SpecialTokens special_;
  std::vector<std::string> literal_specials_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_wordpiece_vocab(const std::filesystem::path& vocab_file,
                                                bool lower_case) {
  const std::string content = read_whole_file(vocab_file);
  std::vector<std::string> pieces = parse_vocab_lines(vocab_file, content);
  return std::make_unique<WordPieceTokenizer>(vocab_file, std::move(pieces), lower_case);
}

}  // namespace rankscope
