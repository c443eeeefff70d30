"""The token cache (`alphaspec tokenize`): documents → token shards on disk that every run reuses.

    CACHE/manifest.json     schema, tokenizer fingerprint and EOS id, source fingerprints, shards, counts
    CACHE/tokenizer.json    the tokenizer that made the tokens
    CACHE/tokens-00000.bin  uint16 (uint32 for vocabularies over 65536) token ids, memory-mapped by runs
    CACHE/docs-00000.npy    per document: its end offset in the shard and a hash of its text (int64 pairs)

Tokenising streams: text is read piece by piece and encoded in batches (tokenizers' encode_batch, on
all cores), and a shard is written, whole or not at all, every `shard_tokens` tokens at a document
boundary. The manifest names the shards written and where the next document starts, so a killed
run resumes there, and a finished cache with the same fingerprints is reused as it is.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphaspec._version import __version__
from alphaspec.errors import first_line, parse_json
from alphaspec.files import atomic_write
from alphaspec.train.rundir import exclusive_lock
from alphaspec.train.sources import DataError, Source
from alphaspec.train.tokenizer import Vocab, load_tokenizer, train_bpe

SCHEMA = "alphaspec.token-cache/1"
LOCK = ".lock"  # held by the tokenize writing the cache
SHARD_TOKENS = 1 << 24
BATCH_CHARS = 2 << 20  # text per encode_batch call: a few pieces for the cores, few Encoding objects alive


@dataclass
class TokenCache:
    """A finished cache: its tokenizer, its shards memory-mapped, and its documents as global spans."""

    root: Path
    manifest: dict

    @property
    def vocab(self) -> Vocab:
        return Vocab(load_tokenizer(self.root / "tokenizer.json"), self.manifest["tokenizer"]["eos_id"])

    def shards(self) -> list[np.ndarray]:
        dtype = np.dtype(self.manifest["dtype"])
        out = []
        for shard in self.manifest["shards"]:
            path = self.root / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise DataError(f"{path}: missing or damaged (expected {shard['tokens']} tokens); "
                                f"run `alphaspec tokenize` again into a new directory")
            out.append(np.memmap(path, dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype))
        return out

    def _document_table(self, shard: dict) -> tuple[np.ndarray, np.ndarray]:
        """A shard's document table, checked: (end offset, text hash) pairs, ends rising to the shard's size."""
        path = self.root / shard["docs"]
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: damaged document table ({first_line(e)}); run `alphaspec tokenize` again "
                            "into a new directory") from e
        ok = table.ndim == 2 and table.shape[1] == 2 and table.dtype == np.int64 and len(table) > 0
        ends = table[:, 0] if ok else np.zeros(0, np.int64)
        if not ok or ends[0] <= 0 or (np.diff(ends) <= 0).any() or ends[-1] != shard["tokens"]:
            raise DataError(f"{path}: damaged document table (its document ends do not rise to the shard's "
                            f"{shard['tokens']} tokens); run `alphaspec tokenize` again into a new directory")
        return ends, table

    def check_ids(self, vocab_size: int) -> None:
        """Every token id within a vocabulary of `vocab_size` (the shards' recorded largest ids, or a pass over
        shards written before those were recorded)."""
        for shard, tokens in zip(self.manifest["shards"], self.shards(), strict=True):
            top = shard.get("max_id")
            top = top if top is not None else (int(tokens.max()) if len(tokens) else 0)
            if top >= vocab_size:
                raise DataError(f"{self.root / shard['file']}: token id {top} is outside the vocabulary of "
                                f"{vocab_size}; the cache does not belong to this tokenizer")

    def documents(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, keys) of every document, in global token positions over all shards."""
        starts, lengths, keys, offset = [], [], [], 0
        for shard in self.manifest["shards"]:
            ends, table = self._document_table(shard)
            begin = np.concatenate([[0], ends[:-1]])
            starts.append(begin + offset)
            lengths.append(ends - begin)
            keys.append(table[:, 1])
            offset += shard["tokens"]
        cat = (lambda parts: np.concatenate(parts).astype(np.int64)) if starts else (lambda _: np.zeros(0, np.int64))
        return cat(starts), cat(lengths), cat(keys)


