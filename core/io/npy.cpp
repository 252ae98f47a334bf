#include "core/io/npy.hpp"

#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"

namespace rankscope {

namespace {
constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kHeaderAlign = 64;
}  // namespace

namespace {

// numpy refuses headers above 10,000 bytes unless told otherwise; anything near this is corrupt.
constexpr size_t kMaxHeaderBytes = 1 << 20;

// The text after `'key':` and any spaces in a header dict, or npos.
size_t value_of(std::string_view header, std::string_view key) {
  const size_t at = header.find(key);
  if (at == std::string_view::npos) return at;
  size_t pos = at + key.size();
  while (pos < header.size() && (header[pos] == ' ' || header[pos] == '\t')) ++pos;
  return pos;
}

}  // namespace

NpyArray read_npy(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec)) {
    fail("{}: not a regular file", path.string());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  const std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < kMagicLen + 4 || data.compare(0, kMagicLen, kMagic) != 0) {
    fail("{}: not a .npy file (bad magic)", path.string());
  }
  const int major = static_cast<unsigned char>(data[kMagicLen]);
  size_t header_len = 0;
  size_t pos = kMagicLen + 2;
  if (major == 1) {
    header_len = static_cast<unsigned char>(data[pos]) | (static_cast<unsigned char>(data[pos + 1]) << 8);
    pos += 2;
  } else if (major == 2 || major == 3) {
    if (data.size() < pos + 4) fail("{}: truncated .npy header", path.string());
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(data[pos + i]);
    pos += 4;
  } else {
    fail("{}: unsupported .npy version {}", path.string(), major);
  }
  if (header_len > kMaxHeaderBytes) fail("{}: .npy header of {} bytes is implausibly large", path.string(), header_len);
  if (data.size() - pos < header_len) fail("{}: truncated .npy header", path.string());
  // The header is a Python dict literal; read its three keys by hand (std::regex recurses once
  // per character matched and overflows the stack on long corrupt headers).
  const std::string_view header = std::string_view(data).substr(pos, header_len);
  pos += header_len;

  const size_t descr_at = value_of(header, "'descr':");
  if (descr_at == std::string_view::npos || descr_at >= header.size() || header[descr_at] != '\'') {
    fail("{}: .npy header has no descr", path.string());
  }
  const size_t descr_end = header.find('\'', descr_at + 1);
  if (descr_end == std::string_view::npos) fail("{}: .npy header has no descr", path.string());
  const std::string descr(header.substr(descr_at + 1, descr_end - descr_at - 1));
  if (descr != "<f4" && descr != "<f8") {
    fail("{}: .npy dtype '{}' is not supported (need <f4 or <f8)", path.string(), printable(descr));
  }
  const size_t order_at = value_of(header, "'fortran_order':");
  if (order_at != std::string_view::npos && header.substr(order_at).starts_with("True")) {
    fail("{}: Fortran-order .npy arrays are not supported", path.string());
  }
  const size_t shape_at = value_of(header, "'shape':");
  if (shape_at == std::string_view::npos || shape_at >= header.size() || header[shape_at] != '(') {
    fail("{}: .npy header has no shape", path.string());
  }
  const size_t shape_end = header.find(')', shape_at);
  if (shape_end == std::string_view::npos) fail("{}: .npy header has no shape", path.string());
  const std::string_view dims = header.substr(shape_at + 1, shape_end - shape_at - 1);

  NpyArray array;
  const size_t elem = descr == "<f4" ? 4 : 8;
  const size_t max_numel = (data.size() - pos) / elem;  // what the data section can hold
  size_t numel = 1;
  for (size_t i = 0; i < dims.size();) {
    if (dims[i] < '0' || dims[i] > '9') {
      ++i;
      continue;
    }
    uint64_t dim = 0;
    for (; i < dims.size() && dims[i] >= '0' && dims[i] <= '9'; ++i) {
      dim = dim * 10 + static_cast<uint64_t>(dims[i] - '0');
      if (dim > max_numel) {
        fail("{}: .npy shape ({}) needs more data than the file holds", path.string(), printable(dims));
      }
    }
    array.shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && numel > max_numel / dim) {
      fail("{}: .npy shape ({}) needs more data than the file holds", path.string(), printable(dims));
    }
    numel *= static_cast<size_t>(dim);
  }
  if (numel > max_numel) {
    fail("{}: .npy data truncated: {} bytes for shape of {} elements", path.string(), data.size() - pos, numel);
  }
  array.values.resize(numel);
  if (elem == 4) {
    std::memcpy(array.values.data(), data.data() + pos, array.values.size() * 4);
  } else {
    for (size_t i = 0; i < array.values.size(); ++i) {
      double d;
      std::memcpy(&d, data.data() + pos + 8 * i, 8);
      array.values[i] = static_cast<float>(d);
    }
  }
  return array;
}

void write_npy(const std::filesystem::path& path, const std::vector<int64_t>& shape,
               const float* values) {
  // Python tuple syntax: "(3,)" for one dimension, "(3, 4)" for more.
  std::string dims;
  int64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dims += (i ? ", " : "") + std::to_string(shape[i]);
    numel *= shape[i];
  }
  if (shape.size() == 1) dims += ",";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t preamble = kMagicLen + 2 + 2;
  header.append(kHeaderAlign - (preamble + header.size() + 1) % kHeaderAlign, ' ');
  header += '\n';
  if (header.size() > 0xffff) fail("{}: .npy header too long", path.string());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("{}: cannot open for writing", path.string());
  out.write(kMagic, kMagicLen);
  out.put(1);
  out.put(0);
  out.put(static_cast<char>(header.size() & 0xff));
  out.put(static_cast<char>(header.size() >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(numel * 4));
  // A small file sits in the stream's buffer until it is flushed: check the flush and the close,
  // or a full disk would go unnoticed.
  out.flush();
  if (!out) fail("{}: write failed: {}", path.string(), std::strerror(errno));
  out.close();
  if (out.fail()) fail("{}: write failed when closing: {}", path.string(), std::strerror(errno));
}

}  // namespace rankscope
