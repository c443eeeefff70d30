"""Figures of training runs: runs compared (`alphaspec compare --plot`), one run's spectra over the steps, and
what learnable multipliers learned (in one run, and across widths)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alphaspec.plots.style import DEPTH_CMAP, OKABE_ITO, literal_text, module_colour, save_figure
from alphaspec.sources.matrices import BLOCK_MODULES, module_type
from alphaspec.spectra.gaussian import random_alpha


@literal_text
def compare_figure(comparison) -> Figure:
    """Training runs side by side: train and eval loss against tokens, eval loss minus the baseline's
    (paired by seed where possible; mean over seeds, band = min..max), and the decay the tuned matrices got
    (for tempbalance/llr runs, dashed, their learning-rate multiplier).

    One colour per label (strategy and the settings that differ); seeds of a label share it.
    """
    from alphaspec.train.compare import decay_series, evaluations, lr_series

    table, summary = comparison.table, comparison.summary
    baseline = summary.attrs["baseline"]
    labels = list(dict.fromkeys([baseline, *table["label"]]))
    colour = {lab: OKABE_ITO[i % len(OKABE_ITO)] for i, lab in enumerate(labels)}
    fig = Figure(figsize=(12, 8), layout="constrained")
    (ax_loss, ax_eval), (ax_delta, ax_decay) = fig.subplots(2, 2)
    curves = [evaluations(run).set_index("tokens")["eval_loss"] for run in comparison.runs]  # eval loss by tokens
    for label in labels:  # seeds of a label as one line (their mean) and a band (min..max): labels stay apart
        rows = [i for i, r in enumerate(table.itertuples()) if r.label == label]
        train = [comparison.runs[i].metrics.set_index("tokens")["loss"] for i in rows]
        _mean_and_band(ax_loss, train, colour[label], None)
        _mean_and_band(ax_eval, [curves[i] for i in rows if len(curves[i])], colour[label], label, marker="o")
    lr_runs = False
    for run, row in zip(comparison.runs, table.itertuples(), strict=True):
        multipliers = lr_series(run)  # a tempbalance/llr run: its learning rates (its decay is uniform), dashed
        series, ls = (multipliers, "--") if len(multipliers) else (decay_series(run) / (row.weight_decay or 1), "-")
        lr_runs |= bool(len(multipliers))
        if len(series) and (row.weight_decay or len(multipliers)):
            ax_decay.plot(series.index, series.to_numpy(), color=colour[row.label], lw=1.2, ls=ls,
                          drawstyle="steps-post")
    of_label = {lab: [(r.seed, c) for r, c in zip(table.itertuples(), curves, strict=True) if r.label == lab]
                for lab in labels}
    base_by_seed = dict(of_label[baseline])
    base = pd.concat([c for _, c in of_label[baseline]], axis=1).mean(axis=1)
    for label in labels:  # paired with the baseline run of the same seed where there is one (seeds fix init and data)
        _mean_and_band(ax_delta, [c - base_by_seed.get(seed, base) for seed, c in of_label[label]], colour[label],
                       label, marker="o")
    for ax, title, xlabel, ylabel in (
            (ax_loss, "training loss", "tokens", "loss (mean over the log interval)"),
            (ax_eval, "validation loss", "tokens", "eval loss"),
            (ax_delta, "validation loss minus the baseline's\n(" + textwrap.shorten(baseline, 60) + ", paired by seed)",
             "tokens", "Δ eval loss (below 0: better)"),
            (ax_decay, "decay applied to the tuned matrices" + ("\n(dashed: learning-rate multiplier)" if lr_runs else ""),
             "step", "parameter-weighted mean decay / w" + (", LR / scheduled LR" if lr_runs else ""))):
        ax.set_title(title, loc="left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_delta.axhline(0.0, color="#999999", lw=0.8, ls="--")
    ax_decay.axhline(1.0, color="#999999", lw=0.8, ls="--")
    ax_eval.legend(fontsize=8, frameon=False)
    ax_delta.legend(fontsize=8, frameon=False)
    return fig


def _mean_and_band(ax, curves: list[pd.Series], colour: str, label: str | None, marker: str | None = None) -> None:
    """The mean of a label's curves (one per seed, on their common x) as a line, and min..max as a band."""
    if not curves:
        return
    runs = pd.concat(curves, axis=1).dropna()
    if runs.empty:
        return
    ax.plot(runs.index, runs.mean(axis=1), color=colour, lw=1.4, marker=marker, ms=2.5,
            label=f"{label} (n={runs.shape[1]})" if label else None)
    if runs.shape[1] > 1:
        ax.fill_between(runs.index, runs.min(axis=1), runs.max(axis=1), color=colour, alpha=0.15, lw=0)


