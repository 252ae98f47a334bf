// Tokenizers against independent references: llama.cpp's tokenizer test vectors (SentencePiece
// and BERT), Hugging Face transformers' ids for stories260K's tokenizer.json and for BERT on
// SST-2, plus round trips and the errors bad files must give.
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/tokenize/byte_level.hpp"
#include "core/tokenize/regex.hpp"
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

  SECTION("Replace normalizer and decoder with a regular expression") {
    // Runs of spaces become one "▁"; the decoder turns "▁" back into a space.
    const auto tok = edited_stories_tokenizer("hf_replace_regex", [](nlohmann::json& root) {
      root["normalizer"]["normalizers"][1] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}},
                                              {"content", "\xE2\x96\x81"}};
      root["decoder"]["decoders"][0] = {{"type", "Replace"}, {"pattern", {{"Regex", "\xE2\x96\x81"}}},
                                        {"content", " "}};
    });
    CHECK(tok->encode("double   space  and triple") == reference->encode("double space and triple"));
    CHECK(tok->decode(tok->encode("Once upon a time")) == "Once upon a time");
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
// Hugging Face tokenizer.json, byte-level BPE (GPT-2, Llama 3, Qwen): tests/data/hf-refs, made by
// tests/hf/make_references.py with the tokenizers library 0.23 (tests/hf/README.md)

namespace {

const std::filesystem::path kHfRefs = std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs";

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::vector<nlohmann::json> rows;
  std::istringstream lines(read_file(path));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

// What meta.json's post_processor_check says add_special_tokens puts before the ids:
// "encode(text, add_special_tokens=True) == [2000] + ids_special (or ids if absent)".
std::vector<TokenId> ids_added_before(const nlohmann::json& meta) {
  const auto rule = meta.at("post_processor_check").at("rule").get<std::string>();
  const size_t open = rule.find("== [");
  const size_t close = rule.find("] + ids", open);
  REQUIRE(open != std::string::npos);
  REQUIRE(close != std::string::npos);
  REQUIRE(meta.at("post_processor_check").at("mismatches").get<int>() == 0);
  return ids_of(nlohmann::json::parse(rule.substr(open + 3, close - open - 2)));
}

// Mismatches of one field over the cases, with the first few kept for the failure message.
struct Mismatches {
  size_t checked = 0;
  size_t failed = 0;
  std::vector<std::string> examples;

  void check(bool ok, const std::string& text) {
    ++checked;
    if (ok) return;
    ++failed;
    constexpr size_t kExamples = 5;
    if (examples.size() < kExamples) examples.push_back(nlohmann::json(text).dump());
  }
};

void require_none(const char* field, const Mismatches& m) {
  std::string examples;
  for (const auto& e : m.examples) examples += "\n  " + e;
  INFO(field << ": " << m.failed << " of " << m.checked << " cases differ, e.g." << examples);
  CHECK(m.failed == 0);
}

}  // namespace

TEST_CASE("byte-level tokenizer.json reproduces the tokenizers library on every reference case",
          "[tokenizer][byte-level]") {
  for (const char* name : {"gpt2", "llama3", "qwen"}) {
    DYNAMIC_SECTION(name) {
      const auto dir = kHfRefs / (std::string("tokenizer_") + name);
      const auto meta = read_json(dir / "meta.json");
      const auto tok = rankscope::load_hf_tokenizer_json(dir / "tokenizer.json");
      CHECK(tok->kind() == "hf-bpe-byte-level");
      CHECK(tok->vocab_size() == meta.at("vocab_size_with_added").get<int32_t>());
      const std::vector<TokenId> before = ids_added_before(meta);
      const auto cases = read_jsonl(dir / "cases.jsonl");
      REQUIRE(cases.size() == meta.at("n_cases").get<size_t>());

      const rankscope::EncodeOptions plain{.parse_special = false};
      const rankscope::EncodeOptions framed{.add_special_tokens = true};
      const rankscope::DecodeOptions keep_special{.skip_special = false};
      Mismatches ids, ids_special, decoded, decoded_special, added;
      size_t n_special = 0;
      for (const auto& c : cases) {
        const auto text = c.at("text").get<std::string>();
        const auto expected = ids_of(c.at("ids"));
        ids.check(tok->encode(text, plain) == expected, text);
        decoded.check(tok->decode(expected, keep_special) == c.at("decoded").get<std::string>(), text);
        // Without special-token text in it, matching specials or not gives the same ids.
        const auto expected_special = c.contains("ids_special") ? ids_of(c.at("ids_special")) : expected;
        n_special += c.contains("ids_special") ? 1 : 0;
        ids_special.check(tok->encode(text) == expected_special, text);
        const auto expected_decoded_special =
            c.value("decoded_special", c.at("decoded").get<std::string>());
        decoded_special.check(tok->decode(expected_special, keep_special) == expected_decoded_special, text);
        std::vector<TokenId> with_added = before;
        with_added.insert(with_added.end(), expected_special.begin(), expected_special.end());
        added.check(tok->encode(text, framed) == with_added, text);
      }
      CHECK(n_special == meta.at("counts").at("with_special").get<size_t>());
      require_none("ids", ids);
      require_none("ids_special", ids_special);
      require_none("decoded", decoded);
      require_none("decoded_special", decoded_special);
      require_none("add_special_tokens", added);
    }
  }
}

