// NumPy .npy files (format version 1.0/2.0) of little-endian float32 in C order: the interchange
// format of `rankscope forward` and of the golden outputs in ../shared.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

namespace rankscope {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> values;  // C order
};

// Reads a '<f4' (or '<f8', narrowed) C-order array. Throws Error naming the file otherwise.
NpyArray read_npy(const std::filesystem::path& path);
// Writes a '<f4' C-order array, version 1.0, header padded to 64 bytes.
void write_npy(const std::filesystem::path& path, const std::vector<int64_t>& shape,
               const float* values);

}  // namespace rankscope
