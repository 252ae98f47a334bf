// Hugging Face `tokenizer.json`: the tokenizers library's pipeline, re-implemented for the forms
// Llama 2/3, Qwen, GPT-2, Mistral and BERT checkpoints ship.
//
//   raw text --split on added tokens--> segments --normalizer--> --split on normalized added
//   tokens--> --pre-tokenizer--> words --model (BPE | WordPiece)--> ids [--post-processor-->
//   special tokens around them]
//   ids --tokens--> decoder chain --> text
//
// Supported: models BPE (vocab + merges, byte_fallback, fuse_unk, unk_token, ignore_merges,
// subword prefix/suffix) and WordPiece; normalizers Sequence, Prepend, Replace (string or regex),
// NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, BertNormalizer; pre-tokenizers none,
// Metaspace, BertPreTokenizer, WhitespaceSplit, Whitespace, Split (regex or string, every
// behavior, invert), ByteLevel (GPT-2's regex or not, add_prefix_space), Digits, Sequence;
// post-processors TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence;
// decoders Sequence, Replace (string or regex), ByteFallback, ByteLevel, Fuse, Strip, Metaspace,
// WordPiece.
// Anything else is rejected at load time with a one-line error naming the file. Regular
// expressions run on PCRE2 with Oniguruma's reading of them (core/tokenize/regex.hpp).
#include <algorithm>
#include <array>
#include <bit>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <queue>
#include <shared_mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/tokenize/byte_level.hpp"
#include "core/tokenize/regex.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "core/tokenize/tokenizer_common.hpp"
#include "core/tokenize/unicode.hpp"

