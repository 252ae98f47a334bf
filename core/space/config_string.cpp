#include "core/space/config_string.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <optional>
#include <tuple>

#include <boost/multiprecision/cpp_int.hpp>
#include <fmt/format.h>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

using boost::multiprecision::cpp_int;

constexpr std::string_view kWhitespace = " \t\r\n\f\v";
constexpr double kMaxPercent = 100.0;
// Long enough for the fixed form of the smallest positive double (about 330 digits).
constexpr size_t kFixedBufferSize = 512;

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(kWhitespace);
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(kWhitespace);
  return s.substr(first, last - first + 1);
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const auto pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

// Text quoted in an error message: newlines and tabs become spaces so the message stays one line.
std::string one_line(std::string_view s) {
  std::string out(s);
  std::replace_if(out.begin(), out.end(), [](char c) { return c == '\n' || c == '\r' || c == '\t'; }, ' ');
  return out;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::optional<int64_t> parse_count(std::string_view s) {
  if (!all_digits(s)) return std::nullopt;
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// Shortest fixed-notation decimal that reads back as exactly `value` ("25", "12.5").
std::string shortest_fixed(double value) {
  std::array<char, kFixedBufferSize> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value, std::chars_format::fixed);
  RS_ASSERT(ec == std::errc());
  return std::string(buf.data(), end);
}

// A rank token, or the reason it is not one.
std::optional<RankSpec> try_parse_rank(std::string_view token, std::string& why) {
  if (token.empty()) {
    why = "missing rank";
    return std::nullopt;
  }
  if (token.back() == '%') {
    const auto number = trim(token.substr(0, token.size() - 1));
    // digits, optionally a point and more digits: no signs, exponents, nan or inf
    const auto point = number.find('.');
    const bool well_formed = point == std::string_view::npos
                                 ? all_digits(number)
                                 : all_digits(number.substr(0, point)) && all_digits(number.substr(point + 1));
    double value = 0;
    if (!well_formed ||
        std::from_chars(number.data(), number.data() + number.size(), value, std::chars_format::fixed).ec !=
            std::errc()) {
      why = "a percentage is a decimal number followed by '%'";
      return std::nullopt;
    }
    if (value <= 0 || value > kMaxPercent) {
      why = "a percentage must be above 0% and at most 100%";
      return std::nullopt;
    }
    return RankSpec{true, value};
  }
  if (!all_digits(token)) {
    why = "a rank is a positive integer, a percentage such as 25% or 'dense'";
    return std::nullopt;
  }
  const auto value = parse_count(token);
  if (!value) {
    why = "too large";
    return std::nullopt;
  }
  if (*value < 1) {
    why = "a rank must be at least 1";
    return std::nullopt;
  }
  return RankSpec{false, static_cast<double>(*value)};
}

// What a configuration can touch: the layers and, per matrix kind of the architecture, the shape.
struct ModelShapes {
  Arch arch = Arch::llama;
  int64_t n_layer = 0;
  std::vector<MatrixKind> parts;  // the architecture's matrices, mask order ("all")
  std::vector<MatrixKind> kinds;  // parts, then the fused cells of a fused model (Phi-3: qkv, gate_up)
  std::array<std::pair<int64_t, int64_t>, kNumMatrixKinds> shape{};  // [out, in] per kind
  const ModelConfig* config = nullptr;

  explicit ModelShapes(const ModelConfig& model)
      : arch(model.arch), n_layer(model.n_layer), parts(matrix_kinds(model.arch)), kinds(parts), config(&model) {
    for (auto kind : fused_kinds(model)) kinds.push_back(kind);
    // Every block has the same shapes.
    for (auto kind : kinds) shape[static_cast<size_t>(kind)] = matrix_shape(model, kind);
  }
  // The fused cell a part belongs to in this model, if any.
  std::optional<MatrixKind> group_of(MatrixKind kind) const { return fused_group(*config, kind); }
  bool has(MatrixKind kind) const { return std::find(kinds.begin(), kinds.end(), kind) != kinds.end(); }
  int64_t full_rank(MatrixKind kind) const {
    const auto& s = shape[static_cast<size_t>(kind)];
    return std::min(s.first, s.second);
  }
  // Bit i of a mask is kinds[i].
  size_t index(MatrixKind kind) const {
    return static_cast<size_t>(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin());
  }
  uint32_t mask_of(const std::vector<MatrixKind>& set) const {
    uint32_t mask = 0;
    for (auto kind : set) mask |= 1u << index(kind);
    return mask;
  }
  std::vector<MatrixKind> attn() const { return {MatrixKind::q, MatrixKind::k, MatrixKind::v, MatrixKind::o}; }
  std::vector<MatrixKind> mlp() const {
    if (arch == Arch::llama) return {MatrixKind::gate, MatrixKind::up, MatrixKind::down};
    return {MatrixKind::up, MatrixKind::down};
  }
  std::string names() const {
    std::string out;
    for (auto kind : kinds) out += fmt::format("{}, ", matrix_kind_name(kind));
    return out + "attn, mlp, all";
  }
  std::string label() const { return config->fused ? config->architecture : (arch == Arch::llama ? "llama" : "bert"); }
};

constexpr const char* kMethodList = "tucker, svd, asvd or whiten";

std::optional<Method> method_from_name(std::string_view name) {
  for (auto m : {Method::tucker, Method::svd, Method::asvd, Method::whiten}) {
    if (name == method_name(m)) return m;
  }
  return std::nullopt;
}

// Checks a cell a Config was built with; `where` prefixes the message.
void check_cell(int64_t layer, MatrixKind kind, const Choice& choice, const ModelShapes& shapes,
                const std::string& where) {
  if (layer < 0 || layer >= shapes.n_layer) {
    fail("{}: layer {} out of range 0-{}", where, layer, shapes.n_layer - 1);
  }
  if (!shapes.has(kind)) fail("{}: {} has no matrix '{}'", where, shapes.label(), matrix_kind_name(kind));
  const auto& rank = choice.rank;
  if (rank.percent) {
    if (!(rank.value > 0 && rank.value <= kMaxPercent)) {
      fail("{}: percentage {}% of L{}:{} outside (0, 100]", where, rank.value, layer, matrix_kind_name(kind));
    }
    return;
  }
  if (!(rank.value >= 1) || rank.value != static_cast<double>(static_cast<int64_t>(rank.value))) {
    fail("{}: rank {} of L{}:{} is not a positive integer", where, rank.value, layer, matrix_kind_name(kind));
  }
  if (static_cast<int64_t>(rank.value) > shapes.full_rank(kind)) {
    fail("{}: rank {} of L{}:{} exceeds its full rank {}", where, rank.value, layer, matrix_kind_name(kind),
         shapes.full_rank(kind));
  }
}

void check_config(const Config& config, const ModelShapes& shapes, const std::string& where) {
  for (const auto& [cell, choice] : config.cells) {
    check_cell(cell.first, cell.second, choice, shapes, where);
    // A fused cell and one of its parts cannot both be decomposed.
    if (const auto group = shapes.group_of(cell.second); group && config.cells.contains({cell.first, *group})) {
      fail("{}: L{}:{} is a part of the fused cell L{}:{}, which is decomposed too", where, cell.first,
           matrix_kind_name(cell.second), cell.first, matrix_kind_name(*group));
    }
  }
}

// "L..." of one rule: sorted, distinct layer indices.
std::vector<int64_t> parse_layers(std::string_view text, const ModelShapes& shapes, const std::string& rule) {
  if (text.empty()) fail("bad config rule '{}': missing layers before ':' (e.g. L0-3 or L*)", rule);
  if (text.front() != 'L') fail("bad config rule '{}': layers '{}' must start with 'L'", rule, one_line(text));
  const auto body = trim(text.substr(1));
  std::vector<int64_t> layers;
  if (body == "*") {
    for (int64_t l = 0; l < shapes.n_layer; ++l) layers.push_back(l);
    return layers;
  }
  if (body.empty()) fail("bad config rule '{}': no layers after 'L' in '{}'", rule, one_line(text));
  for (auto raw : split(body, ',')) {
    const auto item = trim(raw);
    if (item.empty()) fail("bad config rule '{}': empty layer item in '{}'", rule, one_line(text));
    const auto dash = item.find('-');
    const auto lo = parse_count(trim(item.substr(0, dash)));
    const auto hi = dash == std::string_view::npos ? lo : parse_count(trim(item.substr(dash + 1)));
    if (!lo || !hi) {
      fail("bad config rule '{}': bad layer '{}' (a number N or an inclusive range N-M)", rule, one_line(item));
    }
    if (*lo > *hi) fail("bad config rule '{}': reversed layer range '{}'", rule, one_line(item));
    if (*hi >= shapes.n_layer) {
      fail("bad config rule '{}': layer '{}' out of range 0-{}", rule, one_line(item), shapes.n_layer - 1);
    }
    for (int64_t l = *lo; l <= *hi; ++l) layers.push_back(l);
  }
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  return layers;
}

// The matrix list of one rule, in mask order without repeats.
std::vector<MatrixKind> parse_matrices(std::string_view text, const ModelShapes& shapes, const std::string& rule) {
  if (text.empty()) fail("bad config rule '{}': missing matrices between ':' and '='", rule);
  uint32_t mask = 0;
  for (auto raw : split(text, ',')) {
    const auto name = trim(raw);
    if (name.empty()) fail("bad config rule '{}': empty matrix name in '{}'", rule, one_line(text));
    if (name == "all") {
      mask |= shapes.mask_of(shapes.parts);
    } else if (name == "attn") {
      mask |= shapes.mask_of(shapes.attn());
    } else if (name == "mlp") {
      mask |= shapes.mask_of(shapes.mlp());
    } else if (const auto kind = matrix_kind_from_name(name); kind && shapes.has(*kind)) {
      mask |= 1u << shapes.index(*kind);
    } else {
      fail("bad config rule '{}': unknown matrix '{}' ({} has {})", rule, one_line(name), shapes.label(),
           shapes.names());
    }
  }
  std::vector<MatrixKind> kinds;
  for (size_t i = 0; i < shapes.kinds.size(); ++i) {
    if (mask & (1u << i)) kinds.push_back(shapes.kinds[i]);
  }
  return kinds;
}

void parse_rule(std::string_view text, const ModelShapes& shapes, Config& config) {
  const auto rule = one_line(text);
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) fail("bad config rule '{}': missing ':' after the layers", rule);
  const auto eq = text.find('=', colon);
  if (eq == std::string_view::npos) fail("bad config rule '{}': missing '=' before the rank", rule);
  const auto layers = parse_layers(trim(text.substr(0, colon)), shapes, rule);
  const auto kinds = parse_matrices(trim(text.substr(colon + 1, eq - colon - 1)), shapes, rule);

  const auto value = text.substr(eq + 1);
  const auto at = value.find('@');
  if (at != std::string_view::npos && value.find('@', at + 1) != std::string_view::npos) {
    fail("bad config rule '{}': duplicate '@' in '{}'", rule, one_line(trim(value)));
  }
  const auto rank_text = trim(value.substr(0, at));
  Choice choice;
  if (at != std::string_view::npos) {
    const auto method_text = trim(value.substr(at + 1));
    if (method_text.empty()) fail("bad config rule '{}': missing method after '@' ({})", rule, kMethodList);
    const auto method = method_from_name(method_text);
    if (!method) fail("bad config rule '{}': unknown method '{}' ({})", rule, one_line(method_text), kMethodList);
    choice.method = *method;
  }
  const bool dense = rank_text == "dense";
  if (!dense) {
    std::string why;
    const auto rank = try_parse_rank(rank_text, why);
    if (!rank) fail("bad config rule '{}': bad rank '{}': {}", rule, one_line(rank_text), why);
    choice.rank = *rank;
    if (!rank->percent) {
      for (auto kind : kinds) {
        if (static_cast<int64_t>(rank->value) > shapes.full_rank(kind)) {
          const auto& s = shapes.shape[static_cast<size_t>(kind)];
          fail("bad config rule '{}': rank '{}' exceeds the full rank {} of matrix {} [{} x {}]", rule,
               rank_text, shapes.full_rank(kind), matrix_kind_name(kind), s.first, s.second);
        }
      }
    }
  }
  for (auto kind : kinds) {
    const auto group = shapes.group_of(kind);
    if (group && std::find(kinds.begin(), kinds.end(), *group) != kinds.end()) {
      fail("bad config rule '{}': names both the fused cell {} and its part {} (one cell or its parts)", rule,
           matrix_kind_name(*group), matrix_kind_name(kind));
    }
  }
  for (auto layer : layers) {
    for (auto kind : kinds) {
      // A fused cell covers its parts: setting it (or making it dense) replaces whatever its parts
      // held. A part cannot be changed alone while its fused cell is decomposed.
      if (is_fused_kind(kind)) {
        for (auto part : fused_parts(kind)) config.cells.erase({layer, part});
      } else if (const auto group = shapes.group_of(kind); group && config.cells.contains({layer, *group})) {
        fail("bad config rule '{}': L{}:{} is a part of the fused cell L{}:{} set by an earlier rule (make that "
             "dense first: L{}:{}=dense)", rule, layer, matrix_kind_name(kind), layer, matrix_kind_name(*group), layer,
             matrix_kind_name(*group));
      }
      if (dense) {
        config.cells.erase({layer, kind});
      } else {
        config.cells[{layer, kind}] = choice;
      }
    }
  }
}

