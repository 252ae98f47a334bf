#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite; then rebuilds the tests of everything that parses
# untrusted files (checkpoints, formats, tokenizers, task files, results databases)
# with AddressSanitizer + UndefinedBehaviorSanitizer and runs them again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRANKSCOPE_SANITIZE=ON
cmake --build build-asan -j"$(nproc)" --target test_loader test_formats test_tokenizers test_tasks test_db
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$(nproc)" -R '^(test_loader|test_formats|test_tokenizers|test_tasks|test_db):'
