#!/usr/bin/env bash
# Sets up, builds and runs the main job on the small default model (stories260K-hf in ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=../shared/data/stories260K-hf
if [ ! -d "$model" ]; then
  echo "quickstart: $model not found: put the shared data folder beside the repository" >&2
  exit 1
fi
./build/rankscope info "$model"
echo
./build/rankscope generate "$model" --tokens 64
