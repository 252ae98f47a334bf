#include "core/io/model.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/io/safetensors.hpp"

namespace rankscope {

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Every tensor of a checkpoint, across its files.
struct Checkpoint {
  std::vector<SafetensorsFile> files;
  std::map<std::string, std::pair<size_t, const SafetensorsEntry*>> tensors;

  void add_file(SafetensorsFile file) {
    files.push_back(std::move(file));
  }
  void index_all() {
    for (size_t f = 0; f < files.size(); ++f) {
      for (const auto& e : files[f].entries()) tensors[e.name] = {f, &e};
    }
  }
};

Checkpoint open_sharded(const std::filesystem::path& index_path) {
  const nlohmann::json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail("{}: no 'weight_map' object", index_path.string());
  }
  Checkpoint ckpt;
  std::map<std::string, size_t> shard_index;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail("{}: weight_map entry '{}' is not a file name", index_path.string(), printable(name));
    const std::string shard_name = shard;
    if (shard_name.find('/') != std::string::npos) {
      fail("{}: weight_map entry '{}' names a path outside the directory: {}", index_path.string(), printable(name),
           printable(shard_name));
    }
    // A control character in a file name would split every message that names the file.
    if (has_control_characters(shard_name)) {
      fail("{}: weight_map entry '{}' names a file with control characters: {}", index_path.string(), printable(name),
           printable(shard_name));
    }
    if (!shard_index.contains(shard_name)) {
      shard_index[shard_name] = ckpt.files.size();
      ckpt.add_file(SafetensorsFile::open(index_path.parent_path() / shard_name));
    }
  }
  ckpt.index_all();
  for (const auto& [name, shard] : index["weight_map"].items()) {
    const auto it = ckpt.tensors.find(name);
    const auto& file = ckpt.files[shard_index[shard.get<std::string>()]];
    if (it == ckpt.tensors.end() || &ckpt.files[it->second.first] != &file) {
      fail("{}: weight_map puts tensor '{}' in {}, which does not contain it", index_path.string(), printable(name),
           shard.get<std::string>());
    }
  }
  return ckpt;
}

std::optional<DType> declared_dtype(const std::string& torch_dtype) {
  if (torch_dtype == "float32") return DType::f32;
  if (torch_dtype == "float16") return DType::f16;
  if (torch_dtype == "bfloat16") return DType::bf16;
  return std::nullopt;
}

// Puts one validated tensor where its role says.
void place(ModelWeights& w, const TensorSpec& spec, Tensor t,
           std::map<std::pair<int64_t, MatrixKind>, std::pair<Tensor, Tensor>>& matrices,
           std::map<Role, std::pair<Tensor, Tensor>>& head_linears) {
  auto& layer = spec.layer >= 0 ? w.layers[static_cast<size_t>(spec.layer)] : w.layers.front();
  auto pick = [&](Tensor& weight, Tensor& bias) { (spec.is_bias ? bias : weight) = std::move(t); };
  switch (spec.role) {
    case Role::token_embd: w.token_embd = std::move(t); break;
    case Role::pos_embd: w.pos_embd = std::move(t); break;
    case Role::type_embd: w.type_embd = std::move(t); break;
    case Role::embd_norm: pick(w.embd_norm, w.embd_norm_bias); break;
    case Role::attn_norm:
    case Role::attn_out_norm: pick(layer.attn_norm, layer.attn_norm_bias); break;
    case Role::ffn_norm:
    case Role::ffn_out_norm: pick(layer.ffn_norm, layer.ffn_norm_bias); break;
    case Role::q_norm: layer.q_norm = std::move(t); break;
    case Role::k_norm: layer.k_norm = std::move(t); break;
    case Role::matrix: {
      auto& [weight, bias] = matrices[{spec.layer, *spec.matrix}];
      pick(weight, bias);
      break;
    }
    case Role::output_norm: w.output_norm = std::move(t); break;
    case Role::output: w.output = std::move(t); break;
    case Role::pooler:
    case Role::classifier:
    case Role::mlm_transform: {
      auto& [weight, bias] = head_linears[spec.role];
      pick(weight, bias);
      break;
    }
    case Role::mlm_norm: pick(w.mlm_norm, w.mlm_norm_bias); break;
    case Role::mlm_decoder: w.mlm_decoder = std::move(t); break;
    case Role::mlm_bias: w.mlm_bias = std::move(t); break;
  }
}

