// bench/tokenize: tokenizer speed, two parts.
//
// 1. Linearity of tokenizer.json BPE (stories260K-hf, Llama 2 style: no pre-tokenizer, so the
//    merge runs on whole segments): the first 1/8 of 50,000 characters of TinyStories and then
//    all of them, and the ratio of their times per character: about 1 for a merge that is linear
//    in the text (linked list and heap), about 8 for one that rescans the text after every merge.
// 2. Byte-level BPE (Llama 3 / Qwen / GPT-2 form) against the SentencePiece and byte-fallback
//    BPE paths, all encoding the same text (WikiText-2 raw test, 1.3 MB) in the same run: MB/s of
//    each and its ratio to SentencePiece (Llama 2's tokenizer.model), for the reference
//    tokenizers of tests/data/hf-refs (vocabulary 2000) and for a Llama 3-sized one made here
//    (128,000 tokens, 280,000 merges, Llama 3's pre-tokenizer, built from the text's own words
//    so that merges fire as in a trained vocabulary). For that one, the load time (JSON parse
//    included), and the first encode after loading (empty word cache) apart from later ones.
//
// Times are CPU time of the (single) encoding thread, medians of --reps runs.
//
//   build/bench/tokenize [--reps N] [--data-dir DIR] [--refs DIR]
#include <algorithm>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/tokenize/byte_level.hpp"
#include "core/tokenize/regex.hpp"
#include "core/tokenize/tokenizer.hpp"
#include "core/tokenize/unicode.hpp"

using namespace rankscope;

