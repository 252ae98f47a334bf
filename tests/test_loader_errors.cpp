// Bad checkpoints never crash: each gives an Error naming the file and the problem.
#include <sys/stat.h>

#include "core/base/error.hpp"
#include "core/io/model.hpp"
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

// Regressions found by tests/fuzz (corpus: tests/fuzz/corpus/model).
TEST_CASE("absurd config.json values are refused before anything is sized with them", "[loader][errors][fuzz]") {
  const auto dir = test::scratch_dir("absurd_config");
  const nlohmann::json base = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 16}, {"hidden_size", 8},
                               {"intermediate_size", 12}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                               {"num_key_value_heads", 1}, {"head_dim", 4}};
  auto error_with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = base;
    j[key] = value;
    test::write_text(dir / "config.json", j.dump());
    return load_error(dir);
  };
  // Each formerly passed validation: 1e9 layers sized a vector of 1e9 layers, 2^62 overflowed the
  // int64 parameter count (tensor_roles.cpp) and shapes.
  CHECK_THAT(error_with("num_hidden_layers", 1000000000), Contains("config.json") && Contains("'num_hidden_layers' is 1000000000, above the sane maximum"));
  CHECK_THAT(error_with("intermediate_size", int64_t{1} << 62), Contains("config.json") && Contains("'intermediate_size'") && Contains("sane maximum"));
  CHECK_THAT(error_with("vocab_size", int64_t{1} << 40), Contains("'vocab_size'") && Contains("sane maximum"));
  CHECK_THAT(error_with("hidden_size", uint64_t{18446744073709551615ull}), Contains("'hidden_size' is 18446744073709551615, above the sane maximum"));
  CHECK_THAT(error_with("num_attention_heads", -1), Contains("'num_attention_heads' must be a positive integer"));
  CHECK_THAT(error_with("rope_theta", -5.0), Contains("'rope_theta' must be positive"));
  {
    auto j = base;
    j.erase("head_dim");
    j["num_attention_heads"] = 16;  // more heads than hidden_size: head_dim would be 0
    test::write_text(dir / "config.json", j.dump());
    CHECK_THAT(load_error(dir), Contains("config.json") && Contains("smaller than num_attention_heads"));
  }
  {
    auto j = base;
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"original_max_position_embeddings", 1e300}};
    test::write_text(dir / "config.json", j.dump());
    // Formerly cast to int64_t: undefined behaviour.
    CHECK_THAT(load_error(dir), Contains("original_max_position_embeddings") && Contains("sane maximum"));
  }
  {
    // A value nested 100,000 levels deep was dumped recursively into the error message.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    test::write_text(dir / "config.json", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": )" + deep + "}");
    CHECK_THAT(load_error(dir), Contains("config.json") && Contains("nested more than 128 levels"));
  }
}

TEST_CASE("a real checkpoint whose config.json claims 1e9 layers is refused, not allocated", "[loader][errors][fuzz]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("billion_layers");
  test::copy_model(src, dir, {.edit_config = [](auto& j) { j["num_hidden_layers"] = 1000000000; }});
  CHECK_THAT(load_error(dir), Contains("config.json") && Contains("num_hidden_layers") && Contains("sane maximum"));
}

TEST_CASE("a FIFO or a link to a device in a checkpoint is refused without waiting", "[loader][errors][fuzz]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("fifo_checkpoint");
  test::copy_model(src, dir);
  std::filesystem::remove(dir / "model.safetensors");
  SECTION("model.safetensors is a FIFO (formerly: waited for a writer forever)") {
    REQUIRE(::mkfifo((dir / "model.safetensors").c_str(), 0600) == 0);
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("not a regular file (a FIFO)"));
  }
  SECTION("model.safetensors links to /dev/zero") {
    std::filesystem::create_symlink("/dev/zero", dir / "model.safetensors");
    CHECK_THAT(load_error(dir), Contains("model.safetensors") && Contains("not a regular file"));
  }
  SECTION("tokenizer.json is a FIFO") {
    test::copy_model(src, dir);
    std::filesystem::remove(dir / "tokenizer.json");
    REQUIRE(::mkfifo((dir / "tokenizer.json").c_str(), 0600) == 0);
    CHECK_THAT(load_error(dir), Contains("tokenizer.json") && Contains("not a regular file"));
  }
}

TEST_CASE("names with control characters read from a checkpoint give one-line Errors", "[loader][errors][fuzz]") {
  // Found by the fuzzer (corpus: tests/fuzz/corpus/model/s5-c65, s5-c2659): a JSON "\n" escape in
  // a shard name or a config string split the Error message over several lines.
  const auto src = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("control_characters");
  SECTION("a shard name in the index") {
    test::copy_model(src, dir, {.n_shards = 2});
    auto index = test::read_json(dir / "model.safetensors.index.json");
    index["weight_map"]["classifier.bias"] = "two\nlines";
    test::write_text(dir / "model.safetensors.index.json", index.dump());
    CHECK_THAT(load_error(dir), Contains("model.safetensors.index.json") && Contains("control characters") &&
                                    Contains("two\\x0alines"));
  }
  SECTION("a string of config.json quoted in the message") {
    test::copy_model(src, dir, {.edit_config = [](auto& j) { j["position_embedding_type"] = "relative\nkey"; }});
    CHECK_THAT(load_error(dir), Contains("config.json") && Contains("'relative\\x0akey'"));
  }
}
