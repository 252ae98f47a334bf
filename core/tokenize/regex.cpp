// PCRE2 behind tokenizer_detail::Regex. Each thread keeps one match block (one pair of offsets is
// all a split needs), one match context carrying the limits and one JIT stack, so that a search
// allocates nothing and tokenizers can be shared between threads.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "core/tokenize/regex.hpp"

#include <pcre2.h>

#include <array>
#include <optional>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/tokenize/unicode.hpp"

namespace rankscope::tokenizer_detail {

namespace {

// Oniguruma's \s and \w in PCRE2's terms (see regex.hpp).
constexpr std::string_view kSpace = "\\p{White_Space}";
constexpr std::string_view kNotSpace = "\\P{White_Space}";
constexpr std::string_view kWordItems = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}";

// The JIT stack of a thread: it starts small and grows on demand up to the maximum; a search
// that needs more fails with PCRE2_ERROR_JIT_STACKLIMIT.
constexpr size_t kJitStackStart = size_t{32} << 10;
constexpr size_t kJitStackMax = size_t{4} << 20;
constexpr size_t kErrorMessageSize = 256;

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, kErrorMessageSize> buffer{};
  if (pcre2_get_error_message(code, buffer.data(), buffer.size()) < 0) return fmt::format("PCRE2 error {}", code);
  return std::string(reinterpret_cast<const char*>(buffer.data()));
}

// `pattern` rewritten for PCRE2, and for each byte written the offset in `pattern` it came from
// (so that PCRE2's error offsets can be reported against what the file says).
struct Translated {
  std::string text;
  std::vector<size_t> origin;
};

Translated translate(std::string_view pattern) {
  Translated out;
  const auto emit = [&](std::string_view text, size_t from) {
    out.text.append(text);
    out.origin.insert(out.origin.end(), text.size(), from);
  };
  bool in_class = false;
  size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 'Q') {
        // \Q...\E quotes everything up to \E (or the end) literally.
        const size_t stop = pattern.find("\\E", i + 2);
        const size_t end = stop == std::string_view::npos ? pattern.size() : stop + 2;
        emit(pattern.substr(i, end - i), i);
        i = end;
        continue;
      }
      if (next == 's') {
        emit(kSpace, i);
      } else if (next == 'S') {
        emit(kNotSpace, i);
      } else if (next == 'w') {
        emit(in_class ? std::string(kWordItems) : fmt::format("[{}]", kWordItems), i);
      } else if (next == 'W' && !in_class) {
        emit(fmt::format("[^{}]", kWordItems), i);
      } else {
        emit(pattern.substr(i, 2), i);
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      emit("[", i++);
      if (i < pattern.size() && pattern[i] == '^') emit("^", i++);
      // A ']' right after the opening bracket is a literal member.
      if (i < pattern.size() && pattern[i] == ']') emit("]", i++);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      // A POSIX class such as [:alpha:] inside a class.
      const size_t stop = pattern.find(":]", i + 2);
      const size_t end = stop == std::string_view::npos ? i + 1 : stop + 2;
      emit(pattern.substr(i, end - i), i);
      i = end;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    emit(pattern.substr(i, 1), i);
    ++i;
  }
  return out;
}

struct MatchScratch {
  MatchScratch()
      : data(pcre2_match_data_create(1, nullptr)),
        context(pcre2_match_context_create(nullptr)),
        stack(pcre2_jit_stack_create(kJitStackStart, kJitStackMax, nullptr)) {
    if (data == nullptr || context == nullptr) fail("out of memory for a PCRE2 match block");
    pcre2_set_match_limit(context, kRegexMatchLimit);
    // Without JIT the interpreter keeps its backtracking frames on the heap; bound that too.
    pcre2_set_depth_limit(context, kRegexMatchLimit);
    if (stack != nullptr) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;

  pcre2_match_data* data;
  pcre2_match_context* context;
  pcre2_jit_stack* stack;
};

MatchScratch& match_scratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

struct Regex::Compiled {
  explicit Compiled(pcre2_code* compiled) : code(compiled) {}
  ~Compiled() { pcre2_code_free(code); }
  Compiled(const Compiled&) = delete;
  Compiled& operator=(const Compiled&) = delete;
  pcre2_code* code;
};

Regex::Regex(std::string_view pattern, bool literal, std::string where)
    : pattern_(pattern), where_(std::move(where)) {
  if (!unicode::is_valid_utf8(pattern)) fail("{} is not valid UTF-8", where_);
  Translated translated;
  uint32_t options = PCRE2_UTF;
  if (literal) {
    translated.text = pattern_;
    translated.origin.resize(pattern_.size());
    for (size_t i = 0; i < pattern_.size(); ++i) translated.origin[i] = i;
    options |= PCRE2_LITERAL;
  } else {
    translated = translate(pattern_);
    options |= PCRE2_UCP | PCRE2_MULTILINE;
  }
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.text.data()), translated.text.size(),
                                   options, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    const size_t offset = error_offset < translated.origin.size() ? translated.origin[error_offset] : pattern_.size();
    fail("{} /{}/ is not a valid regular expression: {} at byte {}", where_, printable(pattern_),
         pcre2_message(error_code), offset);
  }
  compiled_ = std::make_shared<const Compiled>(code);
  // JIT is an optimisation: where the platform lacks it, pcre2_match interprets.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
}

void Regex::find_all(std::string_view text, std::vector<RegexPiece>& out) const {
  MatchScratch& scratch = match_scratch();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t search_from = 0;
  size_t gap_start = 0;
  std::optional<size_t> last_match_end;
  while (search_from <= text.size()) {
    // The caller guarantees valid UTF-8 once for the whole text; PCRE2 would otherwise check
    // the whole subject again on every call.
    const int rc = pcre2_match(compiled_->code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK,
                               scratch.data, scratch.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      fail("{} /{}/ gave up on the input at byte {}: {} (a pattern that backtracks catastrophically?)", where_,
           printable(pattern_), search_from, pcre2_message(rc));
    }
    const PCRE2_SIZE* offsets = pcre2_get_ovector_pointer(scratch.data);
    const size_t begin = offsets[0];
    const size_t end = offsets[1];
    if (begin < search_from || end < begin || end > text.size()) {
      // Only \K tricks inside lookarounds could report such a match; PCRE2 refuses those at
      // compile time by default, so this is a broken invariant.
      fail("{} /{}/ reported a match [{}, {}) outside the searched text", where_, printable(pattern_), begin, end);
    }
    if (begin == end && last_match_end == end) {
      // Oniguruma's iterator refuses an empty match where the last one ended and searches
      // again one character on.
      search_from += search_from < text.size() ? unicode::decode_utf8(text, search_from).length : 1;
      continue;
    }
    if (begin > gap_start) out.push_back({gap_start, begin, false});
    out.push_back({begin, end, true});
    gap_start = end;
    search_from = end;
    last_match_end = end;
  }
  if (gap_start < text.size()) out.push_back({gap_start, text.size(), false});
}

}  // namespace rankscope::tokenizer_detail