namespace rankscope {

namespace {

using Json = nlohmann::json;

// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's stand-in for a space.
constexpr std::string_view kMetaspace = "\xE2\x96\x81";
// Ids beyond this are taken as a corrupt file rather than sized into tables.
constexpr int64_t kMaxTokenId = int64_t{1} << 24;
// Ids a file may leave unused (gaps between its vocabulary and added tokens).
constexpr int64_t kMaxUnusedIds = 4096;
constexpr size_t kDefaultMaxCharsPerWord = 100;
constexpr std::string_view kDefaultWordPiecePrefix = "##";
constexpr size_t kByteCount = 256;

// GPT-2's pre-tokenization pattern, built into the ByteLevel pre-tokenizer (use_regex).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// The Whitespace pre-tokenizer's pattern: its matches are the words.
constexpr std::string_view kWhitespacePattern = R"(\w+|[^\w\s]+)";
// Words the BPE model remembers (per tokenizer; the tokenizers library keeps 10,000, too few for
// the distinct words of a long text), and the longest word it remembers (the library's limit).
// Llama 2-style files have no pre-tokenizer, so a "word" there is a whole segment of text,
// never cached.
constexpr size_t kWordCacheCapacity = 65536;
constexpr size_t kMaxCachedWordBytes = 256;

using tokenizer_detail::find_id;
using tokenizer_detail::Regex;
using tokenizer_detail::RegexPiece;
using tokenizer_detail::VocabMap;

Json parse_json_file(const std::filesystem::path& path) {
  const std::string content = read_whole_file(path);
  if (content.empty()) fail("{}: empty file, not JSON", path.string());
  check_json_depth(content, path.string());
  try {
    return Json::parse(content);
  } catch (const Json::parse_error& e) {
    // nlohmann's own message quotes the offending bytes, which may be binary; the offset is
    // enough to find the problem.
    fail("{}: not valid JSON (parse error at byte {}); expected a Hugging Face tokenizer JSON file",
         path.string(), e.byte);
  } catch (const Json::exception& e) {
    // A number too large for a double ("1e400") is reported as out_of_range, not parse_error.
    fail("{}: not valid JSON ({})", path.string(), e.what());
  }
}

std::string replace_all(std::string_view text, std::string_view pattern, std::string_view with) {
  if (pattern.empty()) return std::string(text);
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(pattern, pos);
    if (hit == std::string_view::npos) break;
    out.append(text.substr(pos, hit - pos));
    out.append(with);
    pos = hit + pattern.size();
  }
  out.append(text.substr(pos));
  return out;
}

bool starts_with_at(std::string_view text, size_t pos, std::string_view prefix) {
  return text.size() - pos >= prefix.size() && text.compare(pos, prefix.size(), prefix) == 0;
}

// "Xx" or {"content": "Xx", ...}: how token strings appear in tokenizer_config.json.
std::optional<std::string> token_string(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return std::nullopt;
}

std::string string_or(const Json& object, const char* key, std::string_view fallback) {
  if (!object.contains(key) || object[key].is_null()) return std::string(fallback);
  return object[key].get<std::string>();
}

bool bool_or(const Json& object, const char* key, bool fallback) {
  if (!object.contains(key) || object[key].is_null()) return fallback;
  return object[key].get<bool>();
}

// What a Replace normalizer or decoder looks for: {"String": "..."} or {"Regex": "..."}.
struct ReplacePattern {
  std::string literal;
  std::optional<tokenizer_detail::Regex> regex;
};

ReplacePattern parse_replace_pattern(const std::filesystem::path& path, const Json& step, const char* component) {
  const Json& pattern = step.at("pattern");
  if (pattern.is_object() && pattern.contains("String")) return {pattern["String"].get<std::string>(), std::nullopt};
  if (pattern.is_object() && pattern.contains("Regex")) {
    return {"", tokenizer_detail::Regex(pattern["Regex"].get<std::string>(), false,
                                        fmt::format("{}: {} Replace pattern", path.string(), component))};
  }
  fail("{}: {} Replace pattern {} is neither {{\"String\": ...}} nor {{\"Regex\": ...}}", path.string(), component,
       printable(pattern.dump()));
}

// Every occurrence (regular expression: every match, as Oniguruma finds them) replaced by
// `content`.
std::string apply_replace(const ReplacePattern& pattern, std::string_view text, std::string_view content) {
  if (!pattern.regex) return replace_all(text, pattern.literal, content);
  const std::string valid = unicode::is_valid_utf8(text) ? std::string(text) : unicode::replace_invalid_utf8(text);
  std::vector<tokenizer_detail::RegexPiece> pieces;
  pattern.regex->find_all(valid, pieces);
  std::string out;
  out.reserve(valid.size());
  for (const auto& piece : pieces) {
    if (piece.is_match) {
      out.append(content);
    } else {
      out.append(valid, piece.begin, piece.end - piece.begin);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Added tokens

struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A stretch of text, or an added token found in it. `offset` is where it starts in the text
// that was split.
struct Segment {
  std::string_view text;
  size_t offset = 0;
  std::optional<TokenId> token;
};

bool is_word_char(char32_t cp) { return cp == U'_' || unicode::is_alphanumeric(cp); }

// The character that ends at byte `end` (requires end > 0); an invalid byte reads as one
// U+FFFD byte, as in decode_utf8.
unicode::Utf8Char char_before(std::string_view text, size_t end) {
  constexpr size_t kMaxUtf8Length = 4;
  size_t start = end - 1;
  while (start > 0 && end - start < kMaxUtf8Length &&
         (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
    --start;
  }
  const unicode::Utf8Char ch = unicode::decode_utf8(text, start);
  if (ch.valid && start + ch.length == end) return ch;
  return {};
}

// Finds added tokens in text, leftmost-longest first, with each token's lstrip/rstrip/
// single_word options: the tokenizers library's Aho-Corasick matcher and find_matches.
class AddedTokenMatcher {
 public:
  void add(const AddedToken& token) {
    if (token.content.empty()) return;
    auto& bucket = by_first_byte_[static_cast<unsigned char>(token.content[0])];
    bucket.push_back(token);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken& a, const AddedToken& b) {
      return a.content.size() > b.content.size();
    });
    empty_ = false;
  }

  // The added tokens of `text` and the plain text between them. A match the token's options
  // refuse (single_word inside a word; a special token when `parse_special` is false) is
  // passed over whole, as the library's matcher does: its text stays plain, and the search
  // resumes after it.
  std::vector<Segment> split(std::string_view text, bool parse_special) const {
    std::vector<Segment> segments;
    if (empty_) {
      if (!text.empty()) segments.push_back({text, 0, std::nullopt});
      return segments;
    }
    size_t text_start = 0;  // where the pending plain text begins
    size_t pos = 0;
    while (pos < text.size()) {
      const AddedToken* match = longest_at(text, pos);
      if (match == nullptr) {
        ++pos;
        continue;
      }
      size_t start = pos;
      size_t stop = pos + match->content.size();
      if ((match->special && !parse_special) || (match->single_word && !is_single_word(text, start, stop))) {
        pos = stop;
        continue;
      }
      if (match->lstrip) {
        while (start > text_start) {
          const unicode::Utf8Char ch = char_before(text, start);
          if (!ch.valid || !unicode::is_whitespace(ch.code_point)) break;
          start -= ch.length;
        }
      }
      if (match->rstrip) {
        while (stop < text.size()) {
          const unicode::Utf8Char ch = unicode::decode_utf8(text, stop);
          if (!ch.valid || !unicode::is_whitespace(ch.code_point)) break;
          stop += ch.length;
        }
      }
      if (start > text_start) {
        segments.push_back({text.substr(text_start, start - text_start), text_start, std::nullopt});
      }
      segments.push_back({text.substr(start, stop - start), start, match->id});
      text_start = stop;
      pos = stop;
    }
    if (text_start < text.size()) {
      segments.push_back({text.substr(text_start), text_start, std::nullopt});
    }
    return segments;
  }

 private:
  const AddedToken* longest_at(std::string_view text, size_t pos) const {
    for (const AddedToken& token : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      if (starts_with_at(text, pos, token.content)) return &token;
    }
    return nullptr;
  }

  static bool is_single_word(std::string_view text, size_t start, size_t stop) {
    const bool word_before = start > 0 && is_word_char(char_before(text, start).code_point);
    const bool word_after = stop < text.size() && is_word_char(unicode::decode_utf8(text, stop).code_point);
    return !word_before && !word_after;
  }

  std::array<std::vector<AddedToken>, kByteCount> by_first_byte_;
  bool empty_ = true;
};

// ---------------------------------------------------------------------------------------------
// Normalizers

enum class NormalizerKind { Prepend, Replace, Unicode, Lowercase, Strip, StripAccents, Bert };

struct NormalizerStep {
  NormalizerKind kind = NormalizerKind::Prepend;
  std::string pattern;  // Prepend: the prefix
  ReplacePattern replace;
  std::string content;  // Replace: the replacement
  unicode::NormalForm form = unicode::NormalForm::Nfc;
  bool strip_left = false;
  bool strip_right = false;
  // BertNormalizer
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool strip_accents = true;
  bool lowercase = true;
};

void parse_normalizer(const std::filesystem::path& path, const Json& node,
                      std::vector<NormalizerStep>& steps) {
  if (node.is_null()) return;
  const std::string type = node.at("type").get<std::string>();
  NormalizerStep step;
  if (type == "Sequence") {
    for (const Json& child : node.at("normalizers")) parse_normalizer(path, child, steps);
    return;
  }
  if (type == "Prepend") {
    step.kind = NormalizerKind::Prepend;
    step.pattern = node.at("prepend").get<std::string>();
  } else if (type == "Replace") {
    step.kind = NormalizerKind::Replace;
    step.replace = parse_replace_pattern(path, node, "normalizer");
    step.content = node.at("content").get<std::string>();
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = NormalizerKind::Unicode;
    step.form = type == "NFC"    ? unicode::NormalForm::Nfc
                : type == "NFD"  ? unicode::NormalForm::Nfd
                : type == "NFKC" ? unicode::NormalForm::Nfkc
                                 : unicode::NormalForm::Nfkd;
  } else if (type == "Lowercase") {
    step.kind = NormalizerKind::Lowercase;
  } else if (type == "Strip") {
    step.kind = NormalizerKind::Strip;
    step.strip_left = bool_or(node, "strip_left", true);
    step.strip_right = bool_or(node, "strip_right", true);
  } else if (type == "StripAccents") {
    step.kind = NormalizerKind::StripAccents;
  } else if (type == "BertNormalizer") {
    step.kind = NormalizerKind::Bert;
    step.clean_text = bool_or(node, "clean_text", true);
    step.handle_chinese_chars = bool_or(node, "handle_chinese_chars", true);
    step.lowercase = bool_or(node, "lowercase", true);
    // null means "follow lowercase", as in BERT uncased.
    step.strip_accents = bool_or(node, "strip_accents", step.lowercase);
  } else {
    fail("{}: unsupported normalizer type \"{}\"", path.string(), printable(type));
  }
  steps.push_back(std::move(step));
}

// The tokenizers library's BertNormalizer: clean, space out CJK, strip accents, lower-case.
std::string bert_normalize(const NormalizerStep& step, std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t cp : unicode::to_code_points(text)) {
    if (step.clean_text) {
      if (cp == 0 || cp == unicode::kReplacementChar || unicode::is_bert_control(cp)) continue;
      if (unicode::is_whitespace(cp)) cp = U' ';
    }
    if (step.handle_chinese_chars && unicode::is_cjk_ideograph(cp)) {
      out.push_back(U' ');
      out.push_back(cp);
      out.push_back(U' ');
    } else {
      out.push_back(cp);
    }
  }
  if (step.strip_accents) out = unicode::strip_accents(out);
  if (step.lowercase) out = unicode::to_lower(out);
  return unicode::to_utf8(out);
}

std::string apply_normalizer(const NormalizerStep& step, std::string text) {
  switch (step.kind) {
    case NormalizerKind::Prepend:
      // The library prepends only to non-empty text.
      if (text.empty()) return text;
      return step.pattern + text;
    case NormalizerKind::Replace:
      return apply_replace(step.replace, text, step.content);
    case NormalizerKind::Unicode:
      return unicode::normalize(text, step.form);
    case NormalizerKind::Lowercase:
      return unicode::to_utf8(unicode::to_lower(unicode::to_code_points(text)));
    case NormalizerKind::Strip: {
      std::u32string cps = unicode::to_code_points(text);
      size_t first = 0;
      size_t last = cps.size();
      if (step.strip_left) {
        while (first < last && unicode::is_whitespace(cps[first])) ++first;
      }
      if (step.strip_right) {
        while (last > first && unicode::is_whitespace(cps[last - 1])) --last;
      }
      return unicode::to_utf8(std::u32string_view(cps).substr(first, last - first));
    }
    case NormalizerKind::StripAccents: {
      std::u32string kept;
      for (char32_t cp : unicode::to_code_points(text)) {
        if (!unicode::is_nonspacing_mark(cp)) kept.push_back(cp);
      }
      return unicode::to_utf8(kept);
    }
    case NormalizerKind::Bert:
      return bert_normalize(step, text);
  }
  return text;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers

enum class PreTokenizerKind { Metaspace, Bert, WhitespaceSplit, Split, ByteLevel, Digits };
enum class PrependScheme { Always, First, Never };
// What a Split does with the pattern's matches (the library's SplitDelimiterBehavior): drop
// them, keep each as its own word, glue each to the word before or after it, or glue runs of
// matches and runs of gaps into one word each.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizerStep {
  PreTokenizerKind kind = PreTokenizerKind::Metaspace;
  std::string replacement{kMetaspace};
  PrependScheme prepend = PrependScheme::Always;
  bool split = true;
  // Split (and Whitespace, a Split with a built-in pattern); ByteLevel with use_regex.
  std::optional<Regex> regex;
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  // ByteLevel: a space before every word that does not start with one.
  bool add_prefix_space = false;
  // Digits: each digit a word (else each run of digits).
  bool individual_digits = false;
};

// A word on its way to the model. `at_input_start`: it begins at offset 0 of the raw input,
// which Metaspace's "first" prepend scheme asks about.
struct Word {
  std::string text;
  bool at_input_start = false;
};

PrependScheme parse_prepend_scheme(const std::filesystem::path& path, const Json& node) {
  if (node.contains("prepend_scheme") && !node["prepend_scheme"].is_null()) {
    const std::string scheme = node["prepend_scheme"].get<std::string>();
    if (scheme == "always") return PrependScheme::Always;
    if (scheme == "first") return PrependScheme::First;
    if (scheme == "never") return PrependScheme::Never;
    fail("{}: unknown Metaspace prepend_scheme \"{}\"", path.string(), printable(scheme));
  }
  // Files written before prepend_scheme existed use add_prefix_space.
  return bool_or(node, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

SplitBehavior parse_split_behavior(const std::filesystem::path& path, const Json& node) {
  const std::string name = node.at("behavior").get<std::string>();
  if (name == "Removed") return SplitBehavior::Removed;
  if (name == "Isolated") return SplitBehavior::Isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (name == "Contiguous") return SplitBehavior::Contiguous;
  fail("{}: unknown Split behavior \"{}\" (Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous)",
       path.string(), printable(name));
}

// A Split pattern: {"Regex": "..."} or {"String": "..."} (a literal).
Regex parse_split_pattern(const std::filesystem::path& path, const Json& node) {
  const Json& pattern = node.at("pattern");
  const std::string where = fmt::format("{}: pre_tokenizer Split pattern", path.string());
  if (pattern.is_object() && pattern.contains("Regex")) return Regex(pattern["Regex"].get<std::string>(), false, where);
  if (pattern.is_object() && pattern.contains("String")) return Regex(pattern["String"].get<std::string>(), true, where);
  fail("{}: Split pattern {} is neither {{\"Regex\": ...}} nor {{\"String\": ...}}", path.string(),
       printable(pattern.dump()));
}

void parse_pre_tokenizer(const std::filesystem::path& path, const Json& node,
                         std::vector<PreTokenizerStep>& steps) {
  if (node.is_null()) return;
  const std::string type = node.at("type").get<std::string>();
  PreTokenizerStep step;
  if (type == "Sequence") {
    for (const Json& child : node.at("pretokenizers")) parse_pre_tokenizer(path, child, steps);
    return;
  }
  if (type == "Metaspace") {
    step.kind = PreTokenizerKind::Metaspace;
    step.replacement = string_or(node, "replacement", kMetaspace);
    step.prepend = parse_prepend_scheme(path, node);
    step.split = bool_or(node, "split", true);
  } else if (type == "BertPreTokenizer") {
    step.kind = PreTokenizerKind::Bert;
  } else if (type == "WhitespaceSplit") {
    step.kind = PreTokenizerKind::WhitespaceSplit;
  } else if (type == "Whitespace") {
    // Words are the pattern's matches; the whitespace between them goes.
    step.kind = PreTokenizerKind::Split;
    step.regex.emplace(kWhitespacePattern, false, path.string() + ": Whitespace pattern");
    step.behavior = SplitBehavior::Removed;
    step.invert = true;
  } else if (type == "Split") {
    step.kind = PreTokenizerKind::Split;
    step.regex.emplace(parse_split_pattern(path, node));
    step.behavior = parse_split_behavior(path, node);
    step.invert = bool_or(node, "invert", false);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerKind::ByteLevel;
    step.add_prefix_space = bool_or(node, "add_prefix_space", true);
    if (bool_or(node, "use_regex", true)) {
      step.regex.emplace(kGpt2Pattern, false, path.string() + ": ByteLevel pattern");
    }
  } else if (type == "Digits") {
    step.kind = PreTokenizerKind::Digits;
    step.individual_digits = bool_or(node, "individual_digits", false);
  } else {
    fail("{}: unsupported pre-tokenizer type \"{}\" (supported: Sequence, Split, ByteLevel, Metaspace, "
         "Whitespace, WhitespaceSplit, BertPreTokenizer, Digits)", path.string(), printable(type));
  }
  steps.push_back(std::move(step));
}

void metaspace_split(const PreTokenizerStep& step, const Word& word, std::vector<Word>& out) {
  std::string text = replace_all(word.text, " ", step.replacement);
  const bool prepend = step.prepend == PrependScheme::Always ||
                       (step.prepend == PrependScheme::First && word.at_input_start);
  if (prepend && !text.starts_with(step.replacement)) text.insert(0, step.replacement);
  if (!step.split || step.replacement.empty()) {
    if (!text.empty()) out.push_back({std::move(text), word.at_input_start});
    return;
  }
  // Each replacement character starts a new word ("merged with next").
  size_t start = 0;
  size_t search = step.replacement.size();
  while (start < text.size()) {
    size_t next = text.find(step.replacement, search);
    if (next == std::string::npos) next = text.size();
    out.push_back({text.substr(start, next - start), word.at_input_start && start == 0});
    start = next;
    search = next + step.replacement.size();
  }
}

// Splits on whitespace (dropped) and, for BERT, isolates each punctuation character.
void whitespace_split(const Word& word, bool isolate_punctuation, std::vector<Word>& out) {
  const std::string_view text = word.text;
  size_t word_start = 0;
  bool in_word = false;
  const auto flush = [&](size_t end) {
    if (in_word && end > word_start) {
      out.push_back({std::string(text.substr(word_start, end - word_start)),
                     word.at_input_start && word_start == 0});
    }
    in_word = false;
  };
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Utf8Char ch = unicode::decode_utf8(text, pos);
    if (unicode::is_whitespace(ch.code_point)) {
      flush(pos);
    } else if (isolate_punctuation && unicode::is_bert_punctuation(ch.code_point)) {
      flush(pos);
      out.push_back({std::string(text.substr(pos, ch.length)), word.at_input_start && pos == 0});
    } else if (!in_word) {
      in_word = true;
      word_start = pos;
    }
    pos += ch.length;
  }
  flush(text.size());
}

// The pieces a Split keeps, from the matches and gaps that cover a word (all marked as kept
// words on return): the library's NormalizedString::split.
void apply_split_behavior(SplitBehavior behavior, std::vector<RegexPiece>& pieces) {
  if (behavior == SplitBehavior::Isolated) return;
  std::vector<RegexPiece> kept;
  kept.reserve(pieces.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::Removed:
      for (const RegexPiece& piece : pieces) {
        if (!piece.is_match) kept.push_back(piece);
      }
      break;
    case SplitBehavior::Isolated:
      return;
    case SplitBehavior::MergedWithPrevious:
      for (const RegexPiece& piece : pieces) {
        if (piece.is_match && !previous_match && !kept.empty()) {
          kept.back().end = piece.end;
        } else {
          kept.push_back(piece);
        }
        previous_match = piece.is_match;
      }
      break;
    case SplitBehavior::MergedWithNext:
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().begin = it->begin;
        } else {
          kept.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    case SplitBehavior::Contiguous:
      for (const RegexPiece& piece : pieces) {
        if (piece.is_match == previous_match && !kept.empty()) {
          kept.back().end = piece.end;
        } else {
          kept.push_back(piece);
        }
        previous_match = piece.is_match;
      }
      break;
  }
  pieces = std::move(kept);
}

// Each numeric character (Unicode N*) a match, the runs between them gaps.
void find_digits(std::string_view text, std::vector<RegexPiece>& out) {
  size_t gap_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const unicode::Utf8Char ch = unicode::decode_utf8(text, pos);
    if (ch.valid && unicode::is_numeric(ch.code_point)) {
      if (gap_start < pos) out.push_back({gap_start, pos, false});
      out.push_back({pos, pos + ch.length, true});
      gap_start = pos + ch.length;
    }
    pos += ch.length;
  }
  if (gap_start < text.size()) out.push_back({gap_start, text.size(), false});
}

// Reused between words: splitting allocates only the words themselves.
struct PreTokenizerScratch {
  std::vector<RegexPiece> pieces;
  std::string text;
};

// Split, Digits and ByteLevel: the word cut where the pieces say (ByteLevel: after a prefix
// space and GPT-2's pattern), each non-empty piece a word; ByteLevel also writes each word's
// bytes in its alphabet.
void pattern_split(const PreTokenizerStep& step, const Word& word, PreTokenizerScratch& scratch,
                   std::vector<Word>& out) {
  std::string_view text = word.text;
  const bool prefix = step.kind == PreTokenizerKind::ByteLevel && step.add_prefix_space && !text.starts_with(' ');
  if (prefix || (step.regex && !unicode::is_valid_utf8(text))) {
    // A regular expression needs valid UTF-8: the library's input is a Rust string, which is.
    scratch.text.assign(prefix ? " " : "");
    scratch.text += step.regex ? unicode::replace_invalid_utf8(text) : std::string(text);
    text = scratch.text;
  }
  scratch.pieces.clear();
  if (step.kind == PreTokenizerKind::Digits) {
    find_digits(text, scratch.pieces);
    apply_split_behavior(step.individual_digits ? SplitBehavior::Isolated : SplitBehavior::Contiguous, scratch.pieces);
  } else if (step.regex) {
    step.regex->find_all(text, scratch.pieces);
    if (step.invert) {
      for (RegexPiece& piece : scratch.pieces) piece.is_match = !piece.is_match;
    }
    apply_split_behavior(step.kind == PreTokenizerKind::ByteLevel ? SplitBehavior::Isolated : step.behavior,
                         scratch.pieces);
  } else {
    scratch.pieces.push_back({0, text.size(), false});
  }
  for (const RegexPiece& piece : scratch.pieces) {
    if (piece.end == piece.begin) continue;
    const std::string_view part = text.substr(piece.begin, piece.end - piece.begin);
    Word& split = out.emplace_back();
    split.at_input_start = word.at_input_start && piece.begin == 0;
    if (step.kind == PreTokenizerKind::ByteLevel) {
      tokenizer_detail::append_byte_level(split.text, part);
    } else {
      split.text.assign(part);
    }
  }
}

std::vector<Word> apply_pre_tokenizer(const PreTokenizerStep& step, std::vector<Word> words) {
  std::vector<Word> out;
  out.reserve(words.size());
  PreTokenizerScratch scratch;
  for (const Word& word : words) {
    switch (step.kind) {
      case PreTokenizerKind::Metaspace: metaspace_split(step, word, out); break;
      case PreTokenizerKind::Bert: whitespace_split(word, true, out); break;
      case PreTokenizerKind::WhitespaceSplit: whitespace_split(word, false, out); break;
      case PreTokenizerKind::Split:
      case PreTokenizerKind::ByteLevel:
      case PreTokenizerKind::Digits: pattern_split(step, word, scratch, out); break;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoders

enum class DecoderKind { Replace, ByteFallback, ByteLevel, Fuse, Strip, Metaspace, WordPiece };

struct DecoderStep {
  DecoderKind kind = DecoderKind::Fuse;
  ReplacePattern replace;
  std::string content;  // Replace: the replacement
  char32_t strip_char = U' ';
  size_t strip_start = 0;
  size_t strip_stop = 0;
  std::string replacement{kMetaspace};  // Metaspace
  PrependScheme prepend = PrependScheme::Always;
  std::string prefix{kDefaultWordPiecePrefix};  // WordPiece
  bool cleanup = true;
};

void parse_decoder(const std::filesystem::path& path, const Json& node,
                   std::vector<DecoderStep>& steps) {
  const std::string type = node.at("type").get<std::string>();
  DecoderStep step;
  if (type == "Sequence") {
    for (const Json& child : node.at("decoders")) parse_decoder(path, child, steps);
    return;
  }
  if (type == "Replace") {
    step.kind = DecoderKind::Replace;
    step.replace = parse_replace_pattern(path, node, "decoder");
    step.content = node.at("content").get<std::string>();
  } else if (type == "ByteFallback") {
    step.kind = DecoderKind::ByteFallback;
  } else if (type == "ByteLevel") {
    step.kind = DecoderKind::ByteLevel;
  } else if (type == "Fuse") {
    step.kind = DecoderKind::Fuse;
  } else if (type == "Strip") {
    step.kind = DecoderKind::Strip;
    const std::u32string content = unicode::to_code_points(node.at("content").get<std::string>());
    if (content.size() != 1) fail("{}: Strip decoder content must be one character", path.string());
    step.strip_char = content[0];
    step.strip_start = node.at("start").get<size_t>();
    step.strip_stop = node.at("stop").get<size_t>();
  } else if (type == "Metaspace") {
    step.kind = DecoderKind::Metaspace;
    step.replacement = string_or(node, "replacement", kMetaspace);
    step.prepend = parse_prepend_scheme(path, node);
  } else if (type == "WordPiece") {
    step.kind = DecoderKind::WordPiece;
    step.prefix = string_or(node, "prefix", kDefaultWordPiecePrefix);
    step.cleanup = bool_or(node, "cleanup", true);
  } else {
    fail("{}: unsupported decoder type \"{}\"", path.string(), printable(type));
  }
  steps.push_back(std::move(step));
}

// "<0xAB>" -> 0xAB, the byte-fallback token form.
std::optional<unsigned char> byte_token_value(std::string_view token) {
  constexpr size_t kByteTokenLength = 6;
  if (token.size() != kByteTokenLength || !token.starts_with("<0x") || token.back() != '>') {
    return std::nullopt;
  }
  unsigned value = 0;
  for (char c : token.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= static_cast<unsigned>(c - '0');
    } else if (c >= 'A' && c <= 'F') {
      value |= static_cast<unsigned>(c - 'A' + 10);
    } else if (c >= 'a' && c <= 'f') {
      value |= static_cast<unsigned>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
  }
  return static_cast<unsigned char>(value);
}

// Runs of byte tokens become the text they encode, or one U+FFFD per byte when those bytes
// are not valid UTF-8 (the library's ByteFallback decoder).
std::vector<std::string> decode_byte_fallback(std::vector<std::string> tokens) {
  std::vector<std::string> out;
  out.reserve(tokens.size());
  std::string bytes;
  size_t n_bytes = 0;
  const auto flush = [&] {
    if (n_bytes == 0) return;
    if (unicode::is_valid_utf8(bytes)) {
      out.push_back(bytes);
    } else {
      std::string replacement;
      unicode::append_utf8(replacement, unicode::kReplacementChar);
      for (size_t i = 0; i < n_bytes; ++i) out.push_back(replacement);
    }
    bytes.clear();
    n_bytes = 0;
  };
  for (std::string& token : tokens) {
    if (const auto byte = byte_token_value(token)) {
      bytes.push_back(static_cast<char>(*byte));
      ++n_bytes;
      continue;
    }
    flush();
    out.push_back(std::move(token));
  }
  flush();
  return out;
}

std::string wordpiece_cleanup(std::string text) {
  // The tokenizers library's cleanup of spaces before punctuation and English contractions.
  static const std::array<std::pair<std::string_view, std::string_view>, 11> kRules = {{
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
  }};
  for (const auto& [from, to] : kRules) text = replace_all(text, from, to);
  return text;
}

std::vector<std::string> apply_decoder(const DecoderStep& step, std::vector<std::string> tokens) {
  switch (step.kind) {
    case DecoderKind::Replace:
      for (std::string& token : tokens) token = apply_replace(step.replace, token, step.content);
      return tokens;
    case DecoderKind::ByteFallback:
      return decode_byte_fallback(std::move(tokens));
    case DecoderKind::ByteLevel:
      return {tokenizer_detail::decode_byte_level(tokens)};
    case DecoderKind::Fuse: {
      std::string fused;
      for (const std::string& token : tokens) fused += token;
      return {fused};
    }
    case DecoderKind::Strip:
      for (std::string& token : tokens) {
        std::u32string cps = unicode::to_code_points(token);
        size_t first = 0;
        while (first < step.strip_start && first < cps.size() && cps[first] == step.strip_char) {
          ++first;
        }
        size_t last = cps.size();
        for (size_t i = 0; i < step.strip_stop && last > first && cps[last - 1] == step.strip_char;
             ++i) {
          --last;
        }
        token = unicode::to_utf8(std::u32string_view(cps).substr(first, last - first));
      }
      return tokens;
    case DecoderKind::Metaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        // As in the library, every replacement character of the first token is dropped when
        // the encoder prepends one.
        const bool drop = i == 0 && step.prepend != PrependScheme::Never;
        tokens[i] = replace_all(tokens[i], step.replacement, drop ? "" : " ");
      }
      return tokens;
    case DecoderKind::WordPiece:
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::string& token = tokens[i];
        if (i != 0) {
          if (token.starts_with(step.prefix)) {
            token.erase(0, step.prefix.size());
          } else {
            token.insert(0, " ");
          }
        }
        if (step.cleanup) token = wordpiece_cleanup(std::move(token));
      }
      return tokens;
  }
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Models

VocabMap parse_vocab(const std::filesystem::path& path, const Json& vocab) {
  if (!vocab.is_object()) fail("{}: model.vocab is not an object of token: id", path.string());
  VocabMap map;
  map.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    const int64_t id = id_json.get<int64_t>();
    if (id < 0 || id >= kMaxTokenId) {
      fail("{}: token \"{}\" has id {} out of range", path.string(), printable(token), id);
    }
    map.emplace(token, static_cast<TokenId>(id));
  }
  if (map.empty()) fail("{}: model.vocab is empty", path.string());
  return map;
}

class SubwordModel {
 public:
  virtual ~SubwordModel() = default;
  // Appends the ids of one pre-tokenized word.
  virtual void tokenize(std::string_view word, std::vector<TokenId>& out) const = 0;
  virtual const VocabMap& vocab() const = 0;
  virtual std::optional<std::string> unk_token() const = 0;
  // Tokenizer::kind() of a tokenizer built on this model.
  virtual std::string kind() const = 0;
};

// The merge rules of a BPE model: (left id, right id) -> (rank, merged id). Open addressing with
// linear probing in a power-of-two table kept at most half full, so that a lookup (one per
// adjacent pair while merging) touches one cache line, and loading 280,000 merges allocates once.
class MergeTable {
 public:
  struct Rule {
    int32_t rank;
    TokenId merged;
  };

  // Room for `n` pairs; call once, before any insert.
  void reserve(size_t n) {
    size_t capacity = kMinCapacity;
    while (capacity < 2 * n) capacity *= 2;
    slots_.assign(capacity, Slot{kEmpty, {}});
    shift_ = static_cast<unsigned>(64 - std::countr_zero(capacity));
    limit_ = n;
  }

  // Adds the rule of a pair not seen before; a pair already present keeps its first rule (the
  // library keeps a duplicate merge's first rank).
  void insert(TokenId left, TokenId right, Rule rule) {
    RS_ASSERT(size_ < limit_);
    const uint64_t key = key_of(left, right);
    for (size_t i = home(key);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].key == key) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, rule};
        ++size_;
        return;
      }
    }
  }

  const Rule* find(TokenId left, TokenId right) const {
    const uint64_t key = key_of(left, right);
    for (size_t i = home(key);; i = (i + 1) & (slots_.size() - 1)) {
      if (slots_[i].key == key) return &slots_[i].rule;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    Rule rule;
  };
  // Ids are non-negative, so no pair has all 64 bits set.
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static constexpr size_t kMinCapacity = 16;
  // Fibonacci hashing: the high bits of key * 2^64/phi.
  static constexpr uint64_t kGoldenRatio = 0x9E3779B97F4A7C15ull;

  static uint64_t key_of(TokenId left, TokenId right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t home(uint64_t key) const { return static_cast<size_t>((key * kGoldenRatio) >> shift_); }

  std::vector<Slot> slots_ = std::vector<Slot>(kMinCapacity, Slot{kEmpty, {}});
  unsigned shift_ = 64 - 4;  // 64 - log2(kMinCapacity)
  size_t size_ = 0;
  size_t limit_ = 0;
};

// The ids of words already encoded, shared by every thread encoding with one model: lookups
// under a shared lock; an insertion is skipped when another thread holds the lock or the cache
// is full (the tokenizers library's policy: no eviction, so hits never contend on writes).
class WordCache {
 public:
  bool append(std::string_view word, std::vector<TokenId>& out) const {
    std::shared_lock lock(mutex_);
    const auto it = ids_.find(word);
    if (it == ids_.end()) return false;
    out.insert(out.end(), it->second.begin(), it->second.end());
    return true;
  }

  void insert(std::string_view word, std::span<const TokenId> ids) const {
    std::unique_lock lock(mutex_, std::try_to_lock);
    if (!lock.owns_lock() || ids_.size() >= kWordCacheCapacity) return;
    ids_.try_emplace(std::string(word), ids.begin(), ids.end());
  }

 private:
  mutable std::shared_mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<TokenId>, tokenizer_detail::StringHash, std::equal_to<>> ids_;
};

// Byte-pair encoding as the tokenizers library does it: characters (or their byte-fallback
// tokens, or unk), then repeated merging of the adjacent pair with the lowest merge rank,
// leftmost on ties. A doubly linked list of symbols and a min-heap of candidate merges keep
// this O(n log n) in the word length; Llama-style files have no pre-tokenizer, so a "word" can
// be a whole document. Words up to kMaxCachedWordBytes are remembered (WordCache).
class BpeModel final : public SubwordModel {
 public:
  BpeModel(const std::filesystem::path& path, const Json& model) : source_(path) {
    vocab_ = parse_vocab(path, model.at("vocab"));
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      unk_token_ = model["unk_token"].get<std::string>();
      unk_id_ = find_id(vocab_, *unk_token_);
    }
    byte_fallback_ = bool_or(model, "byte_fallback", false);
    fuse_unk_ = bool_or(model, "fuse_unk", false);
    ignore_merges_ = bool_or(model, "ignore_merges", false);
    prefix_ = string_or(model, "continuing_subword_prefix", "");
    suffix_ = string_or(model, "end_of_word_suffix", "");
    for (size_t byte = 0; byte < kByteCount; ++byte) {
      byte_ids_[byte] = find_id(vocab_, fmt::format("<0x{:02X}>", byte));
    }
    // A reference, not `contains ? model["merges"] : Json::array()`: that expression is a copy.
    static const Json kNoMerges = Json::array();
    parse_merges(path, model.contains("merges") ? model["merges"] : kNoMerges);
  }

  const VocabMap& vocab() const override { return vocab_; }
  std::optional<std::string> unk_token() const override { return unk_token_; }
  std::string kind() const override { return "hf-bpe"; }

  void tokenize(std::string_view word, std::vector<TokenId>& out) const override {
    if (word.empty()) return;
    if (ignore_merges_) {
      // Llama 3: a word that is itself a token is that token, whatever the merges would make.
      if (const auto id = find_id(vocab_, word)) {
        out.push_back(*id);
        return;
      }
    }
    const bool cacheable = word.size() <= kMaxCachedWordBytes;
    if (cacheable && cache_.append(word, out)) return;
    const size_t first = out.size();
    std::vector<Symbol> symbols = initial_symbols(word);
    merge_all(symbols);
    for (const Symbol& symbol : symbols) {
      if (symbol.alive) out.push_back(symbol.id);
    }
    if (cacheable) cache_.insert(word, std::span<const TokenId>(out).subspan(first));
  }

 private:
  struct Symbol {
    TokenId id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  using MergeRule = MergeTable::Rule;
  struct Candidate {
    int32_t rank;
    int32_t pos;
    TokenId merged;
    // std::priority_queue is a max-heap: "greater" means lower priority, so the lowest rank,
    // then the leftmost position, comes out first.
    bool operator<(const Candidate& other) const {
      if (rank != other.rank) return rank > other.rank;
      return pos > other.pos;
    }
  };

  // Reads the merges in place (views into the JSON, one reused buffer for the merged token):
  // a Llama 3 file has 280,000 of them.
  void parse_merges(const std::filesystem::path& path, const Json& merges) {
    if (!merges.is_array()) fail("{}: model.merges is not an array", path.string());
    merges_.reserve(merges.size());
    std::string merged;
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const Json& merge = merges[rank];
      std::string_view left;
      std::string_view right;
      if (merge.is_string()) {
        const std::string_view text = merge.get_ref<const std::string&>();
        const size_t space = text.find(' ');
        if (space == std::string_view::npos || text.find(' ', space + 1) != std::string_view::npos) {
          fail("{}: merge {} \"{}\" is not two tokens separated by one space", path.string(), rank,
               printable(text));
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        left = merge[0].get_ref<const std::string&>();
        right = merge[1].get_ref<const std::string&>();
      } else {
        fail("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", path.string(), rank);
      }
      merged.assign(left);
      merged.append(right.starts_with(prefix_) ? right.substr(prefix_.size()) : right);
      const auto left_id = find_id(vocab_, left);
      const auto right_id = find_id(vocab_, right);
      const auto merged_id = find_id(vocab_, merged);
      if (!left_id || !right_id || !merged_id) {
        fail("{}: merge {} (\"{}\" + \"{}\") uses a token that is not in the vocabulary",
             path.string(), rank, printable(left), printable(right));
      }
      // The first occurrence of a pair keeps its rank, as in the library.
      merges_.insert(*left_id, *right_id, MergeRule{static_cast<int32_t>(rank), *merged_id});
    }
  }

  std::vector<Symbol> initial_symbols(std::string_view word) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    const auto add = [&](TokenId id) {
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, true});
    };
    // An unknown character waiting to be emitted, so that fuse_unk can fold a run into one.
    bool unk_pending = false;
    const auto flush_unk = [&] {
      if (unk_pending) add(*unk_id_);
      unk_pending = false;
    };
    std::string affixed;
    for (size_t pos = 0; pos < word.size();) {
      const uint32_t length = unicode::decode_utf8(word, pos).length;
      std::string_view piece = word.substr(pos, length);
      const bool is_first = pos == 0;
      const bool is_last = pos + length == word.size();
      pos += length;
      if ((!is_first && !prefix_.empty()) || (is_last && !suffix_.empty())) {
        affixed.assign(is_first ? "" : prefix_);
        affixed.append(piece);
        if (is_last) affixed.append(suffix_);
        piece = affixed;
      }
      if (const auto id = find_id(vocab_, piece)) {
        flush_unk();
        add(*id);
        continue;
      }
      if (byte_fallback_ && all_bytes_known(piece)) {
        // The library appends byte tokens without first flushing a pending unk; flushing here
        // keeps the output in text order (the two only differ for a vocabulary with some but
        // not all <0xXX> tokens).
        flush_unk();
        for (char byte : piece) add(*byte_ids_[static_cast<unsigned char>(byte)]);
        continue;
      }
      if (!unk_id_) {
        fail("{}: cannot encode \"{}\": not in the vocabulary and the model has no usable "
             "unk_token", source_.string(), printable(unicode::sanitize_utf8(piece)));
      }
      if (!fuse_unk_) flush_unk();
      unk_pending = true;
    }
    flush_unk();
    if (!symbols.empty()) symbols.back().next = -1;
    return symbols;
  }

  bool all_bytes_known(std::string_view piece) const {
    return std::all_of(piece.begin(), piece.end(), [&](char byte) {
      return byte_ids_[static_cast<unsigned char>(byte)].has_value();
    });
  }

  const MergeRule* rule_for(TokenId left, TokenId right) const { return merges_.find(left, right); }

  void merge_all(std::vector<Symbol>& symbols) const {
    std::priority_queue<Candidate> queue;
    const auto push_pair = [&](int32_t pos) {
      const int32_t next = symbols[pos].next;
      if (next < 0) return;
      if (const auto rule = rule_for(symbols[pos].id, symbols[next].id)) {
        queue.push({rule->rank, pos, rule->merged});
      }
    };
    for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push_pair(pos);

    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      // A stale candidate: one of the two symbols has merged with something else since. The
      // library checks only that the pair still yields the same token, and so do we.
      const auto rule = rule_for(left.id, right.id);
      if (!rule || rule->merged != top.merged) continue;
      left.id = top.merged;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      if (left.prev >= 0) push_pair(left.prev);
      push_pair(top.pos);
    }
  }

  std::filesystem::path source_;
  VocabMap vocab_;
  MergeTable merges_;
  std::optional<std::string> unk_token_;
  std::optional<TokenId> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::string prefix_;
  std::string suffix_;
  std::array<std::optional<TokenId>, kByteCount> byte_ids_;
  WordCache cache_;
};

