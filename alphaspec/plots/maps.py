"""Figures of maps against the metric behind them: weight decays (AlphaDecay) and learning-rate, sparsity
or LoRA-rank maps (the other alpha-guided methods), one point per tensor coloured by module type."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from alphaspec.plots.style import DPI, literal_text, module_colour


@literal_text
def decay_figure(dmap) -> Figure:
    """Weight decay per tuned tensor against its metric, coloured by module type, with w and the means."""
    mods = pd.DataFrame(dmap.modules)
    metric = dmap.metric
    fig = Figure(figsize=(7.5, 4.8), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    for module, part in mods.groupby("module", sort=False):
        ax.scatter(part[metric], part["weight_decay"], s=22, color=module_colour(str(module)), label=str(module),
                   edgecolors="none", alpha=0.85)
    w = dmap.weight_decay
    weighted = float((mods["weight_decay"] * mods["params"]).sum() / mods["params"].sum()) if "params" in mods else None
    ax.axhline(w, color="black", lw=1, label=f"base w = {w:g}")
    ax.axhline(mods["weight_decay"].mean(), color="#555555", ls="--", lw=1,
               label=f"mean decay = {mods['weight_decay'].mean() / w:.2f} w" if w else "mean decay")
    if weighted is not None:
        ax.axhline(weighted, color="#555555", ls=":", lw=1.2,
                   label=f"parameter-weighted mean = {weighted / w:.2f} w" if w else "parameter-weighted mean")
    ax.set(xlabel=f"{metric} ({dmap.estimator} estimator)" if metric == "alpha" else metric, ylabel="weight decay",
           title=f"AlphaDecay: {dmap.assign} map from {metric}, ratio {tuple(dmap.ratio)}, "
                 f"preserve mean: {dmap.preserve_mean}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
    return fig


MAP_AXES = {"lr": ("learning-rate multiplier (x base LR)", 1.0), "sparsity": ("sparsity (fraction pruned)", None),
            "lora_rank": ("LoRA rank", None)}


@literal_text
def map_figure(vmap) -> Figure:
    """A learning-rate, sparsity or LoRA-rank map: each matrix's value against its metric (a rank map: its
    block's mean metric), coloured by module type, with the neutral value, the target or the mean rank."""
    mods = pd.DataFrame(vmap.modules)
    metric, key = vmap.metric, vmap.key
    x = mods["block_metric"] if "block_metric" in mods else mods[metric]
    fig = Figure(figsize=(7.5, 4.8), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    blocks = mods.groupby("layer", sort=True).first() if "block_metric" in mods else None
    if blocks is not None:  # one value per block: one point each, named (below, once the layout is known)
        ax.scatter(blocks["block_metric"], blocks[key], s=30, color="#1f78b4", edgecolors="none",
                   label="a block (all its matrices)")
    else:
        for module, part in mods.groupby("module", sort=False):
            ax.scatter(x[part.index], part[key], s=22, color=module_colour(str(module)), label=str(module),
                       edgecolors="none", alpha=0.85)
    label, neutral = MAP_AXES[vmap.kind]
    if neutral is not None:
        ax.axhline(neutral, color="black", lw=1, label="the base learning rate")
    if vmap.kind == "sparsity":
        weighted = float((mods[key] * mods["params"]).sum() / mods["params"].sum())
        ax.axhline(weighted, color="#555555", ls=":", lw=1.2, label=f"parameter-weighted mean = {weighted:.3f}")
    elif vmap.kind == "lora_rank":
        ax.axhline(mods[key].mean(), color="#555555", ls="--", lw=1, label=f"mean rank = {mods[key].mean():.2f}")
    xlabel = f"block mean {metric}" if "block_metric" in mods else metric
    ax.set(xlabel=f"{xlabel} ({vmap.estimator} estimator)", ylabel=label,
           title=f"{vmap.method}: {label.split(' (')[0]} from {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize="small")
    if blocks is not None:
        _name_points(fig, ax, blocks["block_metric"], blocks[key], [f"block {layer}" for layer in blocks.index])
    return fig


LABEL_OFFSETS = [(6, 4), (6, -10), (6, 14), (6, -20), (-40, 4), (-40, -10), (6, 24), (6, -30)]  # points


def _name_points(fig: Figure, ax, xs, ys, names: list[str]) -> None:
    """A label beside each point, at the first of LABEL_OFFSETS where it overlaps no label placed before (nor
    leaves the axes); a point with no such place keeps no label rather than one printed over another."""
    fig.draw_without_rendering()  # the constrained layout settles where the axes are
    placed = []
    frame = ax.get_window_extent()
    for x, y, name in sorted(zip(xs, ys, names, strict=True)):
        for offset in LABEL_OFFSETS:
            label = ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, fontsize="x-small",
                                color="#444444", annotation_clip=False)
            label.set_in_layout(False)
            box = label.get_window_extent()
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) and \
                    not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            label.remove()
