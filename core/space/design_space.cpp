#include "core/space/design_space.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/base/error.hpp"

namespace rankscope {

namespace {

// Above this many decimal digits a count is described by its log2 only.
constexpr size_t kMaxPrintedDigits = 24;
// Bits of a double's significand: log2_big keeps this many leading bits of a big integer.
constexpr unsigned kDoubleBits = 53;

BigInt product(const std::vector<int64_t>& radices) {
  BigInt n = 1;
  for (auto r : radices) n *= r;
  return n;
}

std::string count_string(const BigInt& n) {
  const auto digits = n.str();
  if (digits.size() <= kMaxPrintedDigits) return fmt::format("{} points (2^{:.1f})", digits, log2_big(n));
  return fmt::format("2^{:.1f} points ({} digits)", log2_big(n), digits.size());
}

void check_digits(const std::vector<int64_t>& radices, const std::vector<int64_t>& digits) {
  if (digits.size() != radices.size()) {
    fail("design space point has {} digits, the space has {} knobs", digits.size(), radices.size());
  }
  for (size_t i = 0; i < digits.size(); ++i) {
    if (digits[i] < 0 || digits[i] >= radices[i]) {
      fail("design space point: digit {} of knob {} outside [0, {})", digits[i], i, radices[i]);
    }
  }
}

std::string kind_list(const std::vector<MatrixKind>& kinds) {
  std::string out;
  for (auto kind : kinds) out += fmt::format("{}{}", out.empty() ? "" : ",", matrix_kind_name(kind));
  return out;
}

// Full rank min(out, in) per kind of the model (every block has the same shapes).
std::vector<std::pair<MatrixKind, int64_t>> full_ranks(const ModelConfig& model) {
  auto one_block = model;
  one_block.n_layer = 1;
  std::vector<std::pair<MatrixKind, int64_t>> out;
  for (const auto& m : decomposable_matrices(one_block)) out.emplace_back(m.kind, std::min(m.n_out, m.n_in));
  return out;
}

// An integer rank must fit every matrix a point may give it to: all kinds, in every space here.
void check_rank(const RankSpec& rank, const ModelConfig& model, std::string_view space) {
  const auto text = rank_string(rank);
  if (rank.percent) {
    if (!(rank.value > 0 && rank.value <= 100)) fail("{} space: percentage '{}' outside (0, 100]", space, text);
    return;
  }
  if (!(rank.value >= 1) || rank.value != std::floor(rank.value)) {
    fail("{} space: rank {} is not a positive integer", space, rank.value);
  }
  for (const auto& [kind, full] : full_ranks(model)) {
    if (rank.value > static_cast<double>(full)) {
      fail("{} space: rank '{}' exceeds the full rank {} of matrix {}, which a point may select", space, text,
           full, matrix_kind_name(kind));
    }
  }
}

std::string choice_string(const SpaceChoice& c) {
  if (c.dense) return "dense";
  auto text = rank_string(c.choice.rank);
  if (c.choice.method != Method::tucker) text += fmt::format("@{}", method_name(c.choice.method));
  return text;
}

// Knobs: one bit per layer (knob l = layer l), one bit per matrix kind in mask order, then the
// rank index (most significant).
class PaperSpace : public DesignSpace {
 public:
  PaperSpace(const ModelConfig& model, std::vector<MatrixKind> kinds, std::vector<RankSpec> ranks, Method method)
      : n_layer_(model.n_layer), kinds_(std::move(kinds)), ranks_(std::move(ranks)), method_(method) {
    if (ranks_.empty()) fail("paper space: empty rank list");
    for (const auto& rank : ranks_) check_rank(rank, model, "paper");
  }

  std::string describe() const override {
    std::string ranks;
    for (const auto& r : ranks_) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", rank_string(r));
    return fmt::format("paper: subsets of {} layers x subsets of {} matrices ({}) x {} rank{} ({}) @{}: {}",
                       n_layer_, kinds_.size(), kind_list(kinds_), ranks_.size(), ranks_.size() == 1 ? "" : "s",
                       ranks, method_name(method_), count_string(count()));
  }
  BigInt count() const override { return product(radices()); }
  std::vector<int64_t> radices() const override {
    std::vector<int64_t> r(static_cast<size_t>(n_layer_) + kinds_.size(), 2);
    r.push_back(static_cast<int64_t>(ranks_.size()));
    return r;
  }

