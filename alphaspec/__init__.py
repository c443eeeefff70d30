"""alphaspec: heavy-tailed spectral analysis of language-model checkpoints, and AlphaDecay weight decay."""

__version__ = "0.1.0"

from .analysis import Analysis, analyze, run  # noqa: E402
from .checkpoint import SourceError, open_checkpoint  # noqa: E402
from .esd import eigenvalues  # noqa: E402
from .fit import ESTIMATORS, PowerLawFit, fit  # noqa: E402

__all__ = ["Analysis", "ESTIMATORS", "PowerLawFit", "SourceError", "__version__", "analyze", "eigenvalues",
           "fit", "open_checkpoint", "run"]
