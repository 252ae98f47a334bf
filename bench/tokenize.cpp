// bench/tokenize: tokenizer.json BPE encoding time against text length. Encodes the first 1/8 of
// 50,000 characters of TinyStories and then all of them (stories260K-hf's tokenizer), --reps
// times each, and prints the median time per character of both and their ratio: about 1 for a
// merge that is linear in the text (linked list and heap), about 8 for one that rescans the text
// after every merge.
//
//   build/bench/tokenize [--reps N] [--data-dir DIR]
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/tokenize/tokenizer.hpp"

using namespace rankscope;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_to_encode(const Tokenizer& tok, const std::string& text) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok.encode(text);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (ids.empty()) throw std::runtime_error("no tokens");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::filesystem::path data_dir = "../shared/data";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--data-dir") && i + 1 < argc) data_dir = argv[++i];
    else {
      fmt::print(stderr, "usage: {} [--reps N] [--data-dir DIR]\n", argv[0]);
      return 2;
    }
  }
  try {
    constexpr size_t kChars = 50000;
    constexpr size_t kParts = 8;
    const auto tok = load_hf_tokenizer_json(data_dir / "stories260K-hf/tokenizer.json");
    std::ifstream in(data_dir / "tinystories/tinystories_val.txt");
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str().substr(0, kChars);
    if (text.size() < kChars) throw std::runtime_error("tinystories_val.txt is shorter than 50,000 characters");
    const std::string part = text.substr(0, kChars / kParts);
    std::vector<double> small, whole;
    for (int r = 0; r < reps; ++r) {
      small.push_back(seconds_to_encode(*tok, part) / static_cast<double>(part.size()));
      whole.push_back(seconds_to_encode(*tok, text) / static_cast<double>(text.size()));
    }
    fmt::print("bench/tokenize: tokenizer.json BPE (stories260K-hf), medians of {}\n", reps);
    fmt::print("  {:>6} characters  {:8.3f} us/character (baseline)\n", part.size(), 1e6 * median(small));
    fmt::print("  {:>6} characters  {:8.3f} us/character ({:.2f} ms in all)\n", text.size(), 1e6 * median(whole),
               1e3 * median(whole) * static_cast<double>(text.size()));
    fmt::print("  per-character ratio {:.2f} (1 linear, {} quadratic)\n", median(whole) / median(small), kParts);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench/tokenize: {}\n", e.what());
    return 1;
  }
  return 0;
}
