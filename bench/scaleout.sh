#!/usr/bin/env bash
# Scale-out of one rankscope study over the GPUs of one host: one worker a GPU
# (CUDA_VISIBLE_DEVICES), every worker writing to one PostgreSQL server started as
# docs/cluster.md tells a user to (initdb with a password, pg_ctl, createdb).
#
#   bash bench/scaleout.sh [--workers 1,2,4,8] [--kill N] [options]
#
# What it runs, in the work directory (default /tmp/rankscope-scaleout; everything is kept there,
# and a rerun reuses the model, the server and finished studies):
#   1. a Llama-2-7B-shaped checkpoint with random bf16 weights (build/bench/random_model), unless
#      --model names one;
#   2. a private PostgreSQL server (as `nobody` when run as root) and the database `rankscope`;
#   3. a warm-up study that fills the factor cache with every factor the configurations need, so
#      that every timed run starts from the same cache;
#   4. for each worker count N: the same fixed list of configurations and tasks as study
#      scaleout-wN, N workers started together, the wall time from start to the last exit;
#   5. with --kill K: study scaleout-kill run by the largest N, K workers killed with SIGKILL once a
#      third of the configurations are done, restarted, and the study checked complete with every
#      configuration once;
#   6. the report (report.md in the work directory and on stdout): configurations/hour, scaling
#      efficiency against one worker, the share of wall time outside evaluations, and whether every
#      study's stored metrics equal the one-worker run's.
# Where a host has fewer GPUs than workers, workers share GPUs round-robin (--gpus N says how many
# there are; --device cpu runs every worker on the CPU): that proves the mechanics, not the scaling.
#
# Options (defaults in brackets):
#   --workers LIST     worker counts, e.g. 1,2,4,8 [1,2,4,8 up to the GPU count]
#   --kill K           workers to kill in the kill run [2; 0: no kill run]
#   --configs K        configurations in the list [16]
#   --tasks LIST       [arc_easy,hellaswag]      --limit N   documents per task [-1: all]
#   --model DIR        a checkpoint to use instead of a random one
#   --config DIR       config.json for the random model [../shared/configs/llama-2-7b]
#   --tokenizer DIR    [../shared/data/llama2-tokenizer]  --data-dir DIR [../shared/data]
#   --device D         cuda | cpu [cuda]     --threads T  threads per worker [cores / workers]
#   --build DIR        rankscope's build directory [build]
#   --pg-bin DIR       PostgreSQL's bin directory (initdb, pg_ctl, createdb) [found]
#   --work DIR         [/tmp/rankscope-scaleout]   --port P [a free one, kept with the server]
#   --stop-server      stop the PostgreSQL server at the end
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

workers_list=""; kill_n=2; n_configs=16; tasks=arc_easy,hellaswag; limit=-1; model=""
config=../shared/configs/llama-2-7b; tokenizer=../shared/data/llama2-tokenizer; data_dir=../shared/data
device=cuda; threads=""; build=build; pg_bin=""; work=/tmp/rankscope-scaleout; port=""; gpus=""; stop_server=0
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers_list=${2//,/ }; shift 2 ;;
    --kill) kill_n=$2; shift 2 ;;
    --configs) n_configs=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --tokenizer) tokenizer=$2; shift 2 ;;
    --data-dir) data_dir=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --pg-bin) pg_bin=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --stop-server) stop_server=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaleout.sh: unknown option '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done
say() { echo "[scaleout $(date +%H:%M:%S)] $*"; }
die() { echo "scaleout.sh: error: $*" >&2; exit 1; }

