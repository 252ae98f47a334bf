#include "core/io/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"

namespace rankscope {

namespace {

constexpr size_t kHeaderLengthBytes = 8;
// A header larger than this is certainly corrupt (real ones are a few hundred KiB at most).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr size_t kHeaderAlignment = 8;

// Element sizes of every dtype the format defines; rankscope computes only with F32/F16/BF16 but
// must validate (and skip) the others, e.g. the I64 position_ids buffer of older BERT files.
size_t element_size(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"F64", 8},  {"I64", 8}, {"U64", 8}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

uint64_t read_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

}  // namespace

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile st;
  st.file_ = MappedFile::open(path);
  const auto bytes = st.file_->bytes();
  const std::string where = path.string();
  if (bytes.size() < kHeaderLengthBytes) {
    fail("{}: truncated safetensors file: {} bytes, shorter than the 8-byte header length", where,
         bytes.size());
  }
  const uint64_t header_len = read_u64_le(bytes.data());
  if (header_len > kMaxHeaderBytes || header_len > bytes.size() - kHeaderLengthBytes) {
    fail("{}: safetensors header length {} runs past the end of the file ({} bytes)", where,
         header_len, bytes.size());
  }
  st.data_start_ = kHeaderLengthBytes + header_len;
  const size_t data_size = bytes.size() - st.data_start_;

  const nlohmann::json header = parse_json_text(
      std::string_view(reinterpret_cast<const char*>(bytes.data()) + kHeaderLengthBytes, header_len),
      where + " (safetensors header)");
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", where);

  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail("{}: __metadata__ is not an object", where);
      for (const auto& [key, value] : info.items()) {
        st.metadata_[key] = value.is_string() ? value.get<std::string>() : value.dump();
      }
      continue;
    }
    if (has_control_characters(name)) fail("{}: tensor name '{}' has control characters", where, printable(name));
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets")) {
      fail("{}: tensor '{}': entry needs dtype, shape and data_offsets", where, name);
    }
    SafetensorsEntry e;
    e.name = name;
    const auto& dtype = info["dtype"];
    const size_t elem_size = dtype.is_string() ? element_size(dtype.get<std::string>()) : 0;
    if (elem_size == 0) fail("{}: tensor '{}': unknown dtype {}", where, name, printable(dtype.dump()));
    e.dtype_name = dtype.get<std::string>();
    e.dtype = dtype_from_safetensors(e.dtype_name);
    const auto& shape = info["shape"];
    if (!shape.is_array()) fail("{}: tensor '{}': shape is not an array", where, name);
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) fail("{}: tensor '{}': bad shape {}", where, name, printable(shape.dump()));
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t{1} << 48) / dim) {
        fail("{}: tensor '{}': shape {} is too large", where, name, printable(shape.dump()));
      }
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& offsets = info["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned()) {
      fail("{}: tensor '{}': data_offsets must be two non-negative integers", where, name);
    }
    const auto begin = offsets[0].get<uint64_t>();
    const auto end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail("{}: tensor '{}': data_offsets [{}, {}] out of range (data section is {} bytes)", where,
           name, begin, end, data_size);
    }
    if (end - begin != numel * elem_size) {
      fail("{}: tensor '{}': data_offsets span {} bytes but {} {} needs {}", where, name,
           end - begin, e.dtype_name, shape_string(e.shape), numel * elem_size);
    }
    e.begin = begin;
    e.end = end;
    st.entries_.push_back(std::move(e));
  }

  // Overlap check on ranges sorted by start; empty tensors occupy nothing.
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& e : st.entries_) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      fail("{}: tensors '{}' and '{}' overlap in the data section", where, sorted[i - 1]->name,
           sorted[i]->name);
    }
  }
  for (size_t i = 0; i < st.entries_.size(); ++i) st.by_name_[st.entries_[i].name] = i;
  return st;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::span<const std::byte> SafetensorsFile::raw(const SafetensorsEntry& entry) const {
  return file_->bytes().subspan(data_start_ + entry.begin, entry.end - entry.begin);
}

Tensor SafetensorsFile::load(const SafetensorsEntry& entry) const {
  if (!entry.dtype) {
    fail("{}: tensor '{}' has dtype {}; only F32, F16 and BF16 weights are supported",
         path().string(), entry.name, entry.dtype_name);
  }
  const auto bytes = raw(entry);
  Tensor t;
  t.shape = entry.shape;
  const bool aligned = reinterpret_cast<uintptr_t>(bytes.data()) % alignof(float) == 0;
  if (entry.dtype == DType::f32 && aligned) {
    t.data = reinterpret_cast<const float*>(bytes.data());
    t.owner = file_;
    return t;
  }
  std::vector<float> values(static_cast<size_t>(t.numel()));
  // An empty tensor has nothing to convert (and a null buffer that memcpy must not be given).
  if (!values.empty()) convert_to_f32(*entry.dtype, bytes.data(), values.size(), values.data());
  return Tensor::owned(entry.shape, std::move(values));
}

void write_safetensors(const std::filesystem::path& path, std::span<const TensorToWrite> tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    int64_t numel = 1;
    for (auto d : t.shape) numel *= d;
    if (static_cast<size_t>(numel) != t.values.size()) {
      fail("{}: tensor '{}': shape {} needs {} values, got {}", path.string(), t.name,
           shape_string(t.shape), numel, t.values.size());
    }
    if (header.contains(t.name)) fail("{}: duplicate tensor name '{}'", path.string(), t.name);
    const size_t nbytes = static_cast<size_t>(numel) * dtype_size(t.dtype);
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((kHeaderAlignment - (kHeaderLengthBytes + text.size()) % kHeaderAlignment) %
                  kHeaderAlignment,
              ' ');

  auto tmp = path;
  tmp += ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot open for writing", tmp.string());
    const uint64_t len = text.size();
    unsigned char len_bytes[kHeaderLengthBytes];
    for (size_t i = 0; i < kHeaderLengthBytes; ++i) len_bytes[i] = (len >> (8 * i)) & 0xff;
    out.write(reinterpret_cast<const char*>(len_bytes), kHeaderLengthBytes);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    std::vector<uint16_t> half;
    for (const auto& t : tensors) {
      if (t.dtype == DType::f32) {
        out.write(reinterpret_cast<const char*>(t.values.data()),
                  static_cast<std::streamsize>(t.values.size_bytes()));
        continue;
      }
      half.resize(t.values.size());
      for (size_t i = 0; i < half.size(); ++i) {
        half[i] = t.dtype == DType::f16 ? f32_to_f16(t.values[i]) : f32_to_bf16(t.values[i]);
      }
      out.write(reinterpret_cast<const char*>(half.data()),
                static_cast<std::streamsize>(half.size() * sizeof(uint16_t)));
    }
    out.flush();
    if (!out) fail("{}: write failed: {}", path.string(), std::strerror(errno));
    out.close();
    if (out.fail()) fail("{}: write failed when closing: {}", path.string(), std::strerror(errno));
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) fail("{}: cannot rename {} into place: {}", path.string(), tmp.filename().string(), ec.message());
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);  // a failed write leaves no partial file
    throw;
  }
}

}  // namespace rankscope
