// Perplexity protocols: the chunk protocol against the golden value of stories260K-hf
// (transformers and llama2.c agree on it); llama.cpp's protocol and lm-eval's rolling windows
// against brute-force re-implementations here that run each window alone through llama_forward.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <limits>
#include <utility>

#include "core/base/error.hpp"
#include "core/models/llama.hpp"
#include "core/decompose/decompose.hpp"
#include "core/space/config_string.hpp"
#include "evaluators/evaluator.hpp"
#include "evaluators/fidelity.hpp"
#include "evaluators/tasks.hpp"
#include "evaluators/perplexity.hpp"
#include "tests/fixtures.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

// -log softmax(row)[target] in float64, written out again here.
double nll_of(const Mat& logits, int64_t row, TokenId target) {
  const auto x = logits.row(row).cast<double>();
  const double max = x.maxCoeff();
  const double lse = max + std::log((x.array() - max).exp().sum());
  return lse - x(target);
}

std::vector<TokenId> golden_ids(const std::filesystem::path& dir) {
  return test::read_json(dir / "golden/tinystories_val_50k_ids.json")["ids"].get<std::vector<TokenId>>();
}

bool close(double a, double b, double rel) {
  const double d = std::abs(a - b) / std::max(std::abs(a), std::abs(b));
  if (d > rel) std::fprintf(stderr, "DIFF rel %.3g (%.17g vs %.17g)\n", d, a, b);
  return d <= rel;
}

// A copy of `model` whose logits are all NaN.
Model nan_model(const Model& model) {
  Model m = model;
  const auto n = static_cast<size_t>(model.weights.output_norm.numel());
  m.weights.output_norm = Tensor::owned(model.weights.output_norm.shape,
                                        std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()));
  return m;
}

// lm-eval 0.4 get_rolling_token_windows + make_disjoint_window, transcribed from lm_eval/utils.py
// (Python slices written out), and the model input of HFLM._loglikelihood_tokens:
// (context + continuation)[-(max_length + 1):][:-1], scoring its last len(continuation) logits.
using Pair = std::pair<std::vector<int64_t>, std::vector<int64_t>>;
std::vector<Pair> lm_eval_windows(const std::vector<int64_t>& tokens, int64_t prefix, int64_t max_seq_len) {
  auto slice = [&](int64_t a, int64_t b) {
    return std::vector<int64_t>(tokens.begin() + a, tokens.begin() + b);
  };
  std::vector<Pair> out;
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) return out;
  const int64_t context_len = 1;
  const int64_t pred_len = max_seq_len - context_len + 1;
  int64_t predicted = 0;
  const int64_t first_seq_len = std::min(max_seq_len, n);
  std::vector<int64_t> first = {prefix};
  for (int64_t i = 0; i < first_seq_len - 1; ++i) first.push_back(tokens[static_cast<size_t>(i)]);
  out.push_back({first, slice(0, first_seq_len)});
  predicted += first_seq_len;
  while (predicted < n) {
    const int64_t window_pred_len = std::min(n - predicted, pred_len);
    const int64_t window_end = predicted + window_pred_len;
    REQUIRE(window_end - max_seq_len - 1 >= 0);  // no negative Python index arises
    out.push_back({slice(window_end - max_seq_len - 1, window_end - 1), slice(window_end - window_pred_len, window_end)});
    predicted += window_pred_len;
  }
  for (auto& [a, b] : out) a.resize(a.size() - (b.size() - 1));  // make_disjoint_window
  return out;
}

