// The decomposer, its factor cache, decomposed checkpoints and size accounting.
#include <fstream>
#include <regex>
#include <thread>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/models/bert.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/models/llama.hpp"
#include "core/decompose/size.hpp"
#include "tests/fixtures.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

const std::vector<std::vector<TokenId>> kSequence = {{1, 403, 407, 261, 378, 432, 383, 286, 261, 376}};

float max_abs_diff(const Mat& a, const Mat& b) { return (a - b).cwiseAbs().maxCoeff(); }

}  // namespace

TEST_CASE("size reduction reproduces the paper's Decomposition Percentage", "[decompose][size]") {
  const auto csv_path = test::shared_dir() / "paper" / "accuracy_impact_data.csv";
  RS_REQUIRE_SHARED(csv_path);
  const auto model = load_model(test::shared_dir() / "configs" / "llama-2-7b");
  REQUIRE(model.n_params() == 6738415616);
  std::ifstream in(csv_path);
  std::string line;
  std::getline(in, line);  // header
  const std::regex row(R"re(^"\[([0-9, ]*)\]","\[([01, ]*)\]",(\d+),([0-9.eE+-]+),)re");
  const char* const kKinds[] = {"q", "k", "v", "o", "gate", "up", "down"};
  int rows = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    REQUIRE(std::regex_search(line, m, row));
    std::string layers = m[1];
    layers.erase(std::remove(layers.begin(), layers.end(), ' '), layers.end());
    std::string mask = m[2];
    mask.erase(std::remove(mask.begin(), mask.end(), ' '), mask.end());
    std::string matrices;
    for (size_t i = 0; i < 7; ++i) {
      if (mask[2 * i] == '1') matrices += (matrices.empty() ? "" : ",") + std::string(kKinds[i]);
    }
    const std::string text = "L" + layers + ":" + matrices + "=" + m[3].str();
    const auto report = size_report(model.config, model.n_params(), parse_config(text, model.config));
    INFO(text);
    CHECK(std::abs(report.reduction_pct() - std::stod(m[4])) <= 1e-9);
    ++rows;
  }
  CHECK(rows == 10);
  const auto paper9 = size_report(model.config, model.n_params(), parse_config("L2,17,31:all=1", model.config));
  CHECK(std::abs(paper9.reduction_pct() - 9.006438272506823) <= 1e-9);
  CHECK(paper9.n_decomposed == 21);
  CHECK(paper9.bytes_per_param == 2);  // float16 checkpoint
  CHECK(paper9.params_after == 6738415616 - 3 * (202375168 - (4 * (4096 + 1 + 4096) + 3 * (4096 + 1 + 11008))));
}

TEST_CASE("decomposing again performs zero factorizations, across cache instances", "[decompose][cache]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  const auto cache_dir = test::scratch_dir("cache_reuse");
  const auto config = parse_config("L*:all=8;L1-2:mlp=50%@svd", base.config);
  FactorCache first(cache_dir);
  DecomposeStats s1;
  const Model a = decompose_model(base, config, first, &s1);
  CHECK(s1.matrices == 35);
  CHECK(s1.factorized == 35);

  // Another configuration on a fresh cache object (as another process would): every rank is a
  // truncation of the cached full SVDs.
  const int64_t before = factorization_count();
  FactorCache second(cache_dir);
  DecomposeStats s2;
  const Model b = decompose_model(base, parse_config("L*:all=4@svd;L0:q=64", base.config), second, &s2);
  CHECK(s2.factorized == 0);
  CHECK(s2.cache_hits == 35);
  CHECK(factorization_count() == before);

  // The factors are the truncated SVD: a rank-r svd factor pair reproduces U_r S_r V_r^T of W.
  const auto& w = base.weights.layers[3][MatrixKind::up].weight();
  const auto& lin = b.weights.layers[3][MatrixKind::up];
  REQUIRE(lin.form() == Linear::Form::svd);
  const Mat approx = lin.u().matrix() * lin.v().matrix().transpose();
  Eigen::BDCSVD<Eigen::MatrixXd> svd(w.matrix().cast<double>(), Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd expected =
      svd.matrixU().leftCols(4) * svd.singularValues().head(4).asDiagonal() * svd.matrixV().leftCols(4).transpose();
  CHECK((approx.cast<double>() - expected).cwiseAbs().maxCoeff() <= 1e-4);
  CHECK(b.weights.layers[0][MatrixKind::q].rank() == 64);  // full rank of a 64 x 64 matrix
}

TEST_CASE("a damaged cache file is never used: it is recomputed", "[decompose][cache][errors]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  const auto cache_dir = test::scratch_dir("cache_damaged");
  const auto& w = base.weights.layers[0][MatrixKind::gate].weight();
  FactorCache cache(cache_dir);
  const Mat good_u = cache.factors(w)->u(5);
  const auto file = cache_dir / (matrix_content_key(w) + ".svd");
  REQUIRE(std::filesystem::exists(file));

  SECTION("a flipped byte in the payload") {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(300);
    f.put('\x7f');
  }
  SECTION("a file cut short (process killed while copying it in)") {
    std::filesystem::resize_file(file, std::filesystem::file_size(file) / 2);
  }
  SECTION("a foreign file under the key's name") {
    test::write_text(file, "not a factor file");
  }
  FactorCache again(cache_dir);
  const auto svd = again.factors(w);
  CHECK(again.misses() == 1);
  CHECK(max_abs_diff(svd->u(5), good_u) == 0.0f);
  CHECK(FactorCache(cache_dir).factors(w) != nullptr);  // rewritten whole
}

TEST_CASE("concurrent writers of one key leave one valid file", "[decompose][cache]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  const auto cache_dir = test::scratch_dir("cache_concurrent");
  const auto& w = base.weights.layers[4][MatrixKind::down].weight();
  std::vector<Mat> results(4);
  std::vector<std::thread> writers;
  for (size_t i = 0; i < results.size(); ++i) {
    writers.emplace_back([&, i] {
      FactorCache cache(cache_dir);
      results[i] = cache.factors(w)->v(10);
    });
  }
  for (auto& t : writers) t.join();
  for (const auto& r : results) CHECK(max_abs_diff(r, results[0]) == 0.0f);
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(cache_dir)) {
    ++files;
    CHECK(entry.path().extension() == ".svd");  // no temporary left behind
  }
  CHECK(files == 1);
  FactorCache reader(cache_dir);
  reader.factors(w);
  CHECK(reader.hits() == 1);
}

