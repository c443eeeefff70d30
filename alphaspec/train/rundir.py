"""The training run directory (docs/train.md): run.json, config.json, model.safetensors, checkpoints/, metrics.csv,
decay.csv, and alphas.csv (the spectra of the block matrices during training).

The one module that reads and writes these files: the trainer writes through it, `compare` and `plot` read
through it (`load_run`, `load_run_json`, `read_alphas`)."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl

    msvcrt = None
except ImportError:  # Windows
    import msvcrt

    fcntl = None

import pandas as pd
from safetensors import safe_open

from alphaspec.analysis.table import read_csv_checked
from alphaspec.errors import AlphaspecError, check_input_file, first_line, parse_json
from alphaspec.files import atomic_write

METRICS_COLUMNS = ["step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss", "eval_ppl"]
DECAY_COLUMNS = ["step", "name", "module", "layer", "metric", "weight_decay"]
LR_COLUMNS = ["step", "name", "module", "layer", "metric", "lr_scale"]  # tempbalance/llr: multipliers of the LR
ALPHA_COLUMNS = ["step", "name", "module", "layer", "rows", "cols", "alpha", "xmin", "ks_d", "n_tail", "spectral_norm",
                 "stable_rank", "log_norm", "entropy"]
MULTIPLIER_COLUMNS = ["step", "name", "module", "layer", "kind", "mean", "std", "min", "max", "weight_norm",
                      "effective_norm"]
RUN_JSON = "run.json"
LOGS = {"metrics": ("metrics.csv", METRICS_COLUMNS), "decays": ("decay.csv", DECAY_COLUMNS), "lrs": ("lr.csv", LR_COLUMNS),
        "alphas": ("alphas.csv", ALPHA_COLUMNS), "multipliers": ("multipliers.csv", MULTIPLIER_COLUMNS)}
CKPT = re.compile(r"step_(\d+)\.pt$")
MAP_COPY = "decay-map.json"  # a static AlphaDecay map, as the run used it (resumable without the original)


class RunError(AlphaspecError, ValueError):
    """The run directory cannot be used as asked (exists without --resume, nothing to resume, ...)."""


class RunDirError(AlphaspecError, ValueError):
    """A path that is not a readable alphaspec training run."""


@dataclass
class RunRecord:
    """A finished or running training run, as read back: its settings, records, logs and tensor sizes."""

    path: Path
    config: dict
    info: dict
    metrics: pd.DataFrame
    decays: pd.DataFrame
    sizes: dict[str, int]
    lrs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LR_COLUMNS))  # tempbalance/llr runs


RUN_KEYS = {"strategy": str, "seed": int, "steps": int, "weight_decay": int | float}  # what compare reads


def load_run_json(path: Path) -> dict:
    """RUN/run.json as a dict whose `config` is a dict; anything else is a RunDirError naming the file."""
    file = Path(path) / RUN_JSON
    if not file.exists():
        raise RunDirError(f"{path}: not an alphaspec training run (no run.json)")
    try:
        check_input_file(file, "run.json")
        info = parse_json(file.read_text(encoding="utf-8"))
    except AlphaspecError as e:
        raise RunDirError(str(e)) from e
    except (OSError, ValueError) as e:
        raise RunDirError(f"{file}: damaged ({first_line(e)})") from e
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise RunDirError(f"{file}: damaged (no 'config' object)")
    return info


def load_run(path: str | Path) -> RunRecord:
    """A run directory's run.json, metrics.csv, decay.csv, lr.csv (tempbalance/llr) and the tuned tensors' sizes,
    each checked."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a run directory")
    info = load_run_json(path)
    metrics_file, decay_file, lr_file = (path / LOGS[name][0] for name in ("metrics", "decays", "lrs"))
    if not metrics_file.exists():
        raise RunDirError(f"{path}: not an alphaspec training run (no metrics.csv)")
    try:
        metrics = read_csv_checked(metrics_file, METRICS_COLUMNS, required=("step", "tokens", "loss", "tokens_per_s"))
        decays = read_csv_checked(decay_file, DECAY_COLUMNS, required=("step", "weight_decay")) \
            if decay_file.exists() else pd.DataFrame(columns=["step"])
        lrs = read_csv_checked(lr_file, LR_COLUMNS, required=("step", "name", "lr_scale"), text=("name", "module")) \
            if lr_file.exists() else pd.DataFrame(columns=LR_COLUMNS)
    except AlphaspecError as e:
        raise RunDirError(str(e)) from e
    if metrics.empty:
        raise RunDirError(f"{path}: metrics.csv has no rows yet (the run logged nothing)")
    for key, kind in RUN_KEYS.items():
        value = info["config"].get(key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise RunDirError(f"{path / RUN_JSON}: damaged (its config has no valid {key!r}: {value!r})")
    return RunRecord(path, info["config"], info, metrics, decays, _sizes(path / "model.safetensors"), lrs)


def read_log(path: Path, name: str, needed_by: str) -> pd.DataFrame:
    """One of a run's logs (LOGS: metrics, decays, alphas, multipliers), checked; a RunDirError naming what
    needs it when the file is absent or has no rows yet."""
    file, columns = Path(path) / LOGS[name][0], LOGS[name][1]
    if not file.is_file():
        raise RunDirError(f"{path}: {needed_by} needs a run directory of `alphaspec train` with {file.name}")
    table = read_csv_checked(file, columns, text=tuple(c for c in ("name", "module", "kind") if c in columns))
    if table.empty:
        raise RunDirError(f"{file}: no rows yet")
    return table


def has_log(path: Path, name: str) -> bool:
    return (Path(path) / LOGS[name][0]).is_file()


def _sizes(file: Path) -> dict[str, int]:
    """Element count of every tensor in model.safetensors (from its header); {} when there is none."""
    if not file.exists():
        return {}
    try:
        with safe_open(str(file), framework="np") as f:
            return {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a mapping
    except Exception as e:  # noqa: BLE001 - any header failure is a property of the file
        raise RunDirError(f"{file}: not a valid safetensors file ({first_line(e)})") from e


def write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=1, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


LOCK = ".lock"
# what a run writes: a directory holding only these is a run
OURS = ("run.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.csv",
        "decay.csv", "alphas.csv", "multipliers.csv", "checkpoints", "data", "tensorboard", "wandb", MAP_COPY)
CHECKPOINT_KEYS = {"step": int, "model": dict, "optimizer": dict, "scheduler": dict, "strategy": dict, "rng": dict,
                   "config": dict}


class RunDir:
    """A run directory owned by this process: an exclusive lock on RUN/.lock for the run's whole life
    (the OS releases it when the process dies, however it dies), and a record of what was there before,
    so a run that fails while being set up removes only what it created."""

    def __init__(self, path: Path):
        self.path = path
        self.created = _make_dir(path)
        before = {p.name for p in path.iterdir()}
        self._lock = _lock(path)
        self.before = before  # the lock file is in it only if an earlier run left it
        # Temporaries left by a process killed while writing: atomic_write's (.NAME.XXXX.tmp) and those
        # safetensors makes for itself (.tmpXXXXXX).
        for folder in (path, path / "checkpoints", path / "data"):
            for tmp in [*folder.glob(".*.tmp"), *folder.glob(".tmp*")]:
                if tmp.is_file():
                    tmp.unlink()

    def contents(self) -> set[str]:
        """Names in the directory, leaving out the lock file."""
        return {p.name for p in self.path.iterdir()} - {LOCK}

    def remove_created(self) -> None:
        """Undo a failed setup: the whole directory if this run made it, else only the entries it added."""
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in {p.name for p in self.path.iterdir()} - self.before:
            target = self.path / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)

    def release(self) -> None:
        self._lock.close()


def _make_dir(path: Path) -> bool:
    """Create the run directory (and its parents); True if this call made it."""
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: exists and is not a directory; pick another --out")
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False


def _lock(path: Path):
    """An open file holding the exclusive lock of RUN/.lock; a RunError when another process holds it."""
    return exclusive_lock(path / LOCK, RunError(
        f"{path}: another alphaspec train is using this run directory (it holds {path / LOCK}); wait for it to "
        "finish, or pick another --out"))


def exclusive_lock(file: Path, busy: Exception, wait: Callable[[], None] | None = None):
    """An open file holding the exclusive lock of `file` (made if missing). When another process holds it,
    `busy` is raised, or, given `wait`, wait() is called and the lock awaited. The lock goes with the process,
    however it ends."""
    f = open(file, "a+")  # noqa: SIM115 - held open for as long as the lock is
    try:
        try:
            _flock(f, block=False)
        except OSError:
            if wait is None:
                raise
            wait()
            _flock(f, block=True)
    except OSError as e:
        f.close()
        raise busy from e
    return f


def _flock(f, block: bool) -> None:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    else:  # Windows: LK_LOCK retries for 10 seconds
        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if block else msvcrt.LK_NBLCK, 1)


