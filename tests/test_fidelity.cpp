// Fidelity of a candidate to its base model: KL, top-1 agreement and the perplexity ratio, against
// a brute-force computation here; the on-disk cache of the base side (hit, identical numbers,
// a damaged file recomputed).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>

#include "core/base/error.hpp"
#include "core/models/llama.hpp"
#include "core/decompose/decompose.hpp"
#include "core/models/bert.hpp"
#include "evaluators/evaluator.hpp"
#include "evaluators/fidelity.hpp"
#include "evaluators/perplexity.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

std::vector<TokenId> golden_ids(const std::filesystem::path& dir, size_t n) {
  auto ids = test::read_json(dir / "golden/tinystories_val_50k_ids.json")["ids"].get<std::vector<TokenId>>();
  ids.resize(n);
  return ids;
}

// A copy of `model` with one matrix scaled (held in memory; the base's files are untouched).
Model scaled(const Model& model, int64_t layer, MatrixKind kind, float factor) {
  Model m = model;
  const Tensor& w = model.weights.layers[static_cast<size_t>(layer)][kind].weight();
  std::vector<float> values(w.data, w.data + w.numel());
  for (auto& v : values) v *= factor;
  m.weights.layers[static_cast<size_t>(layer)][kind] = Linear::dense(Tensor::owned(w.shape, std::move(values)));
  return m;
}

Model nan_model(const Model& model) {
  Model m = model;
  const auto n = static_cast<size_t>(model.weights.output_norm.numel());
  m.weights.output_norm = Tensor::owned(model.weights.output_norm.shape,
                                        std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
  return m;
}

Eigen::VectorXd log_softmax(const Mat& logits, int64_t row) {
  const Eigen::VectorXd x = logits.row(row).transpose().cast<double>();
  const double max = x.maxCoeff();
  const double lse = max + std::log((x.array() - max).exp().sum());
  return (x.array() - lse).matrix();
}

struct Brute {
  double kl = 0, top1 = 0, ppl_base = 0, ppl_candidate = 0;
  int64_t n = 0;
};

// Every window ([BOS] + ctx text tokens) alone through both models, all in float64.
Brute brute_force(const Model& base, const Model& cand, const std::vector<TokenId>& ids, int64_t ctx) {
  Brute b;
  double kl = 0, nll_b = 0, nll_c = 0;
  int64_t agree = 0;
  for (size_t w0 = 0; w0 < ids.size(); w0 += static_cast<size_t>(ctx)) {
    std::vector<TokenId> input = {1};
    input.insert(input.end(), ids.begin() + static_cast<std::ptrdiff_t>(w0),
                 ids.begin() + static_cast<std::ptrdiff_t>(std::min(ids.size(), w0 + static_cast<size_t>(ctx))));
    const std::vector<std::vector<TokenId>> batch = {input};
    const Mat lb = llama_forward(base, batch), lc = llama_forward(cand, batch);
    for (int64_t j = 0; j + 1 < static_cast<int64_t>(input.size()); ++j) {
      const auto pb = log_softmax(lb, j), pc = log_softmax(lc, j);
      kl += (pb.array().exp() * (pb - pc).array()).sum();
      const TokenId t = input[static_cast<size_t>(j + 1)];
      nll_b -= pb(t);
      nll_c -= pc(t);
      Eigen::Index ib, ic;
      lb.row(j).maxCoeff(&ib);
      lc.row(j).maxCoeff(&ic);
      agree += ib == ic;
      ++b.n;
    }
  }
  const auto n = static_cast<double>(b.n);
  b.kl = kl / n;
  b.top1 = static_cast<double>(agree) / n;
  b.ppl_base = std::exp(nll_b / n);
  b.ppl_candidate = std::exp(nll_c / n);
  return b;
}

void check_same(const FidelityResult& a, const FidelityResult& b) {
  CHECK(a.kl == b.kl);
  CHECK(a.kl_stderr == b.kl_stderr);
  CHECK(a.top1 == b.top1);
  CHECK(a.ppl_base == b.ppl_base);
  CHECK(a.ppl_candidate == b.ppl_candidate);
  CHECK(a.ppl_ratio == b.ppl_ratio);
  CHECK(a.n_tokens == b.n_tokens);
}

}  // namespace

