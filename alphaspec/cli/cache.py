"""`alphaspec cache`: where the eigenvalue store is, what it holds, and emptying it."""

from __future__ import annotations

from alphaspec.cli.common import app, out
from alphaspec.cli.help import Group

EPILOG = """
Examples:

    alphaspec cache info
    alphaspec cache clear

    # elsewhere, and at most 500 MB
    export ALPHASPEC_CACHE=/scratch/alphaspec ALPHASPEC_CACHE_SIZE=500M

Set ALPHASPEC_NO_CACHE=1 (or give --no-cache to a command) to neither read nor fill it.
"""


@app.group("cache", cls=Group, epilog=EPILOG)
def cache() -> None:
    """The eigenvalue store: each matrix's spectrum, kept after it is solved so that later commands on the same
    weights (another estimator, a map, a figure, a report) re-fit without solving again."""


@cache.command("info", epilog=EPILOG)
def info() -> None:
    """Where the store is, how many spectra it holds and their size against its bound."""
    from alphaspec.analysis.store import EigenStore, store_enabled, unwritable

    store = EigenStore()
    entries = store.entries()
    size = sum(nbytes for _, nbytes, _ in entries)
    why = unwritable(store.root)
    state = ("" if store_enabled() else " (off: ALPHASPEC_NO_CACHE is set)") + (
        f" (cannot be written: {why}; analyses run without it)" if why else "")
    out.print(f"{store.root}: {len(entries):,} entries, {_size(size)} of at most {_size(store.max_bytes)}{state}",
              highlight=False, soft_wrap=True)


@cache.command("clear", epilog=EPILOG)
def clear() -> None:
    """Delete every entry of the store (later commands solve again and refill it)."""
    from alphaspec.analysis.store import EigenStore

    store = EigenStore()
    count, size = store.clear()
    out.print(f"{store.root}: deleted {count:,} entries ({_size(size)})", highlight=False, soft_wrap=True)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"
