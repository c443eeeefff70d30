"""Where a run's numbers go besides its CSV logs: TensorBoard or Weights & Biases, through their own writers.

The scalars: train/loss, train/lr, train/grad_norm, train/tokens_per_s, eval/loss, eval/ppl at each
logged step; weight_decay/<module type> at each change of decays; alpha/<module type> at each analysis
(means over the matrices of that type). Both writers are optional extras, checked before a run starts.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
from pathlib import Path

import pandas as pd

from alphaspec.choices import REPORT_TO
from alphaspec.errors import AlphaspecError, first_line

EXTRAS = {"tensorboard": ("tensorboard", "alphaspec[tensorboard]"), "wandb": ("wandb", "alphaspec[wandb]")}
TENSORBOARD_DIR = "tensorboard"  # inside the run directory
ROW_TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
            "eval_loss": "eval/loss", "eval_ppl": "eval/ppl"}


def missing_extra(kind: str) -> str | None:
    """What to install for a `--report-to` writer that is not installed (None when it is, or for none)."""
    if kind not in EXTRAS or importlib.util.find_spec(EXTRAS[kind][0]) is not None:
        return None
    return f"needs the {EXTRAS[kind][0]} package: pip install '{EXTRAS[kind][1]}'"


def row_scalars(row: dict) -> dict[str, float]:
    """A metrics row as tagged scalars (absent or None values left out)."""
    return {tag: float(row[key]) for key, tag in ROW_TAGS.items() if row.get(key) is not None}


def module_means(rows: list[dict], column: str, prefix: str) -> dict[str, float]:
    """The mean of `column` per module type over rows of one step, as `prefix/<module>` scalars."""
    if not rows:
        return {}
    means = pd.DataFrame(rows).groupby("module", sort=True)[column].mean()
    return {f"{prefix}/{module}": float(v) for module, v in means.items() if pd.notna(v)}


class ReportError(AlphaspecError):
    """The --report-to writer could not be started (a W&B setting it refuses, an unwritable directory)."""


class Reporter:
    """Scalars to TensorBoard (a SummaryWriter on RUN/tensorboard) or W&B (one run, in RUN/wandb)."""

    def __init__(self, kind: str, run: Path, config: dict, on_status=None):
        assert kind in REPORT_TO, kind  # TrainConfig.validate checked it and its package
        self.kind = kind
        self.writer = self.wandb = None
        try:
            if kind == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run / TENSORBOARD_DIR))
            elif kind == "wandb":
                self.wandb = _wandb_run(run, config, on_status)
        except Exception as err:  # noqa: BLE001 - the writer's own failure, as one line
            raise ReportError(f"--report-to {kind}: cannot start it ({first_line(err, with_type=True)})") from err

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not values:
            return
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
        elif self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        elif self.wandb is not None:
            self.wandb.finish()


def _wandb_run(run: Path, config: dict, on_status):
    """A W&B run for this training run: online when W&B has an API key, else offline (synced later with
    `wandb sync`), named after the run directory; the project from WANDB_PROJECT (default alphaspec)."""
    import wandb

    logging.getLogger("wandb").setLevel(logging.WARNING)
    mode = os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
    if mode == "offline" and on_status:
        on_status(f"W&B: logging offline into {run / 'wandb'} (`wandb sync` uploads it)")
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "alphaspec"), name=run.name, dir=str(run),
                      config=config, mode=mode, settings=wandb.Settings(silent=True, console="off"))


def _has_api_key() -> bool:
    """Whether `wandb login` (or WANDB_API_KEY) gave this machine a key; asks nothing, reaches no network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
