// The Llama forward pass against the golden logits of stories260K-hf (transformers, fp32).
#include "core/models/llama.hpp"
#include "core/io/npy.hpp"
#include "tests/fixtures.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

constexpr float kLogitTolerance = 1e-4f;
const char* const kGoldenNames[] = {"once", "slice64", "slice256"};

struct Golden {
  std::vector<TokenId> ids;
  NpyArray logits;
};

Golden golden(const std::string& name) {
  const auto dir = test::shared_data("stories260K-hf/golden");
  const auto seqs = test::read_json(dir / "sequences.json");
  return {seqs[name]["ids"].get<std::vector<TokenId>>(), read_npy(dir / seqs[name]["logits_file"].get<std::string>())};
}

// Max |a - b| between rows [row0, row0 + T) of `logits` and a golden [T, vocab] array.
float max_diff(const Mat& logits, int64_t row0, const NpyArray& expected) {
  const int64_t t = expected.shape[0];
  const ConstMatMap want(expected.values.data(), t, expected.shape[1]);
  return (logits.middleRows(row0, t) - want).cwiseAbs().maxCoeff();
}

}  // namespace

TEST_CASE("stories260K-hf logits equal the golden logits", "[forward][llama]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  for (const char* name : kGoldenNames) {
    const auto g = golden(name);
    const std::vector<std::vector<TokenId>> batch = {g.ids};
    const Mat logits = llama_forward(model, batch);
    INFO(name);
    CHECK(max_diff(logits, 0, g.logits) <= kLogitTolerance);
  }
}

TEST_CASE("a batch of sequences of different lengths equals each run alone", "[forward][llama]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  std::vector<Golden> goldens;
  std::vector<std::vector<TokenId>> batch;
  for (const char* name : kGoldenNames) {
    goldens.push_back(golden(name));
    batch.push_back(goldens.back().ids);
  }
  const Mat logits = llama_forward(model, batch);
  REQUIRE(logits.rows() == 5 + 64 + 256);
  int64_t row = 0;
  for (const auto& g : goldens) {
    CHECK(max_diff(logits, row, g.logits) <= kLogitTolerance);
    row += static_cast<int64_t>(g.ids.size());
  }
  const Mat last = llama_forward(model, batch, {}, {.last_logits_only = true});
  REQUIRE(last.rows() == 3);
  CHECK((last.row(1) - logits.row(5 + 63)).cwiseAbs().maxCoeff() == 0.0f);
}

TEST_CASE("continuing from the KV cache equals one pass over the whole sequence", "[forward][llama]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto g = golden("slice64");
  std::vector<KvCache> cache(1);
  const std::vector<std::vector<TokenId>> first = {{g.ids.begin(), g.ids.begin() + 20}};
  const std::vector<std::vector<TokenId>> second = {{g.ids.begin() + 20, g.ids.end()}};
  const Mat a = llama_forward(model, first, cache);
  const Mat b = llama_forward(model, second, cache);
  CHECK(cache[0].n_past == 64);
  Mat both(64, 512);
  both << a, b;
  CHECK(max_diff(both, 0, g.logits) <= kLogitTolerance);
}

TEST_CASE("greedy generation from BOS tells the golden story", "[forward][llama]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto expected = test::read_json(dir / "golden/greedy_from_bos.json")["ids"].get<std::vector<TokenId>>();
  constexpr int64_t kNew = 120;
  const auto ids = llama_generate_greedy(model, {1}, kNew, false);
  REQUIRE(ids.size() == kNew);
  CHECK(std::equal(ids.begin(), ids.end(), expected.begin() + 1));
  const std::string text = model.require_tokenizer().decode(ids);
  CHECK(text.starts_with("Once upon a time, there was a little girl named Lily"));
}

TEST_CASE("every weight product goes through Linear: full-rank Tucker factors give the golden logits",
          "[forward][llama][linear]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  const int64_t dense_params = model.n_params();
  uint32_t seed = 1;
  for (auto& layer : model.weights.layers) {
    for (auto kind : matrix_kinds(Arch::llama)) layer[kind] = test::full_rank_tucker(layer[kind], seed++);
  }
  CHECK(model.weights.layers[0][MatrixKind::q].form() == Linear::Form::tucker);
  CHECK(model.n_params() > dense_params);  // full rank costs more than dense: in*r + r*r + r*out
  const auto g = golden("slice64");
  const std::vector<std::vector<TokenId>> batch = {g.ids};
  CHECK(max_diff(llama_forward(model, batch), 0, g.logits) <= kLogitTolerance);
}

TEST_CASE("hooks see every block's activations in order", "[forward][llama]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  std::vector<std::string> seen;
  std::vector<int64_t> widths;
  const Hook hook = [&](HookSite site, int64_t layer, const Mat& x) {
    seen.push_back(hook_name(site, layer));
    widths.push_back(x.cols());
    CHECK(x.rows() == 7);
  };
  const std::vector<std::vector<TokenId>> batch = {{1, 403, 407}, {1, 261, 378, 432}};
  llama_forward(model, batch, {}, {.hook = &hook});
  REQUIRE(seen.size() == 5 * 5);
  CHECK(seen[0] == "blk.0.attn_in");
  CHECK(seen[3] == "blk.0.ffn_act");
  CHECK(widths[3] == 172);
  CHECK(seen.back() == "blk.4.block_out");
}

TEST_CASE("out-of-vocabulary ids are refused", "[forward][llama][errors]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const std::vector<std::vector<TokenId>> batch = {{1, 512}};
  REQUIRE_THROWS_WITH(llama_forward(model, batch), Catch::Matchers::Contains("512"));
}