void load_weights(Model& model, Checkpoint& ckpt, const std::filesystem::path& origin) {
  const auto& c = model.config;
  std::string bert_prefix = "bert.";
  if (c.arch == Arch::bert && !ckpt.tensors.contains("bert.embeddings.word_embeddings.weight") &&
      ckpt.tensors.contains("embeddings.word_embeddings.weight")) {
    bert_prefix = "";  // a bare BertModel saved without the "bert." prefix
  }
  const auto declared = declared_dtype(c.torch_dtype);
  auto& w = model.weights;
  w.layers.resize(static_cast<size_t>(c.n_layer));
  std::map<std::pair<int64_t, MatrixKind>, std::pair<Tensor, Tensor>> matrices;
  std::map<Role, std::pair<Tensor, Tensor>> head_linears;
  std::set<std::string> used;
  std::set<std::string> dtypes;

  model.bert_prefix = bert_prefix;
  auto fetch = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const auto it = ckpt.tensors.find(name);
    if (it == ckpt.tensors.end()) {
      fail("{}: missing tensor '{}' (required by {} as config.json describes it)", origin.string(), name, c.architecture);
    }
    const auto& file = ckpt.files[it->second.first];
    const auto& entry = *it->second.second;
    if (entry.shape != shape) {
      fail("{}: tensor '{}' has shape {} but config.json implies {}", file.path().string(), name,
           shape_string(entry.shape), shape_string(shape));
    }
    if (!entry.dtype) {
      fail("{}: tensor '{}' has dtype {}; weights must be F32, F16 or BF16", file.path().string(), name, entry.dtype_name);
    }
    if (declared && *entry.dtype != *declared) {
      fail("{}: tensor '{}' is stored as {} but config.json declares torch_dtype {}", file.path().string(), name,
           entry.dtype_name, printable(c.torch_dtype));
    }
    dtypes.insert(entry.dtype_name);
    used.insert(name);
    return file.load(entry);
  };
  std::map<std::pair<int64_t, MatrixKind>, Linear> factored;
  for (const auto& spec : expected_tensors(c, bert_prefix)) {
    if (spec.role == Role::matrix && !spec.is_bias) {
      const auto module = spec.name.substr(0, spec.name.size() - std::string_view(".weight").size());
      const auto f = c.factored.find(module);
      if (f != c.factored.end()) {
        // Stored factored by rankscope decompose: U [out x r], (core [r x r]), V [in x r].
        const int64_t r = f->second.rank, out = spec.shape[0], in = spec.shape[1];
        if (r > std::min(out, in)) fail("{}: rankscope.factored '{}' has rank {} above min({}, {})", c.source.string(), printable(module), r, out, in);
        Tensor u = fetch(module + ".U", {out, r});
        Tensor v = fetch(module + ".V", {in, r});
        factored[{spec.layer, *spec.matrix}] =
            f->second.method == "svd" ? Linear::svd(std::move(u), std::move(v))
                                      : Linear::tucker(std::move(u), fetch(module + ".core", {r, r}), std::move(v));
        continue;
      }
    }
    const auto it = ckpt.tensors.find(spec.name);
    if (it == ckpt.tensors.end()) {
      // A fused tensor may be stored as its parts instead: checked once the layer is read.
      if (!spec.required || (spec.role == Role::matrix && is_fused_kind(*spec.matrix))) continue;
      fail("{}: missing tensor '{}' (required by {} as config.json describes it)", origin.string(),
           spec.name, c.architecture);
    }
    place(w, spec, fetch(spec.name, spec.shape), matrices, head_linears);
  }

  for (auto& [key, tensors] : matrices) {
    auto& slot = w.layers[static_cast<size_t>(key.first)][key.second];
    if (tensors.first.empty()) {  // factored: only its bias was placed
      const auto& lin = factored.at(key);
      slot = lin.form() == Linear::Form::svd ? Linear::svd(lin.u(), lin.v(), std::move(tensors.second))
                                             : Linear::tucker(lin.u(), lin.core(), lin.v(), std::move(tensors.second));
      factored.erase(key);
      continue;
    }
    slot = Linear::dense(std::move(tensors.first), std::move(tensors.second));
  }
  for (auto& [key, lin] : factored) w.layers[static_cast<size_t>(key.first)][key.second] = std::move(lin);
  // Fused tensors (Phi-3): a dense one becomes its parts, views of its rows, so that every part is
  // a matrix of its own (decomposed alone, or together as the fused cell); a factored one stays.
  for (const auto fused : fused_kinds(c)) {
    for (int64_t l = 0; l < c.n_layer; ++l) {
      auto& layer = w.layers[static_cast<size_t>(l)];
      const auto parts = fused_parts(fused);
      const bool any_part = std::any_of(parts.begin(), parts.end(), [&](MatrixKind p) { return !layer[p].empty(); });
      const auto fused_name = llama_module(c, l, fused) + ".weight";
      if (!layer[fused].empty()) {
        if (any_part) fail("{}: layer {} holds both '{}' and its parts", origin.string(), l, fused_name);
        if (layer[fused].form() != Linear::Form::dense) continue;
        const Tensor whole = layer[fused].weight();
        for (const auto part : parts) {
          const int64_t rows = matrix_shape(c, part).first;
          Tensor view = whole;
          view.shape = {rows, whole.cols()};
          view.data = whole.data + fused_row_offset(c, part) * whole.cols();
          layer[part] = Linear::dense(std::move(view));
        }
        layer[fused] = Linear();
        continue;
      }
      for (const auto part : parts) {
        if (layer[part].empty()) {
          fail("{}: missing tensor '{}' (required by {} as config.json describes it)", origin.string(), fused_name,
               c.architecture);
        }
      }
    }
  }
  auto head = [&](Role role) {
    const auto it = head_linears.find(role);
    if (it == head_linears.end()) return Linear();
    return Linear::dense(std::move(it->second.first), std::move(it->second.second));
  };
  w.pooler = head(Role::pooler);
  w.classifier = head(Role::classifier);
  w.mlm_transform = head(Role::mlm_transform);
  if (c.arch == Arch::llama && w.output.empty()) w.output = w.token_embd;
  if (c.bert_head == BertHead::masked_lm && w.mlm_decoder.empty()) w.mlm_decoder = w.token_embd;

  for (const auto& [name, where] : ckpt.tensors) {
    if (!used.contains(name)) model.ignored_tensors.push_back(name);
  }
  for (const auto& d : dtypes) model.storage_dtype += (model.storage_dtype.empty() ? "" : "+") + d;
  for (const auto& f : ckpt.files) model.weight_files.push_back(f.path());
  model.has_weights = true;
}

}  // namespace

