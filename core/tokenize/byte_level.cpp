#include "core/tokenize/byte_level.hpp"

#include <array>

#include "core/tokenize/unicode.hpp"

namespace rankscope::tokenizer_detail {

namespace {

constexpr size_t kByteCount = 256;
// The first code point given to the bytes that do not stand for themselves.
constexpr char32_t kFirstShifted = 0x100;
// One past the last code point of the alphabet (kFirstShifted + 68).
constexpr char32_t kAlphabetEnd = 0x144;

constexpr bool stands_for_itself(unsigned byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
}

struct Tables {
  Tables() {
    char32_t next = kFirstShifted;
    for (unsigned byte = 0; byte < kByteCount; ++byte) {
      const char32_t cp = stands_for_itself(byte) ? char32_t{byte} : next++;
      unicode::append_utf8(chars[byte], cp);
      bytes[cp] = static_cast<int16_t>(byte);
    }
  }
  std::array<std::string, kByteCount> chars;
  // Code point -> byte, -1 where the code point is not in the alphabet.
  std::array<int16_t, kAlphabetEnd> bytes = [] {
    std::array<int16_t, kAlphabetEnd> table{};
    table.fill(-1);
    return table;
  }();
};

const Tables& tables() {
  static const Tables instance;
  return instance;
}

}  // namespace

void append_byte_level(std::string& out, std::string_view bytes) {
  const Tables& t = tables();
  for (char byte : bytes) out += t.chars[static_cast<unsigned char>(byte)];
}

std::optional<unsigned char> byte_of_byte_level_char(char32_t cp) {
  if (cp >= kAlphabetEnd) return std::nullopt;
  const int16_t byte = tables().bytes[cp];
  if (byte < 0) return std::nullopt;
  return static_cast<unsigned char>(byte);
}

std::string decode_byte_level(const std::vector<std::string>& tokens) {
  std::string bytes;
  std::string token_bytes;
  for (const std::string& token : tokens) {
    token_bytes.clear();
    bool in_alphabet = true;
    for (size_t pos = 0; pos < token.size();) {
      const unicode::Utf8Char ch = unicode::decode_utf8(token, pos);
      const auto byte = ch.valid ? byte_of_byte_level_char(ch.code_point) : std::nullopt;
      if (!byte) {
        in_alphabet = false;
        break;
      }
      token_bytes.push_back(static_cast<char>(*byte));
      pos += ch.length;
    }
    bytes += in_alphabet ? token_bytes : token;
  }
  return unicode::replace_invalid_utf8(bytes);
}

}  // namespace rankscope::tokenizer_detail