// "L*", or the layers with every maximal run of consecutive layers written N-M.
std::string layers_string(const std::vector<int64_t>& layers, int64_t n_layer) {
  if (static_cast<int64_t>(layers.size()) == n_layer) return "L*";
  std::string out = "L";
  for (size_t i = 0; i < layers.size();) {
    size_t j = i;
    while (j + 1 < layers.size() && layers[j + 1] == layers[j] + 1) ++j;
    if (i > 0) out += ',';
    out += j == i ? fmt::format("{}", layers[i]) : fmt::format("{}-{}", layers[i], layers[j]);
    i = j + 1;
  }
  return out;
}

std::string matrices_string(uint32_t mask, const ModelShapes& shapes) {
  if (mask == shapes.mask_of(shapes.parts)) return "all";
  if (mask == shapes.mask_of(shapes.attn())) return "attn";
  if (mask == shapes.mask_of(shapes.mlp())) return "mlp";
  std::string out;
  for (size_t i = 0; i < shapes.kinds.size(); ++i) {
    if (!(mask & (1u << i))) continue;
    if (!out.empty()) out += ',';
    out += matrix_kind_name(shapes.kinds[i]);
  }
  return out;
}

}  // namespace

std::string_view method_name(Method method) {
  switch (method) {
    case Method::tucker: return "tucker";
    case Method::svd: return "svd";
    case Method::asvd: return "asvd";
    case Method::whiten: return "whiten";
  }
  return "tucker";
}