TEST_CASE("fidelity of a model to itself is perfect", "[evaluators][fidelity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto ids = golden_ids(dir, 1000);
  FidelityOptions options;
  options.ctx = 128;
  int64_t last_done = -1, last_total = -1;
  options.progress = [&](int64_t done, int64_t total) { last_done = done, last_total = total; };
  const auto f = fidelity(model, model, ids, options);
  CHECK(f.finite);
  CHECK(f.n_tokens == 1000);
  CHECK(f.n_windows == 8);
  CHECK(last_done == 8);
  CHECK(last_total == 8);
  CHECK(std::abs(f.kl) < 1e-12);
  CHECK(f.kl_stderr == 0.0);
  CHECK(f.top1 == 1.0);
  CHECK(std::abs(f.ppl_ratio - 1.0) < 1e-12);
  CHECK_FALSE(f.base_from_cache);
  CHECK(f.cache_file.empty());
  // The base perplexity is the chunk protocol's.
  const auto p = perplexity_chunks(model, ids, 128);
  CHECK(std::abs(f.ppl_base - p.ppl) <= 1e-12 * p.ppl);
}

TEST_CASE("fidelity of a perturbed model matches a brute-force computation", "[evaluators][fidelity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  const auto cand = scaled(base, 2, MatrixKind::up, 1.5f);
  const auto ids = golden_ids(dir, 1000);
  const auto brute = brute_force(base, cand, ids, 128);
  REQUIRE(brute.n == 1000);
  INFO("brute force: kl " << brute.kl << ", top1 " << brute.top1 << ", ppl " << brute.ppl_base << " -> "
                          << brute.ppl_candidate);
  REQUIRE(brute.kl > 1e-4);  // a real perturbation

  for (const int64_t per_batch : {int64_t{1}, int64_t{8}}) {
    CAPTURE(per_batch);
    FidelityOptions options;
    options.ctx = 128;
    options.windows_per_batch = per_batch;
    const auto f = fidelity(base, cand, ids, options);
    CHECK(f.finite);
    CHECK(f.n_tokens == 1000);
    CHECK(f.kl > 0.0);
    // One window per forward pass is the brute force's computation, except that log-probabilities
    // pass through float32 (the cache's format); batched windows also move the fp32 logits.
    const double kl_tol = per_batch == 1 ? 1e-6 : 1e-5, ppl_tol = per_batch == 1 ? 1e-12 : 1e-6;
    CHECK(std::abs(f.kl - brute.kl) <= kl_tol * brute.kl);
    CHECK(f.kl_stderr > 0.0);
    CHECK(f.kl_stderr < f.kl);
    CHECK(std::abs(f.top1 - brute.top1) <= 2e-3);  // a near-tie may flip on fp32 noise when batched
    if (per_batch == 1) CHECK(f.top1 == brute.top1);
    CHECK(f.top1 < 1.0);
    CHECK(std::abs(f.ppl_base - brute.ppl_base) <= ppl_tol * brute.ppl_base);
    CHECK(std::abs(f.ppl_candidate - brute.ppl_candidate) <= ppl_tol * brute.ppl_candidate);
    CHECK(std::abs(f.ppl_ratio - brute.ppl_candidate / brute.ppl_base) <= ppl_tol);
  }

  SECTION("max_windows scores the first windows only") {
    FidelityOptions options;
    options.ctx = 128;
    options.max_windows = 3;
    const auto f = fidelity(base, cand, ids, options);
    CHECK(f.n_windows == 3);
    CHECK(f.n_tokens == 384);
    const auto b3 = brute_force(base, cand, std::vector<TokenId>(ids.begin(), ids.begin() + 384), 128);
    CHECK(std::abs(f.kl - b3.kl) <= 1e-5 * b3.kl);
  }

  SECTION("a NaN candidate is reported, never dropped") {
    FidelityOptions options;
    options.ctx = 128;
    const auto f = fidelity(base, nan_model(base), ids, options);
    CHECK_FALSE(f.finite);
    CHECK(std::isnan(f.kl));
    CHECK(std::isnan(f.top1));
    CHECK(std::isnan(f.ppl_candidate));
    CHECK(std::isnan(f.ppl_ratio));
    CHECK(std::isfinite(f.ppl_base));
    CHECK_THROWS_AS(fidelity(nan_model(base), base, ids, options), Error);  // a NaN base is no reference
  }
}

