"""Writing files safely: outputs checked before any work (never an input, never a directory in the way),
and written atomically (a temporary file renamed over the target: never half a file)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from alphaspec.errors import OutputError, UsageError, first_line, os_reason

TABLE_SUFFIXES = (".csv", ".json", ".parquet")


def check_output(path: Path, suffixes: tuple[str, ...] = TABLE_SUFFIXES, inputs: Iterable[str | Path] = ()) -> None:
    """Fail before any work when `path` cannot be written: an unknown format, the path of one of the
    command's inputs or a file inside one (usage errors), a missing or read-only directory, a directory
    in the way (an OutputError)."""
    check_not_an_input(path, inputs)
    if path.suffix not in suffixes:
        raise UsageError(f"{path}: unknown output format {path.suffix or '(no suffix)'}; use {', '.join(suffixes)}")
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise UsageError(f"{path}: Parquet output needs pyarrow (pip install 'alphaspec[parquet]')") from err
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"{path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a directory")
    _probe(parent, path)


def input_paths(source: str | Path) -> list[Path]:
    """What reading `source` may open when it is a local path: itself, and beside a file the model's config
    and shard index (a hub id or `example:` names nothing here)."""
    path = Path(source)
    if not path.exists():
        return []
    return [path] if path.is_dir() else [path, path.parent / "config.json", path.parent / "model.safetensors.index.json"]


def check_not_an_input(path: Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that is one of the command's inputs, or lies inside an input directory (a checkpoint
    or run being read): writing it would overwrite what the command reads, or change the directory."""
    target = path.resolve()
    for given in inputs:
        src = Path(given)
        if not src.exists():
            continue
        src = src.resolve()
        if target == src:
            raise UsageError(f"{path}: is an input of this command ({given}); write the output elsewhere")
        if src.is_dir() and src in target.parents:
            raise UsageError(f"{path}: is inside {given}, which this command reads; write the output elsewhere")


def check_output_dir(folder: Path) -> None:
    """Fail before any work when figures or a run cannot be written into `folder` (created later if missing)."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a directory")
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise OutputError(f"{folder}: {existing} is not a directory")
    _probe(existing, folder)


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a temporary file in `folder`: the one sure test that writing there works."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".alphaspec-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise OutputError(f"{target}: cannot write in {folder} ({os_reason(err)})") from err


def atomic_write(path: Path, write) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`: never half a file.

    An OSError (full disk, read-only or missing directory) becomes an OutputError naming `path`;
    the previous file, if any, is left as it was and no temporary file stays behind.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({os_reason(err)})") from err
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"{path}: cannot write ({os_reason(err)})") from err
        if type(err).__name__ == "SafetensorError":  # safetensors' own error wraps the OS's (a full disk, ...)
            text = first_line(err)
            reason = "no space left on the device" if "StorageFull" in text or "No space left" in text else text
            raise OutputError(f"{path}: cannot write ({reason})") from err
        raise
