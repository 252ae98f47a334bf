// Helpers shared by the tests: where ../shared is, and how a test that needs it skips.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

namespace rankscope::test {

// ../shared beside the repository (RANKSCOPE_SOURCE_DIR is set by tests/CMakeLists.txt).
// RANKSCOPE_SHARED_DIR overrides it, e.g. with a missing path to check that tests skip cleanly.
inline std::filesystem::path shared_dir() {
  if (const char* dir = std::getenv("RANKSCOPE_SHARED_DIR")) return dir;
  return std::filesystem::path(RANKSCOPE_SOURCE_DIR) / ".." / "shared";
}

inline std::filesystem::path shared_data(const std::string& rel) { return shared_dir() / "data" / rel; }

// A fresh empty directory under the build tree for one test's files.
inline std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = std::filesystem::path(RANKSCOPE_BINARY_DIR) / "test-scratch" / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace rankscope::test

// Skips the current test (ctest reports it as skipped) when a file under ../shared is absent.
#define RS_REQUIRE_SHARED(path)                                                             \
  do {                                                                                      \
    if (!std::filesystem::exists(path)) {                                                   \
      WARN("SKIPPED: " << (path).string() << " not found (../shared is not beside the repo)"); \
      return;                                                                               \
    }                                                                                       \
  } while (0)
