"""The training run directory (DESIGN.md): run.json, config.json, model.safetensors, checkpoints/, metrics.csv,
decay.csv, and alphas.csv (the spectra of the block matrices during training)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import AlphaspecError
from ..output import atomic_write

METRICS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "eval_ppl"]
DECAYS = ["step", "name", "module", "layer", "metric", "weight_decay"]
ALPHAS = ["step", "name", "module", "layer", "rows", "cols", "alpha", "xmin", "ks_d", "n_tail", "spectral_norm", "stable_rank",
          "log_norm", "entropy"]
CKPT = re.compile(r"step_(\d+)\.pt$")
MAP_COPY = "decay-map.json"  # a static AlphaDecay map, as the run used it (resumable without the original)


class RunError(AlphaspecError, ValueError):
    """The run directory cannot be used as asked (exists without --resume, nothing to resume, ...)."""


def write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=1, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def check_new_or_resumable(run: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to overwrite a run unless resuming."""
    ckpt = latest_checkpoint(run)
    if resume:
        if ckpt is None:
            raise RunError(f"{run}: no checkpoint to resume from (expected {run}/checkpoints/step_*.pt)")
        return ckpt
    if run.exists() and any(run.iterdir()):
        raise RunError(f"{run}: directory exists and is not empty; pass --resume to continue that run, or pick another --out")
    return None


def latest_checkpoint(run: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("step_*.pt") if (m := CKPT.search(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(run: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoints/step_N.pt atomically, then delete all but the newest `keep`."""
    d = run / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    old = sorted((int(m.group(1)), p) for p in d.glob("step_*.pt") if (m := CKPT.search(p.name)))
    for _, p in old[:-keep] if keep > 0 else []:
        p.unlink()
    return path


def save_weights(run: Path, tensors: dict[str, torch.Tensor], hf_config: dict) -> None:
    """model.safetensors (HF LlamaForCausalLM names) and config.json, each replaced atomically."""
    atomic_write(run / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(run / "config.json", hf_config)


class CsvLog:
    """An append-only CSV with a fixed header, flushed per write; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None = None):
        self.path, self.columns = path, columns
        kept = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step") and int(float(r["step"])) <= resume_step]
        self._rewrite(kept)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, columns, extrasaction="ignore")

    def _rewrite(self, rows: list[dict]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, self.columns, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def write(self, rows: list[dict]) -> None:
        if rows:
            self._writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
            self._file.flush()

    def close(self) -> None:
        self._file.close()
