// Activation-aware decomposition (asvd, whiten): the methods in configuration strings, their
// transforms against plain SVD and the theoretical optimum, regularisation of singular Gram
// matrices, the calibration cache, and an end-to-end decomposition of stories260K-hf.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <numeric>
#include <fstream>
#include <sstream>

#include <Eigen/QR>
#include <Eigen/SVD>

#include "core/models/bert.hpp"
#include "core/decompose/calibration.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/decompose/linalg.hpp"
#include "core/models/llama.hpp"
#include "core/decompose/proxy.hpp"
#include "core/decompose/size.hpp"
#include "evaluators/calibration.hpp"
#include "evaluators/perplexity.hpp"
#include "evaluators/tasks.hpp"
#include "tests/linalg_fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

const std::vector<std::vector<TokenId>> kSequence = {{1, 403, 407, 261, 378, 432, 383, 286, 261, 376}};

// Statistics of activations X, through the accumulator the forward hooks use.
SiteStats stats_of(const Mat& x) {
  CalibrationAccumulator acc(cpu_backend());
  acc.add(HookSite::attn_in, 0, cpu_backend().upload(x, Precision::f32));
  return acc.take(0, HookSite::attn_in);
}

// Statistics with a given Gram matrix and mean |x| (as if from `rows` rows).
SiteStats synthetic_stats(const Eigen::MatrixXd& gram, const Eigen::VectorXd& mean_abs, int64_t rows) {
  SiteStats s;
  s.width = gram.rows();
  s.rows = rows;
  s.gram = gram;
  s.abs_sum = mean_abs * static_cast<double>(rows);
  return s;
}

// A calibration of `model` whose every site has Gram = rows * I and mean |x| = 1.
std::shared_ptr<const Calibration> unit_calibration(const Model& model) {
  auto c = std::make_shared<Calibration>();
  c->key = std::string(32, 'a');
  for (int64_t l = 0; l < model.config.n_layer; ++l) {
    const auto& layer = model.weights.layers[static_cast<size_t>(l)];
    for (auto kind : matrix_kinds(model.config.arch)) {
      const int64_t width = layer[kind].n_in();
      c->put(l, input_site(kind), synthetic_stats(Eigen::MatrixXd::Identity(width, width), Eigen::VectorXd::Ones(width), 1));
    }
  }
  return c;
}

// ||X W^T - X W_r^T||_F in double, W_r = U V^T of a two-factor Linear.
double output_error(const Mat& x, const Mat& w, const Linear& lin) {
  const Eigen::MatrixXd wr = lin.u().matrix().cast<double>() * lin.v().matrix().cast<double>().transpose();
  return (x.cast<double>() * (w.cast<double>() - wr).transpose()).norm();
}

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

RunResult run_cli(const std::string& args) {
  const auto dir = test::scratch_dir("activation_cli." + std::to_string(::getpid()));
  const std::string cmd = "cd '" RANKSCOPE_SOURCE_DIR "' && '" RANKSCOPE_EXE "' " + args + " >'" +
                          (dir / "out").string() + "' 2>'" + (dir / "err").string() + "'";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(dir / "out"), slurp(dir / "err")};
}

double tinystories_ppl(const Model& model, const std::vector<TokenId>& ids, int64_t windows = 16) {
  PerplexityOptions o;
  o.ctx = 256;
  o.max_windows = windows;  // 16: the file's first 4096 tokens; calibration reads its second half
  return perplexity_chunks(model, ids, o).ppl;
}

// stories260K-hf with the TinyStories text's ids and a whiten/asvd calibration on the text's second
// half (the perplexity windows are its start), cached under `scratch`.
struct StoriesCalibrated {
  Model base;
  std::vector<TokenId> ids;
  std::filesystem::path cache_dir;
  ActivationOptions activation;
};
StoriesCalibrated stories_calibrated(const std::filesystem::path& dir, const std::string& scratch) {
  StoriesCalibrated s{load_model(dir), {}, test::scratch_dir(scratch), {}};
  s.ids = s.base.require_tokenizer().encode(load_task("tinystories", {.data_dir = test::shared_data("")}).text);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.cache_dir = s.cache_dir;
  s.activation = {calibrate(s.base, o), 0.5};
  return s;
}

}  // namespace

