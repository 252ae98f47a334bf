#include "core/tokenize/unicode.hpp"

#include <cstdlib>
#include <memory>

#include <utf8proc.h>

namespace rankscope::unicode {

namespace {

constexpr char32_t kMaxCodePoint = 0x10FFFF;
constexpr char32_t kSurrogateFirst = 0xD800;
constexpr char32_t kSurrogateLast = 0xDFFF;

constexpr bool is_continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

utf8proc_category_t category_of(char32_t cp) {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

bool is_other_category(utf8proc_category_t category) {
  return category == UTF8PROC_CATEGORY_CN || category == UTF8PROC_CATEGORY_CC ||
         category == UTF8PROC_CATEGORY_CF || category == UTF8PROC_CATEGORY_CS ||
         category == UTF8PROC_CATEGORY_CO;
}

bool is_punctuation_category(utf8proc_category_t category) {
  return category >= UTF8PROC_CATEGORY_PC && category <= UTF8PROC_CATEGORY_PO;
}

}  // namespace

Utf8Char decode_utf8(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {lead, 1, true};

  // The first continuation byte has a narrower range for some lead bytes: that is what rules
  // out overlong forms (E0, F0), surrogates (ED) and values above U+10FFFF (F4).
  uint32_t length = 0;
  char32_t cp = 0;
  unsigned char first_min = 0x80;
  unsigned char first_max = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
    cp = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    cp = lead & 0x0F;
    if (lead == 0xE0) first_min = 0xA0;
    if (lead == 0xED) first_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    cp = lead & 0x07;
    if (lead == 0xF0) first_min = 0x90;
    if (lead == 0xF4) first_max = 0x8F;
  } else {
    return {};
  }
  if (pos + length > text.size()) return {};
  const auto first = static_cast<unsigned char>(text[pos + 1]);
  if (first < first_min || first > first_max) return {};
  for (uint32_t i = 1; i < length; ++i) {
    const auto byte = static_cast<unsigned char>(text[pos + i]);
    if (!is_continuation(byte)) return {};
    cp = (cp << 6) | (byte & 0x3F);
  }
  return {cp, length, true};
}

std::u32string to_code_points(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char ch = decode_utf8(text, pos);
    out.push_back(ch.code_point);
    pos += ch.length;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp > kMaxCodePoint || (cp >= kSurrogateFirst && cp <= kSurrogateLast)) cp = kReplacementChar;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string to_utf8(std::u32string_view code_points) {
  std::string out;
  out.reserve(code_points.size());
  for (char32_t cp : code_points) append_utf8(out, cp);
  return out;
}

bool is_valid_utf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Utf8Char ch = decode_utf8(text, pos);
    if (!ch.valid) return false;
    pos += ch.length;
  }
  return true;
}

namespace {

// The length of the maximal subpart of an ill-formed sequence at `pos` (Unicode's "U+FFFD
// substitution of maximal subparts"): the lead byte plus the continuation bytes that could
// still have begun a well-formed character; 1 for a byte that cannot lead one.
size_t maximal_subpart(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  size_t length = 0;
  unsigned char first_min = 0x80;
  unsigned char first_max = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) first_min = 0xA0;
    if (lead == 0xED) first_max = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) first_min = 0x90;
    if (lead == 0xF4) first_max = 0x8F;
  } else {
    return 1;
  }
  size_t taken = 1;
  while (taken < length && pos + taken < text.size()) {
    const auto byte = static_cast<unsigned char>(text[pos + taken]);
    const unsigned char low = taken == 1 ? first_min : 0x80;
    const unsigned char high = taken == 1 ? first_max : 0xBF;
    if (byte < low || byte > high) break;
    ++taken;
  }
  return taken;
}

}  // namespace

std::string replace_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char ch = decode_utf8(text, pos);
    if (ch.valid) {
      out.append(text.substr(pos, ch.length));
      pos += ch.length;
    } else {
      append_utf8(out, kReplacementChar);
      pos += maximal_subpart(text, pos);
    }
  }
  return out;
}

std::string sanitize_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char ch = decode_utf8(text, pos);
    if (ch.valid) {
      out.append(text.substr(pos, ch.length));
    } else {
      append_utf8(out, kReplacementChar);
    }
    pos += ch.length;
  }
  return out;
}

std::string normalize(std::string_view text, NormalForm form) {
  if (text.empty()) return {};
  // utf8proc rejects invalid UTF-8 as a whole; replacing bad bytes first keeps the rest.
  const std::string clean = sanitize_utf8(text);
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::Nfc: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::Nfd: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::Nfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::Nfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* raw = nullptr;
  const utf8proc_ssize_t length =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(clean.data()),
                   static_cast<utf8proc_ssize_t>(clean.size()), &raw,
                   static_cast<utf8proc_option_t>(options));
  // utf8proc allocates the result with malloc; it is ours to free.
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> result(raw, &std::free);
  if (length < 0 || result == nullptr) return clean;
  return std::string(reinterpret_cast<const char*>(result.get()), static_cast<size_t>(length));
}

