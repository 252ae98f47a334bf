#include "cli/progress.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#include <fmt/format.h>

namespace rankscope::cli {

namespace {

std::string clock_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

Progress::Progress(std::string label) : label_(std::move(label)) {
  const char* force = std::getenv("RANKSCOPE_PROGRESS");
  enabled_ = force ? std::strcmp(force, "0") != 0 : isatty(STDERR_FILENO) != 0;
  start_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, int64_t total) {
  if (!enabled_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double frac = static_cast<double>(done) / static_cast<double>(total);
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  const std::string eta = done > 0 ? clock_text(elapsed / frac - elapsed) : "?";
  fmt::print(stderr, "\r{:<16} [{}{}] {:3.0f}% {}/{}  {} elapsed, ETA {}\x1b[K", label_, std::string(filled, '#'),
             std::string(kWidth - filled, '.'), 100.0 * frac, done, total, clock_text(elapsed), eta);
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::finish() {
  if (drawn_) {
    fmt::print(stderr, "\r\x1b[K");
    std::fflush(stderr);
    drawn_ = false;
  }
}

}  // namespace rankscope::cli