// WordPiece as in the tokenizers library: greedy longest-match-first with a continuation
// prefix; a word that cannot be covered, or is too long, becomes one unk token.
class WordPieceModel final : public SubwordModel {
 public:
  WordPieceModel(const std::filesystem::path& path, const Json& model) {
    vocab_ = parse_vocab(path, model.at("vocab"));
    unk_token_ = string_or(model, "unk_token", "[UNK]");
    const auto unk = find_id(vocab_, unk_token_);
    if (!unk) {
      fail("{}: WordPiece unk_token \"{}\" is not in the vocabulary", path.string(),
           printable(unk_token_));
    }
    unk_id_ = *unk;
    prefix_ = string_or(model, "continuing_subword_prefix", kDefaultWordPiecePrefix);
    max_chars_ = model.contains("max_input_chars_per_word")
                     ? model["max_input_chars_per_word"].get<size_t>()
                     : kDefaultMaxCharsPerWord;
  }

  const VocabMap& vocab() const override { return vocab_; }
  std::optional<std::string> unk_token() const override { return unk_token_; }
  std::string kind() const override { return "wordpiece"; }

  void tokenize(std::string_view word, std::vector<TokenId>& out) const override {
    tokenizer_detail::wordpiece_encode(word, prefix_, max_chars_, vocab_, unk_id_, out);
  }

