"""Figures of one checkpoint from its results table (and its spectra): the ESDs by layer, alpha by module type
and over depth, one matrix's fit with its MP bulk.

Uses the object-oriented API (no pyplot state), so it works headless and in notebooks alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from alphaspec.plots.style import DEPTH_CMAP, DPI, literal_text, module_colour
from alphaspec.sources.matrices import BLOCK_MODULES, MODULE_TYPES
from alphaspec.spectra.gaussian import random_alpha
from alphaspec.spectra.powerlaw import fit


def _panels(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `module` read as "stack/module" when it holds several stacks (encoder and decoder,
    vision and text towers), so that no figure mixes their layers."""
    if "stack" not in table or table.loc[table["layer"].notna(), "stack"].nunique(dropna=False) < 2:
        return table
    return table.assign(module=table["stack"].fillna("-").astype(str) + "/" + table["module"])


def _modules(table: pd.DataFrame, block_only: bool = False) -> list[str]:
    """The module labels present, stack by stack, each in MODULE_TYPES order."""
    wanted = BLOCK_MODULES if block_only else MODULE_TYPES
    labels = [m for m in set(table["module"]) if m.rsplit("/", 1)[-1] in wanted]
    return sorted(labels, key=lambda m: (m.rsplit("/", 1)[0] if "/" in m else "",
                                         MODULE_TYPES.index(m.rsplit("/", 1)[-1])))


