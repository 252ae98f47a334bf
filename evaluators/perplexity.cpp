#include "evaluators/perplexity.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "core/base/error.hpp"
#include "core/base/splitmix.hpp"
#include "core/models/llama.hpp"

namespace rankscope {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One forward pass's worth of scoring: the model reads `input`; input position
// score_begin + i predicts targets[i].
struct Window {
  std::vector<TokenId> input;
  int64_t score_begin = 0;
  std::vector<TokenId> targets;
};

void check_causal_lm(const Model& model) {
  const auto& c = model.config;
  if (c.arch != Arch::llama) fail("{}: perplexity needs a causal LM, not {}", model.dir.string(), c.architecture);
}

void check_options(const PerplexityOptions& o) {
  if (o.windows_per_batch < 1) fail("windows per batch must be at least 1, not {}", o.windows_per_batch);
  const auto& m = o.max_windows;
  if (m.is_fraction() ? !(m.fraction < 1.0) : (m.count < -1 || m.count == 0)) {
    fail("--limit must be a positive number of windows or a fraction in (0, 1), not {}", m.text());
  }
}

// Runs the windows in batches and sums their NLLs; `r.n_windows`, sums, counts and the population
// sum of squares come back filled, the perplexities are left to the caller.
struct Scored {
  PerplexityResult r;
  double sum_sq = 0.0;
};

Scored score_windows(const Model& model, const std::vector<Window>& windows, const PerplexityOptions& options,
                     bool may_stop = true) {
  const int64_t n_vocab = model.config.n_vocab;
  const auto n_windows = static_cast<int64_t>(windows.size());
  Scored s;
  s.r.n_windows_total = n_windows;
  std::vector<int64_t> window_tokens;
  s.r.window_nll_sums.reserve(windows.size());
  if (options.progress) options.progress(0, n_windows);
  for (int64_t w0 = 0; w0 < n_windows; w0 += options.windows_per_batch) {
    const int64_t w1 = std::min(n_windows, w0 + options.windows_per_batch);
    std::vector<std::vector<TokenId>> batch;
    // Logit row and target of every scored position of the batch, in window order.
    std::vector<int64_t> rows;
    std::vector<TokenId> targets;
    int64_t row0 = 0;
    for (int64_t w = w0; w < w1; ++w) {
      const auto& win = windows[static_cast<size_t>(w)];
      for (size_t i = 0; i < win.targets.size(); ++i) {
        rows.push_back(row0 + win.score_begin + static_cast<int64_t>(i));
        targets.push_back(win.targets[i]);
      }
      row0 += static_cast<int64_t>(win.input.size());
      batch.push_back(win.input);
    }
    for (auto t : targets) {
      if (t < 0 || t >= n_vocab) fail("token id {} is outside the vocabulary [0, {})", t, n_vocab);
    }
    // Logits [sum of lengths x n_vocab] stay on the model's device; only the scores come back.
    const auto scores = model.runtime().score(llama_logits(model, batch), rows, targets);
    std::vector<double> nll(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) nll[i] = -scores[i].logprob;
    // Sums in a fixed order: the result does not depend on the thread count.
    size_t k = 0;
    for (int64_t w = w0; w < w1; ++w) {
      const auto& win = windows[static_cast<size_t>(w)];
      double window_sum = 0.0;
      for (size_t i = 0; i < win.targets.size(); ++i, ++k) {
        window_sum += nll[k];
        s.sum_sq += nll[k] * nll[k];
        if (!std::isfinite(nll[k])) s.r.finite = false;
      }
      s.r.window_nll_sums.push_back(window_sum);
      window_tokens.push_back(static_cast<int64_t>(win.targets.size()));
      s.r.nll_sum += window_sum;
      s.r.n_scored += static_cast<int64_t>(win.targets.size());
    }
    if (options.progress) options.progress(w1, n_windows);
    if (may_stop && options.keep_going && w1 < n_windows && !options.keep_going(s.r.window_nll_sums, window_tokens, n_windows)) {
      s.r.stopped = true;
      s.r.n_windows = w1;
      return s;
    }
  }
  s.r.n_windows = n_windows;
  return s;
}

// ppl, mean NLL and the delta-method standard error: sd over n (population variance; chunks and
// rolling) or llama.cpp's sqrt(var / (n - 1)).
void finish(Scored& s, bool llamacpp_stderr) {
  auto& r = s.r;
  const auto n = static_cast<double>(r.n_scored);
  if (!r.finite) {
    r.mean_nll = r.ppl = r.ppl_stderr = kNaN;
    return;
  }
  r.mean_nll = r.nll_sum / n;
  r.ppl = std::exp(r.mean_nll);
  const double variance = s.sum_sq / n - r.mean_nll * r.mean_nll;
  if (llamacpp_stderr) {
    // llama.cpp: nll2 = E[x^2] - E[x]^2; if positive, PPL +/- ppl * sqrt(nll2 / (count - 1)).
    r.ppl_stderr = (variance > 0 && r.n_scored > 1) ? r.ppl * std::sqrt(variance / (n - 1)) : 0.0;
  } else {
    r.ppl_stderr = r.ppl * std::sqrt(std::max(0.0, variance) / n);
  }
}

// The order windows are scored in: text order, or a Fisher-Yates permutation driven by splitmix64
// (not std::shuffle, whose algorithm differs between standard libraries).
void order_windows(std::vector<Window>& windows, uint64_t seed) {
  if (seed == 0) return;
  uint64_t state = seed;
  auto next = [&state] {
    const uint64_t r = splitmix64(state);
    state += kSplitmixGolden;
    return r;
  };
  for (size_t i = windows.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(next() % i);
    std::swap(windows[i - 1], windows[j]);
  }
}

}  // namespace

