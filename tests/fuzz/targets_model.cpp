// Fuzz targets of the checkpoint side: safetensors files, .npy files, model directories
// (config.json, shard index, tensor roles, loading) and tokenizers.
#include <cmath>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/io/model.hpp"
#include "core/io/npy.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/tensor_roles.hpp"
#include "core/tokenize/byte_level.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "tests/fuzz/fuzz.hpp"

namespace rankscope::fuzz {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<float> values(Rng& rng, size_t n) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(static_cast<int64_t>(rng.below(2001)) - 1000) / 1000.0f;
  return v;
}

size_t safetensors_hot(const std::string& bytes) {
  if (bytes.size() < 8) return bytes.size();
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  return static_cast<size_t>(std::min<uint64_t>(len + 8 + 64, bytes.size()));
}

SeedFile binary_file(const std::string& path, std::string bytes, size_t hot = 0) {
  return seed_file(path, std::move(bytes), false, hot);
}

SeedFile json_file(const std::string& path, std::string bytes) { return seed_file(path, std::move(bytes), true); }

SeedFile link_file(const std::string& path, const fs::path& to) {
  SeedFile f;
  f.path = path;
  f.link_to = to;
  f.mutable_ = false;
  return f;
}

SeedFile safetensors_file(const std::string& path, std::string bytes) {
  const size_t hot = safetensors_hot(bytes);
  return binary_file(path, std::move(bytes), hot);
}

// A model directory written by the project's own writer from `config`: every tensor
// expected_tensors() lists, random values, split over `n_shards` files.
std::vector<SeedFile> generated_model(const std::string& name, const json& config, DType dtype, int n_shards) {
  const fs::path dir = seed_scratch(name);
  const std::string config_text = config.dump(2);
  write_file(dir / "config.json", config_text);
  const ModelConfig c = read_model_config(dir);
  Rng rng(std::hash<std::string>{}(name));
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (const auto& spec : expected_tensors(c)) {
    if (spec.role == Role::matrix && !spec.is_bias) {
      const auto module = spec.name.substr(0, spec.name.size() - 7);
      if (const auto f = c.factored.find(module); f != c.factored.end()) {
        shapes.push_back({module + ".U", {spec.shape[0], f->second.rank}});
        shapes.push_back({module + ".V", {spec.shape[1], f->second.rank}});
        if (f->second.method == "tucker") shapes.push_back({module + ".core", {f->second.rank, f->second.rank}});
        continue;
      }
    }
    shapes.push_back({spec.name, spec.shape});
  }
  std::vector<std::vector<float>> data;
  for (const auto& [n, shape] : shapes) {
    data.push_back(values(rng, static_cast<size_t>(std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>()))));
  }
  std::vector<SeedFile> files = {json_file("config.json", config_text)};
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  for (int s = 0; s < n_shards; ++s) {
    std::vector<TensorToWrite> tensors;
    const std::string file = n_shards == 1 ? "model.safetensors" : fmt::format("model-{:05}-of-{:05}.safetensors", s + 1, n_shards);
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (static_cast<int>(i * static_cast<size_t>(n_shards) / shapes.size()) != s) continue;
      tensors.push_back({shapes[i].first, shapes[i].second, data[i], dtype});
      index["weight_map"][shapes[i].first] = file;
    }
    write_safetensors(dir / file, tensors, {{"format", "pt"}});
    files.push_back(safetensors_file(file, read_file(dir / file)));
  }
  if (n_shards > 1) files.push_back(json_file("model.safetensors.index.json", index.dump(2)));
  return files;
}

json tiny_llama_config() {
  return {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 16}, {"hidden_size", 8},
          {"intermediate_size", 12}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
          {"num_key_value_heads", 1}, {"head_dim", 4}, {"max_position_embeddings", 32},
          {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
          {"torch_dtype", "float32"}, {"bos_token_id", 1}, {"eos_token_id", {2, 3}}, {"pad_token_id", nullptr},
          {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}}}};
}

