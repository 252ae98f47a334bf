// Task loaders: each built-in benchmark's file layout turned into lm-evaluation-harness 0.4
// prompts (templates checked against lm-eval's task YAMLs and utils; docs/tasks.md lists them),
// and the generic JSONL task format.
#include "evaluators/tasks.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <bzlib.h>
#include <nlohmann/json.hpp>

#include "core/base/error.hpp"
#include "core/base/json_file.hpp"
#include "core/base/suggest.hpp"

namespace rankscope {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;  // keeps object keys in file order (TruthfulQA choices)

namespace {

// ---------------------------------------------------------------------------------------------
// Text helpers

std::string read_text_file(const fs::path& path) {
  // A FIFO would block the read until some writer appeared, a device might never end it.
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::exists(status) && !fs::is_regular_file(status)) fail("{}: not a regular file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open ({})", path.string(), std::strerror(errno));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("{}: read error", path.string());
  return buffer.str();
}

// bzip2 expands a few kB into gigabytes; real task files decompress to tens of MiB.
constexpr size_t kMaxDecompressedBytes = size_t{512} << 20;

std::string read_bz2_file(const fs::path& path) {
  const std::string packed = read_text_file(path);
  std::string out;
  size_t consumed = 0;
  // A .bz2 file may hold several concatenated streams (pbzip2); decode them all.
  while (consumed < packed.size()) {
    bz_stream stream{};
    if (BZ2_bzDecompressInit(&stream, 0, 0) != BZ_OK) fail("{}: cannot start bzip2 decoder", path.string());
    stream.next_in = const_cast<char*>(packed.data() + consumed);
    stream.avail_in = static_cast<unsigned>(packed.size() - consumed);
    std::vector<char> chunk(1 << 20);
    int rc = BZ_OK;
    while (rc == BZ_OK) {
      stream.next_out = chunk.data();
      stream.avail_out = static_cast<unsigned>(chunk.size());
      rc = BZ2_bzDecompress(&stream);
      out.append(chunk.data(), chunk.size() - stream.avail_out);
      if (out.size() > kMaxDecompressedBytes) {
        BZ2_bzDecompressEnd(&stream);
        fail("{}: decompresses to more than {} MiB, not a benchmark file", path.string(), kMaxDecompressedBytes >> 20);
      }
      if (rc == BZ_OK && stream.avail_in == 0 && stream.avail_out != 0) rc = BZ_UNEXPECTED_EOF;
    }
    const size_t left = stream.avail_in;
    BZ2_bzDecompressEnd(&stream);
    if (rc != BZ_STREAM_END) fail("{}: corrupt or truncated bzip2 data (bzip2 error {})", path.string(), rc);
    consumed = packed.size() - left;
  }
  return out;
}

void strip_bom(std::string& s) {
  if (s.size() >= 3 && s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Python's str.replace: non-overlapping occurrences, left to right.
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// Lines split at '\n' (Python's str.split("\n"): a trailing newline gives a final empty line).
std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (true) {
    const size_t nl = s.find('\n', pos);
    if (nl == std::string::npos) {
      lines.push_back(s.substr(pos));
      break;
    }
    lines.push_back(s.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return lines;
}

std::vector<std::string> split_char(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t pos = 0;
  while (true) {
    const size_t at = s.find(sep, pos);
    if (at == std::string::npos) {
      parts.push_back(s.substr(pos));
      break;
    }
    parts.push_back(s.substr(pos, at - pos));
    pos = at + 1;
  }
  return parts;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

// Python's str.isspace() / re's \s for one code point.
bool is_py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Length in bytes of the whitespace code point starting at s[i], or 0 when there is none.
size_t space_at(const std::string& s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return is_py_space(b0) ? 1 : 0;
  size_t len = 0;
  uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F;
  } else {
    return 0;  // 4-byte sequences hold no whitespace; stray continuation bytes are not space
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  return is_py_space(cp) ? len : 0;
}

// Length of the whitespace code point ending at s[end - 1], or 0.
size_t space_before(const std::string& s, size_t begin, size_t end) {
  for (size_t len = 1; len <= 3 && len <= end - begin; ++len) {
    const size_t start = end - len;
    if ((static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) continue;  // continuation byte
    return space_at(s, start) == len ? len : 0;
  }
  return 0;
}

// Python's str.strip() of s[begin, end).
std::string py_strip_range(const std::string& s, size_t begin, size_t end) {
  while (begin < end) {
    const size_t n = space_at(s, begin);
    if (n == 0) break;
    begin += n;
  }
  while (end > begin) {
    const size_t n = space_before(s, begin, end);
    if (n == 0) break;
    end -= n;
  }
  return s.substr(begin, end - begin);
}

std::string py_strip(const std::string& s) { return py_strip_range(s, 0, s.size()); }

// re.sub(r"O\s*([^C]*?)\s*C", r"O\1C", s): each O up to the next C, inner whitespace trimmed.
std::string trim_inside(const std::string& s, char open, char close) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t o = s.find(open, pos);
    if (o == std::string::npos) break;
    const size_t c = s.find(close, o + 1);
    if (c == std::string::npos) break;  // no match here, nor at any later opening character
    out.append(s, pos, o - pos);
    out += open;
    out += py_strip_range(s, o + 1, c);
    out += close;
    pos = c + 1;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// ---------------------------------------------------------------------------------------------
// JSONL

struct JsonLine {
  int64_t line = 0;
  ojson value;
};

std::string parse_error_detail(const std::string& what) {
  // nlohmann: "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..."
  const size_t col = what.find("column ");
  if (col != std::string::npos) {
    const size_t colon = what.find(": ", col);
    if (colon != std::string::npos) return what.substr(col, colon - col) + ": " + what.substr(colon + 2);
  }
  return what;
}

// Every non-blank line of a JSONL file, parsed.
std::vector<JsonLine> read_jsonl(const fs::path& path) {
  std::string text = read_text_file(path);
  strip_bom(text);
  std::vector<JsonLine> out;
  const auto lines = split_lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string line = lines[i];
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (py_strip(line).empty()) continue;
    JsonLine entry;
    entry.line = static_cast<int64_t>(i + 1);
    check_json_depth(line, fmt::format("{}:{}", path.string(), entry.line));
    try {
      entry.value = ojson::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail("{}:{}: malformed JSON ({})", path.string(), entry.line, parse_error_detail(e.what()));
    } catch (const nlohmann::json::exception& e) {
      // A number too large for a double ("1e400") is reported as out_of_range, not parse_error.
      fail("{}:{}: malformed JSON ({})", path.string(), entry.line, e.what());
    }
    out.push_back(std::move(entry));
  }
  return out;
}

const char* type_name(const ojson& v) { return v.type_name(); }

std::string get_string(const ojson& obj, const char* key, const fs::path& path, int64_t line) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail("{}:{}: missing \"{}\"", path.string(), line, key);
  if (!it->is_string()) fail("{}:{}: \"{}\" must be a string, not {}", path.string(), line, key, type_name(*it));
  return it->get<std::string>();
}

std::vector<std::string> get_string_list(const ojson& obj, const char* key, const fs::path& path, int64_t line) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail("{}:{}: missing \"{}\"", path.string(), line, key);
  if (!it->is_array()) fail("{}:{}: \"{}\" must be a list of strings, not {}", path.string(), line, key, type_name(*it));
  std::vector<std::string> out;
  for (const auto& v : *it) {
    if (!v.is_string()) fail("{}:{}: \"{}\" must be a list of strings (found {})", path.string(), line, key, type_name(v));
    out.push_back(v.get<std::string>());
  }
  if (out.empty()) fail("{}:{}: empty \"{}\" list", path.string(), line, key);
  return out;
}

int gold_index(const ojson& v, size_t n_choices, const fs::path& path, int64_t line) {
  if (!v.is_number_integer()) fail("{}:{}: gold must be an integer, not {}", path.string(), line, type_name(v));
  const auto g = v.get<int64_t>();
  if (g < 0 || g >= static_cast<int64_t>(n_choices)) {
    fail("{}:{}: gold {} out of range for {} choices", path.string(), line, g, n_choices);
  }
  return static_cast<int>(g);
}

// ---------------------------------------------------------------------------------------------
// Limits and few-shot pools

// Applies --limit to a task whose few-shot examples come from its own documents.
void limit_eval_set(Task& task, const Limit& limit) {
  task.fewshot_pool_is_eval_set = true;
  task.n_docs_total = static_cast<int64_t>(task.docs.size());
  const int64_t keep = limit.of(task.n_docs_total);
  if (keep < task.n_docs_total) {
    task.fewshot_pool = task.docs;
    task.docs.resize(static_cast<size_t>(keep));
  }
}

void number_docs(std::vector<Doc>& docs) {
  for (size_t i = 0; i < docs.size(); ++i) docs[i].index = static_cast<int64_t>(i);
}

// The common end of every task reader: a file without documents is an error; then the prompt
// summary, document numbering and --limit.
Task finish_task(Task task, std::string prompt_summary, const TaskLoadOptions& options) {
  if (task.docs.empty()) fail("{}: no documents", task.files.empty() ? task.name : task.files.front().string());
  task.prompt_summary = std::move(prompt_summary);
  number_docs(task.docs);
  limit_eval_set(task, options.limit);
  return task;
}

fs::path data_file(const TaskLoadOptions& options, const std::string& rel) { return options.data_dir / rel; }

// ---------------------------------------------------------------------------------------------
// llm-foundry JSONL files (ARC, PIQA, OpenBookQA, BoolQ, WinoGrande, LAMBADA)

struct FoundryMc {
  std::string query;
  std::vector<std::string> choices;
  int gold = 0;
  int64_t line = 0;
};

std::vector<FoundryMc> read_foundry_mc(const fs::path& path) {
  std::vector<FoundryMc> out;
  for (const auto& entry : read_jsonl(path)) {
    if (!entry.value.is_object()) fail("{}:{}: expected a JSON object", path.string(), entry.line);
    FoundryMc mc;
    mc.line = entry.line;
    mc.query = get_string(entry.value, "query", path, entry.line);
    mc.choices = get_string_list(entry.value, "choices", path, entry.line);
    const auto gold = entry.value.find("gold");
    if (gold == entry.value.end()) fail("{}:{}: missing \"gold\"", path.string(), entry.line);
    mc.gold = gold_index(*gold, mc.choices.size(), path, entry.line);
    out.push_back(std::move(mc));
  }
  if (out.empty()) fail("{}: no documents", path.string());
  return out;
}

Task mc_task(const std::string& name, std::vector<std::string> metrics) {
  Task task;
  task.name = name;
  task.kind = TaskKind::multiple_choice;
  task.metrics = std::move(metrics);
  return task;
}

Doc mc_doc(std::string context, std::vector<std::string> choices, int gold, int64_t line) {
  Doc doc;
  doc.contexts = {std::move(context)};
  doc.continuations = std::move(choices);
  doc.gold = {gold};
  doc.line = line;
  return doc;
}

// ARC: "Question: {question}\nAnswer:" (the file's query already starts with "Question: ").
Task load_arc(const std::string& name, const std::string& rel, const TaskLoadOptions& options) {
  const auto path = data_file(options, rel);
  Task task = mc_task(name, {"acc", "acc_norm"});
  task.files = {path};
  for (auto& mc : read_foundry_mc(path)) {
    std::string q = starts_with(mc.query, "Question: ") ? mc.query : "Question: " + mc.query;
    task.docs.push_back(mc_doc(q + "\nAnswer:", std::move(mc.choices), mc.gold, mc.line));
  }
  return finish_task(std::move(task), "Question: {question}\\nAnswer: -> \" {choice}\"", options);
}

// PIQA: "Question: {goal}\nAnswer:"; the file's query is "Question: {goal}\n".
Task load_piqa(const TaskLoadOptions& options) {
  const auto path = data_file(options, "piqa/piqa.jsonl");
  Task task = mc_task("piqa", {"acc", "acc_norm"});
  task.files = {path};
  for (auto& mc : read_foundry_mc(path)) {
    std::string q = mc.query;
    if (ends_with(q, "\n")) q.pop_back();
    if (!starts_with(q, "Question: ")) q = "Question: " + q;
    task.docs.push_back(mc_doc(q + "\nAnswer:", std::move(mc.choices), mc.gold, mc.line));
  }
  return finish_task(std::move(task), "Question: {goal}\\nAnswer: -> \" {sol}\"", options);
}

// OpenBookQA: the question stem as is.
Task load_openbookqa(const TaskLoadOptions& options) {
  const auto path = data_file(options, "openbookqa/openbook_qa.jsonl");
  Task task = mc_task("openbookqa", {"acc", "acc_norm"});
  task.files = {path};
  for (auto& mc : read_foundry_mc(path)) task.docs.push_back(mc_doc(mc.query, std::move(mc.choices), mc.gold, mc.line));
  return finish_task(std::move(task), "{question_stem} -> \" {choice}\"", options);
}

// BoolQ: "{passage}\nQuestion: {question}?\nAnswer:" with no/yes. The file's query is
// "Passage: {passage}\nQuestion: {question}?", so dropping "Passage: " leaves lm-eval's text.
Task load_boolq(const TaskLoadOptions& options) {
  const auto path = data_file(options, "boolq/boolq.jsonl");
  Task task = mc_task("boolq", {"acc"});
  task.files = {path};
  for (auto& mc : read_foundry_mc(path)) {
    if (!starts_with(mc.query, "Passage: ")) fail("{}:{}: query does not start with \"Passage: \"", path.string(), mc.line);
    if (mc.query.find("\nQuestion: ") == std::string::npos || !ends_with(mc.query, "?")) {
      fail("{}:{}: query is not \"Passage: ...\\nQuestion: ...?\"", path.string(), mc.line);
    }
    if (mc.choices != std::vector<std::string>{"no", "yes"}) {
      fail("{}:{}: choices must be [\"no\", \"yes\"]", path.string(), mc.line);
    }
    task.docs.push_back(mc_doc(mc.query.substr(9) + "\nAnswer:", std::move(mc.choices), mc.gold, mc.line));
  }
  return finish_task(std::move(task), "{passage}\\nQuestion: {question}?\\nAnswer: -> \" no\" | \" yes\"", options);
}

// WinoGrande, partial scoring: contexts = sentence up to "_" + option (lm-eval's
// partial_context), continuation = the rest of the sentence stripped (partial_target).
Task load_winogrande(const TaskLoadOptions& options) {
  const auto path = data_file(options, "winogrande/winogrande.jsonl");
  Task task = mc_task("winogrande", {"acc"});
  task.files = {path};
  for (const auto& entry : read_jsonl(path)) {
    if (!entry.value.is_object()) fail("{}:{}: expected a JSON object", path.string(), entry.line);
    Doc doc;
    doc.line = entry.line;
    doc.contexts = get_string_list(entry.value, "context_options", path, entry.line);
    doc.continuations = {py_strip(get_string(entry.value, "continuation", path, entry.line))};
    const auto gold = entry.value.find("gold");
    if (gold == entry.value.end()) fail("{}:{}: missing \"gold\"", path.string(), entry.line);
    doc.gold = {gold_index(*gold, doc.contexts.size(), path, entry.line)};
    task.docs.push_back(std::move(doc));
  }
  return finish_task(std::move(task),
                     "{sentence up to _}{option} -> \" {rest of sentence}\" (partial scoring)",
                     options);
}

// LAMBADA (OpenAI): context = text without its last space-separated word, target = " " + word.
Task load_lambada(const TaskLoadOptions& options) {
  const auto path = data_file(options, "lambada/lambada_openai.jsonl");
  Task task;
  task.name = "lambada_openai";
  task.kind = TaskKind::loglikelihood;
  task.metrics = {"ppl", "acc"};
  task.files = {path};
  for (const auto& entry : read_jsonl(path)) {
    if (!entry.value.is_object()) fail("{}:{}: expected a JSON object", path.string(), entry.line);
    Doc doc;
    doc.line = entry.line;
    doc.contexts = {get_string(entry.value, "context", path, entry.line)};
    doc.continuations = {get_string(entry.value, "continuation", path, entry.line)};
    task.docs.push_back(std::move(doc));
  }
  return finish_task(std::move(task), "{text without last word} -> \" {last word}\"", options);
}

// ---------------------------------------------------------------------------------------------
// HellaSwag (llama.cpp's hellaswag_val_full.txt, bzip2)

Task load_hellaswag(const TaskLoadOptions& options) {
  const auto path = data_file(options, "hellaswag/hellaswag_val_full.txt.bz2");
  Task task = mc_task("hellaswag", {"acc", "acc_norm"});
  task.files = {path};
  const std::string text = read_bz2_file(path);
  auto lines = split_lines(text);
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  for (auto& line : lines) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
  }
  if (lines.empty()) fail("{}: no documents", path.string());
  if (lines.size() % 6 != 0) {
    fail("{}:{}: incomplete task: {} lines is not a multiple of 6 (context, gold, 4 endings)", path.string(),
         lines.size() - lines.size() % 6 + 1, lines.size());
  }
  for (size_t i = 0; i < lines.size(); i += 6) {
    const auto line_no = static_cast<int64_t>(i + 1);
    const std::string& g = lines[i + 1];
    if (g.size() != 1 || g[0] < '0' || g[0] > '3') {
      fail("{}:{}: gold label '{}' is not 0-3", path.string(), line_no + 1, printable(g));
    }
    std::vector<std::string> endings;
    for (size_t k = 2; k < 6; ++k) endings.push_back(hellaswag_preprocess(lines[i + k]));
    task.docs.push_back(mc_doc(hellaswag_preprocess(lines[i]), std::move(endings), g[0] - '0', line_no));
  }
  return finish_task(std::move(task), "preprocess({activity_label}: {ctx}) -> \" preprocess({ending})\"", options);
}

// ---------------------------------------------------------------------------------------------
// CSV (RFC 4180) and TSV

struct CsvRecord {
  std::vector<std::string> fields;
  int64_t line = 0;
};

std::vector<CsvRecord> read_csv(const fs::path& path) {
  std::string text = read_text_file(path);
  strip_bom(text);
  std::vector<CsvRecord> records;
  size_t i = 0;
  int64_t line = 1;
  const size_t n = text.size();
  while (i < n) {
    CsvRecord rec;
    rec.line = line;
    // A blank line is no record.
    if (text[i] == '\n' || (text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')) {
      i += text[i] == '\r' ? 2 : 1;
      ++line;
      continue;
    }
    bool end_of_record = false;
    while (!end_of_record) {
      std::string field;
      if (i < n && text[i] == '"') {
        const int64_t open_line = line;
        ++i;
        while (true) {
          if (i >= n) fail("{}:{}: unterminated quoted field", path.string(), open_line);
          const char c = text[i];
          if (c == '"') {
            if (i + 1 < n && text[i + 1] == '"') {
              field += '"';
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          if (c == '\n') ++line;
          field += c;
          ++i;
        }
        if (i < n && text[i] != ',' && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')) {
          fail("{}:{}: unexpected character after a closing quote", path.string(), line);
        }
      } else {
        while (i < n && text[i] != ',' && text[i] != '\n' && !(text[i] == '\r' && i + 1 < n && text[i + 1] == '\n')) {
          field += text[i++];
        }
      }
      rec.fields.push_back(std::move(field));
      if (i >= n) {
        end_of_record = true;
      } else if (text[i] == ',') {
        ++i;
      } else {
        i += text[i] == '\r' ? 2 : 1;
        ++line;
        end_of_record = true;
      }
    }
    records.push_back(std::move(rec));
  }
  return records;
}

// Tab-separated lines (no quoting, as GLUE's files): the header, then the rows.
std::vector<CsvRecord> read_tsv(const fs::path& path) {
  std::string text = read_text_file(path);
  strip_bom(text);
  std::vector<CsvRecord> out;
  const auto lines = split_lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string line = lines[i];
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    out.push_back({split_char(line, '\t'), static_cast<int64_t>(i + 1)});
  }
  return out;
}

void check_header(const std::vector<CsvRecord>& records, const std::vector<std::string>& expected,
                  const fs::path& path) {
  if (records.empty()) fail("{}: empty file", path.string());
  if (records[0].fields != expected) {
    fail("{}:{}: header is '{}', expected '{}'", path.string(), records[0].line, printable(join(records[0].fields, ",")),
         join(expected, ","));
  }
}

int parse_label(const std::string& s, int n, const fs::path& path, int64_t line, const char* what) {
  if (s.size() != 1 || s[0] < '0' || s[0] >= '0' + n) {
    fail("{}:{}: {} '{}' is not 0-{}", path.string(), line, what, printable(s), n - 1);
  }
  return s[0] - '0';
}

// ---------------------------------------------------------------------------------------------
// MMLU

Doc mmlu_doc(const CsvRecord& rec, const std::string& subject, const fs::path& path) {
  if (rec.fields.size() != 6) {
    fail("{}:{}: {} fields, expected 6 (question,choice0..3,answer)", path.string(), rec.line, rec.fields.size());
  }
  const auto& f = rec.fields;
  std::string context = py_strip(f[0]) + "\nA. " + f[1] + "\nB. " + f[2] + "\nC. " + f[3] + "\nD. " + f[4] + "\nAnswer:";
  Doc doc = mc_doc(std::move(context), {"A", "B", "C", "D"}, parse_label(f[5], 4, path, rec.line, "answer"), rec.line);
  doc.subject = subject;
  doc.description =
      "The following are multiple choice questions (with answers) about " + replace_all(subject, "_", " ") + ".\n\n";
  return doc;
}

// The MMLU subjects: the <subject>_test.csv files of `test_dir`, in alphabetical order.
std::vector<std::string> mmlu_subjects(const fs::path& test_dir) {
  std::vector<std::string> subjects;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(test_dir, ec)) {
    const std::string file = entry.path().filename().string();
    // By name alone: an entry that is not a readable file (a FIFO, a link loop) is reported when read.
    if (ends_with(file, "_test.csv")) subjects.push_back(file.substr(0, file.size() - 9));
  }
  if (ec) fail("{}: cannot list ({})", test_dir.string(), ec.message());
  if (subjects.empty()) fail("{}: no <subject>_test.csv files", test_dir.string());
  std::sort(subjects.begin(), subjects.end());
  return subjects;
}

// mmlu (every subject), or mmlu_<only>: one subject, its documents numbered from 0 (few-shot
// examples come from the dev rows, so the numbering changes no prompt).
Task load_mmlu(const TaskLoadOptions& options, const std::string& only = "") {
  const fs::path test_dir = data_file(options, "mmlu/test");
  const fs::path dev_dir = data_file(options, "mmlu/dev");
  const std::vector<std::string> subjects = mmlu_subjects(test_dir);
  if (!only.empty() && std::find(subjects.begin(), subjects.end(), only) == subjects.end()) {
    fail("{}: no MMLU subject '{}' (no {}_test.csv){}", test_dir.string(), printable(only), printable(only),
         did_you_mean(only, subjects));
  }

  Task task = mc_task(only.empty() ? "mmlu" : "mmlu_" + only, {"acc"});
  task.fewshot_first_k = true;
  const std::vector<std::string> header = {"question", "choice0", "choice1", "choice2", "choice3", "answer"};
  int64_t index = 0;
  for (const auto& subject : subjects) {
    const fs::path test = test_dir / (subject + "_test.csv");
    const fs::path dev = dev_dir / (subject + "_dev.csv");
    if (!only.empty() && subject != only) continue;
    task.files.push_back(test);
    task.files.push_back(dev);
    const auto rows = read_csv(test);
    check_header(rows, header, test);
    const int64_t keep = options.limit.of(static_cast<int64_t>(rows.size()) - 1);  // per subject, as lm-eval's subtasks
    task.n_docs_total += static_cast<int64_t>(rows.size()) - 1;
    for (size_t r = 1; r < rows.size(); ++r, ++index) {
      Doc doc = mmlu_doc(rows[r], subject, test);
      doc.index = index;
      if (static_cast<int64_t>(r - 1) < keep) task.docs.push_back(std::move(doc));
    }
    const auto dev_rows = read_csv(dev);
    check_header(dev_rows, header, dev);
    for (size_t r = 1; r < dev_rows.size(); ++r) {
      Doc doc = mmlu_doc(dev_rows[r], subject, dev);
      doc.index = static_cast<int64_t>(r - 1);
      task.fewshot_pool.push_back(std::move(doc));
    }
  }
  task.prompt_summary =
      "{description}{question.strip()}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer: -> \" A\"..\" D\"; "
      "few-shot: first k dev rows of the subject";
  return task;
}

// ---------------------------------------------------------------------------------------------
// TruthfulQA (original mc_task.json)

const char* const kTruthfulQaPrompt =
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.";

Task load_truthfulqa(bool mc2, const TaskLoadOptions& options) {
  const auto path = data_file(options, "truthfulqa/v0/mc_task.json");
  Task task = mc_task(mc2 ? "truthfulqa_mc2" : "truthfulqa_mc1", {"acc"});
  task.mc2 = mc2;
  task.files = {path};
  const ojson root = parse_json_text<ojson>(read_text_file(path), path.string());
  if (!root.is_array()) fail("{}: expected a JSON list of questions", path.string());
  const char* key = mc2 ? "mc2_targets" : "mc1_targets";
  for (size_t q = 0; q < root.size(); ++q) {
    const auto& item = root[q];
    const auto where = fmt::format("{}: question {}", path.string(), q + 1);
    if (!item.is_object() || !item.contains("question") || !item["question"].is_string()) {
      fail("{}: expected an object with a \"question\" string", where);
    }
    const auto it = item.find(key);
    if (it == item.end() || !it->is_object() || it->empty()) fail("{}: missing or empty \"{}\"", where, key);
    std::vector<std::string> choices;
    std::vector<int> labels;
    for (const auto& [choice, label] : it->items()) {
      if (!label.is_number_integer() || (label.get<int>() != 0 && label.get<int>() != 1)) {
        fail("{}: {} label of '{}' is not 0 or 1", where, key, printable(choice));
      }
      choices.push_back(choice);
      labels.push_back(label.get<int>());
    }
    std::vector<int> gold;
    if (mc2) {
      // lm-eval's process_results_mc2 counts the choices before the first 0 as the true ones.
      const auto first_false = std::find(labels.begin(), labels.end(), 0);
      if (first_false == labels.end()) fail("{}: mc2_targets has no false answer", where);
      for (int i = 0; i < first_false - labels.begin(); ++i) gold.push_back(i);
      if (gold.empty()) fail("{}: mc2_targets does not start with a true answer", where);
    } else {
      for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] == 1) gold.push_back(static_cast<int>(i));
      }
      if (gold.size() != 1) fail("{}: mc1_targets has {} true answers, expected 1", where, gold.size());
    }
    Doc doc;
    doc.contexts = {std::string(kTruthfulQaPrompt) + "\n\nQ: " + item["question"].get<std::string>() + "\nA:"};
    doc.continuations = std::move(choices);
    doc.gold = std::move(gold);
    task.docs.push_back(std::move(doc));
  }
  return finish_task(std::move(task),
                     std::string("{fixed 6-shot QA prompt}\\n\\nQ: {question}\\nA: -> \" {choice}\" of ") + key +
                         (mc2 ? " (mc2: probability mass of the true answers)" : ""),
                     options);
}