def plan_start(rd: RunDir, resume: bool) -> str:
    """How this run starts: 'fresh' (an empty or new directory), 'restart' (--resume of a run that
    has no checkpoint yet: from step 0, nothing was saved) or 'resume' (from a checkpoint)."""
    run, names = rd.path, rd.contents()
    has_ckpt = bool(checkpoints(run))
    if resume:
        if has_ckpt:
            return "resume"
        if names and names <= set(OURS):
            return "restart"
        what = "the directory is empty or missing" if not names else "it does not hold an alphaspec run"
        raise RunError(f"{run}: no checkpoint to resume from ({what}); start it without --resume")
    if names:
        raise RunError(f"{run}: directory exists and is not empty; pass --resume to continue that run, or pick another --out")
    return "fresh"


def has_checkpoints(path: Path) -> bool:
    """Whether PATH is a training run with a checkpoints folder (what `diff RUN` compares)."""
    return (path / "checkpoints").is_dir()


def run_of_checkpoints_folder(path: Path) -> Path | None:
    """The run whose checkpoints folder PATH is (RUN/checkpoints, holding saved steps), or None."""
    return path.parent if path.name == "checkpoints" and path.is_dir() and checkpoints(path.parent) else None


def checkpoints(run: Path) -> list[Path]:
    """RUN/checkpoints/step_N.pt, newest first."""
    found = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("step_*.pt") if (m := CKPT.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint(run: Path, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """The newest intact checkpoint, read as data only (weights_only: tensors and plain containers, never
    code). A damaged one (truncated by a kill, replaced by a directory, not a checkpoint) is passed over
    with a warning that names it; if none is intact, a RunError lists them all."""
    import torch  # here, so that reading a run's records (compare, plot) needs no torch

    damaged = []
    for path in checkpoints(run):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
            _check_state(state)
        except pickle.UnpicklingError as e:
            if "unsupported global" not in str(e).lower():
                damaged.append(f"{path.name} ({first_line(e, with_type=True)})")
                continue
            damaged.append(f"{path.name} (holds Python objects other than tensors: refused, never unpickled)")
            continue
        except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the previous one may be fine
            damaged.append(f"{path.name} ({first_line(e, with_type=True)})")
            continue
        for line in damaged:
            warn(f"checkpoint {line} is damaged; resuming from {path.name} instead")
        return path, state
    raise RunError(f"{run}: no intact checkpoint: {'; '.join(damaged)}. Move them away to restart the run from step 0")


def _check_state(state) -> None:
    import torch

    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a checkpoint")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise ValueError(f"no {key!r} entry of the right kind")
    if not torch.is_tensor(state["rng"].get("torch")):
        raise ValueError("no random-number state")


def _step(row: dict) -> float | None:
    try:
        return float(row["step"])
    except (TypeError, ValueError):
        return None


def save_checkpoint(run: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoints/step_N.pt atomically, then delete all but the newest `keep`."""
    import torch  # here, so that reading a run's records (compare, plot) needs no torch

    d = run / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:07d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for p in checkpoints(run)[keep:] if keep > 0 else []:
        if p.is_file():
            p.unlink()
    return path


def save_weights(run: Path, tensors: dict, hf_config: dict) -> None:
    """model.safetensors (HF LlamaForCausalLM names) and config.json, each replaced atomically."""
    from safetensors.torch import save_file

    atomic_write(run / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_json(run / "config.json", hf_config)


class CsvLog:
    """An append-only CSV with a fixed header, flushed per write; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: int | None = None,
                 warn: Callable[[str], None] = print):
        self.path, self.columns = path, columns
        kept = self._kept(resume_step, warn) if resume_step is not None and path.exists() else []
        self._rewrite(kept)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, columns, extrasaction="ignore")

    def _kept(self, resume_step: int, warn: Callable[[str], None]) -> list[dict]:
        """The rows up to the checkpoint's step. A row cut short by a kill, or garbled, is dropped with a
        warning; a file that cannot be read as this CSV at all is kept aside as NAME.damaged."""
        try:
            with self.path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                if reader.fieldnames != self.columns:
                    raise ValueError(f"header {reader.fieldnames} is not {self.columns}")
        except (OSError, ValueError, csv.Error) as e:  # UnicodeDecodeError is a ValueError
            aside = self.path.with_name(self.path.name + ".damaged")
            os.replace(self.path, aside)
            warn(f"{self.path} is damaged ({first_line(e, with_type=True)}); kept it as {aside.name} and started it again")
            return []
        whole = [r for r in rows if None not in r.values() and None not in r and _step(r) is not None]
        if len(whole) < len(rows):
            warn(f"{self.path}: dropped {len(rows) - len(whole)} incomplete or garbled row(s)")
        return [r for r in whole if _step(r) <= resume_step]

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