TEST_CASE("byte-level encoding from several threads at once gives the same ids", "[tokenizer][byte-level]") {
  // The BPE word cache and PCRE2's match blocks are shared by, or kept per, thread.
  const auto dir = kHfRefs / "tokenizer_llama3";
  const auto tok = rankscope::load_hf_tokenizer_json(dir / "tokenizer.json");
  const auto cases = read_jsonl(dir / "cases.jsonl");
  constexpr int kThreads = 4;
  std::atomic<size_t> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Each thread walks the cases from its own starting point, so that they race on new words.
      for (size_t i = 0; i < cases.size(); ++i) {
        const auto& c = cases[(i + static_cast<size_t>(t) * cases.size() / kThreads) % cases.size()];
        if (tok->encode(c.at("text").get<std::string>(), {.parse_special = false}) != ids_of(c.at("ids"))) ++failed;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(failed == 0);
}

TEST_CASE("ignore_merges: a word in the vocabulary is one token, merges or not", "[tokenizer][byte-level]") {
  // Llama 3's reference cases list ids_without_ignore_merges where the flag changes anything; a
  // vocabulary of 2000 has no such word among them, so this builds one: "Ġxyz" is a token, but no
  // merge chain reaches it from its bytes.
  const auto dir = scratch_dir("hf_ignore_merges");
  for (bool ignore : {true, false}) {
    nlohmann::json root = {
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
        {"decoder", {{"type", "ByteLevel"}}},
        {"model", {{"type", "BPE"}, {"ignore_merges", ignore},
                   {"vocab", {{"x", 0}, {"y", 1}, {"z", 2}, {"\u0120", 3}, {"\u0120x", 4}, {"yz", 5}, {"\u0120xyz", 6}}},
                   {"merges", {"\u0120 x", "y z"}}}}};
    write_file(dir / "tokenizer.json", root.dump());
    const auto tok = rankscope::load_hf_tokenizer_json(dir / "tokenizer.json");
    const auto ids = tok->encode("xyz xyz");
    CHECK(ids == (ignore ? std::vector<TokenId>{0, 5, 6} : std::vector<TokenId>{0, 5, 4, 5}));
    CHECK(tok->decode(ids) == "xyz xyz");
  }
}

TEST_CASE("byte-level special tokens: parse_special, add_special_tokens, skip_special", "[tokenizer][byte-level]") {
  const auto tok = rankscope::load_hf_tokenizer_json(kHfRefs / "tokenizer_llama3/tokenizer.json");
  CHECK(tok->special().bos == 2000);
  CHECK(tok->special().eos == 2001);
  const std::string text = "<|begin_of_text|>Hi<tool_call>";
  const auto matched = tok->encode(text);
  REQUIRE(matched.size() >= 3);
  CHECK(matched.front() == 2000);
  CHECK(matched.back() == 2004);  // <tool_call> is not special: matched either way
  const auto plain = tok->encode(text, {.parse_special = false});
  CHECK(std::find(plain.begin(), plain.end(), 2000) == plain.end());
  CHECK(plain.back() == 2004);
  const auto framed = tok->encode(text, {.add_special_tokens = true});
  CHECK(framed == [&] {
    std::vector<TokenId> ids{2000};
    ids.insert(ids.end(), matched.begin(), matched.end());
    return ids;
  }());
  // Decoding skips special tokens unless asked not to; the non-special <tool_call> stays.
  CHECK(tok->decode(matched) == "Hi<tool_call>");
  CHECK(tok->decode(matched, {.skip_special = false}) == text);
  CHECK(tok->decode(plain) == text);
}

TEST_CASE("byte-level decode reads invalid UTF-8 as the tokenizers library does", "[tokenizer][byte-level]") {
  using rankscope::tokenizer_detail::append_byte_level;
  const auto tok = rankscope::load_hf_tokenizer_json(kHfRefs / "tokenizer_gpt2/tokenizer.json");
  // The token of each byte: its piece is the byte's character in GPT-2's alphabet.
  std::unordered_map<std::string, TokenId> id_of_piece;
  for (TokenId id = 0; id < tok->vocab_size(); ++id) id_of_piece[tok->piece(id)] = id;
  const auto byte_ids = [&](std::string_view bytes) {
    std::vector<TokenId> ids;
    for (char byte : bytes) {
      std::string piece;
      append_byte_level(piece, std::string_view(&byte, 1));
      REQUIRE(id_of_piece.count(piece) == 1);
      ids.push_back(id_of_piece.at(piece));
    }
    return ids;
  };
  const std::string fffd = "\xEF\xBF\xBD";
  // One U+FFFD per maximal ill-formed subsequence (Rust's String::from_utf8_lossy).
  CHECK(tok->decode(byte_ids("\xE2\x82" "a")) == fffd + "a");
  CHECK(tok->decode(byte_ids("\xF0\x9F\x98")) == fffd);
  CHECK(tok->decode(byte_ids("\xFF\xFE")) == fffd + fffd);
  CHECK(tok->decode(byte_ids("\xED\xA0\x80")) == fffd + fffd + fffd);
  CHECK(tok->decode(byte_ids("\xE2\x82\xAC")) == "\xE2\x82\xAC");
  // Split across tokens, a character still decodes whole.
  std::vector<TokenId> euro = byte_ids("\xE2\x82\xAC");
  CHECK(tok->decode(euro) == "\xE2\x82\xAC");
  // Invalid input reaches the regular expression as U+FFFD, and so decodes as one.
  CHECK(tok->decode(tok->encode("ok \xFF\xFE end \xE2\x82")) == "ok " + fffd + fffd + " end " + fffd);
  // Every byte round-trips through the alphabet.
  for (int byte = 0; byte < 256; ++byte) {
    const std::string one(1, static_cast<char>(byte));
    const std::string expected = byte < 0x80 ? one : fffd;
    CHECK(tok->decode(byte_ids(one)) == expected);
  }
}

TEST_CASE("regular expressions read as Oniguruma does, on PCRE2", "[tokenizer][byte-level]") {
  using rankscope::tokenizer_detail::Regex;
  using rankscope::tokenizer_detail::RegexPiece;
  const auto split = [](const Regex& re, std::string_view text) {
    std::vector<RegexPiece> pieces;
    re.find_all(text, pieces);
    std::vector<std::string> out;
    for (const auto& p : pieces) out.push_back((p.is_match ? "+" : "-") + std::string(text.substr(p.begin, p.end - p.begin)));
    return out;
  };
  const Regex gpt2(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", false, "test");
  CHECK(split(gpt2, "Hello  world's 42!") ==
        std::vector<std::string>{"+Hello", "+ ", "+ world", "+'s", "+ 42", "+!"});
  // \s is White_Space: U+0085 (NEL) is a space, U+180E (PCRE2's own \s has it) is not.
  CHECK(split(gpt2, "a\xC2\x85" "b") == std::vector<std::string>{"+a", "+\xC2\x85", "+b"});
  CHECK(split(gpt2, "a\xE1\xA0\x8E" "b") == std::vector<std::string>{"+a", "+\xE1\xA0\x8E", "+b"});
  // Case-insensitive contractions, with Unicode case folding (U+017F long s folds to s).
  const Regex llama3(R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
                     false, "test");
  CHECK(split(llama3, "IT'S 12345\n\n  x") ==
        std::vector<std::string>{"+IT", "+'S", "+ ", "+123", "+45", "+\n\n", "+ ", "+ x"});
  CHECK(split(llama3, "'\xC5\xBF") == std::vector<std::string>{"+'\xC5\xBF"});
  // \w is Unicode's word class: a combining mark belongs to the word.
  const Regex word(R"(\w+)", false, "test");
  CHECK(split(word, "e\xCC\x81t\xC3\xA9 !") == std::vector<std::string>{"+e\xCC\x81t\xC3\xA9", "- !"});
  // Empty matches: Oniguruma's iterator skips one right after the previous match.
  const Regex star("a*", false, "test");
  CHECK(split(star, "baab") == std::vector<std::string>{"+", "-b", "+aa", "-b", "+"});
  // A literal String pattern.
  const Regex literal("a.", true, "test");
  CHECK(split(literal, "xa.ya.") == std::vector<std::string>{"-x", "+a.", "-y", "+a."});
}

TEST_CASE("Split behaviors and invert cut words as the tokenizers library does", "[tokenizer][byte-level]") {
  const auto dir = scratch_dir("hf_split_behaviors");
  const auto load = [&](const std::string& behavior, bool invert) {
    nlohmann::json root = {
        {"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", invert ? "[^-]" : "-"}}}, {"behavior", behavior},
                           {"invert", invert}}},
        {"model", {{"type", "BPE"},
                   {"vocab", {{"a", 0}, {"b", 1}, {"-", 2}, {"a-", 3}, {"-b", 4}, {"--", 5}, {"b-", 6}}},
                   {"merges", {"a -", "- b", "- -", "b -"}}}}};
    write_file(dir / "tokenizer.json", root.dump());
    const auto tok = rankscope::load_hf_tokenizer_json(dir / "tokenizer.json");
    std::vector<std::string> pieces;
    for (TokenId id : tok->encode("a--b-")) pieces.push_back(tok->piece(id));
    return pieces;
  };
  using V = std::vector<std::string>;
  CHECK(load("Removed", false) == V{"a", "b"});
  CHECK(load("Isolated", false) == V{"a", "-", "-", "b", "-"});
  CHECK(load("MergedWithPrevious", false) == V{"a-", "-", "b-"});
  CHECK(load("MergedWithNext", false) == V{"a", "-", "-b", "-"});
  CHECK(load("Contiguous", false) == V{"a", "--", "b", "-"});
  // invert: the pattern matches the words, so the same cuts come out of the opposite pattern.
  CHECK(load("Removed", true) == V{"a", "b"});
  CHECK(load("Isolated", true) == V{"a", "--", "b", "-"});
}

