"""The figure of `alphaspec diff`: for each pair of checkpoints, how alpha and the weights moved over depth."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alphaspec.analysis.diff import short
from alphaspec.plots.style import DPI, literal_text, module_colour

MAX_PAIRS = 6  # rows of panels; more pairs: the last ones (their table has them all)


@literal_text
def diff_figure(table: pd.DataFrame) -> Figure:
    """Per pair (a row of panels): Δalpha per layer and module type, ‖W_B − W_A‖/‖W_A‖ per layer (log scale)
    and the top-k subspace overlap, each the mean over a module type's matrices in the layer."""
    blocks = table[table["layer"].notna()]
    if blocks.empty:
        raise ValueError("no transformer-block matrices to draw")
    pairs = list(dict.fromkeys(zip(blocks["from"], blocks["to"], strict=True)))[-MAX_PAIRS:]
    mods = list(dict.fromkeys(blocks["module"]))
    fig = Figure(figsize=(15, 3.3 * len(pairs) + 0.6), layout="constrained", dpi=DPI)
    axes = fig.subplots(len(pairs), 3, squeeze=False)
    for (a, b), (d_ax, r_ax, o_ax) in zip(pairs, axes, strict=True):
        rows = blocks[(blocks["from"] == a) & (blocks["to"] == b)].assign(layer=lambda t: t["layer"].astype(int))
        means = rows.groupby(["module", "layer"])[["delta_alpha", "rel_change", "subspace_overlap"]].mean()
        for m in mods:
            if m not in means.index.get_level_values(0):
                continue
            part = means.loc[m]
            style = {"marker": "o", "ms": 3, "lw": 1.2, "color": module_colour(m), "label": m}
            d_ax.plot(part.index, part["delta_alpha"], **style)
            r_ax.plot(part.index, part["rel_change"].where(part["rel_change"] > 0), **style)
            o_ax.plot(part.index, part["subspace_overlap"], **style)
        d_ax.axhline(0, color="black", lw=0.8)
        d_ax.set(ylabel="Δ alpha", title=f"{short(a)} → {short(b)}: Δ alpha")
        r_ax.set(yscale="log", ylabel="‖W_B − W_A‖ / ‖W_A‖", title="relative change of the weights (0 not drawn)")
        o_ax.set(ylim=(-0.02, 1.02), ylabel="overlap", title="top singular directions kept")
        for ax in (d_ax, r_ax, o_ax):
            ax.set(xlabel="layer", xlim=(rows["layer"].min() - 0.5, rows["layer"].max() + 0.5))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20))
            ax.grid(True, alpha=0.3)
    axes[0][2].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize="small")
    fig.suptitle("alphaspec diff: per module type, the mean over each layer's matrices")
    return fig
