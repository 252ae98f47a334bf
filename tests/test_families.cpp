// The Llama family beyond Llama 2: Llama 3 (llama3 RoPE scaling, untied head), Mistral (sliding
// window), Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm, explicit head_dim, tied head) and
// Phi-3 (fused qkv_proj and gate_up_proj, partial rotary embedding),
// against logits transformers 5.17 computed for tiny random checkpoints it saved
// (tests/data/hf-refs, made by tests/hf/make_references.py on the GPU machine).
#include <algorithm>
#include <fstream>
#include <map>
#include <random>

#include <fmt/format.h>
#include <Eigen/SVD>
#include <nlohmann/json.hpp>

#include "core/decompose/decompose.hpp"
#include "core/decompose/proxy.hpp"
#include "evaluators/calibration.hpp"
#include "core/decompose/size.hpp"
#include "core/io/npy.hpp"
#include "core/space/design_space.hpp"
#include "core/models/llama.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

const std::filesystem::path kRefs = std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs";

struct Reference {
  std::vector<std::vector<TokenId>> inputs;
  std::vector<Mat> logits;
};

Reference read_reference(const std::filesystem::path& dir, const std::string& prefix = "logits") {
  Reference r;
  const auto inputs = nlohmann::json::parse(std::ifstream(dir / "inputs.json"));
  const auto& list = inputs.is_object() ? inputs.at("sequences") : inputs;
  for (const auto& seq : list) r.inputs.push_back(seq.get<std::vector<TokenId>>());
  for (size_t k = 0; k < r.inputs.size(); ++k) {
    const auto npy = read_npy(dir / fmt::format("{}_{}.npy", prefix, k));
    REQUIRE(npy.shape.size() == 2);
    Mat m(npy.shape[0], npy.shape[1]);
    std::copy(npy.values.begin(), npy.values.end(), m.data());
    r.logits.push_back(std::move(m));
  }
  return r;
}

// The largest |logit difference| over the reference's sequences, each run alone.
float worst_difference(const Model& model, const Reference& ref) {
  float worst = 0.0f;
  for (size_t k = 0; k < ref.inputs.size(); ++k) {
    const std::vector<std::vector<TokenId>> one = {ref.inputs[k]};
    const Mat got = llama_forward(model, one);
    REQUIRE(got.rows() == ref.logits[k].rows());
    REQUIRE(got.cols() == ref.logits[k].cols());
    worst = std::max(worst, (got - ref.logits[k]).cwiseAbs().maxCoeff());
  }
  return worst;
}

}  // namespace

// fp32 logits of at most 3.6 in magnitude after 2-3 layers: both sides round each product of at
// most 176 terms at 2^-24, far below 1e-4; a wrong bias, norm, window or frequency moves them by
// more than 0.1 (the references record it: e.g. Mistral without its window differs by 2.0).
TEST_CASE("Llama 3, Mistral, Qwen2, Qwen3 and Phi-3 checkpoints give transformers' logits, dense and at full rank", "[families]") {
  for (const char* name : {"llama3", "mistral", "qwen2", "qwen3", "phi3"}) {
    INFO(name);
    const auto dir = kRefs / name;
    REQUIRE(std::filesystem::exists(dir / "config.json"));
    const Model model = load_model(dir);
    const Reference ref = read_reference(dir);
    CHECK(worst_difference(model, ref) <= 1e-4f);

    // Parameter count: what transformers counted (unique parameters: a tied head once).
    const auto manifest = nlohmann::json::parse(std::ifstream(dir / "reference.json"));
    CHECK(model.n_params() == manifest.at("param_count").get<int64_t>());
    CHECK(config_param_count(model.config) == manifest.at("param_count").get<int64_t>());

    // Every matrix decomposed at full rank keeps the logits (biases stay exact, outside the factors).
    FactorCache cache(test::scratch_dir(std::string("families_cache_") + name));
    const Model full = decompose_model(model, parse_config("L*:all=100%@svd", model.config), cache);
    CHECK(worst_difference(full, ref) <= 1e-4f);
    // ... and a real truncation does change them (the test can fail).
    const Model low = decompose_model(model, parse_config("L*:all=2@svd", model.config), cache);
    CHECK(worst_difference(low, ref) > 1e-2f);
  }
}

