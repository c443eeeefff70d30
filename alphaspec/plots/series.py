"""Figures of many checkpoints (a long table from `analyze A B C ...`): a series over training (`--kind series`)
and a zoo of models against a quality score (`--kind zoo`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alphaspec.plots.style import DPI, literal_text, module_colour
from alphaspec.sources.matrices import MODULE_TYPES
from alphaspec.spectra.verdicts import WARNINGS

BLOCK_TYPES = [m for m in MODULE_TYPES if m not in ("embed", "lm_head", "other")]


def positions(table: pd.DataFrame) -> tuple[pd.Series, str, list[str] | None]:
    """Where each row's source sits on the x axis: its step when every source has one, else its order; the
    axis label; the tick labels (source names) when by order."""
    order = {s: i for i, s in enumerate(dict.fromkeys(table["source"]))}
    if "step" in table and table["step"].notna().all():
        return table["step"].astype(float), "step", None
    return table["source"].map(order).astype(float), "source", list(order)


@literal_text
def series_figure(table: pd.DataFrame) -> Figure:
    """Three panels over the sources: alpha per module type (median and inter-quartile band, the Gaussian
    reference dashed), a layer × source heat map of alpha, and the verdict counts."""
    x, xlabel, ticks = positions(table)
    data = table.assign(x=x)
    fig = Figure(figsize=(8.5, 10), layout="constrained", dpi=DPI)
    top, middle, bottom = fig.subplots(3, 1)
    for module in [m for m in MODULE_TYPES if m in set(data["module"])]:
        rows = data[data["module"] == module].groupby("x")
        quartiles = rows["alpha"].quantile([0.25, 0.5, 0.75]).unstack()
        colour = module_colour(module)
        top.plot(quartiles.index, quartiles[0.5], color=colour, marker="o", ms=3, label=module)
        top.fill_between(quartiles.index, quartiles[0.25], quartiles[0.75], color=colour, alpha=0.15, lw=0)
        top.plot(quartiles.index, rows["alpha_random"].median(), color=colour, ls="--", lw=0.8)
    top.set(ylabel="alpha (median, quartiles)", title="alpha per module type; dashed: a Gaussian matrix's")
    top.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
    _heat_map(fig, middle, data)
    counts = pd.DataFrame({w: data.groupby("x")["warning"].apply(lambda s, w=w: s.fillna("").str.split(",")
                                                                  .apply(lambda ws: w in ws).sum()) for w in WARNINGS})
    for w in [w for w in WARNINGS if counts[w].any()]:
        bottom.plot(counts.index, counts[w], marker="o", ms=3, label=w)
    bottom.set(ylabel="matrices", title="verdicts per source")
    if counts.to_numpy().any():
        bottom.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
    else:
        bottom.text(0.5, 0.5, "no verdicts", transform=bottom.transAxes, ha="center", va="center", color="#666666")
    for ax in (top, middle, bottom):
        ax.set_xlabel(xlabel)
        if ax is not middle:  # no grid over the heat map
            ax.grid(True, alpha=0.3)
        if ticks:
            ax.set_xticks(range(len(ticks)), ticks, rotation=30, ha="right", fontsize="x-small")
    return fig


def _heat_map(fig: Figure, ax, data: pd.DataFrame) -> None:
    """Mean alpha of the block matrices per layer (rows) and source (columns)."""
    blocks = data[data["layer"].notna() & data["module"].isin(BLOCK_TYPES)]
    if blocks.empty:
        ax.text(0.5, 0.5, "no transformer blocks", transform=ax.transAxes, ha="center", va="center")
        return
    grid = blocks.pivot_table(index="layer", columns="x", values="alpha", aggfunc="mean")
    xs = grid.columns.to_numpy(float)
    edges = _edges(xs)
    layers = grid.index.to_numpy(float)
    mesh = ax.pcolormesh(edges, _edges(layers), grid.to_numpy(float), cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label="mean alpha of the block", pad=0.01)
    ax.set(ylabel="layer", title="alpha per layer (mean over the block's matrices)")
    step = max(1, len(layers) // 12)
    ax.set_yticks(layers[::step], [str(int(v)) for v in layers[::step]])


def _edges(centres: np.ndarray) -> np.ndarray:
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mids = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mids[0]], mids, [2 * centres[-1] - mids[-1]]])


@literal_text
def zoo_figure(summary: pd.DataFrame, scores: dict[str, float], correlations: pd.DataFrame | None = None) -> Figure:
    """Each summary metric (the `all` rows) against the score, one labelled point per model, with Spearman's rho
    in each title when computed."""
    overall = summary[(summary["module"] == "all") & summary["source"].isin(list(scores))]
    metrics = [c for c in overall.columns if c == "alpha_median" or c.endswith("_mean")]
    metrics = [m for m in metrics if overall[m].notna().any()]
    cols = 3
    fig = Figure(figsize=(11, 3.2 * math.ceil(len(metrics) / cols)), layout="constrained", dpi=DPI)
    axes = np.atleast_1d(fig.subplots(math.ceil(len(metrics) / cols), cols)).ravel()
    rho = {} if correlations is None or correlations.empty else dict(zip(correlations["metric"],
                                                                         correlations["spearman"], strict=True))
    y = overall["source"].map(scores)
    for ax, metric in zip(axes, metrics, strict=False):
        ax.scatter(overall[metric], y, s=24, color="#0072B2")
        for source, xv, yv in zip(overall["source"], overall[metric], y, strict=True):
            ax.annotate(str(source), (xv, yv), textcoords="offset points", xytext=(4, 3), fontsize="xx-small")
        title = metric.removesuffix("_mean")
        if metric in rho and not math.isnan(rho[metric]):
            title += f"  (Spearman {rho[metric]:+.2f})"
        ax.set(xlabel=metric, ylabel="score", title=title)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig
