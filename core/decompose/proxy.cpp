#include "core/decompose/proxy.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>

#include <fmt/format.h>

#include "core/base/error.hpp"
#include "core/decompose/calibration.hpp"
#include "core/decompose/size.hpp"

namespace rankscope {

ProxyCalculator::ProxyCalculator(const Model& base, FactorCache& cache, ActivationOptions activation)
    : base_(base), cache_(cache), activation_(std::move(activation)) {
  if (!base.has_weights) fail("{}: shapes-only model (no weights): proxies need the weights", base.dir.string());
}

const Proxy& ProxyCalculator::proxy(int64_t layer, MatrixKind kind, const Choice& choice) {
  const auto key = std::make_tuple(layer, kind, choice);
  if (auto it = memo_.find(key); it != memo_.end()) return it->second;
  if (layer < 0 || layer >= static_cast<int64_t>(base_.weights.layers.size())) {
    fail("proxy: layer {} out of range (the model has {})", layer, base_.weights.layers.size());
  }
  // The dense matrix: the model's, or a fused cell's parts stacked (Phi-3's qkv, gate_up).
  const auto& block = base_.weights.layers[static_cast<size_t>(layer)];
  auto stored_factored = [&] {
    fail("{}: layer {} {} is stored factored; proxies need the dense matrix", base_.dir.string(), layer,
         matrix_kind_name(kind));
  };
  Tensor weight;
  if (is_fused_kind(kind) && block[kind].empty()) {
    for (const auto part : fused_parts(kind)) {
      if (block[part].form() != Linear::Form::dense) stored_factored();
    }
    weight = fused_dense_weight(block, kind);
  } else {
    if (block[kind].form() != Linear::Form::dense) stored_factored();
    weight = block[kind].weight();
  }
  const int64_t n_out = weight.rows(), n_in = weight.cols();
  Proxy p;
  p.layer = layer;
  p.kind = kind;
  p.choice = choice;
  p.full_rank = std::min(n_out, n_in);
  p.rank = choice.rank.resolve(p.full_rank);
  p.params_saved = n_out * n_in - factored_params(n_out, n_in, p.rank, choice.method);
  std::shared_ptr<const CachedSvd> svd;
  double tokens = static_cast<double>(n_in);
  if (!is_activation_aware(choice.method)) {
    svd = cache_.factors(weight, p.rank);
  } else {
    if (!activation_.calibration) {
      fail("@{} proxies (L{}:{}) need calibration activations: give --calib FILE|TASK", method_name(choice.method), layer,
           matrix_kind_name(kind));
    }
    const HookSite site = input_site(kind);
    const auto where = std::make_tuple(choice.method, layer, site);
    auto it = transforms_.find(where);
    if (it == transforms_.end()) {
      // One layer's transforms at a time (a Llama-2-7B whiten transform of the MLP's activations
      // is about 1 GB): proxies are asked for layer by layer.
      std::erase_if(transforms_, [&](const auto& t) { return std::get<1>(t.first) != layer; });
      const auto stats = activation_.calibration->at(layer, site);
      if (stats->width != n_in) {
        fail("calibration {}: {} has width {}, matrix L{}:{} takes {} inputs (recorded on another model?)",
             activation_.calibration->key, hook_name(site, layer), stats->width, layer, matrix_kind_name(kind), n_in);
      }
      it = transforms_.emplace(where, choice.method == Method::asvd ? asvd_transform(*stats, activation_.asvd_alpha)
                                                                    : whiten_transform(*stats)).first;
      rows_[where] = stats->rows;
    }
    if (choice.method == Method::whiten) tokens = static_cast<double>(std::max<int64_t>(1, rows_.at(where)));
    svd = activation_factors(cache_, weight, it->second, p.rank);
  }
  p.relative = svd->relative_error(p.rank);
  p.energy = p.relative * p.relative * svd->norm2();
  p.rms = std::sqrt(p.energy / tokens);
  p.propagated = p.relative;
  if (choice.method == Method::whiten) {
    const auto where = std::make_tuple(choice.method, layer, input_site(kind));
    const Propagation& prop = propagation(layer, kind, weight, *svd, transforms_.at(where));
    if (prop.t.size() > 0) {
      // Sum over the truncated directions (a full SVD), or the total less the kept ones (randomized:
      // the kept directions are a projection, so only their sum over rows is exact).
      const Eigen::VectorXf s = svd->s(svd->k());
      double kept = 0, dropped = 0;
      for (int64_t j = 0; j < svd->k(); ++j) {
        (j < p.rank ? kept : dropped) += static_cast<double>(s[j]) * s[j] * prop.t[j];
      }
      p.propagated = std::sqrt(std::max(0.0, svd->full() ? dropped : prop.total - kept));
    }
  }
  return memo_.emplace(key, p).first->second;
}

double ProxyCalculator::config_score(const Config& config) {
  double total = 0;
  for (const auto& [cell, choice] : config.cells) {
    const Proxy& p = proxy(cell.first, cell.second, choice);
    total += p.propagated * p.propagated;
  }
  return total;
}

const ProxyCalculator::BlockOutput& ProxyCalculator::block_output(int64_t layer, bool attention) {
  const auto key = std::make_pair(layer, attention);
  if (auto it = block_outputs_.find(key); it != block_outputs_.end()) return it->second;
  BlockOutput& out = block_outputs_[key];  // energy 0: not available
  const auto& block = base_.weights.layers[static_cast<size_t>(layer)];
  const MatrixKind writer = attention ? MatrixKind::o : MatrixKind::down;
  if (block[writer].form() != Linear::Form::dense || !activation_.calibration) return out;
  const HookSite writer_site = attention ? HookSite::attn_ctx : HookSite::ffn_act;
  const auto held = activation_.calibration->sites();
  if (std::find(held.begin(), held.end(), Calibration::Where{layer, writer_site}) == held.end()) return out;
  const auto stats = activation_.calibration->at(layer, writer_site);
  const Eigen::MatrixXd w_out = block[writer].weight().matrix().cast<double>();
  if (stats->width != w_out.cols()) return out;
  // B = tr(W G W^T), the block output's energy over the calibration tokens (once per block: the
  // largest product here, 4096 x 11008^2 for a Llama-2-7B MLP).
  out.energy = (w_out * stats->gram).cwiseProduct(w_out).sum();
  out.column_norms2 = w_out.colwise().squaredNorm().transpose();
  out.input_energy = stats->gram.diagonal();
  return out;
}

const ProxyCalculator::Propagation& ProxyCalculator::propagation(int64_t layer, MatrixKind kind, const Tensor& weight,
                                                                 const CachedSvd& svd,
                                                                 const ActivationTransform& transform) {
  const auto key = std::make_pair(layer, kind);
  if (auto it = propagation_.find(key); it != propagation_.end()) return it->second;
  Propagation& out = propagation_[key];
  const ModelConfig& config = base_.config;
  const bool attention = kind == MatrixKind::q || kind == MatrixKind::k || kind == MatrixKind::v ||
                         kind == MatrixKind::o || kind == MatrixKind::qkv;
  const BlockOutput& writer = block_output(layer, attention);
  if (!(writer.energy > 0)) return out;
  const double energy_out = writer.energy;
  const Eigen::VectorXd& c = writer.column_norms2;
  const Eigen::VectorXd& e = writer.input_energy;
  // This matrix's output energy per row: ||(W S)_i||^2, from the SVD when it is full.
  const int64_t m = svd.m(), k = svd.k();
  const Mat u = svd.u(k);
  const Eigen::VectorXf s = svd.s(k);
  Eigen::VectorXd row_energy(m);
  if (svd.full()) {
    for (int64_t i = 0; i < m; ++i) {
      double sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += static_cast<double>(u(i, j)) * u(i, j) * s[j] * s[j];
      row_energy[i] = sum;
    }
  } else {
    row_energy = transform.apply(weight.matrix()).cast<double>().rowwise().squaredNorm();
  }
  // Row weights w_i (the block-output share of a unit of error in row i), part by part.
  Eigen::VectorXd w = Eigen::VectorXd::Zero(m);
  const int64_t hd = config.n_embd_head, group = config.n_head_kv > 0 ? config.n_head / config.n_head_kv : 1;
  double qk_energy = 0;
  for (const auto part : fused_parts(kind)) {
    const int64_t first = is_fused_kind(kind) ? fused_row_offset(config, part) : 0;
    const int64_t rows = is_fused_kind(kind) ? matrix_shape(config, part).first : m;
    if (part == MatrixKind::q || part == MatrixKind::k) qk_energy += row_energy.segment(first, rows).sum();
  }
  for (const auto part : fused_parts(kind)) {
    const int64_t first = is_fused_kind(kind) ? fused_row_offset(config, part) : 0;
    const int64_t rows = is_fused_kind(kind) ? matrix_shape(config, part).first : m;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = first + r;
      const double y = row_energy[i];
      switch (part) {
        case MatrixKind::q:
        case MatrixKind::k:
          w[i] = qk_energy > 0 ? 1.0 / qk_energy : 0.0;
          break;
        case MatrixKind::o:
        case MatrixKind::down:
          w[i] = 1.0 / energy_out;
          break;
        case MatrixKind::v: {
          // kv channel (head hkv, dimension d) feeds o's inputs h * hd + d of the query heads of its group.
          const int64_t hkv = r / hd, d = r % hd;
          double sum = 0;
          for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
            const int64_t zc = h * hd + d;
            if (zc < c.size()) sum += c[zc] * e[zc];
          }
          w[i] = y > 0 ? sum / y / energy_out : 0.0;
          break;
        }
        case MatrixKind::gate:
        case MatrixKind::up:
          w[i] = y > 0 && r < c.size() ? c[r] * e[r] / y / energy_out : 0.0;
          break;
        default:
          return out;
      }
    }
  }
  out.t = Eigen::VectorXd::Zero(k);
  for (int64_t i = 0; i < m; ++i) {
    if (w[i] == 0) continue;
    for (int64_t j = 0; j < k; ++j) out.t[j] += w[i] * u(i, j) * u(i, j);
  }
  out.total = w.dot(row_energy);
  return out;
}

