#!/usr/bin/env bash
# The project's GPU machine (see ../shared/gpu-machine/README.md): one script for both sides.
#   here:   bash scripts/gpu-session.sh prepare
#           fills .gpu-run/ (git-ignored) with the Debian
#           packages the GPU machine lacks, the build recipe and the data the GPU runs need (~50 MB).
#           bash scripts/gpu-session.sh prepare-scaleout
#           fills .gpu-scale/ for bench/scaleout.sh instead: the same packages plus libpq and a
#           PostgreSQL 15 server (trimmed, ~21 MB), and only the Llama-2-7B config and the data of
#           ARC and HellaSwag.
#   there:  bash scripts/gpu-session.sh run STAGES   (carry .gpu-run, or .gpu-scale with RUN_DIR=.gpu-scale;
#           STAGES: build,test,torch,bench,ncu,sweep,paper,scaleout)
#           environment: CUDA_ARCH (80;90), BUILD_TARGETS, QUICK_TEST=1 (test_gpu only), PROFILE=1,
#           BENCH_SECTIONS, BENCH_ARGS, PAPER_ARGS, PAPER_TIMEOUT, SWEEP_TIMEOUT, TORCH_ARGS,
#           SCALEOUT_ARGS (options of bench/scaleout.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-.gpu-run}
case "${1:-}" in
  prepare)
    mkdir -p .gpu-run
    [ -d .gpu-run/debs ] || bash ../shared/gpu-machine/fetch-debs.sh .gpu-run/debs
    # PCRE2 (byte-level BPE pre-tokenizers), which the shared recipe predates.
    (cd .gpu-run/debs && apt-get download -q libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 2>&1 \
      | grep -v unsandboxed | tail -1)
    cp ../shared/gpu-machine/build-on-gpu.sh .gpu-run/
    (cd ../shared && tar czf "$OLDPWD/$RUN_DIR/shared.tgz" data/stories260K-hf data/bert-tiny-sst2 data/arc data/tinystories \
      data/glue-sst2 data/hellaswag data/mmlu data/truthfulqa data/winogrande data/llama2-tokenizer data/wikitext-2 data/wikitext-2-raw configs/llama-2-7b)
    du -sh .gpu-run
    exit 0 ;;
  prepare-scaleout)
    set -e
    mkdir -p .gpu-scale
    [ -d .gpu-scale/debs ] || bash ../shared/gpu-machine/fetch-debs.sh .gpu-scale/debs
    (cd .gpu-scale/debs && apt-get download -q libpq-dev libpq5 libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
      libpcre2-posix3 2>&1 | grep -v unsandboxed || true)
    if [ ! -f .gpu-scale/pg.tar.xz ]; then
      # The server and its client tools with the libraries Ubuntu 24.04 lacks under these sonames
      # (ICU 72, OpenLDAP 2.5, libunistring 2, ...): unpacked into their own prefix there and put
      # last on LD_LIBRARY_PATH, so the machine's own libraries win wherever they exist.
      tmp=$(mktemp -d); (cd "$tmp" && apt-get download -q postgresql-15 postgresql-client-15 libpq5 libicu72 libldap-2.5-0 \
        libsasl2-2 libsasl2-modules-db libunistring2 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 \
        libxml2 libgnutls30 libidn2-0 libp11-kit0 libtasn1-6 libnettle8 libhogweed6 libgmp10 libffi8 libaudit1 libcap-ng0 \
        libpam0g libsystemd0 liblz4-1 libzstd1 liblzma5 libgcrypt20 libgpg-error0 libcap2 libcom-err2 libssl3 libdb5.3 libreadline8 2>&1 \
        | grep -v unsandboxed | tail -1)
      mkdir "$tmp/root"; for d in "$tmp"/*.deb; do dpkg -x "$d" "$tmp/root"; done
      (cd "$tmp/root" && rm -rf usr/share/doc usr/share/man usr/share/locale usr/share/lintian etc lib/systemd \
         usr/lib/postgresql/15/lib/bitcode usr/lib/postgresql/15/lib/llvmjit* \
       && find usr/lib/postgresql/15/bin -type f ! -name initdb ! -name pg_ctl ! -name postgres ! -name createdb ! -name psql -delete \
       && tar cJf "$OLDPWD/.gpu-scale/pg.tar.xz" .)
      rm -rf "$tmp"
    fi
    cp ../shared/gpu-machine/build-on-gpu.sh .gpu-scale/
    (cd ../shared && tar czf "$OLDPWD/.gpu-scale/shared.tgz" data/arc data/hellaswag data/llama2-tokenizer configs/llama-2-7b)
    du -sh .gpu-scale
    exit 0 ;;
  run) ;;
  *) echo "usage: bash scripts/gpu-session.sh prepare | prepare-scaleout | run STAGES"; exit 2 ;;
esac
stages=",${2:-build,test},"
root=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ ! -d $RUN_DIR/shared ]; then mkdir -p $RUN_DIR/shared && tar xzf $RUN_DIR/shared.tgz -C $RUN_DIR/shared; fi
ln -sfn "$root/$RUN_DIR/shared" ../shared 2>/dev/null || true
export RANKSCOPE_SHARED_DIR=$root/$RUN_DIR/shared
P=/opt/rsdeps; L=$P/usr/lib/x86_64-linux-gnu
export CPATH=$P/usr/include:$P/usr/include/postgresql LIBRARY_PATH=$L LD_LIBRARY_PATH=$L:$L/openblas-openmp:${LD_LIBRARY_PATH:-}
if [ -f $RUN_DIR/pg.tar.xz ]; then  # the PostgreSQL server of prepare-scaleout, its libraries last
  PG=/opt/rspg; [ -x $PG/usr/lib/postgresql/15/bin/postgres ] || { mkdir -p $PG && tar xJf $RUN_DIR/pg.tar.xz -C $PG; }
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$PG/usr/lib/x86_64-linux-gnu:$PG/lib/x86_64-linux-gnu
fi
if [[ $stages == *,build,* ]]; then
  t0=$(date +%s)
  # The recipe of build-on-gpu.sh, building only what the GPU runs need.
  mkdir -p $P; for d in $RUN_DIR/debs/*.deb; do dpkg -x "$d" $P; done
  [ -d /usr/include/boost ] && mv /usr/include/boost /usr/include/boost-1.83-set-aside || true
  ln -sfn $L/openblas-openmp /usr/lib/x86_64-linux-gnu/openblas-openmp
  ln -sfn $P/usr/include/x86_64-linux-gnu/openblas-openmp /usr/include/x86_64-linux-gnu/openblas-openmp
  [ -d $P/usr/include/postgresql ] && [ ! -e /usr/include/postgresql ] && ln -sfn $P/usr/include/postgresql /usr/include/postgresql
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
  python3 bench/gpu/transformers_baseline.py --config $RUN_DIR/shared/configs/llama-2-7b/config.json --batch 64 --seq 128 \
    --repeats 5 ${TORCH_ARGS:-} --json "$OUT/transformers.json" 2>&1 | grep -v Warning | tail -20
fi
if [[ $stages == *,bench,* ]]; then
  base=""; [ -f $RUN_DIR/transformers.json ] && base="--baseline $RUN_DIR/transformers.json"
  [ -f "$OUT/transformers.json" ] && base="--baseline $OUT/transformers.json"
  RANKSCOPE_CUDA_PROFILE=${PROFILE:-0} ./build-gpu/bench/gpu --config $RUN_DIR/shared/configs/llama-2-7b --tokenizer $RUN_DIR/shared/data/llama2-tokenizer \
    --data-dir $RUN_DIR/shared/data --sections ${BENCH_SECTIONS:-gemm,throughput,factored} ${BENCH_ARGS:-} $base \
    --json "$OUT/bench-gpu.json" 2>&1 | tail -30
fi
if [[ $stages == *,ncu,* ]]; then
  # Every kernel of the throughput section under Nsight Compute (durations only, caches and clocks
  # as they are): kernel time per step by kernel, against the step's wall time.
  ncu --csv --metrics gpu__time_duration.sum --cache-control none --clock-control none \
    ./build-gpu/bench/gpu --config $RUN_DIR/shared/configs/llama-2-7b --tokenizer $RUN_DIR/shared/data/llama2-tokenizer \
    --data-dir $RUN_DIR/shared/data --sections throughput > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
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
if [[ $stages == *,scaleout,* ]]; then
  nvidia-smi -L
  bash bench/scaleout.sh --build build-gpu --pg-bin /opt/rspg/usr/lib/postgresql/15/bin --config $RUN_DIR/shared/configs/llama-2-7b \
    --tokenizer $RUN_DIR/shared/data/llama2-tokenizer --data-dir $RUN_DIR/shared/data ${SCALEOUT_ARGS:-} > "$OUT/scaleout.log" 2>&1
  echo "scaleout rc=$?"; tail -40 "$OUT/scaleout.log"
  for f in /tmp/rankscope-scaleout/report.md; do [ -f $f ] && cp $f "$OUT/"; done
  tar czf "$OUT/scaleout-logs.tgz" -C /tmp/rankscope-scaleout logs $(cd /tmp/rankscope-scaleout && ls *.json 2>/dev/null) 2>/dev/null || true
fi
if [[ $stages == *,sweep,* ]]; then
  for dev in cuda cpu; do
    rm -rf /tmp/q-$dev; mkdir -p /tmp/q-$dev
    t0=$(date +%s.%N)
    timeout ${SWEEP_TIMEOUT:-120} ./build-gpu/rankscope sweep experiments/quickstart.ini --db /tmp/q-$dev/q.db --device $dev --data-dir $RUN_DIR/shared/data \
      > "$OUT/sweep-$dev.log" 2>&1; rc=$?
    echo "sweep quickstart --device $dev: rc=$rc, $(echo "$(date +%s.%N) - $t0" | bc) s"; tail -2 "$OUT/sweep-$dev.log"
  done
fi
if [[ $stages == *,paper,* ]]; then
  RANKSCOPE_CUDA_PROFILE=${PROFILE:-0} timeout ${PAPER_TIMEOUT:-300} ./build-gpu/bench/gpu --config $RUN_DIR/shared/configs/llama-2-7b --tokenizer $RUN_DIR/shared/data/llama2-tokenizer \
    --data-dir $RUN_DIR/shared/data --sections gemm,paper ${PAPER_ARGS:-} --json "$OUT/bench-paper.json" 2>&1 | tail -12
fi
