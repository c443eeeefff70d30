"""A compact LLaMA pretraining harness for comparing weight-decay strategies (`alphaspec train`).

Names load on first use, so reading a run's settings (`alphaspec.train.config`) does not import torch.
"""

from __future__ import annotations

from alphaspec._lazy import lazy_attributes
from alphaspec.choices import STRATEGIES

_WHERE = {"ConfigError": "config", "TrainConfig": "config", "DataError": "data", "evaluate": "loop", "train": "loop",
          "Llama": "model", "ModelConfig": "model", "PRESETS": "model", "RunError": "rundir"}

__all__ = ["ConfigError", "DataError", "Llama", "ModelConfig", "PRESETS", "RunError", "STRATEGIES", "TrainConfig",
           "evaluate", "train"]


__getattr__ = lazy_attributes(__name__, _WHERE, globals())
