// Loading real Hugging Face checkpoints: single file, sharded, F16/BF16, shapes only.
#include "core/base/error.hpp"
#include "core/io/model.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

TEST_CASE("stories260K-hf loads with its config, tied head and tokenizer", "[loader]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto& c = model.config;
  CHECK(c.arch == Arch::llama);
  CHECK(c.n_vocab == 512);
  CHECK(c.n_embd == 64);
  CHECK(c.n_ff == 172);
  CHECK(c.n_layer == 5);
  CHECK(c.n_head == 8);
  CHECK(c.n_head_kv == 4);
  CHECK(c.n_embd_head == 8);
  CHECK(c.rope_theta == 10000.0);
  CHECK(c.tie_embeddings);
  CHECK(model.has_weights);
  CHECK(model.n_params() == 260032);
  CHECK(model.storage_dtype == "F32");
  CHECK(model.weights.output.data == model.weights.token_embd.data);  // tied, not copied
  REQUIRE(model.tokenizer != nullptr);
  CHECK(model.tokenizer->kind() == "hf-bpe");
  CHECK(model.ignored_tensors.empty());
  const auto matrices = decomposable_matrices(c);
  CHECK(matrices.size() == 35);
  CHECK(matrices[1].name == "model.layers.0.self_attn.k_proj.weight");
  CHECK(matrices[1].n_out == 32);
  CHECK(model.n_decomposable_params() == 5 * (64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3));
}

TEST_CASE("bert-tiny-sst2 loads from its two shards", "[loader]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  CHECK(model.config.arch == Arch::bert);
  CHECK(model.config.bert_head == BertHead::sequence_classification);
  CHECK(model.config.labels == std::vector<std::string>{"negative", "positive"});
  CHECK(model.weight_files.size() == 2);
  CHECK(model.n_params() == 4337026);
  CHECK_FALSE(model.weights.pooler.empty());
  CHECK(model.weights.classifier.n_out() == 2);
  CHECK(model.weights.layers[1][MatrixKind::up].n_out() == 512);
  CHECK(model.weights.layers[1][MatrixKind::gate].empty());
}

TEST_CASE("config.json alone loads as shapes only with exact parameter counts", "[loader]") {
  const auto configs = test::shared_dir() / "configs";
  RS_REQUIRE_SHARED(configs / "llama-2-7b" / "config.json");
  const auto l7 = load_model(configs / "llama-2-7b");
  CHECK_FALSE(l7.has_weights);
  CHECK(l7.tokenizer == nullptr);
  CHECK(l7.n_params() == 6738415616);
  CHECK(decomposable_matrices(l7.config).size() == 224);
  CHECK(l7.n_decomposable_params() == 32LL * (4 * 4096 * 4096 + 3 * 4096 * 11008));
  CHECK(load_model(configs / "llama-2-13b").n_params() == 13015864320);
  const auto l70 = load_model(configs / "llama-2-70b");
  CHECK(l70.n_params() == 68976648192);
  CHECK(l70.config.n_embd_kv() == 1024);  // GQA: 8 KV heads of 128
  // The README's 109,482,240 is BertModel (with pooler); this config is BertForMaskedLM, which
  // transformers builds without a pooler and with the MLM transform, norm and output bias.
  const auto bert = load_model(configs / "bert-base-uncased");
  CHECK(bert.n_params() == 109482240 - (768 * 768 + 768) + (768 * 768 + 768 + 2 * 768 + 30522));
  CHECK(decomposable_matrices(bert.config).size() == 72);
}

TEST_CASE("a config.json path loads shapes only even beside weights", "[loader]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir / "config.json");
  CHECK_FALSE(model.has_weights);
  CHECK(model.n_params() == 260032);
}

TEST_CASE("a checkpoint without tokenizer files loads and asking for text says what is missing", "[loader]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto dir = test::scratch_dir("no_tokenizer");
  test::copy_model(src, dir, {.copy_tokenizer = false});
  const auto model = load_model(dir);
  CHECK(model.has_weights);
  CHECK(model.tokenizer == nullptr);
  REQUIRE_THROWS_WITH(model.require_tokenizer(),
                      Catch::Matchers::Contains(dir.string()) && Catch::Matchers::Contains("no tokenizer"));
}

TEST_CASE("F16 and BF16 checkpoints are widened to fp32 and shards load like one file", "[loader]") {
  const auto src = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(src);
  const auto original = load_model(src);
  const float* orig_q = original.weights.layers[2][MatrixKind::q].weight().data;

  for (auto [dtype, torch_dtype] : {std::pair{DType::f16, "float16"}, std::pair{DType::bf16, "bfloat16"}}) {
    const auto dir = test::scratch_dir(std::string("half_") + torch_dtype);
    test::copy_model(src, dir, {.dtype = dtype, .edit_config = [&](nlohmann::json& j) { j["dtype"] = torch_dtype; }});
    const auto model = load_model(dir);
    CHECK(model.storage_dtype == dtype_name(dtype));
    const auto& q = model.weights.layers[2][MatrixKind::q].weight();
    for (int64_t i = 0; i < q.numel(); ++i) {
      const float expected = dtype == DType::f16 ? f16_to_f32(f32_to_f16(orig_q[i])) : bf16_to_f32(f32_to_bf16(orig_q[i]));
      REQUIRE(q.data[i] == expected);
    }
  }

  const auto dir = test::scratch_dir("sharded3");
  test::copy_model(src, dir, {.n_shards = 3});
  const auto sharded = load_model(dir);
  CHECK(sharded.weight_files.size() == 3);
  CHECK(sharded.n_params() == 260032);
  const auto& q = sharded.weights.layers[2][MatrixKind::q].weight();
  CHECK(std::equal(q.data, q.data + q.numel(), orig_q));
}