bool is_activation_aware(Method method) { return method == Method::asvd || method == Method::whiten; }

Method parse_method(std::string_view token) {
  const auto method = method_from_name(trim(token));
  if (!method) fail("unknown decomposition method '{}' ({})", one_line(token), kMethodList);
  return *method;
}

RankSpec parse_rank(std::string_view token) {
  const auto text = trim(token);
  std::string why;
  const auto rank = try_parse_rank(text, why);
  if (!rank) fail("bad rank '{}': {}", one_line(text), why);
  return *rank;
}

std::string rank_string(const RankSpec& rank) {
  if (rank.percent) return shortest_fixed(rank.value) + "%";
  return fmt::format("{}", static_cast<int64_t>(rank.value));
}

int64_t RankSpec::resolve(int64_t full_rank) const {
  if (!percent) return static_cast<int64_t>(value);
  // Exactly on the decimal the user wrote (its shortest form m / 10^d): in doubles, 0.7% of 5500
  // (38.5) comes out as 38.4999... and would round down.
  const auto decimal = shortest_fixed(value);
  const auto point = decimal.find('.');
  std::string digits = decimal;
  size_t places = 0;
  if (point != std::string::npos) {
    digits.erase(point, 1);
    places = decimal.size() - point - 1;
  }
  const cpp_int mantissa(digits);
  const cpp_int denominator = cpp_int(100) * boost::multiprecision::pow(cpp_int(10), static_cast<unsigned>(places));
  // round half up of mantissa * full_rank / denominator
  const cpp_int rounded = (2 * mantissa * full_rank + denominator) / (2 * denominator);
  return std::max<int64_t>(1, rounded.convert_to<int64_t>());
}