TEST_CASE("asvd and whiten in configuration strings", "[activation][config]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir, {.weights = false});
  for (auto m : {Method::tucker, Method::svd, Method::asvd, Method::whiten}) CHECK(parse_method(method_name(m)) == m);
  CHECK(is_activation_aware(Method::asvd));
  CHECK(is_activation_aware(Method::whiten));
  CHECK_FALSE(is_activation_aware(Method::svd));
  CHECK_FALSE(is_activation_aware(Method::tucker));

  const auto c = parse_config(" L0-1 : q,k = 25% @ asvd ; L2:all=8@whiten;L3:mlp=4@svd;L4:o=2", model.config);
  CHECK(c.cells.at({0, MatrixKind::q}).method == Method::asvd);
  CHECK(c.cells.at({2, MatrixKind::down}).method == Method::whiten);
  const auto canonical = encode_config(c, model.config);
  CHECK(canonical == "L0-1:q,k=25%@asvd;L2:all=8@whiten;L3:mlp=4@svd;L4:o=2");
  CHECK(parse_config(canonical, model.config) == c);
  CHECK(encode_config(parse_config(canonical, model.config), model.config) == canonical);
  CHECK(needs_calibration(c));
  CHECK_FALSE(needs_calibration(parse_config("L*:all=8@svd;L0:q=4", model.config)));
  // Later rules override the method cell by cell; @tucker stays the omitted default.
  CHECK(encode_config(parse_config("L*:all=8@whiten;L*:all=8@tucker", model.config), model.config) == "L*:all=8");
  CHECK_THROWS_WITH(parse_config("L0:q=1@cp", model.config), Contains("'cp'") && Contains("asvd") && Contains("whiten"));
  CHECK_THROWS_WITH(parse_method("whitened"), Contains("'whitened'"));
  // Two factors, as svd: in*r + r*out.
  CHECK(factored_params(172, 64, 10, Method::asvd) == factored_params(172, 64, 10, Method::svd));
  CHECK(factored_params(172, 64, 10, Method::whiten) == 64 * 10 + 10 * 172);
}

TEST_CASE("identity Gram (whiten) and unit scales (asvd) reproduce plain SVD", "[activation]") {
  const Mat w = test::random_matrix(24, 40, 7);
  const Tensor weight = Tensor::from_matrix(w);
  FactorCache cache(test::scratch_dir("activation_identity"));
  const auto stats = synthetic_stats(Eigen::MatrixXd::Identity(40, 40), Eigen::VectorXd::Ones(40), 100);
  const auto whiten = whiten_transform(stats);
  CHECK(whiten.lambda == 0.0);
  CHECK(whiten.note.empty());
  CHECK(whiten.chol.isIdentity(0.0));
  const auto asvd = asvd_transform(stats, 0.5);
  CHECK(asvd.floored == 0);
  CHECK(asvd.scale.isOnes(0.0));
  for (int64_t r : {1, 5, 23, 24}) {
    INFO("rank " << r);
    const Linear plain = factored_linear(*cache.factors(weight), r, Method::svd);
    for (const auto* t : {&whiten, &asvd}) {
      const Linear aware = activation_factored_linear(*activation_factors(cache, weight, *t), r, *t);
      CHECK(aware.form() == Linear::Form::svd);
      CHECK((aware.u().matrix() - plain.u().matrix()).cwiseAbs().maxCoeff() == 0.0f);
      CHECK((aware.v().matrix() - plain.v().matrix()).cwiseAbs().maxCoeff() == 0.0f);
    }
  }
  // The transform keys differ by method, so the two cached SVDs of W D are separate entries.
  CHECK(whiten.key != asvd.key);
}

TEST_CASE("decompose_model: @whiten with identity Grams and @asvd with unit scales give the @svd model",
          "[activation][decompose]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("activation_unit_model"));
  const ActivationOptions unit{unit_calibration(base), 0.5};
  const Model svd = decompose_model(base, parse_config("L*:all=50%@svd", base.config), cache);
  const Mat ref = llama_forward(svd, kSequence);
  for (const char* m : {"whiten", "asvd"}) {
    INFO(m);
    DecomposeStats stats;
    const Model aware = decompose_model(base, parse_config(std::string("L*:all=50%@") + m, base.config), cache, &stats, unit);
    CHECK(stats.matrices == 35);
    CHECK(stats.activation_notes.empty());
    CHECK((llama_forward(aware, kSequence) - ref).cwiseAbs().maxCoeff() == 0.0f);
  }
}

