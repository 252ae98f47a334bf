// The Llama family beyond Llama 2: Llama 3 (llama3 RoPE scaling, untied head), Mistral (sliding
// window), Qwen2 (q/k/v biases) and Qwen3 (per-head q/k RMSNorm, explicit head_dim, tied head),
// against logits transformers 5.17 computed for tiny random checkpoints it saved
// (tests/data/hf-refs, made by tests/hf/make_references.py on the GPU machine).
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/decompose/decompose.hpp"
#include "core/decompose/size.hpp"
#include "core/io/npy.hpp"
#include "core/models/llama.hpp"
#include "tests/test_support.hpp"

using namespace rankscope;

namespace {

const std::filesystem::path kRefs = std::filesystem::path(RANKSCOPE_SOURCE_DIR) / "tests/data/hf-refs";

struct Reference {
  std::vector<std::vector<TokenId>> inputs;
  std::vector<Mat> logits;
};

Reference read_reference(const std::filesystem::path& dir) {
  Reference r;
  const auto inputs = nlohmann::json::parse(std::ifstream(dir / "inputs.json"));
  const auto& list = inputs.is_object() ? inputs.at("sequences") : inputs;
  for (const auto& seq : list) r.inputs.push_back(seq.get<std::vector<TokenId>>());
  for (size_t k = 0; k < r.inputs.size(); ++k) {
    const auto npy = read_npy(dir / fmt::format("logits_{}.npy", k));
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
TEST_CASE("Llama 3, Mistral, Qwen2 and Qwen3 checkpoints give transformers' logits, dense and at full rank", "[families]") {
  for (const char* name : {"llama3", "mistral", "qwen2", "qwen3"}) {
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

TEST_CASE("shapes-only configs of Llama 3.1, Mistral, Qwen2.5 and Qwen3 count their published parameters", "[families]") {
  const auto configs = test::shared_dir() / "configs";
  RS_REQUIRE_SHARED(configs / "qwen3-8b");
  // ../shared/configs/README.md: all tensors, untied heads counted, a tied head once.
  const std::vector<std::pair<const char*, int64_t>> expected = {{"llama-3.1-8b", 8030261248},
                                                                 {"mistral-7b-v0.3", 7248023552},
                                                                 {"qwen2.5-7b", 7615616512},
                                                                 {"qwen3-8b", 8190735360}};
  for (const auto& [name, count] : expected) {
    INFO(name);
    CHECK(config_param_count(read_model_config(configs / name / "config.json")) == count);
  }
}

TEST_CASE("a KV cache continued one token at a time keeps the sliding window and the q/k norms", "[families]") {
  for (const char* name : {"mistral", "qwen3"}) {
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
  for (const char* name : {"llama3", "mistral", "qwen2", "qwen3"}) {
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
  }
}
