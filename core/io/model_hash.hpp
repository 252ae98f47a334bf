// Content hash of a model checkpoint: what results are recorded against, so a number is tied to the
// exact weights that produced it (a renamed or moved directory keeps its hash, an edited one does not).
#pragma once

#include <string>

#include "core/io/model.hpp"

namespace rankscope {

// 32 hex digits: XXH3-128 over config.json's bytes and then every weight file's bytes, in load
// order (file names excluded). A shapes-only model hashes config.json alone. The result is cached
// per Model directory for the life of the process.
std::string model_content_hash(const Model& model);

}  // namespace rankscope