TEST_CASE("whiten minimises the output error on anisotropic inputs, to the theoretical minimum", "[activation]") {
  const int64_t m = 24, n = 40, rows = 2000;
  const Mat w = test::random_matrix(m, n, 11);
  // X = Z diag(scales) Q: channel scales from 1 to 30 in a random orthogonal basis, plus a mean.
  const Eigen::MatrixXd q =
      Eigen::HouseholderQR<Eigen::MatrixXd>(test::random_matrix(n, n, 12).cast<double>()).householderQ();
  Eigen::VectorXd scales(n);
  for (int64_t j = 0; j < n; ++j) scales[j] = std::pow(30.0, static_cast<double>(j) / (n - 1));
  Eigen::MatrixXd xd = test::random_matrix(rows, n, 13).cast<double>() * scales.asDiagonal() * q;
  xd.rowwise() += test::random_matrix(1, n, 14).cast<double>().row(0);
  const Mat x = xd.cast<float>();
  const auto stats = stats_of(x);
  CHECK(stats.rows == rows);
  CHECK((stats.gram - x.cast<double>().transpose() * x.cast<double>()).norm() <= 1e-9 * stats.gram.norm());
  const auto whiten = whiten_transform(stats);
  REQUIRE(whiten.lambda == 0.0);
  // Theoretical minimum: the tail singular values of W S (double precision).
  const Eigen::MatrixXd ws = w.cast<double>() * whiten.chol;
  const Eigen::VectorXd sigma = Eigen::BDCSVD<Eigen::MatrixXd>(ws).singularValues();

  FactorCache cache(test::scratch_dir("activation_optimal"));
  const Tensor weight = Tensor::from_matrix(w);
  const auto asvd = asvd_transform(stats, 0.5);
  for (int64_t r = 1; r < m; ++r) {
    INFO("rank " << r);
    const double e_svd = output_error(x, w, factored_linear(*cache.factors(weight), r, Method::svd));
    const double e_whiten =
        output_error(x, w, activation_factored_linear(*activation_factors(cache, weight, whiten), r, whiten));
    const double e_asvd = output_error(x, w, activation_factored_linear(*activation_factors(cache, weight, asvd), r, asvd));
    const double tail = std::sqrt(sigma.tail(m - r).squaredNorm());
    CHECK(e_whiten < e_svd);
    CHECK(e_whiten <= e_asvd * (1 + 1e-6));
    CHECK(std::abs(e_whiten - tail) <= 1e-4 * tail);
    // The cached relative error of W D is the relative output error for whiten.
    const auto svd_of_ws = activation_factors(cache, weight, whiten);
    // (||W D||^2 - kept energy, in single precision: an absolute tolerance)
    CHECK(std::abs(svd_of_ws->relative_error(r) - tail / sigma.norm()) <= 1e-4);
  }
}

TEST_CASE("a Gram matrix that is not positive definite is regularised and reported", "[activation]") {
  const int64_t m = 24, n = 40;
  const Mat w = test::random_matrix(m, n, 21);
  const Tensor weight = Tensor::from_matrix(w);
  FactorCache cache(test::scratch_dir("activation_singular"));
  SECTION("fewer rows than channels") {
    const Mat x = test::random_matrix(5, n, 22);
    const auto t = whiten_transform(stats_of(x));
    CHECK(t.lambda > 0.0);
    CHECK_THAT(t.note, Contains("not positive definite") && Contains("5 activation rows for 40 channels"));
    REQUIRE(t.chol.allFinite());
    for (int64_t r : {1, 4, 5, 12, 24}) {
      const Linear lin = activation_factored_linear(*activation_factors(cache, weight, t, r), r, t);
      CHECK(lin.u().matrix().allFinite());
      CHECK(lin.v().matrix().allFinite());
      // Rank 5 already reproduces the outputs on the 5 calibration rows (up to the regularisation).
      if (r >= 5) CHECK(output_error(x, w, lin) <= 1e-2 * (x * w.transpose()).norm());
    }
  }
  SECTION("all-zero activations") {
    const auto t = whiten_transform(stats_of(Mat::Zero(8, n)));
    CHECK(t.lambda > 0.0);
    CHECK(t.chol.allFinite());
    const auto a = asvd_transform(stats_of(Mat::Zero(8, n)), 0.5);
    CHECK(a.scale.isOnes(0.0));
    CHECK_THAT(a.note, Contains("plain SVD"));
  }
  SECTION("a dead channel") {
    Mat x = test::random_matrix(200, n, 23);
    x.col(3).setZero();
    const auto t = whiten_transform(stats_of(x));
    CHECK(t.lambda > 0.0);
    const auto a = asvd_transform(stats_of(x), 0.5);
    CHECK(a.floored == 1);
    CHECK_THAT(a.note, Contains("1 of 40 channels"));
    const Linear lin = activation_factored_linear(*activation_factors(cache, weight, a, 8), 8, a);
    CHECK(lin.v().matrix().allFinite());
  }
  SECTION("non-finite statistics are an error") {
    Mat x = test::random_matrix(50, n, 24);
    x(0, 0) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_AS(whiten_transform(stats_of(x)), Error);
    CHECK_THROWS_AS(asvd_transform(stats_of(x), 0.5), Error);
  }
}

