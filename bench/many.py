"""What many checkpoints in one command cost against one command each: `alphaspec analyze A B ... -o T` beside N
separate `alphaspec analyze X -o T_i`, for a series of saved checkpoints.

    python bench/many.py [--checkpoints 10] [--repeat 1]

The series: a 21M-parameter LLaMA (hidden 512, 4 blocks, vocabulary 16000) saved N times, each a little
further from the first (a rank-one step per save), as safetensors directories. Both ways run with the
eigenvalue store off (--no-cache), so each solves every matrix. Prints the machine, the wall clock of both
ways and their ratio, and the peak memory of each (the largest single source's is the bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import memory  # bench/memory.py: a command's peak memory and time
import torch
from safetensors.torch import save_file

HIDDEN, LAYERS, VOCAB, FFN = 512, 4, 16000, 1376


def series(root: Path, n: int) -> list[Path]:
    g = torch.Generator().manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {p + f"self_attn.{k}_proj.weight": torch.randn(HIDDEN, HIDDEN, generator=g) for k in "qkvo"}
        tensors |= {p + "mlp.gate_proj.weight": torch.randn(FFN, HIDDEN, generator=g),
                    p + "mlp.up_proj.weight": torch.randn(FFN, HIDDEN, generator=g),
                    p + "mlp.down_proj.weight": torch.randn(HIDDEN, FFN, generator=g)}
    config = json.dumps({"model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN,
                         "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8,
                         "vocab_size": VOCAB})
    paths = []
    for step in range(n):
        folder = root / f"checkpoint-{(step + 1) * 100}"
        folder.mkdir()
        for t in tensors.values():
            t += 0.05 * torch.outer(torch.randn(t.shape[0], generator=g), torch.randn(t.shape[1], generator=g))
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(config)
        paths.append(folder)
    return paths


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident GB) of `alphaspec ARGS` in a child process of its own (bench/memory.py's)."""
    gigabytes, seconds = memory.run(args)
    return seconds, gigabytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = series(root, args.checkpoints)
        separate, peak_one_each = 0.0, 0.0
        for i, path in enumerate(paths):
            seconds, peak = run(["analyze", str(path), "-q", "--no-cache", "-o", str(root / f"t{i}.csv")])
            separate, peak_one_each = separate + seconds, max(peak_one_each, peak)
        one, peak_all = run(["analyze", *map(str, paths), "-q", "--no-cache", "-o", str(root / "all.csv")])
        print(f"  {args.checkpoints} checkpoints of {sum(f.stat().st_size for f in paths[0].iterdir()) / 1e6:.0f} MB")
        print(f"  {args.checkpoints} separate commands: {separate:.1f} s wall in all, peak {peak_one_each:.2f} GB")
        print(f"  one command, {args.checkpoints} sources: {one:.1f} s wall ({one / separate:.2f} of the separate "
              f"runs), peak {peak_all:.2f} GB")


if __name__ == "__main__":
    main()
