// Errors in three tiers (see docs/architecture.md):
//  - RS_ASSERT for programmer errors (a broken invariant aborts with file:line);
//  - rankscope::Error for bad input: a one-line message naming the file and what is wrong,
//    caught once per subcommand and turned into exit code 1;
//  - plain return values for outcomes a caller expects (e.g. a search point that fails).
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace rankscope {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// An Error that says nothing about the input: the machine ran short of something (disk space,
// memory, file descriptors) or an I/O device failed. The same work may succeed on a rerun, so a
// sweep releases the configuration instead of recording it as failed.
class TransientError : public Error {
 public:
  explicit TransientError(const std::string& message) : Error(message) {}
};

// Whether errno value `err` describes the machine, not the input (ENOSPC, EDQUOT, ENOMEM, EIO,
// EMFILE, ENFILE): failures a rerun may not repeat.
inline bool is_transient_errno(int err) {
  return err == ENOSPC || err == EDQUOT || err == ENOMEM || err == EIO || err == EMFILE || err == ENFILE;
}

// Throws Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Throws TransientError when errno value `err` is transient (is_transient_errno), else Error;
// the message is the formatted text followed by ": " and strerror(err).
template <typename... Args>
[[noreturn]] void fail_errno(int err, fmt::format_string<Args...> format, Args&&... args) {
  const std::string message = fmt::format(format, std::forward<Args>(args)...) + ": " + std::strerror(err);
  if (is_transient_errno(err)) throw TransientError(message);
  throw Error(message);
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