  Config to_config(const std::vector<int64_t>& digits) const override {
    check_digits(radices(), digits);
    const Choice choice{ranks_[static_cast<size_t>(digits.back())], method_};
    Config config;
    for (int64_t l = 0; l < n_layer_; ++l) {
      if (!digits[static_cast<size_t>(l)]) continue;
      for (size_t i = 0; i < kinds_.size(); ++i) {
        if (digits[static_cast<size_t>(n_layer_) + i]) config.cells[{l, kinds_[i]}] = choice;
      }
    }
    return config;
  }

  std::optional<std::vector<int64_t>> from_config(const Config& config) const override {
    std::vector<int64_t> digits(radices().size(), 0);
    if (config.is_base()) return digits;  // index 0: no layer, no matrix, the first rank
    const Choice choice = config.cells.begin()->second;
    if (choice.method != method_) return std::nullopt;
    const auto rank = std::find(ranks_.begin(), ranks_.end(), choice.rank);
    if (rank == ranks_.end()) return std::nullopt;
    digits.back() = rank - ranks_.begin();
    size_t n_layers = 0;
    size_t n_kinds = 0;
    for (const auto& [cell, c] : config.cells) {
      if (c != choice) return std::nullopt;
      const auto [layer, kind] = cell;
      const auto k = std::find(kinds_.begin(), kinds_.end(), kind);
      if (layer < 0 || layer >= n_layer_ || k == kinds_.end()) return std::nullopt;
      auto& layer_bit = digits[static_cast<size_t>(layer)];
      auto& kind_bit = digits[static_cast<size_t>(n_layer_) + static_cast<size_t>(k - kinds_.begin())];
      n_layers += layer_bit == 0;
      n_kinds += kind_bit == 0;
      layer_bit = kind_bit = 1;
    }
    // A point decomposes the full product of its layers and kinds.
    if (n_layers * n_kinds != config.cells.size()) return std::nullopt;
    return digits;
  }

 private:
  int64_t n_layer_;
  std::vector<MatrixKind> kinds_;
  std::vector<RankSpec> ranks_;
  Method method_;
};

// One knob per (block of group_size consecutive layers, kind), block-major, kinds in mask order;
// group_size 1 is the per-matrix space (the order of decomposable_matrices).
class ChoiceSpace : public DesignSpace {
 public:
  ChoiceSpace(const ModelConfig& model, std::vector<MatrixKind> kinds, std::vector<SpaceChoice> choices,
              int64_t group_size, std::string name)
      : n_layer_(model.n_layer), kinds_(std::move(kinds)), choices_(std::move(choices)),
        group_size_(group_size), name_(std::move(name)) {
    if (choices_.empty()) fail("{} space: empty choice list", name_);
    if (group_size_ < 1 || group_size_ > n_layer_) {
      fail("{} space: group size {} outside 1-{} (the model has {} layers)", name_, group_size_, n_layer_, n_layer_);
    }
    for (const auto& c : choices_) {
      if (!c.dense) check_rank(c.choice.rank, model, name_);
    }
  }

  std::string describe() const override {
    std::string choices;
    for (const auto& c : choices_) choices += fmt::format("{}{}", choices.empty() ? "" : ",", choice_string(c));
    const auto layers = group_size_ == 1 ? fmt::format("{} layers", n_layer_)
                                         : fmt::format("{} blocks of {} layers", n_blocks(), group_size_);
    const auto knobs = fmt::format("{} x {} matrices ({})", layers, kinds_.size(), kind_list(kinds_));
    return fmt::format("{}: {} x {} choices ({}): {}", name_, knobs, choices_.size(), choices,
                       count_string(count()));
  }
  BigInt count() const override { return product(radices()); }
  std::vector<int64_t> radices() const override {
    return std::vector<int64_t>(n_knobs(), static_cast<int64_t>(choices_.size()));
  }

  Config to_config(const std::vector<int64_t>& digits) const override {
    check_digits(radices(), digits);
    Config config;
    for (size_t knob = 0; knob < n_knobs(); ++knob) {
      const auto& c = choices_[static_cast<size_t>(digits[knob])];
      if (c.dense) continue;
      const auto [first, last] = block_layers(knob);
      for (int64_t l = first; l < last; ++l) config.cells[{l, kind_of(knob)}] = c.choice;
    }
    return config;
  }

