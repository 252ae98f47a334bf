// Tokenizers against independent references: llama.cpp's tokenizer test vectors (SentencePiece
// and BERT), Hugging Face transformers' ids for stories260K's tokenizer.json and for BERT on
// SST-2, plus round trips and the errors bad files must give.
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "tests/test_support.hpp"

using rankscope::TokenId;
using rankscope::test::scratch_dir;
using rankscope::test::shared_data;

namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::filesystem::path& path, std::string_view content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
  REQUIRE(out);
}

nlohmann::json read_json(const std::filesystem::path& path) {
  return nlohmann::json::parse(read_file(path));
}

struct VocabTest {
  std::string text;
  std::vector<TokenId> ids;
};

// llama.cpp's test-tokenizer-0 format: `.inp` holds the texts, each followed by the line
// "__ggml_vocab_test__" (so texts are separated by "\n__ggml_vocab_test__\n"); `.out` holds one
// line of space-separated ids per text, in the same order.
std::vector<VocabTest> read_ggml_vocab_tests(const std::filesystem::path& inp,
                                             const std::filesystem::path& out) {
  const std::string raw = read_file(inp);
  const std::string separator = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < raw.size();) {
    const size_t next = raw.find(separator, pos);
    if (next == std::string::npos) {
      texts.push_back(raw.substr(pos));
      break;
    }
    texts.push_back(raw.substr(pos, next - pos));
    pos = next + separator.size();
  }
  std::vector<std::vector<TokenId>> id_lines;
  std::istringstream lines(read_file(out));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::vector<TokenId> ids;
    for (TokenId id = 0; fields >> id;) ids.push_back(id);
    id_lines.push_back(std::move(ids));
  }
  REQUIRE(texts.size() == id_lines.size());
  std::vector<VocabTest> tests;
  for (size_t i = 0; i < texts.size(); ++i) tests.push_back({texts[i], id_lines[i]});
  return tests;
}

std::vector<TokenId> ids_of(const nlohmann::json& array) {
  return array.get<std::vector<TokenId>>();
}

