"""`alphaspec tokenize`: training data → a token cache that `alphaspec train --data CACHE` reads directly."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from alphaspec.cli.common import Quiet, app, err, out
from alphaspec.train.config import DataOptions

EPILOG = """
**Examples**

    # train a 4096-token BPE on the files, tokenise them
    alphaspec tokenize corpus/ -o cache/corpus

    alphaspec tokenize shard-*.parquet -o cache/fineweb --tokenizer gpt2

    # streamed from the hub; needs alphaspec[data]
    alphaspec tokenize hf:allenai/c4:en -o cache/c4 --tokenizer t5-base

    # a run on the cache
    alphaspec train --data cache/c4 --packing docs --seq-len 256 --out runs/c4

A second call with the same sources and tokenizer does nothing; a killed one continues where it stopped.
"""


@app.command("tokenize", no_args_is_help=True, epilog=EPILOG)
def tokenize(
    sources: Annotated[list[str], typer.Argument(metavar="SOURCE...", help="Text files, .jsonl(.gz/.zst), .parquet, "
                                                 "hf:NAME[:CONFIG[:SPLIT]], token files (.bin, .npy) or directories.")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="CACHE", help="The cache directory (new, empty, "
                                         "or one this command started).")],
    tokenizer: Annotated[str | None, typer.Option(metavar="TOKENIZER", help=DataOptions.__dataclass_fields__[
        "tokenizer"].metadata["help"])] = None,
    vocab_size: Annotated[int, typer.Option(min=256, max=1 << 20, help="Vocabulary of the trained BPE (without "
                                            "--tokenizer; at most 1,048,576).")]
    = DataOptions.vocab_size,
    text_field: Annotated[str, typer.Option(metavar="NAME", help="The text field of JSON records, Parquet rows and "
                                            "datasets.")] = DataOptions.text_field,
    workers: Annotated[int, typer.Option(min=0, max=1024, help="Threads encoding text (0: every core; at most "
                                         "1024).")] = 0,
    quiet: Quiet = False,
) -> None:
    """Tokenise training data once into sharded token files that every run reuses."""
    if workers:  # tokenizers sizes its thread pool from this when it first encodes
        os.environ["RAYON_RS_NUM_CPUS"] = str(workers)
    from alphaspec.train.cache import build_cache
    from alphaspec.train.sources import open_sources
    from alphaspec.train.tokenizer import resolve_tokenizer

    opened = open_sources(sources, text_field)
    vocab = resolve_tokenizer(tokenizer) if tokenizer else None
    started = time.perf_counter()
    # the files' sizes give an ETA: text read so far stands for bytes read (capped at each file's size)
    sizes = [s.path.stat().st_size if s.path is not None and s.path.is_file() else None for s in opened]
    total = sum(sizes) if None not in sizes else None
    before = [sum(sizes[:i]) for i in range(len(sizes))] if total else []
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=quiet, transient=True) as bar:
        task = bar.add_task("starting", rate="", total=total)

        def progress(stage: str, chars: int, tokens: int, source: int = 0, here: int = 0) -> None:
            seconds = max(time.perf_counter() - started, 1e-9)
            done = before[source] + min(here, sizes[source]) if total else None
            bar.update(task, description=f"{stage} {chars / 1e6:,.1f} MB → {tokens:,} tokens", completed=done,
                       rate=f"{chars / 1e6 / seconds:.1f} MB/s {tokens / seconds:,.0f} tok/s" if tokens else "")

        cache = build_cache(opened, output, vocab, vocab_size, progress)
    if not quiet:
        m = cache.manifest
        out.print(f"{output}: {m['tokens']:,} tokens in {m['documents']:,} documents, {len(m['shards'])} shard(s), "
                  f"vocabulary {cache.vocab.size:,} ({time.perf_counter() - started:.1f} s)", highlight=False)
