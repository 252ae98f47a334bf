# modeling_rankscope.py: written by `rankscope decompose --format hf` beside a factored checkpoint.
#
# transformers loads the checkpoint with
#     AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)
# (AutoModelForSequenceClassification for a BERT classifier). The model is the architecture's own
# transformers class, except that every matrix listed in config.json's "rankscope"."factored"
# section is a FactoredLinear holding the stored factors, so the model is at its reduced size on
# disk and in memory and runs each such matrix as two (svd) or three (tucker) smaller products:
#     svd:    W = U V^T          y = (x V) U^T + b
#     tucker: W = U core V^T     y = ((x V) core^T) U^T + b
# U is [out x r], core [r x r], V [in x r], as rankscope stores them (docs/formats.md). A fused tensor
# (Phi-3's qkv_proj, gate_up_proj) decomposed as one cell is one FactoredLinear; one whose parts were
# decomposed separately is listed in "rankscope"."split" and becomes a SplitLinear whose children
# (q, k, v / gate, up: Linear or FactoredLinear) give the fused output's columns in order. The rest of
# config.json is the base model's, plus where the checkpoint came from ("rankscope": the
# configuration string, the base model's content hash, the calibration of asvd/whiten).
import torch
import transformers
from torch import nn


class FactoredLinear(nn.Module):
    """A linear layer stored as low-rank factors and applied without multiplying them back."""

    def __init__(self, in_features, out_features, rank, tucker, bias, dtype=None, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        kw = {"dtype": dtype, "device": device}
        self.V = nn.Parameter(torch.empty(in_features, rank, **kw))
        if tucker:
            self.core = nn.Parameter(torch.empty(rank, rank, **kw))
        else:
            self.register_parameter("core", None)
        self.U = nn.Parameter(torch.empty(out_features, rank, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        h = torch.matmul(x, self.V)
        if self.core is not None:
            h = nn.functional.linear(h, self.core)
        return nn.functional.linear(h, self.U, self.bias)

    def extra_repr(self):
        method = "tucker" if self.core is not None else "svd"
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"method={method}, bias={self.bias is not None}")


class SplitLinear(nn.Module):
    """A fused linear layer held as its parts (rows of the fused weight), outputs concatenated."""

    def __init__(self, in_features, parts, rows, bias, dtype=None, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = sum(rows)
        self.parts = list(parts)
        for name, n in zip(parts, rows):
            self.add_module(name, nn.Linear(in_features, n, bias=bias, dtype=dtype, device=device))

    def forward(self, x):
        return torch.cat([getattr(self, name)(x) for name in self.parts], dim=-1)


def _split_entries(config):
    section = getattr(config, "rankscope", None)
    if not isinstance(section, dict):
        return {}
    return section.get("split", {}) or {}


def _factored_entries(config):
    section = getattr(config, "rankscope", None)
    if not isinstance(section, dict):
        return {}
    return section.get("factored", {}) or {}


def factor_model(model, config):
    """Replaces each matrix named in config.rankscope.factored by a FactoredLinear of its rank."""
    for name, entry in _split_entries(config).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        parts, rows = entry.get("parts"), entry.get("rows")
        if (not isinstance(old, nn.Linear) or not isinstance(parts, list) or not isinstance(rows, list)
                or len(parts) != len(rows) or sum(rows) != old.out_features):
            raise ValueError(f"rankscope.split {name!r}: bad entry {entry!r} for a {type(old).__name__}")
        setattr(parent, child, SplitLinear(old.in_features, parts, rows, old.bias is not None,
                                           dtype=old.weight.dtype, device=old.weight.device))
    for name, entry in _factored_entries(config).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"rankscope.factored names {name!r}, which is a {type(old).__name__}, not a Linear")
        method = entry.get("method")
        rank = int(entry.get("rank", 0))
        if method not in ("svd", "tucker") or not 0 < rank <= min(old.in_features, old.out_features):
            raise ValueError(f"rankscope.factored {name!r}: bad entry {entry!r}")
        setattr(parent, child, FactoredLinear(old.in_features, old.out_features, rank, method == "tucker",
                                              old.bias is not None, dtype=old.weight.dtype,
                                              device=old.weight.device))
    return model


def _factored_class(base_name):
    base = getattr(transformers, base_name, None)
    if base is None:
        return None

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        factor_model(self, config)

    return type("Rankscope" + base_name, (base,), {"__init__": __init__, "__module__": __name__})


# One class per architecture rankscope reads; config.json's auto_map names the one it needs.
for _name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM",
              "BertForSequenceClassification", "BertForMaskedLM", "BertModel"):
    _cls = _factored_class(_name)
    if _cls is not None:
        globals()[_cls.__name__] = _cls
del _name, _cls
