#!/usr/bin/env python3
"""Checks `rankscope decompose --format hf` against transformers itself.

Two steps, which may run on different machines:
  prepare: rankscope decomposes the model by each configuration below into a --format hf
           checkpoint, writes its own logits for two token sequences (`rankscope forward`) and its
           parameter count (`rankscope info --json`). Needs only the rankscope binary.
  verify:  transformers loads each checkpoint with trust_remote_code=True in fp32 and checks that
           every factored matrix is a FactoredLinear of the recorded rank (nothing dense at its
           place), that its parameter count equals rankscope's, and that its logits equal
           rankscope's within 1e-4. Needs torch, transformers and numpy.

  check_export.py --rankscope build/rankscope --model ../shared/data/stories260K-hf --work DIR
runs both; `--step prepare` or `--step verify` one. Without torch/transformers, verify prints
"SKIPPED: ..." and exits 0 (ctest reports the test as skipped). Exit status 1 on any mismatch.
"""
import argparse
import json
import shutil
import os
import subprocess
import sys

# Two sequences of token ids within every vocabulary used here (stories260K: 512; BERT: 30522).
SEQUENCES = {
    "causal": [[1, 403, 407, 261, 378, 292, 266, 445, 270, 506, 263, 312],
               [1, 65, 300, 29, 410, 287, 13, 388, 99, 257, 481, 342, 7, 266, 318, 500, 271, 440, 289, 262, 301]],
    "bert": [[101, 2009, 1005, 1055, 1037, 11951, 102],
             [101, 1996, 3185, 2001, 2200, 2204, 1010, 2021, 2025, 2026, 5440, 1012, 102]],
}

# name -> (configuration, needs calibration). stories260K-hf: svd, tucker, whiten and a mix.
CONFIGS = {
    "causal": {
        "svd": ("L*:all=50%@svd", False),
        "tucker": ("L*:all=25%@tucker", False),
        "whiten": ("L*:all=37.5%@whiten", True),
        "mixed": ("L0:q,k=4@svd;L1:mlp=25%@tucker;L0:o,down=50%@whiten", True),
    },
    "bert": {
        "svd": ("L*:all=50%@svd", False),
        "tucker": ("L0:all=16;L1:up,down=25%", False),
    },
}

# Architectures storing fused tensors (Phi-3): the fused cells decomposed as a whole, and mixed
# with parts decomposed alone (written split: a SplitLinear of Linear / FactoredLinear children).
FUSED_CONFIGS = {
    "fused": ("L*:qkv,gate_up=50%@svd;L1:o=25%", False),
    "fusedmix": ("L0:qkv=37.5%@whiten;L1:gate_up=25%@whiten;L1:q,v=8@svd;L0:up=30%", True),
}

