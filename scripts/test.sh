#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite twice (as the machine comes, then with OpenBLAS
# forced to its Haswell kernels: tolerances must hold for any kernel); then rebuilds the tests of
# everything that parses untrusted files (checkpoints, formats, tokenizers, task files, results
# databases) and the fuzzers with AddressSanitizer + UndefinedBehaviorSanitizer and runs them again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"

# Debian's OpenBLAS picks its kernels at run time (DYNAMIC_ARCH); check that the variable is
# honoured here, then run everything but the fuzzers (no BLAS in them) again.
# (The output is read whole first: `| grep -q` under pipefail fails when grep exits before the writer.)
coretype=$(OPENBLAS_VERBOSE=2 OPENBLAS_CORETYPE=Haswell build/tests/test_linalg --list-tests 2>&1 || true)
if grep -q 'Core: Haswell' <<< "$coretype"; then
  echo "test.sh: second pass with OPENBLAS_CORETYPE=Haswell"
else
  echo "test.sh: warning: OPENBLAS_CORETYPE=Haswell is not honoured on this machine; the second pass runs its default kernels"
fi
OPENBLAS_CORETYPE=Haswell ctest --test-dir build --output-on-failure -j"$(nproc)" -LE fuzz

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRANKSCOPE_SANITIZE=ON
cmake --build build-asan -j"$(nproc)" --target test_loader test_formats test_tokenizers test_tasks test_db rankscope_fuzz
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -R '^(test_loader|test_formats|test_tokenizers|test_tasks|test_db):'
RANKSCOPE_FUZZ_CASES=1500 ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -L fuzz