TEST_CASE("byte-level tokenizer.json errors name the file and what is wrong", "[tokenizer][byte-level][errors]") {
  const auto dir = scratch_dir("hf_byte_level_errors");
  const auto path = dir / "tokenizer.json";
  const auto error_with = [&](const nlohmann::json& pre_tokenizer) {
    const nlohmann::json root = {
        {"pre_tokenizer", pre_tokenizer},
        {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", nlohmann::json::array()}}}};
    write_file(path, root.dump());
    const std::string message = error_of([&] { rankscope::load_hf_tokenizer_json(path)->encode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"); });
    CHECK(message.find('\n') == std::string::npos);
    CHECK_THAT(message, Catch::Contains(path.string()));
    return message;
  };
  // PCRE2's message and the offset in the pattern as the file writes it (\s expands internally).
  CHECK_THAT(error_with({{"type", "Split"}, {"pattern", {{"Regex", "\\s+(a|b"}}}, {"behavior", "Isolated"}}),
             Catch::Contains("Split pattern /\\s+(a|b/ is not a valid regular expression") &&
                 Catch::Contains("missing closing parenthesis at byte 7"));
  CHECK_THAT(error_with({{"type", "Split"}, {"pattern", {{"Regex", "\\p{Bogus}"}}}, {"behavior", "Isolated"}}),
             Catch::Contains("unknown property"));
  CHECK_THAT(error_with({{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}}),
             Catch::Contains("unknown Split behavior \"Sideways\""));
  CHECK_THAT(error_with({{"type", "Split"}, {"pattern", {{"Glob", "a*"}}}, {"behavior", "Isolated"}}),
             Catch::Contains("neither"));
  // A catastrophically backtracking pattern fails on the first text that triggers it.
  CHECK_THAT(error_with({{"type", "Split"}, {"pattern", {{"Regex", "(a+)+$"}}}, {"behavior", "Isolated"}}),
             Catch::Contains("gave up") && Catch::Contains("limit"));

  write_file(path, R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                       "post_processor": {"type": "Mystery"}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("unsupported post_processor type \"Mystery\""));
  write_file(path, R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                       "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("\"<s>\""));
  write_file(path, R"({"model": {"type": "BPE", "vocab": {"\u0120": 0, "a": 1}, "merges": [["\u0120", "b"]]},
                       "pre_tokenizer": {"type": "ByteLevel"}})");
  CHECK_THAT(error_of([&] { rankscope::load_hf_tokenizer_json(path); }),
             Catch::Contains(path.string()) && Catch::Contains("merge 0") && Catch::Contains("not in the vocabulary"));
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

  write_file(path, R"({"pre_tokenizer": {"type": "UnicodeScripts"},
      "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  const std::string pre_tokenizer = error_of([&] { rankscope::load_hf_tokenizer_json(path); });
  CHECK_THAT(pre_tokenizer, Catch::Contains(path.string()) && Catch::Contains("unsupported pre-tokenizer type") &&
                                Catch::Contains("UnicodeScripts"));
  CHECK(pre_tokenizer.find('\n') == std::string::npos);
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

TEST_CASE("a ByteLevel step at any depth is read", "[tokenizer][byte-level]") {
  const auto dir = scratch_dir("hf_byte_level_nested");
  write_file(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0, "\u0120": 1, "\u0120a": 2}, "merges": ["\u0120 a"]},
                 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"}]}]}})");
  const auto tok = rankscope::load_hf_tokenizer_json(dir / "tokenizer.json");
  CHECK(tok->kind() == "hf-bpe-byte-level");
  // add_prefix_space (the default) puts a space before each word that lacks one.
  CHECK(tok->encode("a a") == std::vector<TokenId>{2, 2});
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