 private:
  VocabMap vocab_;
  std::string unk_token_;
  TokenId unk_id_ = 0;
  std::string prefix_;
  size_t max_chars_ = kDefaultMaxCharsPerWord;
};

std::unique_ptr<SubwordModel> parse_model(const std::filesystem::path& path, const Json& model) {
  if (!model.is_object()) fail("{}: \"model\" is not an object", path.string());
  std::string type;
  if (model.contains("type")) {
    type = model["type"].get<std::string>();
  } else if (model.contains("merges")) {
    type = "BPE";  // files from before the type tag existed
  } else if (model.contains("continuing_subword_prefix")) {
    type = "WordPiece";
  }
  if (type == "BPE") return std::make_unique<BpeModel>(path, model);
  if (type == "WordPiece") return std::make_unique<WordPieceModel>(path, model);
  fail("{}: unsupported model type \"{}\" (supported: BPE, WordPiece)", path.string(),
       type.empty() ? "unknown" : printable(type));
}

// ---------------------------------------------------------------------------------------------
// Special tokens

// Token string -> id, over added tokens and the model vocabulary.
using IdLookup = std::function<std::optional<TokenId>(const std::string&)>;

// Names that mark a special added token's role when nothing more explicit says so.
struct RoleName {
  std::string_view name;
  std::optional<TokenId> SpecialTokens::*slot;
};
constexpr std::array<RoleName, 16> kRoleNames = {{
    {"<s>", &SpecialTokens::bos},
    {"<bos>", &SpecialTokens::bos},
    {"<|begin_of_text|>", &SpecialTokens::bos},
    {"<|startoftext|>", &SpecialTokens::bos},
    {"</s>", &SpecialTokens::eos},
    {"<eos>", &SpecialTokens::eos},
    {"<|end_of_text|>", &SpecialTokens::eos},
    {"<|endoftext|>", &SpecialTokens::eos},
    {"<unk>", &SpecialTokens::unk},
    {"[UNK]", &SpecialTokens::unk},
    {"<pad>", &SpecialTokens::pad},
    {"[PAD]", &SpecialTokens::pad},
    {"[CLS]", &SpecialTokens::cls},
    {"[SEP]", &SpecialTokens::sep},
    {"[MASK]", &SpecialTokens::mask},
    {"<mask>", &SpecialTokens::mask},
}};

