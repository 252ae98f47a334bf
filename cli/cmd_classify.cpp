// rankscope classify MODEL --text TEXT: label probabilities of a sequence classifier.
#include <cmath>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/models/bert.hpp"
#include "core/base/error.hpp"
#include "core/compute/gemm.hpp"

namespace rankscope::cli {

int run_classify(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.text.empty()) throw Error("--text is required");
  set_num_threads(params.threads);
  Model model = load_model(params.model);
  place_model(model, params);
  const auto& c = model.config;
  if (c.arch != Arch::bert || c.bert_head != BertHead::sequence_classification) {
    fail("{}: classify needs a BertForSequenceClassification checkpoint, this is {}", params.model, c.architecture);
  }
  if (!model.has_weights) fail("{}: no weights (shapes-only config.json); cannot classify", params.model);
  const auto& tok = model.require_tokenizer();
  // Texts longer than the model's positions are cut (longest segment first), as transformers'
  // pipelines do with truncation=True.
  const BertInput in = bert_encode(tok, params.text, params.text_pair, c.n_ctx_train);
  const auto out = bert_forward(model, std::span(&in, 1));
  const auto logits = out.logits.row(0);
  const Eigen::RowVectorXf p = (logits.array() - logits.maxCoeff()).exp();
  const float sum = p.sum();
  for (int64_t i = 0; i < logits.size(); ++i) {
    fmt::print("{:<12} {:.6f}   (logit {:+.6f})\n", c.labels[static_cast<size_t>(i)], p[i] / sum, logits[i]);
  }
  return 0;
}

}  // namespace rankscope::cli
