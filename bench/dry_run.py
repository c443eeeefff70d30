"""How long `alphaspec analyze SOURCE --dry-run` takes, and how its estimate compares with the analysis.

    python bench/dry_run.py [--layers 40]

Sources: the bundled MiniLM (its estimate checked against a real analysis, `--no-cache`), and a checkpoint
with Llama-2-13B's shapes (40 layers, hidden 5120, MLP 13824, vocabulary 32000; 26 GB of bfloat16) written as
sparse files: real safetensors headers over holes, so nothing but the headers is on disk and a dry run is all
that can be done with it. Prints the machine, then per source the wall clock of the whole command, and the
estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, FFN, VOCAB, SHARD_LAYERS = 5120, 13824, 32000, 10


def sparse_llama(folder: Path, layers: int) -> Path:
    """A Llama-2-13B-shaped checkpoint: shards of safetensors headers whose data are holes."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + f"self_attn.{n}_proj.weight": (HIDDEN, HIDDEN) for n in "qkvo"}
        shapes |= {p + "mlp.gate_proj.weight": (FFN, HIDDEN), p + "mlp.up_proj.weight": (FFN, HIDDEN),
                   p + "mlp.down_proj.weight": (HIDDEN, FFN), p + "input_layernorm.weight": (HIDDEN,),
                   p + "post_attention_layernorm.weight": (HIDDEN,)}
    names = list(shapes)
    shards = [names[k:k + 9 * SHARD_LAYERS] for k in range(0, len(names), 9 * SHARD_LAYERS)]
    index = {"metadata": {}, "weight_map": {}}
    for j, part in enumerate(shards):
        file = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for name in part:
            size = 2 * int(torch.Size(shapes[name]).numel())
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
            offset += size
            index["weight_map"][name] = file
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / file, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + offset)  # a hole: no data blocks on disk
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": layers,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": VOCAB}))
    return folder


def timed(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "alphaspec", *args], capture_output=True, text=True,
                          env=os.environ | {"COLUMNS": "200"})
    if proc.returncode:
        sys.exit(proc.stderr)
    return time.perf_counter() - start, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=40)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        llama = sparse_llama(Path(tmp) / "llama-13b-shaped", args.layers)
        on_disk = sum(os.stat(f).st_blocks * 512 for f in llama.iterdir())
        size = sum(f.stat().st_size for f in llama.iterdir())
        for name, source in (("example:minilm", "example:minilm"), (f"13B-shaped ({size / 1e9:.1f} GB, "
                             f"{on_disk / 1e6:.1f} MB on disk)", str(llama))):
            seconds, text = timed("analyze", source, "--dry-run")
            estimate = next(line for line in text.splitlines() if line.startswith("estimate"))
            print(f"  {name}: --dry-run {seconds:.2f} s wall; {estimate}")
        seconds, _ = timed("analyze", "example:minilm", "-q", "--no-cache")
        print(f"  example:minilm analysed for real: {seconds:.2f} s wall (with ~2 s of start-up)")


if __name__ == "__main__":
    main()