// Runs `load` and returns the message of the rankscope::Error it must throw.
template <typename Load>
std::string error_of(Load&& load) {
  try {
    load();
  } catch (const rankscope::Error& e) {
    return e.what();
  }
  FAIL("no rankscope::Error thrown");
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SentencePiece (Llama 2)

TEST_CASE("SentencePiece tokenizer.model reproduces llama.cpp's llama-spm vectors", "[tokenizer]") {
  const auto model = shared_data("llama2-tokenizer/tokenizer.model");
  const auto inp = shared_data("llama-vocab-gguf/ggml-vocab-llama-spm.gguf.inp");
  RS_REQUIRE_SHARED(model);
  RS_REQUIRE_SHARED(inp);
  const auto tok = rankscope::load_sentencepiece(model);
  CHECK(tok->kind() == "sentencepiece");
  CHECK(tok->vocab_size() == 32000);
  CHECK(tok->special().bos == 1);
  CHECK(tok->special().eos == 2);
  CHECK(tok->special().unk == 0);
  CHECK(tok->piece(29871) == "\xE2\x96\x81");
  CHECK(tok->piece(13) == "<0x0A>");

  const auto tests =
      read_ggml_vocab_tests(inp, shared_data("llama-vocab-gguf/ggml-vocab-llama-spm.gguf.out"));
  CHECK(tests.size() == 46);
  for (const VocabTest& test : tests) {
    INFO("text: \"" << test.text << "\"");
    CHECK(tok->encode(test.text) == test.ids);
    // Llama's SentencePiece model has an identity normalizer and byte fallback: lossless.
    CHECK(tok->decode(test.ids) == test.text);
  }
}

TEST_CASE("SentencePiece decode skips BOS/EOS", "[tokenizer]") {
  const auto model = shared_data("llama2-tokenizer/tokenizer.model");
  RS_REQUIRE_SHARED(model);
  const auto tok = rankscope::load_sentencepiece(model);
  std::vector<TokenId> ids = tok->encode("Hello world");
  CHECK(ids == std::vector<TokenId>{15043, 3186});
  ids.insert(ids.begin(), 1);
  ids.push_back(2);
  CHECK(tok->decode(ids) == "Hello world");
  CHECK_THROWS_AS(tok->decode(std::vector<TokenId>{32000}), rankscope::Error);
  CHECK_THROWS_AS(tok->piece(-1), rankscope::Error);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json, BPE with byte fallback (stories260K)

TEST_CASE("tokenizer.json BPE matches transformers on stories260K's tests", "[tokenizer]") {
  const auto json_file = shared_data("stories260K-hf/tokenizer.json");
  const auto golden = shared_data("stories260K-hf/golden/tokenizer_tests.json");
  RS_REQUIRE_SHARED(json_file);
  RS_REQUIRE_SHARED(golden);
  const auto tok = rankscope::load_hf_tokenizer_json(json_file);
  CHECK(tok->kind() == "hf-bpe");
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->special().bos == 1);
  CHECK(tok->special().eos == 2);
  CHECK(tok->special().unk == 0);
  CHECK(tok->piece(13) == "<0x0A>");

  const auto tests = read_json(golden).at("tests");
  REQUIRE(tests.size() == 13);
  for (const auto& test : tests) {
    const auto text = test.at("text").get<std::string>();
    INFO("text: \"" << text << "\"");
    const auto expected = ids_of(test.at("ids"));
    CHECK(tok->encode(text) == expected);
    if (test.at("decode_roundtrip").get<bool>()) {
      CHECK(tok->decode(expected) == text);
      CHECK(tok->decode(expected) == test.at("hf_decode").get<std::string>());
    }
  }
}

TEST_CASE("tokenizer.json BPE maps special-token text to special ids", "[tokenizer]") {
  const auto json_file = shared_data("stories260K-hf/tokenizer.json");
  RS_REQUIRE_SHARED(json_file);
  const auto tok = rankscope::load_hf_tokenizer_json(json_file);
  // "<s>" and "</s>" in raw text are added tokens; each text segment between them gets its
  // own "▁" prefix (HF's Prepend normalizer runs per segment), hence the doubled 410.
  const auto ids = tok->encode("<s> is not special here </s>");
  REQUIRE(ids.size() == 17);
  CHECK(ids.front() == 1);
  CHECK(ids[1] == 410);
  CHECK(ids[2] == 410);
  CHECK(ids.back() == 2);
  // Decoding skips them; "<unk>" is kept so lost text stays visible.
  CHECK(tok->decode(std::vector<TokenId>{1, 403, 407, 2}) == "Once upon");
  CHECK(tok->encode("<unk>") == std::vector<TokenId>{0});
  CHECK(tok->decode(std::vector<TokenId>{0}) == "<unk>");
}

TEST_CASE("tokenizer.json BPE encodes 50k characters of TinyStories like transformers",
          "[tokenizer]") {
  const auto json_file = shared_data("stories260K-hf/tokenizer.json");
  const auto text_file = shared_data("tinystories/tinystories_val.txt");
  const auto golden = shared_data("stories260K-hf/golden/tinystories_val_50k_ids.json");
  RS_REQUIRE_SHARED(json_file);
  RS_REQUIRE_SHARED(text_file);
  RS_REQUIRE_SHARED(golden);
  const auto tok = rankscope::load_hf_tokenizer_json(json_file);
  const auto expected = read_json(golden);
  const auto n_chars = expected.at("n_chars").get<size_t>();
  // The golden file counts Python characters; the file is ASCII that far, so bytes == chars.
  const std::string text = read_file(text_file).substr(0, n_chars);
  for (char c : text) REQUIRE(static_cast<unsigned char>(c) < 0x80);

  // Its speed (a linked-list-and-heap merge, linear in the text) is measured by bench/tokenize.
  const auto ids = tok->encode(text);
  REQUIRE(ids.size() == expected.at("n_tokens").get<size_t>());
  CHECK(ids == ids_of(expected.at("ids")));
  CHECK(tok->decode(ids) == text);
}

namespace {

// stories260K's tokenizer.json with `edit` applied, written to a scratch directory.
template <typename Edit>
std::unique_ptr<rankscope::Tokenizer> edited_stories_tokenizer(const std::string& name,
                                                               Edit&& edit) {
  auto root = read_json(shared_data("stories260K-hf/tokenizer.json"));
  edit(root);
  const auto path = scratch_dir(name) / "tokenizer.json";
  write_file(path, root.dump());
  return rankscope::load_hf_tokenizer_json(path);
}

}  // namespace

TEST_CASE("tokenizer.json BPE variants: string merges, Metaspace, unk handling", "[tokenizer]") {
  const auto json_file = shared_data("stories260K-hf/tokenizer.json");
  RS_REQUIRE_SHARED(json_file);
  const auto reference = rankscope::load_hf_tokenizer_json(json_file);
  const std::vector<std::string> texts = {
      "Once upon a time",
      " leading space",
      "double  space and   triple",
      "New\nline\n\nparagraph\n",
      "caf\xC3\xA9 na\xC3\xAFve \xF0\x9F\x98\x80 \xE2\x82\xAC" "5",
      "Lily's mom said, \"Don't worry.\""};

  SECTION("merges written as \"a b\" strings give the same ids as [a, b] pairs") {
    const auto tok = edited_stories_tokenizer("hf_string_merges", [](nlohmann::json& root) {
      auto& merges = root["model"]["merges"];
      for (auto& merge : merges) {
        merge = merge[0].get<std::string>() + " " + merge[1].get<std::string>();
      }
    });
    for (const auto& text : texts) CHECK(tok->encode(text) == reference->encode(text));
  }

  SECTION("Metaspace pre-tokenizer (transformers' newer Llama form) matches Prepend+Replace") {
    const auto tok = edited_stories_tokenizer("hf_metaspace", [](nlohmann::json& root) {
      root["normalizer"] = nullptr;
      root["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                               {"prepend_scheme", "first"}, {"split", false}};
      root["decoder"] = {{"type", "Sequence"}, {"decoders", {{{"type", "Metaspace"},
                          {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}},
                          {{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
    });
    for (const auto& text : texts) {
      INFO("text: \"" << text << "\"");
      const auto ids = tok->encode(text);
      if (text.starts_with(' ')) {
        // Metaspace adds no "▁" to text that already starts with one (a space), unlike Prepend.
        const auto prepended = reference->encode(text);
        CHECK(std::vector<TokenId>(prepended.begin() + 1, prepended.end()) == ids);
        continue;
      }
      CHECK(ids == reference->encode(text));
      CHECK(tok->decode(ids) == reference->decode(ids));
    }
    // "first": only text at the very start of the input gets the prefix, not the text after
    // a special token (one "▁" fewer than the Prepend form).
    const auto after_special = tok->encode("<s> is");
    const auto with_prepend = reference->encode("<s> is");
    CHECK(after_special.size() + 1 == with_prepend.size());
  }

  SECTION("Metaspace split keeps merges inside words") {
    const auto tok = edited_stories_tokenizer("hf_metaspace_split", [](nlohmann::json& root) {
      root["normalizer"] = nullptr;
      root["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                               {"prepend_scheme", "always"}, {"split", true}};
    });
    // "▁▁" cannot form across the split, so two spaces are two "▁" (410) tokens either way,
    // and ordinary text is unchanged.
    CHECK(tok->encode("Once upon a time") == reference->encode("Once upon a time"));
    CHECK(tok->encode("a  b") == reference->encode("a  b"));
  }

  SECTION("without byte fallback, unknown characters become unk, fused or not") {
    const auto fused = edited_stories_tokenizer("hf_fuse_unk", [](nlohmann::json& root) {
      root["model"]["byte_fallback"] = false;
      root["model"]["fuse_unk"] = true;
    });
    const auto unfused = edited_stories_tokenizer("hf_no_fuse_unk", [](nlohmann::json& root) {
      root["model"]["byte_fallback"] = false;
      root["model"]["fuse_unk"] = false;
    });
    const std::string two_emoji = "\xF0\x9F\x98\x80\xF0\x9F\x98\x80";
    const auto fused_ids = fused->encode("a" + two_emoji);
    const auto unfused_ids = unfused->encode("a" + two_emoji);
    REQUIRE(fused_ids.size() >= 2);
    CHECK(fused_ids.back() == 0);
    CHECK(fused_ids[fused_ids.size() - 2] != 0);
    CHECK(unfused_ids.size() == fused_ids.size() + 1);
    CHECK(unfused_ids.back() == 0);
    CHECK(unfused_ids[unfused_ids.size() - 2] == 0);
  }
}

// ---------------------------------------------------------------------------------------------
// BERT WordPiece

namespace {

void check_sst2_rows(const rankscope::Tokenizer& tok) {
  const auto golden = read_json(shared_data("bert-tiny-sst2/golden/dev_first32.json"));
  const auto& items = golden.at("items");
  REQUIRE(items.size() == 32);
  for (const auto& item : items) {
    const auto sentence = item.at("sentence").get<std::string>();
    INFO("sentence: \"" << sentence << "\"");
    std::vector<TokenId> ids{*tok.special().cls};
    for (TokenId id : tok.encode(sentence)) ids.push_back(id);
    ids.push_back(*tok.special().sep);
    CHECK(ids == ids_of(item.at("input_ids")));
    std::vector<std::string> tokens;
    for (TokenId id : ids) tokens.push_back(tok.piece(id));
    CHECK(tokens == item.at("tokens").get<std::vector<std::string>>());
  }
}

}  // namespace

TEST_CASE("WordPiece vocab.txt matches transformers' BertTokenizer on SST-2 dev", "[tokenizer]") {
  const auto vocab = shared_data("bert-tiny-sst2/vocab.txt");
  RS_REQUIRE_SHARED(vocab);
  const auto tok = rankscope::load_wordpiece_vocab(vocab, true);
  CHECK(tok->kind() == "wordpiece");
  CHECK(tok->vocab_size() == 30522);
  CHECK(tok->special().cls == 101);
  CHECK(tok->special().sep == 102);
  CHECK(tok->special().pad == 0);
  CHECK(tok->special().unk == 100);
  CHECK(tok->special().mask == 103);
  check_sst2_rows(*tok);
}

TEST_CASE("WordPiece tokenizer.json matches transformers' BertTokenizer on SST-2 dev",
          "[tokenizer]") {
  const auto json_file = shared_data("bert-tiny-sst2/tokenizer.json");
  RS_REQUIRE_SHARED(json_file);
  const auto tok = rankscope::load_hf_tokenizer_json(json_file);
  CHECK(tok->kind() == "wordpiece");
  CHECK(tok->vocab_size() == 30522);
  CHECK(tok->special().cls == 101);
  CHECK(tok->special().sep == 102);
  CHECK(tok->special().pad == 0);
  CHECK(tok->special().mask == 103);
  check_sst2_rows(*tok);
}

TEST_CASE("WordPiece basic tokenizer: accents, CJK, punctuation, specials, decode", "[tokenizer]") {
  const auto vocab = shared_data("bert-tiny-sst2/vocab.txt");
  RS_REQUIRE_SHARED(vocab);
  const auto tok = rankscope::load_wordpiece_vocab(vocab, true);
  // "Äpfel": lower-cased and stripped of its umlaut; "½" stays (NFD does not decompose it).
  CHECK(tok->encode("\xC3\x84pfel") == std::vector<TokenId>{9706, 7959, 2140});
  CHECK(tok->encode("ied 4 \xC2\xBD months") ==
        std::vector<TokenId>{29464, 2094, 1018, 1092, 2706});
  // Literal special-token text maps to its id; lower-case "[cls]" is ordinary text.
  CHECK(tok->encode("[CLS] hi [SEP]") == std::vector<TokenId>{101, 7632, 102});
  CHECK(tok->encode("[cls]").size() == 4);
  // Python's str.lower turns a word-final capital sigma into the final form ς, which the
  // vocabulary holds apart from σ: "ΟΔΟΣ" ends in "##ος" (15297), "ΣΟΣ" reads as "σος".
  const auto final_sigma = tok->encode("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3");
  REQUIRE_FALSE(final_sigma.empty());
  CHECK(final_sigma.back() == 15297);
  CHECK(tok->piece(15297) == "##\xCE\xBF\xCF\x82");
  CHECK(tok->encode("\xCE\xA3\xCE\x9F\xCE\xA3") != tok->encode("\xCF\x83\xCE\xBF\xCF\x83"));
  CHECK(tok->encode("\xCE\xA3\xCE\x9F\xCE\xA3") == tok->encode("\xCF\x83\xCE\xBF\xCF\x82"));
  // A word longer than 100 characters is one [UNK].
  CHECK(tok->encode(std::string(101, 'a')) == std::vector<TokenId>{100});
  const std::vector<TokenId> ids = tok->encode("Unflinchingly bleak, and desperate!");
  CHECK(tok->decode(ids) == "unflinchingly bleak , and desperate !");
  std::vector<TokenId> framed{101};
  framed.insert(framed.end(), ids.begin(), ids.end());
  framed.push_back(102);
  framed.push_back(0);
  CHECK(tok->decode(framed) == "unflinchingly bleak , and desperate !");
  // Cased reading keeps case and accents (and so finds no "Äpfel" pieces in an uncased vocab).
  const auto cased = rankscope::load_wordpiece_vocab(vocab, false);
  CHECK(cased->encode("hello") == std::vector<TokenId>{7592});
  CHECK(cased->encode("Hello") != std::vector<TokenId>{7592});
}

// llama.cpp's bert-bge vectors come from bge-small-en, whose vocabulary is bert-base-uncased's
// (the piece checks below confirm the ids mean the same words). llama.cpp's WPM tokenizer is a
// separate implementation from HF's BasicTokenizer, yet on all 46 vectors (emoji, ZWJ
// sequences, CJK, Khmer, Cyrillic, accents, whitespace-only and empty strings) the two agree,
// so every vector is checked and none is excluded.
TEST_CASE("WordPiece vocab.txt reproduces llama.cpp's bert-bge vectors", "[tokenizer]") {
  const auto vocab = shared_data("bert-uncased-vocab/vocab.txt");
  const auto inp = shared_data("bert-vocab-gguf/ggml-vocab-bert-bge.gguf.inp");
  RS_REQUIRE_SHARED(vocab);
  RS_REQUIRE_SHARED(inp);
  const auto tok = rankscope::load_wordpiece_vocab(vocab, true);
  CHECK(tok->piece(7592) == "hello");
  CHECK(tok->piece(2088) == "world");
  CHECK(tok->piece(1192) == "\xD0\xBD");  // "н"

  const auto tests =
      read_ggml_vocab_tests(inp, shared_data("bert-vocab-gguf/ggml-vocab-bert-bge.gguf.out"));
  CHECK(tests.size() == 46);
  for (const VocabTest& test : tests) {
    INFO("text: \"" << test.text << "\"");
    CHECK(tok->encode(test.text) == test.ids);
  }
}

// ---------------------------------------------------------------------------------------------
// find_tokenizer

TEST_CASE("find_tokenizer picks the tokenizer of a model directory", "[tokenizer]") {
  const auto stories = shared_data("stories260K-hf");
  const auto bert = shared_data("bert-tiny-sst2");
  RS_REQUIRE_SHARED(stories);
  RS_REQUIRE_SHARED(bert);

  const auto stories_tok = rankscope::find_tokenizer(stories);
  REQUIRE(stories_tok != nullptr);
  CHECK(stories_tok->kind() == "hf-bpe");
  CHECK(stories_tok->source().filename() == "tokenizer.json");
  CHECK(stories_tok->special().bos == 1);
  CHECK(stories_tok->special().eos == 2);

  const auto bert_tok = rankscope::find_tokenizer(bert);
  REQUIRE(bert_tok != nullptr);
  CHECK(bert_tok->kind() == "wordpiece");
  CHECK(bert_tok->special().cls == 101);
  CHECK(bert_tok->special().sep == 102);
  CHECK(bert_tok->special().pad == 0);

  // vocab.txt alone (plus a config saying the vocabulary is cased).
  const auto dir = scratch_dir("find_tokenizer_vocab");
  std::filesystem::copy_file(bert / "vocab.txt", dir / "vocab.txt");
  const auto uncased = rankscope::find_tokenizer(dir);
  REQUIRE(uncased != nullptr);
  CHECK(uncased->source().filename() == "vocab.txt");
  CHECK(uncased->encode("Hello") == std::vector<TokenId>{7592});
  write_file(dir / "tokenizer_config.json", R"({"do_lower_case": false})");
  CHECK(rankscope::find_tokenizer(dir)->encode("Hello") != std::vector<TokenId>{7592});

  const auto llama = shared_data("llama2-tokenizer");
  if (std::filesystem::exists(llama / "tokenizer.model")) {
    const auto llama_tok = rankscope::find_tokenizer(llama);
    REQUIRE(llama_tok != nullptr);
    CHECK(llama_tok->kind() == "sentencepiece");
  }
}

TEST_CASE("find_tokenizer returns nullptr for a directory without tokenizer files",
          "[tokenizer]") {
  const auto dir = scratch_dir("find_tokenizer_empty");
  write_file(dir / "config.json", "{}");
  CHECK(rankscope::find_tokenizer(dir) == nullptr);
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST_CASE("tokenizer.json content named tokenizer.model is not a SentencePiece model",
          "[tokenizer][errors]") {
  const auto dir = scratch_dir("spm_wrong_kind");
  const auto path = dir / "tokenizer.model";
  write_file(path,
             R"({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  const std::string message = error_of([&] { rankscope::load_sentencepiece(path); });
  CHECK_THAT(message, Catch::Contains(path.string()));
  CHECK_THAT(message, Catch::Contains("SentencePiece"));
  CHECK(message.find('\n') == std::string::npos);
  // And find_tokenizer, which trusts the file name, reports the same.
  CHECK_THROWS_AS(rankscope::find_tokenizer(dir), rankscope::Error);
}

TEST_CASE("other files given as tokenizer.model are rejected", "[tokenizer][errors]") {
  const auto dir = scratch_dir("spm_other_kinds");
  const auto text = dir / "text.model";
  write_file(text, "[PAD]\n[UNK]\nhello\nworld\n");
  CHECK_THAT(error_of([&] { rankscope::load_sentencepiece(text); }), Catch::Contains("text.model"));
  const auto empty = dir / "empty.model";
  write_file(empty, "");
  CHECK_THAT(error_of([&] { rankscope::load_sentencepiece(empty); }),
             Catch::Contains("empty.model"));
  std::string garbage;
  for (int i = 0; i < 4096; ++i) garbage.push_back(static_cast<char>((i * 7919 + 13) % 251));
  const auto binary = dir / "garbage.model";
  write_file(binary, garbage);
  CHECK_THAT(error_of([&] { rankscope::load_sentencepiece(binary); }),
             Catch::Contains("garbage.model"));
}

TEST_CASE("vocab.txt given as tokenizer.json is rejected", "[tokenizer][errors]") {
  const auto dir = scratch_dir("hf_wrong_kind");
  const auto path = dir / "tokenizer.json";
  write_file(path, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");
  const std::string message = error_of([&] { rankscope::load_hf_tokenizer_json(path); });
  CHECK_THAT(message, Catch::Contains(path.string()));
  CHECK_THAT(message, Catch::Contains("JSON"));
  CHECK(message.find('\n') == std::string::npos);
}

TEST_CASE("a SentencePiece model given as tokenizer.json is rejected", "[tokenizer][errors]") {
  const auto model = shared_data("llama2-tokenizer/tokenizer.model");
  RS_REQUIRE_SHARED(model);
  const auto path = scratch_dir("hf_spm_kind") / "tokenizer.json";
  std::filesystem::copy_file(model, path);
  const std::string message = error_of([&] { rankscope::load_hf_tokenizer_json(path); });
  CHECK_THAT(message, Catch::Contains(path.string()));
  CHECK(message.find('\n') == std::string::npos);
}

TEST_CASE("malformed or unsupported tokenizer.json is rejected", "[tokenizer][errors]") {
  const auto dir = scratch_dir("hf_malformed");
  const auto path = dir / "tokenizer.json";

  write_file(path, R"({"model": {"type": "BPE", "vocab": {"a": 0, )");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("not valid JSON"));

  write_file(path, R"({"version": "1.0", "added_tokens": []})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("model"));

  write_file(path, R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("malformed"));

  write_file(path, R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a c"]}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("merge"));

  write_file(path, R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("unsupported"));

  write_file(path, R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated"},
      {"type": "ByteLevel", "add_prefix_space": false}]},
      "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  const std::string byte_level = error_of([&] { rankscope::load_hf_tokenizer_json(path); });
  CHECK_THAT(byte_level, Catch::Contains(path.string()) && Catch::Contains("ByteLevel") &&
                             Catch::Contains("unsupported"));
  CHECK(byte_level.find('\n') == std::string::npos);
}

TEST_CASE("empty or non-text vocab.txt is rejected", "[tokenizer][errors]") {
  const auto dir = scratch_dir("vocab_bad");
  const auto empty = dir / "vocab.txt";
  write_file(empty, "");
  const std::string message = error_of([&] { rankscope::load_wordpiece_vocab(empty, true); });
  CHECK_THAT(message, Catch::Contains(empty.string()) && Catch::Contains("empty"));

  const auto no_unk = dir / "no_unk.txt";
  write_file(no_unk, "{\n  \"version\": \"1.0\"\n}\n");
  CHECK_THAT(error_of([&] { rankscope::load_wordpiece_vocab(no_unk, true); }),
             Catch::Contains("no_unk.txt") && Catch::Contains("[UNK]"));

  const auto model = shared_data("llama2-tokenizer/tokenizer.model");
  if (std::filesystem::exists(model)) {
    CHECK_THAT(error_of([&] { rankscope::load_wordpiece_vocab(model, true); }),
               Catch::Contains("tokenizer.model"));
  }
}

TEST_CASE("a missing tokenizer file is an Error naming it", "[tokenizer][errors]") {
  const auto dir = scratch_dir("missing");
  const auto missing = [&](const char* name) { return (dir / name).string(); };
  CHECK_THAT(error_of([&] { rankscope::load_sentencepiece(dir / "tokenizer.model"); }),
             Catch::Contains(missing("tokenizer.model")));
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(dir / "tokenizer.json"); }),
             Catch::Contains(missing("tokenizer.json")));
  CHECK_THAT(error_of([&] { rankscope::load_wordpiece_vocab(dir / "vocab.txt", true); }),
             Catch::Contains(missing("vocab.txt")));
}

TEST_CASE("a malformed tokenizer_config.json beside vocab.txt is an Error", "[tokenizer][errors]") {
  const auto dir = scratch_dir("bad_config");
  write_file(dir / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");
  write_file(dir / "tokenizer_config.json", "{do_lower_case: yes");
  CHECK_THAT(error_of([&] { rankscope::find_tokenizer(dir); }),
             Catch::Contains("tokenizer_config.json"));
}

TEST_CASE("invalid UTF-8 input does not crash any tokenizer", "[tokenizer]") {
  const std::string bad = "ok \xFF\xFE caf\xC3 \xE2\x82 end \xED\xA0\x80 \xF4\x90\x80\x80";
  const auto vocab = shared_data("bert-tiny-sst2/vocab.txt");
  const auto json_file = shared_data("stories260K-hf/tokenizer.json");
  const auto model = shared_data("llama2-tokenizer/tokenizer.model");
  RS_REQUIRE_SHARED(vocab);
  RS_REQUIRE_SHARED(json_file);
  RS_REQUIRE_SHARED(model);
  const auto wordpiece = rankscope::load_wordpiece_vocab(vocab, true);
  const auto ok_ids = wordpiece->encode(bad);
  REQUIRE(ok_ids.size() >= 3);
  CHECK(wordpiece->piece(ok_ids.front()) == "ok");
  CHECK(wordpiece->piece(ok_ids.back()) == "end");

  // Byte fallback keeps even invalid bytes: decoding gives them back as U+FFFD.
  const auto bpe = rankscope::load_hf_tokenizer_json(json_file);
  const auto bpe_ids = bpe->encode(bad);
  CHECK_FALSE(bpe_ids.empty());
  const std::string decoded = bpe->decode(bpe_ids);
  CHECK(decoded.starts_with("ok "));
  CHECK_THAT(decoded, Catch::Contains(" end "));

  const auto spm = rankscope::load_sentencepiece(model);
  CHECK_FALSE(spm->encode(bad).empty());
}

// Regressions found by tests/fuzz (corpus: tests/fuzz/corpus/tokenizer).
TEST_CASE("a tokenizer.json nested 100,000 levels deep is refused before anything walks it",
          "[tokenizer][errors][fuzz]") {
  const auto dir = scratch_dir("hf_deep");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  // Formerly parsed, then walked by the recursive mentions_byte_level: a stack overflow.
  write_file(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Sequence", "normalizers": )" +
                 deep + "}}");
  const std::string message = error_of([&] { rankscope::load_hf_tokenizer_json(dir / "tokenizer.json"); });
  CHECK_THAT(message, Catch::Contains((dir / "tokenizer.json").string()) && Catch::Contains("nested more than 128 levels"));
  CHECK(message.find('\n') == std::string::npos);
}

TEST_CASE("a ByteLevel step at any depth is still found", "[tokenizer][errors]") {
  const auto dir = scratch_dir("hf_byte_level_nested");
  write_file(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}]}]}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(dir / "tokenizer.json"); }),
             Catch::Contains("byte-level"));
}

TEST_CASE("a stray token id near 2^24 is refused instead of sizing a 16M-entry table", "[tokenizer][errors][fuzz]") {
  const auto dir = scratch_dir("hf_stray_id");
  write_file(dir / "tokenizer.json",
             R"({"added_tokens": [{"id": 16777000, "content": "<x>", "special": true}],
                 "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(dir / "tokenizer.json"); }),
             Catch::Contains("token ids run up to 16777000") && Catch::Contains("declares only 3 tokens"));
}

TEST_CASE("tokenizer files that are FIFOs are refused without waiting", "[tokenizer][errors][fuzz]") {
  const auto dir = scratch_dir("tokenizer_fifo");
  SECTION("tokenizer_config.json beside vocab.txt (formerly: read waited for a writer forever)") {
    write_file(dir / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");
    REQUIRE(::mkfifo((dir / "tokenizer_config.json").c_str(), 0600) == 0);
    CHECK_THAT(error_of([&] { rankscope::find_tokenizer(dir); }),
               Catch::Contains("tokenizer_config.json") && Catch::Contains("not a regular file"));
  }
  SECTION("tokenizer.model (formerly reported as 'no such file')") {
    REQUIRE(::mkfifo((dir / "tokenizer.model").c_str(), 0600) == 0);
    CHECK_THAT(error_of([&] { rankscope::find_tokenizer(dir); }),
               Catch::Contains("tokenizer.model") && Catch::Contains("not a regular file"));
  }
}
