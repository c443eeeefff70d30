"""alphaspec: heavy-tailed spectral analysis of language-model checkpoints, and AlphaDecay weight decay.

The public names load on first use, so `alphaspec --help` does not wait for torch and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__

_WHERE = {
    "Analysis": "analysis", "analyze": "analysis", "analyze_checkpoint": "analysis",
    "SourceError": "checkpoint", "open_checkpoint": "checkpoint",
    "DecayMap": "decay", "DecayMapError": "decay", "DecaySpec": "maps.spec", "assign_decays": "decay", "build_decay_map": "decay",
    "eigenvalues": "esd",
    "ESTIMATORS": "powerlaw", "PowerLawFit": "powerlaw", "fit": "powerlaw",
    "AlphaDecay": "hook",
    "AlphaspecError": "errors",
}

__all__ = ["ESTIMATORS", "AlphaDecay", "AlphaspecError", "Analysis", "DecayMap", "DecayMapError", "DecaySpec", "PowerLawFit",
           "SourceError", "__version__", "analyze", "analyze_checkpoint", "assign_decays", "build_decay_map",
           "decay_map", "eigenvalues", "fit", "open_checkpoint"]

if TYPE_CHECKING:
    from .analysis import Analysis, analyze, analyze_checkpoint
    from .checkpoint import SourceError, open_checkpoint
    from .decay import DecayMap, DecayMapError, assign_decays, build_decay_map
    from .errors import AlphaspecError
    from .esd import eigenvalues
    from .maps.hook import AlphaDecay
    from .maps.spec import DecaySpec
    from .powerlaw import ESTIMATORS, PowerLawFit, fit


__getattr__ = lazy_attributes(__name__, _WHERE, globals())


def decay_map(source, weight_decay: float = 0.1, *, estimator: str = "median", device: str = "auto",
              **options) -> DecayMap:
    """AlphaDecay decays for a checkpoint or a model in memory (anything `analyze` takes); options as
    `build_decay_map`."""
    from .analysis import analyze
    from .decay import build_decay_map

    table = analyze(source, estimator, device)
    return build_decay_map(table, weight_decay, source=table.attrs["source"], **options)
