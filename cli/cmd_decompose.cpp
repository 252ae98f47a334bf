// rankscope decompose MODEL --config STR --out DIR: the decomposed checkpoint, factored or dense.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/decompose/decompose.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"
#include "core/decompose/size.hpp"
#include "core/io/model_hash.hpp"
#include "evaluators/calibration.hpp"

namespace rankscope::cli {

CalibrationOptions calibration_options(const Params& params, const std::filesystem::path& cache_dir) {
  CalibrationOptions o;
  o.source = params.calib;
  o.samples = params.calib_samples;
  o.ctx = params.calib_ctx;
  o.seed = params.calib_seed;
  o.data_dir = params.data_dir;
  o.cache_dir = cache_dir;
  return o;
}

SvdPolicy svd_policy(const std::string& backend) {
  SvdPolicy policy;
  if (backend == "eigen") {
    policy.backend = SvdBackend::eigen;
  } else if (backend == "cuda") {
    policy.backend = SvdBackend::cuda;
  } else if (backend == "randomized") {
    policy.randomized = true;
  } else if (backend != "lapack") {
    fail("--svd-backend: unknown backend '{}' (lapack, eigen, cuda or randomized)", backend);
  }
  return policy;
}

int run_decompose(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.out.empty()) throw Error("--out DIR is required");
  if (params.dense && params.format == "hf") throw Error("--dense and --format hf: hf writes factors, --dense an ordinary checkpoint");
  const SvdPolicy policy = svd_policy(params.svd_backend);
  set_num_threads(params.threads);
  Model base = load_model(params.model);
  if (!base.has_weights) fail("{}: no weights (shapes-only config.json); cannot decompose", params.model);
  place_model(base, params);
  const Config config = parse_config(params.config, base.config);
  const std::string canonical = encode_config(config, base.config);
  FactorCache cache(params.cache_dir, policy);
  bool calib_cached = false;
  const ActivationOptions activation = activation_options(base, config, calibration_options(params, params.cache_dir),
                                                          params.asvd_alpha, &calib_cached);
  DecomposeStats stats;
  const Model model = decompose_model(base, config, cache, &stats, activation);
  // The checkpoint records everything it holds factored: a decomposed source's stored factors
  // (at their absolute ranks) and this configuration's.
  Config recorded = config;
  for (const auto& cell : stored_factored_cells(base.config)) {
    recorded.cells[{cell.layer, cell.kind}] = {.rank = {.percent = false, .value = static_cast<double>(cell.rank)},
                                               .method = cell.method};
  }
  // Where it came from, so `info` on the checkpoint and any study of it can tell.
  CheckpointOptions options{.dense = params.dense, .hf = params.format == "hf"};
  options.provenance["base_model"] = {{"path", params.model}, {"hash", model_content_hash(base)},
                                      {"architecture", base.config.architecture}};
  options.provenance["written_by"] = fmt::format("rankscope {} decompose", RANKSCOPE_VERSION);
  options.provenance["svd_backend"] = params.svd_backend;
  if (activation.calibration) {
    options.provenance["calibration"] = activation.calibration->info;
    options.provenance["asvd_alpha"] = activation.asvd_alpha;
  }
  write_checkpoint(model, params.out, encode_config(recorded, base.config), options);
  const auto size = size_report(base.config, dense_param_count(base), config);
  fmt::print("config        {}\n", canonical.empty() ? "(base model)" : canonical);
  fmt::print("decomposed    {} matrices: {} factorized, {} from the cache ({}) in {:.2f} s\n", stats.matrices,
             stats.factorized, stats.cache_hits, cache.dir().string(), stats.seconds);
  if (activation.calibration) {
    const auto& info = activation.calibration->info;
    fmt::print("calibration   {} ({}): {} samples, {} tokens, seed {}{}\n", info.value("data", params.calib),
               info.value("part", ""), info.value("samples", int64_t{0}), info.value("tokens", int64_t{0}),
               info.value("seed", uint64_t{0}), calib_cached ? " (from the cache)" : "");
    for (const auto& note : stats.activation_notes) fmt::print("regularised   {}\n", note);
  }
  fmt::print("error         max ||W - W_r||_F / ||W||_F = {:.6f}{}\n", stats.max_relative_error,
             activation.calibration ? " (asvd/whiten: of W D)" : "");
  fmt::print("parameters    {} -> {} ({:.6f} % smaller than the dense model)\n", size.params_before, size.params_after,
             size.reduction_pct());
  int64_t not_smaller = 0;
  for (const auto& f : size.factored) not_smaller += f.not_smaller() ? 1 : 0;
  if (not_smaller > 0) {
    fmt::print("warning       {} factored matrices are not smaller than dense (rankscope info --config lists them "
               "with their break-even ranks)\n", not_smaller);
  }
  fmt::print("wrote         {} ({})\n", params.out,
             params.dense ? "dense reconstruction"
             : options.hf ? fmt::format("factored, for transformers: {}.from_pretrained(dir, trust_remote_code=True)",
                                        hf_auto_class(base.config.architecture))
                          : "factored");
  return 0;
}

}  // namespace rankscope::cli
