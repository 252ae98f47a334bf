// UTF-8 and Unicode helpers for the tokenizers, backed by utf8proc.
//
// Every function accepts arbitrary bytes: an invalid or truncated UTF-8 sequence (including an
// encoded surrogate or an overlong form) is read as one byte that decodes to U+FFFD, so callers
// always make progress and never read past the end. Character classes follow the definitions
// that BERT's reference tokenizer uses, named after it where they differ from plain Unicode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace rankscope::unicode {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// One character read from UTF-8: its code point, how many bytes it took (1..4), and whether
// those bytes were well-formed (if not, `code_point` is U+FFFD and `length` is 1).
struct Utf8Char {
  char32_t code_point = kReplacementChar;
  uint32_t length = 1;
  bool valid = false;
};

// Decodes the character that starts at byte `pos` of `text` (requires pos < text.size()).
Utf8Char decode_utf8(std::string_view text, size_t pos);

// The code points of `text`; each invalid byte becomes U+FFFD.
std::u32string to_code_points(std::string_view text);

// Appends the UTF-8 encoding of `cp` (U+FFFD for a surrogate or a value above U+10FFFF).
void append_utf8(std::string& out, char32_t cp);
std::string to_utf8(std::u32string_view code_points);

bool is_valid_utf8(std::string_view text);

// `text` with each maximal ill-formed subsequence replaced by one U+FFFD (Unicode's recommended
// practice, and what Rust's String::from_utf8_lossy and Python's errors="replace" do): "\xE2\x82"
// before an ASCII byte is one U+FFFD, "\xFF\xFE" two.
std::string replace_invalid_utf8(std::string_view text);

// `text` with every invalid byte replaced by U+FFFD: valid UTF-8 for libraries that require it.
std::string sanitize_utf8(std::string_view text);

enum class NormalForm { Nfc, Nfd, Nfkc, Nfkd };

// Unicode normalization of `text` (invalid bytes become U+FFFD first).
std::string normalize(std::string_view text, NormalForm form);

// NFD, then every nonspacing mark (category Mn) removed: BERT's accent stripping.
std::u32string strip_accents(std::u32string_view code_points);

// Full lower-case mapping of each character on its own (Rust's char::to_lowercase): the simple
// mapping, except that U+0130 (capital I with dot) becomes "i" + U+0307.
std::u32string to_lower(std::u32string_view code_points);
// As to_lower, plus the Final_Sigma rule of Python's str.lower: a capital sigma that ends a
// word becomes U+03C2 (final sigma) instead of U+03C3.
std::u32string to_lower_final_sigma(std::u32string_view code_points);

// General-category tests.
bool is_nonspacing_mark(char32_t cp);  // Mn
bool is_alphanumeric(char32_t cp);     // L* or N*
bool is_numeric(char32_t cp);          // N* (Rust's char::is_numeric)

// White_Space property (what Rust's char::is_whitespace and most splitters use).
bool is_whitespace(char32_t cp);

// BERT's classes: whitespace is space, \t, \n, \r or category Zs; control is category C* other
// than \t, \n, \r; punctuation is ASCII 33-47, 58-64, 91-96, 123-126 or category P*.
bool is_bert_whitespace(char32_t cp);
bool is_bert_control(char32_t cp);
bool is_bert_punctuation(char32_t cp);

// CJK Unified Ideographs (and extensions A-E, compatibility ideographs), the ranges BERT
// surrounds with spaces. Hangul, kana and CJK punctuation are not included.
bool is_cjk_ideograph(char32_t cp);

}  // namespace rankscope::unicode
