// The BERT forward pass against bert-tiny-sst2's golden outputs (transformers, fp32).
#include <fstream>
#include <sstream>

#include "core/bert.hpp"
#include "core/npy.hpp"
#include "tests/fixtures.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

constexpr float kLogitTolerance = 1e-4f;

std::vector<std::string> sst2_dev_sentences() {
  std::ifstream in(test::shared_data("glue-sst2/dev.tsv"));
  std::string line;
  std::getline(in, line);  // header: sentence<TAB>label
  std::vector<std::string> out;
  while (std::getline(in, line)) out.push_back(line.substr(0, line.find('\t')));
  return out;
}

}  // namespace

TEST_CASE("bert-tiny-sst2 logits equal the golden logits of the first 32 dev rows", "[forward][bert]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto items = test::read_json(dir / "golden/dev_first32.json")["items"];
  REQUIRE(items.size() == 32);
  std::vector<BertInput> batch;
  for (const auto& item : items) {
    batch.push_back({item["input_ids"].get<std::vector<TokenId>>(), item["token_type_ids"].get<std::vector<TokenId>>(), {}});
  }
  // Batched: the 32 sentences have different lengths.
  const auto out = bert_forward(model, batch);
  REQUIRE(out.logits.rows() == 32);
  for (size_t i = 0; i < items.size(); ++i) {
    const auto want = items[i]["logits"].get<std::vector<float>>();
    for (int j = 0; j < 2; ++j) CHECK(std::abs(out.logits(static_cast<int64_t>(i), j) - want[j]) <= kLogitTolerance);
  }
}

TEST_CASE("bert-tiny-sst2 on all 872 dev sentences: golden logits and 687 correct", "[forward][bert][slow]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(test::shared_data("glue-sst2/dev.tsv"));
  const auto model = load_model(dir);
  const auto& tok = model.require_tokenizer();
  const auto sentences = sst2_dev_sentences();
  REQUIRE(sentences.size() == 872);
  std::vector<BertInput> batch;
  for (const auto& s : sentences) {
    BertInput in;
    in.ids.push_back(*tok.special().cls);
    for (auto id : tok.encode(s)) in.ids.push_back(id);
    in.ids.push_back(*tok.special().sep);
    batch.push_back(std::move(in));
  }
  const auto out = bert_forward(model, batch);
  const auto golden = read_npy(dir / "golden/dev_logits.npy");
  REQUIRE(golden.shape == std::vector<int64_t>{872, 2});
  const ConstMatMap want(golden.values.data(), 872, 2);
  CHECK((out.logits - want).cwiseAbs().maxCoeff() <= kLogitTolerance);

  const auto labels = test::read_json(dir / "golden/dev_eval.json")["predictions"].get<std::vector<int>>();
  std::ifstream in(test::shared_data("glue-sst2/dev.tsv"));
  std::string line;
  std::getline(in, line);
  int correct = 0;
  for (int i = 0; std::getline(in, line); ++i) {
    const int label = std::stoi(line.substr(line.rfind('\t') + 1));
    Eigen::Index pred = 0;
    out.logits.row(i).maxCoeff(&pred);
    CHECK(pred == labels[static_cast<size_t>(i)]);
    correct += pred == label;
  }
  CHECK(correct == 687);
}

TEST_CASE("padding keys are masked: a padded sequence equals the unpadded one", "[forward][bert]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const std::vector<TokenId> ids = {101, 2009, 1005, 1055, 1037, 11951, 102};
  BertInput plain{ids, {}, {}};
  BertInput padded{ids, {}, std::vector<uint8_t>(ids.size(), 1)};
  for (int i = 0; i < 5; ++i) {
    padded.ids.push_back(0);  // [PAD]
    padded.attention_mask.push_back(0);
  }
  const auto a = bert_forward(model, std::span(&plain, 1));
  const auto b = bert_forward(model, std::span(&padded, 1));
  CHECK((a.logits - b.logits).cwiseAbs().maxCoeff() <= 1e-5f);
  CHECK((a.hidden - b.hidden.topRows(7)).cwiseAbs().maxCoeff() <= 1e-4f);
}

TEST_CASE("BERT with full-rank Tucker factors keeps the golden logits", "[forward][bert][linear]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  auto model = load_model(dir);
  uint32_t seed = 7;
  for (auto& layer : model.weights.layers) {
    for (auto kind : matrix_kinds(Arch::bert)) layer[kind] = test::full_rank_tucker(layer[kind], seed++);
  }
  const auto items = test::read_json(dir / "golden/dev_first32.json")["items"];
  BertInput in{items[0]["input_ids"].get<std::vector<TokenId>>(), {}, {}};
  const auto out = bert_forward(model, std::span(&in, 1));
  const auto want = items[0]["logits"].get<std::vector<float>>();
  CHECK(std::abs(out.logits(0, 0) - want[0]) <= kLogitTolerance);
  CHECK(std::abs(out.logits(0, 1) - want[1]) <= kLogitTolerance);
}