// Sum of NLLs of every window of every document, each window run alone.
std::vector<double> brute_rolling(const Model& model, const std::vector<std::vector<TokenId>>& docs, TokenId prefix,
                                  int64_t max_len) {
  std::vector<double> sums;
  for (const auto& doc : docs) {
    const std::vector<int64_t> t(doc.begin(), doc.end());
    for (const auto& [context, continuation] : lm_eval_windows(t, prefix, max_len)) {
      std::vector<int64_t> whole = context;
      whole.insert(whole.end(), continuation.begin(), continuation.end());
      if (static_cast<int64_t>(whole.size()) > max_len + 1) whole.erase(whole.begin(), whole.end() - (max_len + 1));
      std::vector<TokenId> input(whole.begin(), whole.end() - 1);
      const Mat logits = llama_forward(model, std::vector<std::vector<TokenId>>{input});
      const auto n_in = static_cast<int64_t>(input.size());
      const auto n_cont = static_cast<int64_t>(continuation.size());
      double s = 0;
      for (int64_t i = 0; i < n_cont; ++i) {
        s += nll_of(logits, n_in - n_cont + i, static_cast<TokenId>(continuation[static_cast<size_t>(i)]));
      }
      sums.push_back(s);
    }
  }
  return sums;
}

}  // namespace

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
  PerplexityOptions options;
  options.ctx = 256;
  int64_t last_done = -1, last_total = -1;
  options.progress = [&](int64_t done, int64_t total) { last_done = done, last_total = total; };
  const auto r = perplexity_chunks(model, ids, options);
  CHECK(r.finite);
  CHECK(r.n_scored == 23971);
  CHECK(r.n_windows == 94);
  CHECK(last_done == 94);
  CHECK(last_total == 94);
  REQUIRE(r.window_nll_sums.size() == 94);
  const auto windows = golden["window_nll_sums"].get<std::vector<double>>();
  for (size_t w = 0; w < windows.size(); ++w) CHECK(std::abs(r.window_nll_sums[w] - windows[w]) <= 1e-3);
  CHECK(std::abs(r.ppl - golden["ppl"].get<double>()) <= 1e-5 * golden["ppl"].get<double>());
  CHECK(r.ppl_stderr > 0.0);
  CHECK(r.ppl_stderr < 0.05 * r.ppl);
  // Batching windows differently changes nothing but the GEMM shapes, so the fp32 summation order:
  // within test::fp32_forward_rel_tol. The (ctx, windows_per_batch) overload is the same.
  const double batched_tol = test::fp32_forward_rel_tol(model.config, options.ctx);
  CHECK(std::abs(perplexity_chunks(model, ids, 256, 3).nll_sum - r.nll_sum) <= batched_tol * r.nll_sum);

  SECTION("--limit scores the first windows only") {
    options.max_windows = 5;
    const auto l = perplexity_chunks(model, ids, options);
    CHECK(l.n_windows == 5);
    CHECK(l.n_scored == 5 * 256);
    REQUIRE(l.window_nll_sums.size() == 5);
    double sum = 0;
    for (int w = 0; w < 5; ++w) sum += r.window_nll_sums[static_cast<size_t>(w)];
    // The 5 windows make a smaller last batch than in the full run: other GEMM shapes.
    CHECK(close(l.nll_sum, sum, batched_tol));
    CHECK(last_done == 5);
  }
}

