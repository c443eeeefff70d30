"""GGML block dequantisation in torch, on any device, for the types most GGUF files use.

The same arithmetic as the gguf package's numpy dequantisers (float16 scales widened to float32, one
multiply and one subtract per value, no fused operations), so the values are bit for bit the same;
on a GPU the raw blocks are copied there (4-8x fewer bytes than float32) and expanded in place. Types
not listed here go through the gguf package on the CPU (gguf_reader._dequantise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QK_K = 256  # values per K-quant super-block


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian bytes -> (n, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, groups: int, width: int) -> torch.Tensor:
    """(n, groups*width) bytes -> (n, groups, 2, width): low nibbles, then high nibbles, of each group."""
    shifts = torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).reshape(1, 1, 2, 1)
    return (qs.reshape(qs.shape[0], groups, 1, width) >> shifts) & 0x0F


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit scales and mins packed in 12 bytes (Q4_K, Q5_K)."""
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], 1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], 1)
    return sc.float(), mn.float()


def q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, :2])


def q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 1, 16).reshape(b.shape[0], 32).to(torch.int8) - 8
    return _f16(b[:, :2]) * q.float()


def q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, m = _scale_min_k4(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * sc).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * m).reshape(n, 8, 1)
    q = _nibbles(b[:, 16:], 4, 32).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, QK_K)


def q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, m = _scale_min_k4(b[:, 4:16])
    d = (_f16(b[:, 0:2]) * sc).reshape(n, 8, 1)
    dm = (_f16(b[:, 2:4]) * m).reshape(n, 8, 1)
    low = _nibbles(b[:, 48:], 4, 32).reshape(n, 8, 32)
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device).reshape(1, 1, 8, 1)
    high = ((b[:, 16:48].reshape(n, 1, 1, 32) >> shifts) & 1).reshape(n, 8, 32)
    return (d * (low | (high << 4)).float() - dm).reshape(n, QK_K)


def q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_f16(b[:, 208:210]) * scales).reshape(n, QK_K // 16, 1)
    low = _nibbles(b[:, :128], 2, 64).reshape(n, 8, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=b.device).reshape(1, 1, 4, 1)
    high = ((b[:, 128:192].reshape(n, 2, 1, 32) >> shifts) & 0x03).reshape(n, 8, 32)
    q = (low | (high << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, QK_K // 16, 16).float()).reshape(n, QK_K)


# GGML type name -> (values per block, bytes per block, dequantiser)
DEQUANTISERS: dict[str, tuple[int, int, Callable[[torch.Tensor], torch.Tensor]]] = {
    "Q8_0": (32, 34, q8_0), "Q4_0": (32, 18, q4_0), "Q4_K": (QK_K, 144, q4_k), "Q5_K": (QK_K, 176, q5_k),
    "Q6_K": (QK_K, 210, q6_k)}


def dequantise(raw: torch.Tensor, type_name: str, shape: tuple[int, ...], rows_per_chunk: int) -> torch.Tensor:
    """Float32 values, on raw's device, of a tensor stored as `type_name` blocks (uint8, one row of blocks
    per matrix row), `rows_per_chunk` rows at a time so the temporaries stay small."""
    block, size, fn = DEQUANTISERS[type_name]
    rows = raw.reshape(-1, raw.shape[-1])
    out = torch.empty(rows.shape[0], shape[-1], dtype=torch.float32, device=raw.device)
    for lo in range(0, rows.shape[0], rows_per_chunk):
        chunk = rows[lo:lo + rows_per_chunk]
        out[lo:lo + chunk.shape[0]] = fn(chunk.reshape(-1, size)).reshape(chunk.shape[0], -1)
    return out.reshape(shape)
