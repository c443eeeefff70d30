"""Figures (matplotlib): a checkpoint's spectra and fits, maps against their metric, `diff`, training runs.
One module per family of figures; `style` holds what they share. Importing this package loads nothing."""
