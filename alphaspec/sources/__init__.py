"""Weights sources: checkpoints on disk or on the Hub (safetensors, PyTorch, GGUF), models in memory,
fine-tune deltas and PEFT adapters; which of their tensors are matrices and what each is called; reading
them ahead of the solver."""