namespace {

constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr size_t kLlama3Vocab = 128000;
constexpr size_t kLlama3Merges = 280000;
constexpr size_t kByteAlphabet = 256;
constexpr double kMega = 1e6;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// CPU seconds of the calling thread: everything measured here runs on it, and on a machine
// shared with other work this is far steadier than wall time.
double thread_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

template <typename F>
double seconds(F&& f) {
  const double t0 = thread_seconds();
  f();
  return thread_seconds() - t0;
}

double seconds_to_encode(const Tokenizer& tok, const std::string& text) {
  size_t n = 0;
  const double s = seconds([&] { n = tok.encode(text).size(); });
  if (n == 0) throw std::runtime_error("no tokens");
  return s;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path.string() + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The characters (UTF-8 pieces) of a byte-level word.
std::vector<std::string> chars_of(const std::string& word) {
  std::vector<std::string> out;
  for (size_t pos = 0; pos < word.size();) {
    const uint32_t n = unicode::decode_utf8(word, pos).length;
    out.push_back(word.substr(pos, n));
    pos += n;
  }
  return out;
}

// A Llama 3-shaped tokenizer.json over `text`'s words: the byte alphabet, then every prefix of
// the words in order of frequency (each made by merging the prefix one shorter with its last
// character) up to kLlama3Vocab tokens (topped up, if the text runs short, with pairs of tokens
// that the text never needs), then other splits of those tokens whose halves are both tokens as
// further merges, up to kLlama3Merges. Frequent words end up one token, as in a trained
// vocabulary.
nlohmann::json llama3_sized_tokenizer(const std::string& text) {
  const tokenizer_detail::Regex split(kLlama3Pattern, false, "bench pattern");
  std::vector<tokenizer_detail::RegexPiece> pieces;
  split.find_all(text, pieces);
  std::unordered_map<std::string, size_t> counts;
  for (const auto& piece : pieces) {
    std::string word;
    tokenizer_detail::append_byte_level(word, std::string_view(text).substr(piece.begin, piece.end - piece.begin));
    ++counts[word];
  }
  std::vector<std::pair<std::string, size_t>> words(counts.begin(), counts.end());
  std::sort(words.begin(), words.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });

  nlohmann::json vocab = nlohmann::json::object();
  std::vector<std::string> tokens;
  std::unordered_set<std::string> known;
  const auto add_token = [&](const std::string& token) {
    vocab[token] = tokens.size();
    tokens.push_back(token);
    known.insert(token);
  };
  for (size_t byte = 0; byte < kByteAlphabet; ++byte) {
    std::string token;
    const char b = static_cast<char>(byte);
    tokenizer_detail::append_byte_level(token, std::string_view(&b, 1));
    add_token(token);
  }
  nlohmann::json merges = nlohmann::json::array();
  std::unordered_set<std::string> merged_pairs;
  for (const auto& [word, count] : words) {
    if (tokens.size() >= kLlama3Vocab) break;
    const auto chars = chars_of(word);
    std::string prefix = chars[0];
    for (size_t k = 1; k < chars.size() && tokens.size() < kLlama3Vocab; ++k) {
      const std::string longer = prefix + chars[k];
      if (!known.count(longer)) {
        add_token(longer);
        merges.push_back({prefix, chars[k]});
        merged_pairs.insert(prefix + " " + chars[k]);
      }
      prefix = longer;
    }
  }
  for (size_t i = kByteAlphabet, j = 0; tokens.size() < kLlama3Vocab; ++i, j += 7) {
    const std::string left = tokens[kByteAlphabet + i % (tokens.size() - kByteAlphabet)];
    const std::string right = tokens[kByteAlphabet + j % (tokens.size() - kByteAlphabet)];
    if (known.count(left + right)) continue;
    merges.push_back({left, right});
    merged_pairs.insert(left + " " + right);
    add_token(left + right);
  }
  for (size_t id = kByteAlphabet; id < tokens.size() && merges.size() < kLlama3Merges; ++id) {
    const auto chars = chars_of(tokens[id]);
    std::string left;
    for (size_t j = 0; j + 1 < chars.size() && merges.size() < kLlama3Merges; ++j) {
      left += chars[j];
      std::string right;
      for (size_t k = j + 1; k < chars.size(); ++k) right += chars[k];
      if (!known.count(left) || !known.count(right) || !merged_pairs.insert(left + " " + right).second) continue;
      merges.push_back({left, right});
    }
  }
  const std::string pattern(kLlama3Pattern);
  const size_t bos = tokens.size();
  return {
      {"version", "1.0"},
      {"added_tokens", {{{"id", bos}, {"content", "<|begin_of_text|>"}, {"special", true}, {"normalized", false}},
                        {{"id", bos + 1}, {"content", "<|end_of_text|>"}, {"special", true}, {"normalized", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {bos}}, {"tokens", {"<|begin_of_text|>"}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", true},
        {"vocab", vocab}, {"merges", merges}}}};
}

struct Throughput {
  std::string name;
  double mb_per_s = 0;
};

void print_row(const Throughput& row, double baseline) {
  fmt::print("  {:<44} {:8.2f} MB/s  ratio {:5.2f}\n", row.name, row.mb_per_s, row.mb_per_s / baseline);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  std::filesystem::path data_dir = "../shared/data";
  std::filesystem::path refs_dir = "tests/data/hf-refs";
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--data-dir") && i + 1 < argc) data_dir = argv[++i];
    else if (!std::strcmp(argv[i], "--refs") && i + 1 < argc) refs_dir = argv[++i];
    else {
      fmt::print(stderr, "usage: {} [--reps N] [--data-dir DIR] [--refs DIR]\n", argv[0]);
      return 2;
    }
  }
  try {
    // Part 1: linearity.
    constexpr size_t kChars = 50000;
    constexpr size_t kParts = 8;
    const auto stories = load_hf_tokenizer_json(data_dir / "stories260K-hf/tokenizer.json");
    const std::string head = read_text(data_dir / "tinystories/tinystories_val.txt").substr(0, kChars);
    if (head.size() < kChars) throw std::runtime_error("tinystories_val.txt is shorter than 50,000 characters");
    const std::string part = head.substr(0, kChars / kParts);
    std::vector<double> small, whole;
    for (int r = 0; r < reps; ++r) {
      small.push_back(seconds_to_encode(*stories, part) / static_cast<double>(part.size()));
      whole.push_back(seconds_to_encode(*stories, head) / static_cast<double>(head.size()));
    }
    fmt::print("bench/tokenize: tokenizer.json BPE (stories260K-hf), medians of {}\n", reps);
    fmt::print("  {:>6} characters  {:8.3f} us/character (baseline)\n", part.size(), 1e6 * median(small));
    fmt::print("  {:>6} characters  {:8.3f} us/character ({:.2f} ms in all)\n", head.size(), 1e6 * median(whole),
               1e3 * median(whole) * static_cast<double>(head.size()));
    fmt::print("  per-character ratio {:.2f} (1 linear, {} quadratic)\n\n", median(whole) / median(small), kParts);

    // Part 2: byte-level BPE against SentencePiece, on one text.
    const std::string text = read_text(data_dir / "wikitext-2-raw/wiki.test.raw");
    const double megabytes = static_cast<double>(text.size()) / kMega;
    const auto throughput = [&](const std::string& name, const Tokenizer& tok) {
      std::vector<double> times;
      for (int r = 0; r < reps; ++r) times.push_back(seconds_to_encode(tok, text));
      return Throughput{name, megabytes / median(times)};
    };
    const auto spm = load_sentencepiece(data_dir / "llama2-tokenizer/tokenizer.model");
    const Throughput baseline = throughput("sentencepiece (Llama 2 tokenizer.model)", *spm);
    std::vector<Throughput> rows = {throughput("hf-bpe byte fallback (stories260K-hf)", *stories)};
    for (const char* name : {"gpt2", "llama3", "qwen"}) {
      const auto tok = load_hf_tokenizer_json(refs_dir / fmt::format("tokenizer_{}/tokenizer.json", name));
      if (tok->decode(tok->encode(text)) != text && std::string(name) != "qwen") {
        throw std::runtime_error(fmt::format("tokenizer_{}: decode(encode(text)) != text", name));
      }
      rows.push_back(throughput(fmt::format("byte-level, hf-refs tokenizer_{} (2k)", name), *tok));
    }

    const auto dir = std::filesystem::temp_directory_path() / "rankscope-bench-tokenize";
    std::filesystem::create_directories(dir);
    const auto big_json = dir / "tokenizer.json";
    std::string corpus = text;
    for (const char* rel : {"tinystories/tinystories_val.txt", "wikitext-2/valid.txt", "lambada/lambada_openai.jsonl",
                            "boolq/boolq.jsonl"}) {
      if (std::filesystem::exists(data_dir / rel)) corpus += read_text(data_dir / rel);
    }
    const nlohmann::json big = llama3_sized_tokenizer(corpus);
    {
      std::ofstream out(big_json, std::ios::binary);
      out << big.dump();
    }
    const size_t n_vocab = big["model"]["vocab"].size();
    const size_t n_merges = big["model"]["merges"].size();
    std::vector<double> loads, cold, warm;
    size_t n_tokens = 0;
    for (int r = 0; r < reps; ++r) {
      std::unique_ptr<Tokenizer> tok;
      loads.push_back(seconds([&] { tok = load_hf_tokenizer_json(big_json); }));
      cold.push_back(seconds_to_encode(*tok, text));
      warm.push_back(seconds_to_encode(*tok, text));
      if (r == 0) {
        const auto ids = tok->encode(text);
        n_tokens = ids.size();
        if (tok->decode(ids) != text) throw std::runtime_error("Llama 3-sized: decode(encode(text)) != text");
      }
    }
    rows.push_back({"byte-level, Llama 3-sized, first encode", megabytes / median(cold)});
    rows.push_back({"byte-level, Llama 3-sized, word cache warm", megabytes / median(warm)});

    fmt::print("bench/tokenize: encoding {} ({:.2f} MB), single thread, medians of {}; ratio = MB/s over the baseline\n",
               (data_dir / "wikitext-2-raw/wiki.test.raw").string(), megabytes, reps);
    fmt::print("  {:<44} {:8.2f} MB/s  (baseline)\n", baseline.name, baseline.mb_per_s);
    for (const auto& row : rows) print_row(row, baseline.mb_per_s);
    fmt::print("  Llama 3-sized tokenizer.json: {} tokens, {} merges, {:.1f} MB; load {:.0f} ms (JSON parse included); "
               "{:.2f} bytes/token\n",
               n_vocab, n_merges, static_cast<double>(std::filesystem::file_size(big_json)) / kMega,
               1e3 * median(loads), static_cast<double>(text.size()) / static_cast<double>(n_tokens));
    std::filesystem::remove_all(dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench/tokenize: {}\n", e.what());
    return 1;
  }
  return 0;
}
