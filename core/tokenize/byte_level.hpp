// GPT-2's byte-level alphabet (private to core/tokenize): every byte stands for a printable
// character, so that a BPE vocabulary over bytes can be written as text. Bytes '!'..'~',
// 0xA1..0xAC and 0xAE..0xFF stand for themselves (as code points); the other 68 bytes, in
// order, for U+0100..U+0143 (a space is "Ġ" U+0120, a newline "Ċ" U+010A).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rankscope::tokenizer_detail {

// Appends the byte-level characters (UTF-8) of each byte of `bytes`.
void append_byte_level(std::string& out, std::string_view bytes);

// The byte that code point `cp` stands for, or nullopt for a character outside the alphabet.
std::optional<unsigned char> byte_of_byte_level_char(char32_t cp);

// The tokenizers library's ByteLevel decoder: each token whose characters are all in the
// alphabet becomes its bytes, any other token (an added token such as "<tool call>") its own
// UTF-8; the concatenation is read as UTF-8 with each maximal ill-formed sequence as U+FFFD.
std::string decode_byte_level(const std::vector<std::string>& tokens);

}  // namespace rankscope::tokenizer_detail
