// --limit as lm-evaluation-harness takes it: a whole number of documents, or a fraction in (0, 1) of
// each task's documents. lm-eval (evaluator_utils.get_sample_size) keeps
// int(math.ceil(len(eval_docs) * limit)) documents for a limit below 1.0 and int(limit) otherwise;
// Limit::of computes the same (the product in double precision, as Python's float).
#pragma once

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <istream>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace rankscope {

struct Limit {
  int64_t count = -1;     // documents (windows for llamacpp/chunks perplexity); -1 = all
  double fraction = 0.0;  // in (0, 1): that share of each task's documents instead, rounded up

  // Implicit: a whole count is what every caller before fractions passed (TaskLoadOptions{.limit = 20}).
  Limit(int64_t n = -1) : count(n) {}  // NOLINT(google-explicit-constructor)
  static Limit share(double f) {
    Limit l;
    l.fraction = f;
    return l;
  }

  bool is_fraction() const { return fraction > 0.0; }
  bool all() const { return !is_fraction() && count < 0; }

  // How many of `n` items are kept: ceil(n * fraction), min(count, n), or n.
  int64_t of(int64_t n) const {
    if (is_fraction()) return std::min(n, static_cast<int64_t>(std::ceil(static_cast<double>(n) * fraction)));
    return count < 0 ? n : std::min(count, n);
  }

  // The value as a user writes it: "-1", "200", "0.1".
  std::string text() const {
    if (!is_fraction()) return std::to_string(count);
    std::array<char, 32> buf{};
    const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), fraction);
    return std::string(buf.data(), ec == std::errc() ? end : buf.data());
  }

  // Parses --limit: -1 (all), a whole number >= 1 ("5" or "5.0": lm-eval's int(limit)), or a
  // fraction strictly between 0 and 1. Anything else is nullopt with the reason in `why`.
  static std::optional<Limit> parse(std::string_view text, std::string* why = nullptr) {
    auto reject = [&](const char* reason) -> std::optional<Limit> {
      if (why) *why = reason;
      return std::nullopt;
    };
    int64_t whole = 0;
    const char* first = text.data();
    const char* last = text.data() + text.size();
    if (auto [end, ec] = std::from_chars(first, last, whole); ec == std::errc() && end == last && !text.empty()) {
      if (whole == -1 || whole >= 1) return Limit(whole);
      return reject("must be a positive number of documents, a fraction in (0, 1), or -1 for all");
    }
    double value = 0.0;
    const auto [end, ec] = std::from_chars(first, last, value);
    if (ec != std::errc() || end != last || text.empty() || !std::isfinite(value)) {
      return reject("is not a number (a number of documents, a fraction in (0, 1), or -1 for all)");
    }
    if (value > 0.0 && value < 1.0) return share(value);
    constexpr double kExactIntegers = 9007199254740992.0;  // 2^53
    if (value >= 1.0 && value == std::floor(value) && value <= kExactIntegers) return Limit(static_cast<int64_t>(value));
    if (value >= 1.0) return reject("is not a whole number of documents (a fraction must be below 1)");
    return reject("must be a positive number of documents, a fraction in (0, 1), or -1 for all");
  }
};

inline bool operator==(const Limit& a, const Limit& b) { return a.count == b.count && a.fraction == b.fraction; }

// JSON: the count as an integer (what results and study settings recorded before fractions), the
// fraction as a number below 1.
template <typename Json>  // nlohmann::json and nlohmann::ordered_json alike
void to_json(Json& j, const Limit& limit) {
  if (limit.is_fraction()) {
    j = limit.fraction;
  } else {
    j = limit.count;
  }
}

inline std::ostream& operator<<(std::ostream& out, const Limit& limit) { return out << limit.text(); }

inline std::istream& operator>>(std::istream& in, Limit& limit) {
  std::string token;
  in >> token;
  if (const auto parsed = Limit::parse(token)) {
    limit = *parsed;
  } else {
    in.setstate(std::ios::failbit);
  }
  return in;
}

}  // namespace rankscope