TEST_CASE("fidelity caches the base side on disk and never trusts a damaged file", "[evaluators][fidelity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  const auto cand = scaled(base, 1, MatrixKind::q, 0.7f);
  const auto ids = golden_ids(dir, 700);
  FidelityOptions options;
  options.ctx = 128;
  options.cache_dir = test::scratch_dir("fidelity-cache");
  options.data_key = "tinystories-700";

  const auto first = fidelity(base, cand, ids, options);
  CHECK_FALSE(first.base_from_cache);
  CHECK_FALSE(first.cache_rejected);
  REQUIRE(std::filesystem::exists(first.cache_file));
  CHECK(first.cache_file.parent_path() == options.cache_dir / "fidelity");
  CHECK(first.cache_file.extension() == ".f32");
  // Header + rows + NLLs + argmaxes; no temporary file left behind.
  CHECK(std::filesystem::file_size(first.cache_file) == 128 + 700 * (512 * 4 + 8 + 4));
  CHECK(std::distance(std::filesystem::directory_iterator(options.cache_dir / "fidelity"),
                      std::filesystem::directory_iterator()) == 1);
  // Without a cache: the same numbers.
  FidelityOptions no_cache = options;
  no_cache.cache_dir.clear();
  check_same(fidelity(base, cand, ids, no_cache), first);

  const auto second = fidelity(base, cand, ids, options);
  CHECK(second.base_from_cache);
  CHECK(second.cache_file == first.cache_file);
  check_same(second, first);

  SECTION("another candidate reuses the base side") {
    const auto other = fidelity(base, scaled(base, 4, MatrixKind::down, 1.3f), ids, options);
    CHECK(other.base_from_cache);
    CHECK(other.kl > 0);
    CHECK(other.kl != first.kl);
  }

  SECTION("another data key, ctx or limit is another file") {
    auto o = options;
    o.data_key = "other";
    CHECK(fidelity(base, cand, ids, o).cache_file != first.cache_file);
    o = options;
    o.ctx = 64;
    CHECK(fidelity(base, cand, ids, o).cache_file != first.cache_file);
    o = options;
    o.max_windows = 2;
    const auto limited = fidelity(base, cand, ids, o);
    CHECK(limited.cache_file != first.cache_file);
    CHECK_FALSE(limited.base_from_cache);
    CHECK(limited.n_tokens == 256);
  }

  SECTION("a truncated cache file is detected and recomputed") {
    std::filesystem::resize_file(first.cache_file, std::filesystem::file_size(first.cache_file) / 2);
    const auto again = fidelity(base, cand, ids, options);
    CHECK_FALSE(again.base_from_cache);
    CHECK(again.cache_rejected);
    check_same(again, first);
    // ... and replaced by a good one.
    CHECK(std::filesystem::file_size(first.cache_file) == 128 + 700 * (512 * 4 + 8 + 4));
    CHECK(fidelity(base, cand, ids, options).base_from_cache);
  }

  SECTION("a flipped byte fails the checksum") {
    {
      std::fstream f(first.cache_file, std::ios::in | std::ios::out | std::ios::binary);
      const std::streamoff at = 128 + 1000 * 4 + 2;
      char c = 0;
      f.seekg(at);
      f.get(c);
      f.seekp(at);
      f.put(static_cast<char>(c ^ 0x5a));
    }
    const auto again = fidelity(base, cand, ids, options);
    CHECK_FALSE(again.base_from_cache);
    CHECK(again.cache_rejected);
    check_same(again, first);
  }

  SECTION("a file that is not a cache file at all") {
    test::write_text(first.cache_file, "hello");
    const auto again = fidelity(base, cand, ids, options);
    CHECK(again.cache_rejected);
    check_same(again, first);
  }
}

