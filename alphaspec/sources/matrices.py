"""Tensor names -> (layer, module type, matrix view) for the model families users bring.

Each checkpoint tensor becomes one or more `MatrixSpec`s (fused q/k/v, gate/up and MoE expert
tensors are split) or a `Skipped` entry with its reason. Nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from alphaspec.sources.checkpoint import SourceError, TensorInfo

# att.kv: a key/value projection that is neither k nor v alone (DeepSeek's compressed-latent kv_a_proj).
BLOCK_MODULES = ("att.q", "att.k", "att.v", "att.kv", "att.o", "mlp.gate", "mlp.up", "mlp.down")
FUSED_MODULES = ("att.qkv", "mlp.gate_up", "att.kv_b")
MODULE_TYPES = (*BLOCK_MODULES, *FUSED_MODULES, "embed", "lm_head", "other")
CONV1D_MODEL_TYPES = {"gpt2", "imagegpt", "decision_transformer"}
_CONV1D_NAMES = re.compile(r"(?:^|\.)(?:c_attn|q_attn|c_proj|c_fc)$")

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)\.")
# (pattern on the name without its ".weight" suffix, module type); the first match wins.
_RULES = [(re.compile(p), m) for p, m in [
    (r"(?:^|\.)(?:block_sparse_moe|mlp|moe|feed_forward)\.(?:gate|router)$", "other"),  # MoE router
    (r"(?:^|\.)DenseReluDense\.wi_0$", "mlp.gate"),  # T5
    (r"(?:^|\.)DenseReluDense\.wi(?:_1)?$", "mlp.up"),
    (r"(?:^|\.)DenseReluDense\.wo$", "mlp.down"),
    (r"(?:^|\.)(?:SelfAttention|EncDecAttention)\.o$", "att.o"),
    (r"(?:^|\.)(?:q_a_proj|q_b_proj)$", "att.q"),  # DeepSeek multi-head latent attention
    (r"(?:^|\.)kv_a_proj_with_mqa$", "att.kv"),
    (r"(?:^|\.)kv_b_proj$", "att.kv_b"),
    (r"(?:^|\.)(?:c_attn|query_key_value|qkv_proj|W_pack|Wqkv|in_proj_weight)$", "att.qkv"),
    (r"(?:^|\.)gate_up_proj$", "mlp.gate_up"),
    (r"(?:^|\.)(?:q_proj|query|wq|q)$", "att.q"),
    (r"(?:^|\.)(?:k_proj|key|wk|k)$", "att.k"),
    (r"(?:^|\.)(?:v_proj|value|wv|v)$", "att.v"),
    (r"(?:^|\.)(?:o_proj|out_proj|wo|attention\.output\.dense|attn\.c_proj|attention\.dense|"
     r"self_attention\.dense|attn\.proj)$", "att.o"),
    (r"(?:^|\.)(?:gate_proj|w1)$", "mlp.gate"),
    (r"(?:^|\.)(?:up_proj|w3|fc1|fc_in|c_fc|dense_h_to_4h|intermediate\.dense)$", "mlp.up"),
    (r"(?:^|\.)(?:down_proj|w2|fc2|fc_out|mlp\.c_proj|dense_4h_to_h|output\.dense)$", "mlp.down"),
    (r"(?:^|\.)(?:embed_tokens|tok_embeddings|wte|wpe|word_embeddings|position_embeddings|"
     r"token_type_embeddings|embed_in|embed_positions|embeddings)$", "embed"),
    (r"(?:^|\.)(?:lm_head|embed_out)$|^output$", "lm_head"),
]]


@dataclass(eq=False)
class MatrixSpec:
    """One matrix to analyse: a view (expert slice, transpose, row subset) of one checkpoint tensor."""

    name: str
    tensor: str
    layer: int | None
    module: str
    rows: int
    cols: int
    expert: int | None = None
    transpose: bool = False
    rows_sel: torch.Tensor | slice | None = None
    stacked: bool = False  # the tensor is [experts, ...] and this matrix is t[expert]
    stack: str | None = None  # the tower or stack of blocks: encoder, decoder, vision, text, audio

    def extract(self, t: torch.Tensor) -> torch.Tensor:
        """The (rows, cols) matrix, as nn.Linear sees it, from the tensor as stored."""
        if self.stacked:
            t = t[self.expert]
        if self.transpose:
            t = t.T
        return t if self.rows_sel is None else t[self.rows_sel]


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass
class Plan:
    """Matrices to analyse grouped per tensor, what is skipped and why, and notes on choices made."""

    matrices: list[MatrixSpec] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def module_type(name: str) -> str:
    base = name.removesuffix(".weight")
    return next((m for pattern, m in _RULES if pattern.search(base)), "other")


_TOWERS = [(re.compile(r"(?:^|\.)(?:vision_tower|vision_model|vision_encoder|visual)\."), "vision"),
           (re.compile(r"(?:^|\.)(?:audio_tower|audio_model|audio_encoder)\."), "audio"),
           (re.compile(r"(?:^|\.)(?:language_model|text_model)\."), "text")]
_STACK = re.compile(r"(?:^|\.)(encoder|decoder)\.")


def stack_of(name: str) -> str | None:
    """Which tower or stack of blocks a tensor belongs to (vision, audio, text; else encoder or decoder),
    so that block 3 of an encoder and block 3 of a decoder are never taken for the same layer."""
    tower = next((label for pattern, label in _TOWERS if pattern.search(name)), None)
    if tower:
        return tower
    match = _STACK.search(name)
    return match.group(1) if match else None


def block_place(name: str) -> tuple:
    """Where a tensor sits, whatever prefix a model adds: (stack, layer, path inside the block)."""
    match = _LAYER.search(name)
    return (stack_of(name), int(match.group(1)), name[match.end():]) if match else (None, None, name)


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


class ModelConfigError(SourceError):
    """A model config value that cannot be used; the caller names the file it came from."""


def config_int(config: dict, *keys: str) -> int | None:
    """The first of `keys` that config.json sets, as a positive integer; a value of another kind is an error."""
    key = next((k for k in keys if config.get(k) is not None), None)
    if key is None:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelConfigError(f"{key} is {value!r}, not a positive integer")
    return value


def _heads(config: dict) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head dim) from a HF config, or None when it does not say."""
    nh = config_int(config, "num_attention_heads", "n_head", "num_heads")
    hidden = config_int(config, "hidden_size", "n_embd", "d_model")
    if not nh or not hidden:
        return None
    nkv = config_int(config, "num_key_value_heads", "num_kv_heads", "n_head_kv")
    if config.get("model_type") == "falcon" and not config.get("new_decoder_architecture"):
        nkv = None  # num_kv_heads only applies to the new architecture; older Falcon has 1 (multi-query) or nh
    if nkv is None:
        nkv = 1 if config.get("multi_query") else nh
    if nh % nkv:
        raise ModelConfigError(f"{nh} attention heads are not a multiple of {nkv} key/value heads")
    return nh, nkv, config_int(config, "head_dim") or hidden // nh


