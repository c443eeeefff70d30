"""The weights a training run saved, as weights sources: `alphaspec diff RUN` compares its checkpoints."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from alphaspec.sources.checkpoint import Checkpoint, SourceError, TensorInfo, read_config
from alphaspec.sources.deltas import open_source
from alphaspec.train.model import hf_names, hf_tensor
from alphaspec.train.rundir import checkpoints, has_checkpoints


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