TEST_CASE("the family's features are read from config.json", "[families]") {
  const auto mistral = read_model_config(kRefs / "mistral");
  REQUIRE(mistral.layer_window.size() == 3);
  CHECK(mistral.window(0) == 16);
  CHECK(mistral.window(2) == 16);
  const auto qwen2 = read_model_config(kRefs / "qwen2");
  CHECK(qwen2.qkv_bias);
  CHECK_FALSE(qwen2.attention_bias);  // o_proj has no bias
  CHECK(qwen2.layer_window.empty());  // use_sliding_window false
  const auto qwen3 = read_model_config(kRefs / "qwen3");
  CHECK(qwen3.qk_norm);
  CHECK(qwen3.n_embd_head == 32);
  CHECK(qwen3.n_embd_q() == 128);  // 4 heads of 32 from a hidden size of 64
  CHECK(qwen3.tie_embeddings);
  const auto llama3 = read_model_config(kRefs / "llama3");
  CHECK(llama3.rope_scaling.kind == RopeScaling::Kind::llama3);
  CHECK(llama3.rope_scaling.original_max_position == 16);
  CHECK_FALSE(llama3.tie_embeddings);
}

TEST_CASE("sliding windows: a window as long as the sequence changes nothing, a shorter one changes the later positions", "[families]") {
  const auto dir = kRefs / "mistral";
  Model model = load_model(dir);
  const Reference ref = read_reference(dir);
  const std::vector<std::vector<TokenId>> seq = {ref.inputs[1]};  // 40 tokens
  const Mat windowed = llama_forward(model, seq);
  model.config.layer_window.assign(3, 40);
  const Mat wide = llama_forward(model, seq);
  model.config.layer_window.clear();
  const Mat full = llama_forward(model, seq);
  CHECK((wide - full).cwiseAbs().maxCoeff() == 0.0f);
  CHECK((windowed.topRows(16) - full.topRows(16)).cwiseAbs().maxCoeff() <= 1e-5f);  // fewer than 16 keys: unaffected
  CHECK((windowed.bottomRows(24) - full.bottomRows(24)).cwiseAbs().maxCoeff() > 0.1f);
}

TEST_CASE("shapes-only configs of Llama 3.1, Mistral, Qwen2.5, Qwen3 and Phi-3 count their published parameters", "[families]") {
  const auto configs = test::shared_dir() / "configs";
  RS_REQUIRE_SHARED(configs / "qwen3-8b");
  RS_REQUIRE_SHARED(configs / "phi-3-mini-4k");
  // ../shared/configs/README.md: all tensors, untied heads counted, a tied head once.
  const std::vector<std::pair<const char*, int64_t>> expected = {{"llama-3.1-8b", 8030261248},
                                                                 {"mistral-7b-v0.3", 7248023552},
                                                                 {"qwen2.5-7b", 7615616512},
                                                                 {"qwen3-8b", 8190735360},
                                                                 {"phi-3-mini-4k", 3821079552}};
  for (const auto& [name, count] : expected) {
    INFO(name);
    CHECK(config_param_count(read_model_config(configs / name / "config.json")) == count);
  }
  // Phi-3-mini's design space: 32 layers x 7 parts, or x 4 cells with the fused ones.
  const auto phi3 = read_model_config(configs / "phi-3-mini-4k" / "config.json");
  SpaceSpec spec;
  spec.kind = "per-matrix";
  spec.choices = parse_space_choices("dense,50%,25%", Method::svd);
  CHECK(make_design_space(phi3, spec)->count() == boost::multiprecision::pow(BigInt(3), 224));
  spec.fused = true;
  CHECK(make_design_space(phi3, spec)->count() == boost::multiprecision::pow(BigInt(3), 128));
  // The fused cell qkv of Phi-3-mini is [9216 x 3072]; at 25% (rank 768) it keeps 768 x (9216 + 3072).
  const auto size = size_report(phi3, config_param_count(phi3), parse_config("L*:qkv=25%@svd", phi3));
  CHECK(size.params_after == 3821079552 - 32 * (9216 * 3072 - 768 * (9216 + 3072)));
}

TEST_CASE("a KV cache continued one token at a time keeps the sliding window, the q/k norms and partial rotary", "[families]") {
  for (const char* name : {"mistral", "qwen3", "phi3"}) {
    INFO(name);
    const Model model = load_model(kRefs / name);
    const Reference ref = read_reference(kRefs / name);
    const auto& seq = ref.inputs[1];
    std::vector<KvCache> cache(1);
    float worst = 0.0f;
    for (size_t t = 0; t < seq.size(); ++t) {
      const Mat row = llama_forward(model, std::vector<std::vector<TokenId>>{{seq[t]}}, cache);
      worst = std::max(worst, (row.row(0) - ref.logits[1].row(static_cast<int64_t>(t))).cwiseAbs().maxCoeff());
    }
    CHECK(worst <= 1e-4f);
  }
}