Tensor fused_dense_weight(const LayerWeights& layer, MatrixKind fused) {
  const auto parts = fused_parts(fused);
  int64_t rows = 0;
  bool adjacent = true;
  const float* next = nullptr;
  for (const auto part : parts) {
    const Linear& lin = layer[part];
    RS_ASSERT(lin.form() == Linear::Form::dense);
    if (next != nullptr && lin.weight().data != next) adjacent = false;
    next = lin.weight().data + lin.weight().numel();
    rows += lin.n_out();
  }
  const Tensor& first = layer[parts.front()].weight();
  if (adjacent) {
    Tensor view = first;
    view.shape = {rows, first.cols()};
    return view;
  }
  std::vector<float> values;
  values.reserve(static_cast<size_t>(rows * first.cols()));
  for (const auto part : parts) {
    const Tensor& t = layer[part].weight();
    values.insert(values.end(), t.data, t.data + t.numel());
  }
  return Tensor::owned({rows, first.cols()}, std::move(values));
}

Tensor fused_dense_bias(const LayerWeights& layer, MatrixKind fused) {
  const auto parts = fused_parts(fused);
  if (std::all_of(parts.begin(), parts.end(), [&](MatrixKind p) { return layer[p].bias().empty(); })) return {};
  std::vector<float> values;
  for (const auto part : parts) {
    const Linear& lin = layer[part];
    if (lin.bias().empty()) {
      values.insert(values.end(), static_cast<size_t>(lin.n_out()), 0.0f);
    } else {
      values.insert(values.end(), lin.bias().data, lin.bias().data + lin.bias().numel());
    }
  }
  const auto n = static_cast<int64_t>(values.size());
  return Tensor::owned({n}, std::move(values));
}

