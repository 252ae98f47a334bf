#!/usr/bin/env bash
# Builds rankscope with the CUDA backend and runs the GPU tests (tests/test_gpu.cpp) and the
# forward-pass tests on a machine with an NVIDIA GPU and a CUDA 12+ toolkit:
#   bash scripts/test-gpu.sh [BUILD_DIR (default build-gpu)] [extra cmake options...]
# Fails when no GPU is visible (the GPU cases would only skip).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}; shift $(( $# >= 1 ? 1 : 0 ))
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DRANKSCOPE_CUDA=ON -DRANKSCOPE_BUILD_BENCH=ON "$@" > "$build.configure-gpu.log" 2>&1 \
  || { tail -30 "$build.configure-gpu.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" --target rankscope test_gpu test_forward gpu > "$build.build-gpu.log" 2>&1 \
  || { grep -B3 -A12 -m3 "error" "$build.build-gpu.log" | head -60; exit 1; }
nvidia-smi -L || { echo "test-gpu: no NVIDIA GPU visible"; exit 1; }
cd "$build"
log=$(mktemp)
status=0
OMP_WAIT_POLICY=PASSIVE ctest -R "test_gpu|test_forward" --output-on-failure -j2 --timeout 900 | tee "$log" || status=$?
if grep -q "test_gpu.*Skipped" "$log"; then
  echo "test-gpu: GPU tests were skipped (no GPU visible to them?)"
  status=1
fi
rm -f "$log"
exit $status
