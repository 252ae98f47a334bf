#!/usr/bin/env python3
"""PyTorch + transformers baseline for rankscope's CUDA forward pass.

Part of bench/gpu: this is the reference our C++ CUDA backend is compared
against. It runs on the GPU machine (an H200, no internet), so it needs no
checkpoint: the model is built from a Hugging Face config.json with random
bf16 weights straight on the GPU.

What it measures:
  * bf16 GEMM ceiling: median TFLOP/s of torch.matmul on
    [8192 x 4096] x [4096 x 11008].
  * Scoring throughput of LlamaForCausalLM (SDPA attention): one step is a
    forward pass over random token ids [batch x seq] (use_cache=False), then
    log_softmax(logits.float()) and a gather of the next-token log-probs,
    which is what lm-eval does for log-likelihood requests. Reports the median
    step time, tokens/s and achieved TFLOP/s, counting
    2 * (non-embedding matmul params) * tokens + causal attention FLOPs.
  * With --factored-ranks: the same step with every q,k,v,o,gate,up,down
    Linear replaced by two Linears (in->r, r->out), the SVD-factored form,
    with the speed-up over dense and the ideal FLOP ratio of those matrices.

Usage:
  python3 bench/gpu/transformers_baseline.py --config llama-2-7b/config.json \
      [--batch 64] [--seq 128] [--repeats 5] [--layers N] \
      [--factored-ranks 64,256,1024] [--json results.json]
"""
import argparse
import json
import statistics
import time

import torch
from torch import nn
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
               "mlp": ("gate_proj", "up_proj", "down_proj")}
DTYPE = torch.bfloat16


def median_seconds(step, repeats, warmup=2):
    """Median wall time of step() over repeats runs, after warmup runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(label, fn):
    """Run fn(); on CUDA OOM, report it and return an error record instead."""
    torch.cuda.reset_peak_memory_stats()
    try:
        result = fn()
    except torch.cuda.OutOfMemoryError:
        result = {"error": "out of memory"}
        print(f"{label}: out of memory")
    torch.cuda.empty_cache()
    return result


def gemm_ceiling(samples=10, inner=10):
    m, k, n = 8192, 4096, 11008
    a = torch.randn(m, k, device="cuda", dtype=DTYPE)
    b = torch.randn(k, n, device="cuda", dtype=DTYPE)

    def step():
        for _ in range(inner):
            torch.matmul(a, b)

    sec = median_seconds(step, samples) / inner
    tflops = 2 * m * k * n / sec / 1e12
    print(f"bf16 GEMM ceiling: [{m} x {k}] x [{k} x {n}], median {sec * 1e3:.3f} ms, {tflops:.1f} TFLOP/s")
    return {"m": m, "k": k, "n": n, "ms": sec * 1e3, "tflops": tflops}


def build_model(config):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=DTYPE, attn_implementation="sdpa")
    with torch.no_grad():  # explicit small-normal init; values do not matter for speed
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
    model.requires_grad_(False)
    return model.eval()


def matmul_params(model):
    """Non-embedding parameters that enter matmuls: all Linear weights (incl. lm_head)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def projection_shapes(model):
    """(in, out) of each of the 7 projections; all layers are alike."""
    layer = model.model.layers[0]
    return {(parent, name): (getattr(getattr(layer, parent), name).in_features,
                             getattr(getattr(layer, parent), name).out_features)
            for parent, names in PROJECTIONS.items() for name in names}


def factorize_(model, shapes, rank):
    """Replace the 7 projections of every layer, in place, by Linear(in,r) -> Linear(r,out)."""
    with torch.no_grad():
        for layer in model.model.layers:
            for (parent, name), (d_in, d_out) in shapes.items():
                setattr(getattr(layer, parent), name, None)  # free the old weights first
                pair = nn.Sequential(
                    nn.Linear(d_in, rank, bias=False, device="cuda", dtype=DTYPE),
                    nn.Linear(rank, d_out, bias=False, device="cuda", dtype=DTYPE))
                for lin in pair:
                    lin.weight.normal_(0.0, 0.02)
                setattr(getattr(layer, parent), name, pair)
    model.requires_grad_(False)
    model.eval()


def scoring_step(model, ids):
    logits = model(input_ids=ids, use_cache=False).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


def time_scoring(model, config, batch, seq, repeats, label):
    ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(0))
    with torch.inference_mode():
        sec = median_seconds(lambda: scoring_step(model, ids), repeats)
    tokens = batch * seq
    n_params = matmul_params(model)
    attn_flops = 4 * seq * seq // 2 * config.hidden_size * config.num_hidden_layers * batch
    flops = 2 * n_params * tokens + attn_flops
    result = {"ms": sec * 1e3, "tokens_per_s": tokens / sec, "tflops": flops / sec / 1e12,
              "matmul_params": n_params, "flops_per_step": flops,
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    print(f"{label}: B x T = {batch} x {seq}, median {result['ms']:.2f} ms, "
          f"{result['tokens_per_s']:.0f} tokens/s, {result['tflops']:.1f} TFLOP/s")
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="Hugging Face config.json (Llama)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, help="override num_hidden_layers")
    ap.add_argument("--factored-ranks", help="comma-separated ranks, e.g. 64,256,1024")
    ap.add_argument("--json", help="write all figures to this JSON file")
    args = ap.parse_args()
    ranks = [int(r) for r in args.factored_ranks.split(",")] if args.factored_ranks else []

    config = LlamaConfig.from_json_file(args.config)
    if args.layers:
        config.num_hidden_layers = args.layers
    config.use_cache = False

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"config: {args.config}, layers {config.num_hidden_layers}, hidden {config.hidden_size}, "
          f"intermediate {config.intermediate_size}, vocab {config.vocab_size}")
    out = {"config": args.config, "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
           "layers": config.num_hidden_layers, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "transformers": transformers.__version__}

    out["gemm"] = measure("bf16 GEMM ceiling", gemm_ceiling)

    model = measure("model build", lambda: build_model(config))
    if isinstance(model, dict):  # build failed (OOM)
        out["dense"] = model
    else:
        label = "transformers bf16 forward+logsoftmax"
        out["dense"] = measure(label, lambda: time_scoring(
            model, config, args.batch, args.seq, args.repeats, label))
        dense_tps = out["dense"].get("tokens_per_s")

        shapes = projection_shapes(model)
        dense_lin = sum(i * o for i, o in shapes.values())
        out["factored"] = []
        for r in ranks:
            ideal = dense_lin / sum(r * (i + o) for i, o in shapes.values())
            label = f"transformers bf16 factored rank {r}"

            def run(r=r, label=label):
                factorize_(model, shapes, r)
                return time_scoring(model, config, args.batch, args.seq, args.repeats, label)

            res = measure(label, run)
            res.update({"rank": r, "ideal_flop_ratio": ideal})
            if dense_tps and "tokens_per_s" in res:
                res["speedup"] = res["tokens_per_s"] / dense_tps
                print(f"  rank {r}: {res['tokens_per_s']:.0f} tokens/s, speed-up {res['speedup']:.2f}x "
                      f"over dense, ideal FLOP ratio (7 projections) {ideal:.2f}x")
            out["factored"].append(res)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
