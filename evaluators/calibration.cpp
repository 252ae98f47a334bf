#include "evaluators/calibration.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <xxhash.h>

#include "core/models/bert.hpp"
#include "core/base/error.hpp"
#include "core/decompose/factor_cache.hpp"
#include "core/models/llama.hpp"
#include "core/io/model_hash.hpp"
#include "evaluators/tasks.hpp"

namespace rankscope {

namespace {

// Bumped whenever the sampling or the statistics change meaning.
constexpr const char* kFormat = "rankscope-calib-v1";

struct Segment {
  std::string a, b;
};

// What the samples are drawn from: a text, or a list of segments (sentences, sentence pairs).
struct Source {
  bool is_text = true;
  std::string text;
  std::vector<Segment> segments;
  std::string description;  // "file X", "task sst2 (N sentences)"
};

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("--calib: {}: cannot open", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const auto tab = line.find('\t', start);
    out.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) return out;
    start = tab + 1;
  }
}

std::vector<Segment> read_tsv_segments(const std::filesystem::path& path) {
  std::istringstream in(read_file(path));
  std::string line;
  if (!std::getline(in, line)) fail("--calib: {}: empty file", path.string());
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const auto header = split_fields(line);
  auto column = [&](const std::string& name) -> int {
    const auto it = std::find(header.begin(), header.end(), name);
    return it == header.end() ? -1 : static_cast<int>(it - header.begin());
  };
  int col_a = column("sentence"), col_b = -1;
  if (col_a < 0 && column("sentence1") >= 0) {
    col_a = column("sentence1");
    col_b = column("sentence2");
  }
  if (col_a < 0) col_a = 0;
  std::vector<Segment> out;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto fields = split_fields(line);
    if (static_cast<int>(fields.size()) <= std::max(col_a, col_b)) continue;
    Segment s{fields[static_cast<size_t>(col_a)], col_b >= 0 ? fields[static_cast<size_t>(col_b)] : ""};
    if (!s.a.empty()) out.push_back(std::move(s));
  }
  if (out.empty()) fail("--calib: {}: no rows", path.string());
  return out;
}

Source load_source(const CalibrationOptions& options) {
  if (options.source.empty()) fail("--calib: no calibration source given (a text file, a .tsv file or a task name)");
  Source src;
  const std::filesystem::path path = options.source;
  if (std::filesystem::is_regular_file(path)) {
    if (path.extension() == ".tsv") {
      src.is_text = false;
      src.segments = read_tsv_segments(path);
      src.description = fmt::format("{} ({} rows)", path.string(), src.segments.size());
    } else {
      src.text = read_file(path);
      if (src.text.empty()) fail("--calib: {}: empty file", path.string());
      src.description = path.string();
    }
    return src;
  }
  const auto& names = builtin_task_names();
  if (std::find(names.begin(), names.end(), options.source) == names.end()) {
    fail("--calib: '{}' is neither a file nor a built-in task ({})", options.source, fmt::join(names, ", "));
  }
  const Task task = load_task(options.source, {.data_dir = options.data_dir, .limit = -1});
  if (task.kind == TaskKind::perplexity) {
    src.text = task.text;
    src.description = fmt::format("task {}", task.name);
    return src;
  }
  src.is_text = false;
  for (const auto& d : task.docs) {
    if (task.kind == TaskKind::classification) {
      src.segments.push_back({d.text_a, d.text_b});
    } else if (!d.contexts.empty() && !d.continuations.empty()) {
      const size_t gold = d.gold.empty() ? 0 : static_cast<size_t>(d.gold.front());
      const auto& cont = d.continuations[std::min(gold, d.continuations.size() - 1)];
      src.segments.push_back({d.contexts.front() + task.target_delimiter + cont, ""});
    }
  }
  if (src.segments.empty()) fail("--calib: task {} has no documents", task.name);
  src.description = fmt::format("task {} ({} documents)", task.name, src.segments.size());
  return src;
}

std::string source_hash(const Source& src) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  const char kind = src.is_text ? 't' : 's';
  XXH3_128bits_update(state, &kind, 1);
  if (src.is_text) {
    XXH3_128bits_update(state, src.text.data(), src.text.size());
  } else {
    for (const auto& s : src.segments) {
      const uint64_t sizes[2] = {s.a.size(), s.b.size()};
      XXH3_128bits_update(state, sizes, sizeof sizes);
      XXH3_128bits_update(state, s.a.data(), s.a.size());
      XXH3_128bits_update(state, s.b.data(), s.b.size());
    }
  }
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

void check_options(const CalibrationOptions& options) {
  if (options.samples < 1) fail("--calib-samples must be at least 1, got {}", options.samples);
  if (options.ctx < 2) fail("--calib-ctx must be at least 2 tokens, got {}", options.ctx);
  if (options.batch < 1) fail("calibration batch must be at least 1");
}