json tiny_bert_config(const std::string& architecture) {
  return {{"architectures", {architecture}}, {"model_type", "bert"}, {"vocab_size", 20}, {"hidden_size", 8},
          {"intermediate_size", 16}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
          {"max_position_embeddings", 16}, {"type_vocab_size", 2}, {"layer_norm_eps", 1e-12},
          {"hidden_act", "gelu"}, {"id2label", {{"0", "negative"}, {"1", "positive"}}}, {"num_labels", 2},
          {"position_embedding_type", "absolute"}, {"pad_token_id", 0}};
}

// ---------------------------------------------------------------------------------------------
// Tokenizer seeds

const char* kBpeTokenizer = R"({"version":"1.0","truncation":null,"padding":null,
"added_tokens":[{"id":0,"content":"<unk>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
{"id":2,"content":"</s>","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true},
{"id":11,"content":"<pad>","single_word":true,"lstrip":false,"rstrip":false,"normalized":true,"special":false}],
"normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},{"type":"Replace","pattern":{"String":" "},"content":"\u2581"},{"type":"NFKC"}]},
"pre_tokenizer":null,
"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
"pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
"decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
"model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,"end_of_word_suffix":null,
"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,
"vocab":{"<unk>":0,"<s>":1,"</s>":2,"<0x0A>":3,"<0xC3>":4,"\u2581":5,"a":6,"b":7,"\u2581a":8,"ab":9,"\u2581ab":10},
"merges":["\u2581 a","a b",["\u2581a","b"]]}})";

const char* kMetaspaceTokenizer = R"({"added_tokens":[],
"normalizer":{"type":"Sequence","normalizers":[{"type":"Strip","strip_left":true,"strip_right":true},{"type":"Lowercase"},{"type":"StripAccents"},{"type":"NFD"}]},
"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"WhitespaceSplit"},{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":true}]},
"decoder":{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"always"},
"model":{"type":"BPE","unk_token":"<unk>","continuing_subword_prefix":"##","end_of_word_suffix":"</w>","fuse_unk":false,"byte_fallback":false,"ignore_merges":true,
"vocab":{"<unk>":0,"\u2581":1,"x":2,"##y</w>":3,"\u2581x":4,"y</w>":5,"\u2581xy</w>":6},"merges":["\u2581 x","\u2581x ##y</w>"]}})";

const char* kWordPieceTokenizer = R"({"added_tokens":[
{"id":0,"content":"[PAD]","special":true},{"id":1,"content":"[UNK]","special":true},{"id":2,"content":"[CLS]","special":true},
{"id":3,"content":"[SEP]","special":true},{"id":4,"content":"[MASK]","special":true,"lstrip":true}],
"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},
"pre_tokenizer":{"type":"BertPreTokenizer"},
"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],
"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}},
"decoder":{"type":"WordPiece","prefix":"##","cleanup":true},
"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
"vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"[MASK]":4,"hello":5,"world":6,"##s":7,"!":8,"a":9,"\u4e2d":10}}})";

