// rankscope classify MODEL --text TEXT: label probabilities of a sequence classifier.
#include <cmath>

#include <fmt/format.h>

#include "cli/commands.hpp"
#include "core/bert.hpp"
#include "core/error.hpp"
#include "core/gemm.hpp"

namespace rankscope::cli {

int run_classify(const Params& params) {
  if (params.model.empty()) throw Error("no MODEL given");
  if (params.text.empty()) throw Error("--text is required");
  set_num_threads(params.threads);
  const Model model = load_model(params.model);
  const auto& c = model.config;
  if (c.arch != Arch::bert || c.bert_head != BertHead::sequence_classification) {
    fail("{}: classify needs a BertForSequenceClassification checkpoint, this is {}", params.model, c.architecture);
  }
  if (!model.has_weights) fail("{}: no weights (shapes-only config.json); cannot classify", params.model);
  const auto& tok = model.require_tokenizer();
  const auto& sp = tok.special();
  if (!sp.cls || !sp.sep) fail("{}: tokenizer has no [CLS]/[SEP] tokens", tok.source().string());

  // [CLS] a [SEP] (b [SEP]), token type 0 for the first segment and 1 for the second.
  BertInput in;
  auto append = [&](const std::string& text, TokenId type) {
    for (auto id : tok.encode(text)) {
      in.ids.push_back(id);
      in.type_ids.push_back(type);
    }
    in.ids.push_back(*sp.sep);
    in.type_ids.push_back(type);
  };
  in.ids.push_back(*sp.cls);
  in.type_ids.push_back(0);
  append(params.text, 0);
  if (!params.text_pair.empty()) append(params.text_pair, 1);
  if (static_cast<int64_t>(in.ids.size()) > c.n_ctx_train) {
    fail("text is {} tokens, longer than the model's {} positions", in.ids.size(), c.n_ctx_train);
  }
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
