"""The engine that turns a weights source into a results table (one row per matrix), its split over the
ranks of a torchrun job, `diff` between checkpoints, and the results table's files."""

from alphaspec._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {}, globals())  # a module of the package on first use, as the docs name it