TOLERANCE = 1e-4


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"check_export: {' '.join(cmd)} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def prepare(args):
    config = json.load(open(os.path.join(args.model, "config.json")))
    family = "bert" if config["architectures"][0].startswith("Bert") else "causal"
    os.makedirs(args.work, exist_ok=True)
    manifest = {"model": args.model, "architecture": config["architectures"][0], "family": family, "cases": {}}
    cases = dict(CONFIGS[family])
    if config["architectures"][0] == "Phi3ForCausalLM":
        cases.update(FUSED_CONFIGS)
    for name, (text, calibrated) in cases.items():
        out = os.path.join(args.work, name)
        ckpt = os.path.join(out, "checkpoint")
        os.makedirs(out, exist_ok=True)
        cmd = [args.rankscope, "decompose", args.model, "--config", text, "--format", "hf", "--out", ckpt,
               "--cache-dir", os.path.join(args.work, "cache"), "--threads", "1"]
        if calibrated:
            cmd += ["--calib", "tinystories", "--calib-samples", "16", "--calib-ctx", "64", "--data-dir", args.data_dir]
        run(cmd)
        logits = []
        for k, ids in enumerate(SEQUENCES[family]):
            path = os.path.join(out, f"logits_{k}.npy")
            run([args.rankscope, "forward", ckpt, "--ids", ",".join(map(str, ids)), "--out", path, "--threads", "1"])
            logits.append(os.path.basename(path))
        info = json.loads(run([args.rankscope, "info", ckpt, "--json"]))
        manifest["cases"][name] = {"config": text, "checkpoint": "checkpoint", "logits": logits,
                                   "params_total": info["params_total"], "sequences": SEQUENCES[family]}
        print(f"prepared {name:8s} {text}: {info['params_total']} parameters")
    with open(os.path.join(args.work, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)


def verify(args):
    try:
        import numpy as np
        import torch
        import transformers
    except ImportError as e:
        print(f"SKIPPED: transformers check needs torch, transformers and numpy ({e})")
        return 0
    torch.manual_seed(0)
    manifest = json.load(open(os.path.join(args.work, "manifest.json")))
    auto = {"causal": transformers.AutoModelForCausalLM,
            "bert": transformers.AutoModelForSequenceClassification}[manifest["family"]]
    failures = 0
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for name, case in manifest["cases"].items():
        ckpt = os.path.join(args.work, name, case["checkpoint"])
        model = auto.from_pretrained(ckpt, trust_remote_code=True, dtype=torch.float32,
                                     attn_implementation="eager")
        model.eval()
        problems = []
        factored = json.load(open(os.path.join(ckpt, "config.json")))["rankscope"]["factored"]
        for module_name, entry in factored.items():
            module = model.get_submodule(module_name)
            if type(module).__name__ != "FactoredLinear":
                problems.append(f"{module_name} is a {type(module).__name__}")
            elif module.rank != entry["rank"] or (module.core is not None) != (entry["method"] == "tucker"):
                problems.append(f"{module_name}: rank {module.rank}, core {module.core is not None}, recorded {entry}")
        split = json.load(open(os.path.join(ckpt, "config.json")))["rankscope"].get("split", {})
        for module_name in split:
            if type(model.get_submodule(module_name)).__name__ != "SplitLinear":
                problems.append(f"{module_name} is a {type(model.get_submodule(module_name)).__name__}, not a SplitLinear")
        n_params = sum(p.numel() for p in model.parameters())
        if n_params != case["params_total"]:
            problems.append(f"{n_params} parameters, rankscope info says {case['params_total']}")
        worst = 0.0
        for k, ids in enumerate(case["sequences"]):
            expected = np.load(os.path.join(args.work, name, case["logits"][k]))
            with torch.no_grad():
                got = model(torch.tensor([ids])).logits[0].float().numpy()
            if manifest["family"] == "bert":
                expected = expected.reshape(got.shape)
            if got.shape != expected.shape:
                problems.append(f"logits shape {got.shape}, rankscope {expected.shape}")
                continue
            worst = max(worst, float(np.abs(got - expected).max()))
        if worst > TOLERANCE:
            problems.append(f"max |logit difference| {worst:.3g} > {TOLERANCE}")
        status = "ok" if not problems else "FAILED: " + "; ".join(problems)
        print(f"{name:8s} {case['config']}: {n_params} parameters, {len(factored)} factored matrices, "
              f"max |logit diff| {worst:.3g}: {status}")
        failures += bool(problems)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=["prepare", "verify", "both"], default="both")
    parser.add_argument("--rankscope", default="build/rankscope")
    parser.add_argument("--model", default="../shared/data/stories260K-hf")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--work", required=True)
    parser.add_argument("--tokenizer-from", default="",
                        help="a model whose tokenizer files are copied beside a copy of --model (the tiny "
                             "reference checkpoints carry none; whiten calibration needs text)")
    args = parser.parse_args()
    if args.step == "both":  # nothing to prepare where nothing can verify
        try:
            import numpy, torch, transformers  # noqa: F401
        except ImportError as e:
            print(f"SKIPPED: transformers check needs torch, transformers and numpy ({e})")
            return 0
    if args.step in ("prepare", "both"):
        if not os.path.isdir(args.model):
            print(f"SKIPPED: {args.model} not found")
            return 0
        if args.tokenizer_from:
            if not os.path.isdir(args.tokenizer_from):
                print(f"SKIPPED: {args.tokenizer_from} not found")
                return 0
            copy = os.path.join(args.work, "model")
            os.makedirs(copy, exist_ok=True)
            for name in ("config.json", "model.safetensors"):
                shutil.copyfile(os.path.join(args.model, name), os.path.join(copy, name))
            for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
                if os.path.exists(os.path.join(args.tokenizer_from, name)):
                    shutil.copyfile(os.path.join(args.tokenizer_from, name), os.path.join(copy, name))
            args.model = copy
        prepare(args)
    if args.step in ("verify", "both"):
        return verify(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
