"""How a weights source is analysed: one frozen object from the CLI (or `analyze`'s keyword arguments) to the
solver, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass, fields

from alphaspec.errors import UsageError
from alphaspec.spectra.verdicts import PERMUTATIONS


@dataclass(frozen=True)
class AnalysisOptions:
    """The settings of one analysis (docs/analyze.md); `analyze(source, **settings)` takes them by name.

    estimator: median | gof | fix-finger | fix-finger-legacy. include/exclude: regexes on tensor names.
    split_fused: split fused q/k/v and gate/up tensors. keep_spectra: also return every spectrum. workers:
    concurrent solves (threads; on a GPU each with its own CUDA stream). farms: also an `alpha_farms` column.
    precision: fp64, or fp32 for the Gram product and eigen-solve. randomize: the correlation-trap columns, with
    at most this many permutations of a matrix near a spike (True: PERMUTATIONS), seeded by `seed`. base:
    analyse W − W_base, or check a LoRA adapter's targets against it; merge: the base with the adapter added.
    cache: take spectra solved before from the eigenvalue store and keep those solved now (analysis/store.py).
    updates: for a live PEFT model, its LoRA updates s·B·A alone (by default what it computes, W + s·B·A)."""

    estimator: str = "median"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    split_fused: bool = True
    keep_spectra: bool = False
    workers: int = 1
    farms: bool = False
    precision: str = "fp64"
    randomize: int = 0
    seed: int = 0
    base: object = None  # a source as `analyze` takes it
    merge: bool = False
    cache: bool = True
    updates: bool = False

    def __post_init__(self):
        from alphaspec.spectra.eigenvalues import check_precision
        from alphaspec.spectra.powerlaw import check_estimator

        check_estimator(self.estimator)
        check_precision(self.precision)
        object.__setattr__(self, "randomize", permutation_count(self.randomize))
        for name in ("include", "exclude"):
            value = getattr(self, name) or ()
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise UsageError(f"workers={self.workers!r}: a whole number of concurrent solves, at least 1")

    @classmethod
    def of(cls, **settings) -> AnalysisOptions:
        """Options from keyword arguments; an unknown name is a UsageError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UsageError(f"unknown analysis setting {unknown[0]!r}; the settings are {', '.join(sorted(known))}")
        return cls(**settings)


def permutation_count(randomize: bool | int) -> int:
    """randomize= as a number of permutations: True is PERMUTATIONS, False 0."""
    if isinstance(randomize, bool):
        return PERMUTATIONS if randomize else 0
    if not isinstance(randomize, int) or randomize < 0:
        raise UsageError(f"randomize={randomize!r}: True, False or a number of permutations")
    return randomize
