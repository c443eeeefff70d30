"""What every figure shares: the palette (one colour per module type), the resolution, literal text, and
writing a figure to a file atomically."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from alphaspec.files import atomic_write
from alphaspec.sources.matrices import FUSED_MODULES, MODULE_TYPES

# Okabe & Ito's colour-blind-safe palette, one colour per module type.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442", "#999999"]
DEPTH_CMAP = "viridis"
DPI = 150


# Beyond the palette's nine: the tensors outside the blocks, each its own colour (Paul Tol's wine and teal).
OUTSIDE_COLOURS = {"embed": "#999999", "lm_head": "#882255", "other": "#44AA99"}


def literal_text(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw a figure with its text taken literally: names, run paths and labels come from users' files, and
    matplotlib would parse `$...$` in them as mathtext (a path holding `$\\frac{a}$` was a traceback)."""
    @functools.wraps(build)
    def drawn(*args, **kwargs) -> Figure:
        with matplotlib.rc_context({"text.parse_math": False}):
            return build(*args, **kwargs)

    return drawn


def module_colour(module: str) -> str:
    """One colour per module type: the block types in palette order, embed/lm_head/other their own."""
    module = module.rsplit("/", 1)[-1]  # "decoder/att.q" is coloured as att.q
    if module in OUTSIDE_COLOURS:
        return OUTSIDE_COLOURS[module]
    order = [m for m in MODULE_TYPES if m not in FUSED_MODULES and m not in OUTSIDE_COLOURS]
    return OKABE_ITO[order.index(module) % len(OKABE_ITO)] if module in order else "#999999"


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a figure in the format its suffix names, atomically (a failed write leaves no half file)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=DPI, bbox_inches="tight"))
    return path