// ---------------------------------------------------------------------------------------------
// GLUE-style classification

Task load_sst2(const TaskLoadOptions& options) {
  const auto path = data_file(options, "glue-sst2/dev.tsv");
  Task task;
  task.name = "sst2";
  task.kind = TaskKind::classification;
  task.metrics = {"acc"};
  task.files = {path};
  const auto rows = read_tsv(path);
  check_header(rows, {"sentence", "label"}, path);
  for (size_t r = 1; r < rows.size(); ++r) {
    const auto& rec = rows[r];
    if (rec.fields.size() != 2) fail("{}:{}: {} fields, expected 2 (sentence, label)", path.string(), rec.line, rec.fields.size());
    const int label = parse_label(rec.fields[1], 2, path, rec.line, "label");
    Doc doc = mc_doc(rec.fields[0] + "\nQuestion: Is this sentence positive or negative?\nAnswer:", {"negative", "positive"},
                     label, rec.line);
    doc.text_a = rec.fields[0];
    doc.label = label;
    task.docs.push_back(std::move(doc));
  }
  return finish_task(std::move(task),
                     "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer: -> \" negative\" | \" positive\"",
                     options);
}

// MRPC: the labelled MSR test file (GLUE's dev split is not in ../shared). "<QUOTE>" in the MSR
// files is a double quote in GLUE's copy of the same sentences.
Task load_mrpc(const TaskLoadOptions& options) {
  const auto path = data_file(options, "mrpc/msr_paraphrase_test.txt");
  Task task;
  task.name = "mrpc";
  task.kind = TaskKind::classification;
  task.metrics = {"acc", "f1"};
  task.files = {path};
  const auto rows = read_tsv(path);
  check_header(rows, {"Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"}, path);
  for (size_t r = 1; r < rows.size(); ++r) {
    const auto& rec = rows[r];
    if (rec.fields.size() != 5) fail("{}:{}: {} fields, expected 5", path.string(), rec.line, rec.fields.size());
    const int label = parse_label(rec.fields[0], 2, path, rec.line, "Quality");
    const std::string s1 = replace_all(rec.fields[3], "<QUOTE>", "\"");
    const std::string s2 = replace_all(rec.fields[4], "<QUOTE>", "\"");
    Doc doc = mc_doc("Sentence 1: " + s1 + "\nSentence 2: " + s2 + "\nQuestion: Do both sentences mean the same thing?\nAnswer:",
                     {"no", "yes"}, label, rec.line);
    doc.text_a = s1;
    doc.text_b = s2;
    doc.label = label;
    task.docs.push_back(std::move(doc));
  }
  return finish_task(std::move(task),
                     "Sentence 1: {s1}\\nSentence 2: {s2}\\nQuestion: Do both sentences mean the same thing?\\nAnswer: -> \" no\" | \" yes\"",
                     options);
}

