"""Where this process stands in a torch.distributed job (one place for both questions the code asks)."""

from __future__ import annotations

import os

import torch.distributed as dist


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one. Collectives use this."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun set them, before or after the group is initialised."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local