TEST_CASE("too few calibration tokens on a real model: regularised, reported, finite", "[activation][decompose]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.samples = 1;
  o.ctx = 8;  // 9 rows (BOS + 8) for widths 64 and 172
  ActivationOptions activation{calibrate(base, o), 0.5};
  FactorCache cache(test::scratch_dir("activation_few"));
  DecomposeStats stats;
  const Model model = decompose_model(base, parse_config("L*:all=50%@whiten", base.config), cache, &stats, activation);
  CHECK(stats.activation_notes.size() == 20);  // 5 layers x 4 sites
  CHECK_THAT(stats.activation_notes.front(), Contains("blk.0.attn_in") && Contains("not positive definite"));
  CHECK(llama_forward(model, kSequence).allFinite());
}

TEST_CASE("asvd/whiten without calibration is a clear error", "[activation][decompose][cli]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  FactorCache cache(test::scratch_dir("activation_nocalib"));
  for (const char* m : {"asvd", "whiten"}) {
    CHECK_THROWS_WITH(decompose_model(base, parse_config(std::string("L1:q=4@") + m, base.config), cache),
                      Contains("--calib") && Contains(std::string("@") + m) && Contains("L1:q"));
  }
  // No calibration needed (nor read) for the other methods.
  CHECK_NOTHROW(decompose_model(base, parse_config("L1:q=4@svd;L2:k=2", base.config), cache));
  const auto out = test::scratch_dir("activation_nocalib_cli");
  const auto r = run_cli("decompose " + dir.string() + " --config 'L*:all=50%@whiten' --out " + (out / "m").string() +
                         " --cache-dir " + (out / "cache").string());
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Contains("--calib"));
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 1);
  const auto e = run_cli("eval " + dir.string() + " --config 'L*:all=50%@asvd' --tasks tinystories --limit 1 --cache-dir " +
                         (out / "cache").string());
  CHECK(e.exit_code == 1);
  CHECK_THAT(e.err, Contains("--calib"));
}

TEST_CASE("calibration statistics are cached on disk and a corrupt file is recomputed", "[activation][cache]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.samples = 4;
  o.ctx = 32;
  o.seed = 3;
  o.cache_dir = test::scratch_dir("activation_calib_cache");
  bool cached = true;
  const auto first = calibrate(base, o, &cached);
  CHECK_FALSE(cached);
  const auto path = calibration_path(o.cache_dir, first->key);
  REQUIRE(std::filesystem::exists(path));
  CHECK(first->size() == 20);
  CHECK(first->file_backed());
  const auto ffn_act_ptr = first->at(2, HookSite::ffn_act);
  const SiteStats& ffn_act = *ffn_act_ptr;
  CHECK(ffn_act.width == 172);
  CHECK(ffn_act.rows == 4 * 33);
  CHECK(first->at(0, HookSite::attn_ctx)->width == 64);
  CHECK(first->info.at("tokens") == 4 * 33);

  const auto second = calibrate(base, o, &cached);
  CHECK(cached);
  CHECK(second->key == first->key);
  for (const auto& [layer, site] : first->sites()) {
    const SiteStats& s = *first->at(layer, site);
    const SiteStats& t = *second->at(layer, site);
    CHECK(t.rows == s.rows);
    CHECK(t.gram == s.gram);
    CHECK(t.abs_sum == s.abs_sum);
  }
  CHECK(second->info == first->info);

  // Another seed, another key; the same seed reproduces the statistics without the cache.
  auto other = o;
  other.seed = 4;
  CHECK(calibration_key(base, other) != first->key);
  auto no_cache = o;
  no_cache.cache_dir.clear();
  CHECK(calibrate(base, no_cache)->at(2, HookSite::ffn_act)->gram == ffn_act.gram);

  SECTION("a flipped payload byte") {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(std::filesystem::file_size(path) - 100);
    f.seekg(at);
    const char byte = static_cast<char>(f.get());
    f.seekp(at);
    f.put(static_cast<char>(~byte));
  }
  SECTION("a truncated file") { std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2); }
  SECTION("garbage") { std::ofstream(path, std::ios::trunc) << "not a calibration file"; }
  CHECK_FALSE(load_calibration(path, first->key));
  const auto again = calibrate(base, o, &cached);
  CHECK_FALSE(cached);  // recomputed and rewritten
  CHECK(again->at(2, HookSite::ffn_act)->gram == ffn_act.gram);
  CHECK(load_calibration(path, first->key));
  calibrate(base, o, &cached);
  CHECK(cached);
}

TEST_CASE("calibration in layer groups (a memory budget) gives the statistics of one pass bit for bit",
          "[activation][cache]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.samples = 3;
  o.ctx = 24;
  o.seed = 5;
  const auto one_pass = calibrate(base, o);  // in memory: no cache directory
  CHECK_FALSE(one_pass->file_backed());
  // A layer's statistics take about 0.34 MiB: 1 MiB holds 3 of the 5 layers, so two passes
  // (the second runs the forward again up to layer 4); each site goes to the file as it is done.
  o.memory_mib = 1;
  o.cache_dir = test::scratch_dir("activation_calib_groups");
  const auto grouped = calibrate(base, o);
  CHECK(grouped->file_backed());
  REQUIRE(grouped->sites() == one_pass->sites());
  CHECK(grouped->size() == 20);
  for (const auto& [layer, site] : one_pass->sites()) {
    INFO(hook_name(site, layer));
    const auto a = one_pass->at(layer, site);
    const auto b = grouped->at(layer, site);
    CHECK(a->rows == b->rows);
    CHECK(a->gram == b->gram);
    CHECK(a->abs_sum == b->abs_sum);
    CHECK(a->gram == a->gram.transpose());
  }
  CHECK(grouped->info.at("device") == "cpu");
  CHECK(grouped->info.at("dtype") == "fp32");
}

TEST_CASE("a calibration from the cache records the source this request named", "[activation][cache]") {
  const auto dir = test::shared_data("stories260K-hf");
  const auto text_file = test::shared_data("tinystories/tinystories_val.txt");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(text_file);
  const auto base = load_model(dir);
  // Two names for one text: the statistics are the same, so is the cache entry (its key is the
  // content); each request records its own name.
  const auto scratch = test::scratch_dir("activation_calib_source");
  std::string text(20000, '\0');
  std::ifstream(text_file, std::ios::binary).read(text.data(), static_cast<std::streamsize>(text.size()));
  std::ofstream(scratch / "a.txt", std::ios::binary) << text;
  std::ofstream(scratch / "b.txt", std::ios::binary) << text;
  CalibrationOptions o;
  o.samples = 2;
  o.ctx = 16;
  o.cache_dir = scratch / "cache";
  o.source = (scratch / "a.txt").string();
  bool cached = true;
  const auto a = calibrate(base, o, &cached);
  CHECK_FALSE(cached);
  CHECK(a->info["source"] == o.source);
  o.source = (scratch / "b.txt").string();
  const auto b = calibrate(base, o, &cached);
  CHECK(cached);
  CHECK(b->key == a->key);
  CHECK(b->info["source"] == o.source);
  CHECK(b->info["data"] == o.source);
  CHECK(b->at(1, HookSite::attn_in)->gram == a->at(1, HookSite::attn_in)->gram);
  // What eval and sweep record with each result is this info.
  ActivationOptions activation =
      activation_options(base, parse_config("L0:q=4@whiten", base.config), o, 0.5, &cached);
  REQUIRE(activation.calibration);
  CHECK(activation.calibration->info["source"] == o.source);
}

TEST_CASE("calibration sources: a BERT classifier on a .tsv, bad sources", "[activation][cache]") {
  const auto dir = test::shared_data("bert-tiny-sst2");
  const auto tsv = test::shared_data("glue-sst2/alps_train.tsv");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(tsv);
  const auto base = load_model(dir);
  CalibrationOptions o;
  o.source = tsv.string();
  o.samples = 16;
  o.ctx = 64;
  const auto c = calibrate(base, o);
  CHECK(c->size() == 8);  // 2 layers x 4 sites
  CHECK(c->at(1, HookSite::ffn_act)->width == 512);
  CHECK(c->at(1, HookSite::attn_in)->width == 128);
  CHECK(c->info.at("samples") == 16);
  CHECK(c->at(0, HookSite::attn_in)->rows == c->info.at("tokens").get<int64_t>());
  FactorCache cache(test::scratch_dir("activation_bert"));
  const Model model = decompose_model(base, parse_config("L*:all=50%@whiten", base.config), cache, nullptr, {c, 0.5});
  const std::vector<BertInput> in = {bert_encode(*base.tokenizer, "a charming and often affecting journey", "", 128)};
  CHECK(bert_forward(model, in).logits.allFinite());

  o.source = "no-such-task-or-file";
  CHECK_THROWS_WITH(calibrate(base, o), Contains("'no-such-task-or-file'") && Contains("neither a file nor"));
  o.source = tsv.string();
  o.samples = 0;
  CHECK_THROWS_WITH(calibrate(base, o), Contains("--calib-samples"));
}

TEST_CASE("stories260K-hf at 50 %: whiten beats plain SVD in TinyStories perplexity", "[activation][e2e]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto s = stories_calibrated(dir, "activation_e2e");
  const Model& base = s.base;
  const auto& ids = s.ids;
  const ActivationOptions& activation = s.activation;
  FactorCache cache(s.cache_dir);
  const double dense = tinystories_ppl(base, ids);
  const double svd = tinystories_ppl(decompose_model(base, parse_config("L*:all=50%@svd", base.config), cache), ids);
  DecomposeStats stats;
  const Model whitened = decompose_model(base, parse_config("L*:all=50%@whiten", base.config), cache, &stats, activation);
  CHECK(stats.activation_notes.empty());  // 64 x 257 rows: every Gram matrix is positive definite
  const double whiten = tinystories_ppl(whitened, ids);
  INFO("dense " << dense << ", svd " << svd << ", whiten " << whiten);
  REQUIRE(std::isfinite(whiten));
  CHECK(whiten < svd);
  CHECK(whiten > dense);
}