// ---------------------------------------------------------------------------------------------
// Perplexity texts

Doc text_doc(std::string raw, std::string text, int64_t line) {
  Doc doc;
  doc.word_count = python_word_count(raw);
  doc.byte_count = static_cast<int64_t>(raw.size());
  doc.text = std::move(text);
  doc.line = line;
  return doc;
}

// wikitext_document_level's rule for a page's first line: a level-1 heading " = Title = ".
bool is_page_heading(const std::string& line) {
  const std::string r = py_strip(replace_all(replace_all(line, "= = =", "==="), "= =", "=="));
  return starts_with(r, "= ") && ends_with(r, " =");
}

// The raw file (HF rows, empty rows dropped, CRLF) back in the layout of the original
// wiki.test.raw that lm-eval's pages are cut from, blank " " lines included: the tokenized test
// file has the same line structure, so its blank lines are copied around the raw file's lines.
// Returns false (lines untouched) when the two files do not line up.
bool restore_blank_lines(std::vector<std::string>& lines, const fs::path& tokens_path) {
  std::error_code ec;
  if (!fs::is_regular_file(tokens_path, ec)) return false;
  const auto tokens = split_lines(read_text_file(tokens_path));
  std::vector<std::string> nonblank;
  for (const auto& l : lines) {
    if (!py_strip(l).empty()) nonblank.push_back(l);
  }
  std::vector<std::string> out;
  size_t next = 0;
  for (const auto& t : tokens) {
    if (py_strip(t).empty()) {
      out.push_back(t);
      continue;
    }
    if (next >= nonblank.size() || is_page_heading(t) != is_page_heading(nonblank[next])) return false;
    out.push_back(nonblank[next++]);
  }
  if (next != nonblank.size()) return false;
  lines = std::move(out);
  return true;
}