TEST_CASE("llama.cpp perplexity equals a brute-force run of each chunk", "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto all = golden_ids(dir);
  const TokenId bos = 1;

  for (const int64_t ctx : {int64_t{256}, int64_t{7}}) {
    const std::vector<TokenId> ids(all.begin(), all.begin() + (ctx == 256 ? 2000 : 60));
    CAPTURE(ctx, ids.size());
    // Brute force: the stream [BOS] + ids in chunks of ctx, BOS over each chunk's first token,
    // positions j in [ctx/2, ctx-1) predict token j+1.
    std::vector<TokenId> stream = {bos};
    stream.insert(stream.end(), ids.begin(), ids.end());
    const int64_t n_chunks = static_cast<int64_t>(stream.size()) / ctx;
    REQUIRE(n_chunks == (static_cast<int64_t>(ids.size()) + 1) / ctx);
    std::vector<double> chunk_sums, nlls;
    for (int64_t k = 0; k < n_chunks; ++k) {
      std::vector<TokenId> chunk(stream.begin() + k * ctx, stream.begin() + (k + 1) * ctx);
      chunk[0] = bos;
      const Mat logits = llama_forward(model, std::vector<std::vector<TokenId>>{chunk});
      double s = 0;
      for (int64_t j = ctx / 2; j < ctx - 1; ++j) {
        const double v = nll_of(logits, j, chunk[static_cast<size_t>(j + 1)]);
        s += v;
        nlls.push_back(v);
      }
      chunk_sums.push_back(s);
    }
    double sum = 0, sq = 0;
    for (double v : nlls) sum += v, sq += v * v;
    const auto count = static_cast<double>(nlls.size());
    const double ppl = std::exp(sum / count);
    const double stderr_ = ppl * std::sqrt((sq / count - (sum / count) * (sum / count)) / (count - 1));

    for (const int64_t per_batch : {int64_t{1}, int64_t{8}}) {
      CAPTURE(per_batch);
      PerplexityOptions options;
      options.ctx = ctx;
      options.windows_per_batch = per_batch;
      const auto r = perplexity_llamacpp(model, ids, options);
      // One chunk per forward pass is the brute force's computation exactly (same shapes, same
      // kernel); batched chunks run other GEMM shapes, which moves fp32 logits by up to the bound
      // of test::fp32_forward_rel_tol (1.1e-6 between two kernels on Haswell).
      const double batched_tol = test::fp32_forward_rel_tol(model.config, ctx);
      const double tol = per_batch == 1 ? 1e-9 : batched_tol, window_tol = per_batch == 1 ? 1e-9 : batched_tol;
      CHECK(r.finite);
      CHECK(r.n_windows == n_chunks);
      CHECK(r.n_scored == n_chunks * (ctx - 1 - ctx / 2));
      CHECK(close(r.nll_sum, sum, tol));
      CHECK(close(r.ppl, ppl, tol));
      CHECK(close(r.ppl_stderr, stderr_, per_batch == 1 ? 1e-9 : 1e-4));
      REQUIRE(r.window_nll_sums.size() == chunk_sums.size());
      for (size_t k = 0; k < chunk_sums.size(); ++k) CHECK(close(r.window_nll_sums[k], chunk_sums[k], window_tol));
    }

    // --limit: the first chunks only (llama.cpp's --chunks).
    PerplexityOptions limited;
    limited.ctx = ctx;
    limited.windows_per_batch = 1;
    limited.max_windows = 2;
    const auto l = perplexity_llamacpp(model, ids, limited);
    CHECK(l.n_windows == 2);
    CHECK(l.n_scored == 2 * (ctx - 1 - ctx / 2));
    CHECK(close(l.nll_sum, chunk_sums[0] + chunk_sums[1], 1e-9));
  }

  SECTION("the chunk grid counts the BOS: one more text token can add a chunk") {
    PerplexityOptions options;
    options.ctx = 256;
    const std::vector<TokenId> a(all.begin(), all.begin() + 511), b(all.begin(), all.begin() + 510);
    CHECK(perplexity_llamacpp(model, a, options).n_windows == 2);  // 512 with BOS
    CHECK(perplexity_llamacpp(model, b, options).n_windows == 1);  // 511 with BOS
  }
}