case "$build" in /*) ;; *) build=$root/$build ;; esac
rs=$build/rankscope
[ -x "$rs" ] || die "$rs: not built (cmake --build $build --target rankscope)"
mkdir -p "$work/logs"; work=$(cd "$work" && pwd)
cores=$(nproc)
if [ -z "$gpus" ]; then
  if [ "$device" = cuda ] && command -v nvidia-smi > /dev/null; then gpus=$(nvidia-smi -L | grep -c '^GPU' || true); else gpus=0; fi
fi
if [ "$device" = cuda ] && [ "$gpus" -lt 1 ]; then die "--device cuda but no GPU is visible (nvidia-smi -L); use --device cpu"; fi
if [ -z "$workers_list" ]; then
  workers_list=""; for n in 1 2 4 8; do [ "$n" -le "$(( gpus > 0 ? gpus : 2 ))" ] && workers_list="$workers_list $n"; done
fi
max_workers=1; for n in $workers_list; do [ "$n" -gt "$max_workers" ] && max_workers=$n; done
[ "$kill_n" -le "$max_workers" ] || die "--kill $kill_n: more than the largest worker count ($max_workers)"
say "host $(hostname): $cores cores, $gpus GPUs; workers: $workers_list; kill run: $kill_n of $max_workers; device $device"

# 1. The model.
if [ -z "$model" ]; then
  model=$work/model
  if [ ! -f "$model/model.safetensors.index.json" ]; then
    [ -x "$build/bench/random_model" ] || die "$build/bench/random_model: not built (-DRANKSCOPE_BUILD_BENCH=ON)"
    say "writing a random bf16 checkpoint of $config to $model"
    "$build/bench/random_model" --config "$config" --tokenizer "$tokenizer" --out "$model" --seed 1
  fi
fi
model=$(cd "$model" && pwd)

# 2. The PostgreSQL server, as docs/cluster.md "a server of your own" tells a user to start one.
if [ -z "$pg_bin" ]; then
  if command -v pg_config > /dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then pg_bin=$(pg_config --bindir); fi
  for v in 17 16 15 14 13; do [ -z "$pg_bin" ] && [ -x /usr/lib/postgresql/$v/bin/initdb ] && pg_bin=/usr/lib/postgresql/$v/bin; done
fi
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || die "no PostgreSQL server binaries (initdb, pg_ctl): install postgresql or pass --pg-bin"
as_db_user() {  # the server refuses to run as root: run it as nobody then
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$work/pg" "$@"; else "$@"; fi
}
pgdir=$work/pg
if [ ! -f "$pgdir/data/PG_VERSION" ]; then
  mkdir -p "$pgdir"; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$pgdir/password"
  chmod 600 "$pgdir/password"; [ "$(id -u)" = 0 ] && chown -R 65534:65534 "$pgdir"
  as_db_user "$pg_bin/initdb" -D "$pgdir/data" -U rankscope -A scram-sha-256 --pwfile="$pgdir/password" > "$work/logs/initdb.log" 2>&1 \
    || { tail -5 "$work/logs/initdb.log"; die "initdb failed (log: $work/logs/initdb.log)"; }
fi
export PGPASSWORD; PGPASSWORD=$(cat "$pgdir/password")
if as_db_user "$pg_bin/pg_ctl" -D "$pgdir/data" status > /dev/null 2>&1; then
  port=$(cat "$work/port")
else
  [ -n "$port" ] || port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  echo "$port" > "$work/port"
  max_conn=$(( 4 * max_workers + 20 ))
  as_db_user "$pg_bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
    -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=$max_conn" start > /dev/null \
    || { tail -5 "$pgdir/server.log"; die "pg_ctl start failed (log: $pgdir/server.log)"; }
  as_db_user "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U rankscope rankscope 2> /dev/null || true
fi
db=postgresql://rankscope@127.0.0.1:$port/rankscope
if [ "$stop_server" = 1 ]; then
  trap 'as_db_user "$pg_bin/pg_ctl" -D "$pgdir/data" -m fast -w stop > /dev/null 2>&1 || true' EXIT
fi
say "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') at $db (password in PGPASSWORD, never on a command line)"

# The study: a fixed list of configurations over the model's last four layers.
n_layer=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_hidden_layers'])" "$model/config.json")
first=$(( n_layer > 4 ? n_layer - 4 : 0 )); last=$(( n_layer - 1 ))
configs=()
for rank in 75% 50% 25% 12.5% 87.5% 62.5% 37.5% 6.25%; do
  for mats in all attn mlp q,k; do configs+=("L$first-$last:$mats=$rank"); done
done
[ "$n_configs" -le "${#configs[@]}" ] || die "--configs $n_configs: at most ${#configs[@]}"
configs=("${configs[@]:0:$n_configs}")
ini=$work/scaleout.ini
{
  echo "# written by bench/scaleout.sh"
  echo "model = $model"
  echo "strategy = list"
  echo "tasks = $tasks,size"
  echo "limit = $limit"
  echo "objectives = size.reduction_pct:max"
  echo "data-dir = $(cd "$root" && cd "$data_dir" && pwd)"
  echo "cache-dir = $work/cache"
  echo "device = $device"
  [ "$device" = cuda ] && echo "svd-backend = cuda"
  for c in "${configs[@]}"; do echo "config = $c"; done
} > "$ini"
# Studies of an earlier run with other settings are not reused.
sig=$(grep -v '^#' "$ini" | cksum | cut -d' ' -f1)
if [ "$(cat "$work/settings.sig" 2> /dev/null)" != "$sig" ]; then
  rm -f "$work"/wall-*; echo "$sig" > "$work/settings.sig"; fresh=1
else
  fresh=0
fi
warm=$work/warm.ini
# (one document of the first task: what makes a worker decompose, and so compute the factors)
{ grep -v -e '^config =' -e '^tasks =' -e '^limit =' "$ini"; echo "tasks = ${tasks%%,*},size"; echo "limit = 1"; echo "config = L$first-$last:all=50%"; } > "$warm"

gpu_of() { [ "$device" = cuda ] && echo $(( $1 % gpus )) || echo ""; }
start_worker() {  # study index log workers: starts one worker, its pid in $worker_pid
  local gpu; gpu=$(gpu_of "$2")
  local t=${threads:-$(( cores / ${4:-1} > 0 ? cores / ${4:-1} : 1 ))}
  CUDA_VISIBLE_DEVICES=$gpu "$rs" sweep "$ini" --db "$db" --study "$1" --threads "$t" --stale-after 60 >> "$3" 2>&1 &
  worker_pid=$!
}
study_done() {  # study -> count of done evaluations
  "$rs" export --db "$db" --study "$1" --format json 2> /dev/null \
    | python3 -c "import json,sys; print(sum(1 for e in json.load(sys.stdin)['evaluations'] if e['status']=='done'))" 2> /dev/null || echo 0
}

# 3. Warm-up: every factor the configurations use, into the shared cache.
if [ "$(study_done scaleout-warm)" -lt 1 ]; then
  say "warm-up: the factor cache for L$first-$last (every configuration's matrices)"
  t0=$(date +%s.%N)
  CUDA_VISIBLE_DEVICES=$(gpu_of 0) "$rs" sweep "$warm" --db "$db" --study scaleout-warm --stale-after 60 > "$work/logs/warm.log" 2>&1 \
    || { tail -5 "$work/logs/warm.log"; die "warm-up failed (log: $work/logs/warm.log)"; }
  say "warm-up: $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
fi

# 4. One study per worker count.
declare -A wall
for n in $workers_list; do
  study=scaleout-w$n
  if [ -f "$work/wall-$n" ] && [ "$(study_done "$study")" -ge "$n_configs" ]; then
    wall[$n]=$(cat "$work/wall-$n"); say "$study: done before ($(printf %.1f "${wall[$n]}") s)"; continue
  fi
  "$rs" studies --db "$db" --study "$study" --delete > /dev/null 2>&1 || true
  say "$study: $n_configs configurations x ($tasks, limit $limit) on $n workers"
  t0=$(date +%s.%N); pids=()
  for ((i = 0; i < n; ++i)); do start_worker "$study" "$i" "$work/logs/w$n-$i.log" "$n"; pids+=("$worker_pid"); done
  rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  t1=$(date +%s.%N); wall[$n]=$(python3 -c "print($t1 - $t0)")
  [ "$rc" = 0 ] || { tail -5 "$work/logs/w$n-0.log"; die "$study: a worker failed (logs: $work/logs/w$n-*.log)"; }
  echo "${wall[$n]}" > "$work/wall-$n"
  say "$study: $(printf %.1f "${wall[$n]}") s"
done

# 5. The kill run.
if [ "$kill_n" -gt 0 ]; then
  study=scaleout-kill; n=$max_workers
  if [ "$fresh" = 1 ] || [ "$(study_done "$study")" -lt "$n_configs" ]; then
    "$rs" studies --db "$db" --study "$study" --delete > /dev/null 2>&1 || true
    say "$study: $n workers; $kill_n killed (SIGKILL) once $(( n_configs / 3 )) configurations are done, then restarted"
    pids=()
    for ((i = 0; i < n; ++i)); do start_worker "$study" "$i" "$work/logs/kill-$i.log" "$n"; pids+=("$worker_pid"); done
    while [ "$(study_done "$study")" -lt $(( n_configs / 3 )) ]; do sleep 1; done
    for ((i = 0; i < kill_n; ++i)); do kill -KILL "${pids[$i]}" 2> /dev/null || true; done
    for ((i = 0; i < kill_n; ++i)); do wait "${pids[$i]}" 2> /dev/null || true; done
    say "$study: killed workers 0..$(( kill_n - 1 )) at $(study_done "$study") done; restarting them"
    echo "--- restarted after SIGKILL ---" | tee -a "$work"/logs/kill-*.log > /dev/null
    for ((i = 0; i < kill_n; ++i)); do start_worker "$study" "$i" "$work/logs/kill-$i.log" "$n"; pids[$i]=$worker_pid; done
    rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done
    [ "$rc" = 0 ] || { tail -5 "$work/logs/kill-0.log"; die "$study: a worker failed (logs: $work/logs/kill-*.log)"; }
  fi
fi

# 6. The report.
for s in $(for n in $workers_list; do echo scaleout-w$n; done) $([ "$kill_n" -gt 0 ] && echo scaleout-kill); do
  "$rs" export --db "$db" --study "$s" --format json > "$work/$s.json"
done
walls=""; for n in $workers_list; do walls="$walls $n:${wall[$n]}"; done
python3 - "$work" "$n_configs" "$kill_n" "$max_workers" "$device" "$gpus" "$tasks" "$limit" $walls <<'PY' | tee "$work/report.md"
import json, sys, os
work, k, kill_n, max_w, device, gpus, tasks, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:9]
walls = {int(a.split(":")[0]): float(a.split(":")[1]) for a in sys.argv[9:]}
def load(s):
    ev = json.load(open(os.path.join(work, s + ".json")))["evaluations"]
    return ev
def metrics(ev):
    return {e["config"]: {m: v["value"] for m, v in e["metrics"].items()} for e in ev if e["status"] == "done"}
ref = metrics(load("scaleout-w1")) if 1 in walls else None
print(f"# rankscope scale-out: {k} configurations x ({tasks}, limit {limit}), device {device}, {gpus} GPUs\n")
print("(wall: from starting the workers to the last one's exit, model loading included; outside evaluations: 1 - the")
print("evaluations' summed wall_s / (workers x wall); the span columns leave out each worker's start and exit)\n")
print("| workers | wall s | configurations/hour | efficiency vs 1 worker | outside evaluations | first claim to last result s | efficiency over that span | metrics equal to 1 worker |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
def span(ev):
    return max(e["finished_at"] for e in ev) - min(e["claimed_at"] for e in ev)
span1 = span(load("scaleout-w1")) if 1 in walls else None
rate1 = k / walls[1] * 3600 if 1 in walls else None
ok = True
def compare(m):
    if ref is None: return "-"
    if set(m) != set(ref): return f"NO: {len(set(m) ^ set(ref))} configurations differ"
    worst = 0.0; unequal = 0
    for c in ref:
        for name, v in ref[c].items():
            w = m[c].get(name)
            if w is None: return f"NO: {c} lacks {name}"
            if v != w: unequal += 1; worst = max(worst, abs(v - w))
    return "yes, bit for bit" if unequal == 0 else f"NO: {unequal} values differ, max |diff| {worst:.3g}"
for n, w in sorted(walls.items()):
    ev = load(f"scaleout-w{n}")
    done = [e for e in ev if e["status"] == "done"]
    busy = sum(e["wall_s"] for e in done)
    rate = len(done) / w * 3600
    eff = rate / (n * rate1) if rate1 else float("nan")
    cmp = compare(metrics(ev)); ok &= cmp.startswith("yes") or cmp == "-"
    ok &= len(done) == k
    sp = span(done)
    eff_span = span1 / (n * sp) if span1 else float("nan")
    print(f"| {n} | {w:.1f} | {rate:.1f} | {eff:.2f} | {100 * (1 - busy / (n * w)):.1f} % | {sp:.1f} | {eff_span:.2f} | {cmp} |")
if kill_n:
    ev = load("scaleout-kill")
    done = [e for e in ev if e["status"] == "done"]
    configs = [e["config"] for e in ev]
    claimed = [e for e in ev if e["status"] != "done"]
    cmp = compare(metrics(ev))
    once = len(done) == k and len(set(configs)) == len(configs) == k and not claimed
    ok &= once and (cmp.startswith("yes") or cmp == "-")
    workers = sorted({e["worker"] for e in done})
    print(f"\nkill run ({max_w} workers, {kill_n} killed with SIGKILL and restarted): {len(done)} of {k} configurations done, "
          f"{'each once' if once else 'NOT each once'}, {len(claimed)} claims left, done by {len(workers)} worker processes; "
          f"metrics equal to 1 worker: {cmp}")
print(f"\nall checks: {'passed' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PY
exit "${PIPESTATUS[0]}"
