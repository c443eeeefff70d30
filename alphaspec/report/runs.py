"""The report's training sections: one run's settings and curves, or several runs compared with intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alphaspec.plots.training import alphas_figure, alphas_over_training, compare_figure
from alphaspec.report.html import esc, figure, fixed, key_values, number, table
from alphaspec.train.compare import Comparison

SETTINGS = ("model", "strategy", "optimizer", "steps", "batch_size", "seq_len", "lr", "weight_decay", "ratio", "gap",
            "estimator", "metric", "seed", "data", "tokenizer", "vocab_size")


def settings_table(config: dict, info: dict) -> str:
    """The settings that say what a run was (the rest are in its run.json), and where it ran."""
    pairs = [(k, config[k]) for k in SETTINGS if k in config and config[k] not in (None, [], "")]
    pairs += [(k, info[k]) for k in ("alphaspec", "torch", "device", "world_size", "parameters", "started") if k in info]
    return key_values(pairs, "settings")


def runs_section(comparison: Comparison, alphas: list[pd.DataFrame | None]) -> str:
    """Settings (one run) or the compare table with its intervals (several), loss curves, decays, alphas."""
    runs = comparison.runs
    parts = [f"<section class='runs'><h2>{'Training run' if len(runs) == 1 else f'{len(runs)} training runs'}</h2>"]
    if len(runs) == 1:
        parts.append(settings_table(runs[0].config, runs[0].info))
    else:
        parts.append(compare_table(comparison))
    for note in comparison.notes + [f"the runs differ in {d}" for d in comparison.differing]:
        parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append(figure(compare_figure(comparison), "loss curves, the difference to the baseline and the decays",
                        "train and validation loss against tokens; validation loss minus the baseline's; "
                        "the mean decay of the tuned matrices"))
    present = [a for a in alphas if a is not None]
    if len(runs) == 1 and present:
        parts.append(figure(alphas_figure(present[0], str(runs[0].config.get("estimator", "median"))),
                            "alpha per module type over training", "alpha over training, beside a Gaussian matrix's"))
    elif present:
        parts.append(figure(alphas_over_training(comparison, alphas), "alpha per module type over training, per label"))
    parts.append("</section>")
    return "".join(parts)


def compare_table(comparison: Comparison) -> str:
    s = comparison.summary
    baseline = s.attrs.get("baseline", "")
    rows = []
    for _, r in s.iterrows():
        delta = "baseline" if r["label"] == baseline else (
            f"{fixed(r['vs_baseline'], sign=True)} [{fixed(r['ci_low'], sign=True)}, {fixed(r['ci_high'], sign=True)}]"
            if pd.notna(r.get("vs_baseline")) else "–")
        rows.append([esc(r["label"]), number(r["n"]), fixed(r["eval_loss"]), fixed(r["eval_loss_std"]),
                     fixed(r["best_eval_loss"]), delta, number(r.get("p_holm")), number(r.get("applied_over_w"), 2)])
    return table(["label", "runs", "final eval loss", "sd", "best", "Δ vs baseline [95 % CI]", "p (Holm)", "decay / w"],
                 rows, f"validation loss, best first; baseline: {baseline}", "compare")


def run_names(paths: list[Path]) -> str:
    return ", ".join(esc(Path(p).name) for p in paths)
