// Configuration strings and design spaces: the grammar, the canonical form (parse(encode(c)) == c
// over random configurations), percent rounding, one error per bad string, exact space counts.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/space/config_string.hpp"
#include "core/space/design_space.hpp"
#include "core/base/error.hpp"
#include "core/io/model_config.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;
using Catch::Matchers::Contains;

namespace {

// Shapes-only models built in code (no files needed).
ModelConfig llama_shapes(int64_t n_layer, int64_t n_embd, int64_t n_ff, int64_t n_head, int64_t n_head_kv) {
  ModelConfig c;
  c.arch = Arch::llama;
  c.architecture = "LlamaForCausalLM";
  c.n_vocab = 32000;
  c.n_embd = n_embd;
  c.n_ff = n_ff;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.n_embd_head = n_embd / n_head;
  c.n_ctx_train = 4096;
  return c;
}

ModelConfig bert_shapes(int64_t n_layer, int64_t n_embd, int64_t n_ff, int64_t n_head) {
  ModelConfig c;
  c.arch = Arch::bert;
  c.architecture = "BertModel";
  c.n_vocab = 30522;
  c.n_embd = n_embd;
  c.n_ff = n_ff;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head;
  c.n_embd_head = n_embd / n_head;
  c.n_ctx_train = 512;
  c.n_type_vocab = 2;
  c.activation = Activation::gelu_erf;
  return c;
}

const ModelConfig kLlama7b = llama_shapes(32, 4096, 11008, 32, 32);
const ModelConfig kLlama70b = llama_shapes(80, 8192, 28672, 64, 8);  // GQA: k, v are [1024 x 8192]
const ModelConfig kLlamaTiny = llama_shapes(5, 64, 172, 8, 4);       // stories260K shapes
const ModelConfig kBertTiny = bert_shapes(2, 128, 512, 2);
const ModelConfig kBertBase = bert_shapes(12, 768, 3072, 12);
// Fused q/k/v and gate/up tensors (Phi-3): Phi-3-mini's shapes, and a small GQA one.
ModelConfig fused_shapes(int64_t n_layer, int64_t n_embd, int64_t n_ff, int64_t n_head, int64_t n_head_kv) {
  auto c = llama_shapes(n_layer, n_embd, n_ff, n_head, n_head_kv);
  c.architecture = "Phi3ForCausalLM";
  c.fused = true;
  return c;
}
const ModelConfig kPhi3Mini = fused_shapes(32, 3072, 8192, 32, 32);
const ModelConfig kFusedTiny = fused_shapes(3, 64, 128, 4, 2);  // qkv [128 x 64]: k, v [32 x 64]

Choice rank_choice(int64_t rank, Method method = Method::tucker) { return {{false, double(rank)}, method}; }
Choice percent_choice(double pct, Method method = Method::tucker) { return {{true, pct}, method}; }

std::string error_of(std::string_view text, const ModelConfig& model) {
  try {
    parse_config(text, model);
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK(message.find('\n') == std::string::npos);  // one line
    return message;
  }
  return "no error";
}

int64_t full_rank(const ModelConfig& model, MatrixKind kind) {
  const auto [out, in] = matrix_shape(model, kind);  // every block has the same shapes
  return std::min(out, in);
}

int64_t min_full_rank(const ModelConfig& model, const std::vector<MatrixKind>& kinds) {
  int64_t r = INT64_MAX;
  for (auto kind : kinds) r = std::min(r, full_rank(model, kind));
  return r;
}

template <typename T>
const T& pick(const std::vector<T>& v, std::mt19937_64& rng) {
  return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng)];
}

int64_t uniform(int64_t lo, int64_t hi, std::mt19937_64& rng) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// A random rank for matrices whose smallest full rank is `max_rank`: integers, percentages with
// 0-3 decimals, arbitrary doubles in (0, 100].
RankSpec random_rank(int64_t max_rank, std::mt19937_64& rng) {
  switch (uniform(0, 4, rng)) {
    case 0: return {false, double(uniform(1, std::min<int64_t>(max_rank, 8), rng))};
    case 1: return {false, double(uniform(1, max_rank, rng))};
    case 2: return {true, pick(std::vector<double>{100, 50, 25, 12.5, 6.25, 1, 0.5}, rng)};
    case 3: {
      const auto places = static_cast<int>(uniform(0, 3, rng));
      const double scale = std::pow(10.0, places);
      const auto text = fmt::format("{:.{}f}", double(uniform(1, int64_t(100 * scale), rng)) / scale, places);
      return parse_rank(text + "%");
    }
    default: return {true, std::uniform_real_distribution<double>(1e-6, 100.0)(rng)};
  }
}

Choice random_choice(int64_t max_rank, std::mt19937_64& rng) {
  return {random_rank(max_rank, rng), uniform(0, 2, rng) == 0 ? Method::svd : Method::tucker};
}