const char* kBertProcessingTokenizer = R"({"added_tokens":[{"id":1,"content":"[UNK]","special":true}],
"normalizer":null,"pre_tokenizer":{"type":"WhitespaceSplit"},
"post_processor":{"type":"BertProcessing","cls":["[CLS]",2],"sep":["[SEP]",3]},
"decoder":null,
"model":{"continuing_subword_prefix":"##","unk_token":"[UNK]","vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"hi":4,"##!":5}}})";

// Byte-level BPE (Llama 3 / Qwen / GPT-2 form): the 256 byte characters, a few merges, added
// tokens with every flag, and `pre_tokenizer` given by the caller.
std::string byte_level_tokenizer(const json& pre_tokenizer, bool ignore_merges) {
  json vocab = json::object();
  for (int byte = 0; byte < 256; ++byte) {
    std::string piece;
    const char b = static_cast<char>(byte);
    tokenizer_detail::append_byte_level(piece, std::string_view(&b, 1));
    vocab[piece] = byte;
  }
  // Byte-level pieces: U+0120 is a space, U+010A a newline, U+00C3 U+00A9 the bytes of "é".
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"\u0120", "a"}, {"a", "b"}, {"\u0120a", "b"}, {"1", "2"}, {"'", "s"}, {"\u010a", "\u010a"}, {"\u00c3", "\u00a9"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [left, right] : merges) {
    merge_list.push_back({left, right});
    if (!vocab.contains(left + right)) vocab[left + right] = next++;
  }
  const json added = json::array({
      {{"id", next}, {"content", "<|begin_of_text|>"}, {"special", true}, {"normalized", false}},
      {{"id", next + 1}, {"content", "<|end_of_text|>"}, {"special", true}, {"normalized", false}, {"rstrip", true}},
      {{"id", next + 2}, {"content", "<tool_call>"}, {"special", false}, {"normalized", true}, {"lstrip", true}},
      {{"id", next + 3}, {"content", "ab"}, {"special", false}, {"single_word", true}, {"normalized", false}}});
  const json root = {
      {"version", "1.0"}, {"added_tokens", added}, {"normalizer", {{"type", "NFC"}}}, {"pre_tokenizer", pre_tokenizer},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}},
          {{"type", "TemplateProcessing"},
           {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
                       {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                       {{"SpecialToken", {{"id", "<|end_of_text|>"}, {"type_id", 0}}}}}},
           {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {next}}, {"tokens", {"<|begin_of_text|>"}}}}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                 {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merge_list}}}};
  return root.dump();
}

json split_step(const std::string& pattern, const std::string& behavior, bool invert, bool literal = false) {
  return {{"type", "Split"}, {"pattern", {{literal ? "String" : "Regex", pattern}}}, {"behavior", behavior}, {"invert", invert}};
}

// Llama 3's pre-tokenizer (Split with its pattern, then ByteLevel without GPT-2's).
json llama3_pre_tokenizer() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {split_step(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
                       "Isolated", false),
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
}

// Every Split behavior, invert, a literal pattern, Digits and Whitespace, and the regular
// expression constructs the mutator's dictionary should hold (lookarounds, classes, \Q..\E,
// POSIX classes, empty matches, Unicode properties).
json split_zoo_pre_tokenizer() {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {split_step(R"(\s*[\r\n]+|(?<=a)b|[[:punct:]]+|\Q.*\E|x*)", "MergedWithPrevious", false),
            split_step("-", "MergedWithNext", true, true), split_step(R"(\p{Han}|\p{Lu}\w*)", "Contiguous", true),
            split_step(R"([^\W\d]+?)", "Removed", false), {{"type", "Digits"}, {"individual_digits", true}},
            {{"type", "Whitespace"}}, {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}}}};
}

const char* kVocabTxt = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##s\n!\na\n\xe4\xb8\xad\n";
const char* kTokenizerConfig =
    R"({"do_lower_case": true, "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}, "unk_token": "<unk>", "pad_token": null, "cls_token": "[CLS]"})";

// Exercises a loaded tokenizer the way the evaluators do: encode (special tokens matched or
// not, added or not), decode (special tokens kept or not), pieces.
void exercise(const Tokenizer& tok) {
  static const std::vector<std::string> kTexts = {
      "Once upon a time, Lily saw a cat.", "h\xc3\xa9llo w\xc3\xb6rld \xe4\xbd\xa0\xe5\xa5\xbd [CLS] <s> </s> [MASK] \xff\xfe",
      "", std::string(300, 'a') + " ab\n\tab", "\xe2\x96\x81\xe2\x96\x81 x y",
      "<|begin_of_text|>IT'S ab 12345\r\n\n  \xc2\x85 e\xcc\x81<tool_call>  <|end_of_text|> x-y \xe2\x82"};
  for (const auto& text : kTexts) {
    const auto ids = tok.encode(text);
    tok.decode(ids);
    tok.decode(tok.encode(text, {.parse_special = false, .add_special_tokens = true}), {.skip_special = false});
  }
  std::vector<TokenId> all;
  for (int32_t id = 0; id < std::min<int32_t>(tok.vocab_size(), 64); ++id) {
    all.push_back(id);
    tok.piece(id);
  }
  tok.decode(all);
}

