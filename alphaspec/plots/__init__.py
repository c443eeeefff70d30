"""Figures (matplotlib): a checkpoint's spectra and fits, maps against their metric, `diff`, training runs.
One module per family of figures; `style` holds what they share. Importing this package loads nothing."""

from alphaspec._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {}, globals())  # a module of the package on first use, as the docs name it
