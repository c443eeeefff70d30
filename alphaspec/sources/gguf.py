"""GGUF checkpoints (llama.cpp's format): headers under Hugging Face names, tensors dequantised to float32.

GGUF names tensors by role (`blk.3.attn_q.weight`) whatever the architecture; they are mapped to the
HF names of the architecture the file declares, so the module map, tables and decay maps read them
as they read a safetensors checkpoint. Quantised tensors (Q8_0, Q4_K, ...) are dequantised row block
by row block with the `gguf` package's own dequantisers (the optional extra `alphaspec[gguf]`).
llama.cpp's converter permutes the rows of q and k of the llama architecture for its rotary layout;
that permutation is undone on reading (`hf_rows`), so a GGUF matrix is the Hugging Face matrix row for
row (whole-matrix spectra do not see it, but row windows and element-wise comparisons do).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch

from alphaspec.digests import bytes_key, source_digest
from alphaspec.errors import AlphaspecError, os_reason
from alphaspec.sources import gguf_dequant
from alphaspec.sources.gguf_dequant import DEQUANTISERS, dequantise
from alphaspec.sources.gguf_header import GGUFHeader, HeaderError

GGUF_SUFFIX = ".gguf"
# GGML types whose bytes are the values (BF16 is read through int16); all others are block-quantised
PLAIN_TYPES = {"F32": "float32", "F16": "float16", "F64": "float64", "I8": "int8", "I16": "int16", "I32": "int32",
               "I64": "int64"}
DEQUANT_ELEMENTS = 1 << 24  # float32 values dequantised per block of rows (64 MiB)
_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")

# GGUF architecture -> the HF model_type whose names the tensors take (and whose fused layouts apply).
ARCHITECTURES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "qwen2moe": "qwen2_moe",
                 "qwen3moe": "qwen3_moe", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text",
                 "phi3": "phi3", "bert": "bert"}
_DECODER_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_DECODER_BLOCK = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
                  "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                  "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.gate_proj",
                  "ffn_up_exps": "mlp.experts.up_proj", "ffn_down_exps": "mlp.experts.down_proj",
                  "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
                  "ffn_down_shexp": "mlp.shared_expert.down_proj", "attn_norm": "input_layernorm",
                  "ffn_norm": "post_attention_layernorm", "post_attention_norm": "post_attention_layernorm",
                  "post_ffw_norm": "post_feedforward_layernorm"}
_BERT_TOP = {"token_embd": "embeddings.word_embeddings", "position_embd": "embeddings.position_embeddings",
             "token_types": "embeddings.token_type_embeddings", "token_embd_norm": "embeddings.LayerNorm"}
_BERT_BLOCK = {"attn_q": "attention.self.query", "attn_k": "attention.self.key", "attn_v": "attention.self.value",
               "attn_output": "attention.output.dense", "attn_output_norm": "attention.output.LayerNorm",
               "ffn_up": "intermediate.dense", "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm"}


class GGUFError(AlphaspecError):
    """A GGUF file that cannot be read, or a GGUF source without the `gguf` package."""


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise GGUFError("reading GGUF files needs the gguf package: pip install 'alphaspec[gguf]'") from err
    if not hasattr(gguf.ReaderField, "contents"):
        raise GGUFError("reading GGUF files needs gguf >= 0.16 (this one cannot decode metadata): pip install -U gguf")
    return gguf


def open_reader(file: Path):
    """The file's header (gguf_header: scalar metadata and the tensor index, bounded by the file's size; the
    data memory-mapped), kept for the next call on the same unchanged file (headers, then tensor data)."""
    try:
        stat = os.stat(file)
    except OSError as err:
        raise GGUFError(f"{file}: cannot open this GGUF file ({os_reason(err)})") from err
    return _cached_reader(str(file), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _cached_reader(file: str, mtime_ns: int, size: int) -> GGUFHeader:
    _gguf()
    try:
        return GGUFHeader(Path(file))
    except HeaderError as err:
        raise GGUFError(f"{file}: not a valid GGUF file ({err})") from err
    except OSError as err:
        raise GGUFError(f"{file}: cannot read this GGUF file ({os_reason(err)})") from err


def field(reader: GGUFHeader, key: str):
    """A metadata scalar or short string, None when the file does not set it (arrays are not decoded)."""
    return reader.fields.get(key)


def hf_name(gguf_name: str, arch: str) -> str:
    """The HF name of a GGUF tensor for architecture `arch`; names with no counterpart are kept as they are."""
    base, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return gguf_name
    bert = arch == "bert"
    match = _BLOCK.match(base)
    if match is None:
        part = (_BERT_TOP if bert else _DECODER_TOP).get(base)
        return f"{part}.{suffix}" if part else gguf_name
    layer, role = match.groups()
    part = (_BERT_BLOCK if bert else _DECODER_BLOCK).get(role)
    if part is None:
        return gguf_name
    if arch == "phi3" and role == "ffn_up":
        part = "mlp.gate_up_proj"  # phi3 stores gate and up fused, gate first
    if arch in ("gemma2", "gemma3") and role == "ffn_norm":
        part = "pre_feedforward_layernorm"  # the norm before the MLP; post_attention_norm is the one after attention
    prefix = f"encoder.layer.{layer}" if bert else f"model.layers.{layer}"
    return f"{prefix}.{part}.{suffix}"


PERMUTED_ROWS = {"llama"}  # architectures whose q/k rows llama.cpp's converter permutes (LlamaModel.permute)


def hf_rows(name: str, w: torch.Tensor, config: dict) -> torch.Tensor:
    """A GGUF q or k matrix with llama.cpp's rotary row permutation undone: the converter stores
    W.reshape(heads, 2, d/2, in).swapaxes(1, 2) per head (heads = the key/value heads for k); this is
    its inverse. Other tensors and architectures are returned as they are, and so are q and k of a file
    whose metadata gives no head count (`unpermuted_note` says so; their spectra are the same)."""
    if config.get("gguf_architecture") not in PERMUTED_ROWS or not name.endswith(("q_proj.weight", "k_proj.weight")):
        return w
    heads = config.get("num_attention_heads")
    if name.endswith("k_proj.weight"):
        heads = config.get("num_key_value_heads") or heads
    if not heads:
        return w
    if w.ndim != 2 or w.shape[0] % (2 * heads):
        raise GGUFError(f"{name}: {w.shape[0]} rows do not split into {heads} heads of two rotary halves")
    return w.reshape(heads, w.shape[0] // heads // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)


def unpermuted_note(config: dict) -> str | None:
    """The note for a llama GGUF whose q/k rows stay in llama.cpp's order (no head count to undo it with)."""
    if config.get("gguf_architecture") in PERMUTED_ROWS and not config.get("num_attention_heads"):
        return ("the GGUF metadata gives no attention head count, so q and k keep llama.cpp's rotary row order "
                "(their spectra are unchanged; row windows and element-wise comparisons are not)")
    return None