// ---- sensitivity proxies (core/decompose/proxy.hpp) ----

TEST_CASE("proxies: whiten's equals the measured output error on the calibration activations, svd's the weight error",
          "[activation][proxy]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto base = load_model(dir);
  // A calibration whose layer-1 attention input is explicit anisotropic activations X.
  const int64_t width = base.weights.layers[1][MatrixKind::q].n_in(), rows = 300;
  Eigen::VectorXd scales(width);
  for (int64_t j = 0; j < width; ++j) scales[j] = std::pow(20.0, static_cast<double>(j) / static_cast<double>(width - 1));
  const Mat x = (test::random_matrix(rows, width, 31).cast<double>() * scales.asDiagonal()).cast<float>();
  auto calib = std::const_pointer_cast<Calibration>(unit_calibration(base));
  calib->put(1, HookSite::attn_in, stats_of(x));
  const ActivationOptions activation{calib, 0.5};
  FactorCache cache(test::scratch_dir("proxy_exact"));
  ProxyCalculator proxies(base, cache, activation);
  const Mat w = base.weights.layers[1][MatrixKind::q].weight().matrix();
  for (const int64_t r : {4, 16, 32, 48}) {
    INFO("rank " << r);
    const Choice whiten{.rank = {.percent = false, .value = static_cast<double>(r)}, .method = Method::whiten};
    const Proxy& p = proxies.proxy(1, MatrixKind::q, whiten);
    const Model m = decompose_model(base, parse_config(fmt::format("L1:q={}@whiten", r), base.config), cache, nullptr,
                                    activation);
    const double measured = output_error(x, w, m.weights.layers[1][MatrixKind::q]);
    CHECK(p.rank == r);
    CHECK(std::abs(std::sqrt(p.energy) - measured) <= 1e-3 * measured);
    CHECK(std::abs(p.rms - measured / std::sqrt(static_cast<double>(rows))) <= 1e-3 * p.rms);
    // svd: the error of the weights themselves.
    const Choice svd{.rank = whiten.rank, .method = Method::svd};
    const Model ms = decompose_model(base, parse_config(fmt::format("L1:q={}@svd", r), base.config), cache);
    const Linear& lin = ms.weights.layers[1][MatrixKind::q];
    const Eigen::MatrixXd wr = lin.u().matrix().cast<double>() * lin.v().matrix().cast<double>().transpose();
    const double weight_error = (w.cast<double>() - wr).norm();
    CHECK(std::abs(std::sqrt(proxies.proxy(1, MatrixKind::q, svd).energy) - weight_error) <= 1e-3 * weight_error);
  }
  // Proxies of asvd/whiten need a calibration.
  ProxyCalculator none(base, cache, {});
  CHECK_THROWS_WITH(none.proxy(0, MatrixKind::k, {.rank = {.percent = true, .value = 50}, .method = Method::whiten}),
                    Contains("--calib"));
}

namespace {

// Spearman's rank correlation (average ranks for ties).
double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t i, size_t j) { return v[i] < v[j]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < order.size();) {
      size_t j = i;
      while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
      for (size_t k = i; k <= j; ++k) r[order[k]] = 0.5 * static_cast<double>(i + j);
      i = j + 1;
    }
    return r;
  };
  const auto ra = ranks(a), rb = ranks(b);
  const double n = static_cast<double>(a.size());
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / n, mb = std::accumulate(rb.begin(), rb.end(), 0.0) / n;
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    sab += (ra[i] - ma) * (rb[i] - mb);
    saa += (ra[i] - ma) * (ra[i] - ma);
    sbb += (rb[i] - mb) * (rb[i] - mb);
  }
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

