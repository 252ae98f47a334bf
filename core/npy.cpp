#include "core/npy.hpp"

#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>

#include "core/error.hpp"

namespace rankscope {

namespace {
constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kHeaderAlign = 64;
}  // namespace

NpyArray read_npy(const std::filesystem::path& path) {
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
  if (data.size() < pos + header_len) fail("{}: truncated .npy header", path.string());
  const std::string header = data.substr(pos, header_len);
  pos += header_len;

  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']*)'"))) {
    fail("{}: .npy header has no descr", path.string());
  }
  const std::string descr = m[1];
  if (descr != "<f4" && descr != "<f8") {
    fail("{}: .npy dtype '{}' is not supported (need <f4 or <f8)", path.string(), descr);
  }
  if (std::regex_search(header, std::regex("'fortran_order':\\s*True"))) {
    fail("{}: Fortran-order .npy arrays are not supported", path.string());
  }
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) {
    fail("{}: .npy header has no shape", path.string());
  }
  NpyArray array;
  const std::string dims = m[1];
  int64_t numel = 1;
  const std::regex number("\\d+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it) {
    array.shape.push_back(std::stoll(it->str()));
    numel *= array.shape.back();
  }
  const size_t elem = descr == "<f4" ? 4 : 8;
  if (data.size() - pos < static_cast<size_t>(numel) * elem) {
    fail("{}: .npy data truncated: {} bytes for shape of {} elements", path.string(),
         data.size() - pos, numel);
  }
  array.values.resize(static_cast<size_t>(numel));
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
  if (!out) fail("{}: write failed", path.string());
}

}  // namespace rankscope
