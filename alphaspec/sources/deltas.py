"""What fine-tuning changed: W − W_base matched by name, and PEFT LoRA adapters as ΔW = s·B·A (or W_base + ΔW).

Each is a Checkpoint whose `read` computes the matrix as it is read, tensor by tensor, so the rest of the
engine (module map, batching, solver threads, progress) is the same as for a checkpoint on disk and
never two whole models are in memory. An adapter directory is what `peft` saves: adapter_config.json
(r, lora_alpha, rank_pattern, alpha_pattern, use_rslora) and adapter_model.safetensors with
`<module>.lora_A.weight` (r × in) and `<module>.lora_B.weight` (out × r); ΔW = (lora_alpha / r)·B·A,
with √r for rsLoRA.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import regex
import torch
from safetensors import safe_open

from alphaspec.errors import UsageError, first_line, parse_json
from alphaspec.sources.checkpoint import Checkpoint, SourceError, TensorInfo, open_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PATTERN_SECONDS = 1.0  # the time a rank_pattern or alpha_pattern key may take to match one module name
DENSE_ENTRIES = 1 << 24  # an adapter update larger than this is solved from its r×r core (low_rank_core)
MAX_LORA_SETTING = 1 << 20  # r and lora_alpha above this are not an adapter's (and overflow the arithmetic)
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def is_adapter(source: str | Path) -> bool:
    """Whether SOURCE is a local PEFT adapter directory."""
    path = Path(str(source)).expanduser()
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file()


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float64 stays float64; everything else is computed in float32 (bf16/fp16 differences are exact there)."""
    return t.double() if t.dtype == torch.float64 else t.float()


