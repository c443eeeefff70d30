#!/usr/bin/env bash
# The GPU checks and benchmarks, one part per device call (docs/benchmarks.md, "GPU runbook", has each
# part's estimated time and the order to run them in):
#   bash bench/gpu.sh tests-decay   the CUDA tests, then the AlphaDecay refresh cost (bench/decay.py)
#   bash bench/gpu.sh esd           13B-shaped checkpoint (40 blocks): analyze -e median, bare eigvalsh on 8 blocks
#   bash bench/gpu.sh esd-more      the same checkpoint: -e gof, --workers 2 and 4
#   bash bench/gpu.sh ww            WeightWatcher 0.7.7 beside alphaspec (its wheels carried in .whl/)
#   bash bench/gpu.sh train         trainer throughput and MFU per strategy, llama-60m, compiled
#   bash bench/gpu.sh train-130m    the same for llama-130m, uniform and alphadecay
#   bash bench/gpu.sh scale         the 405B estimate, fp32 against fp64, a 2-rank torchrun analyze
#   bash bench/gpu.sh study         the AlphaDecay study at w = 0.1 (DECAYS=0.01 for the second call; a re-run
#                                   resumes: finished runs are kept) (carry bench/out/study-tokens.tar.xz)
# Rehearsal: GPU_SH_DEVICE=cpu bash bench/gpu.sh PART runs the same commands at toy sizes on the CPU.
# It installs alphaspec itself (pip --no-deps, over whatever torch the machine has) and the wheels in
# .whl/ (bash bench/gpu_wheels.sh fetches them where there is network) into a private folder. Logs and
# JSON go to $OUT (the device tool brings them back), else bench/out/gpu, each written as it is measured.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export ALPHASPEC_NO_CACHE=1  # every part measures solving: the eigenvalue store stays off
part="${1:-}"
case "$part" in tests-decay|esd|esd-more|ww|train|train-130m|scale|study) ;;
  *) echo "usage: [GPU_SH_DEVICE=cpu] bash bench/gpu.sh tests-decay|esd|esd-more|ww|train|train-130m|scale|study" >&2
     exit 2 ;;
esac
device="${GPU_SH_DEVICE:-cuda}"
out="${OUT:-bench/out/gpu}"
mkdir -p "$out"
toy() { [ "$device" = cpu ]; }  # the rehearsal: toy sizes