// wikitext2, or lm-eval's `wikitext` (the same data under its name; the evaluator scores it by the
// rolling protocol alone).
Task load_wikitext2(const TaskLoadOptions& options, const std::string& name = "wikitext2") {
  const auto path = data_file(options, "wikitext-2-raw/wiki.test.raw");
  const auto tokens_path = data_file(options, "wikitext-2/test.txt");
  Task task;
  task.name = name;
  task.kind = TaskKind::perplexity;
  task.metrics = {"ppl", "word_perplexity", "byte_perplexity", "bits_per_byte"};
  task.files = {path};
  task.text = read_text_file(path);
  // Lines with their CRs dropped (the dataset's rows end in "\n" only).
  std::vector<std::string> lines = split_lines(task.text);
  std::vector<int64_t> raw_line;  // 1-based line in the raw file, for each line; 0 = restored blank
  for (auto& l : lines) {
    if (!l.empty() && l.back() == '\r') l.pop_back();
  }
  const bool restored = restore_blank_lines(lines, tokens_path);
  if (restored) task.files.push_back(tokens_path);
  int64_t n = 0;
  for (const auto& l : lines) raw_line.push_back(restored && py_strip(l).empty() ? 0 : ++n);

  // lm-eval's wikitext_document_level: a page runs from a level-1 heading to the next one.
  std::vector<std::string> page;
  int64_t page_line = 1;
  auto flush = [&](bool last) {
    const std::string raw = join(page, "\n");
    if (last || !py_strip(raw).empty()) task.docs.push_back(text_doc(raw, wikitext_detokenize(raw), page_line));
  };
  for (size_t i = 0; i < lines.size(); ++i) {
    if (is_page_heading(lines[i])) {
      flush(false);
      page.clear();
      page_line = raw_line[i];
    }
    page.push_back(lines[i]);
  }
  flush(true);
  number_docs(task.docs);
  task.n_docs_total = static_cast<int64_t>(task.docs.size());
  task.prompt_summary = fmt::format(
      "whole file (llamacpp/chunks); rolling: {} pages cut as lm-eval's wikitext_document_level, "
      "wikitext_detokenizer applied{}",
      task.docs.size(), restored ? ", blank lines restored from wikitext-2/test.txt" : " (wikitext-2/test.txt not found: no blank lines)");
  return task;
}

