// safetensors reader/writer: round trips in every dtype and rejection of malformed files.
#include <sys/stat.h>

#include <fstream>
#include <random>

#include "core/base/error.hpp"
#include "core/io/npy.hpp"
#include "core/io/safetensors.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

std::vector<float> random_values(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Writes a file with an arbitrary header (to build corrupt files the writer would refuse).
void write_raw(const std::filesystem::path& path, const std::string& header, size_t data_bytes,
               uint64_t header_len_override = 0) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = header_len_override ? header_len_override : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xff));
  out << header;
  out << std::string(data_bytes, '\0');
}

}  // namespace

TEST_CASE("safetensors round trip in F32, F16 and BF16 with metadata", "[formats]") {
  const auto dir = test::scratch_dir("safetensors_roundtrip");
  const auto a = random_values(12, 1);
  const auto b = random_values(7, 2);
  const auto c = random_values(6, 3);
  const std::vector<TensorToWrite> tensors = {
      {"a.weight", {3, 4}, a, DType::f32}, {"b", {7}, b, DType::f16}, {"c", {2, 3}, c, DType::bf16}};
  write_safetensors(dir / "x.safetensors", tensors, {{"format", "pt"}, {"note", "rankscope test"}});

  const auto file = SafetensorsFile::open(dir / "x.safetensors");
  REQUIRE(file.entries().size() == 3);
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.metadata().at("note") == "rankscope test");

  const auto ta = file.load(*file.find("a.weight"));
  CHECK(ta.shape == std::vector<int64_t>{3, 4});
  CHECK(ta.owner != nullptr);
  for (size_t i = 0; i < a.size(); ++i) CHECK(ta.data[i] == a[i]);  // F32 is bit exact

  const auto tb = file.load(*file.find("b"));
  for (size_t i = 0; i < b.size(); ++i) {
    CHECK(tb.data[i] == f16_to_f32(f32_to_f16(b[i])));
    CHECK(std::abs(tb.data[i] - b[i]) <= std::abs(b[i]) * 1e-3f);
  }
  const auto tc = file.load(*file.find("c"));
  for (size_t i = 0; i < c.size(); ++i) {
    CHECK(tc.data[i] == bf16_to_f32(f32_to_bf16(c[i])));
    CHECK(std::abs(tc.data[i] - c[i]) <= std::abs(c[i]) * 8e-3f);
  }
  // F32 tensors are used in place from the mapping: the header is padded to 8 bytes.
  CHECK(reinterpret_cast<uintptr_t>(ta.data) % alignof(float) == 0);
}

TEST_CASE("half-precision conversions are exact where they must be", "[formats]") {
  CHECK(f16_to_f32(0x3c00) == 1.0f);
  CHECK(f16_to_f32(0xc000) == -2.0f);
  CHECK(f16_to_f32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f16_to_f32(0x7bff) == 65504.0f);
  CHECK(f32_to_f16(65504.0f) == 0x7bff);
  CHECK(f32_to_f16(1e6f) == 0x7c00);
  CHECK(f32_to_f16(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive half survives f16 -> f32 -> f16
    REQUIRE(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))) == h);
  }
}

TEST_CASE("malformed safetensors files are rejected with the file named", "[formats][errors]") {
  const auto dir = test::scratch_dir("safetensors_bad");
  const auto path = dir / "bad.safetensors";
  auto error_of = [&]() -> std::string {
    try {
      SafetensorsFile::open(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };

  SECTION("shorter than the header length field") {
    std::ofstream(path, std::ios::binary) << "abc";
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("truncated"));
  }
  SECTION("header length past the end of the file") {
    write_raw(path, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, 1ull << 40);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("past the end"));
  }
  SECTION("truncated data section: offsets out of range") {
    write_raw(path, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("'a'") && Contains("out of range"));
  }
  SECTION("overlapping tensors") {
    write_raw(path,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              12);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("overlap"));
  }
  SECTION("size not matching the shape") {
    write_raw(path, R"({"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", 8);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("needs 6"));
  }
  SECTION("malformed header JSON") {
    write_raw(path, R"({"a":{"dtype":"F32",)", 8);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("malformed"));
  }
  SECTION("unknown dtype") {
    write_raw(path, R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("unknown dtype"));
  }
  SECTION("a dtype rankscope does not compute with is listed but refused on load") {
    write_raw(path, R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})", 16);
    const auto file = SafetensorsFile::open(path);
    REQUIRE_THROWS_WITH(file.load(*file.find("ids")), Contains("I64") && Contains(path.string()));
  }
}

