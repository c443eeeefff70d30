"""Content digests: what the eigenvalue store keys its entries by (the bytes a matrix or a tensor holds) and
marks kept values with (the code that made them)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from alphaspec._version import __version__

PARALLEL_BYTES = 8 << 20  # buffers from this size are hashed on several threads


def bytes_key(header: str, data) -> str:
    """BLAKE3 of a header line and a buffer of bytes (several cores for a large one)."""
    from blake3 import blake3

    threads = blake3.AUTO if memoryview(data).nbytes >= PARALLEL_BYTES else 1  # one input over several cores
    digest = blake3(header.encode(), max_threads=threads)
    digest.update(data)
    return digest.hexdigest()


def source_digest(*files: str, versions: str = "") -> str:
    """A digest of the package version, of these source files and of `versions` (of the libraries the code
    calls): which code made a kept value, so that one made by another release or an edited checkout is not
    read back; unique to this process when a file cannot be read (then nothing is reused)."""
    digest = hashlib.sha256(f"{__version__}|{versions}|".encode())
    try:
        for file in files:
            digest.update(Path(file).read_bytes())
    except (OSError, TypeError):
        digest.update(os.urandom(16))
    return digest.hexdigest()[:32]