// The tiny checkpoints carry no tokenizer; stories260K-hf's (512 tokens) fits every vocabulary
// here, so the copies get it beside their weights: nonsense text, real pipelines.
TEST_CASE("a sweep and the lm-eval tasks run on each tiny family model", "[families][cli]") {
  const auto stories = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(stories);
  RS_REQUIRE_SHARED(test::shared_data("arc/arc_easy.jsonl"));
  RS_REQUIRE_SHARED(test::shared_data("hellaswag"));
  RS_REQUIRE_SHARED(test::shared_data("tinystories"));
  for (const char* name : {"llama3", "mistral", "qwen2", "qwen3", "phi3"}) {
    INFO(name);
    const auto dir = test::scratch_dir(std::string("family_cli_") + name);
    const auto model = dir / "model";
    std::filesystem::create_directories(model);
    for (const char* file : {"config.json", "model.safetensors"}) {
      std::filesystem::copy_file(kRefs / name / file, model / file, std::filesystem::copy_options::overwrite_existing);
    }
    for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(stories / file, model / file, std::filesystem::copy_options::overwrite_existing);
    }
    const std::string common = " --data-dir '" + test::shared_data("").string() + "' --threads 1 --cache-dir '" + (dir / "cache").string() + "'";
    const auto eval = test::run_cli("eval '" + model.string() + "' --tasks arc_easy,hellaswag,tinystories --limit 8 --json" + common);
    INFO(eval.err);
    REQUIRE(eval.exit_code == 0);
    const auto results = nlohmann::json::parse(eval.out)["results"];
    int finite = 0;
    for (const auto& r : results) finite += r["value"].is_number() ? 1 : 0;
    CHECK(finite >= 4);  // arc_easy acc, acc_norm; hellaswag acc, acc_norm; tinystories ppl ...

    const auto db = (dir / "study.db").string();
    std::filesystem::remove(db);
    const auto sweep = test::run_cli("sweep --model '" + model.string() + "' --db '" + db +
                                     "' --study tiny --space per-matrix --choices dense,50%,25% --strategy random --budget 3"
                                     " --seed 1 --tasks tinystories,size --limit 4 --objectives tinystories.ppl:min,size.params:min" + common);
    INFO(sweep.err);
    REQUIRE(sweep.exit_code == 0);
    const auto pareto = test::run_cli("pareto --db '" + db + "' --study tiny --objectives tinystories.ppl:min,size.params:min --format json");
    REQUIRE(pareto.exit_code == 0);
    CHECK(nlohmann::json::parse(pareto.out)["evaluations"] == 3);
    if (std::string(name) != "phi3") continue;

    // Phi-3 with the fused cells as knobs: the stored configurations name qkv / gate_up, and each
    // one's size is the size the fused decomposition has.
    const auto fused_db = (dir / "fused.db").string();
    std::filesystem::remove(fused_db);
    const auto fused = test::run_cli("sweep --model '" + model.string() + "' --db '" + fused_db +
                                     "' --study fused --space per-matrix --fused --choices dense,50%@svd,25%@svd --strategy random"
                                     " --budget 4 --seed 3 --tasks tinystories,size --limit 4 --objectives tinystories.ppl:min,size.params:min" +
                                     common);
    INFO(fused.err);
    REQUIRE(fused.exit_code == 0);
    const auto exported = test::run_cli("export --db '" + fused_db + "' --study fused --format json");
    REQUIRE(exported.exit_code == 0);
    const Model loaded = load_model(model);
    int with_fused_cells = 0;
    const auto evaluations = nlohmann::json::parse(exported.out)["evaluations"];
    CHECK(evaluations.size() == 4);
    for (const auto& e : evaluations) {
      const std::string config = e["config"];
      const Config parsed = parse_config(config, loaded.config);
      for (const auto& [cell, choice] : parsed.cells) {
        CHECK((cell.second == MatrixKind::qkv || cell.second == MatrixKind::o || cell.second == MatrixKind::gate_up ||
               cell.second == MatrixKind::down));
      }
      with_fused_cells += config.find("qkv") != std::string::npos || config.find("gate_up") != std::string::npos ? 1 : 0;
      FactorCache cache(dir / "cache");
      CHECK(e["metrics"]["size.params"]["value"].get<double>() ==
            static_cast<double>(decompose_model(loaded, parsed, cache).n_params()));
    }
    CHECK(with_fused_cells >= 1);
    // The guided strategy on the fused cells: its proxies are those of the stacked matrices.
    const auto guided = test::run_cli("sweep --model '" + model.string() + "' --db '" + fused_db +
                                      "' --study guided --space per-matrix --fused --choices dense,50%@svd,25%@svd --strategy guided"
                                      " --budget 6 --seed 3 --tasks tinystories,size --limit 4 --objectives tinystories.ppl:min,size.params:min" +
                                      common);
    INFO(guided.err);
    CHECK(guided.exit_code == 0);
    CHECK_THAT(guided.out, Catch::Contains("6 configurations evaluated"));
  }
}

