"""A compact LLaMA pretraining harness for comparing weight-decay strategies (`alphaspec train`).

Names load on first use, so reading a run's settings (`alphaspec.train.config`) does not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {"ConfigError": "config", "TrainConfig": "config", "DataError": "data", "evaluate": "loop", "train": "loop",
          "Llama": "model", "ModelConfig": "model", "PRESETS": "model", "RunError": "rundir"}

__all__ = ["ConfigError", "DataError", "Llama", "ModelConfig", "PRESETS", "RunError", "STRATEGIES", "TrainConfig",
           "evaluate", "train"]

from ..choices import STRATEGIES  # noqa: E402


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alphaspec.train' has no attribute {name!r}")