PerplexityResult perplexity_chunks(const Model& model, const std::vector<TokenId>& ids,
                                   const PerplexityOptions& options) {
  check_causal_lm(model);
  check_options(options);
  const auto& c = model.config;
  const int64_t ctx = options.ctx;
  if (!c.bos_token_id) fail("{}: the chunk protocol needs a BOS token and config.json names none", model.dir.string());
  if (ctx < 1 || ctx + 1 > c.n_ctx_train) {
    fail("window of {} tokens (+ BOS) does not fit the model's {} positions", ctx, c.n_ctx_train);
  }
  if (ids.empty()) fail("no tokens to score");
  const auto bos = static_cast<TokenId>(*c.bos_token_id);
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t n_windows_all = (n + ctx - 1) / ctx;
  const int64_t n_windows = options.max_windows.of(n_windows_all);

  std::vector<Window> windows(static_cast<size_t>(n_windows));
  for (int64_t w = 0; w < n_windows; ++w) {
    auto& win = windows[static_cast<size_t>(w)];
    const auto begin = ids.begin() + w * ctx, end = ids.begin() + std::min(n, (w + 1) * ctx);
    win.input.push_back(bos);
    win.input.insert(win.input.end(), begin, end);
    win.score_begin = 0;  // BOS .. window[j-1] at position j predicts window[j]
    win.targets.assign(begin, end);
  }
  order_windows(windows, options.shuffle_seed);
  auto s = score_windows(model, windows, options);
  finish(s, false);
  s.r.n_windows_all = n_windows_all;
  return s.r;
}

PerplexityResult perplexity_llamacpp(const Model& model, const std::vector<TokenId>& ids,
                                     const PerplexityOptions& options) {
  check_causal_lm(model);
  check_options(options);
  const auto& c = model.config;
  const int64_t n_ctx = options.ctx;
  if (n_ctx < 3) fail("a llama.cpp chunk of {} positions scores no token (it needs at least 3)", n_ctx);
  if (n_ctx > c.n_ctx_train) fail("chunk of {} positions does not fit the model's {} positions", n_ctx, c.n_ctx_train);
  if (ids.empty()) fail("no tokens to score");

  // The stream as llama.cpp tokenizes it: common_tokenize(text, add_special = true).
  std::vector<TokenId> tokens;
  tokens.reserve(ids.size() + 1);
  std::optional<TokenId> bos;
  if (c.bos_token_id) bos = static_cast<TokenId>(*c.bos_token_id);
  if (bos) tokens.push_back(*bos);
  tokens.insert(tokens.end(), ids.begin(), ids.end());

  const int64_t n_chunks_all = static_cast<int64_t>(tokens.size()) / n_ctx;  // the incomplete tail is dropped
  if (n_chunks_all == 0) {
    fail("{} tokens{} are fewer than one chunk of {}", tokens.size(), bos ? " (with BOS)" : "", n_ctx);
  }
  const int64_t n_chunks = options.max_windows.of(n_chunks_all);  // llama.cpp --chunks
  const int64_t first = n_ctx / 2;

  std::vector<Window> windows(static_cast<size_t>(n_chunks));
  for (int64_t i = 0; i < n_chunks; ++i) {
    auto& win = windows[static_cast<size_t>(i)];
    const auto start = tokens.begin() + i * n_ctx;
    win.input.assign(start, start + n_ctx);
    if (bos) win.input[0] = *bos;  // BOS over the chunk's first token
    // Logits at positions j in [first, n_ctx - 1) predict chunk token j + 1 (the original token:
    // first >= 1, so the replaced one is never a target).
    win.score_begin = first;
    win.targets.assign(start + first + 1, start + n_ctx);
  }
  order_windows(windows, options.shuffle_seed);
  auto s = score_windows(model, windows, options);
  finish(s, true);
  s.r.n_windows_all = n_chunks_all;
  return s.r;
}