  std::optional<std::vector<int64_t>> from_config(const Config& config) const override {
    for (const auto& [cell, c] : config.cells) {
      const auto [layer, kind] = cell;
      if (layer < 0 || layer >= n_layer_ || std::find(kinds_.begin(), kinds_.end(), kind) == kinds_.end()) {
        return std::nullopt;
      }
    }
    std::vector<int64_t> digits(n_knobs(), 0);
    for (size_t knob = 0; knob < n_knobs(); ++knob) {
      const auto [first, last] = block_layers(knob);
      const auto state = cell_state(config, first, kind_of(knob));
      for (int64_t l = first + 1; l < last; ++l) {
        if (cell_state(config, l, kind_of(knob)) != state) return std::nullopt;  // block not tied
      }
      // The first matching choice gives the smallest index.
      const auto match = std::find_if(choices_.begin(), choices_.end(), [&](const SpaceChoice& c) {
        return state ? !c.dense && c.choice == *state : c.dense;
      });
      if (match == choices_.end()) return std::nullopt;
      digits[knob] = match - choices_.begin();
    }
    return digits;
  }

 private:
  size_t n_blocks() const { return static_cast<size_t>((n_layer_ + group_size_ - 1) / group_size_); }
  size_t n_knobs() const { return n_blocks() * kinds_.size(); }
  MatrixKind kind_of(size_t knob) const { return kinds_[knob % kinds_.size()]; }
  // Layers [first, last) of a knob's block; the last block may be shorter.
  std::pair<int64_t, int64_t> block_layers(size_t knob) const {
    const auto first = static_cast<int64_t>(knob / kinds_.size()) * group_size_;
    return {first, std::min(first + group_size_, n_layer_)};
  }
  static std::optional<Choice> cell_state(const Config& config, int64_t layer, MatrixKind kind) {
    const auto it = config.cells.find({layer, kind});
    if (it == config.cells.end()) return std::nullopt;
    return it->second;
  }

  int64_t n_layer_;
  std::vector<MatrixKind> kinds_;
  std::vector<SpaceChoice> choices_;
  int64_t group_size_;
  std::string name_;
};

// One knob: digit 0 is the base model, digit 1 + i * C + c decomposes matrix i alone (the order of
// decomposable_matrices: layer-major, kinds in mask order) by non-dense choice c. Exhaustive over it
// is one evaluation per (matrix, choice): measured single-matrix sensitivities.
class SingleSpace : public DesignSpace {
 public:
  SingleSpace(const ModelConfig& model, std::vector<MatrixKind> kinds, const std::vector<SpaceChoice>& choices)
      : n_layer_(model.n_layer), kinds_(std::move(kinds)) {
    for (const auto& c : choices) {
      if (c.dense) continue;
      check_rank(c.choice.rank, model, "single");
      choices_.push_back(c.choice);
    }
    if (choices_.empty()) fail("single space: no rank in the choice list (dense alone)");
  }
  std::string describe() const override {
    std::string choices;
    for (const auto& c : choices_) choices += fmt::format("{}{}", choices.empty() ? "" : ",", choice_string({false, c}));
    return fmt::format("single: the base model and each of {} layers x {} matrices ({}) alone at each of {} choices ({}): {}",
                       n_layer_, kinds_.size(), kind_list(kinds_), choices_.size(), choices, count_string(count()));
  }
  BigInt count() const override { return radices()[0]; }
  std::vector<int64_t> radices() const override {
    return {1 + n_layer_ * static_cast<int64_t>(kinds_.size() * choices_.size())};
  }
  Config to_config(const std::vector<int64_t>& digits) const override {
    check_digits(radices(), digits);
    Config config;
    if (digits[0] == 0) return config;
    const auto i = static_cast<size_t>(digits[0] - 1);
    const size_t cell = i / choices_.size();
    config.cells[{static_cast<int64_t>(cell / kinds_.size()), kinds_[cell % kinds_.size()]}] = choices_[i % choices_.size()];
    return config;
  }
  std::optional<std::vector<int64_t>> from_config(const Config& config) const override {
    if (config.cells.empty()) return std::vector<int64_t>{0};
    if (config.cells.size() != 1) return std::nullopt;
    const auto& [where, choice] = *config.cells.begin();
    const auto kind = std::find(kinds_.begin(), kinds_.end(), where.second);
    const auto c = std::find(choices_.begin(), choices_.end(), choice);
    if (where.first < 0 || where.first >= n_layer_ || kind == kinds_.end() || c == choices_.end()) return std::nullopt;
    const auto cell = static_cast<int64_t>(where.first * static_cast<int64_t>(kinds_.size()) + (kind - kinds_.begin()));
    return std::vector<int64_t>{1 + cell * static_cast<int64_t>(choices_.size()) + (c - choices_.begin())};
  }