Task load_tinystories(const TaskLoadOptions& options) {
  const auto path = data_file(options, "tinystories/tinystories_val.txt");
  Task task;
  task.name = "tinystories";
  task.kind = TaskKind::perplexity;
  task.metrics = {"ppl"};
  task.files = {path};
  task.text = read_text_file(path);
  task.docs.push_back(text_doc(task.text, task.text, 1));
  task.n_docs_total = 1;
  task.prompt_summary = "whole file as one text";
  return task;
}

// ---------------------------------------------------------------------------------------------
// Generic JSONL tasks

enum class JsonDocKind { multiple_choice, multiple_choice_gold_list, partial, loglikelihood };

const char* kind_words(JsonDocKind kind) {
  switch (kind) {
    case JsonDocKind::multiple_choice: return "multiple-choice (single gold)";
    case JsonDocKind::multiple_choice_gold_list: return "multiple-choice (gold list)";
    case JsonDocKind::partial: return "partial-scoring";
    case JsonDocKind::loglikelihood: return "loglikelihood";
  }
  return "?";
}

struct JsonDoc {
  JsonDocKind kind;
  Doc doc;
};

JsonDoc parse_json_doc(const ojson& v, const fs::path& path, int64_t line) {
  if (!v.is_object()) fail("{}:{}: expected a JSON object, not {}", path.string(), line, type_name(v));
  JsonDoc out;
  Doc& doc = out.doc;
  doc.line = line;
  const bool has_context = v.contains("context"), has_query = v.contains("query");
  if (has_context && has_query) fail("{}:{}: both \"context\" and \"query\" given (\"query\" is an alias)", path.string(), line);
  const char* context_key = has_query ? "query" : "context";
  if (v.contains("context_options")) {
    if (has_context || has_query || v.contains("choices")) {
      fail("{}:{}: \"context_options\" (partial scoring) cannot be combined with \"context\"/\"query\"/\"choices\"",
           path.string(), line);
    }
    out.kind = JsonDocKind::partial;
    doc.contexts = get_string_list(v, "context_options", path, line);
    doc.continuations = {get_string(v, "continuation", path, line)};
    const auto gold = v.find("gold");
    if (gold == v.end()) fail("{}:{}: missing \"gold\"", path.string(), line);
    doc.gold = {gold_index(*gold, doc.contexts.size(), path, line)};
  } else if (v.contains("choices")) {
    if (v.contains("continuation")) fail("{}:{}: both \"choices\" and \"continuation\" given", path.string(), line);
    doc.contexts = {get_string(v, context_key, path, line)};
    doc.continuations = get_string_list(v, "choices", path, line);
    const auto gold = v.find("gold");
    if (gold == v.end()) fail("{}:{}: missing \"gold\"", path.string(), line);
    if (gold->is_array()) {
      out.kind = JsonDocKind::multiple_choice_gold_list;
      if (gold->empty()) fail("{}:{}: empty gold list", path.string(), line);
      std::set<int> seen;
      for (const auto& g : *gold) {
        const int idx = gold_index(g, doc.continuations.size(), path, line);
        if (!seen.insert(idx).second) fail("{}:{}: gold {} listed twice", path.string(), line, idx);
        doc.gold.push_back(idx);
      }
    } else {
      out.kind = JsonDocKind::multiple_choice;
      doc.gold = {gold_index(*gold, doc.continuations.size(), path, line)};
    }
  } else if (v.contains("continuation")) {
    if (v.contains("gold")) fail("{}:{}: \"gold\" given without \"choices\" or \"context_options\"", path.string(), line);
    out.kind = JsonDocKind::loglikelihood;
    doc.contexts = {get_string(v, context_key, path, line)};
    doc.continuations = {get_string(v, "continuation", path, line)};
  } else {
    fail("{}:{}: not a task document: expected \"choices\" (multiple choice), \"context_options\" (partial "
         "scoring) or \"continuation\" (loglikelihood)",
         path.string(), line);
  }
  return out;
}

