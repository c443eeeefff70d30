"""The eigenvalue store: each matrix's spectrum solved once, kept on disk, reused by every later command.

Eigenvalues are the expensive part of an analysis; every estimator, diagnosis, map and figure is cheap
given them. An entry is keyed by what was solved: the BLAKE3 digest (cryptographic, about 5 GB/s on one
core, so keying costs a few per cent of a solve) of the matrix as the solver saw it (its bytes, dtype and
shape, after a fused split, a delta's subtraction or a rounding), the size it stands for, the solver's
precision and, for the randomised analysis and FARMS, their settings. A changed tensor cannot match a key.
A tensor whose reading is costly can be keyed as stored instead (Checkpoint.stored_key: a GGUF file's
quantised blocks), so that the store is asked before the tensor is read and dequantised.
Entries are safetensors files (no pickle, no code) that carry their key and a checksum of their contents:
an entry that does not verify is deleted and the matrix solved again, never trusted.
Writes are atomic renames, so concurrent runs at worst solve a matrix twice; a read refreshes the entry's
time, and `trim` deletes the least recently used entries beyond the size bound.

Where: $ALPHASPEC_CACHE/spectra, else $XDG_CACHE_HOME/alphaspec/spectra (~/.cache/alphaspec/spectra); the
bound: $ALPHASPEC_CACHE_SIZE (bytes, or with a K/M/G suffix), 2G by default. ALPHASPEC_NO_CACHE=1 turns it
off for every command (as --no-cache does for one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alphaspec.digests import bytes_key
from alphaspec.errors import UsageError

SUFFIX = ".safetensors"
DEFAULT_BYTES = 2 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def store_root() -> Path:
    """$ALPHASPEC_CACHE/spectra, else $XDG_CACHE_HOME/alphaspec/spectra (~/.cache when unset)."""
    if env := os.environ.get("ALPHASPEC_CACHE"):
        return Path(env) / "spectra"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alphaspec" / "spectra"


def store_enabled() -> bool:
    """False when $ALPHASPEC_NO_CACHE is set to anything but 0 or empty."""
    return os.environ.get("ALPHASPEC_NO_CACHE", "").strip() in ("", "0")


def unwritable(root: Path) -> str | None:
    """Why the store cannot be written at `root` (then analyses run without it), or None: read from the
    nearest folder that exists, creating nothing."""
    here = root
    while not here.exists():
        if here.parent == here:
            return "no folder above it exists"
        here = here.parent
    if not here.is_dir():
        return f"{here} is not a folder"
    return None if os.access(here, os.W_OK | os.X_OK) else f"{here} is not writable"


def store_bound() -> int:
    """The store's size bound in bytes, from $ALPHASPEC_CACHE_SIZE (such as 500M or 4G)."""
    text = os.environ.get("ALPHASPEC_CACHE_SIZE", "").strip().upper().removesuffix("B")
    if not text:
        return DEFAULT_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)I?", text)
    if not match:
        raise UsageError(f"ALPHASPEC_CACHE_SIZE={os.environ['ALPHASPEC_CACHE_SIZE']!r}: give a size such as 500M or 4G")
    return int(float(match[1]) * _UNITS[match[2]])


def matrix_key(m: torch.Tensor) -> str | None:
    """The content key of a matrix as solved: BLAKE3 of its dtype, shape and bytes; None for a tensor that is
    not in CPU memory (a GGUF tensor expanded on the GPU: hashing it would cost a copy back)."""
    if m.device.type != "cpu":
        return None
    return bytes_key(f"{m.dtype}|{tuple(m.shape)}|", m.detach().contiguous().view(torch.uint8).numpy().data)


def entry_key(*parts: object) -> str:
    """The key of one entry: a matrix's content key with what else shaped the solve (precision, settings)."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Entry:
    """What one solve left: arrays (float64 eigenvalues) and small facts beside them (JSON values)."""

    arrays: dict[str, np.ndarray]
    facts: dict = field(default_factory=dict)


def _checksum(key: str, arrays: dict[str, np.ndarray], facts: dict) -> str:
    digest = hashlib.sha256(key.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"|{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return digest.hexdigest()


class EigenStore:
    """Entries under `root`, one file each, at most `max_bytes` together after `trim`."""

    def __init__(self, root: Path | None = None, max_bytes: int | None = None):
        self.root = Path(root) if root is not None else store_root()
        self.max_bytes = store_bound() if max_bytes is None else max_bytes
        self.hits = self.misses = self.rejected = 0
        self.written = 0  # entries this object put (trim has nothing to do before one)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / (key + SUFFIX)

    def get(self, key: str) -> Entry | None:
        """The entry of `key`, verified; None when there is none or it does not verify (then it is deleted)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = self._path(key)
        try:
            with open(path, "rb") as f:
                meta = json.loads(_header(f).get("__metadata__", {}).get("alphaspec", "{}"))
            arrays = load_file(path)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, SafetensorError, KeyError, TypeError):
            return self._reject(path)
        facts = meta.get("facts") if isinstance(meta, dict) else None
        if (not isinstance(facts, dict) or meta.get("key") != key
                or meta.get("checksum") != _checksum(key, arrays, facts)):
            return self._reject(path)
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to go
        self.hits += 1
        return Entry(arrays, facts)

    def _reject(self, path: Path) -> None:
        self.rejected += 1
        self.misses += 1
        with contextlib.suppress(OSError):
            path.unlink()

    def put(self, key: str, entry: Entry) -> None:
        """Keep `entry` under `key` (atomically; a store that cannot be written is skipped, never an error)."""
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in entry.arrays.items()}
        meta = {"key": key, "checksum": _checksum(key, arrays, entry.facts), "facts": entry.facts}
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(arrays, str(tmp), metadata={"alphaspec": json.dumps(meta)})
            os.replace(tmp, path)
            self.written += 1
        except (OSError, ValueError, RuntimeError):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last used) of every entry."""
        found = []
        for path in self.root.glob(f"*/*{SUFFIX}") if self.root.is_dir() else []:
            with contextlib.suppress(OSError):
                st = path.stat()
                found.append((path, st.st_size, st.st_mtime))
        return found

    def trim(self) -> int:
        """Delete the least recently used entries until the store is within its bound; how many went. Only
        after this object put an entry: a command that took every spectrum from the store left it no larger,
        and listing a full store costs a few µs an entry."""
        if not self.written:
            return 0
        entries = sorted(self.entries(), key=lambda e: e[2], reverse=True)
        total, gone = 0, 0
        for path, size, _ in entries:
            total += size
            if total > self.max_bytes:
                with contextlib.suppress(OSError):
                    path.unlink()
                    gone += 1
        return gone

    def clear(self) -> tuple[int, int]:
        """Delete every entry (and stray temporary files); (entries, bytes) deleted."""
        count = size = 0
        for path, nbytes, _ in self.entries():
            with contextlib.suppress(OSError):
                path.unlink()
                count, size = count + 1, size + nbytes
        for tmp in self.root.glob("*/.*.tmp") if self.root.is_dir() else []:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return count, size


def _header(f) -> dict:
    """A safetensors file's JSON header, bounded (a damaged length prefix is not an allocation)."""
    n = int.from_bytes(f.read(8), "little")
    if not 0 < n <= 1 << 20:
        raise ValueError("bad header length")
    return json.loads(f.read(n))