# -- alphaspec and the carried wheels, in a folder of their own (GPU_SH_SITE reuses one between parts) --
site="${GPU_SH_SITE:-$(mktemp -d /tmp/alphaspec-site.XXXXXX)}"
if [ ! -x "$site/bin/alphaspec" ]; then
  wheels=$(ls .whl/*.whl 2>/dev/null | grep -v '/alphaspec-' || true)
  src=$(ls .whl/alphaspec-*.whl 2>/dev/null | head -1); src="${src:-.}"  # a built wheel, else this checkout
  python3 -m pip install -q --no-deps --no-index --no-build-isolation --no-compile --target "$site" "$src" $wheels \
    || { echo "gpu.sh: could not install alphaspec from $src" >&2; exit 1; }
  rm -rf build alphaspec.egg-info  # what building the checkout left behind
fi
export PYTHONPATH="$site" PATH="$site/bin:$PATH"
{ date -u; python3 -c "import alphaspec, torch; print('alphaspec', alphaspec.__version__, 'from', alphaspec.__file__, \
'| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
  if toy; then echo "rehearsal on the CPU (GPU_SH_DEVICE=cpu): toy sizes"
  else nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi; } | tee "$out/machine.txt"

run() {  # run NAME CMD...: the command's output to the screen and $out/NAME.log; its status kept
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "gpu.sh: $name failed (exit $rc)" | tee -a "$out/failed.txt"; status=1; }
}
status=0
if toy; then model=tiny blocks=4 bare=2; else model=13b blocks=40 bare=8; fi

case "$part" in
  tests-decay)
    run gpu-tests python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda.py
    if toy; then run decay python3 bench/decay.py --device cpu --model tiny --batch 1 --seq 16 --steps 1
    else run decay python3 bench/decay.py --device cuda --batch 64 --seq 256 --steps 20; fi ;;
  esd)
    run esd python3 bench/esd.py --model $model --blocks $blocks --device "$device" --estimators median --workers 1 \
      --bare-blocks $bare --json "$out/esd.json" ;;
  esd-more)
    run esd-more python3 bench/esd.py --model $model --blocks $blocks --device "$device" --estimators gof \
      --workers 2,4 --bare-blocks 0 --json "$out/esd-more.json" ;;
  ww)
    if ! python3 -c "import weightwatcher" 2>/dev/null; then
      echo "gpu.sh ww: skipped, weightwatcher is not installed (carry its wheels: bash bench/gpu_wheels.sh)" \
        | tee "$out/ww.log"
    else
      run ww python3 bench/esd.py --model $model --blocks 1 --device "$device" --estimators "" --bare-blocks 0 --ww \
        --ww-cpu --json "$out/ww.json"
    fi ;;
  train)
    if toy; then size=(--model tiny --seq-len 32 --batch-size 4 --steps 4 --gap 2 --strategies uniform,alphadecay,lrm)
    else size=(--model llama-60m --seq-len 256 --batch-size 256 --steps 60 --gap 20 --compile); fi
    run train python3 bench/train.py "${size[@]}" --device "$device" --json "$out/train.json" ;;
  train-130m)
    if toy; then size=(--model tiny --seq-len 32 --batch-size 4 --steps 4 --gap 2)
    else size=(--model llama-130m --seq-len 256 --batch-size 256 --steps 60 --gap 20 --compile); fi
    run train-130m python3 bench/train.py "${size[@]}" --strategies uniform,alphadecay --device "$device" \
      --json "$out/train-130m.json" ;;
  scale)
    if toy; then shrink=(--shrink 64 --bandwidth-gb 0.05 --precisions fp64 fp32); else shrink=(); fi
    run esd-405b python3 bench/esd.py --estimate 405b --device "$device" --gpus 8 16 64 "${shrink[@]}" \
      --json "$out/esd-405b.json"
    ckpt=$(python3 -c "import sys; sys.path.insert(0, 'bench'); from esd import write_checkpoint; \
print(write_checkpoint('$model', 4, 2))" | tail -1)
    run precision python3 bench/precision.py "$ckpt" --device "$device"
    if python3 -c "from alphaspec.sources.checkpoint import open_checkpoint; open_checkpoint('example:minilm')" 2>/dev/null; then
      run precision-minilm python3 bench/precision.py example:minilm --device "$device"  # a trained model's tails
    fi
    run torchrun python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m alphaspec analyze "$ckpt" \
      --device "$device" -o "$out/torchrun.csv" ;;
  study)  # the token cache travels as bench/out/study-tokens.tar.xz (see docs/benchmarks.md, "The AlphaDecay study")
    study=bench/out/study
    if toy; then
      rm -rf "$study" bench/out/study-toy-tokens
      alphaspec tokenize alphaspec/train/corpus/*.txt -o bench/out/study-toy-tokens --vocab-size 512 -q || status=1
      tokens=bench/out/study-toy-tokens
      export BATCH=4 SEQ=32 ARMS="uniform alphadecay"  # two of the five arms: the same commands, a third of the time
      run study bash bench/decay_study.sh "$study" "$tokens" tiny 4 2 "0" "0.1"
    else
      python3 -c "import tarfile; tarfile.open('bench/out/study-tokens.tar.xz').extractall('bench/out', filter='data')"
      run study bash bench/decay_study.sh "$study" bench/out/study-tokens "${MODEL:-llama-20m}" "${STEPS:-2000}" \
        "${JOBS:-3}" "${SEEDS:-0 1 2}" "${DECAYS:-0.1}"
    fi
    cp "$study"/compare-*.csv "$out/" 2>/dev/null  # at most 8 files come back from a device call: the rest in one tar
    tar -czf "$out/study-runs.tar.gz" "$study"/compare-* "$study"/*/metrics.csv "$study"/*/decay.csv \
      "$study"/*/run.json ;;
esac
[ -n "${GPU_SH_SITE:-}" ] || rm -rf "$site"
exit $status
