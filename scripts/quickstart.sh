#!/usr/bin/env bash
# Sets up, builds and runs the main job on the small default model: the quickstart study
# (experiments/quickstart.ini: NSGA-II over a rank per matrix of stories260K-hf, TinyStories
# perplexity against parameters, about two minutes on 2 cores), then prints its Pareto front and
# writes a report. Rerunning continues the study (nothing is evaluated twice).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model=../shared/data/stories260K-hf
if [ ! -d "$model" ]; then
  echo "quickstart: $model not found: put the shared data folder beside the repository" >&2
  exit 1
fi
./build/rankscope sweep experiments/quickstart.ini
echo
./build/rankscope pareto --db results/quickstart.db --study quickstart \
  --objectives tinystories.ppl:min,size.params:min
echo
./build/rankscope report --db results/quickstart.db --study quickstart --out results/quickstart-report
