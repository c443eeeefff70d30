"""What `--precision fp32` costs in alpha, and what it saves in time, against the float64 default.

    python bench/precision.py                                  # the bundled real MiniLM-L6 checkpoint
    python bench/precision.py ./my-model --device cuda --estimators median gof

Analyses SOURCE twice per estimator (fp64, fp32) on one device and prints, per estimator, the median
and largest |alpha(fp32) - alpha(fp64)| over all matrices, how many matrices moved by more than
0.01, and both wall times (the second run of each, so file caches are warm).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from alphaspec import analyze_checkpoint
from alphaspec.devices import resolve_device
from alphaspec.sources.checkpoint import open_checkpoint

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)


def timed(source, ckpt, estimator: str, device, precision: str):
    analyze_checkpoint(source, estimator, device, checkpoint=ckpt, precision=precision)  # warm caches and kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    table = analyze_checkpoint(source, estimator, device, checkpoint=ckpt, precision=precision).table
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return table.set_index("name"), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default="example:minilm")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--estimators", nargs="+", default=["median", "gof", "fix-finger"])
    args = ap.parse_args()
    device = resolve_device(args.device)
    ckpt = open_checkpoint(args.source)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# {args.source}, {len(ckpt.tensors)} tensors; device {device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print("| estimator | matrices | median abs d-alpha | max abs d-alpha | moved > 0.01 | fp64 s | fp32 s |")
    print("|---|---|---|---|---|---|---|")
    for estimator in args.estimators:
        t64, s64 = timed(args.source, ckpt, estimator, device, "fp64")
        t32, s32 = timed(args.source, ckpt, estimator, device, "fp32")
        d = (t32["alpha"] - t64.loc[t32.index, "alpha"]).abs().dropna()
        print(f"| {estimator} | {len(d)} | {d.median():.1e} | {d.max():.1e} | {int((d > 0.01).sum())} "
              f"| {s64:.2f} | {s32:.2f} |")


if __name__ == "__main__":
    main()
