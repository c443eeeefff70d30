"""A compact LLaMA pretraining harness for comparing weight-decay strategies (`alphaspec train`)."""

from .data import DataError
from .loop import ConfigError, TrainConfig, evaluate, train
from .model import PRESETS, Llama, ModelConfig
from .rundir import RunError
from .strategies import STRATEGIES

__all__ = ["ConfigError", "DataError", "Llama", "ModelConfig", "PRESETS", "RunError", "STRATEGIES", "TrainConfig",
           "evaluate", "train"]