TEST_CASE("rolling windows score every token once, as lm-eval's", "[evaluators][perplexity]") {
  SECTION("the transcription of lm-eval's windows reproduces lm-eval's own test") {
    std::vector<int64_t> x(34);
    for (int64_t i = 0; i < 34; ++i) x[static_cast<size_t>(i)] = i;
    const auto w = lm_eval_windows(x, -100, 10);
    REQUIRE(w.size() == 4);
    // tests/test_utils.py::test_get_rolling_token_windows_v1, after make_disjoint_window.
    CHECK(w[0].first == std::vector<int64_t>{-100});
    CHECK(w[0].second == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    CHECK(w[1].first == std::vector<int64_t>{9});
    CHECK(w[1].second == std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19});
    CHECK(w[3].first == std::vector<int64_t>{23, 24, 25, 26, 27, 28, 29});
    CHECK(w[3].second == std::vector<int64_t>{30, 31, 32, 33});
  }

  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto all = golden_ids(dir);
  const TokenId bos = 1;
  std::vector<std::vector<TokenId>> docs;
  int64_t at = 0, total = 0;
  for (const int64_t len : {300, 1, 0, 64, 129, 700, 5}) {
    docs.emplace_back(all.begin() + at, all.begin() + at + len);
    at += len;
    total += len;
  }
  const std::vector<int64_t> words = {60, 1, 0, 13, 25, 140, 1}, bytes = {1300, 4, 0, 280, 560, 3000, 20};

  PerplexityOptions options;
  options.ctx = 128;
  const auto brute = brute_rolling(model, docs, bos, options.ctx);
  for (const int64_t per_batch : {int64_t{1}, int64_t{8}}) {
    CAPTURE(per_batch);
    options.windows_per_batch = per_batch;
    const auto r = perplexity_rolling(model, docs, words, bytes, bos, options);
    // Batched windows run other GEMM shapes than the brute force: the fp32 bound (see above).
    const double batched_tol = test::fp32_forward_rel_tol(model.config, options.ctx);
    const double tol = per_batch == 1 ? 1e-9 : batched_tol, window_tol = per_batch == 1 ? 1e-9 : batched_tol;
    CHECK(r.finite);
    CHECK(r.n_scored == total);
    CHECK(r.n_docs == 7);
    // 300: 3 windows, 1: 1, 0: none, 64: 1, 129: 2, 700: 6, 5: 1.
    CHECK(r.n_windows == 14);
    REQUIRE(r.window_nll_sums.size() == brute.size());
    double sum = 0;
    for (size_t k = 0; k < brute.size(); ++k) {
      CHECK(close(r.window_nll_sums[k], brute[k], window_tol));
      sum += brute[k];
    }
    CHECK(close(r.nll_sum, sum, tol));
    CHECK(close(r.ppl, std::exp(sum / static_cast<double>(total)), tol));
    CHECK(r.n_words == 240);
    CHECK(r.n_bytes == 5164);
    CHECK(close(r.word_perplexity, std::exp(r.nll_sum / 240.0), 1e-12));
    CHECK(close(r.byte_perplexity, std::exp(r.nll_sum / 5164.0), 1e-12));
    CHECK(close(r.bits_per_byte, r.nll_sum / 5164.0 / std::log(2.0), 1e-12));
  }

  SECTION("a document shorter than the window is one forward of [prefix] + doc") {
    const auto& doc = docs[3];  // 64 tokens
    std::vector<TokenId> input = {bos};
    input.insert(input.end(), doc.begin(), doc.end() - 1);
    const Mat logits = llama_forward(model, std::vector<std::vector<TokenId>>{input});
    double sum = 0;
    for (size_t i = 0; i < doc.size(); ++i) sum += nll_of(logits, static_cast<int64_t>(i), doc[i]);
    options.windows_per_batch = 1;
    const auto r = perplexity_rolling(model, {doc}, {}, {}, bos, options);
    CHECK(r.n_windows == 1);
    CHECK(r.n_scored == 64);
    CHECK(close(r.nll_sum, sum, 1e-9));
    CHECK(std::isnan(r.word_perplexity));  // no counts given
  }

  SECTION("with ctx >= the document's length, rolling equals the chunk protocol with the prefix as BOS") {
    for (const auto& doc : {docs[0], docs[4]}) {
      const auto len = static_cast<int64_t>(doc.size());
      for (const int64_t ctx : {len, len + 10}) {
        PerplexityOptions o;
        o.ctx = ctx;
        const auto rolling = perplexity_rolling(model, {doc}, {}, {}, bos, o);
        o.ctx = std::min<int64_t>(ctx, 511);
        const auto chunks = perplexity_chunks(model, doc, o);
        CHECK(rolling.n_windows == 1);
        CHECK(rolling.n_scored == chunks.n_scored);
        // The chunk input is one position longer (its last logits unused): another GEMM shape,
        // so within the fp32 bound of two orders of summation (1.2e-7 on Haswell).
        CHECK(close(rolling.nll_sum, chunks.nll_sum, test::fp32_forward_rel_tol(model.config, ctx)));
      }
    }
  }

  SECTION("--limit takes whole documents while their windows fit") {
    options.windows_per_batch = 1;
    options.max_windows = 5;  // docs 0 (3 windows), 1 (1), 2 (0), 3 (1); doc 4 needs 2 more
    const auto r = perplexity_rolling(model, docs, words, bytes, bos, options);
    CHECK(r.n_windows == 5);
    CHECK(r.n_docs == 4);
    CHECK(r.n_scored == 365);
    CHECK(r.n_words == 74);
    CHECK(close(r.nll_sum, brute[0] + brute[1] + brute[2] + brute[3] + brute[4], 1e-9));
    options.max_windows = 2;
    CHECK_THROWS_AS(perplexity_rolling(model, docs, words, bytes, bos, options), Error);
  }
}

