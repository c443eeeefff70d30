#!/usr/bin/env bash
# The GPU checks and benchmarks, run on a machine with an NVIDIA GPU (see docs/benchmarks.md).
#   part 1 (one device call):  bash bench/gpu.sh tests-decay  (carry gguf's wheel in .whl/ for the GGUF tests)
#   part 2 (one device call):  bash bench/gpu.sh esd          (13B-shaped, 40 blocks; ~8 min)
#   part 3 (one device call):  bash bench/gpu.sh ww           (needs WeightWatcher wheels carried in .whl/)
#   part 4 (one device call):  bash bench/gpu.sh train        (trainer throughput per strategy, 60M and 130M)
#   part 5 (one device call):  bash bench/gpu.sh scale        (405B estimate, fp32 error, torchrun on the GPU)
#   part 6 (one device call):  bash bench/gpu.sh study        (the AlphaDecay study; carry bench/out/study-tokens.tar.xz)
# Logs and JSON go to $OUT (the device tool brings them back), else bench/out.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out="${OUT:-bench/out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# wheels carried in .whl/ (WeightWatcher's, gguf's) go on the path; everything else is on the image
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
  && export PYTHONPATH="$PYTHONPATH:/tmp/site"; fi
case "${1:-}" in
  tests-decay)
    python3 -m pytest -q -m gpu tests/test_cuda.py 2>&1 | tee "$out/gpu-tests.log"
    python3 bench/decay.py --device cuda --batch 64 --seq 256 --steps 20 2>&1 | tee "$out/decay.log" ;;
  esd)
    python3 bench/esd.py --model 13b --blocks 40 --estimators median,gof --workers 1,2,4 \
      --json "$out/esd-13b.json" 2>&1 | tee "$out/esd-13b.log" ;;
  ww)
    python3 bench/esd.py --model 13b --blocks 1 --estimators median --ww --ww-cpu \
      --json "$out/esd-13b-ww.json" 2>&1 | tee "$out/esd-13b-ww.log" ;;
  train)
    python3 bench/train.py --model llama-60m --seq-len 256 --batch-size 256 --steps 60 --gap 20 --compile \
      --json "$out/train-60m.json" 2>&1 | tee "$out/train-60m.log"
    python3 bench/train.py --model llama-130m --seq-len 256 --batch-size 256 --steps 60 --gap 20 --compile \
      --strategies uniform,alphadecay --json "$out/train-130m.json" 2>&1 | tee "$out/train-130m.log" ;;
  scale)
    python3 bench/esd.py --estimate 405b --gpus 8 16 64 --json "$out/esd-405b.json" 2>&1 | tee "$out/esd-405b.log"
    python3 bench/precision.py --device cuda 2>&1 | tee "$out/precision.log"
    ckpt=$(python3 -c "import sys; sys.path.insert(0, 'bench'); from esd import write_checkpoint; \
print(write_checkpoint('13b', 4, 2))" | tail -1)
    python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m alphaspec analyze "$ckpt" \
      -o "$out/torchrun.csv" 2>&1 | tee "$out/torchrun.log" ;;
  study)  # the token cache travels as bench/out/study-tokens.tar.xz (see docs/benchmarks.md, "The AlphaDecay study")
    python3 -c "import tarfile; tarfile.open('bench/out/study-tokens.tar.xz').extractall('bench/out', filter='data')"
    bash bench/decay_study.sh bench/out/study bench/out/study-tokens "${MODEL:-llama-20m}" "${STEPS:-2000}" \
      "${JOBS:-3}" 2>&1 | tee "$out/study.log"
    cp bench/out/study/compare-* "$out/"
    tar -czf "$out/study-runs.tar.gz" bench/out/study/*/metrics.csv bench/out/study/*/decay.csv \
      bench/out/study/*/run.json ;;
  *) echo "usage: bash bench/gpu.sh tests-decay|esd|ww|train|scale|study" >&2; exit 2 ;;
esac
