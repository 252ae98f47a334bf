// Picks the tokenizer file of a model directory. Each reader fills SpecialTokens from its own
// file (SentencePiece's ids, tokenizer.json's added tokens and post-processor plus the
// tokenizer_config.json beside it, vocab.txt's bracketed names), so loading a file directly and
// finding it through its directory give the same tokenizer.
#include <fstream>
#include <iterator>
#include <string>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/tokenize/tokenizer.hpp"

namespace rankscope {

namespace {

constexpr const char* kSentencePieceFile = "tokenizer.model";
constexpr const char* kHfJsonFile = "tokenizer.json";
constexpr const char* kVocabFile = "vocab.txt";
constexpr const char* kConfigFile = "tokenizer_config.json";
// BERT checkpoints without a config are nearly always the uncased ones.
constexpr bool kDefaultLowerCase = true;

// do_lower_case from tokenizer_config.json, when the file exists and says so.
bool read_lower_case(const std::filesystem::path& config_path) {
  std::error_code ec;
  if (!std::filesystem::exists(config_path, ec)) return kDefaultLowerCase;
  if (!std::filesystem::is_regular_file(config_path, ec)) fail("{}: not a regular file", config_path.string());
  std::ifstream in(config_path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", config_path.string());
  const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const nlohmann::json config = parse_json_text(content, config_path.string());
  if (!config.is_object()) fail("{}: not a JSON object", config_path.string());
  if (!config.contains("do_lower_case") || config["do_lower_case"].is_null()) {
    return kDefaultLowerCase;
  }
  if (!config["do_lower_case"].is_boolean()) {
    fail("{}: do_lower_case is not true or false", config_path.string());
  }
  return config["do_lower_case"].get<bool>();
}

}  // namespace

std::unique_ptr<Tokenizer> find_tokenizer(const std::filesystem::path& model_dir) {
  std::error_code ec;
  const auto present = [&](const char* name) {
    return std::filesystem::exists(model_dir / name, ec);
  };
  if (present(kSentencePieceFile)) return load_sentencepiece(model_dir / kSentencePieceFile);
  if (present(kHfJsonFile)) return load_hf_tokenizer_json(model_dir / kHfJsonFile);
  if (present(kVocabFile)) {
    return load_wordpiece_vocab(model_dir / kVocabFile, read_lower_case(model_dir / kConfigFile));
  }
  return nullptr;
}

}  // namespace rankscope