TEST_CASE("a decomposed checkpoint loads back to the same logits", "[decompose][checkpoint]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("cache_checkpoint"));
  for (const char* text : {"L*:all=8", "L0-2:attn=4@svd;L3,4:mlp=25%"}) {
    INFO(text);
    const auto config = parse_config(text, base.config);
    const Model factored = decompose_model(base, config, cache);
    const Mat expected = llama_forward(factored, kSequence);

    const auto out = test::scratch_dir("decomposed");
    write_checkpoint(factored, out, encode_config(config, base.config), {});
    const auto loaded = load_model(out);
    CHECK(loaded.config.rankscope_config == encode_config(config, base.config));
    CHECK(loaded.config.factored.size() == resolve_config(config, base.config).size());
    CHECK(loaded.n_params() == factored.n_params());
    CHECK(loaded.n_params() == size_report(base.config, base.n_params(), config).params_after);
    CHECK(max_abs_diff(llama_forward(loaded, kSequence), expected) == 0.0f);
    REQUIRE(loaded.tokenizer != nullptr);

    const auto dense_out = test::scratch_dir("decomposed_dense");
    write_checkpoint(factored, dense_out, encode_config(config, base.config), {.dense = true});
    const auto dense = load_model(dense_out);
    CHECK(dense.config.factored.empty());
    CHECK(dense.n_params() == base.n_params());
    CHECK(max_abs_diff(llama_forward(dense, kSequence), expected) <= 1e-4f);
  }
}

TEST_CASE("a full-rank decomposition keeps the model's logits", "[decompose]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("cache_full_rank"));
  const Model full = decompose_model(base, parse_config("L*:all=100%", base.config), cache);
  CHECK(max_abs_diff(llama_forward(full, kSequence), llama_forward(base, kSequence)) <= 1e-4f);
  const Model low = decompose_model(base, parse_config("L*:all=2", base.config), cache);
  CHECK(max_abs_diff(llama_forward(low, kSequence), llama_forward(base, kSequence)) > 0.1f);
}

TEST_CASE("a decomposed BERT checkpoint loads back to the same logits", "[decompose][checkpoint]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("cache_bert"));
  const auto config = parse_config("L0:all=32;L1:up,down=16@svd", base.config);
  const Model factored = decompose_model(base, config, cache);
  const auto out = test::scratch_dir("bert_decomposed");
  write_checkpoint(factored, out, encode_config(config, base.config), {});
  const auto loaded = load_model(out);
  const BertInput in{{101, 2009, 1005, 1055, 1037, 11951, 102}, {}, {}};
  CHECK(max_abs_diff(bert_forward(loaded, std::span(&in, 1)).logits, bert_forward(factored, std::span(&in, 1)).logits) == 0.0f);
}

