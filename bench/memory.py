"""Peak memory and time of the inputs whose size once broke the promise of bounded memory.

    python bench/memory.py [--checkpoints 8 16] [--rows 40000] [--dir DIR]

Each case runs the CLI as a user does, in a child process; its peak resident memory is the child's
ru_maxrss. The cases:

  adapter  a 5 MB LoRA adapter (lora_A 16×40000, lora_B 40000×16): its 40000×40000 update is solved from
           the r×r core, never formed (the dense float64 update alone would take 12.8 GB)
  diff RUN a training run's checkpoints (a 21M-parameter LLaMA with learnable multipliers, 84 MB each),
           compared pair by pair: memory should not grow with the number of checkpoints
  report   a results table of --rows rows (MiniLM's 40 matrices under 1,000 names) as one HTML page

Prints the machine, then one line per case: peak memory, wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)

HIDDEN, LAYERS, VOCAB, FFN = 512, 4, 16000, 1376


def run(args: list[str]) -> tuple[float, float]:
    """(peak resident memory in GB, wall seconds) of `alphaspec ARGS` in a child process."""
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
              "sys.stderr.write(p.stderr[-2000:] if p.returncode else '')")
    proc = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "alphaspec", *args],
                          capture_output=True, text=True)
    code, seconds, kb = proc.stdout.split()
    if code != "0":
        raise SystemExit(f"alphaspec {' '.join(args)} failed:\n{proc.stderr}")
    return int(kb) / 1e6, float(seconds)


def make_adapter(root: Path) -> Path:
    folder = root / "adapter"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    save_file({"base_model.model.layers.0.mlp.up_proj.lora_A.weight": torch.randn(16, 40000, generator=g),
               "base_model.model.layers.0.mlp.up_proj.lora_B.weight": torch.randn(40000, 16, generator=g)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 16}))
    return folder


def llama_state(seed: int) -> dict[str, torch.Tensor]:
    """A LLaMA state dict as the trainer saves it, with row multipliers on every block matrix."""
    g = torch.Generator().manual_seed(seed)
    state = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
             "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02}
    shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
              "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
    for layer in range(LAYERS):
        for name, shape in shapes.items():
            prefix = f"model.layers.{layer}.{name}"
            state[f"{prefix}.weight"] = torch.randn(*shape, generator=g) * 0.02
            state[f"{prefix}.row_mult"] = 1 + 0.1 * torch.randn(shape[0], generator=g)
    return state


def make_run(root: Path, count: int) -> Path:
    run = root / f"run{count}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN, "num_hidden_layers":
                                                 LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8,
                                                 "intermediate_size": FFN, "vocab_size": VOCAB,
                                                 "tie_word_embeddings": False}))
    for step in range(count):
        torch.save({"model": llama_state(step)}, run / "checkpoints" / f"step_{(step + 1) * 100:07d}.pt")
    return run


def make_table(root: Path, rows: int) -> Path:
    import pandas as pd

    small = root / "minilm.csv"
    subprocess.run([sys.executable, "-m", "alphaspec", "analyze", "example:minilm", "-q", "-o", str(small)], check=True)
    one = pd.read_csv(small)
    copies = []
    for i in range(-(-rows // len(one))):
        part = one.copy()
        part["name"] = f"copy{i}." + part["name"]
        copies.append(part)
    big = root / f"table{rows}.csv"
    pd.concat(copies, ignore_index=True).head(rows).to_csv(big, index=False)
    return big


def line(case: str, gb: float, seconds: float) -> None:
    print(f"{case:<42} peak {gb:5.2f} GB  {seconds:6.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--dir", type=Path, help="where to write the inputs (a temporary folder by default)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        gb, s = run(["analyze", str(make_adapter(root)), "-q", "-o", str(root / "a.csv")])
        line("adapter 16x40000 / 40000x16 (5 MB)", gb, s)
        for count in args.checkpoints:
            run_dir = make_run(root, count)
            gb, s = run(["diff", str(run_dir), "-q", "-o", str(root / "d.csv")])
            size = sum(p.stat().st_size for p in (run_dir / "checkpoints").iterdir()) / 1e6
            line(f"diff RUN, {count} checkpoints ({size:,.0f} MB)", gb, s)
            for p in (run_dir / "checkpoints").iterdir():
                p.unlink()
        table = make_table(root, args.rows)
        gb, s = run(["report", str(table), "-o", str(root / "r.html")])
        page = (root / "r.html").stat().st_size / 1e6
        line(f"report, {args.rows:,} rows ({page:.1f} MB page)", gb, s)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
