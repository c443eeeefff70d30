"""Alpha-guided maps: per-module settings from spectral metrics, and the optimizer groups they become.

`spec` (AlphaDecay's options), `assign` (metric to decays), `methods` (the other released methods), `build`
(maps of learning rates, sparsities, LoRA ranks), `file` (the map files), `groups` (the one module that
builds optimizer param groups), `apply` (using a map with torch and peft), `hook` (AlphaDecay and AlphaLR,
refreshed from the live weights during training).
"""

from alphaspec._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {}, globals())  # a module of the package on first use, as the docs name it
