// rankscope info MODEL: what a model is made of, from a checkpoint or a bare config.json.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "core/base/error.hpp"
#include "core/io/model.hpp"
#include "core/decompose/size.hpp"

namespace rankscope::cli {

namespace {

std::string thousands(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(static_cast<size_t>(i), ",");
  return (n < 0 ? "-" : "") + digits;
}

std::string weights_description(const Model& m) {
  if (!m.has_weights) return "none: shapes only (config.json)";
  std::string files;
  for (const auto& f : m.weight_files) files += (files.empty() ? "" : ", ") + f.filename().string();
  return fmt::format("{} ({}, computed in fp32)", files, m.storage_dtype);
}

std::string tokenizer_description(const Model& m) {
  if (!m.tokenizer) return "none";
  return fmt::format("{} ({}, {} tokens)", m.tokenizer->kind(), m.tokenizer->source().filename().string(),
                     m.tokenizer->vocab_size());
}

}  // namespace

int run_info(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  const Model model = load_model(params.model, {.weights = true, .tokenizer = true});
  const auto& c = model.config;
  const auto matrices = decomposable_matrices(c);
  const int64_t total = model.n_params();
  // Size accounting starts from the dense model, also for a checkpoint stored factored, whose
  // stored factors count as stored (core/size.hpp); shown for --config and for such a checkpoint.
  const int64_t dense_total = dense_param_count(model);
  const int64_t decomposable = model.n_decomposable_params();
  const bool stored_factored = !stored_factored_cells(c).empty();
  const bool show_size = !params.config.empty() || stored_factored;
  const Config config = parse_config(params.config, c);
  const SizeReport size = show_size ? size_report(c, dense_total, config) : SizeReport{};

  if (params.json) {
    nlohmann::json j;
    j["model"] = params.model;
    j["architecture"] = c.architecture;
    j["arch"] = c.arch_name();
    j["has_weights"] = model.has_weights;
    j["dtype"] = model.has_weights ? model.storage_dtype : c.torch_dtype;
    j["tokenizer"] = model.tokenizer ? model.tokenizer->kind() : "";
    j["hyperparameters"] = {{"n_vocab", c.n_vocab},     {"n_embd", c.n_embd},   {"n_ff", c.n_ff},
                            {"n_layer", c.n_layer},     {"n_head", c.n_head},   {"n_head_kv", c.n_head_kv},
                            {"n_embd_head", c.n_embd_head}, {"n_ctx_train", c.n_ctx_train},
                            {"norm_eps", c.norm_eps}};
    if (c.arch == Arch::llama) {
      j["hyperparameters"]["rope_theta"] = c.rope_theta;
      j["hyperparameters"]["tie_embeddings"] = c.tie_embeddings;
    }
    j["params_total"] = total;
    j["params_decomposable"] = decomposable;
    for (const auto& m : matrices) {
      j["matrices"].push_back({{"layer", m.layer}, {"matrix", matrix_kind_name(m.kind)}, {"out", m.n_out},
                               {"in", m.n_in}, {"name", m.name}});
    }
    if (show_size) {
      j["config"] = encode_config(config, c);
      if (stored_factored) j["checkpoint_config"] = c.rankscope_config;
      if (!c.rankscope_section.empty()) j["rankscope"] = nlohmann::json::parse(c.rankscope_section);
      j["size"] = {{"params_before", size.params_before},   {"params_after", size.params_after},
                   {"bytes_before", size.bytes_before()},   {"bytes_after", size.bytes_after()},
                   {"reduction_pct", size.reduction_pct()}, {"matrices_decomposed", size.n_decomposed},
                   {"matrices_stored_factored", size.n_stored_factored},
                   {"flops_per_token_before", size.flops_per_token_before},
                   {"flops_per_token_after", size.flops_per_token_after}};
      j["size"]["not_smaller_than_dense"] = nlohmann::json::array();
      for (const auto& f : size.factored) {
        if (!f.not_smaller()) continue;
        j["size"]["not_smaller_than_dense"].push_back(
            {{"layer", f.layer},           {"matrix", matrix_kind_name(f.kind)},    {"out", f.n_out},
             {"in", f.n_in},               {"rank", f.rank},                        {"method", method_name(f.method)},
             {"stored", f.stored},         {"params_factored", f.params_factored}, {"params_dense", f.params_dense()},
             {"break_even_rank", f.break_even_rank}});
      }
    }
    std::cout << j.dump(2) << "\n";
    return 0;
  }

  fmt::print("model          {}\n", params.model);
  fmt::print("architecture   {} ({})\n", c.architecture, c.arch_name());
  fmt::print("weights        {}\n", weights_description(model));
  fmt::print("dtype          {}\n", model.has_weights ? model.storage_dtype : c.torch_dtype + " (declared)");
  fmt::print("tokenizer      {}\n", tokenizer_description(model));
  fmt::print("hyperparameters\n");
  fmt::print("  n_vocab {}  n_embd {}  n_ff {}  n_layer {}  n_head {}  n_head_kv {}  n_embd_head {}  n_ctx_train {}\n",
             c.n_vocab, c.n_embd, c.n_ff, c.n_layer, c.n_head, c.n_head_kv, c.n_embd_head, c.n_ctx_train);
  if (c.arch == Arch::llama) {
    fmt::print("  rms_norm_eps {:g}  rope_theta {:g}  tie_embeddings {}  activation silu{}\n", c.norm_eps,
               c.rope_theta, c.tie_embeddings,
               c.n_rot > 0 ? fmt::format("  rotary dims {} of {}", c.n_rot, c.n_embd_head) : "");
  } else {
    fmt::print("  layer_norm_eps {:g}  type_vocab {}  labels {}\n", c.norm_eps, c.n_type_vocab,
               c.labels.empty() ? "-" : fmt::format("{}", fmt::join(c.labels, ",")));
  }
  fmt::print("parameters     {} total, {} in decomposable matrices ({:.2f} %)\n", thousands(total),
             thousands(decomposable), 100.0 * static_cast<double>(decomposable) / static_cast<double>(total));
  if (!model.ignored_tensors.empty()) {
    fmt::print("ignored        {} checkpoint tensors not used by {} (e.g. {})\n", model.ignored_tensors.size(),
               c.architecture, model.ignored_tensors.front());
  }
  fmt::print("decomposable matrices ({})\n", matrices.size());
  fmt::print("  {:>5}  {:<6} {:>14} {:>12}  {}\n", "layer", "matrix", "shape (out x in)", "params", "tensor");
  for (const auto& m : matrices) {
    // A part of a fused tensor (Phi-3) is named by the tensor and its rows.
    std::string tensor = m.name;
    if (const auto group = fused_group(c, m.kind)) {
      const int64_t row = fused_row_offset(c, m.kind);
      const auto suffix = fmt::format(".{}.weight", matrix_kind_name(m.kind));  // as stored split
      tensor = fmt::format("{}.weight rows {}-{}", m.name.substr(0, m.name.size() - suffix.size()), row, row + m.n_out - 1);
    }
    fmt::print("  {:>5}  {:<6} {:>16} {:>12}  {}\n", m.layer, matrix_kind_name(m.kind),
               fmt::format("{} x {}", m.n_out, m.n_in), thousands(m.n_params()), tensor);
  }
  if (c.fused) {
    fmt::print("fused cells    qkv [{} x {}] (q, k, v stacked) and gate_up [{} x {}] (gate, up) per layer: decomposed\n"
               "               as one cell each with L*:qkv=... or space --fused; a layer decomposes a cell or its parts\n",
               matrix_shape(c, MatrixKind::qkv).first, c.n_embd, matrix_shape(c, MatrixKind::gate_up).first, c.n_embd);
  }
  if (show_size) {
    const auto canonical = encode_config(config, c);
    if (stored_factored) {
      fmt::print("checkpoint     decomposed by rankscope: {} ({} matrices stored factored)\n",
                 c.rankscope_config.empty() ? "(configuration not recorded)" : c.rankscope_config, size.n_stored_factored);
      if (!c.rankscope_base_hash.empty()) {
        fmt::print("base model     {} (content hash {})\n", c.rankscope_base_path, c.rankscope_base_hash);
      }
      if (!c.rankscope_section.empty()) {
        const auto rs = nlohmann::json::parse(c.rankscope_section);
        if (rs.contains("calibration") && rs["calibration"].is_object()) {
          // Shown as recorded (a hand-edited file may hold any JSON there).
          const auto& cal = rs["calibration"];
          auto field = [&](const char* key) {
            if (!cal.contains(key)) return std::string("?");
            return cal[key].is_string() ? cal[key].get<std::string>() : cal[key].dump();
          };
          fmt::print("calibration    {} ({}): {} samples, {} tokens, seed {}\n", field("data"), field("part"), field("samples"),
                     field("tokens"), field("seed"));
        }
      }
    }
    if (!params.config.empty() || !stored_factored) {
      fmt::print("configuration  {}{}\n", canonical.empty() ? "(base model)" : canonical,
                 stored_factored ? " (on top of the checkpoint's factors)" : "");
    }
    fmt::print("size against the dense model\n");
    fmt::print("  matrices decomposed  {} of {}\n", size.n_decomposed, matrices.size());
    fmt::print("  parameters           {} -> {}\n", thousands(size.params_before), thousands(size.params_after));
    fmt::print("  bytes ({} per param)  {} -> {}\n", size.bytes_per_param, thousands(size.bytes_before()),
               thousands(size.bytes_after()));
    fmt::print("  size reduction       {:.6f} %\n", size.reduction_pct());
    fmt::print("  FLOPs per token      {} -> {} (weight products)\n", thousands(size.flops_per_token_before),
               thousands(size.flops_per_token_after));
    for (const auto& f : size.factored) {
      if (!f.not_smaller()) continue;
      fmt::print("  warning: L{}:{} [{} x {}] rank {} @{}{} has {} parameters >= {} dense (break-even rank {})\n",
                 f.layer, matrix_kind_name(f.kind), f.n_out, f.n_in, f.rank, method_name(f.method),
                 f.stored ? " (stored)" : "",
                 thousands(f.params_factored), thousands(f.params_dense()), f.break_even_rank);
    }
  }
  return 0;
}

}  // namespace rankscope::cli