// Phi-3 stores q, k, v in one tensor and gate, up in another. rankscope holds the parts as views of
// the fused tensor's rows; a fused cell decomposed as a whole runs as one product split by columns.
TEST_CASE("Phi-3: fused tensors, partial rotary, and both ways of decomposing a fused tensor", "[families][phi3]") {
  const auto dir = kRefs / "phi3";
  const Model model = load_model(dir);
  const Reference ref = read_reference(dir);
  const auto& c = model.config;
  REQUIRE(c.fused);
  CHECK(c.n_rot == 8);  // partial_rotary_factor 0.5 of head_dim 16
  CHECK(c.rotary_dims() == 8);
  CHECK(c.n_embd_head == 16);

  SECTION("the parts are the fused tensor's rows, in transformers' order") {
    const auto& layer = model.weights.layers[0];
    const auto& q = layer[MatrixKind::q].weight();
    const auto& k = layer[MatrixKind::k].weight();
    const auto& v = layer[MatrixKind::v].weight();
    CHECK(q.rows() == 64);
    CHECK(k.rows() == 32);  // 2 kv heads of 16
    CHECK(v.rows() == 32);
    CHECK(k.data == q.data + 64 * 64);
    CHECK(v.data == k.data + 32 * 64);
    CHECK(layer[MatrixKind::up].weight().data == layer[MatrixKind::gate].weight().data + 128 * 64);
    CHECK(layer[MatrixKind::qkv].empty());
    CHECK(fused_dense_weight(layer, MatrixKind::qkv).data == q.data);  // a view, not a copy
  }

  SECTION("partial rotary matters: rotating the whole head moves the logits") {
    Model whole = model;
    whole.config.n_rot = 0;
    CHECK(worst_difference(whole, ref) > 1e-2f);
  }

  SECTION("decomposed as fused cells and as split cells, equal to the same factors applied in PyTorch") {
    // tests/data/hf-refs/phi3_decomposed: every qkv_proj replaced by its fp64 SVD truncated at
    // rank r (full, 16) as one cell or as q, k, v cells; logits by transformers.
    const auto refs = kRefs / "phi3_decomposed";
    FactorCache cache(test::scratch_dir("phi3_decomposed_cache"));
    struct Variant {
      const char* prefix;
      const char* config;
      bool fused;
      int64_t rank;  // 0: full
    };
    const std::vector<Variant> variants = {{"logits_fused", "L*:qkv=100%@svd", true, 0},
                                           {"logits_split", "L*:q,k,v=100%@svd", false, 0},
                                           {"logits_fused_r16", "L*:qkv=16@svd", true, 16},
                                           {"logits_split_r16", "L*:q,k,v=16@svd", false, 16}};
    for (const auto& variant : variants) {
      INFO(variant.config);
      Reference r = read_reference(refs, variant.prefix);
      r.inputs = ref.inputs;
      // The same factors as the reference (an fp64 SVD truncated, here in the test), run as
      // rankscope's factored linears: the fused cell as one product split by columns.
      Model exact = model;
      for (auto& layer : exact.weights.layers) {
        const std::vector<MatrixKind> cells =
            variant.fused ? std::vector<MatrixKind>{MatrixKind::qkv} : fused_parts(MatrixKind::qkv);
        std::vector<Linear> factored;
        for (const auto cell : cells) {
          const Tensor w = cell == MatrixKind::qkv ? fused_dense_weight(layer, cell) : layer[cell].weight();
          const Eigen::MatrixXd wd = w.matrix().cast<double>();
          const Eigen::BDCSVD<Eigen::MatrixXd> svd(wd, Eigen::ComputeThinU | Eigen::ComputeThinV);
          const int64_t k = variant.rank > 0 ? variant.rank : svd.singularValues().size();
          const Mat u = (svd.matrixU().leftCols(k) * svd.singularValues().head(k).asDiagonal()).cast<float>();
          const Mat v = svd.matrixV().leftCols(k).cast<float>();
          factored.push_back(Linear::svd(Tensor::from_matrix(u), Tensor::from_matrix(v)));
        }
        if (variant.fused) {
          for (const auto part : fused_parts(MatrixKind::qkv)) layer[part] = Linear();
          layer[MatrixKind::qkv] = factored[0];
        } else {
          for (size_t i = 0; i < cells.size(); ++i) layer[cells[i]] = factored[i];
        }
      }
      CHECK(worst_difference(exact, r) <= 1e-4f);
      // rankscope's own decomposition: an fp32 SVD. At full rank and for the fused cell it gives
      // the same logits within 1e-4 too. Split at rank 16 the truncation itself is less
      // determined: layer 0's q has sigma_16 - sigma_17 = 0.0020 (1.3e-3 of sigma_1), so an fp32
      // SVD (eps 6e-8) places the kept subspace only to about eps / 1.3e-3 = 5e-5 of the weights,
      // and the logits move by up to ten times that: 1e-3 there.
      const Model dec = decompose_model(model, parse_config(variant.config, c), cache);
      CHECK(worst_difference(dec, r) <= (variant.rank > 0 && !variant.fused ? 1e-3f : 1e-4f));
    }
    // The fused rank-16 cell is one matrix [128 x 64] at rank 16; split, three at rank 16 each.
    const Model fused = decompose_model(model, parse_config("L*:qkv=16@svd", c), cache);
    const Model split = decompose_model(model, parse_config("L*:q,k,v=16@svd", c), cache);
    const auto& fl = fused.weights.layers[0];
    CHECK(fl[MatrixKind::qkv].rank() == 16);
    CHECK(fl[MatrixKind::qkv].n_out() == 128);
    CHECK(fl[MatrixKind::q].empty());
    CHECK(fused.n_params() == model.n_params() - 2 * (128 * 64 - 16 * (128 + 64)));
    CHECK(split.n_params() == model.n_params() - 2 * ((64 * 64 - 16 * 128) + 2 * (32 * 64 - 16 * 96)));
    // Size accounting without weights agrees with the models.
    const int64_t dense = dense_param_count(model);
    CHECK(size_report(c, dense, parse_config("L*:qkv=16@svd", c)).params_after == fused.n_params());
    CHECK(size_report(c, dense, parse_config("L*:q,k,v=16@svd", c)).params_after == split.n_params());
    // The two are different models (the test can fail).
    CHECK((llama_forward(fused, std::vector<std::vector<TokenId>>{ref.inputs[0]}) -
           llama_forward(split, std::vector<std::vector<TokenId>>{ref.inputs[0]})).cwiseAbs().maxCoeff() > 1e-3f);
  }

  SECTION("gate_up as one cell and tucker on fused cells keep the logits at full rank") {
    FactorCache cache(test::scratch_dir("phi3_full_cache"));
    for (const char* text : {"L*:gate_up=100%@svd", "L*:qkv,gate_up=100%", "L0:qkv=100%;L1:q,k,v,gate,up=100%@svd;L*:o,down=100%"}) {
      INFO(text);
      const Model dec = decompose_model(model, parse_config(text, c), cache);
      CHECK(worst_difference(dec, ref) <= 1e-4f);
    }
    const Model low = decompose_model(model, parse_config("L*:gate_up=4@svd", c), cache);
    CHECK(worst_difference(low, ref) > 1e-2f);
  }

  SECTION("written and read back: fused cells as MODULE.U/V, split parts as MODULE.q..., dense as fused tensors") {
    FactorCache cache(test::scratch_dir("phi3_write_cache"));
    for (const char* text : {"L*:qkv=16@svd;L1:gate_up=20%", "L0:q,v=8@svd;L1:up=30;L*:down=12@svd", "L0:qkv=12;L1:k=4@svd"}) {
      INFO(text);
      const Config config = parse_config(text, c);
      const Model dec = decompose_model(model, config, cache);
      const auto out = test::scratch_dir("phi3_written");
      write_checkpoint(dec, out, encode_config(config, c), {});
      const Model back = load_model(out);
      CHECK(back.n_params() == dec.n_params());
      const std::vector<std::vector<TokenId>> seq = {ref.inputs[1]};
      CHECK((llama_forward(back, seq) - llama_forward(dec, seq)).cwiseAbs().maxCoeff() <= 1e-6f);
      const auto stored = stored_factored_cells(back.config);
      CHECK(static_cast<int64_t>(stored.size()) == static_cast<int64_t>(resolve_config(config, c).size()));
      // Multiplied back: an ordinary Phi-3 checkpoint, fused tensors whole.
      const auto dense_dir = test::scratch_dir("phi3_written_dense");
      write_checkpoint(dec, dense_dir, encode_config(config, c), {.dense = true});
      const Model plain = load_model(dense_dir);
      CHECK(plain.config.factored.empty());
      CHECK(plain.n_params() == model.n_params());
      CHECK((llama_forward(plain, seq) - llama_forward(dec, seq)).cwiseAbs().maxCoeff() <= 1e-4f);
      const auto names = plain.named_tensors();
      CHECK(std::any_of(names.begin(), names.end(), [](const auto& p) { return p.first == "model.layers.1.self_attn.qkv_proj.weight"; }));
      CHECK(std::none_of(names.begin(), names.end(), [](const auto& p) { return p.first.find("qkv_proj.q") != std::string::npos; }));
    }
    // Decomposing a part of a stored fused cell, or a fused cell with a stored part, is refused.
    const auto out = test::scratch_dir("phi3_written");
    write_checkpoint(decompose_model(model, parse_config("L0:qkv=12;L1:k=4@svd", c), cache), out, "L0:qkv=12;L1:k=4@svd", {});
    const Model back = load_model(out);
    CHECK_THROWS_WITH(decompose_model(back, parse_config("L0:q=4", back.config), cache), Catch::Contains("already factored"));
    CHECK_THROWS_WITH(decompose_model(back, parse_config("L1:qkv=4", back.config), cache), Catch::Contains("already factored"));
    CHECK_THROWS_WITH(size_report(back.config, dense_param_count(back), parse_config("L1:qkv=4", back.config)),
                      Catch::Contains("already factored"));
  }
}

