// The regular expressions of tokenizer.json (Split pre-tokenizers, ByteLevel's GPT-2 pattern),
// run on PCRE2 (UTF + UCP, JIT where the platform has it) with the semantics of Oniguruma, the
// engine the tokenizers library runs them on (private to core/tokenize).
//
// Where the two engines read a pattern differently, the pattern is rewritten before PCRE2
// compiles it: \s and \S are the White_Space property, \w (anywhere) and \W (outside a class)
// are Unicode's word characters (Alphabetic, marks, decimal digits, connector punctuation,
// Join_Control), and ^ and $ match at line boundaries (Oniguruma's default Ruby syntax).
// PCRE2 reads everything else the published patterns use the same way: (?i:'s|'t|...), \p{L},
// \p{N}, [^\r\n\p{L}\p{N}]?, \s+(?!\S), possessive and lazy quantifiers. Not supported:
// Oniguruma's class intersection ([a-z&&[^b]]) and \W inside a class (PCRE2's own definition).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace rankscope::tokenizer_detail {

// A piece of a split text: bytes [begin, end), a match of the pattern or the gap before one.
struct RegexPiece {
  size_t begin = 0;
  size_t end = 0;
  bool is_match = false;
};

class Regex {
 public:
  // Compiles `pattern` (UTF-8), or with `literal` the plain string it spells. `where` starts
  // every error message ("tokenizer.json: pre_tokenizer Split pattern"). Throws Error for a
  // pattern PCRE2 refuses, with PCRE2's message and the byte offset in `pattern`.
  Regex(std::string_view pattern, bool literal, std::string where);

  // Appends to `out` the matches in `text` and the non-empty gaps between them, in order and
  // covering all of `text`, as the tokenizers library's find_matches over Oniguruma does: the
  // search resumes where the last match ended, and an empty match right where the previous
  // one ended is skipped by one character. `text` must be valid UTF-8. Throws Error naming the
  // pattern when PCRE2 gives up (match or JIT stack limit: a catastrophically backtracking
  // pattern).
  void find_all(std::string_view text, std::vector<RegexPiece>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;
  std::string where_;
  std::shared_ptr<const Compiled> compiled_;
};

// PCRE2's backtracking budget per search (its own default is 10 million): far above what the
// published patterns need on any text, low enough that a pathological pattern fails in
// well under a second.
inline constexpr unsigned kRegexMatchLimit = 1'000'000;

}  // namespace rankscope::tokenizer_detail