// A random configuration: a few choices (so that rules group), placed by random rectangles of
// layers x kinds, then a sprinkle of per-cell edits and removals.
Config random_config(const ModelConfig& model, std::mt19937_64& rng) {
  const auto kinds = matrix_kinds(model.arch);
  Config config;
  const auto n_rects = uniform(0, 5, rng);
  for (int64_t r = 0; r < n_rects; ++r) {
    std::vector<MatrixKind> chosen;
    for (auto kind : kinds) {
      if (uniform(0, 1, rng)) chosen.push_back(kind);
    }
    if (chosen.empty()) chosen.push_back(pick(kinds, rng));
    const auto choice = random_choice(min_full_rank(model, chosen), rng);
    const auto lo = uniform(0, model.n_layer - 1, rng);
    const auto hi = uniform(lo, model.n_layer - 1, rng);
    for (auto l = lo; l <= hi; ++l) {
      for (auto kind : chosen) config.cells[{l, kind}] = choice;
    }
  }
  const auto n_edits = uniform(0, 6, rng);
  for (int64_t e = 0; e < n_edits; ++e) {
    const std::pair<int64_t, MatrixKind> cell{uniform(0, model.n_layer - 1, rng), pick(kinds, rng)};
    if (uniform(0, 2, rng) == 0) {
      config.cells.erase(cell);
    } else {
      config.cells[cell] = random_choice(full_rank(model, cell.second), rng);
    }
  }
  // A fused model: some layers decompose a fused cell instead of its parts.
  for (const auto fused : fused_kinds(model)) {
    for (int64_t l = 0; l < model.n_layer; ++l) {
      if (uniform(0, 3, rng) != 0) continue;
      for (const auto part : fused_parts(fused)) config.cells.erase({l, part});
      config.cells[{l, fused}] = random_choice(full_rank(model, fused), rng);
    }
  }
  return config;
}

std::string pad(std::string_view token, std::mt19937_64& rng) {
  static const std::vector<std::string> spaces = {"", "", "", " ", "  ", "\t"};
  return pick(spaces, rng) + std::string(token) + pick(spaces, rng);
}

// A random string as a user might write it: unsorted, overlapping, groups, whitespace, dense
// overrides, explicit @tucker, percentages with trailing zeros.
std::string random_string(const ModelConfig& model, std::mt19937_64& rng) {
  const auto kinds = matrix_kinds(model.arch);
  std::vector<std::string> names;
  for (auto kind : kinds) names.emplace_back(matrix_kind_name(kind));
  names.insert(names.end(), {"attn", "mlp", "all"});
  for (auto kind : fused_kinds(model)) names.emplace_back(matrix_kind_name(kind));
  std::vector<std::string> rules;
  const auto n_rules = uniform(1, 5, rng);
  for (int64_t r = 0; r < n_rules; ++r) {
    std::string layers = "L";
    if (uniform(0, 4, rng) == 0) {
      layers += pad("*", rng);
    } else {
      const auto n_items = uniform(1, 3, rng);
      for (int64_t i = 0; i < n_items; ++i) {
        const auto lo = uniform(0, model.n_layer - 1, rng);
        const auto hi = uniform(lo, model.n_layer - 1, rng);
        const auto item = uniform(0, 1, rng) ? fmt::format("{}", lo) : fmt::format("{}-{}", lo, hi);
        layers += (i ? "," : "") + pad(item, rng);
      }
    }
    std::vector<std::string> matrices;
    const auto n_names = uniform(1, 3, rng);
    for (int64_t i = 0; i < n_names; ++i) matrices.push_back(pick(names, rng));
    // The smallest full rank among the named matrices bounds an integer rank.
    int64_t max_rank = INT64_MAX;
    for (const auto& name : matrices) {
      const auto cfg = parse_config(fmt::format("L0:{}=1", name), model);
      for (const auto& [cell, choice] : cfg.cells) max_rank = std::min(max_rank, full_rank(model, cell.second));
    }
    std::string rank;
    switch (uniform(0, 5, rng)) {
      case 0: rank = "dense"; break;
      case 1: rank = fmt::format("{}", uniform(1, max_rank, rng)); break;
      case 2: rank = fmt::format("{}", uniform(1, std::min<int64_t>(4, max_rank), rng)); break;
      case 3: rank = pick(std::vector<std::string>{"25%", "12.5%", "12.50%", "050%", "100%", "0.7%"}, rng); break;
      default: rank = fmt::format("{}%", uniform(1, 100, rng)); break;
    }
    std::string method;
    switch (uniform(0, 3, rng)) {
      case 0: method = "@svd"; break;
      case 1: method = "@" + pad("tucker", rng); break;
      default: break;
    }
    rules.push_back(pad(fmt::format("{}:{}={}{}", layers, fmt::join(matrices, pad(",", rng)), pad(rank, rng), method),
                        rng));
  }
  return fmt::format("{}", fmt::join(rules, ";"));
}