bool stored_split(const LayerWeights& layer, MatrixKind fused) {
  if (!layer[fused].empty()) return false;
  const auto parts = fused_parts(fused);
  return std::any_of(parts.begin(), parts.end(), [&](MatrixKind p) {
    return !layer[p].empty() && layer[p].form() != Linear::Form::dense;
  });
}

std::string hook_name(HookSite site, int64_t layer) {
  static constexpr std::array<const char*, 5> kNames = {"attn_in", "attn_ctx", "ffn_in", "ffn_act", "block_out"};
  return fmt::format("blk.{}.{}", layer, kNames[static_cast<size_t>(site)]);
}

const Tokenizer& Model::require_tokenizer() const {
  if (!tokenizer) {
    fail("{}: no tokenizer files (tokenizer.model, tokenizer.json or vocab.txt); this command needs text",
         dir.string());
  }
  return *tokenizer;
}

int64_t Model::n_decomposable_params() const {
  if (!has_weights) {
    int64_t n = 0;
    for (const auto& m : decomposable_matrices(config)) n += m.n_params();
    return n;
  }
  int64_t n = 0;
  for (const auto& layer : weights.layers) {
    for (const auto& lin : layer.linear) {
      if (!lin.empty()) n += lin.n_params() - (lin.bias().empty() ? 0 : lin.n_out());
    }
  }
  return n;
}

int64_t Model::n_params() const {
  if (!has_weights) return config_param_count(config);
  const auto& w = weights;
  int64_t n = 0;
  auto add = [&n](const Tensor& t) { n += t.empty() ? 0 : t.numel(); };
  add(w.token_embd);
  for (const auto& layer : w.layers) {
    for (const auto& lin : layer.linear) n += lin.n_params();
    add(layer.attn_norm);
    add(layer.attn_norm_bias);
    add(layer.ffn_norm);
    add(layer.ffn_norm_bias);
    add(layer.q_norm);
    add(layer.k_norm);
  }
  add(w.output_norm);
  if (w.output.data != w.token_embd.data) add(w.output);
  add(w.pos_embd);
  add(w.type_embd);
  add(w.embd_norm);
  add(w.embd_norm_bias);
  n += w.pooler.n_params() + w.classifier.n_params() + w.mlm_transform.n_params();
  add(w.mlm_norm);
  add(w.mlm_norm_bias);
  if (w.mlm_decoder.data != w.token_embd.data) add(w.mlm_decoder);
  add(w.mlm_bias);
  return n;
}