struct JsonTaskFile {
  std::vector<Doc> docs;
  JsonDocKind kind = JsonDocKind::multiple_choice;
  int64_t first_line = 0;
  bool has_header = false;
  ojson header;
  int64_t header_line = 0;
};

JsonTaskFile read_json_task_file(const fs::path& path) {
  JsonTaskFile file;
  const auto entries = read_jsonl(path);
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.value.is_object() && e.value.contains("rankscope_task")) {
      if (i != 0) fail("{}:{}: the \"rankscope_task\" header must be the first line", path.string(), e.line);
      if (e.value.size() != 1) fail("{}:{}: the header line holds only \"rankscope_task\"", path.string(), e.line);
      if (!e.value["rankscope_task"].is_object()) fail("{}:{}: \"rankscope_task\" must be an object", path.string(), e.line);
      file.has_header = true;
      file.header = e.value["rankscope_task"];
      file.header_line = e.line;
      continue;
    }
    JsonDoc jd = parse_json_doc(e.value, path, e.line);
    if (file.docs.empty()) {
      file.kind = jd.kind;
      file.first_line = e.line;
    } else if (jd.kind != file.kind) {
      fail("{}:{}: mixed document kinds: a {} document, but the first document (line {}) is {}", path.string(), e.line,
           kind_words(jd.kind), file.first_line, kind_words(file.kind));
    }
    jd.doc.index = static_cast<int64_t>(file.docs.size());
    file.docs.push_back(std::move(jd.doc));
  }
  if (file.docs.empty()) fail("{}: no documents", path.string());
  return file;
}

