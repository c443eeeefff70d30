"""In-memory sources: a live `nn.Module` or a state dict, analysed like a checkpoint on disk.

The weights are never copied whole: each matrix is read where it lives (a view of the parameter)
and solved there, one batch at a time, exactly as a checkpoint's tensors are. A live PEFT LoRA model is
read as what it computes: each target matrix W + s·B·A under its base name (the rows of the base model,
those of `merge_and_unload()`), or, asked for, the updates s·B·A alone, with the adapter files' arithmetic
(sources/deltas.lora_update).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from alphaspec.errors import UsageError
from alphaspec.sources.checkpoint import Checkpoint, SourceError, TensorInfo, dtype_name
from alphaspec.sources.deltas import DENSE_ENTRIES, PEFT_PREFIX, lora_update

MEMORY = Path("<memory>")  # the one "file" of an in-memory checkpoint


def model_config(model: torch.nn.Module) -> dict:
    """The config a Hugging Face model carries (`model.config`), as config.json would hold it; {} if none."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if hasattr(config, "hf_config"):  # alphaspec's own LLaMA
        return config.hf_config()
    return dict(config) if isinstance(config, dict) else {}


def is_in_memory(source: object) -> bool:
    """Whether `source` is a model or a state dict rather than a path, hub id or example name."""
    return isinstance(source, torch.nn.Module | Mapping)


def describe(source: object) -> str:
    """How an in-memory source is named in the table's attrs and the summary (never its whole repr)."""
    if isinstance(source, torch.nn.Module):
        return f"<{type(source).__name__} in memory>"
    return f"<state dict of {len(source)} tensors>"


class MemoryCheckpoint(Checkpoint):
    """A Checkpoint whose tensors are live tensors; `read` hands out detached views of them."""

    def __init__(self, source: str, tensors: dict[str, torch.Tensor], config: dict):
        super().__init__(source, [MEMORY], [TensorInfo(n, tuple(t.shape), dtype_name(t), MEMORY)
                                            for n, t in tensors.items()], config, config_file="model.config")
        self.live = tensors

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            yield name, self.live[name].detach()

    @property
    def device(self) -> torch.device | None:
        """The one device every tensor lives on, or None when they are spread over several."""
        devices = {t.device for t in self.live.values()}
        return devices.pop() if len(devices) == 1 else None


def memory_checkpoint(source: torch.nn.Module | Mapping, config: dict | None = None,
                      updates: bool = False) -> MemoryCheckpoint:
    """The tensors of a model (its state dict without aliases: a tied weight counts once, under its first
    name, as `save_pretrained` keeps it) or of a state dict, with the model's config unless one is given. A
    live PEFT model: its LoRA targets as W + s·B·A (with `updates`, s·B·A alone; see PeftCheckpoint)."""
    if is_peft_model(source):
        return PeftCheckpoint(source, model_config(source) if config is None else config, updates)
    if updates:
        raise UsageError(f"{describe(source)}: updates=True is for a live PEFT model; for a fine-tune against its "
                         "base, save both and give base=")
    if isinstance(source, torch.nn.Module):
        state, config = source.state_dict(keep_vars=True), model_config(source) if config is None else config
    else:
        state = source
    return MemoryCheckpoint(describe(source), _unaliased(describe(source), state.items()), dict(config or {}))


