"""Weights sources: checkpoints on disk or on the Hub (safetensors, PyTorch, GGUF), models in memory,
fine-tune deltas and PEFT adapters; which of their tensors are matrices and what each is called; reading
them ahead of the solver."""

from alphaspec._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {}, globals())  # a module of the package on first use, as the docs name it
