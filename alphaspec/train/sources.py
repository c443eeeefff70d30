"""Where training text comes from: each `--data` item as a Source that streams its documents.

Text files (one document each), JSON lines (`.jsonl`, `.json.gz`, `.jsonl.gz`, `.jsonl.zst`; the
record's `--text-field`), Parquet (a text column, row group by row group), Hugging Face datasets
(`hf:NAME[:CONFIG[:SPLIT]]`, streamed, or a dataset saved with `save_to_disk`), and token files
already made by a tokenizer (nanoGPT's uint16 `.bin`, `.npy`). Nothing is read whole into memory:
a document arrives as pieces of about a megabyte, cut at line ends.
"""

from __future__ import annotations

import gzip
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphaspec.errors import AlphaspecError, first_line, input_kind, os_reason, parse_json

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".json.gz", ".jsonl.gz", ".jsonl.zst", ".json")
PARQUET_SUFFIXES = (".parquet",)
TOKEN_SUFFIXES = (".bin", ".npy")
PIECE = 1 << 20  # characters per piece of a long document

Piece = tuple[str, bool]  # text, and whether it ends its document


class DataError(AlphaspecError, ValueError):
    """The training data cannot be used (missing, empty, malformed, too short for one window)."""


@dataclass(frozen=True)
class Source:
    """One document source. kind: text, jsonl, parquet, hf (a dataset) or tokens (ids already made)."""

    spec: str
    kind: str
    path: Path | None = None
    text_field: str = "text"

    def fingerprint(self) -> list:
        """What identifies this source's content for the token cache: path, size and mtime (a dataset: its id)."""
        if self.path is None or (self.kind == "hf" and not self.path.exists()):
            return [self.kind, self.spec, self.text_field]
        stat = self.path.stat() if self.path.is_file() else _saved_dataset_record(self.path).stat()
        return [self.kind, str(self.path.resolve()), stat.st_size, stat.st_mtime_ns, self.text_field]

    def pieces(self) -> Iterator[Piece]:
        """The documents, as (text, ends the document) pieces; errors name the file (and line)."""
        readers = {"text": _text_pieces, "jsonl": _jsonl_pieces, "parquet": _parquet_pieces, "hf": _hf_pieces}
        try:
            yield from readers[self.kind](self)
        except AlphaspecError:
            raise
        except UnicodeDecodeError as e:
            raise DataError(f"{self.spec}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        except OSError as e:
            raise DataError(f"{self.spec}: cannot read ({os_reason(e)})") from e

    def tokens(self) -> np.ndarray:
        """The ids of a token file, memory-mapped (nanoGPT .bin: uint16; .npy: any unsigned/signed ints)."""
        try:
            if self.path.suffix == ".bin":
                if self.path.stat().st_size % 2:
                    raise DataError(f"{self.path}: not a uint16 token file (odd number of bytes)")
                return np.memmap(self.path, dtype=np.uint16, mode="r")
            ids = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.path}: not a token file ({first_line(e)})") from e
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise DataError(f"{self.path}: not a token file (a 1-D integer array was expected, found {ids.dtype} "
                            f"{ids.ndim}-D)")
        return ids


def open_sources(specs: Sequence[str | Path], text_field: str = "text") -> list[Source]:
    """The sources named on the command line; directories are searched for files of the known kinds."""
    out: list[Source] = []
    for spec in map(str, specs):
        if spec.startswith("hf:"):
            local = Path(spec[3:])
            if local.is_dir() and _saved_dataset_record(local) is None:
                raise DataError(f"{local}: a directory, but not a dataset saved with save_to_disk (no state.json or "
                                "dataset_dict.json); name its data files without hf:")
            out.append(Source(spec, "hf", local if local.is_dir() else None, text_field))
            continue
        path = Path(spec)
        try:
            kind = input_kind(path, "data source")
        except AlphaspecError as e:
            raise DataError(str(e)) from e
        if kind == "directory":
            out += _directory(path, text_field)
        elif kind == "file":
            out.append(Source(spec, _kind_of(path), path, text_field))
        else:
            raise DataError(f"{path}: is a {kind}, not a data file")
    seen: dict[Path, str] = {}
    for src in out:
        if src.path is not None and src.kind != "hf":
            where = src.path.resolve()
            if where in seen:
                raise DataError(f"{src.spec}: given twice (also as {seen[where]}); each file is read once, so name "
                                "it once")
            seen[where] = src.spec
    return out


def _saved_dataset_record(folder: Path) -> Path | None:
    """The file `datasets`' save_to_disk writes into a dataset's (state.json) or a DatasetDict's folder."""
    return next((folder / n for n in ("state.json", "dataset_dict.json") if (folder / n).is_file()), None)


def _kind_of(path: Path) -> str:
    name = path.name.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES), ("tokens", TOKEN_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return "text"  # any other file is read as text (and must be UTF-8)


def _directory(path: Path, text_field: str) -> list[Source]:
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():  # datasets' save_to_disk
        return [Source(str(path), "hf", path, text_field)]
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + TOKEN_SUFFIXES
    caches = {m.parent for m in path.rglob("manifest.json") if _is_token_cache(m)}  # e.g. `tokenize data/ -o data/c`
    found = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(known)
                   and not any(part.startswith(".") for part in f.relative_to(path).parts)
                   and not any(c == f.parent or c in f.parents for c in caches))
    if not found:
        raise DataError(f"{path}: no data files (.txt, .md, .jsonl, .json.gz, .jsonl.zst, .parquet, .bin, .npy) "
                        "in this directory")
    return [Source(str(f), _kind_of(f), f, text_field) for f in found]


