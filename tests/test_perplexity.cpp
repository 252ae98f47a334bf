// Perplexity against the golden value of stories260K-hf (transformers and llama2.c agree on it).
#include <fstream>
#include <iterator>

#include "core/llama.hpp"
#include "evaluators/perplexity.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

TEST_CASE("chunk perplexity of stories260K-hf on TinyStories equals the golden value", "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(test::shared_data("tinystories/tinystories_val.txt"));
  const auto model = load_model(dir);
  std::ifstream in(test::shared_data("tinystories/tinystories_val.txt"), std::ios::binary);
  std::string text(std::istreambuf_iterator<char>(in), {});
  text.resize(50000);  // ASCII there: 50,000 characters
  const auto ids = model.require_tokenizer().encode(text);
  REQUIRE(ids.size() == 23971);

  const auto golden = test::read_json(dir / "golden/perplexity.json");
  const auto r = perplexity_chunks(model, ids, 256);
  CHECK(r.n_scored == 23971);
  REQUIRE(r.window_nll_sums.size() == 94);
  const auto windows = golden["window_nll_sums"].get<std::vector<double>>();
  for (size_t w = 0; w < windows.size(); ++w) CHECK(std::abs(r.window_nll_sums[w] - windows[w]) <= 1e-3);
  CHECK(std::abs(r.ppl - golden["ppl"].get<double>()) <= 1e-5 * golden["ppl"].get<double>());
  CHECK(r.ppl_stderr > 0.0);
  CHECK(r.ppl_stderr < 0.05 * r.ppl);
  // Batching windows differently changes nothing.
  CHECK(std::abs(perplexity_chunks(model, ids, 256, 3).nll_sum - r.nll_sum) <= 1e-6 * r.nll_sum);
}