@literal_text
def alphas_over_training(comparison, alphas: list[pd.DataFrame | None]) -> Figure:
    """Alpha over training per module type, across runs: for each type, the mean over its layers of each
    label's alphas (mean over seeds, band min..max), with the Gaussian matrix's alpha of the type's shape."""
    table = comparison.table
    labels = list(dict.fromkeys(table["label"]))
    colour = {lab: OKABE_ITO[i % len(OKABE_ITO)] for i, lab in enumerate(labels)}
    types = [m for m in BLOCK_MODULES if any(a is not None and (a["module"] == m).any() for a in alphas)]
    fig = Figure(figsize=(3.2 * min(4, len(types)), 3.0 * -(-len(types) // 4) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-len(types) // 4), min(4, len(types)), squeeze=False)).ravel()
    for ax, module in zip(axes, types, strict=False):
        for label in labels:
            per_run = [a[a["module"] == module].groupby("step")["alpha"].mean()
                       for a, r in zip(alphas, table.itertuples(), strict=True) if a is not None and r.label == label]
            _mean_and_band(ax, [c for c in per_run if len(c)], colour[label], label if module == types[0] else None)
        shape = next(a[a["module"] == module].iloc[0] for a in alphas if a is not None and (a["module"] == module).any())
        ax.axhline(random_alpha(int(shape["rows"]), int(shape["cols"]), "median"), color="#555555", lw=0.9, ls=":")
        ax.set_title(module, loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel("mean alpha over layers")
        ax.grid(alpha=0.3)
    for ax in axes[len(types):]:
        ax.set_visible(False)
    fig.legend(loc="outside lower center", ncols=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("alpha over training per module type (dotted: a Gaussian matrix of the same shape)", fontsize=10)
    return fig


@literal_text
def alphas_figure(alphas: pd.DataFrame, estimator: str = "median") -> Figure:
    """alpha over training: mean per module type (dotted: a Gaussian matrix of that shape), and per layer.

    `alphas` is a run's alphas.csv (step, name, module, layer, alpha, ...).
    """
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_type, ax_layer = fig.subplots(1, 2)
    shapes = alphas.groupby("module")[["rows", "cols"]].agg(lambda c: c.mode().iloc[0])
    refs = set()
    for module in [m for m in BLOCK_MODULES if m in set(alphas["module"])]:
        part = alphas[alphas["module"] == module].groupby("step")["alpha"].mean()
        ax_type.plot(part.index, part.to_numpy(), color=module_colour(module), lw=1.5, marker="o", ms=2.5, label=module)
        refs.add(random_alpha(*map(int, shapes.loc[module]), estimator))
    for i, ref in enumerate(sorted(refs)):
        ax_type.axhline(ref, color="#555555", lw=0.9, ls=":", label=None if i else "Gaussian matrix, same shape")
    ax_type.set_title("alpha per module type", loc="left")
    layers = alphas.dropna(subset=["layer"]).groupby(["layer", "step"])["alpha"].mean().unstack(0)
    norm = Normalize(vmin=0, vmax=max(1, layers.shape[1] - 1))
    for layer in layers.columns:
        ax_layer.plot(layers.index, layers[layer].to_numpy(), color=ScalarMappable(norm, DEPTH_CMAP).to_rgba(layer),
                      lw=1.2)
    fig.colorbar(ScalarMappable(norm, DEPTH_CMAP), ax=ax_layer, label="layer", ticks=MaxNLocator(integer=True))
    ax_layer.set_title("alpha per layer (mean over its matrices)", loc="left")
    for ax in (ax_type, ax_layer):
        ax.set_xlabel("step")
        ax.set_ylabel(f"alpha ({estimator})")
        ax.grid(alpha=0.3)
    ax_type.legend(fontsize=8, frameon=False, ncols=2)
    return fig






@literal_text
def multipliers_figure(history: pd.DataFrame, final: dict[str, np.ndarray]) -> Figure:
    """What learnable multipliers learned in one run: the distribution of the final values per module type
    and kind, their mean over training, and how far they moved the matrices (‖W_eff‖ / ‖W‖).

    `history`: the run's multipliers.csv; `final`: multiplier name -> values (from its latest checkpoint).
    """
    fig = Figure(figsize=(14, 4.6), layout="constrained")
    ax_dist, ax_mean, ax_norm = fig.subplots(1, 3)
    groups: dict[str, list[np.ndarray]] = {}
    for name, values in final.items():
        prefix, _, kind = name.rpartition(".")
        label = f"{module_type(prefix + '.weight')} {KIND_LABELS.get(kind, kind)}"
        groups.setdefault(label, []).append(np.ravel(values))
    labels = sorted(groups, key=lambda lab: (_module_order(lab.split()[0]), lab))
    data = [np.concatenate(groups[lab]) for lab in labels]
    for i, (lab, values) in enumerate(zip(labels, data, strict=True)):  # range, quartiles and median per group
        lo, q1, med, q3, hi = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
        colour = module_colour(lab.split()[0])
        ax_dist.hlines(i, lo, hi, color=colour, lw=1)
        ax_dist.hlines(i, q1, q3, color=colour, lw=7, alpha=0.6)
        ax_dist.plot([med], [i], marker="|", ms=12, color="black")
    ax_dist.set_yticks(range(len(labels)), labels)
    ax_dist.invert_yaxis()
    ax_dist.axvline(1.0, color="#999999", lw=0.8, ls="--")
    ax_dist.ticklabel_format(axis="x", useOffset=False)
    ax_dist.set_title("learned multipliers at the end", loc="left")
    ax_dist.set_xlabel("value (all start at 1)")
    history = history.assign(ratio=history["effective_norm"] / history["weight_norm"])
    for (module, kind), part in history.groupby(["module", "kind"], sort=False):
        mean = part.groupby("step")["mean"].mean()
        ax_mean.plot(mean.index, mean.to_numpy(), color=module_colour(module), lw=1.3, marker="o", ms=2,
                     ls="-" if kind == "row_mult" else "--", label=f"{module} {KIND_LABELS.get(kind, kind)}")
    for module, part in history.drop_duplicates(["step", "name"]).groupby("module", sort=False):
        ratio = part.groupby("step")["ratio"].mean()
        ax_norm.plot(ratio.index, ratio.to_numpy(), color=module_colour(module), lw=1.3, marker="o", ms=2, label=module)
    for ax, title, ylabel in ((ax_mean, "mean multiplier over training", "mean over layers"),
                              (ax_norm, "how much they scale the matrix", "‖W_eff‖ / ‖W‖ (mean over layers)")):
        ax.set_title(title, loc="left")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False, ncols=2)
    return fig


@literal_text
def multipliers_width_figure(runs: list[tuple[str, int, pd.DataFrame]]) -> Figure:
    """The width-scaling question: at the end of runs of different widths, the mean learned multiplier and
    ‖W_eff‖ / ‖W‖ per module type against the model width. runs: (label, hidden size, multipliers.csv)."""
    rows = []
    for label, width, history in runs:
        last = history[history["step"] == history["step"].max()]
        last = last.assign(ratio=last["effective_norm"] / last["weight_norm"])
        for module, part in last.groupby("module"):
            rows.append({"label": label, "width": width, "module": module, "mean": part["mean"].mean(),
                         "ratio": part.drop_duplicates("name")["ratio"].mean()})
    table = pd.DataFrame(rows).sort_values(["width"])
    table = table.iloc[table["module"].map(_module_order).argsort(kind="stable")]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax_mean, ax_ratio = fig.subplots(1, 2)
    for module, part in table.groupby("module", sort=False):
        for ax, column in ((ax_mean, "mean"), (ax_ratio, "ratio")):
            ax.plot(part["width"], part[column], color=module_colour(module), marker="o", lw=1.3, label=module)
    for ax, title in ((ax_mean, "mean learned multiplier at the end"), (ax_ratio, "‖W_eff‖ / ‖W‖ at the end")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(table["width"])), [str(w) for w in sorted(set(table["width"]))])
        ax.set_xlabel("model width (hidden size)")
        ax.set_title(title, loc="left")
        ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    ax_mean.legend(fontsize=8, frameon=False, ncols=2)
    return fig


KIND_LABELS = {"row_mult": "rows", "col_mult": "columns", "scale": "scalar"}


def _module_order(module: str) -> int:
    return BLOCK_MODULES.index(module) if module in BLOCK_MODULES else len(BLOCK_MODULES)


def run_alphas_figure(run: Path, output: Path, fmt: str) -> Path:
    """A training run's alphas over its steps (alphas.csv), saved in `output` as training.FMT."""
    from alphaspec.train.rundir import load_run_json, read_log

    alphas = read_log(run, "alphas", "the training figure")
    estimator = load_run_json(run).get("config", {}).get("estimator", "median")
    output.mkdir(parents=True, exist_ok=True)
    return save_figure(alphas_figure(alphas, str(estimator)), output / f"training.{fmt}")


def run_multipliers_figure(run: Path, output: Path, fmt: str, warn=None) -> Path:
    """A run's learnable multipliers over its steps and as its last checkpoint holds them, saved in `output` as
    multipliers.FMT; `warn(line)` hears of a damaged checkpoint passed over."""
    from alphaspec.train.model import is_multiplier
    from alphaspec.train.rundir import load_checkpoint, read_log

    history = read_log(run, "multipliers", "the multipliers figure (a run with learnable multipliers: --strategy lrm or "
                       "--multipliers)")
    _, state = load_checkpoint(run, warn or (lambda line: None))
    final = {n: t.float().numpy() for n, t in state["model"].items() if is_multiplier(n)}
    output.mkdir(parents=True, exist_ok=True)
    return save_figure(multipliers_figure(history, final), output / f"multipliers.{fmt}")