def _is_token_cache(manifest: Path) -> bool:
    """Whether a manifest.json is an alphaspec token cache's (its shards are outputs, not data)."""
    try:
        with open(manifest, encoding="utf-8") as f:
            return '"alphaspec.token-cache/' in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def split_pieces(text: str, last: bool = True) -> Iterator[Piece]:
    """A document as pieces of about PIECE characters, cut after a newline where there is one."""
    start = 0
    while True:
        end = text.find("\n", start + PIECE)
        end = len(text) if end < 0 or len(text) - start <= PIECE else end + 1
        yield text[start:end], last and end >= len(text)
        if end >= len(text):
            return
        start = end


def _text_pieces(src: Source) -> Iterator[Piece]:
    with open(src.path, encoding="utf-8", newline="") as f:
        buffer = f.read(PIECE)
        while buffer:
            more = f.read(PIECE)
            cut = buffer.rfind("\n") + 1 if more else len(buffer)
            cut = cut or len(buffer)
            yield buffer[:cut], not more and cut == len(buffer)
            buffer = buffer[cut:] + more
            if not more and not buffer:
                return


def _open_lines(path: Path) -> io.TextIOBase:
    """The lines of a (compressed) JSON lines file; a UTF-8 byte-order mark at its start is not part of the text."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig")
    if name.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst needs the zstandard package: pip install 'alphaspec[data]'") from None
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # noqa: SIM115 (closed with it)
        return io.TextIOWrapper(raw, encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _jsonl_pieces(src: Source) -> Iterator[Piece]:
    number = 0
    try:
        with _open_lines(src.path) as f:
            for number, line in enumerate(iter(lambda: f.readline(MAX_RECORD_CHARS + 1), ""), 1):
                if len(line) > MAX_RECORD_CHARS:
                    raise DataError(f"{src.path}:{number}: a JSON record of over {MAX_RECORD_CHARS >> 20} Mi characters; "
                                    "one record is at most that (split long documents into several records)")
                if not line.strip():
                    continue
                try:
                    record = parse_json(line)
                except ValueError as e:
                    raise DataError(f"{src.path}:{number}: not a JSON record ({first_line(e)})") from e
                yield from split_pieces(_field(record, src, f"{src.path}:{number}"))
    except UnicodeDecodeError as e:
        raise DataError(f"{src.path}:{number + 1}: not UTF-8 text ({first_line(e)})") from e
    except Exception as e:  # gzip's EOFError/BadGzipFile, zstandard's ZstdError: damaged or truncated data
        if not isinstance(e, (EOFError, OSError)) and type(e).__name__ != "ZstdError":
            raise
        raise DataError(f"{src.path}: the compressed data is damaged or cut short after line {number} "
                        f"({first_line(e, with_type=True)})") from e


MAX_RECORD_CHARS = 64 << 20  # one JSON line: a document of a few books; longer lines are refused, not held in memory
SURROGATE = re.compile("[\ud800-\udfff]")  # JSON allows them as escapes; they are not Unicode text


def _field(record, src: Source, where: str) -> str:
    if not isinstance(record, dict) or src.text_field not in record:
        fields = ", ".join(list(record)[:8]) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no {src.text_field!r} field (found: {fields}); choose one with --text-field")
    text = record[src.text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: the {src.text_field!r} field is a {type(text).__name__}, not text")
    if (bad := SURROGATE.search(text)) is not None:
        raise DataError(f"{where}: the {src.text_field!r} field holds a lone surrogate (\\u{ord(bad.group()):04x}, an "
                        "escape that is half of a UTF-16 pair), which is not text")
    return text


def _parquet_pieces(src: Source) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{src.path}: reading Parquet needs pyarrow: pip install 'alphaspec[data]'") from None
    try:
        file = pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for files that are not Parquet
        raise DataError(f"{src.path}: not a Parquet file ({first_line(e)})") from e
    names = file.schema_arrow.names
    if src.text_field not in names:
        raise DataError(f"{src.path}: no column {src.text_field!r} (columns: {', '.join(names[:8])}); "
                        "choose one with --text-field")
    kind = file.schema_arrow.field(src.text_field).type
    if str(kind) not in ("string", "large_string", "string_view"):  # a list, bytes or numbers would become reprs
        raise DataError(f"{src.path}: column {src.text_field!r} holds {kind}, not text; choose a text column "
                        "with --text-field")
    for batch in file.iter_batches(batch_size=1024, columns=[src.text_field]):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield from split_pieces(str(text))


def _hf_pieces(src: Source) -> Iterator[Piece]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{src.spec}: Hugging Face datasets need the datasets package: "
                        "pip install 'alphaspec[data]'") from None
    datasets.disable_progress_bars()
    try:
        if src.path is not None:
            data = datasets.load_from_disk(str(src.path))
            if isinstance(data, datasets.DatasetDict):
                data = data["train"] if "train" in data else next(iter(data.values()))
            if len(data) == 0:
                raise DataError(f"{src.spec}: the dataset is empty")
            data = data.to_iterable_dataset()
        else:
            name, config, split = (src.spec[3:].split(":") + [None, None])[:3]
            data = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
        records = iter(data)
        first = next(records, None)
    except DataError:
        raise
    except Exception as e:  # datasets raises many kinds (not found, offline, bad config)
        raise DataError(f"{src.spec}: cannot open the dataset ({first_line(e)})") from e
    if first is None:
        raise DataError(f"{src.spec}: the dataset is empty")
    for number, record in enumerate(itertools.chain([first], records), 1):
        yield from split_pieces(_field(record, src, f"{src.spec} record {number}"))
