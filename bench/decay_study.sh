#!/usr/bin/env bash
# The AlphaDecay study: uniform vs AlphaDecay as published vs AlphaDecay mean-preserving vs AWD vs AdaDecay,
# at two base decays, several seeds each, paired by seed; then `alphaspec compare` per base decay.
#   bash bench/decay_study.sh OUT DATA [MODEL] [STEPS] [JOBS] [SEEDS] [DECAYS]
# DATA: a token cache (alphaspec tokenize) or raw text. JOBS runs train side by side (small models leave a
# GPU mostly idle, so several fit on one). A finished run is skipped, so the script can be re-run to resume.
# Defaults: llama-20m, 2000 steps of BATCH x SEQ = 64 x 256 tokens (environment variables), 3 jobs,
# seeds "0 1 2", decays "0.1 0.01", the five decay arms (ARMS="uniform awd" runs some; tempbalance and llr, the
# learning-rate arms, on request), GAP=500 between refreshes, and
# EXTRA="--lr 3e-3 ..." added to every train command. Each run's stderr goes to OUT/RUN.log.
set -euo pipefail
out=${1:?usage: bench/decay_study.sh OUT DATA [MODEL] [STEPS] [JOBS] [SEEDS] [DECAYS]}
data=${2:?usage: bench/decay_study.sh OUT DATA [MODEL] [STEPS] [JOBS] [SEEDS] [DECAYS]}
model=${3:-llama-20m}; steps=${4:-2000}; jobs=${5:-3}; seeds=${6:-0 1 2}; decays=${7:-0.1 0.01}
batch=${BATCH:-64}; seq=${SEQ:-256}; gap=${GAP:-500}; extra=${EXTRA:-}
mkdir -p "$out"
declare -A arms=(
  [uniform]="--strategy uniform"
  [alphadecay]="--strategy alphadecay --gap $gap"
  [alphadecay-mean]="--strategy alphadecay --gap $gap --preserve-mean params"
  [awd]="--strategy awd"
  [adadecay]="--strategy adadecay --gap $gap"
  [tempbalance]="--strategy tempbalance --gap $gap"
  [llr]="--strategy llr --gap $gap"
)
for w in $decays; do
  for arm in ${ARMS:-uniform alphadecay alphadecay-mean awd adadecay}; do
    for seed in $seeds; do
      run="$out/w$w-$arm-$seed"
      [ -f "$run/metrics.csv" ] && grep -q "^$steps," "$run/metrics.csv" && [ -f "$run/model.safetensors" ] && continue
      rm -rf "$run"
      echo "alphaspec train --out $run --data $data --model $model --steps $steps --seed $seed --weight-decay $w" \
           "${arms[$arm]} --batch-size $batch --seq-len $seq --eval-every $(( steps >= 10 ? steps / 10 : 1 ))" \
           "--analyze-every $(( steps >= 2 ? steps / 2 : 1 )) $extra -q 2> $run.log"
    done
  done
done | xargs -P "$jobs" -I{} sh -c '{}'
for w in $decays; do
  alphaspec compare "$out/w$w"-*/ -o "$out/compare-w$w.csv" --plot "$out/compare-w$w.png"
done