TEST_CASE("configuration strings on a fused model: qkv and gate_up cells or their parts", "[families][phi3][config]") {
  const auto c = read_model_config(kRefs / "phi3");
  // A fused cell replaces its parts; the parts of a decomposed fused cell cannot change alone.
  const Config a = parse_config("L0:q=50%;L0:qkv=25%", c);
  CHECK(a.cells.size() == 1);
  CHECK(a.cells.contains({0, MatrixKind::qkv}));
  CHECK_THROWS_WITH(parse_config("L*:qkv=50%;L0:q=dense", c), Catch::Contains("part of the fused cell L0:qkv"));
  CHECK_THROWS_WITH(parse_config("L0:qkv,q=4", c), Catch::Contains("names both the fused cell qkv and its part q"));
  const Config b = parse_config("L*:qkv=50%;L0:qkv=dense;L0:q=8", c);
  CHECK(b.cells.size() == 2);
  CHECK(b.cells.contains({0, MatrixKind::q}));
  CHECK(b.cells.contains({1, MatrixKind::qkv}));
  // `all` and the groups name the parts.
  CHECK(parse_config("L*:all=50%", c).cells.size() == 14);
  CHECK(parse_config("L0:attn=50%", c).cells.size() == 4);
  // Canonical strings round-trip, fused cells by name.
  for (const char* text : {"L*:qkv,gate_up=50%", "L0:qkv=25%@svd;L1:q,k=12", "L*:o,down=50%;L*:qkv=8@svd;L1:gate_up=10%@svd"}) {
    INFO(text);
    const Config config = parse_config(text, c);
    const auto canonical = encode_config(config, c);
    CHECK(parse_config(canonical, c) == config);
    CHECK(encode_config(parse_config(canonical, c), c) == canonical);
  }
  CHECK(encode_config(parse_config("L*:qkv,gate_up=50%", c), c) == "L*:qkv,gate_up=50%");
  // Ranks are checked against the fused cell's own shape [128 x 64] (full rank 64).
  CHECK_NOTHROW(parse_config("L0:qkv=64", c));
  CHECK_THROWS_WITH(parse_config("L0:qkv=65", c), Catch::Contains("exceeds the full rank 64"));
  // A model without fused tensors has no such cells.
  const auto mistral = read_model_config(kRefs / "mistral");
  CHECK_THROWS_WITH(parse_config("L0:qkv=4", mistral), Catch::Contains("unknown matrix 'qkv'"));
  // A Config built in code with a fused cell and one of its parts is refused.
  Config both;
  both.cells[{0, MatrixKind::qkv}] = Choice{RankSpec{false, 4}, Method::svd};
  both.cells[{0, MatrixKind::k}] = Choice{RankSpec{false, 4}, Method::svd};
  CHECK_THROWS_WITH(encode_config(both, c), Catch::Contains("part of the fused cell"));
  // Design spaces: the parts by default, the fused cells with `fused`.
  SpaceSpec spec;
  spec.kind = "per-matrix";
  spec.choices = parse_space_choices("dense,50%,25%", Method::svd);
  CHECK(make_design_space(c, spec)->count() == boost::multiprecision::pow(BigInt(3), 14));
  spec.fused = true;
  const auto fused_space = make_design_space(c, spec);
  CHECK(fused_space->count() == boost::multiprecision::pow(BigInt(3), 8));
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20; ++i) {
    const Config point = fused_space->to_config(fused_space->sample(rng));
    for (const auto& [cell, choice] : point.cells) {
      CHECK((cell.second == MatrixKind::qkv || cell.second == MatrixKind::o || cell.second == MatrixKind::gate_up ||
             cell.second == MatrixKind::down));
    }
    const auto digits = fused_space->from_config(point);
    REQUIRE(digits);
    CHECK(fused_space->to_config(*digits) == point);
  }
  CHECK_THROWS_WITH(make_design_space(mistral, spec), Catch::Contains("stores no fused tensors"));
}

