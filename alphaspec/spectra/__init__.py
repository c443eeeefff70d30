"""The mathematics of one matrix: its eigenvalues, power-law fits of their tail, norm metrics, the
Marchenko–Pastur bulk, FARMS, the Gaussian reference, the permuted matrix (traps) and the verdicts
read from them. Tensors and numbers in, numbers out: no files, no checkpoints."""

from alphaspec._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {}, globals())  # a module of the package on first use, as the docs name it