PerplexityResult perplexity_rolling(const Model& model, const std::vector<std::vector<TokenId>>& docs,
                                    const std::vector<int64_t>& word_counts,
                                    const std::vector<int64_t>& byte_counts, TokenId prefix_token,
                                    const PerplexityOptions& options) {
  check_causal_lm(model);
  check_options(options);
  const auto& c = model.config;
  const int64_t max_seq_len = options.ctx;
  if (max_seq_len < 1 || max_seq_len > c.n_ctx_train) {
    fail("window of {} positions does not fit the model's {} positions", max_seq_len, c.n_ctx_train);
  }
  if (prefix_token < 0 || prefix_token >= c.n_vocab) {
    fail("prefix token {} is outside the vocabulary [0, {})", prefix_token, c.n_vocab);
  }
  const bool have_counts = !word_counts.empty() || !byte_counts.empty();
  if (have_counts && (word_counts.size() != docs.size() || byte_counts.size() != docs.size())) {
    fail("{} documents but {} word counts and {} byte counts", docs.size(), word_counts.size(), byte_counts.size());
  }

  // get_rolling_token_windows(tokens, prefix, max_seq_len, context_len = 1) + make_disjoint_window,
  // as the model then reads them: the first window is [prefix] + t[:L-1] scoring t[:L]
  // (L = min(max_seq_len, n)); each later one predicts the next up to max_seq_len tokens
  // t[e-w:e] reading the max_seq_len tokens t[e-max_seq_len-1 : e-1] before them, so its last w
  // positions are scored.
  auto doc_windows = [&](const std::vector<TokenId>& t, std::vector<Window>& out) {
    const auto n = static_cast<int64_t>(t.size());
    if (n == 0) return;
    const int64_t first_len = std::min(max_seq_len, n);
    Window first;
    first.input.push_back(prefix_token);
    first.input.insert(first.input.end(), t.begin(), t.begin() + (first_len - 1));
    first.score_begin = 0;
    first.targets.assign(t.begin(), t.begin() + first_len);
    out.push_back(std::move(first));
    int64_t predicted = first_len;
    while (predicted < n) {
      const int64_t w = std::min(n - predicted, max_seq_len);
      const int64_t end = predicted + w;
      Window win;
      win.input.assign(t.begin() + (end - max_seq_len - 1), t.begin() + (end - 1));
      win.score_begin = max_seq_len - w;
      win.targets.assign(t.begin() + (end - w), t.begin() + end);
      out.push_back(std::move(win));
      predicted = end;
    }
  };

  std::vector<std::vector<Window>> per_doc(docs.size());
  int64_t n_windows_all = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    doc_windows(docs[d], per_doc[d]);
    n_windows_all += static_cast<int64_t>(per_doc[d].size());
  }
  const int64_t budget = options.max_windows.of(n_windows_all);
  std::vector<Window> windows;
  std::vector<size_t> doc_window_counts;
  int64_t n_docs = 0, n_words = 0, n_bytes = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    auto& these = per_doc[d];
    if (static_cast<int64_t>(windows.size() + these.size()) > budget) {
      if (n_docs == 0) {
        fail("--limit of {} windows is less than the {} windows of the first document", budget, these.size());
      }
      break;
    }
    doc_window_counts.push_back(these.size());
    for (auto& w : these) windows.push_back(std::move(w));
    ++n_docs;
    if (have_counts) {
      n_words += word_counts[d];
      n_bytes += byte_counts[d];
    }
  }
  if (windows.empty()) fail("no tokens to score");

  auto s = score_windows(model, windows, options, /*may_stop=*/false);  // word and byte counts are per document
  finish(s, false);
  auto& r = s.r;
  r.n_windows_all = n_windows_all;
  // Windows run in document order (rolling never reorders them): each document's are consecutive.
  size_t w = 0;
  for (const size_t count : doc_window_counts) {
    double sum = 0.0;
    for (size_t i = 0; i < count; ++i, ++w) sum += r.window_nll_sums[w];
    r.doc_nll_sums.push_back(sum);
  }
  r.n_docs = n_docs;
  r.n_words = n_words;
  r.n_bytes = n_bytes;
  // lm-eval: weighted_perplexity = exp(-sum ll / sum words); bits_per_byte = -sum ll / sum bytes / ln 2.
  const bool ok = r.finite;
  r.word_perplexity = ok && n_words > 0 ? std::exp(r.nll_sum / static_cast<double>(n_words)) : kNaN;
  r.byte_perplexity = ok && n_bytes > 0 ? std::exp(r.nll_sum / static_cast<double>(n_bytes)) : kNaN;
  r.bits_per_byte = ok && n_bytes > 0 ? r.nll_sum / static_cast<double>(n_bytes) / std::log(2.0) : kNaN;
  return r;
}

}  // namespace rankscope