TEST_CASE("fidelity: bad arguments are Errors", "[evaluators][fidelity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto ids = golden_ids(dir, 300);
  FidelityOptions options;
  options.ctx = 512;  // + BOS > 512 positions
  CHECK_THROWS_AS(fidelity(model, model, ids, options), Error);
  options.ctx = 128;
  CHECK_THROWS_AS(fidelity(model, model, {}, options), Error);
  options.max_windows = 0;
  CHECK_THROWS_AS(fidelity(model, model, ids, options), Error);
}

// A sequence classifier's fidelity: KL of the label distributions and argmax agreement over
// SST-2's dev sentences, against the same computed here from bert_forward's logits one sentence
// at a time (float64). Batching pads sentences, so the logits agree to float rounding only.
TEST_CASE("classifier fidelity: bert-tiny-sst2 decomposed against its base, as computed by hand", "[evaluators][fidelity]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(test::shared_data("glue-sst2/dev.tsv"));
  const Model base = load_model(dir);
  FactorCache cache(test::scratch_dir("classifier_fidelity_cache"));
  const Model cand = decompose_model(base, parse_config("L*:all=25%@svd", base.config), cache);

  EvalRequest request;
  request.tasks = {"fidelity", "sst2"};
  request.load.data_dir = test::shared_data("");
  request.load.limit = 120;
  request.settings.batch_size = 16;
  const Evaluator evaluator(base, request);
  CHECK(evaluator.metric_names() == std::vector<std::string>{"fidelity.kl", "fidelity.top1", "sst2.acc"});
  std::map<std::string, MetricResult> got;
  for (const auto& report : evaluator.run(cand, Config{})) {
    for (const auto& m : report.metrics) got[m.name()] = m;
    if (report.task == "fidelity") CHECK(report.protocol["protocol"] == "classifier");
  }
  REQUIRE(got.contains("fidelity.kl"));

  // By hand: each of the first 120 sentences alone through both models.
  TaskLoadOptions load;
  load.data_dir = test::shared_data("");
  load.limit = 120;
  const Task sst2 = load_task("sst2", load);
  REQUIRE(sst2.docs.size() == 120);
  double kl = 0, kl_sq = 0;
  int64_t agree = 0;
  for (const auto& doc : sst2.docs) {
    const std::vector<BertInput> one = {bert_encode(base.require_tokenizer(), doc.text_a, doc.text_b, base.config.n_ctx_train)};
    const Eigen::VectorXd p = log_softmax(bert_forward(base, one).logits, 0);
    const Eigen::VectorXd q = log_softmax(bert_forward(cand, one).logits, 0);
    const double d = (p.array().exp() * (p - q).array()).sum();
    kl += d;
    kl_sq += d * d;
    Eigen::Index a = 0, b = 0;
    p.maxCoeff(&a);
    q.maxCoeff(&b);
    agree += a == b;
  }
  const double mean = kl / 120.0;
  CHECK(got["fidelity.kl"].n == 120);
  // Logits of magnitude ~3 rounded at 2^-24 each in two orders of summation: KL moves by far less
  // than 1e-5 of a mean KL of ~2e-3.
  CHECK(got["fidelity.kl"].value == Approx(mean).epsilon(1e-4));
  CHECK(got["fidelity.kl"].stderr_ == Approx(std::sqrt((kl_sq / 120.0 - mean * mean) / 119.0)).epsilon(1e-3));
  CHECK(got["fidelity.top1"].value == Approx(static_cast<double>(agree) / 120.0));
  CHECK(mean > 1e-5);  // the decomposition did change the classifier (the test can fail)

  // The base against itself: exactly zero and full agreement.
  std::map<std::string, double> self;
  for (const auto& report : evaluator.run(base, Config{})) {
    for (const auto& m : report.metrics) self[m.name()] = m.value;
  }
  CHECK(self["fidelity.kl"] == 0.0);
  CHECK(self["fidelity.top1"] == 1.0);

  // A model without a classification head has no label distribution to compare.
  CHECK_THROWS_WITH(classifier_log_probs(load_model(test::shared_data("stories260K-hf")), {}, 1),
                    Catch::Contains("needs a sequence classifier"));
}
