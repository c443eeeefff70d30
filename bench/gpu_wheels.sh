#!/usr/bin/env bash
# Wheels a GPU machine without network needs for bench/gpu.sh, fetched here into .whl/ (ignored by git; carry it):
# alphaspec built from this checkout, gguf (the GGUF CUDA tests) and WeightWatcher 0.7.7 with powerlaw (the ww
# part), under 1 MB together. The MiniLM example (83 MB) would pass the 64 MiB a device call carries, so the
# scale part measures fp32 on a written checkpoint instead. The GPU image already has torch, numpy, pandas,
# safetensors, huggingface_hub, typer, rich, matplotlib, tokenizers, scikit-learn, pyyaml, tqdm and mpmath.
#   bash bench/gpu_wheels.sh        then, in the device call: carry [".whl"] and run bash bench/gpu.sh PART
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/alphaspec-*.whl
python3 -m pip wheel -q --no-deps -w .whl .
rm -rf build alphaspec.egg-info
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
  "gguf>=0.16" weightwatcher==0.7.7 "powerlaw>=1.5"
du -sh .whl && ls .whl