// The roles a post-processor template gives its special tokens: [X, A, Y] is BERT's
// [CLS] A [SEP]; [X, A] adds a BOS; [A, Y] adds an EOS.
void read_post_processor(const Json& node, const IdLookup& id_of, SpecialTokens& special) {
  if (!node.is_object() || !node.contains("type")) return;
  const std::string type = node["type"].get<std::string>();
  if (type == "Sequence" && node.contains("processors")) {
    for (const Json& child : node["processors"]) read_post_processor(child, id_of, special);
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    for (const auto& [key, slot] :
         {std::pair{"cls", &SpecialTokens::cls}, std::pair{"sep", &SpecialTokens::sep}}) {
      if (node.contains(key) && node[key].is_array() && node[key].size() == 2) {
        special.*slot = node[key][1].get<TokenId>();
      }
    }
    return;
  }
  if (type != "TemplateProcessing" || !node.contains("single")) return;
  const auto special_id = [&](const Json& item) -> std::optional<TokenId> {
    const std::string name = item["SpecialToken"].at("id").get<std::string>();
    if (node.contains("special_tokens") && node["special_tokens"].contains(name)) {
      const Json& ids = node["special_tokens"][name].at("ids");
      if (ids.is_array() && !ids.empty()) return ids[0].get<TokenId>();
    }
    return id_of(name);
  };
  std::vector<std::optional<TokenId>> before;
  std::vector<std::optional<TokenId>> after;
  bool seen_sequence = false;
  for (const Json& item : node["single"]) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
    } else if (item.contains("SpecialToken")) {
      (seen_sequence ? after : before).push_back(special_id(item));
    }
  }
  if (!before.empty() && !after.empty()) {
    special.cls = before.front();
    special.sep = after.back();
  } else if (!before.empty()) {
    special.bos = before.front();
  } else if (!after.empty()) {
    special.eos = after.back();
  }
}