// Regressions found by tests/fuzz (corpus: tests/fuzz/corpus/safetensors, .../npy).
TEST_CASE("a safetensors header nested 100,000 levels deep is refused before anything walks it",
          "[formats][errors][fuzz]") {
  const auto dir = test::scratch_dir("safetensors_deep");
  const auto path = dir / "deep.safetensors";
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  // Formerly parsed, then dumped recursively into the "unknown dtype" message: a stack overflow.
  write_raw(path, R"({"a":{"dtype":)" + deep + R"(,"shape":[1],"data_offsets":[0,4]}})", 4);
  try {
    SafetensorsFile::open(path);
    FAIL("no Error");
  } catch (const Error& e) {
    CHECK_THAT(e.what(), Contains(path.string()) && Contains("nested more than 128 levels"));
  }
}

TEST_CASE("a FIFO, a directory or a device named as a safetensors file is refused without waiting",
          "[formats][errors][fuzz]") {
  const auto dir = test::scratch_dir("safetensors_special");
  const auto path = dir / "model.safetensors";
  SECTION("FIFO (formerly: open() waited for a writer forever)") {
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    REQUIRE_THROWS_WITH(SafetensorsFile::open(path), Contains(path.string()) && Contains("not a regular file (a FIFO)"));
  }
  SECTION("directory") {
    std::filesystem::create_directory(path);
    REQUIRE_THROWS_WITH(SafetensorsFile::open(path), Contains(path.string()) && Contains("a directory"));
  }
  SECTION("link to /dev/zero") {
    std::filesystem::create_symlink("/dev/zero", path);
    REQUIRE_THROWS_WITH(SafetensorsFile::open(path), Contains(path.string()) && Contains("a character device"));
  }
}

TEST_CASE("corrupt .npy headers are one-line Errors, never exceptions of other types or crashes",
          "[formats][errors][npy][fuzz]") {
  const auto dir = test::scratch_dir("npy_bad");
  const auto path = dir / "bad.npy";
  auto write_npy_header = [&](const std::string& header, size_t data_bytes) {
    std::ofstream out(path, std::ios::binary);
    out << std::string("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(header.size() & 0xff));
    out.put(static_cast<char>(header.size() >> 8));
    out << header << std::string(data_bytes, '\0');
  };
  auto error_of = [&]() -> std::string {
    try {
      read_npy(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "no error";
  };
  SECTION("a dimension beyond int64 (formerly std::out_of_range from std::stoll)") {
    write_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, ), }\n", 16);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("more data than the file holds"));
  }
  SECTION("dimensions whose product overflows (formerly wrapped to a small size and was read)") {
    write_npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }\n", 16);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("more data than the file holds"));
  }
  SECTION("a 60,000-character descr (formerly std::regex recursed once per character)") {
    write_npy_header("{'descr': '" + std::string(60000, 'x') + "', 'fortran_order': False, 'shape': (1,), }\n", 4);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("is not supported"));
  }
  SECTION("a FIFO") {
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    CHECK_THAT(error_of(), Contains(path.string()) && Contains("not a regular file"));
  }
}

TEST_CASE("empty tensors load, in place or converted, without touching a null buffer", "[formats][fuzz]") {
  // Found by the fuzzer under UBSan: an empty tensor outside the zero-copy path (misaligned F32,
  // or F16) passed the null data() of an empty vector to memcpy.
  const auto dir = test::scratch_dir("safetensors_empty");
  const auto path = dir / "empty.safetensors";
  // A 61-byte header puts the data section at offset 69: F32 there is misaligned.
  std::string header = R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"h":{"dtype":"F16","shape":[0],"data_offsets":[0,0]}})";
  header.append((4 - (8 + header.size()) % 4) % 4 + 1, ' ');
  REQUIRE((8 + header.size()) % 4 != 0);
  write_raw(path, header, 0);
  const auto file = SafetensorsFile::open(path);
  for (const char* name : {"e", "h"}) {
    const Tensor t = file.load(*file.find(name));
    CHECK(t.numel() == 0);
  }
}