TEST_CASE("perplexity: a NaN is reported, never dropped", "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = nan_model(load_model(dir));
  const auto all = golden_ids(dir);
  const std::vector<TokenId> ids(all.begin(), all.begin() + 600);
  PerplexityOptions options;
  options.ctx = 128;
  for (const auto& r : {perplexity_chunks(model, ids, options), perplexity_llamacpp(model, ids, options),
                        perplexity_rolling(model, {ids}, {100}, {400}, 1, options)}) {
    CHECK_FALSE(r.finite);
    CHECK(std::isnan(r.ppl));
    CHECK(std::isnan(r.ppl_stderr));
    CHECK(r.n_scored > 0);
  }
  const auto r = perplexity_rolling(model, {ids}, {100}, {400}, 1, options);
  CHECK(std::isnan(r.word_perplexity));
  CHECK(std::isnan(r.bits_per_byte));
}

TEST_CASE("perplexity: bad arguments are Errors", "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);  // 512 positions
  const auto all = golden_ids(dir);
  const std::vector<TokenId> ids(all.begin(), all.begin() + 2000);
  auto with_ctx = [](int64_t ctx) {
    PerplexityOptions o;
    o.ctx = ctx;
    return o;
  };
  // Too big for the model's positions: chunks reads ctx + 1, llama.cpp and rolling ctx.
  CHECK_THROWS_AS(perplexity_chunks(model, ids, with_ctx(512)), Error);
  CHECK_NOTHROW(perplexity_chunks(model, ids, with_ctx(511)));
  CHECK_THROWS_AS(perplexity_llamacpp(model, ids, with_ctx(513)), Error);
  CHECK_NOTHROW(perplexity_llamacpp(model, ids, with_ctx(512)));
  CHECK_THROWS_AS(perplexity_rolling(model, {ids}, {}, {}, 1, with_ctx(513)), Error);
  CHECK_THROWS_AS(perplexity_llamacpp(model, ids, with_ctx(2)), Error);  // scores nothing
  // No text.
  CHECK_THROWS_AS(perplexity_chunks(model, {}, with_ctx(128)), Error);
  CHECK_THROWS_AS(perplexity_llamacpp(model, {}, with_ctx(128)), Error);
  CHECK_THROWS_AS(perplexity_rolling(model, {}, {}, {}, 1, with_ctx(128)), Error);
  CHECK_THROWS_AS(perplexity_rolling(model, {{}, {}}, {}, {}, 1, with_ctx(128)), Error);
  // Fewer tokens than one llama.cpp chunk (BOS counted).
  CHECK_THROWS_AS(perplexity_llamacpp(model, std::vector<TokenId>(ids.begin(), ids.begin() + 126), with_ctx(128)),
                  Error);
  CHECK_NOTHROW(perplexity_llamacpp(model, std::vector<TokenId>(ids.begin(), ids.begin() + 127), with_ctx(128)));
  // Counts that do not match the documents; an out-of-vocabulary prefix; a zero limit.
  CHECK_THROWS_AS(perplexity_rolling(model, {ids}, {1, 2}, {3, 4}, 1, with_ctx(128)), Error);
  CHECK_THROWS_AS(perplexity_rolling(model, {ids}, {}, {}, 512, with_ctx(128)), Error);
  auto zero = with_ctx(128);
  zero.max_windows = 0;
  CHECK_THROWS_AS(perplexity_chunks(model, ids, zero), Error);
  try {
    perplexity_llamacpp(model, ids, with_ctx(513));
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find('\n') == std::string::npos);
  }
}

