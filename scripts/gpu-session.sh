#!/usr/bin/env bash
# The project's GPU machine (see ../shared/gpu-machine/README.md): one script for both sides.
#   here:   bash scripts/gpu-session.sh prepare
#           fills .gpu-run/ (git-ignored) with the Debian
#           packages the GPU machine lacks, the build recipe and the data the GPU runs need (~50 MB).
#   there:  bash scripts/gpu-session.sh run STAGES   (carry .gpu-run; STAGES: build,test,torch,bench,sweep,paper)
#           environment: CUDA_ARCH (80;90), BUILD_TARGETS, QUICK_TEST=1 (test_gpu only), PROFILE=1,
#           BENCH_SECTIONS, BENCH_ARGS, PAPER_ARGS, PAPER_TIMEOUT, SWEEP_TIMEOUT, TORCH_ARGS.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    mkdir -p .gpu-run
    [ -d .gpu-run/debs ] || bash ../shared/gpu-machine/fetch-debs.sh .gpu-run/debs
    cp ../shared/gpu-machine/build-on-gpu.sh .gpu-run/
    (cd ../shared && tar czf "$OLDPWD/.gpu-run/shared.tgz" data/stories260K-hf data/bert-tiny-sst2 data/arc data/tinystories \
      data/glue-sst2 data/hellaswag data/mmlu data/truthfulqa data/winogrande data/llama2-tokenizer data/wikitext-2 data/wikitext-2-raw configs/llama-2-7b)
    du -sh .gpu-run
    exit 0 ;;
  run) ;;
  *) echo "usage: bash scripts/gpu-session.sh prepare | run STAGES"; exit 2 ;;