// The canonical-form contract for one configuration.
void check_canonical(const Config& config, const ModelConfig& model) {
  const auto text = encode_config(config, model);
  INFO("canonical: " << text);
  CHECK(parse_config(text, model) == config);
  CHECK(encode_config(parse_config(text, model), model) == text);
  CHECK(text.find("@tucker") == std::string::npos);
  CHECK(text.find("dense") == std::string::npos);
  CHECK(text.find(' ') == std::string::npos);
  if (text.empty()) {
    CHECK(config.is_base());
    return;
  }
  // Disjoint rules: each parses alone, and together they cover each cell once.
  size_t covered = 0;
  std::set<std::pair<int64_t, MatrixKind>> seen;
  for (size_t pos = 0; pos <= text.size();) {
    const auto end = std::min(text.find(';', pos), text.size());
    const auto rule = parse_config(text.substr(pos, end - pos), model);
    covered += rule.cells.size();
    for (const auto& [cell, choice] : rule.cells) seen.insert(cell);
    pos = end + 1;
  }
  CHECK(covered == config.cells.size());
  CHECK(seen.size() == config.cells.size());
}

// Returns how many random strings parsed with a fused cell in them (0 for other models).
int check_round_trips(const ModelConfig& model, uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  int with_fused = 0;
  for (int i = 0; i < n; ++i) {
    check_canonical(random_config(model, rng), model);
    const auto text = random_string(model, rng);
    INFO("written: " << text);
    Config config;
    try {
      config = parse_config(text, model);
    } catch (const Error& e) {
      // Well-formed strings are refused only on a fused model: a rule on a part of a decomposed
      // fused cell, or one naming a fused cell and its part.
      CHECK(model.fused);
      CHECK_THAT(e.what(), Contains("fused cell"));
      continue;
    }
    check_canonical(config, model);
    with_fused += std::any_of(config.cells.begin(), config.cells.end(),
                              [](const auto& cell) { return is_fused_kind(cell.first.second); }) ? 1 : 0;
  }
  return with_fused;
}

}  // namespace

TEST_CASE("the issue's examples parse and print canonically", "[config]") {
  SECTION("the paper's 9 % configuration") {
    const auto c = parse_config("L2,17,31:all=1", kLlama7b);
    REQUIRE(c.cells.size() == 21);
    for (const auto& [cell, choice] : c.cells) {
      CHECK((cell.first == 2 || cell.first == 17 || cell.first == 31));
      CHECK(choice == rank_choice(1));
    }
    CHECK(encode_config(c, kLlama7b) == "L2,17,31:all=1");
  }
  SECTION("two rules, a percentage and svd") {
    const auto c = parse_config("L0-15:q,k=64;L16-31:mlp=25%@svd", kLlama7b);
    CHECK(c.cells.size() == 16 * 2 + 16 * 3);
    CHECK(c.cells.at({3, MatrixKind::k}) == rank_choice(64));
    CHECK(c.cells.at({16, MatrixKind::gate}) == percent_choice(25, Method::svd));
    CHECK_FALSE(c.cells.contains({16, MatrixKind::q}));
    CHECK(encode_config(c, kLlama7b) == "L0-15:q,k=64;L16-31:mlp=25%@svd");
  }
  SECTION("every layer") {
    const auto c = parse_config("L*:down=512", kLlama7b);
    CHECK(c.cells.size() == 32);
    CHECK(encode_config(c, kLlama7b) == "L*:down=512");
  }
  SECTION("dense undoes an earlier rule") {
    const auto c = parse_config("L*:all=25%;L0,31:all=dense", kLlama7b);
    CHECK(c.cells.size() == 30 * 7);
    CHECK(encode_config(c, kLlama7b) == "L1-30:all=25%");
  }
  SECTION("the empty string is the base model") {
    CHECK(parse_config("", kLlama7b).is_base());
    CHECK(parse_config("  \t ", kLlama7b).is_base());
    CHECK(encode_config(Config{}, kLlama7b).empty());
    CHECK(parse_config("L*:all=dense", kLlama7b).is_base());
  }
}

TEST_CASE("canonical form: sorted, merged, groups, defaults omitted", "[config]") {
  const std::vector<std::tuple<const ModelConfig*, std::string, std::string>> cases = {
      {&kLlama7b, "L3,1,2:k,q=64", "L1-3:q,k=64"},
      {&kLlama7b, "L5:q=1@tucker", "L5:q=1"},
      {&kLlama7b, "L0-31:gate,up,down=10%", "L*:mlp=10%"},
      {&kLlama7b, "L0:o,v,k,q=1", "L0:attn=1"},
      {&kLlama7b, "L0:up,down=1", "L0:up,down=1"},
      {&kLlama7b, "L0:attn,mlp=1", "L0:all=1"},
      {&kLlama7b, "L0-3,2-6,9:q=1", "L0-6,9:q=1"},
      {&kLlama7b, "L7,8:q=1", "L7-8:q=1"},
      {&kLlama7b, "L0:q=12.50%", "L0:q=12.5%"},
      {&kLlama7b, "L0:q=025%;L1:q=100%", "L0:q=25%;L1:q=100%"},
      {&kLlama7b, "L0:q=0007", "L0:q=7"},
      {&kLlama7b, " L 0 - 3 , 5 : q , k = 12.5 % @ svd ", "L0-3,5:q,k=12.5%@svd"},
      {&kLlama7b, "L16-31:q=1;L0-15:q=1", "L*:q=1"},
      {&kLlama7b, "L*:all=1;L5:q=2", "L0-4,6-31:all=1;L5:q=2;L5:k,v,o,gate,up,down=1"},
      {&kLlama7b, "L1:k=1@svd;L1:q=1", "L1:q=1;L1:k=1@svd"},
      {&kBertTiny, "L0:up,down=1", "L0:mlp=1"},
      {&kBertTiny, "L0-1:q,k,v,o,up,down=2", "L*:all=2"},
      {&kBertTiny, "L*:mlp=3;L*:attn=3", "L*:all=3"},
  };
  for (const auto& [model, written, canonical] : cases) {
    INFO(written);
    const auto c = parse_config(written, *model);
    CHECK(encode_config(c, *model) == canonical);
    CHECK(parse_config(canonical, *model) == c);
  }
}

