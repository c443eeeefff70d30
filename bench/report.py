"""`alphaspec report`: the time and size of a page for a 13B-shaped results table, and the example pages.

    python bench/report.py [--examples docs/examples] [--screenshot docs/img/report.png]

Times `report.render` on a 280-row table with Llama-2-13B's shapes (40 blocks x 7 matrices, no spectra),
best of three, and prints the page's size. With --examples it also writes the example pages of the docs:
MiniLM (the bundled checkpoint, analysed now) and a comparison of four short tiny-LLaMA runs (uniform and
AlphaDecay, two seeds each, on the bundled text), and with --screenshot takes the README's picture of
the MiniLM page in headless Chromium at 1280 px.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from alphaspec.report import render, write

SHAPES = {"att.q": (5120, 5120), "att.k": (5120, 5120), "att.v": (5120, 5120), "att.o": (5120, 5120),
          "mlp.gate": (13824, 5120), "mlp.up": (13824, 5120), "mlp.down": (5120, 13824)}


def table_13b(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = [{"name": f"model.layers.{layer}.{module}.weight", "layer": layer, "module": module, "rows": r, "cols": c,
             "n_eigs": min(r, c), "n_zero": 0, "estimator": "median", "alpha": 2.0 + rng.random() * 2,
             "xmin": 1.0, "ks_d": 0.05, "n_tail": min(r, c) // 2, "status": "ok"}
            for layer in range(40) for module, (r, c) in SHAPES.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def examples(out: Path) -> list[Path]:
    from alphaspec.train import TrainConfig, train

    out.mkdir(parents=True, exist_ok=True)
    pages = [write(render(["example:minilm"], title="MiniLM-L6 (example:minilm)"), out / "report-minilm.html")]
    page = (out / "report-compare.html").resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the runs are named as a user names them: runs/uniform-0, not a temporary path
        try:
            runs = []
            for strategy in ("uniform", "alphadecay"):
                for seed in (0, 1):
                    run = Path("runs") / f"{strategy}-{seed}"
                    train(TrainConfig.of(out=str(run), strategy=strategy, seed=seed, steps=120, eval_every=40,
                                         warmup_steps=10, gap=40))
                    runs.append(run)
            pages.append(write(render(runs, title="tiny LLaMA, uniform vs AlphaDecay, 2 seeds each"), page))
        finally:
            os.chdir(here)
    return pages


def screenshot(page: Path, png: Path) -> None:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tempfile.mkdtemp()}",
                    "--window-size=1280,1100", "--hide-scrollbars", f"--screenshot={png}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=Path)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = table_13b(Path(tmp) / "r13b.csv")
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            html = render([table])
            best = min(best, time.perf_counter() - started)
    print(f"13B-shaped table (280 matrices, no spectra): {best:.2f} s, {len(html.encode()) / 1e6:.2f} MB")
    if args.examples:
        for page in examples(args.examples):
            print(f"wrote {page} ({page.stat().st_size / 1e6:.2f} MB)")
        if args.screenshot:
            screenshot(args.examples / "report-minilm.html", args.screenshot)
            print(f"wrote {args.screenshot}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
