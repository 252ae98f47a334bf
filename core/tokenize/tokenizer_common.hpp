// Pieces shared by the tokenizer readers (private to core/tokenizer_*.cpp).
#pragma once

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/base/error.hpp"
#include "core/base/mapped_file.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "core/tokenize/unicode.hpp"

namespace rankscope::tokenizer_detail {

// A vocabulary looked up by string_view without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};
using VocabMap = std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>>;

inline std::optional<TokenId> find_id(const VocabMap& vocab, std::string_view token) {
  const auto it = vocab.find(token);
  if (it == vocab.end()) return std::nullopt;
  return it->second;
}

// WordPiece on one word (UTF-8): greedy longest-match-first, pieces after the first carrying
// `prefix` ("##"); a word longer than `max_chars` characters, or with a remainder no piece
// matches, becomes the single `unk` id.
inline void wordpiece_encode(std::string_view word, std::string_view prefix, size_t max_chars, const VocabMap& vocab,
                             TokenId unk, std::vector<TokenId>& out) {
  std::vector<size_t> char_starts;
  for (size_t pos = 0; pos < word.size(); pos += unicode::decode_utf8(word, pos).length) char_starts.push_back(pos);
  if (char_starts.size() > max_chars) {
    out.push_back(unk);
    return;
  }
  char_starts.push_back(word.size());
  const size_t n_chars = char_starts.size() - 1;
  const size_t first_new = out.size();
  std::string candidate;
  size_t start = 0;
  while (start < n_chars) {
    std::optional<TokenId> match;
    size_t end = n_chars;
    for (; end > start; --end) {
      candidate.assign(start > 0 ? prefix : std::string_view());
      candidate.append(word.substr(char_starts[start], char_starts[end] - char_starts[start]));
      match = find_id(vocab, candidate);
      if (match) break;
    }
    if (!match) {
      out.resize(first_new);
      out.push_back(unk);
      return;
    }
    out.push_back(*match);
    start = end;
  }
}

}  // namespace rankscope::tokenizer_detail
