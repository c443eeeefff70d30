"""Input-pipeline figures: tokenising throughput against tokenizers' own encode_batch, peak memory while
preparing a large corpus, and the share of a training step spent making its batch.

    python bench/input_pipeline.py CORPUS_DIR [--tokenizer tokenizer.json] [--large-mb 500]

CORPUS_DIR: JSON lines (e.g. from bench/corpus.py). Prints each figure and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def documents(corpus: Path, limit_mb: float) -> list[str]:
    docs, size = [], 0
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            text = json.loads(line)["text"]
            docs.append(text)
            size += len(text.encode())
            if size >= limit_mb * 1e6:
                return docs
    return docs


def throughput(corpus: Path, tokenizer: Path, mb: float) -> None:
    """alphaspec tokenize's path (read JSON lines, encode, write shards) against encode_batch over the same
    documents already in memory, in the same process."""
    from alphaspec.train.cache import build_cache
    from alphaspec.train.sources import open_sources
    from alphaspec.train.tokenizer import resolve_tokenizer

    vocab = resolve_tokenizer(tokenizer)
    docs = documents(corpus, mb)
    size = sum(len(d.encode()) for d in docs) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample.jsonl"
        sample.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        t0 = time.perf_counter()
        n_ref = sum(len(e.ids) for i in range(0, len(docs), 64) for e in vocab.tokenizer.encode_batch(
            docs[i:i + 64], add_special_tokens=False))
        ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache = build_cache(open_sources([sample]), Path(tmp) / "cache", vocab)
        ours = time.perf_counter() - t0
    print(f"tokenising {size:.1f} MB ({cache.manifest['tokens']:,} tokens, {n_ref:,} without EOS):")
    print(f"  encode_batch on documents in memory : {size / ref:6.2f} MB/s")
    print(f"  alphaspec tokenize (read, encode, write): {size / ours:6.2f} MB/s  ({ref / ours:.2f}x encode_batch)")


def peak_memory(corpus: Path, tokenizer: Path, mb: float) -> None:
    """Peak RSS of `alphaspec tokenize` on at least `mb` MB of JSON lines (the corpus repeated)."""
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.jsonl"
        written, copy = 0, 0
        with open(big, "w", encoding="utf-8") as f:
            while written < mb * 1e6:
                for path in sorted(corpus.glob("*.jsonl")):
                    for line in path.read_text(encoding="utf-8").splitlines():
                        doc = f"copy {copy}: " + json.loads(line)["text"]
                        f.write(json.dumps({"text": doc}) + "\n")
                        written += len(doc.encode())
                copy += 1
        t0 = time.perf_counter()
        # the child's own resident memory, sampled (ru_maxrss of children would count this process's pages,
        # which the child shares between fork and exec)
        proc = subprocess.Popen([sys.executable, "-m", "alphaspec", "tokenize", str(big), "-o", str(Path(tmp) / "c"),
                                 "--tokenizer", str(tokenizer), "-q"], stderr=subprocess.PIPE, text=True)
        peak = 0.0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, psutil.Process(proc.pid).memory_info().rss / 2**20)
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(proc.stderr.read())
        tokens = json.loads((Path(tmp) / "c" / "manifest.json").read_text())["tokens"]
    print(f"preparing {written / 1e6:.0f} MB of JSON-lines text ({tokens:,} tokens): {seconds:.0f} s, "
          f"peak RSS {peak:,.0f} MB")


def batch_share(corpus: Path, tokenizer: Path) -> None:
    """Time to make one step's batch against one llama-20m training step (16 x 256 tokens, CPU)."""
    from alphaspec.train.cache import build_cache
    from alphaspec.train.data import DocStream, TokenData
    from alphaspec.train.model import PRESETS, Llama, ModelConfig
    from alphaspec.train.sources import open_sources
    from alphaspec.train.tokenizer import resolve_tokenizer

    vocab = resolve_tokenizer(tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "s.jsonl"
        sample.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents(corpus, 20)))
        cache = build_cache(open_sources([sample]), Path(tmp) / "c", vocab)
        starts, lengths, _ = cache.documents()
        stream = DocStream(cache.shards(), starts, lengths)
        model = Llama(ModelConfig(vocab_size=vocab.size, max_position_embeddings=256, **PRESETS["llama-20m"]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for packing in ("concat", "docs"):
            data = TokenData(train=stream, val=stream, packing=packing, pad=vocab.eos_id or 0)
            t0 = time.perf_counter()
            for step in range(50):
                data.batch(step, 16, 256, seed=0)
            make = (time.perf_counter() - t0) / 50
            x, y = data.batch(0, 16, 256, seed=0)
            t0 = time.perf_counter()
            for _ in range(3):
                loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
                loss.backward()
                opt.step()
                opt.zero_grad()
            step_time = (time.perf_counter() - t0) / 3
            print(f"--packing {packing}: batch {make * 1e3:.2f} ms, llama-20m step {step_time * 1e3:.0f} ms "
                  f"-> input pipeline {100 * make / (make + step_time):.2f} % of the step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json (default: a 16k BPE trained on 20 MB)")
    parser.add_argument("--throughput-mb", type=float, default=50)
    parser.add_argument("--large-mb", type=float, default=500)
    args = parser.parse_args()
    print(machine())
    torch.set_num_threads(os.cpu_count() or 1)
    if args.tokenizer is None:
        from alphaspec.train.tokenizer import train_bpe

        args.tokenizer = Path(tempfile.mkdtemp()) / "tokenizer.json"
        train_bpe(iter(documents(args.corpus, 20)), 16384).tokenizer.save(str(args.tokenizer))
    throughput(args.corpus, args.tokenizer, args.throughput_mb)
    batch_share(args.corpus, args.tokenizer)
    peak_memory(args.corpus, args.tokenizer, args.large_mb)


if __name__ == "__main__":
    main()
