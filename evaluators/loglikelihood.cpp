#include "evaluators/loglikelihood.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/base/error.hpp"
#include "core/models/llama.hpp"

namespace rankscope {

namespace {

void add_score(Loglikelihood& r, const TokenScore& s) {
  r.logprob += s.logprob;
  r.greedy = r.greedy && s.is_argmax;
  ++r.n_tokens;
}

// One (group, choice) scored without a cache: the model reads the whole (possibly
// left-truncated) request.
struct ScratchRequest {
  size_t group, choice;
  std::vector<TokenId> input;
  int64_t n_cont;  // continuation tokens, scored from the last n_cont rows of the input
};

}  // namespace

std::vector<std::vector<Loglikelihood>> loglikelihoods(const Model& model, std::span<const ChoiceGroup> groups,
                                                       const LoglikelihoodOptions& options) {
  const auto& c = model.config;
  if (c.arch != Arch::llama) fail("{}: log-likelihood scoring needs a causal LM, not {}", model.dir.string(), c.architecture);
  const int64_t max_length = options.max_length > 0 ? options.max_length : c.n_ctx_train;
  Backend& be = model.runtime();
  const auto G = static_cast<size_t>(std::max<int64_t>(1, options.groups_per_batch));

  std::vector<std::vector<Loglikelihood>> out(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    RS_ASSERT(!groups[g].context.empty());
    out[g].assign(groups[g].continuations.size(), Loglikelihood{.greedy = true});
    for (const auto& cont : groups[g].continuations) RS_ASSERT(!cont.empty());
  }

  // Requests that run without a cache: every one when reuse is off, and the groups with a
  // request that must be truncated (its context then differs per continuation).
  std::vector<ScratchRequest> scratch;
  std::vector<size_t> reuse;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& grp = groups[g];
    bool fits = true;
    for (const auto& cont : grp.continuations) {
      if (static_cast<int64_t>(grp.context.size() + cont.size()) > max_length + 1) fits = false;
    }
    if (fits && options.reuse_context) {
      reuse.push_back(g);
      continue;
    }
    for (size_t k = 0; k < grp.continuations.size(); ++k) {
      const auto& cont = grp.continuations[k];
      std::vector<TokenId> whole = grp.context;
      whole.insert(whole.end(), cont.begin(), cont.end());
      const auto keep = std::min<int64_t>(static_cast<int64_t>(whole.size()), max_length + 1);
      if (keep < static_cast<int64_t>(whole.size())) out[g][k].truncated = true;
      std::vector<TokenId> input(whole.end() - keep, whole.end() - 1);
      scratch.push_back({g, k, std::move(input), static_cast<int64_t>(cont.size())});
    }
  }

  const auto total = static_cast<int64_t>(groups.size());
  int64_t done = 0;
  auto report = [&](int64_t n) {
    done += n;
    if (options.progress) options.progress(done, total);
  };

  // Context reuse: prefill a batch of contexts at once, then every continuation continues its
  // group's cache. Batches: G groups in document order, or with a token budget groups sorted by
  // context length up to the budget.
  if (options.token_budget > 0) {
    std::stable_sort(reuse.begin(), reuse.end(),
                     [&](size_t a, size_t b) { return groups[a].context.size() < groups[b].context.size(); });
  }
  auto batch_end = [&](size_t b0) {
    size_t b1 = b0;
    int64_t tokens = 0;
    while (b1 < reuse.size() && b1 - b0 < G) {
      const auto& grp = groups[reuse[b1]];
      int64_t need = static_cast<int64_t>(grp.context.size());
      for (const auto& cont : grp.continuations) need = std::max<int64_t>(need, static_cast<int64_t>(cont.size()));
      if (options.token_budget > 0 && b1 > b0 && tokens + need > options.token_budget) break;
      tokens += need;
      ++b1;
    }
    return b1;
  };
  for (size_t b0 = 0, b1 = 0; b0 < reuse.size(); b0 = b1) {
    b1 = batch_end(b0);
    std::vector<std::vector<TokenId>> contexts;
    for (size_t i = b0; i < b1; ++i) contexts.push_back(groups[reuse[i]].context);
    std::vector<KvCache> caches(b1 - b0);
    // Room for the context and its longest continuation from the start: no cache grows later.
    for (size_t i = b0; i < b1; ++i) {
      const auto& grp = groups[reuse[i]];
      size_t longest = 0;
      for (const auto& cont : grp.continuations) longest = std::max(longest, cont.size());
      caches[i - b0].capacity_hint = static_cast<int64_t>(grp.context.size() + longest);
    }
    const Buffer first = llama_logits(model, contexts, caches, {.last_logits_only = true});
    // The first token of every continuation is scored from its context's last row.
    std::vector<int64_t> rows;
    std::vector<TokenId> targets;
    size_t max_choices = 0;
    for (size_t i = b0; i < b1; ++i) {
      const auto& grp = groups[reuse[i]];
      max_choices = std::max(max_choices, grp.continuations.size());
      for (const auto& cont : grp.continuations) {
        rows.push_back(static_cast<int64_t>(i - b0));
        targets.push_back(cont[0]);
      }
    }
    const auto first_scores = be.score(first, rows, targets);
    size_t n_scored = 0;
    for (size_t i = b0; i < b1; ++i) {
      for (auto& r : out[reuse[i]]) add_score(r, first_scores[n_scored++]);
    }
    for (size_t k = 0; k < max_choices; ++k) {
      std::vector<size_t> members;  // indices into caches
      std::vector<std::vector<TokenId>> inputs;
      std::vector<KvCache> batch_caches;
      for (size_t i = b0; i < b1; ++i) {
        const auto& grp = groups[reuse[i]];
        if (k >= grp.continuations.size() || grp.continuations[k].size() < 2) continue;
        const auto& cont = grp.continuations[k];
        members.push_back(i - b0);
        inputs.emplace_back(cont.begin(), cont.end() - 1);
        batch_caches.push_back(std::move(caches[i - b0]));
      }
      if (members.empty()) continue;
      const Buffer logits = llama_logits(model, inputs, batch_caches);
      std::vector<TokenId> next;  // the token each row predicts
      for (size_t m = 0; m < members.size(); ++m) {
        const auto& cont = groups[reuse[b0 + members[m]]].continuations[k];
        next.insert(next.end(), cont.begin() + 1, cont.end());
      }
      std::vector<int64_t> all_rows(next.size());
      for (size_t r = 0; r < all_rows.size(); ++r) all_rows[r] = static_cast<int64_t>(r);
      const auto scores = be.score(logits, all_rows, next);
      size_t row = 0;
      for (size_t m = 0; m < members.size(); ++m) {
        const size_t i = b0 + members[m];
        const auto& cont = groups[reuse[i]].continuations[k];
        for (size_t t = 1; t < cont.size(); ++t) add_score(out[reuse[i]][k], scores[row++]);
        KvCache& cache = batch_caches[m];
        cache.n_past = static_cast<int64_t>(groups[reuse[i]].context.size());  // roll back to the context
        caches[members[m]] = std::move(cache);
      }
    }
    report(static_cast<int64_t>(b1 - b0));
  }