SearchPriors search_priors(const Model& base, const DesignSpace& space, const std::vector<std::string>& metrics,
                           ProxyCalculator& proxies) {
  const auto radices = space.radices();
  const std::vector<int64_t> zero(radices.size(), 0);
  const int64_t dense_total = dense_param_count(base);
  auto size_of = [&](const Config& config, const std::string& metric) -> double {
    const SizeReport s = size_report(base.config, dense_total, config);
    if (metric == "size.params") return static_cast<double>(s.params_after);
    if (metric == "size.bytes") return static_cast<double>(s.bytes_after());
    if (metric == "size.reduction_pct") return s.reduction_pct();
    if (metric == "size.flops_per_token") return static_cast<double>(s.flops_per_token_after);
    fail("no size metric '{}' (size.params, size.bytes, size.reduction_pct, size.flops_per_token)", metric);
  };
  // The terms of one metric: f(unit point) - f(zero point) for every knob and digit.
  auto terms_of = [&](const std::function<double(const Config&)>& f) {
    const double at_zero = f(space.to_config(zero));
    std::vector<std::vector<double>> terms(radices.size());
    for (size_t k = 0; k < radices.size(); ++k) {
      for (int64_t d = 0; d < radices[k]; ++d) {
        auto e = zero;
        e[k] = d;
        terms[k].push_back(f(space.to_config(e)) - at_zero);
      }
    }
    return terms;
  };
  SearchPriors out;
  std::optional<std::vector<std::vector<double>>> proxy_terms;
  for (const auto& metric : metrics) {
    if (metric.rfind("size.", 0) == 0) {
      out.terms[metric] = terms_of([&](const Config& c) { return size_of(c, metric); });
      out.exact.insert(metric);
      continue;
    }
    if (!proxy_terms) proxy_terms = terms_of([&](const Config& c) { return proxies.config_score(c); });
    out.terms[metric] = *proxy_terms;
  }
  return out;
}

}  // namespace rankscope