std::u32string strip_accents(std::u32string_view code_points) {
  const std::u32string decomposed =
      to_code_points(normalize(to_utf8(code_points), NormalForm::Nfd));
  std::u32string out;
  out.reserve(decomposed.size());
  for (char32_t cp : decomposed) {
    if (!is_nonspacing_mark(cp)) out.push_back(cp);
  }
  return out;
}

namespace {

constexpr char32_t kCapitalIWithDot = 0x0130;
constexpr char32_t kCombiningDotAbove = 0x0307;
constexpr char32_t kCapitalSigma = 0x03A3;
constexpr char32_t kSmallSigma = 0x03C3;
constexpr char32_t kSmallFinalSigma = 0x03C2;

char32_t simple_lower(char32_t cp) {
  if (cp > kMaxCodePoint) return cp;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
}

bool is_cased(char32_t cp) {
  const utf8proc_category_t category = category_of(cp);
  return category == UTF8PROC_CATEGORY_LU || category == UTF8PROC_CATEGORY_LL ||
         category == UTF8PROC_CATEGORY_LT;
}

// Case_Ignorable, by category plus the word-internal punctuation Unicode lists for it.
bool is_case_ignorable(char32_t cp) {
  switch (cp) {
    case U'\'': case U'.': case U':': case 0x00B7: case 0x2018: case 0x2019: case 0x2024:
      return true;
    default: break;
  }
  const utf8proc_category_t category = category_of(cp);
  return category == UTF8PROC_CATEGORY_MN || category == UTF8PROC_CATEGORY_ME ||
         category == UTF8PROC_CATEGORY_CF || category == UTF8PROC_CATEGORY_LM ||
         category == UTF8PROC_CATEGORY_SK;
}

// Final_Sigma: a cased letter (then case-ignorables) before, and no cased letter (after
// case-ignorables) following.
bool is_final_sigma(std::u32string_view text, size_t pos) {
  size_t before = pos;
  while (before > 0 && is_case_ignorable(text[before - 1])) --before;
  if (before == 0 || !is_cased(text[before - 1])) return false;
  size_t after = pos + 1;
  while (after < text.size() && is_case_ignorable(text[after])) ++after;
  return after == text.size() || !is_cased(text[after]);
}

std::u32string lower(std::u32string_view code_points, bool final_sigma) {
  std::u32string out;
  out.reserve(code_points.size());
  for (size_t i = 0; i < code_points.size(); ++i) {
    const char32_t cp = code_points[i];
    if (cp == kCapitalIWithDot) {
      out.push_back(U'i');
      out.push_back(kCombiningDotAbove);
    } else if (cp == kCapitalSigma && final_sigma) {
      out.push_back(is_final_sigma(code_points, i) ? kSmallFinalSigma : kSmallSigma);
    } else {
      out.push_back(simple_lower(cp));
    }
  }
  return out;
}

}  // namespace

std::u32string to_lower(std::u32string_view code_points) { return lower(code_points, false); }

std::u32string to_lower_final_sigma(std::u32string_view code_points) {
  return lower(code_points, true);
}

bool is_nonspacing_mark(char32_t cp) { return category_of(cp) == UTF8PROC_CATEGORY_MN; }

bool is_alphanumeric(char32_t cp) {
  const utf8proc_category_t category = category_of(cp);
  return (category >= UTF8PROC_CATEGORY_LU && category <= UTF8PROC_CATEGORY_LO) ||
         (category >= UTF8PROC_CATEGORY_ND && category <= UTF8PROC_CATEGORY_NO);
}

bool is_numeric(char32_t cp) {
  const utf8proc_category_t category = category_of(cp);
  return category >= UTF8PROC_CATEGORY_ND && category <= UTF8PROC_CATEGORY_NO;
}

bool is_whitespace(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_bert_whitespace(char32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  return category_of(cp) == UTF8PROC_CATEGORY_ZS;
}

bool is_bert_control(char32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  return is_other_category(category_of(cp));
}

bool is_bert_punctuation(char32_t cp) {
  // BERT counts every non-alphanumeric printable ASCII character as punctuation, including
  // symbols such as $, + and ^ that Unicode files under S*.
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126)) {
    return true;
  }
  return is_punctuation_category(category_of(cp));
}

bool is_cjk_ideograph(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

}  // namespace rankscope::unicode