TEST_CASE("parse(encode(c)) == c over random configurations", "[config]") {
  check_round_trips(kLlama7b, 1, 200);
  check_round_trips(kLlama70b, 2, 100);
  check_round_trips(kLlamaTiny, 3, 300);
  check_round_trips(kBertTiny, 4, 300);
  check_round_trips(kBertBase, 5, 200);
  // The fused strings exercise fused cells, not only their errors.
  CHECK(check_round_trips(kPhi3Mini, 6, 200) >= 15);  // 21 with this seed
  CHECK(check_round_trips(kFusedTiny, 7, 300) >= 15);  // 24 with this seed
}

TEST_CASE("parse(encode(c)) == c on the shared model configs", "[config]") {
  const auto llama7b = test::shared_dir() / "configs" / "llama-2-7b" / "config.json";
  const auto stories = test::shared_data("stories260K-hf") / "config.json";
  const auto bert = test::shared_data("bert-tiny-sst2") / "config.json";
  RS_REQUIRE_SHARED(llama7b);
  RS_REQUIRE_SHARED(stories);
  RS_REQUIRE_SHARED(bert);
  const auto model7b = read_model_config(llama7b);
  CHECK(encode_config(parse_config("L2,17,31:all=1", model7b), model7b) == "L2,17,31:all=1");
  check_round_trips(model7b, 11, 100);
  check_round_trips(read_model_config(stories), 12, 300);
  check_round_trips(read_model_config(bert), 13, 300);
}

TEST_CASE("resolve_config gives absolute ranks, percentages rounded half up", "[config]") {
  SECTION("Llama-2-7B shapes") {
    const auto cells = resolve_config(parse_config("L1:down=12.5%@svd;L0:q=25%;L0:k=1", kLlama7b), kLlama7b);
    REQUIRE(cells.size() == 3);  // decomposable_matrices order: layer, then mask order
    CHECK((cells[0].layer == 0 && cells[0].kind == MatrixKind::q && cells[0].rank == 1024));
    CHECK((cells[0].n_out == 4096 && cells[0].n_in == 4096 && cells[0].method == Method::tucker));
    CHECK((cells[1].kind == MatrixKind::k && cells[1].rank == 1));
    CHECK((cells[2].layer == 1 && cells[2].kind == MatrixKind::down && cells[2].rank == 512));
    CHECK((cells[2].n_out == 4096 && cells[2].n_in == 11008 && cells[2].method == Method::svd));
  }
  SECTION("rounding") {
    const auto model = llama_shapes(1, 10, 30, 2, 2);  // q full rank 10
    const auto rank_of = [&](const std::string& pct) {
      return resolve_config(parse_config("L0:q=" + pct, model), model).at(0).rank;
    };
    CHECK(rank_of("25%") == 3);    // 2.5 -> 3
    CHECK(rank_of("15%") == 2);    // 1.5 -> 2
    CHECK(rank_of("14.9%") == 1);  // 1.49 -> 1
    CHECK(rank_of("5%") == 1);     // 0.5 -> 1
    CHECK(rank_of("1%") == 1);     // 0.1 -> at least 1
    CHECK(rank_of("100%") == 10);
    CHECK(rank_of("0.0001%") == 1);
  }
  SECTION("exact on the decimal written, where doubles would round down") {
    // 0.7% of 5500 is 38.5; 0.7 / 100 * 5500 in doubles is 38.49999...
    CHECK(RankSpec{true, 0.7}.resolve(5500) == 39);
    CHECK(RankSpec{true, 0.7}.resolve(10500) == 74);
    CHECK(RankSpec{true, 14.5}.resolve(100) == 15);
    CHECK(RankSpec{true, 33.3}.resolve(4096) == 1364);  // 1363.968
    CHECK(RankSpec{false, 77}.resolve(4096) == 77);
  }
  SECTION("GQA: percentages follow each matrix's own full rank") {
    const auto cells = resolve_config(parse_config("L0:q,k=50%", kLlama70b), kLlama70b);
    REQUIRE(cells.size() == 2);
    CHECK(cells[0].rank == 4096);
    CHECK(cells[1].rank == 512);
  }
}

