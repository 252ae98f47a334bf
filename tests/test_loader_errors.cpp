// Bad checkpoints never crash: each gives an Error naming the file and the problem.
#include "core/error.hpp"
#include "core/model.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

std::string load_error(const std::filesystem::path& dir) {
  try {
    load_model(dir);
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK(message.find('\n') == std::string::npos);  // one line
    return message;
  }
  return "no error";
}

}  // namespace

TEST_CASE("checkpoint errors name the file and the problem", "[loader][errors]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("bad_checkpoint");

  SECTION("missing tensor") {
    test::copy_model(src, dir, {.edit_tensors = [](auto& tensors) {
      std::erase_if(tensors, [](const auto& t) { return t.name == "model.layers.2.mlp.up_proj.weight"; });
    }});
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("missing tensor") &&
                                    Contains("model.layers.2.mlp.up_proj.weight"));
  }
  SECTION("shape not matching config.json") {
    test::copy_model(src, dir, {.edit_config = [](auto& j) { j["intermediate_size"] = 170; }});
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("gate_proj") &&
                                    Contains("[172, 64]") && Contains("[170, 64]"));
  }
  SECTION("dtype not matching config.json") {
    test::copy_model(src, dir, {.dtype = DType::bf16});  // config still says float32
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("BF16") && Contains("float32"));
  }
  SECTION("unknown architecture") {
    test::copy_model(src, dir, {.edit_config = [](auto& j) { j["architectures"] = {"GPT2LMHeadModel"}; }});
    CHECK_THAT(load_error(dir), Contains("config.json") && Contains("unknown architecture 'GPT2LMHeadModel'"));
  }
  SECTION("malformed config.json") {
    test::copy_model(src, dir);
    test::write_text(dir / "config.json", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": )");
    CHECK_THAT(load_error(dir), Contains("config.json") && Contains("malformed JSON"));
  }
  SECTION("truncated safetensors") {
    test::copy_model(src, dir);
    std::filesystem::resize_file(dir / "model.safetensors", 600000);
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("out of range"));
  }
  SECTION("header length past the end of the file") {
    test::copy_model(src, dir);
    std::filesystem::resize_file(dir / "model.safetensors", 2000);
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("past the end"));
  }
  SECTION("shard index pointing at the wrong shard") {
    test::copy_model(src, dir, {.n_shards = 2});
    auto index = test::read_json(dir / "model.safetensors.index.json");
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
    test::write_text(dir / "model.safetensors.index.json", index.dump());
    CHECK_THAT(load_error(dir), Contains("model.safetensors.index.json") && Contains("model.norm.weight"));
  }
  SECTION("missing shard") {
    test::copy_model(src, dir, {.n_shards = 2});
    std::filesystem::remove(dir / "model-00002-of-00002.safetensors");
    CHECK_THAT(load_error(dir), Contains("model-00002-of-00002.safetensors") && Contains("cannot open"));
  }
  SECTION("a tokenizer file of the wrong kind") {
    test::copy_model(src, dir);
    std::filesystem::copy_file(src / "tokenizer.json", dir / "tokenizer.model");  // JSON posing as SentencePiece
    CHECK_THAT(load_error(dir), Contains("tokenizer.model"));
  }
  SECTION("not a directory or config") {
    CHECK_THAT(load_error(dir / "nothing-here"), Contains("nothing-here") && Contains("no such file"));
  }
}
