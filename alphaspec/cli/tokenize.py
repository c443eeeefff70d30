"""`alphaspec tokenize`: training data → a token cache that `alphaspec train --data CACHE` reads directly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from alphaspec.cli.common import app, err, out, quiet_option
from alphaspec.cli.help import PATH, argument, option, with_options
from alphaspec.train.config import DataOptions

EPILOG = """
Examples:

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
@with_options([
    argument("sources", nargs=-1, required=True, metavar="SOURCE...", help="Text files, .jsonl(.gz/.zst), .parquet, "
             "hf:NAME[:CONFIG[:SPLIT]], token files (.bin, .npy) or directories."),
    option("-o", "--output", type=PATH, required=True, metavar_="CACHE", help="The cache directory (new, empty, or "
           "one this command started)."),
    option("--tokenizer", metavar_="TOKENIZER", help=DataOptions.__dataclass_fields__["tokenizer"].metadata["help"]),
    option("--vocab-size", type=click.IntRange(256, 1 << 20), default=DataOptions.vocab_size, help="Vocabulary of "
           "the trained BPE (without --tokenizer; at most 1,048,576)."),
    option("--text-field", metavar_="NAME", default=DataOptions.text_field, help="The text field of JSON records, "
           "Parquet rows and datasets."),
    option("--workers", type=click.IntRange(0, 1024), default=0, help="Threads encoding text (0: every core; at most "
           "1024)."),
    quiet_option,
])
def tokenize(sources: tuple[str, ...], output: Path, tokenizer: str | None, vocab_size: int, text_field: str,
             workers: int, quiet: bool) -> None:
    """Tokenise training data once into sharded token files that every run reuses."""
    if workers:  # tokenizers sizes its thread pool from this when it first encodes
        os.environ["RAYON_RS_NUM_CPUS"] = str(workers)
    from alphaspec.train.cache import build_cache
    from alphaspec.train.sources import open_sources
    from alphaspec.train.tokenizer import resolve_tokenizer

    opened = open_sources(list(sources), text_field)
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
