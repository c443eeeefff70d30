"""Package attributes loaded on first use, so that importing a package (and `--help`) does not load torch."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def lazy_attributes(package: str, where: dict[str, str], namespace: dict) -> Callable[[str], object]:
    """A module `__getattr__` that imports `package.<where[name]>` the first time `name` is read, and a subpackage
    or module of `package` the first time it is named (`alphaspec.maps.callbacks.AlphaDecayCallback` works after
    a bare `import alphaspec`, as the docs write it)."""
    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f".{where[name]}", package), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value
    return __getattr__