 private:
  int64_t n_layer_;
  std::vector<MatrixKind> kinds_;
  std::vector<Choice> choices_;
};

}  // namespace

std::vector<SpaceChoice> parse_space_choices(std::string_view text, Method method) {
  std::vector<SpaceChoice> choices;
  const auto whole = std::string(text);
  size_t start = 0;
  while (true) {
    const auto comma = whole.find(',', start);
    auto item = whole.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const auto first = item.find_first_not_of(" \t");
    item = first == std::string::npos ? "" : item.substr(first, item.find_last_not_of(" \t") - first + 1);
    if (item.empty()) fail("bad choice list '{}': empty entry (e.g. dense,50%,25%,1)", whole);
    if (item == "dense") {
      choices.push_back({true, {}});
    } else {
      try {
        // RANK@METHOD overrides the space's method for this entry: the method becomes a
        // dimension of the space (e.g. dense,25%@svd,25%@whiten).
        const auto at = item.find('@');
        const Method m = at == std::string::npos ? method : parse_method(item.substr(at + 1));
        choices.push_back({false, {parse_rank(item.substr(0, at)), m}});
      } catch (const Error& e) {
        fail("bad choice list '{}': {}", whole, e.what());
      }
    }
    if (comma == std::string::npos) return choices;
    start = comma + 1;
  }
}

std::vector<int64_t> DesignSpace::point_at(const BigInt& index) const {
  const auto n = count();
  if (index < 0 || index >= n) fail("point index {} out of range: the space has {} points", index.str(), n.str());
  std::vector<int64_t> digits;
  BigInt rest = index;
  for (auto radix : radices()) {
    digits.push_back(static_cast<int64_t>(rest % radix));
    rest /= radix;
  }
  return digits;
}

BigInt DesignSpace::index_of(const std::vector<int64_t>& digits) const {
  const auto r = radices();
  check_digits(r, digits);
  BigInt index = 0;
  for (size_t i = r.size(); i-- > 0;) index = index * r[i] + digits[i];
  return index;
}

std::vector<int64_t> DesignSpace::sample(std::mt19937_64& rng) const {
  std::vector<int64_t> digits;
  for (auto radix : radices()) digits.push_back(std::uniform_int_distribution<int64_t>(0, radix - 1)(rng));
  return digits;
}

std::vector<MatrixKind> space_kinds(const ModelConfig& model, bool fused) {
  if (!fused) return matrix_kinds(model.arch);
  if (!model.fused) {
    fail("{}: --fused: {} stores no fused tensors (only Phi-3's qkv_proj and gate_up_proj are)",
         model.source.string(), model.architecture);
  }
  return {MatrixKind::qkv, MatrixKind::o, MatrixKind::gate_up, MatrixKind::down};
}

std::unique_ptr<DesignSpace> make_design_space(const ModelConfig& model, const SpaceSpec& spec) {
  auto kinds = [&] { return space_kinds(model, spec.fused); };
  if (spec.kind == "paper") return std::make_unique<PaperSpace>(model, kinds(), spec.ranks, spec.method);
  if (spec.kind == "per-matrix") return std::make_unique<ChoiceSpace>(model, kinds(), spec.choices, 1, "per-matrix");
  if (spec.kind == "grouped") {
    return std::make_unique<ChoiceSpace>(model, kinds(), spec.choices, spec.group_size, "grouped");
  }
  if (spec.kind == "single") return std::make_unique<SingleSpace>(model, kinds(), spec.choices);
  fail("unknown design space '{}' (paper, per-matrix, grouped or single)", spec.kind);
}

double log2_big(const BigInt& n) {
  if (n <= 0) fail("log2 of {}: not a positive number", n.str());
  const auto msb = static_cast<unsigned>(boost::multiprecision::msb(n));
  if (msb < kDoubleBits) return std::log2(n.convert_to<double>());
  // Keep the leading bits: n = top * 2^shift with top < 2^53, exact in a double.
  const unsigned shift = msb + 1 - kDoubleBits;
  const BigInt top = n >> shift;
  return std::log2(top.convert_to<double>()) + shift;
}

}  // namespace rankscope