Task load_jsonl_task(const fs::path& path, const TaskLoadOptions& options) {
  JsonTaskFile file = read_json_task_file(path);
  Task task;
  task.name = path.stem().string();
  task.files = {path};
  switch (file.kind) {
    case JsonDocKind::multiple_choice:
      task.kind = TaskKind::multiple_choice;
      task.metrics = {"acc", "acc_norm"};
      break;
    case JsonDocKind::multiple_choice_gold_list:
      task.kind = TaskKind::multiple_choice;
      task.mc2 = true;
      task.metrics = {"acc"};
      break;
    case JsonDocKind::partial:
      task.kind = TaskKind::multiple_choice;
      task.metrics = {"acc"};
      break;
    case JsonDocKind::loglikelihood:
      task.kind = TaskKind::loglikelihood;
      task.metrics = {"ppl", "acc"};
      break;
  }
  std::vector<std::string> allowed = task.metrics;
  std::string description;
  fs::path fewshot_file;
  if (file.has_header) {
    const auto where = fmt::format("{}:{}", path.string(), file.header_line);
    for (const auto& [key, value] : file.header.items()) {
      auto text = [&]() {
        if (!value.is_string()) fail("{}: header \"{}\" must be a string", where, printable(key));
        return value.get<std::string>();
      };
      if (key == "name") {
        task.name = text();
        if (task.name.empty()) fail("{}: header \"name\" is empty", where);
      } else if (key == "target_delimiter") {
        task.target_delimiter = text();
      } else if (key == "fewshot_delimiter") {
        task.fewshot_delimiter = text();
      } else if (key == "description") {
        description = text();
      } else if (key == "fewshot_file") {
        fewshot_file = text();
        if (has_control_characters(fewshot_file.string())) {
          fail("{}: header \"fewshot_file\" has control characters: {}", where, printable(fewshot_file.string()));
        }
        if (fewshot_file.is_relative()) fewshot_file = path.parent_path() / fewshot_file;
      } else if (key == "metrics") {
        if (!value.is_array() || value.empty()) fail("{}: header \"metrics\" must be a non-empty list of strings", where);
        std::vector<std::string> metrics;
        for (const auto& m : value) {
          if (!m.is_string()) fail("{}: header \"metrics\" must be a list of strings", where);
          const auto name = m.get<std::string>();
          if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
            fail("{}: metric '{}' is not available for a {} task (available: {})", where, printable(name), kind_words(file.kind),
                 join(allowed, ", "));
          }
          metrics.push_back(name);
        }
        task.metrics = std::move(metrics);
      } else {
        fail("{}: unknown header key \"{}\" (known: name, target_delimiter, fewshot_delimiter, description, "
             "fewshot_file, metrics)",
             where, printable(key));
      }
    }
  }
  task.docs = std::move(file.docs);
  for (auto& d : task.docs) d.description = description;
  if (!fewshot_file.empty()) {
    JsonTaskFile shots = read_json_task_file(fewshot_file);
    if (shots.has_header) fail("{}:{}: a few-shot file takes no \"rankscope_task\" header", fewshot_file.string(), shots.header_line);
    if (shots.kind != file.kind) {
      fail("{}:{}: few-shot documents are {}, the task's are {}", fewshot_file.string(), shots.first_line,
           kind_words(shots.kind), kind_words(file.kind));
    }
    task.files.push_back(fewshot_file);
    task.fewshot_pool = std::move(shots.docs);
    for (auto& d : task.fewshot_pool) d.description = description;
    task.n_docs_total = static_cast<int64_t>(task.docs.size());
    task.docs.resize(static_cast<size_t>(options.limit.of(task.n_docs_total)));
  } else {
    limit_eval_set(task, options.limit);
  }
  task.prompt_summary = fmt::format("JSONL task ({}): {{context}} -> target_delimiter + {{choice}}", kind_words(file.kind));
  return task;
}

using Loader = std::function<Task(const TaskLoadOptions&)>;