TEST_CASE("proxies rank (matrix, rank) pairs as single-matrix perplexity increases do (stories260K-hf, whiten)",
          "[activation][proxy][e2e]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto s = stories_calibrated(dir, "proxy_spearman");
  const Model& base = s.base;
  const auto& ids = s.ids;
  const ActivationOptions& activation = s.activation;
  FactorCache cache(s.cache_dir);
  ProxyCalculator proxies(base, cache, activation);
  const int64_t windows = 16;
  const double dense = tinystories_ppl(base, ids, windows);
  std::vector<double> measured, relative2, propagated2, energy;
  std::vector<MatrixKind> kinds;
  for (int64_t l = 0; l < base.config.n_layer; ++l) {
    for (const auto kind : matrix_kinds(base.config.arch)) {
      for (const double pct : {50.0, 25.0, 12.5}) {
        const Choice c{.rank = {.percent = true, .value = pct}, .method = Method::whiten};
        Config config;
        config.cells[{l, kind}] = c;
        measured.push_back(tinystories_ppl(decompose_model(base, config, cache, nullptr, activation), ids, windows) - dense);
        const Proxy& p = proxies.proxy(l, kind, c);
        relative2.push_back(p.relative * p.relative);
        propagated2.push_back(p.propagated * p.propagated);
        energy.push_back(p.energy);
        kinds.push_back(kind);
        // o and down write their block's output: nothing to carry. The two are sums of float
        // singular values over different terms (dropped ones; the total less the kept ones), which
        // cancel up to 1 / relative^2 ~ 50x the float rounding (measured 4.4e-6).
        if (kind == MatrixKind::o || kind == MatrixKind::down) CHECK(p.propagated == Approx(p.relative).epsilon(1e-4));
      }
    }
  }
  const double rho = spearman(propagated2, measured);
  std::printf("proxy vs measured single-matrix TinyStories perplexity increase, %zu (matrix, rank) pairs of "
              "stories260K-hf at 50/25/12.5 %% (whiten): Spearman rho %.3f (propagated^2), %.3f (relative^2), "
              "%.3f (energy)\n",
              measured.size(), rho, spearman(relative2, measured), spearman(energy, measured));
  for (const auto kind : matrix_kinds(base.config.arch)) {
    std::vector<double> m, p, r;
    for (size_t i = 0; i < kinds.size(); ++i) {
      if (kinds[i] != kind) continue;
      m.push_back(measured[i]);
      p.push_back(propagated2[i]);
      r.push_back(relative2[i]);
    }
    std::printf("  %-5s rho %.3f (propagated^2), %.3f (relative^2)\n", std::string(matrix_kind_name(kind)).c_str(),
                spearman(p, m), spearman(r, m));
  }
  // The issue asks for 0.8. relative^2 alone gives 0.797 on these 16 windows: gate and up hurt
  // perplexity about ten times more than their relative output error says. Carried through the
  // activation product and down (propagated), they rank with the rest.
  CHECK(rho >= 0.8);
  CHECK(rho > spearman(relative2, measured));
}