TEST_CASE("bad config strings name the offending token", "[config][errors]") {
  const std::vector<std::tuple<const ModelConfig*, std::string, std::vector<std::string>>> cases = {
      {&kLlama7b, "L0:qq=1", {"unknown matrix", "'qq'"}},
      {&kBertTiny, "L0:gate=1", {"unknown matrix", "'gate'", "bert"}},
      {&kLlama7b, "L32:q=1", {"out of range", "'32'", "0-31"}},
      {&kLlama7b, "L0-32:q=1", {"out of range", "'0-32'"}},
      {&kLlama7b, "L3-1:q=1", {"reversed", "'3-1'"}},
      {&kLlama7b, "L-1:q=1", {"bad layer", "'-1'"}},
      {&kLlama7b, "L0,x:q=1", {"bad layer", "'x'"}},
      {&kLlama7b, "L0,,1:q=1", {"empty layer item"}},
      {&kLlama7b, "L:q=1", {"no layers"}},
      {&kLlama7b, "X0:q=1", {"must start with 'L'", "'X0'"}},
      {&kLlama7b, ":q=1", {"missing layers"}},
      {&kLlama7b, "L0:q=0", {"bad rank", "'0'", "at least 1"}},
      {&kLlama7b, "L0:q=4097", {"'4097'", "full rank 4096", "matrix q"}},
      {&kLlama7b, "L0:all=4097", {"'4097'", "full rank 4096"}},
      {&kLlama70b, "L0:attn=1025", {"'1025'", "full rank 1024", "matrix k"}},
      {&kLlama7b, "L0:q=0%", {"bad rank", "'0%'"}},
      {&kLlama7b, "L0:q=100.5%", {"bad rank", "'100.5%'"}},
      {&kLlama7b, "L0:q=-5%", {"bad rank", "'-5%'"}},
      {&kLlama7b, "L0:q=1e1%", {"bad rank", "'1e1%'"}},
      {&kLlama7b, "L0:q=25%%", {"bad rank", "'25%%'"}},
      {&kLlama7b, "L0:q=1.5", {"bad rank", "'1.5'"}},
      {&kLlama7b, "L0:q=-1", {"bad rank", "'-1'"}},
      {&kLlama7b, "L0:q=abc", {"bad rank", "'abc'"}},
      {&kLlama7b, "L0:q=99999999999999999999", {"bad rank", "too large"}},
      {&kLlama7b, "L0:q=", {"missing rank"}},
      {&kLlama7b, "garbage", {"missing ':'", "'garbage'"}},
      {&kLlama7b, "L0:q", {"missing '='", "'L0:q'"}},
      {&kLlama7b, "L0:=1", {"missing matrices"}},
      {&kLlama7b, "L0:q,,k=1", {"empty matrix name"}},
      {&kLlama7b, "L0:q=1;;L1:k=1", {"empty rule 2"}},
      {&kLlama7b, "L0:q=1;", {"empty rule 2"}},
      {&kLlama7b, "L0:q=1@svd@svd", {"duplicate '@'", "'1@svd@svd'"}},
      {&kLlama7b, "L0:q=1@cp", {"unknown method", "'cp'"}},
      {&kLlama7b, "L0:q=1@", {"missing method"}},
      {&kLlama7b, "L0:q=1;L1:\nfoo=2", {"unknown matrix", "'foo'"}},
  };
  for (const auto& [model, text, needles] : cases) {
    INFO(text);
    const auto message = error_of(text, *model);
    for (const auto& needle : needles) CHECK_THAT(message, Contains(needle));
  }
}

TEST_CASE("encode and resolve reject configurations that do not fit the model", "[config][errors]") {
  Config c;
  c.cells[{32, MatrixKind::q}] = rank_choice(1);
  CHECK_THROWS_AS(encode_config(c, kLlama7b), Error);
  c.cells = {{{0, MatrixKind::gate}, rank_choice(1)}};
  CHECK_THROWS_AS(encode_config(c, kBertTiny), Error);
  c.cells = {{{0, MatrixKind::k}, rank_choice(2000)}};
  CHECK_THROWS_AS(resolve_config(c, kLlama70b), Error);
  c.cells = {{{0, MatrixKind::k}, percent_choice(0)}};
  CHECK_THROWS_AS(encode_config(c, kLlama7b), Error);
}

TEST_CASE("ranks, methods and choice lists", "[config][space]") {
  CHECK(parse_rank("12.5%") == RankSpec{true, 12.5});
  CHECK(parse_rank(" 64 ") == RankSpec{false, 64});
  CHECK(rank_string(RankSpec{true, 25}) == "25%");
  CHECK(rank_string(RankSpec{true, 12.5}) == "12.5%");
  CHECK(rank_string(RankSpec{false, 512}) == "512");
  CHECK(parse_method("svd") == Method::svd);
  CHECK(method_name(Method::tucker) == "tucker");
  CHECK_THROWS_WITH(parse_method("cp"), Contains("'cp'"));
  CHECK_THROWS_WITH(parse_rank("dense"), Contains("'dense'"));

  const auto choices = parse_space_choices("dense,50%,25%,12.5%,1", Method::svd);
  REQUIRE(choices.size() == 5);
  CHECK(choices[0].dense);
  CHECK((!choices[1].dense && choices[1].choice == percent_choice(50, Method::svd)));
  CHECK(choices[3].choice == percent_choice(12.5, Method::svd));
  CHECK(choices[4].choice == rank_choice(1, Method::svd));
  CHECK(parse_space_choices(" dense , 8 ", Method::tucker).size() == 2);
  CHECK_THROWS_WITH(parse_space_choices("", Method::tucker), Contains("empty entry"));
  CHECK_THROWS_WITH(parse_space_choices("dense,,1", Method::tucker), Contains("empty entry"));
  CHECK_THROWS_WITH(parse_space_choices("dense,0", Method::tucker), Contains("'0'"));
  CHECK_THROWS_WITH(parse_space_choices("50%,abc", Method::tucker), Contains("'abc'"));
  // The method as a dimension of the space: RANK@METHOD per entry.
  const auto mixed = parse_space_choices("dense,25%@svd,25%@whiten,25%", Method::tucker);
  REQUIRE(mixed.size() == 4);
  CHECK(mixed[1].choice == percent_choice(25, Method::svd));
  CHECK(mixed[2].choice == percent_choice(25, Method::whiten));
  CHECK(mixed[3].choice == percent_choice(25, Method::tucker));
  CHECK_THROWS_WITH(parse_space_choices("25%@cp", Method::tucker), Contains("'cp'"));
}

