#include "core/io/model_hash.hpp"

#include <map>
#include <mutex>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/base/error.hpp"
#include "core/base/mapped_file.hpp"

namespace rankscope {

std::string model_content_hash(const Model& model) {
  static std::mutex mutex;
  static std::map<std::string, std::string> cache;
  const std::string key = model.dir.string();
  {
    std::lock_guard lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  auto add_file = [&](const std::filesystem::path& path) {
    const auto file = MappedFile::open(path);
    XXH3_128bits_update(state, file->bytes().data(), file->size());
  };
  const auto config = std::filesystem::is_directory(model.dir) ? model.dir / "config.json" : model.dir;
  try {
    add_file(config);
    for (const auto& f : model.weight_files) add_file(f);
  } catch (...) {
    XXH3_freeState(state);
    throw;
  }
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  std::string hex = fmt::format("{:016x}{:016x}", h.high64, h.low64);
  std::lock_guard lock(mutex);
  cache[key] = hex;
  return hex;
}

}  // namespace rankscope
