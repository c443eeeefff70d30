"""The weights a training run saved, as weights sources: `alphaspec diff RUN` compares its checkpoints, and
`alphaspec analyze RUN/checkpoints` (or any list of sources, globs and runs) analyses them as a series."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from alphaspec.analysis.many import Source, as_source, check_unique
from alphaspec.analysis.options import AnalysisOptions
from alphaspec.errors import UsageError, check_input_file, first_line
from alphaspec.sources.checkpoint import Checkpoint, SourceError, TensorInfo, read_config
from alphaspec.sources.deltas import open_source
from alphaspec.train.model import hf_names, hf_tensor
from alphaspec.train.rundir import checkpoints, has_checkpoints, has_log, read_log, run_of_checkpoints_folder


def expand_sources(sources: Iterable) -> list[tuple[str, Checkpoint]]:
    """(label, checkpoint) of each source; a training run directory given alone is its checkpoints, oldest first."""
    sources = list(sources)
    if len(sources) == 1 and has_checkpoints(Path(str(sources[0]))):
        return run_checkpoints(Path(str(sources[0])))
    return [(str(s), open_source(s)) for s in sources]


def run_checkpoints(run: Path) -> list[tuple[str, Checkpoint]]:
    """The checkpoints a training run kept, as Hugging Face tensors (multipliers folded in), oldest first."""
    config = read_config(run)
    return [(f"{run.name}@{path.stem.removeprefix('step_').lstrip('0') or '0'}", RunCheckpoint(path, config))
            for path in reversed(checkpoints(run))]


def _saved_model(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a saved training checkpoint, memory-mapped (a tensor's pages are read when it is
    used), read as data only (weights_only: never code)."""
    if not path.is_file():  # a named pipe or a device would block or stream for ever
        raise SourceError(f"{path}: not a regular file, so not a training checkpoint")
    try:
        model = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["model"]
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint is the input's problem
        raise SourceError(f"{path}: not a readable training checkpoint ({type(err).__name__})") from err
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise SourceError(f"{path}: its model is not a state dict of named tensors")
    return model


class RunCheckpoint(Checkpoint):
    """One checkpoint a training run saved, as LlamaForCausalLM tensors, each with its multipliers folded in
    (train.model.hf_tensor) when it is read. The file is mapped only while tensors are read from it, so
    comparing many checkpoints keeps none of them resident."""

    def __init__(self, path: Path, config: dict):
        model = _saved_model(path)
        names = hf_names(model, bool(config.get("tie_word_embeddings")))
        super().__init__(str(path), [path], [TensorInfo(n, tuple(model[n].shape), "float32", path) for n in names],
                         config)

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        model = _saved_model(file)
        for name in names:
            t = hf_tensor(model, name)
            mapped = t.untyped_storage().data_ptr() == model[name].untyped_storage().data_ptr()
            yield name, t.clone() if mapped else t  # a tensor of its own: the mapping goes with `model`


# -- many checkpoints at once (analyze A B C ...) ---------------------------------------------------------
MAX_LIST_BYTES = 1 << 20  # an @FILE list of sources: a megabyte is tens of thousands of lines


def many_sources(sources: Iterable, options: AnalysisOptions) -> list[Source]:
    """The sources of a series or a zoo, in order: @FILE lists read (one per line, # a comment), globs matched, a
    run directory (or RUN/checkpoints) as its saved checkpoints with their steps and tokens; each source once."""
    out: list[Source] = []
    for given in sources:
        out += [given] if isinstance(given, Source) else _expand_one(str(given), options)
    return check_unique(out)


def is_glob(given: str) -> bool:
    """Whether a source is a pattern for alphaspec to match (`'out/checkpoint-*'`), not a path that exists."""
    return any(c in given for c in "*?[") and not Path(given).expanduser().exists()


def _expand_one(given: str, options: AnalysisOptions, listed: bool = False) -> list[Source]:
    path = Path(given).expanduser()
    if given.startswith("@") and not listed:  # @FILE: a list of sources (not of further lists)
        return [s for line in _listed(Path(given[1:]).expanduser()) for s in _expand_one(line, options, True)]
    if is_glob(given):
        matched = sorted(glob.glob(str(path)))
        if not matched:
            raise UsageError(f"{given}: no file or directory matches")
        return [s for m in matched for s in _expand_one(m, options)]
    if path.is_dir() and checkpoints(path):
        return _run_sources(path)
    if (run := run_of_checkpoints_folder(path)) is not None:
        return _run_sources(run)
    return [as_source(given, options)]


def _listed(path: Path) -> list[str]:
    """The sources an @FILE lists, one per line (# starts a comment); a file that is no such list is one line."""
    check_input_file(path, "list of sources")
    if path.stat().st_size > MAX_LIST_BYTES:
        raise SourceError(f"{path}: {path.stat().st_size:,} bytes is no list of sources (at most {MAX_LIST_BYTES:,})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot read the list of sources ({first_line(err)})") from err
    found = [line.split("#", 1)[0].strip() for line in lines]
    if not any(found):
        raise SourceError(f"{path}: lists no source (one per line; # starts a comment)")
    return [f for f in found if f]


def _run_sources(run: Path) -> list[Source]:
    """A training run's saved checkpoints, oldest first, with the tokens its metrics.csv records at each step."""
    config = read_config(run)
    tokens = {}
    if has_log(run, "metrics"):
        metrics = read_log(run, "metrics", "analyze")
        tokens = dict(zip(metrics["step"].astype(int), metrics["tokens"].astype(int), strict=True))
    out = []
    for path in reversed(checkpoints(run)):
        step = int(path.stem.removeprefix("step_"))
        out.append(Source(f"{run.name}@{step}", lambda p=path: RunCheckpoint(p, config), step, tokens.get(step)))
    return out