  // From scratch: batches of requests under a token budget (full logits of every position).
  const int64_t kTokenBudget = options.token_budget > 0 ? options.token_budget : 4096;
  size_t s0 = 0;
  while (s0 < scratch.size()) {
    size_t s1 = s0;
    int64_t tokens = 0;
    while (s1 < scratch.size() && (s1 == s0 || tokens + static_cast<int64_t>(scratch[s1].input.size()) <= kTokenBudget)) {
      tokens += static_cast<int64_t>(scratch[s1].input.size());
      ++s1;
    }
    std::vector<std::vector<TokenId>> inputs;
    for (size_t i = s0; i < s1; ++i) inputs.push_back(scratch[i].input);
    const Buffer logits = llama_logits(model, inputs);
    // The last n_cont rows of each request predict its continuation (the input lacks the final token).
    std::vector<int64_t> rows;
    std::vector<TokenId> targets;
    int64_t offset = 0;
    for (size_t i = s0; i < s1; ++i) {
      const auto& req = scratch[i];
      const auto& cont = groups[req.group].continuations[req.choice];
      const auto len = static_cast<int64_t>(req.input.size());
      for (int64_t t = 0; t < req.n_cont; ++t) {
        rows.push_back(offset + len - req.n_cont + t);
        targets.push_back(cont[static_cast<size_t>(t)]);
      }
      offset += len;
    }
    const auto scores = be.score(logits, rows, targets);
    size_t n_scored = 0;
    int64_t groups_finished = 0;
    for (size_t i = s0; i < s1; ++i) {
      const auto& req = scratch[i];
      for (int64_t t = 0; t < req.n_cont; ++t) add_score(out[req.group][req.choice], scores[n_scored++]);
      if (req.choice + 1 == groups[req.group].continuations.size()) ++groups_finished;
    }
    report(groups_finished);
    s0 = s1;
  }
  return out;
}

EncodedPair encode_pair(const Tokenizer& tokenizer, const std::string& context, const std::string& continuation,
                        const std::vector<TokenId>& prefix, TokenId empty_context_token) {
  std::string ctx = context;
  std::string cont = continuation;
  size_t end = ctx.size();
  while (end > 0 && (ctx[end - 1] == ' ' || ctx[end - 1] == '\t' || ctx[end - 1] == '\n' || ctx[end - 1] == '\r' ||
                     ctx[end - 1] == '\f' || ctx[end - 1] == '\v')) {
    --end;
  }
  if (end < ctx.size()) {
    cont = ctx.substr(end) + cont;
    ctx.resize(end);
  }
  EncodedPair pair;
  pair.context = prefix;
  if (ctx.empty()) {
    if (prefix.empty()) pair.context.push_back(empty_context_token);
    pair.continuation = tokenizer.encode(cont);
    return pair;
  }
  const auto context_ids = tokenizer.encode(ctx);
  const auto whole = tokenizer.encode(ctx + cont);
  pair.context.insert(pair.context.end(), context_ids.begin(), context_ids.end());
  if (whole.size() > context_ids.size()) {
    pair.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(context_ids.size()), whole.end());
  } else {
    // The joint encoding is no longer than the context's (a merge across the boundary swallowed
    // the continuation): lm-eval would score nothing; encode the continuation alone instead.
    pair.continuation = tokenizer.encode(cont);
  }
  return pair;
}

}  // namespace rankscope