const std::map<std::string, Loader>& loaders() {
  static const std::map<std::string, Loader> table = {
      {"arc_easy", [](const TaskLoadOptions& o) { return load_arc("arc_easy", "arc/arc_easy.jsonl", o); }},
      {"arc_challenge", [](const TaskLoadOptions& o) { return load_arc("arc_challenge", "arc/arc_challenge.jsonl", o); }},
      {"hellaswag", load_hellaswag},
      {"winogrande", load_winogrande},
      {"piqa", load_piqa},
      {"boolq", load_boolq},
      {"openbookqa", load_openbookqa},
      {"mmlu", [](const TaskLoadOptions& o) { return load_mmlu(o); }},
      {"truthfulqa_mc1", [](const TaskLoadOptions& o) { return load_truthfulqa(false, o); }},
      {"truthfulqa_mc2", [](const TaskLoadOptions& o) { return load_truthfulqa(true, o); }},
      {"lambada_openai", load_lambada},
      {"sst2", load_sst2},
      {"mrpc", load_mrpc},
      {"wikitext2", [](const TaskLoadOptions& o) { return load_wikitext2(o); }},
      {"wikitext", [](const TaskLoadOptions& o) { return load_wikitext2(o, "wikitext"); }},
      {"tinystories", load_tinystories},
  };
  return table;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string wikitext_detokenize(const std::string& page) {
  std::string s = page;
  // contractions
  s = replace_all(s, "s '", "s'");
  // re.sub(r"/' [0-9]/", r"/'[0-9]/", s): the pattern and replacement are literal-looking regexes,
  // so "/' D/" (D a digit) becomes the text "/'[0-9]/".
  {
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t hit = s.find("/' ", pos);
      if (hit == std::string::npos) break;
      if (hit + 4 < s.size() && s[hit + 3] >= '0' && s[hit + 3] <= '9' && s[hit + 4] == '/') {
        out.append(s, pos, hit - pos);
        out += "/'[0-9]/";
        pos = hit + 5;
      } else {
        out.append(s, pos, hit + 1 - pos);
        pos = hit + 1;
      }
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  // number separators
  s = replace_all(s, " @-@ ", "-");
  s = replace_all(s, " @,@ ", ",");
  s = replace_all(s, " @.@ ", ".");
  // punctuation
  s = replace_all(s, " : ", ": ");
  s = replace_all(s, " ; ", "; ");
  s = replace_all(s, " . ", ". ");
  s = replace_all(s, " ! ", "! ");
  s = replace_all(s, " ? ", "? ");
  s = replace_all(s, " , ", ", ");
  // double brackets
  s = trim_inside(s, '(', ')');
  s = trim_inside(s, '[', ']');
  s = trim_inside(s, '{', '}');
  s = trim_inside(s, '"', '"');
  s = trim_inside(s, '\'', '\'');
  // miscellaneous
  s = replace_all(s, "= = = =", "====");
  s = replace_all(s, "= = =", "===");
  s = replace_all(s, "= =", "==");
  s = replace_all(s, " \xC2\xB0 ", "\xC2\xB0");  // chr(176), the degree sign
  s = replace_all(s, " \n", "\n");
  s = replace_all(s, "\n ", "\n");
  s = replace_all(s, " N ", " 1 ");
  s = replace_all(s, " 's", "'s");
  return s;
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string s = py_strip(text);
  s = replace_all(s, " [title]", ". ");
  // re.sub("\\[.*?\\]", "", s): each "[" up to the next "]" on the same line ("." stops at "\n").
  {
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t open = s.find('[', pos);
      if (open == std::string::npos) break;
      const size_t close = s.find(']', open + 1);
      const size_t newline = s.find('\n', open + 1);
      if (close == std::string::npos) break;
      if (newline != std::string::npos && newline < close) {  // no match from this "["
        out.append(s, pos, open + 1 - pos);
        pos = open + 1;
        continue;
      }
      out.append(s, pos, open - pos);
      pos = close + 1;
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  return replace_all(s, "  ", " ");
}

int64_t python_word_count(const std::string& text) {
  int64_t runs = 0;
  bool in_space = false;
  for (size_t i = 0; i < text.size();) {
    const size_t n = space_at(text, i);
    if (n) {
      if (!in_space) ++runs;
      in_space = true;
      i += n;
    } else {
      in_space = false;
      ++i;
    }
  }
  return runs + 1;
}

const std::vector<std::string>& builtin_task_names() {
  static const std::vector<std::string> names = {
      "arc_easy",       "arc_challenge",  "hellaswag",      "winogrande", "piqa", "boolq",     "openbookqa", "mmlu",
      "truthfulqa_mc1", "truthfulqa_mc2", "lambada_openai", "sst2",       "mrpc", "wikitext2", "wikitext",   "tinystories"};
  return names;
}

const std::vector<std::pair<std::string, std::vector<std::string>>>& task_groups() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> groups = {
      {"arc", {"arc_easy", "arc_challenge"}},
      {"ai2_arc", {"arc_easy", "arc_challenge"}},
      {"truthfulqa", {"truthfulqa_mc1", "truthfulqa_mc2"}},
  };
  return groups;
}

std::vector<std::string> expand_task_groups(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  auto add = [&](const std::string& name) {
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  };
  for (const auto& name : names) {
    const auto& groups = task_groups();
    const auto group = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == name; });
    if (group == groups.end()) {
      add(name);
    } else {
      for (const auto& task : group->second) add(task);
    }
  }
  return out;
}

std::vector<std::string> task_names(const fs::path& data_dir) {
  std::vector<std::string> names = builtin_task_names();
  for (const auto& [group, members] : task_groups()) names.push_back(group);
  try {
    for (const auto& subject : mmlu_subjects(data_dir / "mmlu" / "test")) names.push_back("mmlu_" + subject);
  } catch (const Error&) {  // no MMLU data: its subjects are not known by name
  }
  return names;
}

Task load_task(const std::string& name_or_path, const TaskLoadOptions& options) {
  const auto& table = loaders();
  if (const auto it = table.find(name_or_path); it != table.end()) return it->second(options);
  if (name_or_path.starts_with("mmlu_") && name_or_path.size() > 5 && name_or_path.find('/') == std::string::npos &&
      fs::path(name_or_path).extension() != ".jsonl") {
    return load_mmlu(options, name_or_path.substr(5));
  }
  const fs::path path(name_or_path);
  if (path.extension() == ".jsonl") return load_jsonl_task(path, options);
  fail("unknown task '{}' (built-in tasks: {}; or a path to a .jsonl task file)", name_or_path,
       join(builtin_task_names(), ", "));
}

}  // namespace rankscope
