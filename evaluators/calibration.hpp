// Calibration data for the activation-aware methods (asvd, whiten; docs/methods.md): which text
// the base model reads, which samples are drawn from it, and the disk cache of the statistics.
//
// Source (--calib): a file path or a built-in task name.
//  - a .tsv file with a header row: its `sentence` column (`sentence1`/`sentence2` as pairs; else
//    the first column), one segment per row;
//  - any other file: plain text;
//  - a task: a perplexity task's text (tinystories, wikitext2); a classification task's
//    sentences (sst2, mrpc); other tasks' contexts with their gold continuation.
// Samples (--calib-samples N, --calib-ctx L, --calib-seed S) come from the SECOND HALF of the
// source only (of its tokens for a text, of its rows for segments), so that an evaluation reading
// the same file from its start with a limit (e.g. tinystories with --limit) never sees them:
//  - causal LM: N windows of L tokens at uniform random offsets (std::mt19937_64(seed)) in the
//    second half of the token stream (segments are joined with "\n" first), BOS prepended;
//  - BERT: N distinct segments drawn at random (fewer if the half has fewer), each encoded as
//    [CLS] a [SEP] (b [SEP]) truncated to L tokens; a plain text is split into its non-empty lines.
// The statistics are cached in <cache_dir>/calib/<key>.bin, key = XXH3-128 of (format version,
// the model's content hash, the source's kind and content, N, L, seed). The key holds the source's
// content, not its name: two names for the same content (a copied file, a task and its file) give
// the same statistics and share the entry, while the `source` and `data` recorded in the protocol
// are always those of the request (--calib as given), not of whichever request filled the cache.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/decompose/calibration.hpp"
#include "core/decompose/decompose.hpp"
#include "core/io/model.hpp"

namespace rankscope {

struct CalibrationOptions {
  std::string source;                                 // --calib FILE|TASK
  int64_t samples = 64;                               // --calib-samples
  int64_t ctx = 256;                                  // --calib-ctx
  uint64_t seed = 0;                                  // --calib-seed
  std::filesystem::path data_dir = "../shared/data";  // where task names are looked up
  std::filesystem::path cache_dir;                    // "" = no disk cache
  int64_t batch = 8;                                  // sequences per forward pass
  // Memory the statistics of a group of layers may take on the model's device (MiB; 0 = the
  // RANKSCOPE_CALIB_MEMORY_MIB environment variable, else half a GPU's free memory or 4 GiB of
  // host memory). Layers that do not fit one group are done in further passes over the samples,
  // each stopping after its group's last layer.
  int64_t memory_mib = 0;
};

// The calibration statistics of `base` for `options`: from the disk cache when a valid file for
// its key exists, else captured by forward passes of `base` and stored. `from_cache` (optional)
// says which. Throws Error for an unknown source, too little text for one window, a model without
// tokenizer, or bad settings.
std::shared_ptr<const Calibration> calibrate(const Model& base, const CalibrationOptions& options,
                                             bool* from_cache = nullptr);

// What decompose_model needs for `config`: the calibration (calibrate()) when some cell uses asvd
// or whiten and a source is given; none otherwise (decompose_model then asks for --calib).
ActivationOptions activation_options(const Model& base, const Config& config, const CalibrationOptions& options,
                                     double asvd_alpha, bool* from_cache = nullptr);

// The cache key calibrate() uses (reads and tokenises nothing beyond the source file or task).
std::string calibration_key(const Model& base, const CalibrationOptions& options);

}  // namespace rankscope