TEST_CASE("perplexity: keep_going stops after a batch, and the prefix is scored as a --limit run scores it",
          "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto ids = golden_ids(dir);
  PerplexityOptions options;
  options.ctx = 128;
  options.windows_per_batch = 4;
  std::vector<int64_t> seen;  // windows done at each call
  int64_t want_total = 0, want_tokens = 0;
  options.keep_going = [&](const std::vector<double>& sums, const std::vector<int64_t>& tokens, int64_t total) {
    CHECK(sums.size() == tokens.size());
    CHECK(total == want_total);
    for (auto t : tokens) CHECK(t == want_tokens);  // whole windows only before the last
    seen.push_back(static_cast<int64_t>(sums.size()));
    return sums.size() < 12;  // stop once 12 windows are scored
  };
  const auto n = static_cast<int64_t>(ids.size());
  for (const bool llamacpp : {false, true}) {
    seen.clear();
    // chunks: every token once in windows of 128; llama.cpp: chunks of 128 positions with BOS,
    // the second half scored (positions 64..126 predict 63 tokens).
    want_total = llamacpp ? (n + 1) / 128 : (n + 127) / 128;
    want_tokens = llamacpp ? 63 : 128;
    const auto r = llamacpp ? perplexity_llamacpp(model, ids, options) : perplexity_chunks(model, ids, options);
    CHECK(r.stopped);
    CHECK(r.n_windows == 12);
    CHECK(r.window_nll_sums.size() == 12);
    CHECK(r.n_windows_total > 12);
    CHECK(seen == std::vector<int64_t>{4, 8, 12});
    // The same batches as a run limited to 12 windows: the same numbers, bit for bit.
    PerplexityOptions limited = options;
    limited.keep_going = nullptr;
    limited.max_windows = 12;
    const auto l = llamacpp ? perplexity_llamacpp(model, ids, limited) : perplexity_chunks(model, ids, limited);
    CHECK_FALSE(l.stopped);
    CHECK(l.nll_sum == r.nll_sum);
    CHECK(l.ppl == r.ppl);
    CHECK(l.n_scored == r.n_scored);
  }
  // Rolling windows belong to documents: the rolling protocol never stops.
  const std::vector<std::vector<TokenId>> docs = {std::vector<TokenId>(ids.begin(), ids.begin() + 1000),
                                                  std::vector<TokenId>(ids.begin() + 1000, ids.begin() + 3000)};
  options.keep_going = [](const std::vector<double>&, const std::vector<int64_t>&, int64_t) { return false; };
  const auto rolling = perplexity_rolling(model, docs, {}, {}, 1, options);
  CHECK_FALSE(rolling.stopped);
  CHECK(rolling.n_scored == 3000);
}

TEST_CASE("perplexity: the early-stopping estimate and its interval", "[evaluators][perplexity]") {
  // Equal windows: no spread, the interval is the point.
  auto e = estimate_perplexity({10.0, 10.0, 10.0}, {5, 5, 5}, 30, 3.0);
  CHECK(e.value == Approx(std::exp(2.0)));
  CHECK(e.lo == Approx(e.value));
  CHECK(e.hi == Approx(e.value));
  CHECK(e.done == 3);
  CHECK(e.total == 30);
  // Per-window means 1 and 3 (tokens 10 each): mean 2, sd sqrt(2), se sqrt(2)/sqrt(2) = 1 times
  // sqrt(1 - 2/10) for the windows still to come.
  e = estimate_perplexity({10.0, 30.0}, {10, 10}, 10, 2.0);
  const double se = std::sqrt(0.8);
  CHECK(e.value == Approx(std::exp(2.0)));
  CHECK(e.lo == Approx(std::exp(2.0 - 2 * se)));
  CHECK(e.hi == Approx(std::exp(2.0 + 2 * se)));
  // Every window scored: nothing left to estimate.
  e = estimate_perplexity({10.0, 30.0}, {10, 10}, 2, 2.0);
  CHECK(e.lo == Approx(e.value));
  // One window: no spread to go by, an unbounded interval (never stops on one window).
  e = estimate_perplexity({10.0}, {10}, 10, 3.0);
  CHECK(e.lo == 0.0);
  CHECK(std::isinf(e.hi));
}