void touch(const Tensor& t) {
  volatile float sink = 0;
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; i += 61) sink = sink + t.data[i];
  if (n > 0) sink = sink + t.data[n - 1];
}

}  // namespace

Target safetensors_target() {
  Target t;
  t.name = "safetensors";
  t.description = "SafetensorsFile::open, load and raw of every tensor (core/safetensors.*, core/mapped_file.*)";
  t.seeds = [](const fs::path& shared) {
    std::vector<Seed> seeds;
    const fs::path dir = seed_scratch("safetensors");
    Rng rng(7);
    const auto a = values(rng, 24), b = values(rng, 6), c = values(rng, 5);
    const std::vector<TensorToWrite> tensors = {{"w", {4, 6}, a, DType::f32}, {"h", {6}, b, DType::f16},
                                                {"bf", {5, 1}, c, DType::bf16}, {"empty", {0, 3}, {}, DType::f32}};
    write_safetensors(dir / "gen.safetensors", tensors, {{"format", "pt"}, {"note", "seed"}});
    seeds.push_back({"generated F32/F16/BF16", {safetensors_file("model.safetensors", read_file(dir / "gen.safetensors"))}, 4});
    // Other dtypes the format defines, unaligned data, a scalar.
    const std::string header =
        R"({"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"b":{"dtype":"BOOL","shape":[3],"data_offsets":[16,19]},)"
        R"("odd":{"dtype":"F32","shape":[],"data_offsets":[19,23]},"__metadata__":{"k":"v"}})";
    std::string raw(8, '\0');
    for (size_t i = 0; i < 8; ++i) raw[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    raw += header + std::string(23, '\x01');
    seeds.push_back({"generated I64/BOOL/scalar", {safetensors_file("model.safetensors", raw)}, 2});
    for (const auto& rel : {"stories260K-hf/model.safetensors", "bert-tiny-sst2/model-00002-of-00002.safetensors"}) {
      const fs::path path = shared / "data" / rel;
      if (fs::exists(path)) seeds.push_back({rel, {safetensors_file("model.safetensors", read_file(path))}, 2});
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    for (const auto& entry : fs::directory_iterator(dir)) {
      const auto file = SafetensorsFile::open(entry.path());
      for (const auto& e : file.entries()) {
        file.raw(e);
        if (e.dtype) touch(file.load(e));
      }
      file.find("w");
    }
  };
  t.default_cases = 5000;
  return t;
}

Target npy_target() {
  Target t;
  t.name = "npy";
  t.description = "read_npy (core/npy.*)";
  t.seeds = [](const fs::path& shared) {
    std::vector<Seed> seeds;
    const fs::path dir = seed_scratch("npy");
    Rng rng(11);
    const auto v = values(rng, 12);
    write_npy(dir / "a.npy", {3, 4}, v.data());
    seeds.push_back({"generated <f4 [3, 4]", {binary_file("a.npy", read_file(dir / "a.npy"), 128)}, 3});
    write_npy(dir / "b.npy", {12}, v.data());
    seeds.push_back({"generated <f4 [12]", {binary_file("a.npy", read_file(dir / "b.npy"), 128)}, 2});
    // Version 2.0 header, float64 data.
    std::string header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }";
    header.append(64 - (12 + header.size() + 1) % 64, ' ');
    header += '\n';
    std::string f8 = std::string("\x93NUMPY\x02\x00", 8);
    for (size_t i = 0; i < 4; ++i) f8 += static_cast<char>((header.size() >> (8 * i)) & 0xff);
    f8 += header;
    const double d[2] = {1.5, -2.25};
    f8.append(reinterpret_cast<const char*>(d), sizeof d);
    seeds.push_back({"generated v2 <f8", {binary_file("a.npy", f8, 128)}, 2});
    for (const auto& rel : {"stories260K-hf/golden/logits_once.npy", "bert-tiny-sst2/golden/dev_logits.npy"}) {
      const fs::path path = shared / "data" / rel;
      if (fs::exists(path) && fs::file_size(path) < (1u << 20)) {
        seeds.push_back({rel, {binary_file("a.npy", read_file(path), 128)}, 1});
      }
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    for (const auto& entry : fs::directory_iterator(dir)) read_npy(entry.path());
  };
  t.default_cases = 5000;
  return t;
}

Target model_target() {
  Target t;
  t.name = "model";
  t.description = "load_model: config.json, shard index, tensor roles, shapes (core/model_config.*, tensor_roles.*, model.cpp)";
  t.seeds = [](const fs::path& shared) {
    std::vector<Seed> seeds;
    seeds.push_back({"generated llama", generated_model("llama", tiny_llama_config(), DType::f32, 1), 4});
    json factored = tiny_llama_config();
    factored["tie_word_embeddings"] = true;
    factored["attention_bias"] = true;
    factored["rankscope"] = {{"config", "L0:up=2@svd;L1:q=2@tucker"},
                             {"factored", {{"model.layers.0.mlp.up_proj", {{"method", "svd"}, {"rank", 2}}},
                                           {"model.layers.1.self_attn.q_proj", {{"method", "tucker"}, {"rank", 2}}}}}};
    seeds.push_back({"generated factored llama", generated_model("factored", factored, DType::f32, 1), 3});
    seeds.push_back({"generated bert classifier, 2 shards",
                     generated_model("bert", tiny_bert_config("BertForSequenceClassification"), DType::f32, 2), 3});
    json mlm = tiny_bert_config("BertForMaskedLM");
    mlm["torch_dtype"] = "bfloat16";
    seeds.push_back({"generated bert MLM bf16", generated_model("mlm", mlm, DType::bf16, 1), 2});
    json bare = tiny_bert_config("BertModel");
    bare.erase("architectures");
    bare["torch_dtype"] = "float16";
    seeds.push_back({"generated bare bert f16", generated_model("bare", bare, DType::f16, 1), 2});
    // Real configs with their real (unmutated) weights: config.json and the index are mutated.
    const fs::path stories = shared / "data" / "stories260K-hf";
    if (fs::exists(stories / "config.json")) {
      seeds.push_back({"stories260K-hf", {json_file("config.json", read_file(stories / "config.json")),
                                           link_file("model.safetensors", stories / "model.safetensors"),
                                           link_file("tokenizer.json", stories / "tokenizer.json")}, 3});
    }
    const fs::path bert = shared / "data" / "bert-tiny-sst2";
    if (fs::exists(bert / "config.json")) {
      seeds.push_back({"bert-tiny-sst2", {json_file("config.json", read_file(bert / "config.json")),
                                           json_file("model.safetensors.index.json", read_file(bert / "model.safetensors.index.json")),
                                           link_file("model-00001-of-00002.safetensors", bert / "model-00001-of-00002.safetensors"),
                                           link_file("model-00002-of-00002.safetensors", bert / "model-00002-of-00002.safetensors"),
                                           link_file("vocab.txt", bert / "vocab.txt")}, 2});
    }
    for (const char* name : {"llama-2-7b", "llama-3-8b", "bert-base-uncased"}) {
      const fs::path cfg = shared / "configs" / name / "config.json";
      if (fs::exists(cfg)) seeds.push_back({std::string("configs/") + name, {json_file("config.json", read_file(cfg))}, 1});
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    const Model model = load_model(dir);
    model.n_params();
    model.n_decomposable_params();
    // named_tensors() indexes the layers of the weights: only for a model that has them.
    if (model.has_weights) {
      for (const auto& [name, tensor] : model.named_tensors()) touch(tensor);
    }
    decomposable_matrices(model.config);
    config_param_count(model.config);
    if (model.tokenizer) model.tokenizer->encode("Once upon a time");
    // The shapes-only path of `rankscope info config.json`.
    std::error_code ec;
    if (fs::is_regular_file(dir / "config.json", ec)) {
      const Model shapes = load_model(dir / "config.json", {.weights = false, .tokenizer = false});
      shapes.n_params();
      shapes.n_decomposable_params();
    }
  };
  t.default_cases = 5000;
  return t;
}

Target tokenizer_target() {
  Target t;
  t.name = "tokenizer";
  t.description = "tokenizer.json (byte-level BPE included), vocab.txt, tokenizer.model, tokenizer_config.json (core/tokenize/*)";
  t.seeds = [](const fs::path& shared) {
    std::vector<Seed> seeds;
    seeds.push_back({"generated BPE tokenizer.json", {json_file("tokenizer.json", kBpeTokenizer),
                                                      json_file("tokenizer_config.json", kTokenizerConfig)}, 4});
    seeds.push_back({"generated Metaspace BPE tokenizer.json", {json_file("tokenizer.json", kMetaspaceTokenizer)}, 3});
    seeds.push_back({"generated WordPiece tokenizer.json", {json_file("tokenizer.json", kWordPieceTokenizer)}, 3});
    seeds.push_back({"generated BertProcessing tokenizer.json", {json_file("tokenizer.json", kBertProcessingTokenizer)}, 2});
    seeds.push_back({"generated vocab.txt", {binary_file("vocab.txt", kVocabTxt), json_file("tokenizer_config.json", kTokenizerConfig)}, 3});
    seeds.push_back({"generated byte-level (Llama 3 pre-tokenizer) tokenizer.json",
                     {json_file("tokenizer.json", byte_level_tokenizer(llama3_pre_tokenizer(), true))}, 4});
    seeds.push_back({"generated byte-level (Split zoo) tokenizer.json",
                     {json_file("tokenizer.json", byte_level_tokenizer(split_zoo_pre_tokenizer(), false))}, 3});
    // A pattern that backtracks catastrophically on a run of a's: PCRE2's match limit must stop it.
    seeds.push_back({"generated byte-level (catastrophic Split) tokenizer.json",
                     {json_file("tokenizer.json", byte_level_tokenizer(split_step("(a+)+$", "Isolated", false), false))}, 1});
    // The byte-level references made by the tokenizers library (GPT-2, Llama 3, Qwen forms).
    for (const char* name : {"gpt2", "llama3", "qwen"}) {
      const fs::path ref = fs::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs" / fmt::format("tokenizer_{}/tokenizer.json", name);
      if (fs::exists(ref)) seeds.push_back({fmt::format("hf-refs tokenizer_{} tokenizer.json", name), {json_file("tokenizer.json", read_file(ref))}, 2});
    }
    const fs::path data = shared / "data";
    auto add = [&](const char* label, const char* rel, const char* as, bool is_json, unsigned weight) {
      if (!fs::exists(data / rel)) return;
      SeedFile f = is_json ? json_file(as, read_file(data / rel)) : binary_file(as, read_file(data / rel), 4096);
      seeds.push_back({label, {std::move(f)}, weight});
    };
    add("stories260K-hf tokenizer.json", "stories260K-hf/tokenizer.json", "tokenizer.json", true, 4);
    add("bert-tiny-sst2 tokenizer.json", "bert-tiny-sst2/tokenizer.json", "tokenizer.json", true, 1);
    add("bert-uncased vocab.txt", "bert-uncased-vocab/vocab.txt", "vocab.txt", false, 1);
    add("llama2 tokenizer.model", "llama2-tokenizer/tokenizer.model", "tokenizer.model", false, 1);
    if (fs::exists(data / "stories260K-hf/tokenizer_config.json")) {
      seeds.push_back({"stories260K-hf tokenizer_config.json",
                       {json_file("tokenizer_config.json", read_file(data / "stories260K-hf/tokenizer_config.json")),
                        link_file("tokenizer.json", data / "stories260K-hf/tokenizer.json")}, 1});
    }
    return seeds;
  };
  t.run = [](const fs::path& dir) {
    if (fs::exists(fs::symlink_status(dir / "tokenizer.json"))) exercise(*load_hf_tokenizer_json(dir / "tokenizer.json"));
    if (fs::exists(fs::symlink_status(dir / "vocab.txt"))) exercise(*load_wordpiece_vocab(dir / "vocab.txt", true));
    if (fs::exists(fs::symlink_status(dir / "tokenizer.model"))) exercise(*load_sentencepiece(dir / "tokenizer.model"));
    if (const auto tok = find_tokenizer(dir)) exercise(*tok);
  };
  return t;
}

}  // namespace rankscope::fuzz