TEST_CASE("design space counts are exact", "[space]") {
  SECTION("paper space, Llama-2-7B, ranks {1}: 2^32 x 2^7") {
    const auto space = make_design_space(kLlama7b, {.kind = "paper", .ranks = {{false, 1}}});
    CHECK(space->count() == BigInt("549755813888"));
    CHECK(space->count() == boost::multiprecision::pow(BigInt(2), 39));
    CHECK(space->radices().size() == 32 + 7 + 1);
    CHECK(log2_big(space->count()) == 39.0);
    CHECK_THAT(space->describe(), Contains("549755813888"));
  }
  SECTION("paper space with three ranks") {
    const auto space = make_design_space(kLlama7b, {.kind = "paper", .ranks = {{false, 1}, {true, 25}, {false, 64}}});
    CHECK(space->count() == boost::multiprecision::pow(BigInt(2), 39) * 3);
  }
  SECTION("per-matrix, 8 choices: 8^224") {
    const auto choices = parse_space_choices("dense,50%,25%,12.5%,64,16,4,1", Method::tucker);
    const auto space = make_design_space(kLlama7b, {.kind = "per-matrix", .choices = choices});
    const BigInt expected = boost::multiprecision::pow(BigInt(8), 224);
    CHECK(space->count() == expected);
    CHECK(space->count().str() == expected.str());
    CHECK(space->count().str().size() == 203);
    CHECK(log2_big(space->count()) == Approx(672.0));
    CHECK(space->radices().size() == 224);
  }
  SECTION("grouped, 8 choices, blocks of 4 layers: 8^56; a short last block") {
    const auto choices = parse_space_choices("dense,50%,25%,12.5%,64,16,4,1", Method::tucker);
    auto space = make_design_space(kLlama7b, {.kind = "grouped", .choices = choices, .group_size = 4});
    CHECK(space->count() == boost::multiprecision::pow(BigInt(8), 56));
    space = make_design_space(kLlama7b, {.kind = "grouped", .choices = choices, .group_size = 5});
    CHECK(space->count() == boost::multiprecision::pow(BigInt(8), 7 * 7));  // ceil(32 / 5) = 7 blocks
  }
  SECTION("BERT: six matrix kinds") {
    const auto space = make_design_space(kBertBase, {.kind = "paper", .ranks = {{false, 1}}});
    CHECK(space->count() == BigInt(1) << 18);
  }
  SECTION("log2_big") {
    CHECK(log2_big(BigInt(1)) == 0.0);
    CHECK(log2_big(BigInt(3)) == Approx(std::log2(3.0)));
    CHECK(log2_big(boost::multiprecision::pow(BigInt(2), 1000) * 3) == Approx(1000 + std::log2(3.0)));
    CHECK_THROWS_AS(log2_big(BigInt(0)), Error);
  }
}

TEST_CASE("design spaces validate their ranks at construction", "[space][errors]") {
  // A paper mask may select any kind: on Llama-2-70B a rank above 1024 (k, v) is out.
  CHECK_NOTHROW(make_design_space(kLlama70b, {.kind = "paper", .ranks = {{false, 1024}, {true, 100}}}));
  CHECK_THROWS_WITH(make_design_space(kLlama70b, {.kind = "paper", .ranks = {{false, 1}, {false, 1025}}}),
                    Contains("'1025'") && Contains("1024"));
  CHECK_THROWS_WITH(make_design_space(kLlama7b, {.kind = "paper"}), Contains("empty rank list"));
  CHECK_THROWS_WITH(make_design_space(kLlama7b, {.kind = "exhaustive"}), Contains("'exhaustive'"));
  const auto big = parse_space_choices("dense,5000", Method::tucker);
  CHECK_THROWS_WITH(make_design_space(kLlama7b, {.kind = "per-matrix", .choices = big}), Contains("'5000'"));
  CHECK_THROWS_WITH(make_design_space(kLlama7b, {.kind = "per-matrix"}), Contains("empty choice list"));
  const auto ok = parse_space_choices("dense,1", Method::tucker);
  CHECK_THROWS_WITH(make_design_space(kLlama7b, {.kind = "grouped", .choices = ok, .group_size = 0}),
                    Contains("group size 0"));
}

