#!/usr/bin/env bash
# Installs the Debian packages rankscope needs (only those missing: fast when all are there),
# then configures a Release build in build/ and builds it. Nothing is downloaded from elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake pkg-config
  libeigen3-dev               # linear algebra (activations, SVD in tests)
  libopenblas-openmp-dev      # SGEMM, OpenMP build (see CMakeLists.txt)
  libxxhash-dev               # content hashes of tensors (factor cache keys)
  libsentencepiece-dev        # Llama 2 tokenizer.model
  libutf8proc-dev             # Unicode normalisation and categories (BERT basic tokenizer)
  libpcre2-dev                # tokenizer.json regular expressions (byte-level BPE: Llama 3, Qwen, GPT-2)
  nlohmann-json3-dev          # config.json, tokenizer.json, safetensors headers
  libboost-program-options-dev
  libfmt-dev
  catch2                      # tests (Catch2 v2)
  libsqlite3-dev              # results store
  libpq-dev                   # PostgreSQL results store (client library)
  postgresql-15               # a throwaway server for the PostgreSQL tests (initdb, pg_ctl)
  slurmctld slurmd munge      # a private single-node Slurm for the job-array test
  libbz2-dev                  # llama.cpp's HellaSwag text ships as .bz2
  python3                     # bench/scaleout.sh (and its test) reads the exported studies
  chromium                    # tests/test_report.cpp opens report's index.html headless and checks its DOM
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build build -j"$(nproc)"
