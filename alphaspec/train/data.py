"""A run's data: sources → token cache (reused across runs) → train/validation documents → batches.

Two layouts (`--packing`): `concat` samples random windows from the end-of-text-separated stream of
training documents; `docs` (the paper's) takes one document per row, truncated or padded to the
sequence length, with the padding left out of the loss (target -100). Validation is held out by
document (a hash of each document's text, so a document is wholly on one side and no window straddles
the two), or is `--val-data`. Batches are a pure function of (seed, step, rank), so the data position
of a resumed run is its step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from alphaspec.errors import AlphaspecError, check_input_file, first_line, parse_json
from alphaspec.files import atomic_write
from alphaspec.train.cache import TokenCache, build_cache, cache_key, open_cache, read_manifest
from alphaspec.train.sources import DataError, open_sources
from alphaspec.train.tokenizer import EOS, Vocab, load_tokenizer, resolve_tokenizer, train_bpe

IGNORE = -100  # the target of a padding position: F.cross_entropy leaves it out of the loss

__all__ = ["EOS", "IGNORE", "DataError", "DocStream", "TokenData", "bundled_corpus", "load_tokenizer",
           "load_tokens", "prepare", "train_bpe"]


def bundled_corpus() -> list[Path]:
    """The public-domain text shipped with alphaspec (three Shakespeare plays)."""
    root = files("alphaspec.train") / "corpus"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt"))


def cache_root() -> Path:
    """Where token caches of raw data go: $ALPHASPEC_CACHE, else ~/.cache/alphaspec/tokens."""
    env = os.environ.get("ALPHASPEC_CACHE")
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "alphaspec" / "tokens"
    return Path(env) if env else base


@dataclass
class DocStream:
    """Documents (spans of a token cache's shards) read as one stream: position i of the stream is token
    i of the documents laid end to end. Only the tokens asked for are read from the memory-maps."""

    shards: list[np.ndarray]
    starts: np.ndarray  # global start of each document
    lengths: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum([len(s) for s in self.shards])]).astype(np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.usable = np.flatnonzero(self.lengths >= 2)  # documents with at least one next-token target

    def __len__(self) -> int:
        return int(self.cum[-1])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at stream positions (any shape) as int64."""
        flat = np.asarray(positions, dtype=np.int64).ravel()
        doc = np.searchsorted(self.cum, flat, side="right") - 1
        return self._global(self.starts[doc] + flat - self.cum[doc]).reshape(np.shape(positions))

    def _global(self, where: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.offsets, where, side="right") - 1
        out = np.empty(len(where), dtype=np.int64)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.shards[s][where[mask] - self.offsets[s]]
        return out

    def documents(self, ids: np.ndarray, seq_len: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Documents `ids`, one per row, truncated or padded to seq_len (+1 for the last target); targets of
        padding are IGNORE."""
        lengths = np.minimum(self.lengths[ids], seq_len + 1)
        offsets = np.arange(seq_len + 1)
        valid = offsets[None, :] < lengths[:, None]
        where = np.where(valid, self.starts[ids][:, None] + offsets[None, :], 0)
        rows = torch.as_tensor(np.where(valid, self._global(where.ravel()).reshape(where.shape), pad))
        targets = rows[:, 1:].clone()
        targets[~torch.as_tensor(valid[:, 1:])] = IGNORE
        return rows[:, :-1], targets

    def cut(self, position: int) -> tuple[DocStream, DocStream]:
        """The stream before and after `position` (a document there is split in two)."""
        d = int(np.searchsorted(self.cum, position, side="right") - 1)
        inside = position - int(self.cum[d])
        head_len = np.concatenate([self.lengths[:d], [inside]])
        tail_start = np.concatenate([[self.starts[d] + inside], self.starts[d + 1:]])
        tail_len = np.concatenate([[self.lengths[d] - inside], self.lengths[d + 1:]])
        keep = head_len > 0
        return (DocStream(self.shards, self.starts[:d + 1][keep], head_len[keep]),
                DocStream(self.shards, tail_start[tail_len > 0], tail_len[tail_len > 0]))

    def array(self) -> np.ndarray:
        """The whole stream (for small data and tests)."""
        return self.take(np.arange(len(self)))


def _take(stream, positions: np.ndarray) -> np.ndarray:
    return stream.take(positions) if isinstance(stream, DocStream) else np.asarray(stream)[positions]


@dataclass
class TokenData:
    """Train and validation token streams (arrays, tensors or DocStreams) with deterministic batch sampling;
    packing "docs" samples whole documents instead of windows (DocStreams only)."""

    train: np.ndarray | torch.Tensor | DocStream
    val: np.ndarray | torch.Tensor | DocStream
    packing: str = "concat"
    pad: int = 0
    held_out: str = ""  # how the validation data was chosen, for the run's log

    @classmethod
    def split(cls, stream, val_fraction: float, seq_len: int, **kw) -> TokenData:
        """The last `val_fraction` of the stream held out (at least two windows of each side)."""
        n_val = max(int(len(stream) * val_fraction), 2 * (seq_len + 1))
        if len(stream) - n_val < 2 * (seq_len + 1):
            raise DataError(f"the text holds {len(stream)} tokens: too few for seq_len {seq_len} "
                            f"(need {n_val + 2 * (seq_len + 1)}); give more text or a shorter --seq-len")
        if isinstance(stream, DocStream):
            train, val = stream.cut(len(stream) - n_val)
            return cls(train=train, val=val, **kw)
        return cls(train=stream[:-n_val], val=stream[-n_val:], **kw)

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int, part: int = 0,
              parts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for step `step`: `part` of `parts` equal slices of the step's
        `batch_size` random windows (or documents). They depend on (seed, step) only, so any split over
        ranks and accumulation steps trains on the same data as one process does."""
        state = np.random.SeedSequence([seed, step]).generate_state(2, np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        per = batch_size // parts
        if self.packing == "docs":
            pick = torch.randint(0, len(self.train.usable), (batch_size,), generator=g)[part * per:(part + 1) * per]
            return self.train.documents(self.train.usable[pick.numpy()], seq_len, self.pad)
        starts = torch.randint(0, len(self.train) - seq_len - 1, (batch_size,), generator=g)
        return _windows(self.train, starts[part * per:(part + 1) * per], seq_len)

    def eval_batches(self, n_windows: int, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        """Evenly spaced validation windows (or documents), this rank's share, in batches."""
        if self.packing == "docs":
            last = len(self.val.usable) - 1
            ids = self.val.usable[torch.linspace(0, last, min(n_windows, last + 1)).long()[rank::world].numpy()]
            for i in range(0, len(ids), batch_size):
                yield self.val.documents(ids[i:i + batch_size], seq_len, self.pad)
            return
        last = len(self.val) - seq_len - 1
        starts = torch.linspace(0, last, min(n_windows, last + 1)).long()[rank::world]
        for i in range(0, len(starts), batch_size):
            yield _windows(self.val, starts[i:i + batch_size], seq_len)


def _windows(stream, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = (starts[:, None] + torch.arange(seq_len + 1)).numpy()
    w = torch.as_tensor(_take(stream, idx).astype(np.int64))
    return w[:, :-1], w[:, 1:]


# -- a run's data: prepared once into caches, recorded in RUN/data/cache.json ------------------------------------
def prepare(run_dir: Path, opts, status: Callable[[str], None] = lambda _: None) -> None:
    """Token caches for a run's --data and --val-data (made, finished or reused), and RUN/tokenizer.json.

    opts: the run's DataOptions. RUN/data/cache.json names the caches and the tokenizer's fingerprint;
    it is written before the tokenizer, so a run killed here starts this step again (reusing the caches).
    """
    link, tok_path = run_dir / "data" / "cache.json", run_dir / "tokenizer.json"
    if tok_path.exists() and (link.exists() or (run_dir / "data" / "tokens.npy").exists()):
        return  # prepared when the run started (tokens.npy: a run of alphaspec 0.1)
    given = resolve_tokenizer(opts.tokenizer) if opts.tokenizer else None
    specs = opts.sources or [str(p) for p in bundled_corpus()]
    train = _cache_for(specs, opts, given, status)
    vocab = train.vocab
    val = _cache_for(opts.val_sources, opts, vocab, status) if opts.val_sources else None
    record = {"train": str(train.root.resolve()), "val": str(val.root.resolve()) if val else None,
              "tokenizer": vocab.fingerprint(), "eos_id": vocab.eos_id}
    link.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(link, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
    hf_config = tokenizer_config(vocab)  # so AutoTokenizer.from_pretrained(RUN) knows its class and end token
    atomic_write(run_dir / TOKENIZER_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(hf_config, indent=1) + "\n"))
    atomic_write(tok_path, lambda tmp: vocab.tokenizer.save(tmp))


TOKENIZER_CONFIG = "tokenizer_config.json"


def tokenizer_config(vocab: Vocab) -> dict:
    """tokenizer_config.json as transformers reads it beside tokenizer.json: the fast tokenizer class and
    the end-of-document token the run separates documents with (none when the tokenizer has none)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if vocab.eos_id is not None:
        config["eos_token"] = vocab.tokenizer.id_to_token(vocab.eos_id)
    return config


def _cache_for(specs, opts, vocab: Vocab | None, status) -> TokenCache:
    """A cache named on the command line, or the cache of raw sources under --token-cache (made if new)."""
    if len(specs) == 1 and read_manifest(Path(specs[0])) is not None:
        cache = open_cache(Path(specs[0]))
        if vocab is not None and cache.vocab.fingerprint() != vocab.fingerprint():
            raise DataError(f"{specs[0]}: the token cache was made with another tokenizer than "
                            f"{opts.tokenizer or 'the training data'}'s")
        status(f"using the token cache {specs[0]} ({cache.manifest['tokens']:,} tokens)")
        return cache
    sources = open_sources(specs, opts.text_field)
    key = cache_key(sources, vocab, opts.vocab_size)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(opts.token_cache) if opts.token_cache else cache_root()
    root = root / digest
    manifest = read_manifest(root) if root.is_dir() else None
    if manifest is not None and manifest.get("complete"):
        status(f"reusing the token cache {root} ({manifest['tokens']:,} tokens)")
    else:
        status(f"tokenising {len(sources)} source(s) into {root}")

    def progress(stage: str, *_) -> None:
        if stage == "training tokenizer":
            status(f"training a {opts.vocab_size}-token BPE")
        elif stage == "waiting":  # runs started together on one corpus share its cache: one writes, the rest reuse it
            status(f"another alphaspec process is writing the token cache {root}; waiting for it to finish")

    return build_cache(sources, root, vocab, opts.vocab_size, progress, wait=True)


def load_tokens(run_dir: Path, val_fraction: float, seq_len: int, vocab_size: int | None = None,
                packing: str = "concat") -> TokenData:
    """The run's train/validation data, from the caches RUN/data/cache.json names (or a 0.1 run's token files).

    Validation: --val-data when the run has it; else whole documents, chosen by a hash of their text,
    holding about `val_fraction` of them; with too few documents for that, the last `val_fraction` of
    the tokens (TokenData.held_out says which)."""
    if (run_dir / "data" / "tokens.npy").exists():
        return _legacy_tokens(run_dir, val_fraction, seq_len, vocab_size)
    link = _read_link(run_dir / "data" / "cache.json")
    train = open_cache(Path(link["train"]))
    if train.vocab.fingerprint() != link["tokenizer"]:
        raise DataError(f"{link['train']}: the token cache changed since the run started (another tokenizer)")
    pad = link["eos_id"] if link["eos_id"] is not None else 0
    kw = {"packing": packing, "pad": pad}
    if link["val"]:
        data = TokenData(train=_stream(train), val=_stream(open_cache(Path(link["val"]))), **kw)
        data.held_out = "--val-data"
    else:
        data = _held_out(train, val_fraction, seq_len, kw)
    for what, part in (("training", data.train), ("validation", data.val)):
        if len(part) < 2 * (seq_len + 1):
            raise DataError(f"the {what} data holds {len(part)} tokens: too few for seq_len {seq_len}")
    return data


def _stream(cache: TokenCache) -> DocStream:
    starts, lengths, _ = cache.documents()
    return DocStream(cache.shards(), starts, lengths)


def _held_out(cache: TokenCache, val_fraction: float, seq_len: int, kw: dict) -> TokenData:
    starts, lengths, keys = cache.documents()
    shards = cache.shards()  # the table and the memory-maps are read once, for both sides
    val = keys < val_fraction * 2**32  # a document's side depends on its text only
    enough = 2 * (seq_len + 1)
    if lengths[val].sum() >= enough and lengths[~val].sum() >= enough:
        data = TokenData(train=DocStream(shards, starts[~val], lengths[~val]),
                         val=DocStream(shards, starts[val], lengths[val]), **kw)
        data.held_out = f"{int(val.sum())} of {len(val)} documents"
        return data
    data = TokenData.split(DocStream(shards, starts, lengths), val_fraction, seq_len, **kw)
    data.held_out = f"the last {val_fraction:.0%} of the tokens (too few documents to hold out whole ones)"
    return data


def _read_link(path: Path) -> dict:
    try:
        check_input_file(path, "run data record")
        link = parse_json(path.read_text(encoding="utf-8"))
        if not isinstance(link, dict) or not isinstance(link.get("train"), str):
            raise ValueError("no 'train' cache named")
        return link
    except AlphaspecError as e:
        raise DataError(str(e)) from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: damaged ({first_line(e)})") from e


def _legacy_tokens(run_dir: Path, val_fraction: float, seq_len: int, vocab_size: int | None) -> TokenData:
    """A run started by alphaspec 0.1: data/tokens.npy, and data/val.npy when it had --val-data."""
    stream = _token_file(run_dir / "data" / "tokens.npy", vocab_size)
    val_path = run_dir / "data" / "val.npy"
    if not val_path.exists():
        return TokenData.split(stream, val_fraction, seq_len)
    return TokenData(train=stream, val=_token_file(val_path, vocab_size))


def _token_file(path: Path, vocab_size: int | None) -> np.ndarray:
    try:
        check_input_file(path, "token file")
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except AlphaspecError as e:
        raise DataError(str(e)) from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a token file ({first_line(e)})") from e
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise DataError(f"{path}: not a token file (a 1-D integer array was expected, found {tokens.dtype} "
                        f"{tokens.ndim}-D)")
    if vocab_size is not None and len(tokens) and int(tokens.max()) >= vocab_size:
        raise DataError(f"{path}: token id {int(tokens.max())} is outside the tokenizer's vocabulary of {vocab_size}")
    return tokens