Config parse_config(std::string_view text, const ModelConfig& model) {
  Config config;
  if (trim(text).empty()) return config;
  const ModelShapes shapes(model);
  const auto rules = split(text, ';');
  for (size_t i = 0; i < rules.size(); ++i) {
    const auto rule = trim(rules[i]);
    if (rule.empty()) {
      fail("bad config string '{}': empty rule {} (two ';' in a row, or one at an end)", one_line(trim(text)),
           i + 1);
    }
    parse_rule(rule, shapes, config);
  }
  return config;
}

std::string encode_config(const Config& config, const ModelConfig& model) {
  const ModelShapes shapes(model);
  check_config(config, shapes, "cannot encode configuration");
  // Per (choice, layer) the kinds holding that choice; the cells are ordered by layer, so each
  // layer list below comes out sorted.
  std::map<std::pair<Choice, int64_t>, uint32_t> masks;
  for (const auto& [cell, choice] : config.cells) masks[{choice, cell.first}] |= 1u << shapes.index(cell.second);
  // One rule per (choice, mask): the layers whose kinds with that choice are exactly the mask.
  // Rules are disjoint because each cell lies in exactly one (choice, layer) mask.
  std::map<std::pair<Choice, uint32_t>, std::vector<int64_t>> rule_layers;
  for (const auto& [key, mask] : masks) rule_layers[{key.first, mask}].push_back(key.second);

  struct Rule {
    std::vector<int64_t> layers;
    std::vector<size_t> kinds;  // mask bits, ascending
    Choice choice;
  };
  std::vector<Rule> rules;
  for (const auto& [key, layers] : rule_layers) {
    Rule rule{layers, {}, key.first};
    for (size_t i = 0; i < shapes.kinds.size(); ++i) {
      if (key.second & (1u << i)) rule.kinds.push_back(i);
    }
    rules.push_back(std::move(rule));
  }
  // By first layers, then by matrices in mask order; (layers, kinds) is unique among disjoint rules.
  std::sort(rules.begin(), rules.end(), [](const Rule& a, const Rule& b) {
    return std::tie(a.layers, a.kinds) < std::tie(b.layers, b.kinds);
  });

  std::string out;
  for (const auto& rule : rules) {
    uint32_t mask = 0;
    for (auto i : rule.kinds) mask |= 1u << i;
    if (!out.empty()) out += ';';
    out += fmt::format("{}:{}={}", layers_string(rule.layers, shapes.n_layer), matrices_string(mask, shapes),
                       rank_string(rule.choice.rank));
    if (rule.choice.method != Method::tucker) out += fmt::format("@{}", method_name(rule.choice.method));
  }
  return out;
}

std::vector<ResolvedCell> resolve_config(const Config& config, const ModelConfig& model) {
  const ModelShapes shapes(model);
  check_config(config, shapes, "cannot resolve configuration");
  std::vector<ResolvedCell> out;
  for (const auto& [where, choice] : config.cells) {
    const auto [n_out, n_in] = matrix_shape(model, where.second);
    out.push_back({where.first, where.second, n_out, n_in, choice.rank.resolve(std::min(n_out, n_in)), choice.method});
  }
  // Layer-major, kinds in mask order (the fused cells after the parts).
  std::sort(out.begin(), out.end(), [](const ResolvedCell& a, const ResolvedCell& b) {
    return std::pair(a.layer, static_cast<int>(a.kind)) < std::pair(b.layer, static_cast<int>(b.kind));
  });
  return out;
}

}  // namespace rankscope