class DeltaCheckpoint(Checkpoint):
    """`ckpt` minus `base`, tensor by tensor: W − W_base for every tensor of `ckpt` (same names and shapes)."""

    def __init__(self, ckpt: Checkpoint, base: Checkpoint):
        super().__init__(f"{ckpt.source} - {base.source}", ckpt.files, ckpt.tensors, ckpt.config,
                         ckpt.notes + [f"each matrix is W - W_base, the base: {base.source}"], ckpt.config_file)
        self.ckpt, self.base = ckpt, base
        self.content = "delta"
        check_same_tensors(ckpt, base)
        self.base_file = {t.name: t.file for t in base.tensors}

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, delta, _ in self.read_versions(file, names, device):
            yield name, delta

    def read_versions(self, file: Path, names: list[str], device: torch.device | None = None
                      ) -> Iterator[tuple[str, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]:
        for name, w in self.ckpt.read(file, names, device):
            _, b = next(self.base.read(self.base_file[name], [name], device))
            b = b.to(w.device)
            yield name, _wide(w) - _wide(b), (b, w)


def check_same_tensors(ckpt: Checkpoint, base: Checkpoint) -> None:
    """Every float tensor of `ckpt` is in `base` with the same shape; one line naming the first that is not."""
    shapes = {t.name: t.shape for t in base.tensors}
    mine = [t for t in ckpt.tensors if t.is_float]
    missing = [t.name for t in mine if t.name not in shapes]
    if missing:
        raise SourceError(f"{ckpt.source}: {len(missing)} tensor(s) are not in the base {base.source}, e.g. "
                          f"{missing[0]} (a base of another model?)")
    differ = [t for t in mine if tuple(shapes[t.name]) != tuple(t.shape)]
    if differ:
        t = differ[0]
        raise SourceError(f"{ckpt.source}: {len(differ)} tensor(s) differ in shape from the base {base.source}, e.g. "
                          f"{t.name} {list(t.shape)} vs {list(shapes[t.name])} (exclude them with --exclude)")


class AdapterCheckpoint(Checkpoint):
    """A LoRA adapter as the matrices it adds: one (out, in) tensor ΔW = s·B·A per target module."""

    def __init__(self, source: str | Path, config: dict | None = None, base: Checkpoint | None = None):
        folder = Path(str(source)).expanduser()
        self.base = base  # the weights the update applies to, when given: its rows then compare the two
        self.lora = _read_adapter_config(folder / ADAPTER_CONFIG)
        weights = folder / ADAPTER_WEIGHTS
        self.pairs, shapes, dtypes, ranks = _lora_pairs(weights)
        self.scales = {name: self._scale(name, ranks[name], folder / ADAPTER_CONFIG) for name in self.pairs}
        self.cores = {n for n, (rows, cols) in shapes.items() if rows * cols > DENSE_ENTRIES}
        tensors = [TensorInfo(name, shapes[name], dtypes[name], weights) for name in self.pairs]
        super().__init__(str(source), [weights], tensors, dict(config or {}),
                         [f"each matrix is a LoRA update (lora_alpha / r)·B·A from {folder}"]
                         + ([f"{len(large)} update(s) over {DENSE_ENTRIES:,} entries solved from their r×r core "
                             "(exact spectrum, never the dense product; no --randomize or --farms columns)"]
                            if (large := [s for s in shapes.values() if s[0] * s[1] > DENSE_ENTRIES]) else []),
                         str(folder / ADAPTER_CONFIG), content="adapter")
        if base is not None:
            check_targets(base, self)
            self.base_file = {t.name: t.file for t in base.tensors}

    def scale(self, name: str) -> float:
        """lora_alpha / r for this module (rank_pattern and alpha_pattern as PEFT matches them; √r for rsLoRA)."""
        return self.scales[name]

    def _scale(self, name: str, stored: int, where: Path) -> float:
        module = name.removesuffix(".weight")
        r = _pattern(self.lora.get("rank_pattern") or {}, module, self.lora["r"], where)
        alpha = _pattern(self.lora.get("alpha_pattern") or {}, module, self.lora["lora_alpha"], where)
        if r != stored:  # the scale divides by the config's r: a mismatch would put every norm off by r / stored
            raise SourceError(f"{where}: r of {module} is {r}, but its lora_A/lora_B factors have rank {stored}")
        return alpha / (math.sqrt(r) if self.lora.get("use_rslora") else r)

    def read_versions(self, file: Path, names: list[str], device: torch.device | None = None
                      ) -> Iterator[tuple[str, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]]:
        """Each update, with (W_base, W_base + ΔW) when the adapter was opened with its base."""
        for name, delta in self.read(file, names, device):
            if self.base is None:
                yield name, delta, None
                continue
            dense = delta if name not in self.cores else next(self.read(file, [name], dense=True))[1]
            _, w = next(self.base.read(self.base_file[name], [name], device))
            yield name, delta, (w, w.double().to(dense.device) + dense)

    def read(self, file: Path, names: list[str], device: torch.device | None = None, dense: bool = False
             ) -> Iterator[tuple[str, torch.Tensor]]:
        """Each update: the dense s·B·A, or for one over DENSE_ENTRIES (unless `dense`) its r×r core."""
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in names:
                    a_key, b_key = self.pairs[name]
                    yield name, lora_update(f.get_tensor(a_key), f.get_tensor(b_key), self.scale(name),
                                            core=name in self.cores and not dense)
        except SourceError:
            raise
        except Exception as err:  # noqa: BLE001 - any read failure is a property of the adapter file
            raise SourceError(f"{file}: cannot read the adapter's tensors ({first_line(err, with_type=True)})") from err


class MergedCheckpoint(Checkpoint):
    """The base with the adapter's ΔW added to the matrices it targets (as PEFT's merge_and_unload makes it)."""

    def __init__(self, base: Checkpoint, adapter: AdapterCheckpoint):
        check_targets(base, adapter)
        super().__init__(f"{base.source} + {adapter.source}", base.files, base.tensors, base.config,
                         base.notes + [f"the matrices {adapter.source} targets are W + (lora_alpha / r)·B·A"],
                         base.config_file)
        self.base, self.adapter = base, adapter

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        targets = {t.name: t.file for t in self.adapter.tensors}
        for name, w in self.base.read(file, names, device):
            if name in targets:
                _, delta = next(self.adapter.read(targets[name], [name], dense=True))  # as large as W itself
                w = _wide(w) + delta.to(w.device)
            yield name, w


class RoundedCheckpoint(Checkpoint):
    """A checkpoint whose floating-point tensors are read rounded to `dtype`, as a release that loads the model
    with `torch_dtype=torch.float16` sees them (map --paper-compat for AlphaPruning and AlphaLoRA)."""

    def __init__(self, ckpt: Checkpoint, dtype: torch.dtype = torch.float16):
        name = str(dtype).removeprefix("torch.")
        tensors = [replace(t, dtype=name) if t.is_float else t for t in ckpt.tensors]
        super().__init__(ckpt.source, ckpt.files, tensors, ckpt.config,
                         ckpt.notes + [f"weights rounded to {name} before their spectra, as the release loads them"],
                         ckpt.config_file, ckpt.content)
        self.ckpt, self.dtype = ckpt, dtype

    def read(self, file: Path, names: list[str], device: torch.device | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, w in self.ckpt.read(file, names, device):
            yield name, w.to(self.dtype) if w.is_floating_point() else w


def lora_update(a: torch.Tensor, b: torch.Tensor, scale: float, core: bool = False) -> torch.Tensor:
    """A LoRA update ΔW = scale·B·A (A: r×in, B: out×r) in float64, the exact product of the stored factors; or,
    with `core`, its r×r core (low_rank_core), for an update too large to form. The adapter files and the live
    PEFT models (sources/in_memory.py) both make their updates here."""
    a, b = a.detach().double(), b.detach().double()
    return low_rank_core(a, b, scale) if core else scale * (b @ a)


def low_rank_core(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """An r×r matrix with the singular values of scale·B·A (B: out×r, A: r×in): with B = Q_B R_B and Aᵀ = Q_A R_A,
    scale·B·A = Q_B (scale·R_B R_Aᵀ) Q_Aᵀ, and the orthonormal factors leave the singular values alone."""
    return scale * (torch.linalg.qr(b, mode="r").R @ torch.linalg.qr(a.mT, mode="r").R.mT)


def check_targets(base: Checkpoint, adapter: AdapterCheckpoint) -> None:
    """Every module the adapter targets is in the base with the shape of its ΔW; one line naming the first not."""
    shapes = {t.name: t.shape for t in base.tensors}
    for t in adapter.tensors:
        if t.name not in shapes:
            raise SourceError(f"{adapter.source}: targets {t.name}, which the base {base.source} does not have "
                              "(an adapter for another model?)")
        if tuple(shapes[t.name]) != tuple(t.shape):
            raise SourceError(f"{adapter.source}: {t.name} is {list(t.shape)} in the adapter and "
                              f"{list(shapes[t.name])} in the base {base.source}")


def open_source(source, base=None, merge: bool = False) -> Checkpoint:
    """SOURCE as `analyze` reads it: a checkpoint, a LoRA adapter directory, W − W_base with `base`, or the
    merged model W_base + ΔW with an adapter, `base` and `merge`."""
    if merge and base is None:  # a usage error (exit 2): the options do not go together, whatever the files hold
        raise UsageError("--merge adds an adapter to its base: give the base with --base")
    if is_adapter(source):
        base_ckpt = open_checkpoint(base) if base is not None else None
        if merge:
            return MergedCheckpoint(base_ckpt, AdapterCheckpoint(source, base_ckpt.config))
        return AdapterCheckpoint(source, base_ckpt.config if base_ckpt else None, base_ckpt)
    if merge:
        raise SourceError(f"{source}: --merge needs a PEFT adapter directory (with {ADAPTER_CONFIG})")
    ckpt = open_checkpoint(source)
    return DeltaCheckpoint(ckpt, open_checkpoint(base)) if base is not None else ckpt


def _read_adapter_config(path: Path) -> dict:
    try:
        config = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SourceError(f"{path}: cannot read the adapter config ({first_line(err)})") from err
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise SourceError(f"{path}: not a LoRA adapter config (peft_type {config.get('peft_type')!r})"
                          if isinstance(config, dict) else f"{path}: not a JSON object")
    if config.get("use_dora"):
        raise SourceError(f"{path}: a DoRA adapter: its update depends on the base weights' norms, which alphaspec "
                          "does not compute; merge it with peft and analyse the merged model")
    _check_setting(path, "r", config.get("r"), whole=True)
    _check_setting(path, "lora_alpha", config.get("lora_alpha"))
    for key, whole in (("rank_pattern", True), ("alpha_pattern", False)):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            raise SourceError(f"{path}: {key} must be an object of module patterns, got {type(patterns).__name__}")
        for pattern, value in patterns.items():
            try:
                regex.compile(pattern)
            except regex.error as err:
                raise SourceError(f"{path}: {key} pattern {pattern!r} is not a regular expression ({err})") from err
            _check_setting(path, f"{key}[{pattern!r}]", value, whole=whole)
    return config


def _check_setting(path: Path, key: str, value, whole: bool = False) -> None:
    """r (a whole number) or an alpha (a number) of an adapter config: finite and above 0."""
    kinds = int if whole else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0 \
            or value > MAX_LORA_SETTING:
        what = "a whole number" if whole else "a finite number"
        raise SourceError(f"{path}: {key} must be {what} above 0 (at most {MAX_LORA_SETTING}), got {value!r}")


def _lora_pairs(weights: Path) -> tuple[dict[str, tuple[str, str]], dict, dict, dict]:
    """{target weight name: (A key, B key)}, the (out, in) shapes, dtypes and ranks, from the adapter file's header."""
    if not weights.is_file():
        raise SourceError(f"{weights}: missing (a PEFT adapter directory holds {ADAPTER_WEIGHTS})")
    parts: dict[str, dict] = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                found = LORA_KEY.match(key)
                if found:
                    sl = f.get_slice(key)
                    parts.setdefault(found["module"], {})[found["part"]] = (key, tuple(sl.get_shape()), sl.get_dtype())
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise SourceError(f"{weights}: not a valid safetensors file ({first_line(err, with_type=True)})") from err
    pairs, shapes, dtypes, ranks = {}, {}, {}, {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise SourceError(f"{weights}: {module} has no matching lora_A/lora_B pair")
        (a_key, a_shape, a_dtype), (b_key, b_shape, _) = ab["A"], ab["B"]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1] or 0 in (*a_shape, *b_shape):
            raise SourceError(f"{weights}: {module}'s lora_A {list(a_shape)} and lora_B {list(b_shape)} are not "
                              "an (r, in) and an (out, r) matrix")
        name = module.removeprefix(PEFT_PREFIX) + ".weight"
        pairs[name] = (a_key, b_key)
        shapes[name] = (b_shape[0], a_shape[1])
        ranks[name] = a_shape[0]
        dtypes[name] = {"BF16": "bfloat16", "F16": "float16", "F64": "float64"}.get(a_dtype, "float32")
    if not pairs:
        raise SourceError(f"{weights}: no LoRA weights (lora_A/lora_B pairs) in the adapter")
    return pairs, shapes, dtypes, ranks


def _pattern(patterns: dict, module: str, default, where: Path):
    """PEFT's per-module override: a key matching the module name or a dotted suffix of it. A pattern from a file
    is matched with a time bound (`(.|.)*Z` backtracks for minutes): past it, one error line."""
    for key, value in patterns.items():
        try:
            if regex.fullmatch(rf"(.*\.)?{key}", module, timeout=PATTERN_SECONDS):
                return value
        except TimeoutError as err:
            raise SourceError(f"{where}: pattern {key!r} takes over {PATTERN_SECONDS:g} s to match {module}; "
                              "give module names or simple patterns") from err
    return default