TEST_CASE("allocate from measured single-matrix sensitivities beats the uniform rank of the same size at 10-40 %",
          "[activation][allocate][cli][e2e]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto out = test::scratch_dir("allocate_cli");
  const std::string common = " --method whiten --choices dense,75%,50%,37.5%,25%,12.5% --calib tinystories --data-dir " +
                             test::shared_data("").string() + " --cache-dir " + (out / "cache").string();
  // One evaluation per (matrix, choice) decomposed alone, and the base model: 1 + 35 x 5.
  const auto sweep = run_cli("sweep --model " + dir.string() + " --db " + (out / "s.db").string() +
                             " --study single --space single --strategy exhaustive --budget 1000"
                             " --objectives tinystories.ppl:min,size.params:min --tasks tinystories,size --limit 16" + common);
  REQUIRE(sweep.exit_code == 0);
  CHECK_THAT(sweep.out, Contains("176 configurations evaluated"));
  // Costs measured (the single study) and from the proxies alone (propagated^2): each allocation
  // beats the uniform rank of the same size at every target.
  for (const bool measured : {true, false}) {
    for (const int target : {10, 20, 30, 40}) {
      const auto r = run_cli("allocate " + dir.string() + " --target size.reduction_pct=" + std::to_string(target) +
                             (measured ? " --db " + (out / "s.db").string() + " --study single --objectives tinystories.ppl:min"
                                       : std::string()) +
                             " --evaluate tinystories,size --limit 16" + common);
      INFO(r.out << r.err);
      REQUIRE(r.exit_code == 0);
      CHECK_THAT(r.out, Contains(measured ? "measured alone for 175 of 175" : "the proxies"));
      auto value_pair = [&](const std::string& metric) {
        const auto at = r.out.find("\n" + metric + " ");
        REQUIRE(at != std::string::npos);
        std::istringstream line(r.out.substr(at + metric.size() + 1));
        double a = NAN, b = NAN;
        line >> a >> b;
        return std::pair<double, double>{a, b};
      };
      const auto [ppl_alloc, ppl_uniform] = value_pair("tinystories.ppl");
      const auto [red_alloc, red_uniform] = value_pair("size.reduction_pct");
      std::printf("allocate (%s) at %d %%: TinyStories perplexity %.3f (%.2f %% smaller) against uniform %.3f (%.2f %% smaller)\n",
                  measured ? "measured costs" : "proxies", target, ppl_alloc, red_alloc, ppl_uniform, red_uniform);
      CHECK(red_alloc >= target);
      CHECK(red_uniform >= red_alloc);  // the uniform configuration is at least as small
      CHECK(ppl_alloc < ppl_uniform);
    }
  }
  // A study of configurations of several matrices (a random search, no base model evaluation):
  // every (matrix, choice) cost refitted from them, with an intercept, the scaled proxies as prior.
  const auto random = run_cli("sweep --model " + dir.string() + " --db " + (out / "s.db").string() +
                              " --study random --space per-matrix --strategy random --budget 30 --seed 5"
                              " --objectives tinystories.ppl:min --tasks tinystories --limit 8" + common);
  REQUIRE(random.exit_code == 0);
  const auto refit = run_cli("allocate " + dir.string() + " --target size.reduction_pct=20 --db " + (out / "s.db").string() +
                             " --study random --objectives tinystories.ppl:min" + common);
  INFO(refit.out << refit.err);
  REQUIRE(refit.exit_code == 0);
  CHECK_THAT(refit.out, Contains("measured alone for 0 of 175") &&
                            Contains("refitted from 30 configurations (no base model evaluation: with an intercept)"));
  const auto reduction_at = refit.out.find("% smaller");
  REQUIRE(reduction_at != std::string::npos);
  // The proxies alone (no study): a configuration at the target, and a clear error for a bad target.
  const auto proxies = run_cli("allocate " + dir.string() + " --target size.reduction_pct=20" + common);
  CHECK(proxies.exit_code == 0);
  CHECK_THAT(proxies.out, Contains("allocation") && Contains("the proxies"));
  const auto bad = run_cli("allocate " + dir.string() + " --target size.reduction_pct=abc" + common);
  CHECK(bad.exit_code != 0);
  CHECK_THAT(bad.err, Contains("'abc' is not a number"));
  // sensitivity: the table as CSV, one row per (layer, matrix, choice).
  const auto csv = out / "proxies.csv";
  const auto sens = run_cli("sensitivity " + dir.string() + " --out " + csv.string() + common);
  REQUIRE(sens.exit_code == 0);
  CHECK(std::count(std::istreambuf_iterator<char>(*std::make_unique<std::ifstream>(csv)), {}, '\n') == 1 + 35 * 5);
  std::ifstream table(csv);
  std::string header;
  std::getline(table, header);
  CHECK(header == "layer,matrix,choice,rank,full_rank,params_saved,relative,propagated,rms,energy");
}

TEST_CASE("a guided sweep stores its predictions beside the measurements and extends on a rerun", "[activation][sweep][cli]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto out = test::scratch_dir("guided_sweep");
  const std::string args = "sweep --model " + dir.string() + " --db " + (out / "g.db").string() +
                           " --study g --space per-matrix --choices dense,75%,50%,25% --method whiten --calib tinystories"
                           " --strategy guided --seed 2 --objectives tinystories.ppl:min,size.params:min"
                           " --tasks tinystories,size --limit 4 --data-dir " + test::shared_data("").string() +
                           " --cache-dir " + (out / "cache").string();
  const auto first = run_cli(args + " --budget 10");
  INFO(first.out << first.err);
  REQUIRE(first.exit_code == 0);
  CHECK_THAT(first.out, Contains("10 configurations evaluated in this run, 10 in the study"));
  const auto second = run_cli(args + " --budget 14");
  REQUIRE(second.exit_code == 0);
  CHECK_THAT(second.out, Contains("4 configurations evaluated in this run, 14 in the study"));
  const auto exported = run_cli("export --db " + (out / "g.db").string() + " --study g --format csv");
  REQUIRE(exported.exit_code == 0);
  // The first 4 come from the proxies alone; every later one carries the model's prediction.
  CHECK_THAT(exported.out, Contains("predicted.tinystories.ppl") && Contains("predicted.size.params"));
  const auto rows = std::count(exported.out.begin(), exported.out.end(), '\n');
  CHECK(rows == 15);  // header + 14
  // report: how good the model was, per objective (10 of the 14 carry predictions; sizes are exact).
  const auto report = run_cli("report --db " + (out / "g.db").string() + " --study g --out " + (out / "report").string());
  REQUIRE(report.exit_code == 0);
  const std::string md = slurp(out / "report" / "report.md");
  CHECK_THAT(md, Contains("## The guided strategy's model: predicted against measured"));
  CHECK_THAT(md, Contains("| tinystories.ppl | 10 |"));
  CHECK_THAT(md, Contains("| size.params | 10 | 1 | 0 |"));  // exact: perfect rank order, no error
}
