#include "core/io/model.hpp"

#include <fstream>
#include <map>
#include <set>
#include <sstream>

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
      if (!spec.required) continue;
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
      case Role::matrix: linear((*layer)[*spec.matrix], module, spec.is_bias); break;
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
