// rankscope forward MODEL [--config STR] --ids ... --out FILE.npy: the raw output for one sequence
// of the model as stored or decomposed by --config, for comparison with any other framework.
#include <charconv>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/models/bert.hpp"
#include "core/base/error.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/compute/gemm.hpp"
#include "core/models/llama.hpp"
#include "core/io/npy.hpp"

namespace rankscope::cli {

namespace {

std::vector<TokenId> parse_id_list(const std::string& text, const char* option) {
  std::vector<TokenId> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string_view item(text.data() + pos, comma - pos);
    TokenId id = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      fail("--{}: '{}' is not an integer (expected e.g. 1,403,407)", option, item);
    }
    ids.push_back(id);
    pos = comma + 1;
  }
  return ids;
}

// write_npy through a temporary beside `path`: a failed write leaves no partial file.
void write_npy_atomically(const std::filesystem::path& path, const std::vector<int64_t>& shape, const float* values) {
  write_atomically(path, [&](const std::filesystem::path& tmp) { write_npy(tmp, shape, values); });
}

}  // namespace

int run_forward(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.ids.empty()) throw Error("--ids is required");
  if (params.out.empty()) throw Error("--out is required");
  set_num_threads(params.threads);
  Model base = load_model(params.model, {.weights = true, .tokenizer = false});
  if (!base.has_weights) fail("{}: no weights (shapes-only config.json); cannot run", params.model);
  place_model(base, params);
  const auto decomposed = configured_model(base, parse_config(params.config, base.config), params);
  const Model& model = decomposed ? *decomposed : base;
  const auto& c = model.config;
  const auto ids = parse_id_list(params.ids, "ids");
  const auto n = static_cast<int64_t>(ids.size());

  if (c.arch == Arch::llama) {
    if (!params.type_ids.empty()) throw Error("--type-ids applies to BERT models only");
    const std::vector<std::vector<TokenId>> batch = {ids};
    const Mat logits = llama_forward(model, batch);
    write_npy_atomically(params.out, {n, c.n_vocab}, logits.data());
    fmt::print("wrote {}: logits [{}, {}]\n", params.out, n, c.n_vocab);
    return 0;
  }
  BertInput in{ids, params.type_ids.empty() ? std::vector<TokenId>() : parse_id_list(params.type_ids, "type-ids"), {}};
  const auto out = bert_forward(model, std::span(&in, 1));
  if (params.hidden || c.bert_head == BertHead::none) {
    write_npy_atomically(params.out, {n, c.n_embd}, out.hidden.data());
    fmt::print("wrote {}: last hidden states [{}, {}]\n", params.out, n, c.n_embd);
  } else if (c.bert_head == BertHead::sequence_classification) {
    write_npy_atomically(params.out, {out.logits.cols()}, out.logits.data());
    fmt::print("wrote {}: classifier logits [{}]\n", params.out, out.logits.cols());
  } else {
    write_npy_atomically(params.out, {n, c.n_vocab}, out.logits.data());
    fmt::print("wrote {}: masked-LM logits [{}, {}]\n", params.out, n, c.n_vocab);
  }
  return 0;
}

}  // namespace rankscope::cli
