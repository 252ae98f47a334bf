// The BERT forward pass against bert-tiny-sst2's golden outputs (transformers, fp32).
#include <fstream>
#include <sstream>

#include "core/models/bert.hpp"
#include "core/io/npy.hpp"
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

TEST_CASE("bare BertModel and BertForMaskedLM checkpoints load and run", "[forward][bert]") {
  const auto src = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(src);
  const auto classifier = load_model(src);
  const BertInput in{{101, 2009, 1005, 1055, 1037, 11951, 102}, {}, {}};
  const auto reference = bert_forward(classifier, std::span(&in, 1));

  // BertModel saved without the "bert." prefix and without the classifier.
  const auto bare_dir = test::scratch_dir("bert_bare");
  test::copy_model(src, bare_dir, {.edit_tensors = [](auto& tensors) {
                                     std::erase_if(tensors, [](const auto& t) { return t.name.starts_with("classifier"); });
                                     for (auto& t : tensors) t.name = t.name.substr(5);  // drop "bert."
                                   },
                                   .edit_config = [](auto& j) { j["architectures"] = {"BertModel"}; }});
  const auto bare = load_model(bare_dir);
  CHECK(bare.config.bert_head == BertHead::none);
  const auto out = bert_forward(bare, std::span(&in, 1));
  CHECK(out.logits.size() == 0);
  CHECK((out.hidden - reference.hidden).cwiseAbs().maxCoeff() == 0.0f);
  CHECK((out.pooled - reference.pooled).cwiseAbs().maxCoeff() == 0.0f);

  // BertForMaskedLM: an MLM head (decoder tied to the word embeddings), checked against the
  // head computed here from its definition.
  const auto mlm_dir = test::scratch_dir("bert_mlm");
  const Mat transform = test::random_matrix(128, 128, 5) * 0.05f;
  const Mat transform_bias = test::random_matrix(1, 128, 6) * 0.1f;
  const Mat mlm_bias = test::random_matrix(1, 30522, 7) * 0.1f;
  const Mat ones = Mat::Ones(1, 128);
  const Mat zeros = Mat::Zero(1, 128);
  test::copy_model(src, mlm_dir, {.edit_tensors = [&](auto& tensors) {
                                    std::erase_if(tensors, [](const auto& t) {
                                      return t.name.starts_with("classifier") || t.name.starts_with("bert.pooler");
                                    });
                                    tensors.push_back({"cls.predictions.transform.dense.weight", Tensor::from_matrix(transform)});
                                    tensors.push_back({"cls.predictions.transform.dense.bias", Tensor::from_matrix(transform_bias)});
                                    tensors.push_back({"cls.predictions.transform.LayerNorm.weight", Tensor::from_matrix(ones)});
                                    tensors.push_back({"cls.predictions.transform.LayerNorm.bias", Tensor::from_matrix(zeros)});
                                    tensors.push_back({"cls.predictions.bias", Tensor::from_matrix(mlm_bias)});
                                    for (auto& t : tensors) {
                                      if (t.tensor.shape.size() == 2 && t.tensor.shape[0] == 1) t.tensor.shape = {t.tensor.shape[1]};
                                    }
                                  },
                                  .edit_config = [](auto& j) { j["architectures"] = {"BertForMaskedLM"}; }});
  const auto mlm = load_model(mlm_dir);
  CHECK(mlm.weights.mlm_decoder.data == mlm.weights.token_embd.data);  // tied
  const auto lm = bert_forward(mlm, std::span(&in, 1));
  REQUIRE(lm.logits.rows() == 7);
  REQUIRE(lm.logits.cols() == 30522);
  CHECK(lm.pooled.size() == 0);
  // Expected: LayerNorm(gelu(h T^T + b)) E^T + bias, with LayerNorm weight 1 and bias 0.
  Mat t = (reference.hidden * transform.transpose()).rowwise() + transform_bias.row(0);
  t = t.unaryExpr([](float v) { return 0.5f * v * (1.0f + std::erf(v / std::sqrt(2.0f))); });
  for (int64_t r = 0; r < t.rows(); ++r) {
    const float mean = t.row(r).mean();
    t.row(r).array() -= mean;
    t.row(r) /= std::sqrt(t.row(r).squaredNorm() / 128.0f + 1e-12f);
  }
  const Mat expected = (t * classifier.weights.token_embd.matrix().transpose()).rowwise() + mlm_bias.row(0);
  CHECK((lm.logits - expected).cwiseAbs().maxCoeff() <= 1e-3f);
}
