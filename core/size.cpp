#include "core/size.hpp"

namespace rankscope {

namespace {

int64_t bytes_of(const std::string& torch_dtype) {
  return torch_dtype == "float16" || torch_dtype == "bfloat16" ? 2 : 4;
}

// Weights applied to every token outside the decomposable matrices: the output head (Llama's
// lm_head; BERT's pooler/classifier run once per sequence and are left out).
int64_t head_params_per_token(const ModelConfig& c) { return c.arch == Arch::llama ? c.n_vocab * c.n_embd : 0; }

}  // namespace

int64_t factored_params(int64_t n_out, int64_t n_in, int64_t rank, Method method) {
  const int64_t core = method == Method::tucker ? rank * rank : 0;
  return n_in * rank + core + rank * n_out;
}

double SizeReport::reduction_pct() const {
  return params_before == 0 ? 0.0
                            : 100.0 * static_cast<double>(params_before - params_after) / static_cast<double>(params_before);
}

SizeReport size_report(const ModelConfig& model, int64_t total_params, const Config& config) {
  SizeReport r;
  r.params_before = total_params;
  r.bytes_per_param = bytes_of(model.torch_dtype);
  for (const auto& m : decomposable_matrices(model)) r.decomposable_before += m.n_params();
  r.decomposable_after = r.decomposable_before;
  for (const auto& cell : resolve_config(config, model)) {
    r.decomposable_after += factored_params(cell.n_out, cell.n_in, cell.rank, cell.method) - cell.n_out * cell.n_in;
    ++r.n_decomposed;
  }
  r.params_after = total_params - r.decomposable_before + r.decomposable_after;
  r.flops_per_token_before = 2 * (r.decomposable_before + head_params_per_token(model));
  r.flops_per_token_after = 2 * (r.decomposable_after + head_params_per_token(model));
  return r;
}

}  // namespace rankscope