def _unaliased(name: str, items) -> dict[str, torch.Tensor]:
    """Named tensors, each checked, a tensor sharing another's storage (a tied weight) kept under its first name."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, value in items:
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise SourceError(f"{name}: {key!r} is not a tensor named by a string (a state dict maps names to tensors)")
        if value.device.type == "meta":
            raise SourceError(f"{name}: {key} is on the meta device (no values); load the weights first")
        if hasattr(value, "full_tensor"):
            raise SourceError(f"{name}: {key} is a sharded DTensor; analyse it inside the job with AlphaDecay's "
                              "hook, or save the model and analyse the checkpoint")
        alias = (value.device, value.data_ptr(), tuple(value.shape), value.stride(), value.dtype)
        if value.numel() and alias in seen:
            continue
        seen.add(alias)
        tensors[key] = value
    return tensors


# -- live PEFT models ----------------------------------------------------------------------------------------------
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector",
              ".original_module.")  # a PEFT model's own tensors, not the model's


def is_peft_model(source: object) -> bool:
    """Whether `source` is a live PEFT model (a PeftModel, or a model with LoRA layers injected)."""
    return isinstance(source, torch.nn.Module) and isinstance(getattr(source, "peft_config", None), dict)


class PeftCheckpoint(MemoryCheckpoint):
    """A live PEFT LoRA model as a checkpoint: the base model's tensors under their own names, each LoRA target
    W + s·B·A (what the model computes; `merge_and_unload()`'s weights, added in float64), or with `updates`
    the targets' s·B·A alone (the rows of the adapter directory it would save). The active adapter only;
    DoRA, LoRA on embeddings or convolutions, and several active adapters are refused in one line."""

    def __init__(self, model: torch.nn.Module, config: dict, updates: bool = False):
        name = describe(model)
        self.adapter = _active_adapter(model, name)
        self.layers = {_base_name(n) + ".weight": m for n, m in model.named_modules() if _is_lora_target(m, self.adapter)}
        if not self.layers:
            raise SourceError(f"{name}: a PEFT model without LoRA layers for its adapter {self.adapter!r}")
        for n, m in self.layers.items():
            _check_lora_layer(name, n, m, self.adapter)
        self.updates = updates
        if updates:
            tensors = {n: m.base_layer.weight for n, m in self.layers.items()}
        else:
            active = f".modules_to_save.{self.adapter}."
            state = [(_base_name(k.replace(active, ".")), v) for k, v in model.state_dict(keep_vars=True).items()
                     if not any(part in k for part in LORA_PARTS) and (".modules_to_save." not in k or active in k)]
            tensors = _unaliased(name, state)
        super().__init__(name, tensors, dict(config or {}))
        self.cores = {n for n, t in tensors.items() if updates and t.shape.numel() > DENSE_ENTRIES}
        self.notes.append(f"the LoRA targets of adapter {self.adapter!r} are " + (
            "its updates (lora_alpha / r)·B·A" if updates else "W + (lora_alpha / r)·B·A, as the model computes them"))
        if updates:
            self.content = "adapter"

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        for name in names:
            layer = self.layers.get(name)
            if layer is None:
                yield name, self.live[name].detach()
                continue
            delta = lora_update(layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight,
                                layer.scaling[self.adapter], core=name in self.cores)
            if getattr(layer, "fan_in_fan_out", False) and name not in self.cores:
                delta = delta.T  # the base weight is stored (in, out), as GPT-2's Conv1D keeps it
            w = layer.base_layer.weight.detach()
            if self.updates:
                yield name, delta.to(w.device)
            elif self.adapter in getattr(layer, "merged_adapters", []):
                yield name, w  # merged in place already: the base weight is W + s·B·A
            else:
                yield name, w.double() + delta.to(w.device)


def _base_name(name: str) -> str:
    """A PEFT model's name for a module or tensor, as the base model names it."""
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer", "")


def _is_lora_target(module: torch.nn.Module, adapter: str) -> bool:
    lora_a = getattr(module, "lora_A", None)
    return isinstance(lora_a, torch.nn.ModuleDict) and adapter in lora_a and hasattr(module, "base_layer")


def _active_adapter(model: torch.nn.Module, name: str) -> str:
    active = list(getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", "default")])
    if len(active) != 1:
        raise SourceError(f"{name}: {len(active)} active adapters ({', '.join(map(str, active))}); analyse one: "
                          "model.set_adapter(NAME)")
    config = model.peft_config.get(active[0])
    kind = str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "LORA")))
    if kind.upper() != "LORA":
        raise SourceError(f"{name}: a {kind} adapter; alphaspec reads LoRA adapters (merge it with peft and analyse "
                          "the merged model)")
    if getattr(config, "use_dora", False):
        raise SourceError(f"{name}: a DoRA adapter: its update depends on the base weights' norms, which alphaspec "
                          "does not compute; analyse model.merge_and_unload()")
    return str(active[0])


def _check_lora_layer(name: str, weight: str, layer: torch.nn.Module, adapter: str) -> None:
    """A LoRA layer alphaspec reads exactly: a Linear's (2-D weight, factors of its shape)."""
    base = getattr(layer.base_layer, "weight", None)
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    if base is None or base.ndim != 2 or a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise SourceError(f"{name}: {weight} is a LoRA layer on a {type(layer.base_layer).__name__}; alphaspec "
                          "reads LoRA on Linear layers (analyse model.merge_and_unload())")
    out, inp = (base.shape[1], base.shape[0]) if getattr(layer, "fan_in_fan_out", False) else tuple(base.shape)
    if (b.shape[0], a.shape[1]) != (out, inp):
        raise SourceError(f"{name}: {weight} is {list(base.shape)}, but its LoRA factors make a "
                          f"{[b.shape[0], a.shape[1]]} update")
