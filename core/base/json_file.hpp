// Reading JSON with one-line errors naming where it came from (config.json, shard indexes,
// tokenizer.json, safetensors headers, results-database columns).
//
// Every document is checked for nesting depth before nlohmann::json sees it: the library's
// parser is iterative, but destroying, copying and dumping a value recurse once per level, so a
// 100,000-level array (a few hundred kB of '[') overflows the stack. No file rankscope reads
// nests deeper than a dozen levels.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"

namespace rankscope {

// The deepest nesting of arrays and objects accepted in any JSON document.
inline constexpr int kMaxJsonDepth = 128;

// The nesting depth of `text`'s arrays and objects, counting brackets outside strings (a quick
// scan that never recurses; malformed text is left to the parser). Stops counting past `limit`.
inline int json_nesting_depth(std::string_view text, int limit = kMaxJsonDepth) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// Throws Error naming `where` when `text` nests deeper than kMaxJsonDepth: for readers that
// parse themselves to phrase their own parse errors (byte offsets, line numbers).
inline void check_json_depth(std::string_view text, std::string_view where) {
  if (json_nesting_depth(text) > kMaxJsonDepth)
    fail("{}: JSON nested more than {} levels deep", where, kMaxJsonDepth);
}

// Parses `text` as JSON; `where` names the source in the one-line Error ("x.json", "the settings
// of study 'a' in r.db"). Refuses nesting deeper than kMaxJsonDepth before parsing.
template <typename Json = nlohmann::json>
Json parse_json_text(std::string_view text, std::string_view where) {
  check_json_depth(text, where);
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON: {}", where, e.what());
  }
}

// `text` (a value read from a file) fit for a one-line error message: control characters escaped
// as \xNN, cut after `max_chars` bytes with "...".
inline std::string printable(std::string_view text, size_t max_chars = 80) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

// True when `text` holds a control character (which would split a one-line message naming it).
inline bool has_control_characters(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    fail("{}: not a regular file", path.string());
  std::ifstream in(path);
  if (!in) fail("{}: cannot open", path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_json_text(buffer.str(), path.string());
}

}  // namespace rankscope