std::string key_of(const Model& base, const Source& src, const CalibrationOptions& options) {
  std::string text = fmt::format("{}|{}|{}|{}|{}|{}", kFormat, model_content_hash(base), source_hash(src),
                                 options.samples, options.ctx, options.seed);
  // Statistics of activations computed in bf16/fp16 (a GPU) are another entry than fp32 ones.
  const ComputeType type = base.runtime().compute_type();
  if (type != ComputeType::f32) text += fmt::format("|{}", compute_type_name(type));
  const XXH128_hash_t h = XXH3_128bits(text.data(), text.size());
  return fmt::format("{:016x}{:016x}", h.high64, h.low64);
}

// Llama: N windows of L tokens from the second half of the token stream, BOS prepended.
std::vector<std::vector<TokenId>> llama_samples(const Model& base, const Source& src, const CalibrationOptions& o) {
  const auto& c = base.config;
  const int64_t with_bos = o.ctx + (c.bos_token_id ? 1 : 0);
  if (with_bos > c.n_ctx_train) {
    fail("--calib-ctx {}: a window of {} positions does not fit the model's {} positions", o.ctx, with_bos, c.n_ctx_train);
  }
  std::string text = src.text;
  if (!src.is_text) {
    text.clear();
    for (const auto& s : src.segments) text += s.a + (s.b.empty() ? "" : " " + s.b) + "\n";
  }
  const auto ids = base.require_tokenizer().encode(text);
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t half = n / 2;
  if (n - half < o.ctx) {
    fail("--calib: {}: its second half has {} tokens, fewer than one window of --calib-ctx {}", src.description, n - half,
         o.ctx);
  }
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> offset(half, n - o.ctx);
  std::vector<std::vector<TokenId>> out;
  for (int64_t i = 0; i < o.samples; ++i) {
    const int64_t start = offset(rng);
    std::vector<TokenId> seq(static_cast<size_t>(with_bos));
    const size_t first = c.bos_token_id ? 1 : 0;
    if (first == 1) seq[0] = static_cast<TokenId>(*c.bos_token_id);
    std::copy(ids.begin() + start, ids.begin() + start + o.ctx, seq.begin() + static_cast<std::ptrdiff_t>(first));
    out.push_back(std::move(seq));
  }
  return out;
}

// BERT: N distinct segments of the second half, encoded and truncated to L tokens.
std::vector<BertInput> bert_samples(const Model& base, const Source& src, const CalibrationOptions& o) {
  if (o.ctx > base.config.n_ctx_train) {
    fail("--calib-ctx {} exceeds the model's {} positions", o.ctx, base.config.n_ctx_train);
  }
  if (o.ctx < 3) fail("--calib-ctx must be at least 3 for BERT ([CLS] x [SEP])");
  std::vector<Segment> segments = src.segments;
  if (src.is_text) {
    std::istringstream in(src.text);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find_first_not_of(" \t\r") != std::string::npos) segments.push_back({line, ""});
    }
  }
  const size_t half = segments.size() / 2;
  if (segments.size() - half == 0) fail("--calib: {}: no segments in its second half", src.description);
  std::vector<size_t> order(segments.size() - half);
  std::iota(order.begin(), order.end(), half);
  std::mt19937_64 rng(o.seed);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(std::min<size_t>(order.size(), static_cast<size_t>(o.samples)));
  const auto& tok = base.require_tokenizer();
  std::vector<BertInput> out;
  for (auto i : order) out.push_back(bert_encode(tok, segments[i].a, segments[i].b, o.ctx));
  return out;
}

// Bytes the statistics of one group of layers may take: RANKSCOPE_CALIB_MEMORY_MIB when set, else
// half the free memory of a GPU, or 4 GiB of host memory.
int64_t calibration_memory_budget(const CalibrationOptions& options, const Backend& be) {
  if (options.memory_mib > 0) return options.memory_mib << 20;
  if (const char* env = std::getenv("RANKSCOPE_CALIB_MEMORY_MIB"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const double mib = std::strtod(env, &end);
    if (end == env || *end != '\0' || !(mib > 0)) fail("RANKSCOPE_CALIB_MEMORY_MIB: '{}' is not a positive number of MiB", env);
    return static_cast<int64_t>(mib * 1024 * 1024);
  }
  if (be.device_kind() == "cpu") return int64_t{4} << 30;
  return be.free_memory() / 2;
}

}  // namespace

ActivationOptions activation_options(const Model& base, const Config& config, const CalibrationOptions& options,
                                     double asvd_alpha, bool* from_cache) {
  ActivationOptions out;
  out.asvd_alpha = asvd_alpha;
  if (needs_calibration(config) && !options.source.empty()) out.calibration = calibrate(base, options, from_cache);
  return out;
}

