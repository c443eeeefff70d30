"""The package version, in a module of its own so that modules need no import from the package root."""

__version__ = "0.1.0"