TEST_CASE("paper space points map to configurations and back", "[space]") {
  const auto space = make_design_space(kLlama7b, {.kind = "paper", .ranks = {{false, 1}, {true, 25}, {false, 1}}});
  SECTION("the 9 % configuration") {
    const auto digits = space->from_config(parse_config("L2,17,31:all=1", kLlama7b));
    REQUIRE(digits);
    const BigInt layers = (BigInt(1) << 2) + (BigInt(1) << 17) + (BigInt(1) << 31);
    CHECK(space->index_of(*digits) == layers + (BigInt(127) << 32));  // rank 1: first of the duplicates
    CHECK(encode_config(space->to_config(*digits), kLlama7b) == "L2,17,31:all=1");
  }
  SECTION("the base model is index 0; empty subsets are the base model") {
    CHECK(space->from_config(Config{}) == std::vector<int64_t>(40, 0));
    auto digits = space->point_at(5);  // layers 0 and 2, empty mask
    CHECK(space->to_config(digits).is_base());
    digits = space->point_at(BigInt(1) << 35);  // mask bit 3 (o), no layers
    CHECK(space->to_config(digits).is_base());
  }
  SECTION("configurations outside the space") {
    CHECK_FALSE(space->from_config(parse_config("L0:q=1;L1:k=1", kLlama7b)));  // not a product
    CHECK_FALSE(space->from_config(parse_config("L0:q=2", kLlama7b)));         // rank not listed
    CHECK_FALSE(space->from_config(parse_config("L0:q=1@svd", kLlama7b)));     // other method
    CHECK_FALSE(space->from_config(parse_config("L0:q=1;L1:q=25%", kLlama7b)));  // two ranks
    CHECK(space->from_config(parse_config("L0,5:q,down=25%", kLlama7b)));
  }
  SECTION("random points round trip") {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 200; ++i) {
      const auto digits = space->sample(rng);
      const auto index = space->index_of(digits);
      CHECK(space->point_at(index) == digits);
      const auto config = space->to_config(digits);
      const auto back = space->from_config(config);
      REQUIRE(back);
      CHECK(space->to_config(*back) == config);
      CHECK(space->index_of(*back) <= index);
      CHECK(parse_config(encode_config(config, kLlama7b), kLlama7b) == config);
    }
  }
}

TEST_CASE("the paper's configurations (accuracy_impact_data.csv) in canonical form", "[space]") {
  // Layers of each run, all 7 matrices at rank 1, written as the CSV lists them.
  const std::vector<std::pair<std::string, std::string>> runs = {
      {"L2,29:all=1", "545997717508"},
      {"L2,17,31:all=1", "547608461316"},
      {"L1,3,5,7,9,10,11,12,13,14,15,16,17,18,20,22,24,26,28,30:all=1", "546892676778"},
      {"L0,2,4,6,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31:all=1", "549755813717"},
      {"L0-31:all=1", "549755813887"},
  };
  const std::vector<std::string> canonical = {"L2,29:all=1", "L2,17,31:all=1", "L1,3,5,7,9-18,20,22,24,26,28,30:all=1",
                                              "L0,2,4,6,8-31:all=1", "L*:all=1"};
  const auto space = make_design_space(kLlama7b, {.kind = "paper", .ranks = {{false, 1}}});
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto config = parse_config(runs[i].first, kLlama7b);
    CHECK(encode_config(config, kLlama7b) == canonical[i]);
    const auto digits = space->from_config(config);
    REQUIRE(digits);
    CHECK(space->index_of(*digits).str() == runs[i].second);
    CHECK(space->to_config(space->point_at(BigInt(runs[i].second))) == config);
  }
}

