"""Draw the figures shown in docs/plots.md (docs/img/*.png) from the bundled MiniLM checkpoint and three short
tiny-LLaMA runs on the bundled text. Takes about two minutes on a laptop CPU.

    python bench/docs_figures.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from alphaspec import analyze_checkpoint, build_decay_map
from alphaspec.plots.diff import diff_figure
from alphaspec.plots.maps import decay_figure
from alphaspec.plots.spectra import alpha_depth_figure, alpha_modules_figure, esd_figure, spectra_figure
from alphaspec.plots.style import save_figure
from alphaspec.plots.training import alphas_figure, compare_figure
from alphaspec.train import TrainConfig, train
from alphaspec.train.compare import compare

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)
DPI = 110


def lora_tuned_diff(tmp: Path):
    """MiniLM against a copy "fine-tuned" by a rank-8 update of every query and value matrix (as a merged
    LoRA would be), larger in the last layers: the table `alphaspec diff` gives for the pair."""
    from safetensors.torch import load_file, save_file

    from alphaspec.analysis.diff import diff_checkpoints
    from alphaspec.sources.checkpoint import example_path

    tensors = load_file(str(example_path("minilm") / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for layer in range(6):
        for part in ("query", "value"):
            name = f"encoder.layer.{layer}.attention.self.{part}.weight"
            w = tensors[name]
            b, a = torch.randn(w.shape[0], 8, generator=g), torch.randn(8, w.shape[1], generator=g)
            update = b @ a
            tensors[name] = w + (0.02 + 0.04 * layer) * w.norm() * update / update.norm()
    (tmp / "tuned").mkdir()
    save_file(tensors, str(tmp / "tuned" / "model.safetensors"))
    (tmp / "tuned" / "config.json").write_text((example_path("minilm") / "config.json").read_text())
    return diff_checkpoints(["example:minilm", tmp / "tuned"]).table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = analyze_checkpoint("example:minilm", keep_spectra=True)
    table, spectra = result.table, result.spectra
    figures = {"spectra": spectra_figure(table, spectra, title="MiniLM-L6"), "alpha-modules": alpha_modules_figure(table),
               "alpha-depth": alpha_depth_figure(table),
               "esd": esd_figure("encoder.layer.5.output.dense.weight", spectra["encoder.layer.5.output.dense.weight"]),
               "decay": decay_figure(build_decay_map(table, 0.1))}
    with tempfile.TemporaryDirectory() as tmp:
        figures["diff"] = diff_figure(lora_tuned_diff(Path(tmp)))
        runs = []
        for strategy in ("uniform", "alphadecay", "awd"):
            out = Path(tmp) / strategy
            train(TrainConfig.of(out=str(out), strategy=strategy, steps=300, eval_every=50, analyze_every=50))
            runs.append(out)
        figures["training"] = alphas_figure(pd.read_csv(runs[1] / "alphas.csv"), "median")
        figures["compare"] = compare_figure(compare(runs))
    for name, fig in figures.items():
        fig.set_dpi(DPI)
        print(f"wrote {save_figure(fig, args.out / f'{name}.png')}")
    print(f"{time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