TEST_CASE("perplexity: a shuffled window order scores the same windows", "[evaluators][perplexity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  const auto model = load_model(dir);
  const auto ids = golden_ids(dir);
  PerplexityOptions options;
  options.ctx = 128;
  options.windows_per_batch = 1;  // one window a pass: each window's sum does not depend on its neighbours
  options.max_windows = 40;
  const auto in_order = perplexity_chunks(model, ids, options);
  options.shuffle_seed = 1;
  const auto shuffled = perplexity_chunks(model, ids, options);
  options.shuffle_seed = 2;
  const auto other = perplexity_chunks(model, ids, options);
  REQUIRE(shuffled.window_nll_sums.size() == 40);
  CHECK(shuffled.window_nll_sums != in_order.window_nll_sums);  // another order
  CHECK(other.window_nll_sums != shuffled.window_nll_sums);     // another seed, another order
  auto sorted = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  CHECK(sorted(shuffled.window_nll_sums) == sorted(in_order.window_nll_sums));  // the same windows, bit for bit
  CHECK(shuffled.n_scored == in_order.n_scored);
  CHECK(close(shuffled.nll_sum, in_order.nll_sum, 1e-12));  // the same sum in another order
  options.shuffle_seed = 1;
  CHECK(perplexity_chunks(model, ids, options).window_nll_sums == shuffled.window_nll_sums);  // deterministic
}

TEST_CASE("accuracy: the early-stopping estimate and its interval stay within what the unscored documents allow",
          "[evaluators][early]") {
  // 60 of 100 documents correct out of 80 scored: the complete share lies in [60/100, 80/100].
  auto e = estimate_share(60, 80, 100, 3.0);
  CHECK(e.value == Approx(0.75));
  CHECK(e.lo >= 0.6);
  CHECK(e.hi <= 0.8);
  CHECK(e.lo < 0.75);
  CHECK(e.hi > 0.75);
  CHECK(e.done == 80);
  CHECK(e.total == 100);
  // z = 3 around q = 0.75, se = sqrt(p(1-p)/n (N-n)/(N-1)) with p = 61/82.
  const double pv = 61.0 / 82.0, se = std::sqrt(pv * (1 - pv) / 80.0 * 20.0 / 99.0);
  CHECK(e.lo == Approx((60 + 20 * (0.75 - 3 * se)) / 100.0));
  CHECK(e.hi == Approx((60 + 20 * (0.75 + 3 * se)) / 100.0));
  // All correct so far is not certain: the interval still reaches below.
  e = estimate_share(10, 10, 100, 3.0);
  CHECK(e.hi == Approx(1.0));
  CHECK(e.lo < 0.9);
  CHECK(e.lo >= 0.1);
  // Everything scored: the interval is the value.
  e = estimate_share(7, 20, 20, 3.0);
  CHECK(e.lo == Approx(0.35));
  CHECK(e.hi == Approx(0.35));
  // A wider z widens it, within the hard bounds.
  const auto narrow = estimate_share(30, 50, 200, 1.0), wide = estimate_share(30, 50, 200, 5.0);
  CHECK(wide.lo < narrow.lo);
  CHECK(wide.hi > narrow.hi);
  CHECK(wide.lo >= 30.0 / 200.0);
  CHECK(wide.hi <= 180.0 / 200.0);
}

