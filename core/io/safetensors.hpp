// The safetensors format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to the start of the data section.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/base/dtype.hpp"
#include "core/base/mapped_file.hpp"
#include "core/base/tensor.hpp"

namespace rankscope {

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;       // as stored: "F32", "BF16", "I64", ...
  std::optional<DType> dtype;   // set when rankscope computes with it (F32, F16, BF16)
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte offsets in the data section
  size_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates the file: header length within the file, JSON well formed, every dtype
  // one of the format's, every byte range inside the data section, sized as its shape says, and no two ranges
  // overlapping. Throws Error naming the file and the offending tensor.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_->path(); }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;

  // The tensor in fp32: F32 data 4-byte aligned in the mapping is used in place (zero copy);
  // F16/BF16 (or misaligned F32) is widened into an owned buffer. Throws Error for other dtypes.
  Tensor load(const SafetensorsEntry& entry) const;
  std::span<const std::byte> raw(const SafetensorsEntry& entry) const;

 private:
  std::shared_ptr<const MappedFile> file_;
  size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;  // fp32 input, numel(shape) elements
  DType dtype = DType::f32;       // stored type (rounded to nearest even for F16/BF16)
};

// Writes a safetensors file atomically (temporary file + rename). Tensors are laid out in the
// given order, the header padded with spaces to a multiple of 8 bytes so F32 data is aligned.
void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace rankscope
