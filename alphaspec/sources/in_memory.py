"""In-memory sources: a live `nn.Module` or a state dict, analysed like a checkpoint on disk.

The weights are never copied whole: each matrix is read where it lives (a view of the parameter)
and solved there, one batch at a time, exactly as a checkpoint's tensors are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from alphaspec.sources.checkpoint import Checkpoint, SourceError, TensorInfo, dtype_name

MEMORY = Path("<memory>")  # the one "file" of an in-memory checkpoint


def model_config(model: torch.nn.Module) -> dict:
    """The config a Hugging Face model carries (`model.config`), as config.json would hold it; {} if none."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if hasattr(config, "hf_config"):  # alphaspec's own LLaMA
        return config.hf_config()
    return dict(config) if isinstance(config, dict) else {}


def is_in_memory(source: object) -> bool:
    """Whether `source` is a model or a state dict rather than a path, hub id or example name."""
    return isinstance(source, torch.nn.Module | Mapping)


def describe(source: object) -> str:
    """How an in-memory source is named in the table's attrs and the summary (never its whole repr)."""
    if isinstance(source, torch.nn.Module):
        return f"<{type(source).__name__} in memory>"
    return f"<state dict of {len(source)} tensors>"


class MemoryCheckpoint(Checkpoint):
    """A Checkpoint whose tensors are live tensors; `read` hands out detached views of them."""

    def __init__(self, source: str, tensors: dict[str, torch.Tensor], config: dict):
        super().__init__(source, [MEMORY], [TensorInfo(n, tuple(t.shape), dtype_name(t), MEMORY)
                                            for n, t in tensors.items()], config, config_file="model.config")
        self.live = tensors

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            yield name, self.live[name].detach()

    @property
    def device(self) -> torch.device | None:
        """The one device every tensor lives on, or None when they are spread over several."""
        devices = {t.device for t in self.live.values()}
        return devices.pop() if len(devices) == 1 else None


def memory_checkpoint(source: torch.nn.Module | Mapping, config: dict | None = None) -> MemoryCheckpoint:
    """The tensors of a model (its state dict without aliases: a tied weight counts once, under its first
    name, as `save_pretrained` keeps it) or of a state dict, with the model's config unless one is given."""
    if isinstance(source, torch.nn.Module):
        state, config = source.state_dict(keep_vars=True), model_config(source) if config is None else config
    else:
        state = source
    name = describe(source)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SourceError(f"{name}: {key!r} is not a tensor named by a string (a state dict maps names to tensors)")
        if value.device.type == "meta":
            raise SourceError(f"{name}: {key} is on the meta device (no values); load the weights first")
        if hasattr(value, "full_tensor"):
            raise SourceError(f"{name}: {key} is a sharded DTensor; analyse it inside the job with AlphaDecay's "
                              "hook, or save the model and analyse the checkpoint")
        alias = (value.device, value.data_ptr(), tuple(value.shape), value.stride(), value.dtype)
        if value.numel() and alias in seen:
            continue
        seen.add(alias)
        tensors[key] = value
    return MemoryCheckpoint(name, tensors, dict(config or {}))