TEST_CASE("randomized factors serve ranks up to their k, with their error reported", "[decompose][cache]") {
  // W [1024 x 512] with singular values 0.97^i: a decaying spectrum.
  const int64_t m = 1024, n = 512;
  const Eigen::MatrixXd q1 = Eigen::HouseholderQR<Eigen::MatrixXd>(test::random_matrix(m, n, 1).cast<double>()).householderQ() *
                             Eigen::MatrixXd::Identity(m, n);
  const Eigen::MatrixXd q2 = Eigen::HouseholderQR<Eigen::MatrixXd>(test::random_matrix(n, n, 2).cast<double>()).householderQ();
  Eigen::VectorXd s(n);
  for (int64_t i = 0; i < n; ++i) s[i] = std::pow(0.97, static_cast<double>(i));
  const Mat w = (q1 * s.asDiagonal() * q2.transpose()).cast<float>();
  const Tensor weight = Tensor::from_matrix(w);
  auto optimum = [&](int64_t r) { return std::sqrt(s.tail(n - r).squaredNorm() / s.squaredNorm()); };

  const auto dir = test::scratch_dir("cache_randomized");
  FactorCache cache(dir, {.randomized = true, .min_rank = 16});
  const auto a = cache.factors(weight, 20);
  CHECK(a->k() == 32);
  CHECK_FALSE(a->full());
  CHECK(std::filesystem::exists(dir / (matrix_content_key(weight) + ".r32.svd")));
  CHECK(a->relative_error(20) <= 1.01 * optimum(20));
  CHECK(a->relative_error(20) >= optimum(20) * (1 - 1e-4));

  const auto b = cache.factors(weight, 30);  // within k: a hit
  CHECK(cache.hits() == 1);
  CHECK(b->k() == 32);
  const auto c = cache.factors(weight, 100);  // above k: a larger randomized SVD
  CHECK(cache.misses() == 2);
  CHECK(c->k() == 128);
  CHECK(c->relative_error(100) <= 1.01 * optimum(100));
  const auto full = cache.factors(weight);  // rank 0: the full SVD
  CHECK(full->full());
  CHECK(std::abs(full->relative_error(100) - optimum(100)) <= 1e-4 * optimum(100));
  CHECK(cache.factors(weight, 20)->full());  // the full SVD now serves every rank
}

TEST_CASE("decompose --format hf writes the modeling file and an auto_map, and rankscope reads it back", "[decompose][checkpoint]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("cache_hf"));
  const auto config = parse_config("L0-2:q,k=4@svd;L3,4:mlp=25%", base.config);
  const Model factored = decompose_model(base, config, cache);
  const auto out = test::scratch_dir("hf_export");
  CheckpointOptions options{.hf = true};
  options.provenance["base_model"] = {{"path", dir.string()}, {"hash", "0123456789abcdef0123456789abcdef"}};
  write_checkpoint(factored, out, encode_config(config, base.config), options);
  std::ifstream py(out / "modeling_rankscope.py");
  const std::string written((std::istreambuf_iterator<char>(py)), std::istreambuf_iterator<char>());
  CHECK(written == hf_modeling_source());
  CHECK(written.find("class FactoredLinear") != std::string::npos);
  const auto json = nlohmann::json::parse(std::ifstream(out / "config.json"));
  CHECK(json["auto_map"]["AutoModelForCausalLM"] == "modeling_rankscope.RankscopeLlamaForCausalLM");
  CHECK(json["architectures"][0] == "LlamaForCausalLM");  // the base architecture, for every other reader
  const auto loaded = load_model(out);
  CHECK(loaded.config.rankscope_base_hash == "0123456789abcdef0123456789abcdef");
  CHECK(loaded.config.factored.size() == resolve_config(config, base.config).size());
  CHECK(max_abs_diff(llama_forward(loaded, kSequence), llama_forward(factored, kSequence)) == 0.0f);

  // Rewritten without --format hf (decomposed further), the auto_map goes: its file is not there.
  const auto plain = test::scratch_dir("hf_export_plain");
  write_checkpoint(loaded, plain, encode_config(config, base.config), {});
  const auto plain_json = nlohmann::json::parse(std::ifstream(plain / "config.json"));
  CHECK_FALSE(plain_json.contains("auto_map"));
  CHECK_FALSE(std::filesystem::exists(plain / "modeling_rankscope.py"));
  // Factors and a dense reconstruction at once make no sense: refused.
  CHECK_THROWS_WITH(write_checkpoint(factored, test::scratch_dir("hf_dense"), "", {.dense = true, .hf = true}),
                    Catch::Contains("--format hf writes factors"));
  CHECK(hf_auto_class("BertForSequenceClassification") == "AutoModelForSequenceClassification");
  CHECK(hf_auto_class("GPT2LMHeadModel").empty());
}
