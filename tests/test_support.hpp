// Helpers shared by the tests: where ../shared is, and how a test that needs it skips.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <sys/wait.h>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <sstream>
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

// How far two float32 forward passes of one model may differ, relative to the values compared,
// when their products run in another order: another batching gives GEMM other shapes, hence
// another kernel and summation order, and another machine (OPENBLAS_CORETYPE) another kernel. A
// float32 dot product of length k is within k*u (u = 2^-24) of the exact one relative to
// sum |x_i||w_i|, whatever the summation order (Higham, Accuracy and Stability of Numerical
// Algorithms, 3.1); to first order these bounds add along the chain of products one output
// depends on, and every layer's norm rescales its input so they do not compound. Per layer:
// attention in (k = n_embd), scores (n_embd_head), weighted values (at most ctx positions),
// attention out (n_embd_q), gate/up (n_embd), down (n_ff); then the head (n_embd). Both passes
// err, so twice that. For stories260K-hf at ctx 512 this is 5.3e-4: a bound, far above the
// 1e-6 typical of two kernels, and far below what a wrong position or token changes.
template <typename Config>
double fp32_forward_rel_tol(const Config& c, int64_t ctx) {
  constexpr double u = 0x1p-24;
  const int64_t per_layer = c.n_embd + c.n_embd_head + ctx + c.n_embd_q() + c.n_embd + c.n_ff;
  return 2.0 * static_cast<double>(c.n_layer * per_layer + c.n_embd) * u;
}

// The whole content of a file ("" when it cannot be read).
inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct RunResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `rankscope ARGS` from the repository root (tests refer to ../shared from there), after the
// shell commands `prefix` (e.g. a file size limit); stdout and stderr apart.
inline RunResult run_cli(const std::string& args, const std::string& prefix = "") {
  const auto dir = std::filesystem::path(RANKSCOPE_BINARY_DIR) / "test-scratch";
  std::filesystem::create_directories(dir);
  // Unique names: ctest runs test cases in parallel processes.
  static int counter = 0;
  const auto stem = "run." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  const auto out = dir / (stem + ".out");
  const auto err = dir / (stem + ".err");
  const std::string cmd = "cd '" RANKSCOPE_SOURCE_DIR "' && " + prefix + " '" RANKSCOPE_EXE "' " + args + " >'" +
                          out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  RunResult result{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return result;
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