TEST_CASE("fidelity: the early-stopping estimate of a mean KL, with the finite-population correction and a floor at 0",
          "[evaluators][early]") {
  // 25 of 100 units: se x sqrt(1 - 25/100), z = 2.
  auto e = estimate_mean(0.04, 0.01, 25, 100, 2.0);
  CHECK(e.value == 0.04);
  CHECK(e.lo == Approx(0.04 - 2 * 0.01 * std::sqrt(0.75)));
  CHECK(e.hi == Approx(0.04 + 2 * 0.01 * std::sqrt(0.75)));
  CHECK(e.done == 25);
  CHECK(e.total == 100);
  // KL is not negative: a wide interval stops at 0.
  e = estimate_mean(0.01, 0.02, 10, 100, 3.0);
  CHECK(e.lo == 0.0);
  CHECK(e.hi > 0.01);
  // Everything scored: the interval is the value; one unit of many: no decision possible.
  e = estimate_mean(0.3, 0.1, 50, 50, 3.0);
  CHECK(e.lo == 0.3);
  CHECK(e.hi == 0.3);
  e = estimate_mean(0.3, 0.0, 1, 50, 3.0);
  CHECK(e.lo == 0.0);
  CHECK(std::isinf(e.hi));
}

TEST_CASE("fidelity staged: every window scored in the seeded order gives the unstaged result, a stop covers the windows scored",
          "[evaluators][early][fidelity]") {
  const auto dir = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(dir);
  RS_REQUIRE_SHARED(test::shared_data("tinystories"));
  const Model base = load_model(dir);
  const auto ids = base.require_tokenizer().encode(load_task("tinystories", {.data_dir = test::shared_data("")}).text);
  FactorCache cache(test::scratch_dir("fidelity_staged_cache"));
  const Model cand = decompose_model(base, parse_config("L*:all=50%@svd", base.config), cache);
  FidelityOptions o;
  o.ctx = 64;
  o.max_windows = 24;
  o.windows_per_batch = 5;
  const FidelityResult whole = fidelity(base, cand, ids, o);
  for (const bool with_cache : {false, true}) {
    INFO("cache " << with_cache);
    FidelityOptions s = o;
    if (with_cache) s.cache_dir = test::scratch_dir("fidelity_staged_files");
    std::vector<int64_t> seen;
    s.keep_going = [&](const std::vector<double>& sums, const std::vector<int64_t>& tokens, int64_t total) {
      CHECK(total == 24);
      CHECK(sums.size() == tokens.size());
      seen.push_back(static_cast<int64_t>(sums.size()));
      return true;
    };
    const FidelityResult staged = fidelity(base, cand, ids, s);
    CHECK(seen == std::vector<int64_t>{5, 10, 15, 20});  // after each batch but the last
    CHECK_FALSE(staged.stopped);
    CHECK(staged.n_windows == 24);
    CHECK(staged.n_tokens == whole.n_tokens);
    // The same positions, summed in text order; the candidate's rows come from batches of other
    // windows, which can move a logit by a float rounding.
    CHECK(staged.kl == Approx(whole.kl).epsilon(1e-5));
    CHECK(staged.top1 == Approx(whole.top1).margin(2.0 / static_cast<double>(whole.n_tokens)));
    CHECK(staged.ppl_base == Approx(whole.ppl_base).epsilon(1e-9));
    CHECK(staged.ppl_candidate == Approx(whole.ppl_candidate).epsilon(1e-6));
    // Stopped after the second batch: 10 windows of the seeded order, 640 positions.
    s.keep_going = [](const std::vector<double>& sums, const std::vector<int64_t>&, int64_t) { return sums.size() < 10; };
    const FidelityResult stopped = fidelity(base, cand, ids, s);
    CHECK(stopped.stopped);
    CHECK(stopped.n_windows == 10);
    CHECK(stopped.n_windows_total == 24);
    CHECK(stopped.n_tokens == 640);
    CHECK(stopped.kl > 0);
    CHECK(stopped.kl != whole.kl);
  }
}
