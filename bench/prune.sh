#!/usr/bin/env bash
# Early stopping (sweep --prune) measured: the same random study run complete and with early
# stopping, then the tokens (documents) scored by each, the configurations pruned, and whether the
# front of complete evaluations is the same. Random proposals do not depend on results, so both
# runs evaluate the same configurations.
#
#   bash bench/prune.sh [--budget 200] [--limit 64] [--ctx 256] [--seed 1] [--method whiten]
#                       [--choices dense,75%,50%,37.5%,25%,12.5%] [--model DIR] [--build build] [--work DIR]
#
# Default: bench/search's study (stories260K-hf, per-matrix space of @whiten choices, TinyStories
# perplexity and parameters), 200 configurations, 64 windows of 256 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=200; limit=64; ctx=256; seed=1; method=whiten; choices=dense,75%,50%,37.5%,25%,12.5%
model=../shared/data/stories260K-hf; build=build; work=/tmp/rankscope-prune
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2 ;; --limit) limit=$2 ;; --ctx) ctx=$2 ;; --seed) seed=$2 ;; --method) method=$2 ;;
    --choices) choices=$2 ;; --model) model=$2 ;; --build) build=$2 ;; --work) work=$2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "prune.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift 2
done
[ -d "$model" ] || { echo "prune.sh: $model not found (../shared beside the repository)" >&2; exit 1; }
mkdir -p "$work"; db=$work/prune.db; rm -f "$db" "$db"-*
calib=(); [ "$method" = whiten ] || [ "$method" = asvd ] && calib=(--calib tinystories)
for mode in complete pruned; do
  extra=(); [ $mode = pruned ] && extra=(--prune)
  start=$(date +%s.%N)
  "$build/rankscope" sweep --model "$model" --strategy random --space per-matrix --choices "$choices" --method "$method" "${calib[@]}" \
    --tasks tinystories,size --objectives tinystories.ppl:min,size.params:min --limit "$limit" --ctx "$ctx" \
    --budget "$budget" --seed "$seed" --include-base --db "$db" --study $mode --cache-dir "$work/cache" "${extra[@]}" > "$work/$mode.log" 2>&1 \
    || { tail -3 "$work/$mode.log"; exit 1; }
  echo "$mode: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s; $(grep '^time:' "$work/$mode.log")"
done
python3 - "$build/rankscope" "$db" <<'PY'
import json, subprocess, sys
exe, db = sys.argv[1], sys.argv[2]
def load(study):
    out = subprocess.run([exe, "export", "--db", db, "--study", study, "--format", "json"], capture_output=True, text=True, check=True).stdout
    return {e["config"]: e for e in json.loads(out)["evaluations"]}
a, b = load("complete"), load("pruned")
def front(ev):
    pts = [(c, e["metrics"]["tinystories.ppl"]["value"], e["metrics"]["size.params"]["value"]) for c, e in ev.items() if e["status"] == "done"]
    return {c for c, p, s in pts if not any(p2 <= p and s2 <= s and (p2 < p or s2 < s) for _, p2, s2 in pts)}
fa, fb = front(a), front(b)
pruned = [c for c, e in b.items() if e["status"] == "pruned"]
ta = sum(e["metrics"]["tinystories.ppl"]["n"] for e in a.values())
tb = sum(e["metrics"]["tinystories.ppl"]["n"] for e in b.values())
lost = [c for c in fa if b[c]["status"] == "pruned"]
print(f"configurations: {len(a)}; pruned: {len(pruned)}; tokens scored: {tb} of {ta} ({100 * tb / ta:.1f} %, "
      f"{100 * (1 - tb / ta):.1f} % saved)")
print(f"front of complete evaluations: {len(fa)} complete run, {len(fb)} pruned run; equal: {fa == fb}; "
      f"front configurations pruned: {len(lost)}")
sys.exit(0 if fa == fb and not lost else 1)
PY
