#include <fstream>

#include "core/base/error.hpp"
#include "core/io/npy.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

TEST_CASE("npy round trip for 1-D and 2-D arrays", "[formats]") {
  const auto dir = test::scratch_dir("npy");
  const std::vector<float> v = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1e-7f};
  write_npy(dir / "a.npy", {2, 3}, v.data());
  write_npy(dir / "b.npy", {6}, v.data());
  const auto a = read_npy(dir / "a.npy");
  CHECK(a.shape == std::vector<int64_t>{2, 3});
  CHECK(a.values == v);
  const auto b = read_npy(dir / "b.npy");
  CHECK(b.shape == std::vector<int64_t>{6});
  // numpy's header: magic, version 1.0, total header length a multiple of 64.
  std::ifstream in(dir / "b.npy", std::ios::binary);
  std::string head(10, '\0');
  in.read(head.data(), 10);
  const size_t header_len = static_cast<unsigned char>(head[8]) | (static_cast<unsigned char>(head[9]) << 8);
  CHECK((10 + header_len) % 64 == 0);
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  CHECK(header.find("'shape': (6,)") != std::string::npos);
}

TEST_CASE("npy reader rejects what it cannot read", "[formats][errors]") {
  const auto dir = test::scratch_dir("npy_bad");
  std::ofstream(dir / "x.npy") << "not numpy";
  REQUIRE_THROWS_WITH(read_npy(dir / "x.npy"), Catch::Matchers::Contains("x.npy"));
}

TEST_CASE("golden logits of stories260K-hf read as [T, 512]", "[formats]") {
  const auto path = test::shared_data("stories260K-hf/golden/logits_once.npy");
  RS_REQUIRE_SHARED(path);
  const auto a = read_npy(path);
  CHECK(a.shape == std::vector<int64_t>{5, 512});
}
