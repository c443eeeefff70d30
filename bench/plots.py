"""Time the model-level figures for a 13B-shaped results table (40 blocks x 7 matrices = 280 rows).

The table and spectra are synthetic (Marchenko–Pastur quantiles with a power-law tail spliced in),
which is all rendering needs:  python bench/plots.py [--format png|svg|pdf]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alphaspec.analysis.rows import COLUMNS, metrics_of
from alphaspec.plots.render import render_figures
from alphaspec.spectra.gaussian import mp_quantiles

SHAPES = {"att.q": (5120, 5120), "att.k": (5120, 5120), "att.v": (5120, 5120), "att.o": (5120, 5120),
          "mlp.gate": (13824, 5120), "mlp.up": (13824, 5120), "mlp.down": (5120, 13824)}
NAMES = {"att.q": "self_attn.q_proj", "att.k": "self_attn.k_proj", "att.v": "self_attn.v_proj",
         "att.o": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj"}


def synthetic(layers: int = 40) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    rows, spectra = [], {}
    base = {m: mp_quantiles(*s) for m, s in SHAPES.items()}
    for layer in range(layers):
        for module, (r, c) in SHAPES.items():
            lam = base[module].copy()
            k = len(lam) // 20
            lam[-k:] = lam[-k - 1] * (1 - rng.random(k)) ** (-1 / rng.uniform(1.5, 4))  # heavy tail
            lam = np.sort(lam) * rng.uniform(0.5, 2)
            name = f"model.layers.{layer}.{NAMES[module]}.weight"
            spectra[name] = lam
            row = {"name": name, "layer": layer, "module": module, "rows": r, "cols": c, "n_eigs": len(lam),
                   "estimator": "median", "expert": None, "tensor": name, "dtype": "bfloat16"}
            rows.append(row | metrics_of(torch.from_numpy(lam), "median"))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["layer"] = table["layer"].astype("Int64")
    return table, spectra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    table, spectra = synthetic()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = render_figures(table, spectra, Path(tmp), ["spectra", "alpha-modules", "alpha-depth"], args.format)
        t1 = time.perf_counter()
        render_figures(table, spectra, Path(tmp), ["esd"], args.format, ["model.layers.20.mlp.down_proj.weight"])
        t2 = time.perf_counter()
    print(f"{len(table)} matrices: spectra + alpha-modules + alpha-depth ({args.format}) in {t1 - t0:.1f} s "
          f"({len(paths)} files); one esd figure in {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