TEST_CASE("per-matrix and grouped points map to configurations and back", "[space]") {
  const auto choices = parse_space_choices("dense,50%,25%,1,1", Method::tucker);
  for (const auto* model : {&kLlama7b, &kBertTiny, &kLlamaTiny}) {
    for (int64_t group : {int64_t{1}, int64_t{2}, int64_t{3}}) {
      if (group > model->n_layer) continue;
      const SpaceSpec spec{.kind = group == 1 ? "per-matrix" : "grouped", .choices = choices, .group_size = group};
      const auto space = make_design_space(*model, spec);
      INFO(space->describe());
      std::mt19937_64 rng(static_cast<uint64_t>(group) * 100 + model->n_layer);
      for (int i = 0; i < 50; ++i) {
        const auto digits = space->sample(rng);
        const auto index = space->index_of(digits);
        CHECK(space->point_at(index) == digits);
        const auto config = space->to_config(digits);
        const auto back = space->from_config(config);
        REQUIRE(back);
        CHECK(space->to_config(*back) == config);
        // Choices 3 and 4 are the same: the smallest index wins.
        auto smallest = digits;
        std::replace(smallest.begin(), smallest.end(), int64_t{4}, int64_t{3});
        CHECK(*back == smallest);
        CHECK(parse_config(encode_config(config, *model), *model) == config);
      }
      CHECK(space->from_config(Config{}) == std::vector<int64_t>(space->radices().size(), 0));
      CHECK_FALSE(space->from_config(parse_config("L0:q=2", *model)));  // rank not a choice
    }
  }
  SECTION("knob order: decomposable_matrices order; blocks tie their layers") {
    const auto per = make_design_space(kLlama7b, {.kind = "per-matrix", .choices = choices});
    auto digits = std::vector<int64_t>(224, 0);
    digits[7 * 3 + 6] = 3;  // layer 3, down
    CHECK(encode_config(per->to_config(digits), kLlama7b) == "L3:down=1");
    const auto grouped = make_design_space(kLlama7b, {.kind = "grouped", .choices = choices, .group_size = 4});
    digits = std::vector<int64_t>(56, 0);
    digits[7 * 1 + 0] = 2;  // layers 4-7, q
    CHECK(encode_config(grouped->to_config(digits), kLlama7b) == "L4-7:q=25%");
    CHECK_FALSE(grouped->from_config(parse_config("L4-6:q=25%", kLlama7b)));  // block not tied
    CHECK(grouped->from_config(parse_config("L4-7:q=25%", kLlama7b)) == digits);
  }
  SECTION("no dense choice: the base model is outside the space") {
    const auto space = make_design_space(kLlama7b, {.kind = "per-matrix", .choices = parse_space_choices("1,2", Method::svd)});
    CHECK_FALSE(space->from_config(Config{}));
    CHECK_FALSE(space->from_config(parse_config("L*:all=1", kLlama7b)));  // tucker, space is svd
    CHECK(space->from_config(parse_config("L*:all=1@svd", kLlama7b)));
  }
}

TEST_CASE("mixed radix: knob 0 least significant, bounds checked", "[space]") {
  const auto space = make_design_space(kBertTiny, {.kind = "per-matrix", .choices = parse_space_choices("dense,1,2", Method::tucker)});
  CHECK(space->count() == boost::multiprecision::pow(BigInt(3), 12));
  CHECK(space->point_at(0) == std::vector<int64_t>(12, 0));
  auto digits = std::vector<int64_t>(12, 0);
  digits[0] = 2;
  digits[1] = 1;
  CHECK(space->index_of(digits) == 2 + 3);
  CHECK(space->point_at(5) == digits);
  CHECK(space->point_at(space->count() - 1) == std::vector<int64_t>(12, 2));
  CHECK_THROWS_WITH(space->point_at(space->count()), Contains("out of range"));
  CHECK_THROWS_AS(space->point_at(-1), Error);
  digits[3] = 3;
  CHECK_THROWS_AS(space->index_of(digits), Error);
  CHECK_THROWS_AS(space->to_config(std::vector<int64_t>(11, 0)), Error);
}

TEST_CASE("sampling is deterministic for a seed and uniform per knob", "[space]") {
  const auto space = make_design_space(kLlama7b, {.kind = "paper", .ranks = {{false, 1}, {false, 2}, {false, 4}}});
  std::mt19937_64 a(42);
  std::mt19937_64 b(42);
  for (int i = 0; i < 10; ++i) CHECK(space->sample(a) == space->sample(b));

  constexpr int kSamples = 3000;
  std::vector<int> rank_hits(3, 0);
  std::vector<int> layer_hits(32, 0);
  std::mt19937_64 rng(3);
  for (int i = 0; i < kSamples; ++i) {
    const auto digits = space->sample(rng);
    ++rank_hits[static_cast<size_t>(digits.back())];
    for (size_t l = 0; l < 32; ++l) layer_hits[l] += static_cast<int>(digits[l]);
  }
  // Binomial standard deviations: about 26 for the ranks, 27 for the bits; allow 5.
  for (int hits : rank_hits) CHECK(std::abs(hits - kSamples / 3) < 130);
  for (int hits : layer_hits) CHECK(std::abs(hits - kSamples / 2) < 140);
}

TEST_CASE("design space counts of the shared model configs", "[space]") {
  const auto configs = test::shared_dir() / "configs";
  RS_REQUIRE_SHARED(configs / "llama-2-7b" / "config.json");
  const auto choices = parse_space_choices("dense,50%,25%,12.5%,64,16,4,1", Method::tucker);
  const std::vector<std::tuple<std::string, int, int>> models = {
      {"llama-2-7b", 32, 7}, {"llama-2-13b", 40, 7}, {"llama-2-70b", 80, 7}, {"bert-base-uncased", 12, 6}};
  for (const auto& [name, n_layer, n_kinds] : models) {
    INFO(name);
    const auto model = read_model_config(configs / name / "config.json");
    const auto paper = make_design_space(model, {.kind = "paper", .ranks = {{false, 1}}});
    CHECK(paper->count() == BigInt(1) << (n_layer + n_kinds));
    const auto per = make_design_space(model, {.kind = "per-matrix", .choices = choices});
    CHECK(per->count() == boost::multiprecision::pow(BigInt(8), static_cast<unsigned>(n_layer * n_kinds)));
    const auto grouped = make_design_space(model, {.kind = "grouped", .choices = choices, .group_size = 4});
    CHECK(grouped->count() == boost::multiprecision::pow(BigInt(8), static_cast<unsigned>(n_layer / 4 * n_kinds)));
  }
}