def _log_density(lam: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density on log-spaced bins; empty bins are NaN so that lines break instead of bridging gaps."""
    hist, edges = np.histogram(lam, bins=bins, density=True)
    return np.sqrt(edges[:-1] * edges[1:]), np.where(hist > 0, hist, np.nan)


KDE_GRID = 400
RUG_TOP = 5  # largest eigenvalues of each layer marked under the curves


def log_kde(u: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel density of the values u (here log10 λ/λ_max, all <= 0) on `grid`, per unit of u: a
    smooth curve to which every eigenvalue contributes, including the isolated largest ones. The kernels
    are reflected at 0 (λ = λ_max, beyond which no eigenvalue lies), so no mass leaks past it and the
    curve is not halved at its edge."""
    z = (grid[:, None] - u[None, :]) / bandwidth
    mirrored = (grid[:, None] + u[None, :]) / bandwidth
    kernel = np.exp(-0.5 * z * z) + np.exp(-0.5 * mirrored * mirrored)
    return kernel.sum(1) / (len(u) * bandwidth * np.sqrt(2 * np.pi))


OUTLIER_IQR = 3.0  # the x axis leaves out eigenvalues this many IQRs (of log λ) below the lower quartile


@literal_text
def spectra_figure(table: pd.DataFrame, spectra: dict[str, np.ndarray], layer: int | None = None,
                   title: str | None = None) -> Figure:
    """Figure 2: per module type, each layer's ESD (eigenvalues of WᵀW over the matrix's λ_max), coloured by
    depth: a kernel density of log10(λ/λ_max) per layer, the 5 largest eigenvalues of each as a rug, and the
    fitted power-law slope of one layer (`layer`, default the middle one), from its xmin, as a dashed line."""
    table = _panels(table)
    blocks = table[table["layer"].notna() & table["name"].isin(list(spectra))]
    mods = _modules(blocks, block_only=True) or _modules(blocks)
    if not mods:
        raise ValueError("no transformer-block matrices with saved spectra to draw")
    ncols = min(4, len(mods))
    nrows = -(-len(mods) // ncols)
    fig = Figure(figsize=(3.8 * ncols + 1.2, 3.2 * nrows), layout="constrained", dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    layers = blocks["layer"].astype(int)
    shown = int(sorted(layers.unique())[len(layers.unique()) // 2]) if layer is None else int(layer)
    cmap = ScalarMappable(norm=_layer_norm(layers), cmap=DEPTH_CMAP)
    for ax, mod in zip(axes.flat, mods, strict=False):
        rows = blocks[blocks["module"] == mod]
        _spectra_panel(ax, rows, spectra, cmap, shown)
        ax.set_title(f"{mod}  ({rows['rows'].iloc[0]}×{rows['cols'].iloc[0]})", fontsize="medium")
    for ax in list(axes.flat)[len(mods):]:
        ax.set_visible(False)
    _layer_colorbar(fig, cmap, axes, layers)
    name = title or table.attrs.get("source") or ""
    fig.suptitle((f"{name}: " if name else "") + "spectra of WᵀW per module type, each divided by its λ_max "
                 f"(dashed: slope of layer {shown}'s power-law fit, from xmin)")
    return fig


def _spectra_panel(ax, rows: pd.DataFrame, spectra: dict[str, np.ndarray], cmap, shown: int) -> None:
    logs = {}
    for r in rows.itertuples():
        s = spectra[r.name]
        if s.max() > 0:
            logs[r.name] = np.log10(s[s > 1e-12 * s.max()] / s.max())
    every = np.concatenate(list(logs.values()))
    q1, q3 = np.quantile(every, [0.25, 0.75])
    spread = min(every.std(), (q3 - q1) / 1.34) or every.std()  # Silverman's robust spread: outliers do not widen it
    bandwidth = max(1.06 * spread * (len(every) / max(len(logs), 1)) ** -0.2, 1e-3)  # per layer size
    low = max(every.min(), q1 - OUTLIER_IQR * (q3 - q1)) - 2 * bandwidth  # isolated tiny eigenvalues: not drawn
    grid = np.linspace(low, 0.0, KDE_GRID)
    peak = 0.0
    for r in rows.itertuples():
        if r.name not in logs:
            continue
        density = log_kde(logs[r.name], grid, bandwidth)
        peak = max(peak, density.max())
        colour = cmap.to_rgba(int(r.layer))
        ax.plot(10**grid, density, color=colour, lw=0.9, alpha=0.85)
        top = np.sort(logs[r.name])[-RUG_TOP:]
        ax.scatter(10**top, np.zeros_like(top), marker="|", s=30, color=colour, transform=ax.get_xaxis_transform(),
                   clip_on=False, linewidths=0.8)
    fit_row = rows[(rows["layer"] == shown) & rows["alpha"].notna()]
    if len(fit_row) and fit_row["name"].iloc[0] in logs:
        r = fit_row.iloc[0]
        # A power law p(λ) ∝ λ^-α is, as a density of log10 λ, ∝ λ^(1-α): that slope, drawn from the
        # layer's own curve at xmin (the fit fixes the slope; the height is where the tail starts).
        x0 = np.log10(r["xmin"] / spectra[r["name"]].max())
        y0 = log_kde(logs[r["name"]], np.array([x0]), bandwidth)[0]
        x = np.logspace(x0, 0, 50)
        ax.plot(x, y0 * (x / 10**x0) ** (1 - r["alpha"]), color="black", ls="--", lw=1.2,
                label=f"layer {shown}: α = {r['alpha']:.2f}")
        ax.axvline(10**x0, color="black", ls=":", lw=0.8)
        ax.legend(loc="upper left", fontsize="x-small", frameon=False)
    ax.set(xscale="log", yscale="log", xlabel="λ / λ_max", ylabel="density of log10 λ",
           xlim=(10**low, 10 ** (0.5 * bandwidth)), ylim=(peak * 1e-3, peak * 2))
    ax.grid(True, which="major", alpha=0.3)


def _layer_norm(layers: pd.Series):
    """Discrete colours, one per layer (a BoundaryNorm on integer layer edges)."""
    lo, hi = int(layers.min()), int(layers.max())
    return BoundaryNorm(np.arange(lo - 0.5, hi + 1.5), colormaps[DEPTH_CMAP].N)


def _layer_colorbar(fig: Figure, cmap, axes, layers: pd.Series) -> None:
    bar = fig.colorbar(cmap, ax=axes, label="layer (depth)", shrink=0.9)
    bar.locator = MaxNLocator(integer=True, nbins=10)
    bar.update_ticks()


@literal_text
def alpha_modules_figure(table: pd.DataFrame) -> Figure:
    """Figure 3: alpha per module type (box and points), beside a Gaussian random matrix of the same shape."""
    table = _panels(table)
    estimator = str(table["estimator"].iloc[0])
    mods = [m for m in _modules(table) if table.loc[table["module"] == m, "alpha"].notna().any()]
    if not mods:
        raise ValueError("no fitted alphas to draw")
    fig = Figure(figsize=(max(6.0, 1.1 * len(mods) + 2.5), 4.6), layout="constrained", dpi=DPI)
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    data = [table.loc[table["module"] == m, "alpha"].dropna().to_numpy() for m in mods]
    refs: list[list[float]] = []
    ax.boxplot(data, positions=range(len(mods)), widths=0.5, showfliers=False,
               medianprops={"color": "black"}, boxprops={"color": "#555555"}, whiskerprops={"color": "#555555"})
    for i, (m, values) in enumerate(zip(mods, data, strict=True)):
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=14, color=module_colour(m), alpha=0.8,
                   edgecolors="none", zorder=3)
        fitted = table[(table["module"] == m) & table["alpha"].notna()]
        shapes = fitted[["rows", "cols"]].drop_duplicates().itertuples(index=False)
        refs.append([random_alpha(int(r), int(c), estimator) for r, c in shapes])
    values = np.concatenate(data + _farms_points(ax, table, mods))
    top = max(values.max(), *(r for rs in refs for r in rs if r < 2 * values.max())) + 0.3
    for i, rs in enumerate(refs):
        shown = [min(r, top) for r in rs]
        ax.scatter([i + 0.33] * len(rs), shown, marker="D", s=36, color="#D55E00", edgecolors="black",
                   linewidths=0.6, zorder=4, label="Gaussian random matrix, same shape" if i == 0 else None)
        for r in rs:
            if r > top:  # off the scale (very elongated matrices): say where it is
                ax.annotate(f"↑ {r:.1f}", (i + 0.33, top), textcoords="offset points", xytext=(6, -10), fontsize=8)
    ax.set_ylim(min(values.min(), *(r for rs in refs for r in rs)) - 0.3, top + 0.2)
    ax.set_xticks(range(len(mods)), mods, rotation=30 if len(mods) > 7 else 0)
    ax.set(ylabel=f"alpha ({estimator} estimator)", xlabel="module type",
           title="Power-law exponent alpha per module type (lower = heavier tail)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", frameon=False)
    return fig


def _farms_points(ax, table: pd.DataFrame, mods: list[str]) -> list[np.ndarray]:
    """FARMS alphas (analyze --farms), hollow, left of each module's box: alpha with the shape effect removed."""
    if "alpha_farms" not in table or table["alpha_farms"].isna().all():
        return []
    out = []
    for i, m in enumerate(mods):
        values = table.loc[table["module"] == m, "alpha_farms"].dropna().to_numpy()
        ax.scatter([i - 0.33] * len(values), values, s=22, facecolors="none", edgecolors=module_colour(m),
                   linewidths=1.0, zorder=3, label="FARMS (square windows)" if i == 0 else None)
        out.append(values)
    return out


@literal_text
def alpha_depth_figure(table: pd.DataFrame, excess: bool = False) -> Figure:
    """alpha per layer and module type: a heatmap and a line plot over depth (experts averaged). excess: alpha
    minus alpha_random, the alpha of a Gaussian matrix of the same shape (0 = no more structure than noise),
    so module types of different shapes compare by what training added rather than by shape."""
    table = _panels(table)
    blocks = table[table["layer"].notna()]
    if excess:
        if "alpha_random" not in blocks:
            raise ValueError("the table has no alpha_random column (written by alphaspec >= 0.1 analyze)")
        blocks = blocks.assign(alpha=blocks["alpha"] - blocks["alpha_random"])
    what = "alpha - alpha_random" if excess else "alpha"
    mods = _modules(blocks)
    grid = blocks.assign(layer=blocks["layer"].astype(int)).pivot_table(
        index="module", columns="layer", values="alpha", aggfunc="mean").reindex(mods)
    if grid.empty or grid.isna().all().all():
        raise ValueError("no fitted alphas in transformer blocks to draw")
    fig = Figure(figsize=(max(8.0, 0.22 * grid.shape[1] + 5), 3.2 + 0.32 * len(mods) + 3.4), layout="constrained",
                 dpi=DPI)
    heat_ax, line_ax = fig.subplots(2, 1, height_ratios=[0.6 + 0.3 * len(mods), 3.4])
    values = grid.to_numpy(dtype=float)
    span = np.nanmax(np.abs(values)) if excess else None  # centred on 0: the Gaussian matrix of the same shape
    im = heat_ax.imshow(values, aspect="auto", cmap="RdBu_r" if excess else "viridis", interpolation="nearest",
                        vmin=-span if excess else None, vmax=span,
                        extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5, len(mods) - 0.5, -0.5))
    heat_ax.set_yticks(range(len(mods)), mods)
    heat_ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20))
    heat_ax.set(xlabel="layer", title=f"{what} per layer and module type")
    fig.colorbar(im, ax=heat_ax, label=what)
    for m in mods:
        row = grid.loc[m]
        line_ax.plot(row.index, row.to_numpy(dtype=float), marker="o", ms=3, lw=1.3, color=module_colour(m), label=m)
    if excess:
        line_ax.axhline(0, color="black", lw=0.8)
    line_ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=20))
    line_ax.set(xlabel="layer", ylabel=f"{what} ({table['estimator'].iloc[0]})", title=f"{what} over depth")
    line_ax.grid(True, alpha=0.3)
    line_ax.legend(loc="best", ncol=min(4, len(mods)), fontsize="small", frameon=False)
    return fig


