"""The one error family of alphaspec: everything the library raises about a user's input or files.

The CLI turns an `AlphaspecError` into a single `error:` line on stderr and exits with its
`exit_code` (1: unusable input or output, 2: a usage error). Library users catch `AlphaspecError`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path


class AlphaspecError(Exception):
    """A problem with the user's input, files or options; the message is one line meant for the user."""

    exit_code = 1


class UsageError(AlphaspecError, ValueError):
    """An option value that cannot be used (not finite, negative, an unknown choice)."""

    exit_code = 2


class OutputError(AlphaspecError, OSError):
    """An output that cannot be written (missing or read-only directory, a directory in the way, a full disk)."""


def parse_json(text: str | bytes) -> object:
    """json.loads, where a document nested too deeply for the parser is a ValueError like any other bad JSON
    (json raises RecursionError, which would escape every `except ValueError` around a file being read)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be read (over ~1000 levels)") from None


def first_line(err: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its class name when it has none), for one-line errors."""
    text = str(err).strip().splitlines()
    if not text:
        return type(err).__name__
    return f"{type(err).__name__}: {text[0]}" if with_type else text[0]


def os_reason(err: OSError) -> str:
    """What went wrong in an OSError, in words (no errno numbers, no Python class names)."""
    reason = {errno.ENOENT: "no such file or directory", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.ELOOP: "too many levels of symbolic links (a link loop?)",
              errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
              errno.EISDIR: "is a directory", errno.ENOTDIR: "a part of the path is not a directory",
              errno.EEXIST: "already exists", errno.ENAMETOOLONG: "name too long"}.get(err.errno)
    return reason or (err.strerror or str(err)).lower()


def describe_os_error(err: OSError) -> str:
    """`path: reason` for an OSError."""
    return f"{err.filename}: {os_reason(err)}" if err.filename is not None else os_reason(err)


def check_input_file(path: str | Path, what: str = "file") -> Path:
    """The path of an existing regular file, or an AlphaspecError that says why not.

    Pipes, sockets and devices are refused (reading a FIFO would wait forever); a missing file,
    a link loop and a permission problem are told apart.
    """
    path = Path(path)
    kind = input_kind(path, what)
    if kind != "file":
        raise AlphaspecError(f"{path}: is a {kind}, not a {what}")
    if not os.access(path, os.R_OK):
        raise AlphaspecError(f"{path}: permission denied (cannot read this {what})")
    return path


def input_kind(path: Path, what: str = "file") -> str:
    """'file', 'directory' or another kind ('named pipe', ...); errors say why the path cannot be used."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise AlphaspecError(f"{path}: no such file or directory") from err
        raise AlphaspecError(f"{path}: cannot open this {what} ({os_reason(err)})") from err
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "named pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