# How each family lays out the rows of its fused q/k/v projection (from its transformers modeling code):
# contiguous [q | k | v]; per_head [q k v] per head; grouped [q.. k v] per key/value group (Falcon's new
# architecture); codegen: 4 groups of [q v k]. A family not listed is kept whole, never guessed.
_QKV_LAYOUTS = {"gpt_neox": "per_head", "bloom": "per_head", "phi3": "contiguous", "phimoe": "contiguous",
                "gpt2": "contiguous", "gpt_bigcode": "contiguous", "mpt": "contiguous", "dbrx": "contiguous",
                "baichuan": "contiguous", "codegen": "codegen"}
CODEGEN_GROUPS = 4  # CodeGenAttention's fixed mp_num


def _qkv_layout(config: dict) -> str | None:
    kind = config.get("model_type", "")
    if kind in ("falcon", "RefinedWeb", "RefinedWebModel"):
        if config.get("new_decoder_architecture"):
            return "grouped"
        return "contiguous" if config.get("multi_query", True) else "per_head"
    return _QKV_LAYOUTS.get(kind)


def qkv_parts(info: TensorInfo, rows: int, cols: int, config: dict) -> list[tuple[str, torch.Tensor | slice]] | str:
    """Row selections of q, k and v inside a fused projection, or why they cannot be known."""
    if info.name.endswith("in_proj_weight") and rows == 3 * cols:  # torch.nn.MultiheadAttention: [q; k; v]
        return [("q", slice(0, cols)), ("k", slice(cols, 2 * cols)), ("v", slice(2 * cols, rows))]
    if not config.get("model_type"):
        if info.name.endswith("c_attn.weight") and rows == 3 * cols:  # GPT-2's name: equal thirds
            third = rows // 3
            return [("q", slice(0, third)), ("k", slice(third, 2 * third)), ("v", slice(2 * third, rows))]
        return "its row layout differs between families; config.json with a known model_type is needed"
    layout = _qkv_layout(config)
    if layout is None:
        return f"the fused row layout of model_type {config['model_type']!r} is not known to alphaspec"
    heads = _heads(config)
    if heads is None:
        return "config.json with the head counts is needed to split it"
    nh, nkv, hd = heads
    if layout in ("per_head", "codegen"):
        if rows != 3 * nh * hd:
            return f"{rows} rows do not match 3x{nh} heads of size {hd}"
        if layout == "codegen":
            idx = torch.arange(rows).view(CODEGEN_GROUPS, 3, rows // (3 * CODEGEN_GROUPS))
            return [(p, idx[:, i].flatten()) for i, p in enumerate("qvk")]
        idx = torch.arange(rows).view(nh, 3, hd)
        return [(p, idx[:, i].flatten()) for i, p in enumerate("qkv")]
    if rows != (nh + 2 * nkv) * hd:
        return f"{rows} rows do not match {nh} q + 2x{nkv} kv heads of size {hd}"
    if layout == "grouped":
        idx = torch.arange(rows).view(nkv, nh // nkv + 2, hd)
        return [("q", idx[:, :-2].flatten()), ("k", idx[:, -2].flatten()), ("v", idx[:, -1].flatten())]
    q, kv = nh * hd, nkv * hd
    return [("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, rows))]


def kv_b_parts(rows: int, config: dict) -> list[tuple[str, torch.Tensor]] | str:
    """Rows of k (no-rope part) and v inside DeepSeek's kv_b_proj: per head [k_nope | v]."""
    nh = config_int(config, "num_attention_heads")
    k, v = config_int(config, "qk_nope_head_dim"), config_int(config, "v_head_dim")
    if not (nh and k and v):
        return "config.json with num_attention_heads, qk_nope_head_dim and v_head_dim is needed to split it"
    if rows != nh * (k + v):
        return f"{rows} rows do not match {nh} heads of {k} + {v}"
    idx = torch.arange(rows).view(nh, k + v)
    return [("k", idx[:, :k].flatten()), ("v", idx[:, k:].flatten())]


def gate_up_parts(rows: int, config: dict) -> list[tuple[str, slice]]:
    """Rows of gate and up inside a fused gate/up projection: halves (transformers' `chunk(2)`), or
    interleaved (GPT-OSS: gate = [..., ::2], up = [..., 1::2])."""
    if config.get("model_type") == "gpt_oss":
        return [("gate", slice(0, rows, 2)), ("up", slice(1, rows, 2))]
    half = rows // 2
    return [("gate", slice(0, half)), ("up", slice(half, rows))]


def _uses_conv1d(tensors: Iterable[TensorInfo], config: dict) -> bool:
    """GPT-2-style checkpoints store Conv1D weights as (in, out); detect them by config or c_attn's shape."""
    if config.get("model_type"):
        return config["model_type"] in CONV1D_MODEL_TYPES
    return any(t.name.endswith("c_attn.weight") and len(t.shape) == 2 and t.shape[1] == 3 * t.shape[0]
               for t in tensors)


def _skip_reason(info: TensorInfo) -> str | None:
    if info.dtype.startswith("non-tensor"):
        return f"not a tensor ({info.dtype.removeprefix('non-tensor ')})"
    if info.dtype.startswith("tied to "):
        return f"{info.dtype} (the same weights, analysed once)"
    if info.dtype.startswith(("packed", "scale-only")):
        return f"{info.dtype} dtype (block-quantised data, not a weight matrix; dequantise the checkpoint to analyse it)"
    if not info.is_float:
        return f"non-float dtype {info.dtype}"
    if len(info.shape) == 0:
        return "scalar"
    if len(info.shape) == 1:
        return "1-D tensor (bias or norm gain)"
    if 0 in info.shape:
        return f"empty tensor {list(info.shape)}"
    if len(info.shape) == 3 and "experts" in info.name:
        return None
    if len(info.shape) > 2:
        return f"{len(info.shape)}-D tensor {list(info.shape)}, not a matrix (conv kernels and stacked tensors are not analysed)"
    if re.search(r"(?:^|[._])bias$", info.name):
        return f"bias {list(info.shape)}"  # e.g. stacked per-expert biases [experts, out]
    return None


def _split(spec: MatrixSpec, info: TensorInfo, config: dict, notes: list[str]) -> list[MatrixSpec]:
    """Split a fused q/k/v or gate/up matrix into its parts (or keep it whole with a note)."""
    if spec.module == "mlp.gate_up":
        if spec.rows % 2:
            notes.append(f"{spec.name}: kept whole as mlp.gate_up (odd row count {spec.rows})")
            return [spec]
        parts = gate_up_parts(spec.rows, config)
    else:
        parts = kv_b_parts(spec.rows, config) if spec.module == "att.kv_b" else qkv_parts(info, spec.rows, spec.cols,
                                                                                          config)
        if isinstance(parts, str):
            notes.append(f"{spec.name}: kept whole as {spec.module} ({parts})")
            return [spec]
    out = []
    for label, sel in parts:
        n = sel.numel() if torch.is_tensor(sel) else len(range(sel.start, sel.stop, sel.step or 1))
        part_label = f"{spec.expert},{label}" if spec.stacked else label
        out.append(MatrixSpec(f"{spec.tensor}[{part_label}]", spec.tensor, spec.layer,
                              "mlp." + label if spec.module == "mlp.gate_up" else "att." + label,
                              n, spec.cols, spec.expert, spec.transpose, sel, spec.stacked, spec.stack))
    return out


def _expert_transposed(module: str, shape: tuple[int, ...], hidden: int | None) -> bool:
    """Fused expert tensors are taken as [experts, out, in]; a config's hidden size detects [experts, in, out]."""
    if not hidden or shape[1] == shape[2]:
        return False
    if module == "mlp.down":
        return shape[1] != hidden and shape[2] == hidden
    return shape[2] != hidden and shape[1] == hidden


def plan(tensors: list[TensorInfo], config: dict | None = None, *, split_fused: bool = True,
         include: Iterable[str] = (), exclude: Iterable[str] = ()) -> Plan:
    """Map every tensor header to the matrices to analyse, or to a skip with its reason."""
    config = config or {}
    includes = [re.compile(p) for p in include]
    excludes = [re.compile(p) for p in exclude]
    conv1d = _uses_conv1d(tensors, config)
    hidden = config_int(config, "hidden_size", "n_embd", "d_model")
    out = Plan()
    seen: set[str] = set()
    for info in tensors:
        if info.name in seen:
            out.skipped.append(Skipped(info.name, f"duplicate name (again in {info.file.name})"))
            continue
        seen.add(info.name)
        hit = next((p.pattern for p in excludes if p.search(info.name)), None)
        if hit is not None:
            out.skipped.append(Skipped(info.name, f"excluded by pattern {hit!r}"))
            continue
        if includes and not any(p.search(info.name) for p in includes):
            out.skipped.append(Skipped(info.name, "not matched by any include pattern"))
            continue
        reason = _skip_reason(info)
        if reason:
            out.skipped.append(Skipped(info.name, reason))
            continue
        module, layer = module_type(info.name), layer_index(info.name)
        if len(info.shape) == 3:
            transpose = _expert_transposed(module, info.shape, hidden)
            rows, cols = (info.shape[2], info.shape[1]) if transpose else info.shape[1:]
            specs = [MatrixSpec(f"{info.name}[{e}]", info.name, layer, module, rows, cols, e, transpose,
                                stacked=True, stack=stack_of(info.name)) for e in range(info.shape[0])]
        else:
            transpose = conv1d and bool(_CONV1D_NAMES.search(info.name.removesuffix(".weight")))
            rows, cols = (info.shape[1], info.shape[0]) if transpose else info.shape
            specs = [MatrixSpec(info.name, info.name, layer, module, rows, cols, expert_of(info.name), transpose,
                                stack=stack_of(info.name))]
        for spec in specs:
            if split_fused and spec.module in FUSED_MODULES:
                out.matrices.extend(_split(spec, info, config, out.notes))
            else:
                out.matrices.append(spec)
    return out


def expert_of(name: str) -> int | None:
    """The MoE expert index in a per-expert tensor name, e.g. `...experts.3.w1.weight` -> 3."""
    match = _EXPERT.search(name)
    return int(match.group(1)) if match else None
