// Configuration strings: which matrices of a model are decomposed, to which rank, by which method.
// Grammar (docs/config-strings.md):
//   config  := "" | rule (";" rule)*            the empty string is the base model
//   rule    := layers ":" matrices "=" rank ["@" method]
//   layers  := "L*" | "L" item ("," item)*      item := N | N "-" M   (inclusive range)
//   matrices:= name ("," name)*                 name := q k v o gate up down | attn | mlp | all
//                                               | qkv gate_up (fused models: Phi-3)
//   rank    := N | P "%" | "dense"              P% of the full rank min(out, in); dense undoes
//   method  := tucker (default) | svd | asvd | whiten
// Later rules override earlier ones cell by cell. BERT has no gate (all = q,k,v,o,up,down;
// mlp = up,down); Llama attn = q,k,v,o, mlp = gate,up,down.
// A model storing q, k, v (gate, up) fused (Phi-3) may decompose the fused tensor as one cell,
// `qkv` (`gate_up`): one SVD of the stacked matrix, one right factor shared by the parts. Groups
// and `all` name the parts. A rule setting a fused cell replaces its parts' cells in those layers;
// a rule on a part of a decomposed fused cell is an error (make the fused cell dense first), as is
// a rule naming a fused cell and one of its parts.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/io/model_config.hpp"
#include "core/io/tensor_roles.hpp"

namespace rankscope {

// tucker and svd truncate the SVD of W itself; asvd and whiten (activation-aware, docs/methods.md)
// truncate the SVD of W D for a calibration-derived D (asvd: diag(mean |x|)^alpha; whiten: the
// Cholesky factor of X^T X) and need calibration data. asvd and whiten give two factors, as svd.
enum class Method { tucker, svd, asvd, whiten };
std::string_view method_name(Method method);
// "tucker", "svd", "asvd" or "whiten"; throws Error naming the token otherwise.
Method parse_method(std::string_view token);
// True for the methods that need calibration activations (asvd, whiten).
bool is_activation_aware(Method method);

// A rank as written: an absolute integer, or a percentage of the matrix's full rank.
struct RankSpec {
  bool percent = false;
  double value = 0;  // integer rank when !percent; percentage in (0, 100] when percent
  // The absolute rank for a matrix of full rank min(out, in): percent -> round half up, at least 1.
  int64_t resolve(int64_t full_rank) const;
  auto operator<=>(const RankSpec&) const = default;
};
// "N" (N >= 1) or "P%" (0 < P <= 100); "dense" is not a rank. Throws Error naming the token.
RankSpec parse_rank(std::string_view token);
// The canonical text of a rank: "512", "25%", "12.5%" (shortest form that parses back exactly).
std::string rank_string(const RankSpec& rank);

struct Choice {
  RankSpec rank;
  Method method = Method::tucker;
  auto operator<=>(const Choice&) const = default;
};

// A configuration resolved against a model: every decomposed (layer, matrix) cell and its choice.
// Cells left dense are absent. Independent of how it was written.
struct Config {
  std::map<std::pair<int64_t, MatrixKind>, Choice> cells;
  bool is_base() const { return cells.empty(); }
  bool operator==(const Config&) const = default;
};

// Parses `text` for `model` (layers 0..n_layer-1, its matrix kinds and shapes). Throws Error
// naming the offending token for an unknown matrix, a layer out of range, rank 0 or above the
// full rank of a matrix it applies to, or anything not in the grammar.
Config parse_config(std::string_view text, const ModelConfig& model);

// The canonical string: disjoint rules, each listing the layers (ranges merged, "L*" for all)
// sharing one matrix set and one choice; matrix sets as a group name when they equal one;
// "@tucker" omitted; rules sorted. parse_config(encode_config(c)) == c and encoding is stable.
std::string encode_config(const Config& config, const ModelConfig& model);

// One decomposed matrix with its absolute rank.
struct ResolvedCell {
  int64_t layer = 0;
  MatrixKind kind = MatrixKind::q;
  int64_t n_out = 0;
  int64_t n_in = 0;
  int64_t rank = 0;
  Method method = Method::tucker;
};
std::vector<ResolvedCell> resolve_config(const Config& config, const ModelConfig& model);

}  // namespace rankscope
