#include "core/decompose/size.hpp"

#include <algorithm>
#include <map>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

int64_t bytes_of(const std::string& torch_dtype) {
  return torch_dtype == "float16" || torch_dtype == "bfloat16" ? 2 : 4;
}

// Weights applied to every token outside the decomposable matrices: the output head (Llama's
// lm_head; BERT's pooler/classifier run once per sequence and are left out).
int64_t head_params_per_token(const ModelConfig& c) { return c.arch == Arch::llama ? c.n_vocab * c.n_embd : 0; }

constexpr std::string_view kBertPrefix = "bert.";

}  // namespace

int64_t factored_params(int64_t n_out, int64_t n_in, int64_t rank, Method method) {
  const int64_t core = method == Method::tucker ? rank * rank : 0;
  return n_in * rank + core + rank * n_out;
}

int64_t break_even_rank(int64_t n_out, int64_t n_in, Method method) {
  // factored_params grows with the rank and exceeds out * in at min(out, in): bisect for the
  // last rank below dense, in exact integers.
  const int64_t dense = n_out * n_in;
  int64_t lo = 0, hi = std::min(n_out, n_in);  // factored(lo) < dense (or lo == 0), factored(hi) >= dense
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (factored_params(n_out, n_in, mid, method) < dense ? lo : hi) = mid;
  }
  return factored_params(n_out, n_in, hi, method) < dense ? hi : lo;
}

double SizeReport::reduction_pct() const {
  return params_before == 0 ? 0.0
                            : 100.0 * static_cast<double>(params_before - params_after) / static_cast<double>(params_before);
}

std::vector<ResolvedCell> stored_factored_cells(const ModelConfig& model) {
  std::vector<ResolvedCell> out;
  if (model.factored.empty()) return out;
  auto matrices = decomposable_matrices(model);
  for (auto& m : fused_matrices(model)) matrices.push_back(std::move(m));
  for (const auto& m : matrices) {
    std::string module = m.name.substr(0, m.name.size() - std::string_view(".weight").size());
    auto it = model.factored.find(module);
    if (it == model.factored.end() && module.starts_with(kBertPrefix)) it = model.factored.find(module.substr(kBertPrefix.size()));
    if (it == model.factored.end()) continue;
    out.push_back({m.layer, m.kind, m.n_out, m.n_in, it->second.rank, parse_method(it->second.method)});
  }
  return out;
}

int64_t dense_param_count(const Model& model) {
  if (!model.has_weights) return config_param_count(model.config);
  int64_t n = model.n_params();
  for (const auto& layer : model.weights.layers) {
    for (const auto& lin : layer.linear) {
      if (lin.empty() || lin.form() == Linear::Form::dense) continue;
      n += lin.n_out() * lin.n_in() - (lin.n_params() - (lin.bias().empty() ? 0 : lin.n_out()));
    }
  }
  return n;
}

SizeReport size_report(const ModelConfig& model, int64_t dense_total, const Config& config) {
  SizeReport r;
  r.params_before = dense_total;
  r.bytes_per_param = bytes_of(model.torch_dtype);
  for (const auto& m : decomposable_matrices(model)) r.decomposable_before += m.n_params();
  std::map<std::pair<int64_t, MatrixKind>, FactoredSize> factored;
  auto add = [&](const ResolvedCell& cell, bool stored) {
    factored[{cell.layer, cell.kind}] = {.layer = cell.layer,
                                         .kind = cell.kind,
                                         .n_out = cell.n_out,
                                         .n_in = cell.n_in,
                                         .rank = cell.rank,
                                         .method = cell.method,
                                         .stored = stored,
                                         .params_factored = factored_params(cell.n_out, cell.n_in, cell.rank, cell.method),
                                         .break_even_rank = break_even_rank(cell.n_out, cell.n_in, cell.method)};
  };
  for (const auto& cell : stored_factored_cells(model)) add(cell, true);
  for (const auto& cell : resolve_config(config, model)) {
    // Also a part of a fused cell stored factored, and a fused cell with a part stored factored.
    bool overlaps = factored.contains({cell.layer, cell.kind});
    if (const auto group = fused_group(model, cell.kind)) overlaps = overlaps || factored.contains({cell.layer, *group});
    for (const auto part : fused_parts(cell.kind)) overlaps = overlaps || factored.contains({cell.layer, part});
    if (overlaps) {
      fail("{}: layer {} {} is already factored; decompose the dense model", model.source.parent_path().string(),
           cell.layer, matrix_kind_name(cell.kind));
    }
    add(cell, false);
  }
  r.decomposable_after = r.decomposable_before;
  for (const auto& [where, f] : factored) {
    r.decomposable_after += f.params_factored - f.params_dense();
    r.n_stored_factored += f.stored ? 1 : 0;
    r.factored.push_back(f);
  }
  r.n_decomposed = static_cast<int64_t>(r.factored.size());
  r.params_after = dense_total - r.decomposable_before + r.decomposable_after;
  r.flops_per_token_before = 2 * (r.decomposable_before + head_params_per_token(model));
  r.flops_per_token_after = 2 * (r.decomposable_after + head_params_per_token(model));
  return r;
}

}  // namespace rankscope