// The ids a post-processor puts before and after a single sequence when special tokens are
// added (EncodeOptions::add_special_tokens).
struct AddedAround {
  std::vector<TokenId> before;
  std::vector<TokenId> after;
};

// A Sequence applies its processors in turn, each around what the ones before it made.
void parse_post_processor(const std::filesystem::path& path, const Json& node, const IdLookup& id_of,
                          AddedAround& around) {
  if (node.is_null()) return;
  const std::string type = node.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const Json& child : node.at("processors")) parse_post_processor(path, child, id_of, around);
    return;
  }
  // ByteLevel only trims offsets, which rankscope does not report.
  if (type == "ByteLevel") return;
  AddedAround added;
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    added.before.push_back(node.at("cls").at(1).get<TokenId>());
    added.after.push_back(node.at("sep").at(1).get<TokenId>());
  } else if (type == "TemplateProcessing") {
    bool seen_sequence = false;
    for (const Json& item : node.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.contains("SpecialToken")) {
        fail("{}: post_processor template item {} is neither a SpecialToken nor a Sequence", path.string(),
             printable(item.dump()));
      }
      std::vector<TokenId>& side = seen_sequence ? added.after : added.before;
      const std::string name = item["SpecialToken"].at("id").get<std::string>();
      if (node.contains("special_tokens") && node["special_tokens"].contains(name)) {
        for (const Json& id : node["special_tokens"][name].at("ids")) side.push_back(id.get<TokenId>());
      } else if (const auto id = id_of(name)) {
        side.push_back(*id);
      } else {
        fail("{}: post_processor template uses special token \"{}\", which it does not define and the "
             "vocabulary lacks", path.string(), printable(name));
      }
    }
  } else {
    fail("{}: unsupported post_processor type \"{}\" (supported: TemplateProcessing, BertProcessing, "
         "RobertaProcessing, ByteLevel, Sequence)", path.string(), printable(type));
  }
  around.before.insert(around.before.begin(), added.before.begin(), added.before.end());
  around.after.insert(around.after.end(), added.after.begin(), added.after.end());
}

