"""alphaspec: heavy-tailed spectral analysis of language-model checkpoints, and AlphaDecay weight decay."""

__version__ = "0.1.0"

from .analysis import Analysis, analyze, run  # noqa: E402
from .checkpoint import SourceError, open_checkpoint  # noqa: E402
from .decay import DecayMap, DecayMapError, assign_decays, build_decay_map  # noqa: E402
from .esd import eigenvalues  # noqa: E402
from .fit import ESTIMATORS, PowerLawFit, fit  # noqa: E402
from .hook import AlphaDecay  # noqa: E402

__all__ = ["AlphaDecay", "Analysis", "DecayMap", "DecayMapError", "ESTIMATORS", "PowerLawFit", "SourceError",
           "__version__", "analyze", "assign_decays", "build_decay_map", "decay_map", "eigenvalues", "fit",
           "open_checkpoint", "run"]


def decay_map(source, weight_decay: float = 0.1, *, estimator: str = "median", device: str = "auto",
              **options) -> DecayMap:
    """AlphaDecay decays for a checkpoint (anything `analyze` takes); options as `build_decay_map`."""
    return build_decay_map(analyze(source, estimator, device), weight_decay, source=str(source), **options)
