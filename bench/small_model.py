"""alphaspec against WeightWatcher end to end on a small model: SmolLM-135M's public shapes, random weights.

    python bench/small_model.py [--repeats 3] [--ww-python PYTHON] [--json out.json]

Writes a Hugging Face directory with SmolLM-135M's config (576 wide, 30 blocks, GQA with 3 KV heads, a
49152 x 576 tied embedding: 211 matrices, 135M parameters) and bfloat16 Gaussian weights, then times
`alphaspec analyze DIR -o r.csv` and WeightWatcher 0.7.7's `analyze()` (its defaults) as whole commands,
each in a fresh process, best of --repeats. The ratio is what counts: small matrices are where per-matrix
overheads (copies, checks, fits) show, since each eigen-solve is short. Needs weightwatcher in
--ww-python's environment (pip install weightwatcher==0.7.7).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)
OUT = Path(__file__).resolve().parent / "out"
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
          "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
          "tie_word_embeddings": True, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}
WW = """
import sys, time, logging, warnings
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
import weightwatcher as ww
d = ww.WeightWatcher(model=sys.argv[1]).analyze()
print("RESULT", len(d))
"""


def write_model(folder: Path) -> Path:
    """SmolLM-135M's tensors (bfloat16, N(0, 0.02)), cached between runs."""
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    c, g = CONFIG, torch.Generator().manual_seed(0)
    d, ff, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = hd * c["num_key_value_heads"]
    shapes = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
              "self_attn.o_proj": (d, d), "mlp.gate_proj": (ff, d), "mlp.up_proj": (ff, d), "mlp.down_proj": (d, ff)}
    tensors = {"model.embed_tokens.weight": (torch.randn(c["vocab_size"], d, generator=g) * 0.02).bfloat16(),
               "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)}
    for i in range(c["num_hidden_layers"]):
        for name, shape in shapes.items():
            tensors[f"model.layers.{i}.{name}.weight"] = (torch.randn(*shape, generator=g) * 0.02).bfloat16()
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = torch.ones(d, dtype=torch.bfloat16)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


def timed(cmd: list[str], repeats: int) -> float:
    """Best wall seconds of a whole command (start-up, imports and writing included)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stderr[-2000:]}")
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ww-python", default=sys.executable, help="python of an environment with weightwatcher")
    ap.add_argument("--estimator", default="median", help="alphaspec's estimator (WeightWatcher fits as gof does)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"gpu {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", flush=True)
    folder = write_model(OUT / "smollm-135m-shaped")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for est in dict.fromkeys([args.estimator, "gof"]):
            results[f"alphaspec_{est}_s"] = timed([sys.executable, "-m", "alphaspec", "analyze", str(folder), "-q",
                                                   "-e", est, "-o", f"{tmp}/r.csv"], args.repeats)
            print(f"alphaspec analyze -e {est}: {results[f'alphaspec_{est}_s']:.1f} s end to end", flush=True)
    results["weightwatcher_s"] = timed([args.ww_python, "-c", WW, str(folder)], args.repeats)
    print(f"WeightWatcher 0.7.7 analyze(), whole command: {results['weightwatcher_s']:.1f} s", flush=True)
    for est in dict.fromkeys([args.estimator, "gof"]):
        print(f"alphaspec -e {est} is {results['weightwatcher_s'] / results[f'alphaspec_{est}_s']:.1f}x faster "
              "than WeightWatcher, end to end")
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu, "cores": os.cpu_count(), **results}, indent=1))


if __name__ == "__main__":
    main()