def read_manifest(root: Path) -> dict | None:
    """The manifest of the cache in `root` (None when there is none), every field it must have checked."""
    path = root / "manifest.json"
    if not path.exists():
        return None
    try:
        doc = parse_json(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"not an alphaspec token cache (schema {doc.get('schema')!r})")
        _check_manifest(doc)
        return doc
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{path}: not a token cache manifest ({first_line(e)})") from e


SHARD_NAME = re.compile(r"(tokens|docs)-\d{5,}\.(bin|npy)")  # as _ShardWriter names them: plain names in the cache
COUNTS = ("tokens", "documents")


def _check_manifest(doc: dict) -> None:
    """The fields a cache is read by, with their types; shard files only by plain names inside the cache."""
    def count(value, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{what} is {value!r}, not a count")
        return value

    missing = [k for k in ("key", "tokenizer", "dtype", "shards", "next", "complete", *COUNTS) if k not in doc]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if doc["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"token dtype {doc['dtype']!r}; token ids are uint16 or uint32")
    if not isinstance(doc["tokenizer"], dict) or not isinstance(doc["shards"], list):
        raise ValueError("'tokenizer' must be an object and 'shards' a list")
    eos = doc["tokenizer"].get("eos_id")
    if eos is not None:
        count(eos, "eos_id")
    for k in COUNTS:
        count(doc[k], k)
    for i, shard in enumerate(doc["shards"]):
        if not isinstance(shard, dict):
            raise ValueError(f"shard {i} is not an object")
        for k in ("file", "docs"):
            name = shard.get(k)
            if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
                raise ValueError(f"shard {i} names {k} {name!r}: not a shard file of this cache")
        count(shard.get("tokens"), f"shard {i}'s tokens")
        if shard.get("max_id") is not None:
            count(shard["max_id"], f"shard {i}'s max_id")


def open_cache(root: Path) -> TokenCache:
    """A finished cache; an unfinished one says how to finish it."""
    manifest = read_manifest(root)
    if manifest is None:
        raise DataError(f"{root}: not a token cache (no manifest.json)")
    if not manifest.get("complete"):
        raise DataError(f"{root}: the token cache is unfinished; run `alphaspec tokenize` with the same sources "
                        "and -o to finish it")
    cache = TokenCache(root, manifest)
    made_with = manifest["tokenizer"].get("sha")
    if made_with is not None and cache.vocab.fingerprint() != made_with:
        raise DataError(f"{root / 'tokenizer.json'}: not the tokenizer the cache was made with (it was replaced)")
    cache.check_ids(cache.vocab.size)
    return cache


def cache_key(sources: Sequence[Source], tokenizer: Vocab | None, vocab_size: int) -> dict:
    """What a cache is made from: the sources' fingerprints and the tokenizer (or the BPE to train)."""
    made_by = tokenizer.fingerprint() if tokenizer is not None else f"bpe-{vocab_size}"
    return {"sources": [s.fingerprint() for s in sources], "tokenizer": made_by}


def build_cache(sources: Sequence[Source], root: Path, tokenizer: Vocab | None = None, vocab_size: int = 4096,
                progress: Callable[..., None] = lambda *_: None,
                shard_tokens: int = SHARD_TOKENS, wait: bool = False) -> TokenCache:
    """Tokenise `sources` into `root` (training a BPE of `vocab_size` when no tokenizer is given), or reuse
    or finish the cache already there when it was made from the same sources and tokenizer.
    progress(stage, characters, tokens[, source index, characters of that source]) reports as it goes.
    While another process writes `root`: wait for it (reporting stage "waiting") or, by default, refuse."""
    key = cache_key(sources, tokenizer, vocab_size)
    created = not root.exists()
    _start(root, key)  # refuses a directory of other data before anything is made
    lock = exclusive_lock(root / LOCK, DataError(
        f"{root}: another alphaspec tokenize is writing this cache (it holds {root / LOCK}); wait for it to finish"),
        wait=(lambda: progress("waiting", 0, 0)) if wait else None)
    cleaned = False
    try:
        manifest = _start(root, key)  # again, under the lock: what the last writer left
        if manifest.get("complete"):
            return TokenCache(root, manifest)
        try:
            return _fill(sources, root, manifest, tokenizer, vocab_size, progress, shard_tokens)
        except BaseException:
            if created and not manifest["shards"]:  # nothing worth resuming: leave no directory behind
                for name in ("manifest.json", "tokenizer.json"):
                    (root / name).unlink(missing_ok=True)
                for stray in root.glob(".*.tmp"):
                    stray.unlink(missing_ok=True)
                cleaned = True
            raise
    finally:
        lock.close()
        if cleaned:
            (root / LOCK).unlink(missing_ok=True)
            root.rmdir()


def _fill(sources: Sequence[Source], root: Path, manifest: dict, tokenizer: Vocab | None, vocab_size: int,
          progress, shard_tokens: int) -> TokenCache:
    if tokenizer is None and (root / "tokenizer.json").is_file():  # a BPE trained before the cache was resumed
        tokenizer = Vocab(load_tokenizer(root / "tokenizer.json"), manifest["tokenizer"]["eos_id"])
    else:
        if tokenizer is None:
            progress("training tokenizer", 0, 0)
            tokenizer = train_bpe((text for s in sources if s.kind != "tokens" for text, _ in s.pieces()), vocab_size)
        atomic_write(root / "tokenizer.json", lambda tmp: tokenizer.tokenizer.save(tmp))
        manifest["tokenizer"]["eos_id"] = tokenizer.eos_id
    manifest["tokenizer"]["sha"] = tokenizer.fingerprint()  # open_cache checks the tokenizer.json it finds
    manifest["dtype"] = "uint16" if tokenizer.size <= 65536 else "uint32"
    _write_manifest(root, manifest)
    writer = _ShardWriter(root, manifest, shard_tokens)
    for tokens, key_, source_index, doc_index in _documents(sources, tokenizer, manifest.get("next", [0, 0]),
                                                           progress):
        writer.add(tokens, key_, (source_index, doc_index + 1))
    if manifest["tokens"] + writer.count == 0:  # refused before the manifest could say "complete"
        raise DataError("the data holds no text: " + ", ".join(s.spec for s in sources[:3]))
    writer.flush(final=True)
    return TokenCache(root, manifest)


def _start(root: Path, key: dict) -> dict:
    """The manifest to continue from: the one in root when it was made from the same sources and
    tokenizer, a fresh one for an empty or new directory; anything else is refused, never overwritten."""
    manifest = read_manifest(root) if root.is_dir() else None
    if manifest is not None:
        if manifest.get("key") != key:
            raise DataError(f"{root}: holds tokens of other data or another tokenizer; choose another directory")
        for stray in root.glob(".*.tmp"):  # a shard being written when the last run was killed
            stray.unlink(missing_ok=True)
        return manifest
    if root.exists() and (not root.is_dir() or any(p.name != LOCK for p in root.iterdir())):
        raise DataError(f"{root}: exists and is not a token cache; choose a new or empty directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the token cache ({first_line(e)})") from e
    return {"schema": SCHEMA, "alphaspec": __version__, "key": key, "tokenizer": {"fingerprint": key["tokenizer"],
            "eos_id": None}, "dtype": "uint16", "shards": [], "next": [0, 0], "tokens": 0, "documents": 0,
            "complete": False}


def _write_manifest(root: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1) + "\n"
    atomic_write(root / "manifest.json", lambda tmp: Path(tmp).write_text(text))


def _documents(sources: Sequence[Source], vocab: Vocab, start: list[int],
               progress) -> Iterator[tuple[np.ndarray, int, int, int]]:
    """(token ids, text hash, source index, document index) per document, from document `start` on.
    progress(stage, characters, tokens, source index, characters of this source) follows each document."""
    chars = tokens = 0
    for s_index in range(start[0], len(sources)):
        source, skip, here = sources[s_index], start[1] if s_index == start[0] else 0, 0
        if source.kind == "tokens":
            for d_index, ids in enumerate(_token_documents(source, vocab)):
                if d_index >= skip:
                    tokens += len(ids)
                    yield ids, zlib.crc32(ids.tobytes()), s_index, d_index
            continue
        for d_index, (ids, key, n_chars) in enumerate(_encoded(source, vocab, skip)):
            chars, tokens, here = chars + n_chars, tokens + len(ids), here + n_chars
            progress("tokenising", chars, tokens, s_index, here)
            yield ids, key, s_index, d_index + skip


def _encoded(source: Source, vocab: Vocab, skip: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """Per document of `source` after the first `skip`: its ids (EOS appended), text hash and length."""
    state = {"ids": [], "key": 0, "chars": 0}  # the document being assembled from its pieces
    batch, size = [], 0
    for text, last in _after(source.pieces(), skip):
        batch.append((text, last))
        size += len(text)
        if size >= BATCH_CHARS:
            yield from _encode_batch(batch, vocab, state, source)
            batch, size = [], 0
    yield from _encode_batch(batch, vocab, state, source)


def _encode_batch(batch: list[tuple[str, bool]], vocab: Vocab, state: dict,
                  source: Source) -> Iterator[tuple[np.ndarray, int, int]]:
    # pieces of one long document are encoded apart; each is cut after a newline, as BPE pre-tokenising would
    try:
        encodings = vocab.tokenizer.encode_batch([t for t, _ in batch], add_special_tokens=False) if batch else []
    except Exception as e:  # tokenizers raises plain Exceptions (a WordLevel model without [UNK], ...)
        raise DataError(f"{source.spec}: the tokenizer cannot encode this text ({first_line(e)})") from e
    for (text, last), enc in zip(batch, encodings, strict=True):
        state["ids"].append(np.asarray(enc.ids, dtype=np.uint32))
        state["key"] = zlib.crc32(text.encode("utf-8"), state["key"])
        state["chars"] += len(text)
        if last:
            if vocab.eos_id is not None:
                state["ids"].append(np.asarray([vocab.eos_id], dtype=np.uint32))
            yield np.concatenate(state["ids"]), state["key"], state["chars"]
            state.update(ids=[], key=0, chars=0)


def _after(pieces: Iterator[tuple[str, bool]], skip: int) -> Iterator[tuple[str, bool]]:
    """The pieces of every document after the first `skip` (those were tokenised before a resume)."""
    seen = 0
    for text, last in pieces:
        if seen >= skip:
            yield text, last
        seen += last


def _token_documents(source: Source, vocab: Vocab, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    """A token file's ids, checked against the vocabulary, as documents split after each EOS id (and at
    every `chunk` ids, so that memory stays bounded)."""
    ids = source.tokens()
    for begin in range(0, len(ids), chunk):
        part = np.asarray(ids[begin:begin + chunk])
        if len(part) and part.dtype.kind == "i" and int(part.min()) < 0:
            raise DataError(f"{source.path}: token id {int(part.min())} is negative; token ids count from 0")
        if len(part) and int(part.max()) >= vocab.size:
            raise DataError(f"{source.path}: token id {int(part.max())} is outside the tokenizer's vocabulary "
                            f"of {vocab.size}")
        cuts = np.flatnonzero(part == vocab.eos_id) + 1 if vocab.eos_id is not None else np.zeros(0, np.int64)
        yield from (p for p in np.split(part.astype(np.uint32), cuts) if len(p))


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


class _ShardWriter:
    """Collects documents and writes a shard (tokens, then document table, then manifest) once it is full."""

    def __init__(self, root: Path, manifest: dict, shard_tokens: int):
        self.root, self.manifest, self.limit = root, manifest, shard_tokens
        self.parts: list[np.ndarray] = []
        self.ends: list[tuple[int, int]] = []
        self.count, self.next = 0, manifest.get("next", [0, 0])

    def add(self, ids: np.ndarray, key: int, next_position: tuple[int, int]) -> None:
        self.parts.append(ids)
        self.count += len(ids)
        self.ends.append((self.count, key))
        self.next = list(next_position)
        if self.count >= self.limit:
            self.flush()

    def flush(self, final: bool = False) -> None:
        m = self.manifest
        if self.parts:
            index = len(m["shards"])
            tokens = np.concatenate(self.parts).astype(m["dtype"])
            file, docs = f"tokens-{index:05d}.bin", f"docs-{index:05d}.npy"
            atomic_write(self.root / file, lambda tmp: tokens.tofile(tmp))
            table = np.asarray(self.ends, dtype=np.int64)
            atomic_write(self.root / docs, lambda tmp: _save_npy(tmp, table))
            m["shards"].append({"file": file, "docs": docs, "tokens": int(len(tokens)), "documents": len(table),
                                "max_id": int(tokens.max())})
            m["tokens"] += int(len(tokens))
            m["documents"] += len(table)
            self.parts, self.ends, self.count = [], [], 0
        m["next"] = self.next
        m["complete"] = final
        _write_manifest(self.root, m)
