"""Alpha-guided maps: per-module settings from spectral metrics, and the optimizer groups they become.

`groups`: the one module that builds optimizer param groups for decay maps, the trainer's strategies and
the live hook.
"""