@literal_text
def esd_figure(name: str, eigenvalues: np.ndarray, estimator: str = "median", bulk: tuple | None = None,
               randomized: np.ndarray | None = None) -> Figure:
    """One matrix: log-log ESD with the fitted power law and xmin; D and alpha against every xmin candidate.
    bulk: (sigma_mp, rows, cols) overlays the fitted Marchenko–Pastur density; randomized: the spectrum of
    the matrix with its entries permuted (analyze --randomize --save-spectra), drawn on the same bins."""
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    lam = lam[lam > 1e-12 * lam[-1]] if lam.size and lam[-1] > 0 else lam[:0]
    chosen = fit(lam, estimator)
    scan = fit(lam, "gof", curves=True)
    if chosen.status != "ok" or not scan.curves:
        raise ValueError(f"{name}: no fit to draw ({chosen.status})")
    fig = Figure(figsize=(13.5, 4.0), layout="constrained", dpi=DPI)
    ax, d_ax, a_ax = fig.subplots(1, 3)
    bins = np.logspace(np.log10(lam[0]), np.log10(lam[-1]), 60)
    x, dens = _log_density(lam, bins)
    ax.plot(x, dens, drawstyle="steps-mid", color="#0072B2", label="ESD")
    if randomized is not None and np.any(randomized > 0):
        shuffled = np.asarray(randomized, dtype=np.float64)
        _, rdens = _log_density(shuffled[shuffled > 1e-12 * shuffled.max()], bins)
        ax.plot(x, rdens, drawstyle="steps-mid", color="#999999", label="entries permuted")
    if bulk is not None and np.isfinite(bulk[0]):
        mp_x, mp_density = mp_curve(*bulk)
        ax.plot(mp_x, mp_density, color="#009E73", lw=1.5, ls="-.", label=f"Marchenko–Pastur, σ = {bulk[0]:.3g}")
    tail = np.logspace(np.log10(chosen.xmin), np.log10(lam[-1]), 50)
    frac = chosen.n_tail / lam.size
    ax.plot(tail, frac * (chosen.alpha - 1) / chosen.xmin * (tail / chosen.xmin) ** -chosen.alpha, color="#D55E00",
            lw=2, label=f"power law, alpha = {chosen.alpha:.2f}")
    ax.axvline(chosen.xmin, color="black", ls="--", lw=1, label=f"xmin = {chosen.xmin:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="eigenvalue λ of WᵀW", ylabel="density",
           title=f"{estimator}: alpha = {chosen.alpha:.3f}, D = {chosen.ks_d:.3f}, n_tail = {chosen.n_tail}")
    ax.legend(frameon=False)
    for axis, key, label in ((d_ax, "ks_d", "KS distance D"), (a_ax, "alpha", "alpha")):
        axis.plot(scan.curves["xmin"], scan.curves[key], color="#009E73", lw=1)
        axis.axvline(chosen.xmin, color="black", ls="--", lw=1, label=f"{estimator} xmin")
        axis.set(xscale="log", xlabel="xmin candidate", ylabel=label, title=f"{label} against xmin")
        axis.grid(True, alpha=0.3)
        axis.legend(frameon=False)
    a_ax.set_ylim(1, min(np.nanmax(scan.curves["alpha"]), 4 * chosen.alpha + 2))
    fig.suptitle(name)
    return fig


def mp_curve(sigma: float, rows: int, cols: int, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The Marchenko–Pastur density of the eigenvalues of WᵀW for entries of scale sigma and this shape."""
    n, m = max(rows, cols), min(rows, cols)
    y = m / n
    a, b = (1 - np.sqrt(y)) ** 2, (1 + np.sqrt(y)) ** 2
    x = a + (b - a) * (1 - np.cos(np.linspace(0.0, np.pi, points))) / 2  # denser near the edges
    x = x[(x > 0) & (x > a) & (x < b)]
    scale = n * sigma**2
    return x * scale, np.sqrt((b - x) * (x - a)) / (2 * np.pi * y * x) / scale