// tokenizer_config.json beside tokenizer.json names the roles outright; it wins when present.
void read_tokenizer_config(const std::filesystem::path& config_path, const IdLookup& id_of,
                           SpecialTokens& special) {
  std::error_code ec;
  if (!std::filesystem::exists(config_path, ec)) return;
  const Json config = parse_json_file(config_path);
  if (!config.is_object()) fail("{}: not a JSON object", config_path.string());
  const std::array<std::pair<const char*, std::optional<TokenId> SpecialTokens::*>, 7> keys = {{
      {"bos_token", &SpecialTokens::bos},
      {"eos_token", &SpecialTokens::eos},
      {"unk_token", &SpecialTokens::unk},
      {"pad_token", &SpecialTokens::pad},
      {"cls_token", &SpecialTokens::cls},
      {"sep_token", &SpecialTokens::sep},
      {"mask_token", &SpecialTokens::mask},
  }};
  for (const auto& [key, slot] : keys) {
    if (!config.contains(key)) continue;
    const auto name = token_string(config[key]);
    if (!name) continue;
    if (const auto id = id_of(*name)) special.*slot = id;
  }
}

// ---------------------------------------------------------------------------------------------

class HfTokenizer final : public Tokenizer {
 public:
  HfTokenizer(std::filesystem::path source, const Json& root) : source_(std::move(source)) {
    if (!root.is_object() || !root.contains("model")) {
      fail("{}: not a Hugging Face tokenizer.json (no \"model\" object)", source_.string());
    }
    model_ = parse_model(source_, root["model"]);
    if (root.contains("normalizer")) parse_normalizer(source_, root["normalizer"], normalizers_);
    if (root.contains("pre_tokenizer")) {
      parse_pre_tokenizer(source_, root["pre_tokenizer"], pre_tokenizers_);
    }
    if (root.contains("decoder") && !root["decoder"].is_null()) {
      has_decoder_ = true;
      parse_decoder(source_, root["decoder"], decoders_);
    }
    static const Json kNoAddedTokens = Json::array();
    read_added_tokens(root.contains("added_tokens") ? root["added_tokens"] : kNoAddedTokens);
    build_id_table();
    resolve_special_tokens(root);
    kind_ = model_->kind();
    const auto is_byte_level = [](const PreTokenizerStep& step) { return step.kind == PreTokenizerKind::ByteLevel; };
    if (kind_ == "hf-bpe" && std::any_of(pre_tokenizers_.begin(), pre_tokenizers_.end(), is_byte_level)) {
      kind_ = "hf-bpe-byte-level";
    }
  }

