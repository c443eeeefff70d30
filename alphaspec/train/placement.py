"""Where a run runs: its device (an indexed GPU, the local rank's under torchrun), the process settings it
needs there for its duration (the current device, TF32), and whether a micro-batch can fit at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from alphaspec.devices import resolve_device
from alphaspec.train.config import ConfigError
from alphaspec.train.model import ModelConfig

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s by GPU name, for MFU


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s when it is a GPU alphaspec knows, else None (no MFU shown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def select_device(device: str, world: int, local: int) -> torch.device:
    """The run's device, with an index on CUDA: under torchrun each rank takes the GPU of its local rank,
    unless a device index was given."""
    one_gpu_each = world > 1 and device in ("auto", "cuda") and torch.cuda.is_available()
    return resolve_device(f"cuda:{local}" if one_gpu_each else device)


@contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """The run's GPU as the current device and TF32 products (for speed) while it trains; the process's own
    settings come back afterwards, so a notebook or a later analysis is not left in TF32."""
    if device.type != "cuda":
        yield
        return
    before = (torch.cuda.current_device(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.cuda.set_device(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.cuda.set_device(before[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[1:]


def check_fits(mcfg: ModelConfig, micro: int, seq_len: int, device: torch.device) -> None:
    """Refuse, before allocating, a micro-batch whose logits alone (float32, and their gradient) pass the
    device's whole memory: a lower bound of what a step needs, so a run that could fit is never refused."""
    need = 2 * 4 * micro * seq_len * mcfg.vocab_size
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, f"the {device} GPU's"
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        have, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's"
    else:
        return
    if need > have:
        raise ConfigError(f"--batch-size: a micro-batch of {micro:,} sequences x {seq_len} tokens needs at least "
                          f"{need / 2**30:,.0f} GiB for its logits, more than {where} {have / 2**30:,.0f} GiB; set "
                          "--micro-batch to a few sequences (gradient accumulation makes up the batch)")