def model_config(reader, file: Path) -> dict:
    """A HF-style config (model_type, layers, widths, heads) from the GGUF metadata."""
    arch = field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise GGUFError(f"{file}: the GGUF metadata names no architecture (general.architecture)")
    keys = {"num_hidden_layers": "block_count", "hidden_size": "embedding_length",
            "intermediate_size": "feed_forward_length", "num_attention_heads": "attention.head_count",
            "num_key_value_heads": "attention.head_count_kv", "head_dim": "attention.key_length",
            "num_experts": "expert_count"}
    config = {"model_type": ARCHITECTURES.get(arch, arch), "gguf_architecture": arch}
    for hf_key, gguf_key in keys.items():
        value = field(reader, f"{arch}.{gguf_key}")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            config[hf_key] = value  # per-layer lists (some hybrids) are left out: the shapes still tell
    return config


def split_files(file: Path, reader) -> list[Path]:
    """All files of a split GGUF model (llama.cpp's `NAME-0000i-of-0000n.gguf`) given any one of them, each
    checked to be a part of the same model (its architecture, part count and part number)."""
    count = field(reader, "split.count")
    match = _SPLIT.match(file.name)
    if not isinstance(count, int) or count <= 1:
        return [file]
    if match is None:
        raise GGUFError(f"{file}: one of {count} split GGUF files, but its name does not say which "
                        "(llama.cpp names them NAME-00001-of-0000N.gguf)")
    if count != int(match["count"]):
        raise GGUFError(f"{file}: its metadata says {count:,} split files, its name {int(match['count'])}")
    files = [file.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise GGUFError(f"{file}: split GGUF model of {count} files, missing: {', '.join(missing)}")
    arch = field(reader, "general.architecture")
    for i, part in enumerate(files):
        other = open_reader(part)
        seen = (field(other, "general.architecture"), field(other, "split.count"), field(other, "split.no"))
        if seen != (arch, count, i):
            raise GGUFError(f"{part}: not part {i + 1} of the same model as {file.name} (architecture, split "
                            f"count, part number: {seen[0]!r}, {seen[1]!r}, {seen[2]!r}; expected {arch!r}, {count}, "
                            f"{i})")
    return files


def directory_model(folder: Path) -> list[Path] | None:
    """The GGUF files of a directory when they are one model (one file, or one split set); None without any."""
    found = sorted(p for p in folder.glob("*" + GGUF_SUFFIX) if p.is_file())
    if not found:
        return None
    stems = {m["stem"] if (m := _SPLIT.match(p.name)) else p.name for p in found}
    if len(stems) > 1:
        raise GGUFError(f"{folder}: holds {len(stems)} GGUF models ({', '.join(sorted(stems)[:3])}"
                        f"{', ...' if len(stems) > 3 else ''}); pass the path of the one to analyse")
    return split_files(found[0], open_reader(found[0]))


def hub_patterns(tag: str) -> list[str]:
    """snapshot_download patterns for `org/name:TAG`: one file by name, or every GGUF whose name holds the
    quantisation tag (as llama.cpp's `-hf org/name:Q4_K_M`), in the spellings a repo may use."""
    if tag.endswith(GGUF_SUFFIX):
        return ["*" + tag]
    return sorted({f"*{t}*{GGUF_SUFFIX}" for t in (tag, tag.upper(), tag.lower())})


def pick_from_snapshot(folder: Path, tag: str, repo: str) -> Path:
    """The GGUF model a tag names inside a hub snapshot: its file, or the first part of its split set."""
    wanted = tag.lower()
    found = sorted(p for p in folder.rglob("*" + GGUF_SUFFIX)
                   if (p.name.lower() == wanted if wanted.endswith(GGUF_SUFFIX) else wanted in p.name.lower()))
    if not found:
        raise GGUFError(f"{repo}: no GGUF file matching {tag!r} in the hub repo (or in the cache, offline)")
    models = {(p.parent, m["stem"] if (m := _SPLIT.match(p.name)) else p.name) for p in found}
    if len(models) > 1:
        names = sorted(str(p.relative_to(folder)) for p in found)
        raise GGUFError(f"{repo}: {len(models)} GGUF models match {tag!r} ({', '.join(names[:4])}"
                        f"{', ...' if len(names) > 4 else ''}); name one file: {repo.split(':')[0]}:FILE.gguf")
    return found[0]


@cache
def readable(type_name: str) -> bool:
    """Whether the installed gguf package can dequantise tensors of this GGML type."""
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType[type_name]
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    try:
        gguf.quants.dequantize(np.zeros((1, size), dtype=np.uint8), qtype)
    except (NotImplementedError, ValueError, TypeError):
        return False
    return True


def stored_dtype(type_name: str) -> str:
    """The dtype a GGML type is analysed in (TensorInfo's spelling); quantised types dequantise to float32."""
    if type_name in PLAIN_TYPES:
        return PLAIN_TYPES[type_name]
    if type_name == "BF16":
        return "bfloat16"
    return "float32" if readable(type_name) else f"packed GGML {type_name} (no dequantiser in the installed gguf package)"


def read_tensors(file: Path, keys: dict[str, str], device: torch.device | None = None
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for {name: name in the file}, quantised tensors dequantised to float32.

    On a GPU, the types gguf_dequant knows are expanded there by torch (the raw blocks copied first: 4-8x
    fewer bytes); everything else by the gguf package on the CPU, whose single-threaded numpy code, unlike
    torch's thread pool, does not contend with the eigen-solver running beside the reader thread.
    """
    gguf = _gguf()
    by_key = _tensor_index(open_reader(file))
    for name, key in keys.items():
        t = by_key[key]
        kind, shape = t.tensor_type.name, tuple(int(d) for d in reversed(t.shape))
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            yield name, torch.from_numpy(data.view(np.int16).copy()).view(torch.bfloat16).reshape(shape)
        elif kind in PLAIN_TYPES:  # stored as they are read (IQ* names are quantised types)
            yield name, torch.from_numpy(data.copy()).reshape(shape)
        elif kind in DEQUANTISERS and device is not None and device.type == "cuda":
            raw = torch.from_numpy(data.copy()).to(device, non_blocking=True)
            yield name, dequantise(raw, kind, shape, max(1, DEQUANT_ELEMENTS // shape[-1]))
        else:
            yield name, torch.from_numpy(_dequantise(data, t.tensor_type, shape))


def blocks_key(file: Path, key: str, name: str, config: dict, device: torch.device | None = None) -> str | None:
    """The content key of a block-quantised tensor as stored, so the eigenvalue store can be asked before it is
    dequantised (None for the other types: they are keyed as read): BLAKE3 of its blocks, with its GGML type,
    shape and HF name, the model's config (hf_rows reads it) and the dequantiser that would expand it."""
    t = _tensor_index(open_reader(file))[key]
    kind = t.tensor_type.name
    if kind in PLAIN_TYPES or kind == "BF16" or not readable(kind):
        return None
    on_gpu = kind in DEQUANTISERS and device is not None and device.type == "cuda"
    header = f"gguf|{kind}|{tuple(int(d) for d in t.shape)}|{name}|{json.dumps(config, sort_keys=True, default=str)}|"
    return bytes_key(header + _dequantiser(on_gpu) + "|", np.ascontiguousarray(t.data).view(np.uint8).data)


@lru_cache(maxsize=4)
def _tensor_index(reader: GGUFHeader) -> dict:
    return {t.name: t for t in reader.tensors}


@cache
def _dequantiser(on_gpu: bool) -> str:
    """Which code expands the blocks: torch's (gguf_dequant, by its source) on a GPU, else the gguf package's."""
    from importlib.metadata import version

    return f"torch {source_digest(gguf_dequant.__file__)}" if on_gpu else f"gguf {version('gguf')}"


def _dequantise(data: np.ndarray, qtype, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 values of block-quantised rows, a block of rows at a time (memory stays one output)."""
    from gguf.quants import dequantize

    rows = data.reshape(-1, data.shape[-1])
    out = np.empty((rows.shape[0], shape[-1]), dtype=np.float32)
    step = max(1, DEQUANT_ELEMENTS // shape[-1])
    for lo in range(0, rows.shape[0], step):
        out[lo:lo + step] = dequantize(rows[lo:lo + step], qtype)
    return out.reshape(shape)


def tensor_headers(file: Path, reader, arch: str) -> list[tuple[str, str, tuple[int, ...], str, str]]:
    """(HF name, name in the file, shape as PyTorch orders it, dtype, GGML type) of every tensor of one file."""
    out = []
    for t in reader.tensors:
        qtype = t.tensor_type.name
        shape = tuple(int(d) for d in reversed(t.shape))
        out.append((hf_name(t.name, arch), t.name, shape, stored_dtype(qtype), qtype))
    return out


def quantisation_note(quants: dict[str, str]) -> str | None:
    """The summary's note on quantised matrices: what was analysed, and what quantisation does to a spectrum."""
    kinds = sorted({q for q in quants.values() if q not in ("F32", "F16", "BF16", "F64")})
    if not kinds:
        return None
    n = sum(q in kinds for q in quants.values())
    return (f"{n} tensor(s) are stored quantised ({', '.join(kinds)}) and were analysed dequantised: quantisation "
            "noise adds a flat, random-like floor under each spectrum's bulk, which raises alpha slightly with the "
            "median estimator and can move xmin-searching estimators more (docs/analyze.md, GGUF checkpoints)")