  std::string kind() const override { return kind_; }
  const std::filesystem::path& source() const override { return source_; }
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  const SpecialTokens& special() const override { return special_; }

  std::vector<TokenId> encode(std::string_view text, const EncodeOptions& options) const override {
    std::vector<TokenId> ids;
    if (options.add_special_tokens) ids = added_around_.before;
    for (const Segment& raw : raw_matcher_.split(text, options.parse_special)) {
      if (raw.token) {
        ids.push_back(*raw.token);
        continue;
      }
      std::string normalized(raw.text);
      for (const NormalizerStep& step : normalizers_) {
        normalized = apply_normalizer(step, std::move(normalized));
      }
      for (const Segment& part : normalized_matcher_.split(normalized, options.parse_special)) {
        if (part.token) {
          ids.push_back(*part.token);
          continue;
        }
        std::vector<Word> words{{std::string(part.text), raw.offset == 0 && part.offset == 0}};
        for (const PreTokenizerStep& step : pre_tokenizers_) {
          words = apply_pre_tokenizer(step, std::move(words));
        }
        for (const Word& word : words) model_->tokenize(word.text, ids);
      }
    }
    if (options.add_special_tokens) ids.insert(ids.end(), added_around_.after.begin(), added_around_.after.end());
    return ids;
  }

  std::string decode(std::span<const TokenId> ids, const DecodeOptions& options) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (TokenId id : ids) {
      check_id(id);
      if (options.skip_special && skipped_on_decode_[static_cast<size_t>(id)]) continue;
      tokens.push_back(id_to_token_[static_cast<size_t>(id)]);
    }
    if (!has_decoder_) {
      // Without a decoder the library joins tokens with spaces.
      std::string joined;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i > 0) joined.push_back(' ');
        joined += tokens[i];
      }
      return joined;
    }
    for (const DecoderStep& step : decoders_) tokens = apply_decoder(step, std::move(tokens));
    std::string text;
    for (const std::string& token : tokens) text += token;
    return text;
  }

  std::string piece(TokenId id) const override {
    check_id(id);
    return id_to_token_[static_cast<size_t>(id)];
  }

 private:
  void read_added_tokens(const Json& list) {
    if (!list.is_array()) fail("{}: added_tokens is not an array", source_.string());
    for (const Json& entry : list) {
      AddedToken token;
      token.content = entry.at("content").get<std::string>();
      const int64_t id = entry.at("id").get<int64_t>();
      if (id < 0 || id >= kMaxTokenId) {
        fail("{}: added token \"{}\" has id {} out of range", source_.string(), printable(token.content), id);
      }
      token.id = static_cast<TokenId>(id);
      token.special = bool_or(entry, "special", false);
      token.lstrip = bool_or(entry, "lstrip", false);
      token.rstrip = bool_or(entry, "rstrip", false);
      token.single_word = bool_or(entry, "single_word", false);
      token.normalized = bool_or(entry, "normalized", !token.special);
      added_.push_back(token);
    }
    for (const AddedToken& token : added_) {
      if (!token.normalized) {
        raw_matcher_.add(token);
        continue;
      }
      // Normalized added tokens are looked for in normalized text, so their own content goes
      // through the normalizer too (as the library does).
      AddedToken normalized = token;
      for (const NormalizerStep& step : normalizers_) {
        normalized.content = apply_normalizer(step, std::move(normalized.content));
      }
      normalized_matcher_.add(normalized);
    }
  }

  void build_id_table() {
    int64_t size = 0;
    for (const auto& [token, id] : model_->vocab()) size = std::max<int64_t>(size, int64_t{id} + 1);
    for (const AddedToken& token : added_) size = std::max<int64_t>(size, int64_t{token.id} + 1);
    // Ids are dense in real files; a table far larger than the tokens declared is a corrupt id
    // (one stray id near kMaxTokenId would size half a gigabyte of empty strings).
    const auto declared = static_cast<int64_t>(model_->vocab().size() + added_.size());
    if (size > declared + kMaxUnusedIds) {
      fail("{}: token ids run up to {} but the file declares only {} tokens", source_.string(), size - 1, declared);
    }
    id_to_token_.assign(static_cast<size_t>(size), std::string());
    skipped_on_decode_.assign(static_cast<size_t>(size), false);
    for (const auto& [token, id] : model_->vocab()) id_to_token_[static_cast<size_t>(id)] = token;
    for (const AddedToken& token : added_) {
      id_to_token_[static_cast<size_t>(token.id)] = token.content;
    }
  }

  std::optional<TokenId> id_of(const std::string& token) const {
    for (const AddedToken& added : added_) {
      if (added.content == token) return added.id;
    }
    return find_id(model_->vocab(), token);
  }

  void resolve_special_tokens(const Json& root) {
    for (const AddedToken& token : added_) {
      if (!token.special) continue;
      for (const RoleName& role : kRoleNames) {
        if (token.content == role.name && !(special_.*role.slot)) special_.*role.slot = token.id;
      }
    }
    if (const auto unk = model_->unk_token()) {
      if (const auto id = id_of(*unk)) special_.unk = id;
    }
    const auto lookup = [this](const std::string& token) { return id_of(token); };
    if (root.contains("post_processor")) {
      read_post_processor(root["post_processor"], lookup, special_);
      parse_post_processor(source_, root["post_processor"], lookup, added_around_);
      for (const auto* side : {&added_around_.before, &added_around_.after}) {
        for (TokenId id : *side) {
          if (id < 0 || id >= vocab_size()) {
            fail("{}: post_processor adds token id {}, out of range (vocabulary size {})", source_.string(), id,
                 vocab_size());
          }
        }
      }
    }
    read_tokenizer_config(source_.parent_path() / "tokenizer_config.json", lookup, special_);
    // Post-processor ids are written out literally; one past the vocabulary is a broken file.
    for (const auto& role : {special_.bos, special_.eos, special_.unk, special_.pad, special_.cls,
                             special_.sep, special_.mask}) {
      if (role && (*role < 0 || *role >= vocab_size())) {
        fail("{}: special token id {} out of range (vocabulary size {})", source_.string(), *role,
             vocab_size());
      }
    }

    // Decode skips special added tokens (as skip_special_tokens does) and the role tokens,
    // but keeps unk so that lost text stays visible.
    for (const AddedToken& token : added_) {
      if (token.special) skipped_on_decode_[static_cast<size_t>(token.id)] = true;
    }
    for (const auto& role : {special_.bos, special_.eos, special_.pad, special_.cls, special_.sep,
                             special_.mask}) {
      if (role) skipped_on_decode_[static_cast<size_t>(*role)] = true;
    }
    if (special_.unk) skipped_on_decode_[static_cast<size_t>(*special_.unk)] = false;
  }

  void check_id(TokenId id) const {
    if (id < 0 || id >= vocab_size()) {
      fail("{}: token id {} out of range (vocabulary size {})", source_.string(), id, vocab_size());
    }
  }

  std::filesystem::path source_;
  std::string kind_;
  std::unique_ptr<SubwordModel> model_;
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<DecoderStep> decoders_;
  bool has_decoder_ = false;
  std::vector<AddedToken> added_;
  AddedTokenMatcher raw_matcher_;
  AddedTokenMatcher normalized_matcher_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> skipped_on_decode_;
  SpecialTokens special_;
  AddedAround added_around_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer_json(const std::filesystem::path& json_file) {
  const Json root = parse_json_file(json_file);
  try {
    return std::make_unique<HfTokenizer>(json_file, root);
  } catch (const Json::exception& e) {
    // A field of the wrong type or a missing key: nlohmann's message names which.
    fail("{}: malformed tokenizer.json ({})", json_file.string(), e.what());
  }
}

}  // namespace rankscope
