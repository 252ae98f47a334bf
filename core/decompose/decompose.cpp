#include "core/decompose/decompose.hpp"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/decompose/linalg.hpp"
#include "core/io/safetensors.hpp"

namespace rankscope {

Linear factored_linear(const CachedSvd& svd, int64_t rank, Method method, const Tensor& bias) {
  const Mat u = svd.u(rank);
  const Eigen::VectorXf s = svd.s(rank);
  if (method == Method::svd) {
    const Mat us = u * s.asDiagonal();  // singular values absorbed into U
    return Linear::svd(Tensor::from_matrix(us), Tensor::from_matrix(svd.v(rank)), bias);
  }
  const Mat core = s.asDiagonal();
  return Linear::tucker(Tensor::from_matrix(u), Tensor::from_matrix(core), Tensor::from_matrix(svd.v(rank)), bias);
}

Linear activation_factored_linear(const CachedSvd& svd_of_wd, int64_t rank, const ActivationTransform& transform,
                                  const Tensor& bias) {
  RS_ASSERT(svd_of_wd.n() == transform.width);
  const Mat us = svd_of_wd.u(rank) * svd_of_wd.s(rank).asDiagonal();
  return Linear::svd(Tensor::from_matrix(us), Tensor::from_matrix(transform.unapply_right(svd_of_wd.v(rank))), bias);
}

std::shared_ptr<const CachedSvd> activation_factors(FactorCache& cache, const Tensor& weight,
                                                    const ActivationTransform& transform, int64_t rank) {
  const std::string tag = fmt::format("rankscope-activation-v1|{}|{}|{}", matrix_content_key(weight),
                                      method_name(transform.method), transform.key);
  const XXH128_hash_t h = XXH3_128bits(tag.data(), tag.size());
  return cache.factors_keyed(fmt::format("{:016x}{:016x}", h.high64, h.low64), weight.rows(), weight.cols(),
                             [&] { return transform.apply(weight.matrix()); }, rank);
}

bool needs_calibration(const Config& config) {
  return std::any_of(config.cells.begin(), config.cells.end(),
                     [](const auto& cell) { return is_activation_aware(cell.second.method); });
}

Model decompose_model(const Model& base, const Config& config, FactorCache& cache, DecomposeStats* stats,
                      const ActivationOptions& activation) {
  if (!base.has_weights) fail("{}: shapes-only model (no weights) cannot be decomposed", base.dir.string());
  const auto start = std::chrono::steady_clock::now();
  const int64_t hits_before = cache.hits();
  const int64_t misses_before = cache.misses();
  const auto cells = resolve_config(config, base.config);
  for (const auto& cell : cells) {
    if (is_activation_aware(cell.method) && !activation.calibration) {
      fail("@{} (L{}:{}) needs calibration activations: give --calib FILE|TASK (docs/methods.md)",
           method_name(cell.method), cell.layer, matrix_kind_name(cell.kind));
    }
  }
  Model model = base;
  int64_t n = 0;
  double max_error = 0.0;
  // One transform per (method, layer, input site): q, k, v share attn_in, gate and up ffn_in.
  // Cells come in layer order: a layer's transforms (and statistics) are dropped once it is done,
  // so host memory holds one layer's worth (about 1.4 GB for Llama-2-7B's whiten).
  std::map<std::tuple<Method, int64_t, HookSite>, ActivationTransform> transforms;
  std::vector<std::string> notes;
  for (const auto& cell : cells) {
    std::erase_if(transforms, [&](const auto& t) { return std::get<1>(t.first) != cell.layer; });
    auto& layer = model.weights.layers[static_cast<size_t>(cell.layer)];
    auto already_factored = [&] {
      fail("{}: layer {} {} is already factored; decompose the dense model", base.dir.string(), cell.layer,
           matrix_kind_name(cell.kind));
    };
    // The dense matrix the cell factors: a matrix of the model, or a fused cell's parts stacked
    // (Phi-3's qkv, gate_up), which are then replaced by the one factored linear.
    Tensor weight, bias;
    if (is_fused_kind(cell.kind)) {
      if (!layer[cell.kind].empty()) already_factored();
      for (const auto part : fused_parts(cell.kind)) {
        if (layer[part].form() != Linear::Form::dense) already_factored();
      }
      weight = fused_dense_weight(layer, cell.kind);
      bias = fused_dense_bias(layer, cell.kind);
    } else {
      const auto group = fused_group(base.config, cell.kind);
      if (layer[cell.kind].form() != Linear::Form::dense || (group && !layer[*group].empty())) already_factored();
      weight = layer[cell.kind].weight();
      bias = layer[cell.kind].bias();
    }
    auto place = [&](Linear factored) {
      if (is_fused_kind(cell.kind)) {
        for (const auto part : fused_parts(cell.kind)) layer[part] = Linear();
      }
      layer[cell.kind] = std::move(factored);
      ++n;
    };
    if (!is_activation_aware(cell.method)) {
      const auto svd = cache.factors(weight, cell.rank);
      max_error = std::max(max_error, svd->relative_error(cell.rank));
      place(factored_linear(*svd, cell.rank, cell.method, bias));
      continue;
    }
    const HookSite site = input_site(cell.kind);
    const auto where = std::make_tuple(cell.method, cell.layer, site);
    auto it = transforms.find(where);
    if (it == transforms.end()) {
      const auto stats = activation.calibration->at(cell.layer, site);
      const SiteStats& s = *stats;
      if (s.width != weight.cols()) {
        fail("calibration {}: {} has width {}, matrix L{}:{} takes {} inputs (recorded on another model?)",
             activation.calibration->key, hook_name(site, cell.layer), s.width, cell.layer, matrix_kind_name(cell.kind),
             weight.cols());
      }
      try {
        it = transforms.emplace(where, cell.method == Method::asvd ? asvd_transform(s, activation.asvd_alpha)
                                                                   : whiten_transform(s)).first;
      } catch (const Error& e) {
        fail("{} ({}): {}", hook_name(site, cell.layer), method_name(cell.method), e.what());
      }
      if (!it->second.note.empty()) {
        notes.push_back(fmt::format("{} ({}): {}", hook_name(site, cell.layer), method_name(cell.method), it->second.note));
      }
    }
    const auto svd = activation_factors(cache, weight, it->second, cell.rank);
    max_error = std::max(max_error, svd->relative_error(cell.rank));
    place(activation_factored_linear(*svd, cell.rank, it->second, bias));
  }
  if (stats != nullptr) {
    stats->matrices = n;
    stats->factorized = cache.misses() - misses_before;
    stats->cache_hits = cache.hits() - hits_before;
    stats->max_relative_error = max_error;
    stats->activation_notes = std::move(notes);
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  return model;
}

namespace {

// The dense weight a factored linear stands for (U V^T or U G V^T).
Mat multiplied_back(const Linear& lin) {
  return lin.form() == Linear::Form::svd ? Mat(lin.u().matrix() * lin.v().matrix().transpose())
                                         : Mat(lin.u().matrix() * lin.core().matrix() * lin.v().matrix().transpose());
}

// A copy of `model` with every factored linear multiplied back into a dense one; a fused cell
// factored as a whole (Phi-3) comes back as its parts, rows of the one reconstructed tensor.
Model densified(const Model& model) {
  Model out = model;
  for (auto& layer : out.weights.layers) {
    for (const auto kind : kAllMatrixKinds) {
      Linear& lin = layer[kind];
      if (lin.empty() || lin.form() == Linear::Form::dense) continue;
      const Tensor whole = Tensor::from_matrix(multiplied_back(lin));
      const Tensor bias = lin.bias();
      if (!is_fused_kind(kind)) {
        lin = Linear::dense(whole, bias);
        continue;
      }
      int64_t row = 0;
      for (const auto part : fused_parts(kind)) {
        const int64_t rows = matrix_shape(model.config, part).first;
        Tensor view = whole;
        view.shape = {rows, whole.cols()};
        view.data = whole.data + row * whole.cols();
        Tensor part_bias;
        if (!bias.empty()) part_bias = Tensor::owned({rows}, std::vector<float>(bias.data + row, bias.data + row + rows));
        layer[part] = Linear::dense(std::move(view), std::move(part_bias));
        row += rows;
      }
      lin = Linear();
    }
  }
  return out;
}

DType storage_dtype(const std::string& torch_dtype) {
  if (torch_dtype == "float16") return DType::f16;
  if (torch_dtype == "bfloat16") return DType::bf16;
  return DType::f32;
}

}  // namespace

std::string hf_auto_class(const std::string& architecture) {
  auto ends_with = [&](std::string_view suffix) { return architecture.ends_with(suffix); };
  if (ends_with("ForCausalLM")) return "AutoModelForCausalLM";
  if (ends_with("ForSequenceClassification")) return "AutoModelForSequenceClassification";
  if (ends_with("ForMaskedLM")) return "AutoModelForMaskedLM";
  if (architecture == "BertModel") return "AutoModel";
  return "";
}

void write_checkpoint(const Model& model, const std::filesystem::path& out_dir, const std::string& canonical_config,
                      const CheckpointOptions& options) {
  const bool dense = options.dense;
  if (!model.has_weights) fail("{}: shapes-only model has no weights to write", model.dir.string());
  if (options.hf && dense) fail("{}: --format hf writes factors; --dense writes an ordinary checkpoint already", out_dir.string());
  const std::string auto_class = options.hf ? hf_auto_class(model.config.architecture) : "";
  if (options.hf && auto_class.empty()) {
    fail("{}: --format hf has no transformers class for architecture '{}'", model.dir.string(), model.config.architecture);
  }
  const bool created = !std::filesystem::exists(out_dir);
  std::filesystem::create_directories(out_dir);
  if (std::filesystem::equivalent(out_dir, model.dir)) fail("{}: refusing to overwrite the source model", out_dir.string());

  auto config = read_json_file(model.config.source);
  nlohmann::json rs = {{"format", 1}, {"config", canonical_config}, {"source", model.dir.string()}};
  for (const auto& [key, value] : options.provenance.items()) rs[key] = value;
  rs["factored"] = nlohmann::json::object();
  if (dense) rs["dense_reconstruction"] = true;

  // Tensors in load order; factored matrices either as factors or multiplied back. A fused model
  // (Phi-3) multiplied back is written from a dense copy, so that its fused tensors come out whole.
  const bool densify_fused = dense && model.config.fused;
  auto tensors = densify_fused ? densified(model).named_tensors() : model.named_tensors();
  for (const auto& spec : expected_tensors(model.config, model.bert_prefix)) {
    if (spec.role != Role::matrix || spec.is_bias || densify_fused) continue;
    const auto& lin = model.weights.layers[static_cast<size_t>(spec.layer)][*spec.matrix];
    if (lin.form() != Linear::Form::svd && lin.form() != Linear::Form::tucker) continue;
    const auto module = spec.name.substr(0, spec.name.size() - std::string_view(".weight").size());
    if (!dense) {
      rs["factored"][module] = {{"method", lin.form() == Linear::Form::svd ? "svd" : "tucker"}, {"rank", lin.rank()}};
      continue;
    }
    // Replace the factor entries by the reconstructed weight at the same place.
    const Mat w = multiplied_back(lin);
    auto first = std::find_if(tensors.begin(), tensors.end(), [&](const auto& p) { return p.first == module + ".U"; });
    RS_ASSERT(first != tensors.end());
    *first = {module + ".weight", Tensor::from_matrix(w)};
    std::erase_if(tensors, [&](const auto& p) { return p.first == module + ".core" || p.first == module + ".V"; });
  }
  if (dense) {
    rs.erase("factored");
  } else {
    // Fused tensors written as their parts (a part factored): the modules and their parts' rows,
    // for modeling_rankscope.py (rankscope itself reads either form).
    for (int64_t l = 0; l < model.config.n_layer; ++l) {
      for (const auto fused : fused_kinds(model.config)) {
        if (!stored_split(model.weights.layers[static_cast<size_t>(l)], fused)) continue;
        nlohmann::json parts = nlohmann::json::array(), rows = nlohmann::json::array();
        for (const auto part : fused_parts(fused)) {
          parts.push_back(matrix_kind_name(part));
          rows.push_back(matrix_shape(model.config, part).first);
        }
        rs["split"][llama_module(model.config, l, fused)] = {{"parts", parts}, {"rows", rows}};
      }
    }
  }
  config["rankscope"] = rs;
  if (options.hf) {
    config["auto_map"] = {{auto_class, "modeling_rankscope.Rankscope" + model.config.architecture}};
  } else if (config.contains("auto_map") && config["auto_map"].is_object()) {
    // A source written with --format hf: its auto_map would name a modeling file not copied here.
    config["auto_map"].erase(auto_class.empty() ? hf_auto_class(model.config.architecture) : auto_class);
    if (config["auto_map"].empty()) config.erase("auto_map");
  }

  const DType dtype = storage_dtype(model.config.torch_dtype);
  std::vector<TensorToWrite> out;
  for (const auto& [name, t] : tensors) {
    out.push_back({name, t.shape, std::span<const float>(t.data, static_cast<size_t>(t.numel())), dtype});
  }
  // Every file goes to a temporary beside its final name first; only when all are whole are they
  // renamed into place, so a failed write (a full disk, a killed process) leaves no partial file
  // and never a new model.safetensors beside an old config.json. On error the temporaries go.
  std::vector<std::pair<std::filesystem::path, std::filesystem::path>> staged;  // temporary, final
  auto stage = [&](const std::filesystem::path& final_path) {
    staged.emplace_back(temporary_path(final_path), final_path);
    return staged.back().first;
  };
  try {
    const auto weights_tmp = stage(out_dir / "model.safetensors");
    write_safetensors(weights_tmp, out, {{"format", "pt"}, {"rankscope_config", canonical_config}});
    const std::string config_text = config.dump(2) + "\n";
    write_new_file(stage(out_dir / "config.json"), config_text);
    if (options.hf) write_new_file(stage(out_dir / "modeling_rankscope.py"), std::string(hf_modeling_source()));
    for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                             "special_tokens_map.json", "generation_config.json"}) {
      const auto src = model.dir / name;
      if (std::filesystem::exists(src)) std::filesystem::copy_file(src, stage(out_dir / name));
    }
    for (const auto& [tmp, final_path] : staged) {
      std::error_code ec;
      std::filesystem::rename(tmp, final_path, ec);
      if (ec) fail("{}: cannot rename the written temporary into place: {}", final_path.string(), ec.message());
    }
  } catch (...) {
    for (const auto& [tmp, final_path] : staged) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      std::filesystem::remove(std::filesystem::path(tmp.string() + ".tmp"), ec);  // write_safetensors' own
    }
    std::error_code ec;
    if (created) std::filesystem::remove(out_dir, ec);  // the directory this call made, if still empty
    try {
      throw;
    } catch (const Error& e) {
      // Name the file the user asked for, not a temporary that is gone.
      std::string message = e.what();
      for (const auto& [tmp, final_path] : staged) {
        for (const std::string& name : {tmp.string() + ".tmp", tmp.string()}) {
          for (size_t at; (at = message.find(name)) != std::string::npos;) message.replace(at, name.size(), final_path.string());
        }
      }
      if (dynamic_cast<const TransientError*>(&e) != nullptr) throw TransientError(message);
      throw Error(message);
    }
  }
  std::filesystem::remove(out_dir / "model.safetensors.index.json");
}

}  // namespace rankscope
