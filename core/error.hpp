// Errors in three tiers (see docs/architecture.md):
//  - RS_ASSERT for programmer errors (a broken invariant aborts with file:line);
//  - rankscope::Error for bad input: a one-line message naming the file and what is wrong,
//    caught once per subcommand and turned into exit code 1;
//  - plain return values for outcomes a caller expects (e.g. a search point that fails).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace rankscope {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace rankscope

#define RS_ASSERT(cond)                                                                  \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "rankscope: internal error: %s (%s:%d)\n", #cond, __FILE__,   \
                   __LINE__);                                                            \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)