// Proxies of Phi-3's fused cells and of their parts (row views): finite, falling with the rank,
// zero at full rank; q (measured by its own relative error) and o (it writes the block's output)
// carry nothing.
TEST_CASE("Phi-3: whiten proxies of fused cells and of their parts", "[families][phi3][proxy]") {
  const auto stories = test::shared_data("stories260K-hf");
  RS_REQUIRE_SHARED(stories);
  RS_REQUIRE_SHARED(test::shared_data("tinystories"));
  // The checkpoint with stories260K-hf's tokenizer beside it (as in the sweep above), calibrated on TinyStories.
  const auto scratch = test::scratch_dir("phi3_proxy");
  const auto dir = scratch / "model";
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"}) {
    std::filesystem::copy_file(kRefs / "phi3" / file, dir / file, std::filesystem::copy_options::overwrite_existing);
  }
  for (const char* file : {"tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::copy_file(stories / file, dir / file, std::filesystem::copy_options::overwrite_existing);
  }
  const Model model = load_model(dir);
  CalibrationOptions o;
  o.source = "tinystories";
  o.data_dir = test::shared_data("");
  o.samples = 8;
  o.ctx = 64;
  ActivationOptions activation{calibrate(model, o), 0.5};
  FactorCache cache(scratch / "cache");
  ProxyCalculator proxies(model, cache, activation);
  for (int64_t l = 0; l < model.config.n_layer; ++l) {
    for (const auto kind : {MatrixKind::qkv, MatrixKind::gate_up, MatrixKind::q, MatrixKind::v, MatrixKind::up,
                            MatrixKind::o}) {
      INFO("layer " << l << " " << matrix_kind_name(kind));
      double previous = INFINITY;
      for (const double pct : {12.5, 25.0, 50.0, 100.0}) {
        const Proxy& p = proxies.proxy(l, kind, {.rank = {.percent = true, .value = pct}, .method = Method::whiten});
        REQUIRE(std::isfinite(p.propagated));
        if (pct == 100.0) {
          CHECK(p.propagated <= 1e-3);  // nothing dropped: float rounding only
        } else {
          CHECK(p.propagated > 0);
          CHECK(p.propagated < previous);
        }
        previous = p.propagated;
        if (kind == MatrixKind::o || kind == MatrixKind::q) CHECK(p.propagated == Approx(p.relative).epsilon(1e-4).margin(1e-3));
      }
    }
  }
}