std::string calibration_key(const Model& base, const CalibrationOptions& options) {
  check_options(options);
  return key_of(base, load_source(options), options);
}

std::shared_ptr<const Calibration> calibrate(const Model& base, const CalibrationOptions& options, bool* from_cache) {
  check_options(options);
  if (!base.has_weights) fail("{}: shapes-only model (no weights) cannot be calibrated", base.dir.string());
  const Source src = load_source(options);
  const std::string key = key_of(base, src, options);
  std::filesystem::path path;
  if (!options.cache_dir.empty()) {
    path = calibration_path(options.cache_dir, key);
    if (std::filesystem::is_directory(path.parent_path())) remove_stale_temporaries(path.parent_path());
    if (auto cached = load_calibration(path, key)) {
      if (from_cache != nullptr) *from_cache = true;
      // The key is the source's content, not its name: another name for the same text (a copy of
      // the file, the task whose file it is) shares the entry. What is recorded is what this
      // request named, never the name of whichever request filled the cache.
      cached->info["source"] = options.source;
      cached->info["data"] = src.description;
      return std::make_shared<const Calibration>(std::move(*cached));
    }
  }
  if (from_cache != nullptr) *from_cache = false;

  // The samples first: the file's info (written ahead of the statistics) names them.
  std::vector<std::vector<TokenId>> llama_in;
  std::vector<BertInput> bert_in;
  int64_t n_samples = 0, n_tokens = 0;
  if (base.config.arch == Arch::llama) {
    llama_in = llama_samples(base, src, options);
    n_samples = static_cast<int64_t>(llama_in.size());
    for (const auto& s : llama_in) n_tokens += static_cast<int64_t>(s.size());
  } else {
    bert_in = bert_samples(base, src, options);
    n_samples = static_cast<int64_t>(bert_in.size());
    for (const auto& s : bert_in) n_tokens += static_cast<int64_t>(s.ids.size());
  }
  Backend& be = base.runtime();
  nlohmann::json info = {{"source", options.source},
                         {"data", src.description},
                         {"part", "second half"},
                         {"samples", n_samples},
                         {"ctx", options.ctx},
                         {"seed", options.seed},
                         {"tokens", n_tokens},
                         {"device", be.device_kind()},
                         {"dtype", compute_type_name(be.compute_type())},
                         {"key", key}};

  // The statistics of a group of layers at a time: the forward passes run up to the group's last
  // layer, the group's accumulators live on the device, and each finished site goes to the file
  // and is freed before the next, so host memory holds one site's statistics at a time.
  const auto& c = base.config;
  int64_t per_layer = 0;  // bytes of one layer's accumulators
  for (const int64_t width : {c.n_embd, c.n_embd_q(), c.n_embd, c.n_ff}) per_layer += (width * width + width) * 8;
  const int64_t budget = calibration_memory_budget(options, be);
  const int64_t group = std::clamp<int64_t>(budget / std::max<int64_t>(per_layer, 1), 1, c.n_layer);
  std::unique_ptr<CalibrationWriter> writer;
  if (!path.empty()) writer = std::make_unique<CalibrationWriter>(path, key, info);
  Calibration in_memory;
  for (int64_t g0 = 0; g0 < c.n_layer; g0 += group) {
    const int64_t g1 = std::min(c.n_layer, g0 + group);
    CalibrationAccumulator acc(be, g0, g1);
    if (c.arch == Arch::llama) {
      LlamaOptions lo;
      lo.device_hook = &acc.device_hook();
      lo.layers = g1;
      for (size_t i = 0; i < llama_in.size(); i += static_cast<size_t>(options.batch)) {
        const size_t end = std::min(llama_in.size(), i + static_cast<size_t>(options.batch));
        (void)llama_logits(base, std::span(llama_in).subspan(i, end - i), {}, lo);
      }
    } else {
      for (size_t i = 0; i < bert_in.size(); i += static_cast<size_t>(options.batch)) {
        const size_t end = std::min(bert_in.size(), i + static_cast<size_t>(options.batch));
        (void)bert_forward(base, std::span(bert_in).subspan(i, end - i), nullptr, &acc.device_hook());
      }
    }
    for (const auto& [layer, site] : acc.sites()) {
      SiteStats stats = acc.take(layer, site);
      if (writer) {
        writer->add(layer, site, stats);
      } else {
        in_memory.put(layer, site, std::move(stats));
      }
    }
  }
  if (!writer) {
    in_memory.key = key;
    in_memory.info = std::move(info);
    return std::make_shared<const Calibration>(std::move(in_memory));
  }
  writer->commit();
  // Read back lazily: the statistics stay in the file until a decomposition asks for a site.
  auto written = load_calibration(path, key);
  if (!written) fail("{}: the calibration file just written does not read back", path.string());
  auto calibration = std::make_shared<const Calibration>(std::move(*written));
  return calibration;
}

}  // namespace rankscope