std::vector<std::pair<std::string, Tensor>> Model::named_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  if (!has_weights) fail("{}: no weights (shapes-only config.json): nothing to write", dir.string());
  const auto& w = weights;
  auto linear = [&](const Linear& lin, const std::string& module, bool is_bias) {
    if (is_bias) {
      if (!lin.bias().empty()) out.emplace_back(module + ".bias", lin.bias());
      return;
    }
    switch (lin.form()) {
      case Linear::Form::none: break;
      case Linear::Form::dense: out.emplace_back(module + ".weight", lin.weight()); break;
      case Linear::Form::tucker:
        out.emplace_back(module + ".U", lin.u());
        out.emplace_back(module + ".core", lin.core());
        out.emplace_back(module + ".V", lin.v());
        break;
      case Linear::Form::svd:
        out.emplace_back(module + ".U", lin.u());
        out.emplace_back(module + ".V", lin.v());
        break;
    }
  };
  for (const auto& spec : expected_tensors(config, bert_prefix)) {
    const auto module = spec.name.substr(0, spec.name.rfind('.'));
    const auto* layer = spec.layer >= 0 ? &w.layers[static_cast<size_t>(spec.layer)] : nullptr;
    auto pick = [&](const Tensor& weight, const Tensor& bias) {
      const Tensor& t = spec.is_bias ? bias : weight;
      if (!t.empty()) out.emplace_back(spec.name, t);
    };
    switch (spec.role) {
      case Role::matrix: {
        const MatrixKind kind = *spec.matrix;
        if (is_fused_kind(kind)) {
          // The fused tensor: factored as a whole, or its dense parts stacked back, or (a part
          // factored) absent, its parts written under MODULE.q, MODULE.k, ...
          if (!(*layer)[kind].empty()) {
            linear((*layer)[kind], module, spec.is_bias);
          } else if (!stored_split(*layer, kind)) {
            const Tensor t = spec.is_bias ? fused_dense_bias(*layer, kind) : fused_dense_weight(*layer, kind);
            if (!t.empty()) out.emplace_back(spec.name, t);
          }
          break;
        }
        if (const auto group = fused_group(config, kind); group && !stored_split(*layer, *group)) break;
        linear((*layer)[kind], module, spec.is_bias);
        break;
      }
      case Role::pooler: linear(w.pooler, module, spec.is_bias); break;
      case Role::classifier: linear(w.classifier, module, spec.is_bias); break;
      case Role::mlm_transform: linear(w.mlm_transform, module, spec.is_bias); break;
      case Role::token_embd: pick(w.token_embd, {}); break;
      case Role::pos_embd: pick(w.pos_embd, {}); break;
      case Role::type_embd: pick(w.type_embd, {}); break;
      case Role::embd_norm: pick(w.embd_norm, w.embd_norm_bias); break;
      case Role::attn_norm:
      case Role::attn_out_norm: pick(layer->attn_norm, layer->attn_norm_bias); break;
      case Role::ffn_norm:
      case Role::ffn_out_norm: pick(layer->ffn_norm, layer->ffn_norm_bias); break;
      case Role::q_norm: pick(layer->q_norm, {}); break;
      case Role::k_norm: pick(layer->k_norm, {}); break;
      case Role::output_norm: pick(w.output_norm, {}); break;
      case Role::output:
        if (w.output.data != w.token_embd.data) pick(w.output, {});
        break;
      case Role::mlm_norm: pick(w.mlm_norm, w.mlm_norm_bias); break;
      case Role::mlm_decoder:
        if (w.mlm_decoder.data != w.token_embd.data) pick(w.mlm_decoder, {});
        break;
      case Role::mlm_bias: pick(w.mlm_bias, {}); break;
    }
  }
  return out;
}

Model load_model(const std::filesystem::path& path, const LoadOptions& options) {
  if (!std::filesystem::exists(path)) fail("{}: no such file or directory", path.string());
  // A file is a model only as a bare config.json (shapes only); any other file (a .safetensors,
  // a tokenizer) is a mistaken path, not malformed JSON.
  if (!std::filesystem::is_directory(path) && path.extension() != ".json") {
    fail("{}: is a file, not a model directory (a checkpoint directory with config.json, or a bare config.json)",
         path.string());
  }
  Model model;
  const bool config_only = !std::filesystem::is_directory(path);
  model.dir = config_only ? path.parent_path() : path;
  model.config = read_model_config(path);

  if (options.weights && !config_only) {
    const auto single = model.dir / kSingleFile;
    const auto index = model.dir / kIndexFile;
    // Present as a name (a dangling link or a link loop included): opening it says what is wrong
    // with it, instead of the model silently loading without weights.
    const auto present = [](const std::filesystem::path& p) {
      std::error_code ec;
      return std::filesystem::exists(std::filesystem::symlink_status(p, ec));
    };
    if (present(index)) {
      auto ckpt = open_sharded(index);
      load_weights(model, ckpt, index);
    } else if (present(single)) {
      Checkpoint ckpt;
      ckpt.add_file(SafetensorsFile::open(single));
      ckpt.index_all();
      load_weights(model, ckpt, single);
    } else if (present(model.dir / "pytorch_model.bin")) {
      fail("{}: only a PyTorch pickle (pytorch_model.bin); rankscope reads safetensors (convert it with "
           "save_pretrained(safe_serialization=True))", model.dir.string());
    }
  }
  if (options.tokenizer) model.tokenizer = find_tokenizer(model.dir);
  return model;
}

}  // namespace rankscope
