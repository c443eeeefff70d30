"""What the diagnoses cost, side by side in one run: analyze, analyze --randomize, diff A B, and the MP columns.

    python bench/diagnose.py [--hidden 1024] [--layers 8] [--repeats 3] [--json out.json]

Writes a LLaMA-shaped checkpoint (hidden x hidden attention, hidden x 2.75·hidden MLP, float32; Gaussian
entries, or with --entries student4 Student-t ones, whose large entries put correlation traps in most
matrices: the worst case for --randomize, which searches each trap's entries) and a copy with every
matrix perturbed, then times, each as a whole command in a fresh process
with the CLI's defaults (best of --repeats): `analyze A`, `analyze A --randomize`, `diff A B`. The
Marchenko–Pastur columns have no switch, so their share is measured in-process: the time of
`bulk.mp_bulk` over every spectrum of the analysis against the analysis itself. Goals:
--randomize <= 2.1x analyze, diff <= 2.1x analyze, MP columns <= 2 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)


def write_model(folder: Path, hidden: int, layers: int, seed: int, noise: float = 0.0, entries: str = "gaussian"
                ) -> Path:
    g = torch.Generator().manual_seed(0)
    ff = int(2.75 * hidden) // 64 * 64
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
              "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (ff, hidden), "mlp.up_proj": (ff, hidden), "mlp.down_proj": (hidden, ff)}
    t = torch.distributions.StudentT(torch.tensor(4.0))
    tensors = {}
    for i in range(layers):
        for name, shape in shapes.items():
            w = (t.sample(shape) if entries == "student4" else torch.randn(shape, generator=g)) * 0.02
            if noise:
                w = w + noise * torch.randn(shape, generator=g.manual_seed(seed + i))
            tensors[f"model.layers.{i}.{name}.weight"] = w.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden, "num_hidden_layers":
                                                    layers, "num_attention_heads": hidden // 64,
                                                    "intermediate_size": ff}))
    return folder


def timed(args: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "alphaspec", *args, "-q"], check=True, env=os.environ | {"COLUMNS": "120"})
        best = min(best, time.perf_counter() - started)
    return best


def mp_share(model: Path) -> tuple[float, float]:
    """(seconds of analyze, seconds of mp_bulk over its spectra) in this process."""
    import alphaspec.analysis.engine as analysis
    import alphaspec.analysis.rows as rows
    from alphaspec.spectra import mp_bulk as bulk

    spent = [0.0]
    real = bulk.mp_bulk

    def counted(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    rows.mp_bulk = counted
    started = time.perf_counter()
    analysis.analyze_checkpoint(model, device="cpu")
    total = time.perf_counter() - started
    rows.mp_bulk = real
    return total, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entries", choices=("gaussian", "student4"), default="gaussian")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="alphaspec-diagnose-"))
    try:
        a = write_model(root / "a", args.hidden, args.layers, seed=0, entries=args.entries)
        b = write_model(root / "b", args.hidden, args.layers, seed=1, noise=0.002, entries=args.entries)
        times = {"analyze": timed(["analyze", str(a)], args.repeats),
                 "analyze --randomize": timed(["analyze", str(a), "--randomize"], args.repeats),
                 "diff A B": timed(["diff", str(a), str(b)], args.repeats)}
        total, mp = mp_share(a)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base = times["analyze"]
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "hidden": args.hidden, "layers": args.layers, "entries": args.entries,
              "seconds": times,
              "ratio": {k: v / base for k, v in times.items()}, "mp_columns_share": mp / total}
    for name, seconds in times.items():
        print(f"{name:22s} {seconds:7.2f} s  {seconds / base:5.2f}x")
    print(f"MP columns: {mp:.3f} s of {total:.2f} s in-process ({100 * mp / total:.2f} %)")
    print(f"{result['machine']}, torch {torch.__version__}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
