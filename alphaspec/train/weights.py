"""The weights a training run saved, as weights sources: `alphaspec diff RUN` compares its checkpoints."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from alphaspec.sources.checkpoint import Checkpoint, SourceError, read_config
from alphaspec.sources.deltas import open_source
from alphaspec.sources.in_memory import MemoryCheckpoint
from alphaspec.train.model import hf_tensors
from alphaspec.train.rundir import checkpoints, has_checkpoints


def expand_sources(sources: Iterable) -> list[tuple[str, Checkpoint]]:
    """(label, checkpoint) of each source; a training run directory given alone is its checkpoints, oldest first."""
    sources = list(sources)
    if len(sources) == 1 and has_checkpoints(Path(str(sources[0]))):
        return run_checkpoints(Path(str(sources[0])))
    return [(str(s), open_source(s)) for s in sources]


def run_checkpoints(run: Path) -> list[tuple[str, Checkpoint]]:
    """The checkpoints a training run kept, as Hugging Face tensors (multipliers folded in), oldest first."""
    found = list(reversed(checkpoints(run)))
    config = read_config(run)
    out = []
    for path in found:
        if not path.is_file():  # a named pipe or a device would block or stream for ever
            raise SourceError(f"{path}: not a regular file, so not a training checkpoint")
        try:  # memory-mapped: a tensor's pages are read when it is compared, so memory holds one tensor at a time
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            model = state["model"]
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint is the input's problem
            raise SourceError(f"{path}: not a readable training checkpoint ({type(err).__name__})") from err
        if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in model.items()):
            raise SourceError(f"{path}: its model is not a state dict of named tensors")
        tensors = hf_tensors(model, bool(config.get("tie_word_embeddings")))
        out.append((f"{run.name}@{path.stem.removeprefix('step_').lstrip('0') or '0'}",
                    MemoryCheckpoint(str(path), tensors, config)))
    return out
