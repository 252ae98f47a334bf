// splitmix64 (Steele, Lea, Flood 2014): the value of a counter-based generator at x, the same on
// every machine and standard library. Next value of a stream: splitmix64(state), state += golden.
#pragma once

#include <cstdint>

namespace rankscope {

inline constexpr uint64_t kSplitmixGolden = 0x9E3779B97F4A7C15ull;

inline uint64_t splitmix64(uint64_t x) {
  x += kSplitmixGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace rankscope
