// Efficiency metrics of a (factored) model: its size as configured, and its measured latency.
#pragma once

#include <cstdint>

#include "core/space/config_string.hpp"
#include "core/io/model.hpp"
#include "evaluators/harness.hpp"

namespace rankscope {

// size.params, size.bytes (storage dtype), size.reduction_pct, size.flops_per_token of
// `config` applied to `base`: a dense model or a checkpoint written by `rankscope decompose`, whose
// stored factors count as stored; reduction against the dense model (core/size.hpp). Shapes-only
// is enough and gives the same figures as the loaded weights.
TaskReport size_metrics(const Model& base, const Config& config);

struct LatencyOptions {
  int64_t batch = 1;      // sequences per forward pass
  int64_t tokens = 128;   // tokens per sequence
  int64_t warmup = 2;     // untimed passes first
  int64_t reps = 10;      // timed passes; the median is reported
};

// latency.ms_per_batch (median), latency.ms_per_token and latency.tokens_per_s of a forward
// pass (prefill) of `batch` x `tokens` on this machine, with the threads set for the process.
TaskReport measure_latency(const Model& model, const LatencyOptions& options);

}  // namespace rankscope