esac
stages=",${2:-build,test},"
root=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -d .gpu-run/shared ]; then mkdir -p .gpu-run/shared && tar xzf .gpu-run/shared.tgz -C .gpu-run/shared; fi
ln -sfn "$root/.gpu-run/shared" ../shared 2>/dev/null || true
export RANKSCOPE_SHARED_DIR=$root/.gpu-run/shared
P=/opt/rsdeps; L=$P/usr/lib/x86_64-linux-gnu
export CPATH=$P/usr/include LIBRARY_PATH=$L LD_LIBRARY_PATH=$L:$L/openblas-openmp:${LD_LIBRARY_PATH:-}
if [[ $stages == *,build,* ]]; then
  t0=$(date +%s)
  # The recipe of build-on-gpu.sh, building only what the GPU runs need.
  mkdir -p $P; for d in .gpu-run/debs/*.deb; do dpkg -x "$d" $P; done
  [ -d /usr/include/boost ] && mv /usr/include/boost /usr/include/boost-1.83-set-aside || true
  ln -sfn $L/openblas-openmp /usr/lib/x86_64-linux-gnu/openblas-openmp
  ln -sfn $P/usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-openmp
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$P/usr" \
    -DBoost_DIR=$L/cmake/Boost-1.74.0 -DBoost_NO_SYSTEM_PATHS=ON -DPKG_CONFIG_USE_CMAKE_PREFIX_PATH=ON \
    -DRANKSCOPE_CUDA=ON -DRANKSCOPE_BUILD_BENCH=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-80;90}" -Wno-dev > "$OUT/configure.log" 2>&1 || tail -30 "$OUT/configure.log"
  cmake --build build-gpu -j16 --target ${BUILD_TARGETS:-rankscope test_gpu test_forward gpu} > "$OUT/build-gpu.log" 2>&1 \
    || grep -B3 -A12 -m3 "error" "$OUT/build-gpu.log" | head -60
  echo "build: $(( $(date +%s) - t0 )) s"
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv
if [[ $stages == *,test,* ]]; then
  t0=$(date +%s)
  if [ -n "${QUICK_TEST:-}" ]; then
    (cd build-gpu && OMP_WAIT_POLICY=PASSIVE ctest -R test_gpu --output-on-failure -j2) > "$OUT/test-gpu.log" 2>&1
  else
    bash scripts/test-gpu.sh build-gpu > "$OUT/test-gpu.log" 2>&1
  fi
  echo "test-gpu rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "tests passed|tests failed|Failed|\*\*\*|Passed|Skipped" "$OUT/test-gpu.log" | tail -40
fi
if [[ $stages == *,torch,* ]]; then
  python3 bench/gpu/transformers_baseline.py --config .gpu-run/shared/configs/llama-2-7b/config.json --batch 64 --seq 128 \
    --repeats 5 ${TORCH_ARGS:-} --json "$OUT/transformers.json" 2>&1 | grep -v Warning | tail -20
fi
if [[ $stages == *,bench,* ]]; then
  base=""; [ -f .gpu-run/transformers.json ] && base="--baseline .gpu-run/transformers.json"
  [ -f "$OUT/transformers.json" ] && base="--baseline $OUT/transformers.json"
  RANKSCOPE_CUDA_PROFILE=${PROFILE:-0} ./build-gpu/bench/gpu --config .gpu-run/shared/configs/llama-2-7b --tokenizer .gpu-run/shared/data/llama2-tokenizer \
    --data-dir .gpu-run/shared/data --sections ${BENCH_SECTIONS:-gemm,throughput,factored} ${BENCH_ARGS:-} $base \
    --json "$OUT/bench-gpu.json" 2>&1 | tail -30
fi
if [[ $stages == *,ncu,* ]]; then
  # Every kernel of the throughput section under Nsight Compute (durations only, caches and clocks
  # as they are): kernel time per step by kernel, against the step's wall time.
  ncu --csv --metrics gpu__time_duration.sum --cache-control none --clock-control none \
    ./build-gpu/bench/gpu --config .gpu-run/shared/configs/llama-2-7b --tokenizer .gpu-run/shared/data/llama2-tokenizer \
    --data-dir .gpu-run/shared/data --sections throughput > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
  echo "ncu rc=$?"; tail -3 "$OUT/ncu.err"
  python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head = rows[0]; rows = rows[1:]
ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
total = collections.defaultdict(float); count = collections.Counter()
for r in rows:
    v = float(r[vi].replace(",", ""))
    v *= {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0, "s": 1e3, "second": 1e3}.get(r[ui], 1.0)
    name = re.sub(r"\(.*", "", r[ki])[:70]
    total[name] += v; count[name] += 1
steps = 7
print(f"ncu: {len(rows)} kernels, {sum(total.values()):.1f} ms in all, {sum(total.values())/steps:.1f} ms a step (of {steps})")
for n, t in sorted(total.items(), key=lambda x: -x[1])[:25]:
    print(f"  {t/steps:9.3f} ms/step {count[n]/steps:7.1f} calls/step  {n}")
PY
fi
if [[ $stages == *,sweep,* ]]; then
  for dev in cuda cpu; do
    rm -rf /tmp/q-$dev; mkdir -p /tmp/q-$dev
    t0=$(date +%s.%N)
    timeout ${SWEEP_TIMEOUT:-120} ./build-gpu/rankscope sweep experiments/quickstart.ini --db /tmp/q-$dev/q.db --device $dev --data-dir .gpu-run/shared/data \
      > "$OUT/sweep-$dev.log" 2>&1; rc=$?
    echo "sweep quickstart --device $dev: rc=$rc, $(echo "$(date +%s.%N) - $t0" | bc) s"; tail -2 "$OUT/sweep-$dev.log"
  done
fi
if [[ $stages == *,paper,* ]]; then
  RANKSCOPE_CUDA_PROFILE=${PROFILE:-0} timeout ${PAPER_TIMEOUT:-300} ./build-gpu/bench/gpu --config .gpu-run/shared/configs/llama-2-7b --tokenizer .gpu-run/shared/data/llama2-tokenizer \
    --data-dir .gpu-run/shared/data --sections gemm,paper ${PAPER_ARGS:-} --json "$OUT/bench-paper.json" 2>&1 | tail -12
fi
