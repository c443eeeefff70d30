#!/usr/bin/env bash
# The seed-002 comparison at CPU scale: uniform, AlphaDecay and learnable multipliers, under AdamW and
# under Muon, three seeds each, paired by seed; then `alphaspec compare` per optimizer.
#   bash bench/optimizer_study.sh OUT [MODEL] [STEPS]
set -euo pipefail
out=${1:?usage: bench/optimizer_study.sh OUT [MODEL] [STEPS]}; model=${2:-tiny}; steps=${3:-300}
for optimizer in adamw muon; do
  for strategy in uniform alphadecay lrm; do
    for seed in 0 1 2; do
      run="$out/$optimizer-$strategy-$seed"
      [ -f "$run/model.safetensors" ] && [ -f "$run/metrics.csv" ] && grep -q "^$steps," "$run/metrics.csv" && continue
      alphaspec train --out "$run" --model "$model" --steps "$steps" --seed "$seed" --optimizer "$optimizer" \
        --strategy "$strategy" --gap 30 --eval-every 50 --analyze-every 100 -q
    done
  done
  alphaspec compare "$out/$optimizer"-* -o "$out/compare-$optimizer.csv" --plot "$out/compare-$optimizer.png"
done
