"""alphaspec: heavy-tailed spectral analysis of language-model checkpoints, and AlphaDecay weight decay.

The public names load on first use, so `alphaspec --help` does not wait for torch and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alphaspec._lazy import lazy_attributes
from alphaspec._version import __version__

_WHERE = {
    # analysis: a weights source -> one results row per matrix
    "Analysis": "analysis.engine", "AnalysisOptions": "analysis.options", "analyze": "analysis.engine",
    "analyze_checkpoint": "analysis.engine",
    "diff_checkpoints": "analysis.diff",
    "SourceError": "sources.checkpoint", "open_checkpoint": "sources.checkpoint",
    # the mathematics of one matrix
    "eigenvalues": "spectra.eigenvalues",
    "ESTIMATORS": "spectra.powerlaw", "PowerLawFit": "spectra.powerlaw", "fit": "spectra.powerlaw",
    # maps: AlphaDecay and the other alpha-guided methods, their files and their use in training
    "DecayMap": "maps.file", "ValueMap": "maps.file", "DecayMapError": "maps.spec", "DecaySpec": "maps.spec",
    "assign_decays": "maps.assign", "build_decay_map": "maps.alphadecay", "MapSpec": "maps.spec",
    "build_map": "maps.build", "lr_param_groups": "maps.apply", "prune_model": "maps.apply",
    "lora_config": "maps.apply", "AlphaDecay": "maps.hook", "AlphaLR": "maps.lr_hook",
    "AlphaspecError": "errors",
}

__all__ = [
    "ESTIMATORS", "AlphaDecay", "AlphaLR", "AlphaspecError", "Analysis", "AnalysisOptions", "DecayMap",
    "DecayMapError", "DecaySpec", "MapSpec", "PowerLawFit", "SourceError", "ValueMap", "__version__", "analyze",
    "analyze_checkpoint", "analyze_many", "assign_decays", "build_decay_map", "build_map", "decay_map",
    "diff_checkpoints", "eigenvalues", "fit", "lora_config", "lr_param_groups", "open_checkpoint", "prune_model"]

if TYPE_CHECKING:
    from alphaspec.analysis.diff import diff_checkpoints
    from alphaspec.analysis.engine import analyze, analyze_checkpoint
    from alphaspec.analysis.options import AnalysisOptions
    from alphaspec.analysis.solve import Analysis
    from alphaspec.errors import AlphaspecError
    from alphaspec.maps.alphadecay import build_decay_map
    from alphaspec.maps.apply import lora_config, lr_param_groups, prune_model
    from alphaspec.maps.assign import assign_decays
    from alphaspec.maps.build import build_map
    from alphaspec.maps.file import DecayMap, ValueMap
    from alphaspec.maps.hook import AlphaDecay
    from alphaspec.maps.lr_hook import AlphaLR
    from alphaspec.maps.spec import DecayMapError, DecaySpec, MapSpec
    from alphaspec.sources.checkpoint import SourceError, open_checkpoint
    from alphaspec.spectra.eigenvalues import eigenvalues
    from alphaspec.spectra.powerlaw import ESTIMATORS, PowerLawFit, fit


__getattr__ = lazy_attributes(__name__, _WHERE, globals())


def analyze_many(sources, estimator: str = "median", device: str = "auto", *, steps: list[int] | None = None,
                 **settings):
    """Several checkpoints into one long table — `source`, `step`, `tokens`, then `analyze`'s columns and
    `log_alpha_norm` — one source after the other (docs/analyze.md): paths, hub ids `org/name@step1000`, globs,
    @FILE lists, training run directories (their saved checkpoints). Returns a ManyAnalysis: `.table`, and
    `.failures` [(source, reason)] for the sources that could not be analysed (the others are in the table)."""
    from alphaspec.analysis.many import analyze_many as analyse
    from alphaspec.analysis.options import AnalysisOptions
    from alphaspec.train.weights import many_sources

    options = AnalysisOptions.of(estimator=estimator, **settings)
    return analyse(many_sources(sources, options), device=device, steps=steps, options=options)


def decay_map(source, weight_decay: float = 0.1, *, estimator: str = "median", device: str = "auto",
              **options) -> DecayMap:
    """AlphaDecay decays for a checkpoint or a model in memory (anything `analyze` takes); options as
    `build_decay_map`."""
    from alphaspec.analysis.engine import analyze
    from alphaspec.maps.alphadecay import build_decay_map

    table = analyze(source, estimator, device)
    return build_decay_map(table, weight_decay, source=table.attrs["source"], **options)
