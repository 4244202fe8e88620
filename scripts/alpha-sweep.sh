#!/usr/bin/env bash
# The α sweep: train one FlexiDepth adapter per α with configs/smollm2-sweep.toml, then measure each against full
# depth on held-out text (Persuasion, never in the training data) and write the table and figure.
#   scripts/alpha-sweep.sh [alpha ...]        (default: 1e-4 1e-3 3e-3 1e-2)
# Environment: JOBS=2 runs two trainings at once with one thread each (default), FD=path to the binary.
# Outputs: runs/sweep/a<α>/ (depth.safetensors, log.csv, curves.svg, quality.json) and runs/sweep/sweep.{md,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
FD=${FD:-target/release/flexidepth}
JOBS=${JOBS:-2}
alphas=("$@")
[ ${#alphas[@]} -gt 0 ] || alphas=(1e-4 1e-3 3e-3 1e-2)
[ -x "$FD" ] || cargo build --release --bin flexidepth
if [ ! -f runs/data/train.jsonl ]; then
  scripts/fetch-data.sh
  "$FD" data -o runs/data/train.jsonl
fi
threads=$(( $(nproc) / JOBS )); [ "$threads" -ge 1 ] || threads=1

one() { # alpha
  local dir="runs/sweep/a$1"
  if [ -f "$dir/checkpoint.safetensors" ] && [ ! -f "$dir/depth.safetensors" ]; then
    "$FD" -t "$threads" train --resume --out "$dir"
  elif [ ! -f "$dir/depth.safetensors" ]; then
    "$FD" -t "$threads" train --config configs/smollm2-sweep.toml --alpha "$1" --out "$dir"
  fi
  "$FD" -t "$threads" perplexity --depth "$dir/depth.safetensors" --compare-full --heldout --json "$dir/quality.json"
}

running=0
for a in "${alphas[@]}"; do
  one "$a" > "runs/sweep-a$a.log" 2>&1 &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait
"$FD" sweep-report -o runs/sweep runs/sweep/a*
