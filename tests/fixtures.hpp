// Builders of model directories for the tests: real checkpoints from ../shared re-written with a
// change (a dtype, a missing tensor, an edited config.json, shards), through the project's own
// safetensors writer.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/base/json_file.hpp"
#include "core/io/safetensors.hpp"

namespace rankscope::test {

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// Every tensor of a model directory's safetensors file(s), in fp32.
inline std::vector<NamedTensor> read_all_tensors(const std::filesystem::path& model_dir) {
  std::vector<std::filesystem::path> files;
  if (std::filesystem::exists(model_dir / "model.safetensors")) {
    files.push_back(model_dir / "model.safetensors");
  } else {
    const auto index = read_json_file(model_dir / "model.safetensors.index.json");
    std::set<std::string> shards;
    for (const auto& [name, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
    for (const auto& s : shards) files.push_back(model_dir / s);
  }
  std::vector<NamedTensor> out;
  for (const auto& f : files) {
    const auto st = SafetensorsFile::open(f);
    for (const auto& e : st.entries()) out.push_back({e.name, st.load(e)});
  }
  return out;
}

inline nlohmann::json read_json(const std::filesystem::path& path) { return read_json_file(path); }

inline void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

struct ModelCopy {
  DType dtype = DType::f32;
  int n_shards = 1;  // > 1: model.safetensors.index.json + model-0000k-of-0000n.safetensors
  std::function<void(std::vector<NamedTensor>&)> edit_tensors;
  std::function<void(nlohmann::json&)> edit_config;
  bool copy_tokenizer = true;
};

// Re-writes the model in `src` into `dst` (a fresh directory) as `how` says.
inline void copy_model(const std::filesystem::path& src, const std::filesystem::path& dst, const ModelCopy& how = {}) {
  std::filesystem::remove_all(dst);
  std::filesystem::create_directories(dst);
  auto config = read_json(src / "config.json");
  if (how.edit_config) how.edit_config(config);
  write_text(dst / "config.json", config.dump(2));
  if (how.copy_tokenizer) {
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.txt"}) {
      if (std::filesystem::exists(src / name)) std::filesystem::copy_file(src / name, dst / name);
    }
  }
  auto tensors = read_all_tensors(src);
  if (how.edit_tensors) how.edit_tensors(tensors);
  std::vector<std::vector<TensorToWrite>> shards(static_cast<size_t>(how.n_shards));
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i].tensor;
    shards[i * shards.size() / tensors.size()].push_back(
        {tensors[i].name, t.shape, std::span<const float>(t.data, static_cast<size_t>(t.numel())), how.dtype});
  }
  if (how.n_shards == 1) {
    write_safetensors(dst / "model.safetensors", shards[0], {{"format", "pt"}});
    return;
  }
  nlohmann::json index;
  index["metadata"] = nlohmann::json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05d.safetensors", s + 1, how.n_shards);
    write_safetensors(dst / name, shards[s], {{"format", "pt"}});
    for (const auto& t : shards[s]) index["weight_map"][t.name] = name;
  }
  write_text(dst / "model.safetensors.index.json", index.dump(2));
}

}  // namespace rankscope::test
