"""A bounded reader of GGUF headers: the scalar metadata alphaspec reads and the tensor index, nothing more.

gguf's own GGUFReader decodes every metadata value up front: a 3-million-string vocabulary costs
gigabytes, and an array claiming 2^60 elements exhausts memory or hangs. Here every length and count is
checked against the bytes left in the file before it is used, arrays are skipped without being
decoded (their element sizes are summed, strings walked one length at a time), and only scalars and
short strings are kept. Tensor data stays in the memory map until a tensor is read.

Layout (GGUF v2/v3, little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64;
each metadata entry a key string (u64 length + UTF-8), a value type u32 and the value; each tensor
entry a name string, n_dims u32, n_dims × u64 sizes (fastest-varying first), GGML type u32 and a
data offset u64; tensor data starts at the next multiple of general.alignment (default 32).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphaspec.errors import AlphaspecError

# metadata value types -> struct format of the fixed-size ones (8: string, 9: array)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_KEPT_STRING = 4096  # longer string values (chat templates, licences) are skipped, never decoded
MAX_DEPTH = 4  # arrays of arrays nest at most this deep
PLAIN_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8, "I16": np.int16,
               "I32": np.int32, "I64": np.int64}


class HeaderError(AlphaspecError, ValueError):
    """The header does not hold what it claims (a length or count past the end of the file, ...); the reader
    (sources/gguf.py) names the file in the GGUFError it becomes."""


@dataclass
class GGUFTensor:
    """One tensor of the index: its name, GGML type, sizes (fastest-varying first, as GGUF stores them) and
    where its bytes lie in the file."""

    name: str
    tensor_type: object  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    n_bytes: int
    buffer: mmap.mmap

    @property
    def data(self) -> np.ndarray:
        """The stored values (plain types) or raw blocks (uint8, one row of blocks per row), as gguf gives them."""
        from gguf.quants import quant_shape_to_byte_shape

        dims = tuple(reversed(self.shape))
        kind = self.tensor_type.name
        if kind in PLAIN_NUMPY:
            dtype, items = PLAIN_NUMPY[kind], int(np.prod(self.shape))
        else:  # BF16 and every block-quantised type: bytes
            dtype, items, dims = np.uint8, self.n_bytes, quant_shape_to_byte_shape(dims, self.tensor_type)
        return np.frombuffer(self.buffer, dtype=dtype, count=items, offset=self.offset).reshape(dims)


class GGUFHeader:
    """The metadata scalars (`fields`) and tensor index (`tensors`) of one GGUF file, its data memory-mapped."""

    def __init__(self, path: Path):
        import gguf

        with open(path, "rb") as f:
            self.buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        self.size = len(self.buffer)
        self.pos = 0
        if self.size < 24 or bytes(self.buffer[:4]) != b"GGUF":
            raise HeaderError("not a GGUF file (no GGUF magic)")
        self.pos = 4
        version = self._unpack("<I")
        if version not in (2, 3):
            raise HeaderError(f"GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        self._bound(n_kv, 13, "metadata entries")  # a key length, a type and a one-byte value at least
        self.fields: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string(keep=True)
            self.fields[key] = self._value(self._unpack("<I"), 0)
        self._bound(n_tensors, 24, "tensors")  # a name length, n_dims, a type and an offset at least
        entries = [self._tensor_entry(gguf) for _ in range(n_tensors)]
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):
            raise HeaderError("a tensor name appears twice in the index")
        alignment = self.fields.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise HeaderError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self.pos // alignment) * alignment
        self.tensors = [self._place(gguf, start, *e) for e in entries]

    # -- primitives, each bounded by the bytes left --------------------------------------------------------------

    def _unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > self.size:
            raise HeaderError(f"cut short at byte {self.pos} (the header claims more than the file holds)")
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += size
        return value

    def _bound(self, count: int, least: int, what: str) -> None:
        if count * least > self.size - self.pos:
            raise HeaderError(f"claims {count:,} {what}, more than its {self.size - self.pos:,} remaining bytes can hold")

    def _skip(self, n: int) -> None:
        if n > self.size - self.pos:
            raise HeaderError(f"a value of {n:,} bytes at byte {self.pos}, past the end of the file")
        self.pos += n

    def _string(self, keep: bool):
        n = self._unpack("<Q")
        start = self.pos
        self._skip(n)
        if not keep:
            return None
        try:
            return bytes(self.buffer[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise HeaderError(f"a string at byte {start} is not UTF-8") from e

    def _value(self, kind: int, depth: int):
        """A metadata value: scalars and short strings kept, arrays skipped (None), unknown types refused."""
        if kind in SCALARS:
            return self._unpack(SCALARS[kind])
        if kind == STRING:
            n = struct.unpack_from("<Q", self.buffer, self.pos)[0] if self.pos + 8 <= self.size else 0
            return self._string(keep=n <= MAX_KEPT_STRING)
        if kind == ARRAY:
            if depth >= MAX_DEPTH:
                raise HeaderError(f"arrays nested more than {MAX_DEPTH} deep")
            item, count = self._unpack("<I"), self._unpack("<Q")
            if item in SCALARS:
                size = struct.calcsize(SCALARS[item])
                self._bound(count, size, "array elements")
                self._skip(count * size)
            else:
                self._bound(count, 8 if item == STRING else 12, "array elements")
                for _ in range(count):  # strings and arrays: walked, one length at a time, nothing decoded
                    self._string(keep=False) if item == STRING else self._value(item, depth + 1)
            return None
        raise HeaderError(f"unknown metadata value type {kind} at byte {self.pos}")

    def _tensor_entry(self, gguf) -> tuple[str, object, tuple[int, ...], int]:
        name = self._string(keep=True)
        n_dims = self._unpack("<I")
        if not 1 <= n_dims <= 4:
            raise HeaderError(f"tensor {name}: {n_dims} dimensions (GGUF has 1 to 4)")
        shape = tuple(self._unpack("<Q") for _ in range(n_dims))
        raw = self._unpack("<I")
        try:
            kind = gguf.GGMLQuantizationType(raw)
        except ValueError:
            raise HeaderError(f"tensor {name}: unknown GGML type {raw}") from None
        return name, kind, shape, self._unpack("<Q")

    def _place(self, gguf, start: int, name: str, kind, shape: tuple[int, ...], offset: int) -> GGUFTensor:
        """The tensor with its bytes located: inside the file, a whole number of blocks per row."""
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        elements = 1
        for d in shape:
            elements *= d
        if shape[0] % block:
            raise HeaderError(f"tensor {name}: rows of {shape[0]} values are not whole {kind.name} blocks of {block}")
        n_bytes = elements // block * type_size
        if start + offset + n_bytes > self.size:
            raise HeaderError(f"tensor {name}: its {n_bytes:,} bytes at offset {offset:,} pass the end of the file")
        return GGUFTensor(name, kind, shape, start + offset, n_bytes, self.buffer)
