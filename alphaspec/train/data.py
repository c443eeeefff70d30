"""Training text → a byte-level BPE tokenizer → token arrays → random fixed-length windows.

Batches are a pure function of (seed, step, rank), so the data position of a resumed run is its step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import AlphaspecError, check_input_file, first_line, input_kind, os_reason
from ..output import atomic_write

EOS = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")


class DataError(AlphaspecError, ValueError):
    """The training data cannot be used (missing, empty, too short for one window)."""


def bundled_corpus() -> list[Path]:
    """The public-domain text shipped with alphaspec (three Shakespeare plays)."""
    root = files("alphaspec.train") / "corpus"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt"))


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """The text files named, directories searched recursively for *.txt/*.md/*.rst; errors name the path."""
    out: list[Path] = []
    for p in map(Path, paths):
        try:
            kind = input_kind(p, "text file")
        except AlphaspecError as e:
            raise DataError(str(e)) from e
        if kind == "directory":
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no text files (*.txt, *.md, *.rst) in this directory")
            out += found
        elif kind == "file":
            out.append(p)
        else:
            raise DataError(f"{p}: is a {kind}, not a text file")
    return out


def read_documents(paths: Sequence[Path]) -> list[str]:
    docs = []
    for p in paths:
        try:
            docs.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        except OSError as e:
            raise DataError(f"{p}: cannot read ({os_reason(e)})") from e
    if not any(d.strip() for d in docs):
        raise DataError("the training text is empty")
    return docs


def chunks(docs: Sequence[str], size: int = 1 << 20) -> Iterator[str]:
    """Documents cut at line ends into pieces of about `size` characters (bounded memory for big corpora)."""
    for doc in docs:
        start = 0
        while start < len(doc):
            end = doc.find("\n", start + size)
            end = len(doc) if end < 0 else end + 1
            yield doc[start:end]
            start = end


def train_tokenizer(docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE with an end-of-text token, trained on the documents."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(chunks(docs), trainer)
    return tok


def encode(tok: Tokenizer, docs: Sequence[str], batch: int = 32) -> np.ndarray:
    """All documents as one token stream, each followed by the end-of-text token (encoded in parallel,
    a batch of ~1 MB pieces at a time)."""
    dtype = np.uint16 if tok.get_vocab_size() <= 65536 else np.uint32
    eos = tok.token_to_id(EOS)
    parts: list[np.ndarray] = []
    for doc in docs:
        pieces = list(chunks([doc]))
        for i in range(0, len(pieces), batch):
            parts += [np.asarray(e.ids, dtype=dtype) for e in tok.encode_batch(pieces[i:i + batch])]
        if eos is not None:
            parts.append(np.asarray([eos], dtype=dtype))
    return np.concatenate(parts)


@dataclass
class TokenData:
    """Train and validation token streams (numpy arrays, memory-mapped from the run directory, or
    tensors), with deterministic batch sampling; only the sampled windows are read into memory."""

    train: np.ndarray | torch.Tensor
    val: np.ndarray | torch.Tensor

    @classmethod
    def split(cls, stream: np.ndarray, val_fraction: float, seq_len: int) -> TokenData:
        """The last `val_fraction` of the stream is held out (at least two windows of each side)."""
        n_val = max(int(len(stream) * val_fraction), 2 * (seq_len + 1))
        if len(stream) - n_val < 2 * (seq_len + 1):
            raise DataError(f"the text holds {len(stream)} tokens: too few for seq_len {seq_len} "
                            f"(need {n_val + 2 * (seq_len + 1)}); give more text or a shorter --seq-len")
        return cls(train=stream[:-n_val], val=stream[-n_val:])

    def batch(self, step: int, batch_size: int, seq_len: int, seed: int, part: int = 0,
              parts: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for step `step`: `part` of `parts` equal slices of the step's
        `batch_size` random windows. The windows depend on (seed, step) only, so any split over ranks and
        accumulation steps trains on the same data as one process does."""
        state = np.random.SeedSequence([seed, step]).generate_state(2, np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
        starts = torch.randint(0, len(self.train) - seq_len - 1, (batch_size,), generator=g)
        per = batch_size // parts
        return _windows(self.train, starts[part * per:(part + 1) * per], seq_len)

    def eval_batches(self, n_windows: int, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        """Evenly spaced validation windows, this rank's share, in batches."""
        last = len(self.val) - seq_len - 1
        starts = torch.linspace(0, last, min(n_windows, last + 1)).long()[rank::world]
        for i in range(0, len(starts), batch_size):
            yield _windows(self.val, starts[i:i + batch_size], seq_len)


def _windows(stream, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = (starts[:, None] + torch.arange(seq_len + 1)).numpy()
    w = torch.as_tensor(np.asarray(stream)[idx].astype(np.int64))
    return w[:, :-1], w[:, 1:]


def prepare(run_dir: Path, data: Sequence[str | Path], vocab_size: int, tokenizer: str | Path | None = None,
            val_data: Sequence[str | Path] = (), status: Callable[[str], None] = lambda _: None) -> Tokenizer:
    """Tokenizer and token streams for a run, made once and kept in the run directory (reused on resume).

    data/tokens.npy holds the training text; data/val.npy the `val_data` text when there is one (the
    tokenizer is trained on the training text only).
    """
    tok_path, stream_path, val_path = run_dir / "tokenizer.json", run_dir / "data" / "tokens.npy", run_dir / "data" / "val.npy"
    if tok_path.exists() and stream_path.exists():
        return load_tokenizer(tok_path)
    status("reading the text")
    docs = read_documents(text_files(data) if data else bundled_corpus())
    val_docs = read_documents(text_files(val_data)) if val_data else None
    megabytes = sum(map(len, docs)) / 1e6
    if tokenizer:
        tok = load_tokenizer(Path(tokenizer))
    else:
        status(f"training a {vocab_size}-token BPE on {megabytes:.1f} MB of text")
        tok = train_tokenizer(docs, vocab_size)
    status(f"tokenising {megabytes:.1f} MB of text")
    stream_path.parent.mkdir(parents=True, exist_ok=True)
    # Each file appears whole or not at all, the tokenizer last: a run killed here starts this step again.
    if val_docs is not None:
        _save_array(val_path, encode(tok, val_docs))
    _save_array(stream_path, encode(tok, docs))
    atomic_write(tok_path, lambda tmp: tok.save(tmp))
    return tok


def _save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizers JSON file; a damaged or foreign one is a DataError naming it."""
    try:
        check_input_file(path, "tokenizer file")
        return Tokenizer.from_file(str(path))
    except AlphaspecError as e:
        raise DataError(str(e)) from e
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise DataError(f"{path}: not a tokenizers JSON file ({first_line(e)})") from e


def load_tokens(run_dir: Path, val_fraction: float, seq_len: int, vocab_size: int | None = None) -> TokenData:
    """The run's train/validation streams: data/val.npy when the run has one, else the tail of the text.

    Each stream must be a 1-D integer array whose ids fit the vocabulary (checked once, here, rather than
    failing inside an embedding lookup)."""
    stream = _token_file(run_dir / "data" / "tokens.npy", vocab_size)
    val_path = run_dir / "data" / "val.npy"
    if not val_path.exists():
        return TokenData.split(stream, val_fraction, seq_len)
    val = _token_file(val_path, vocab_size)
    for what, part in (("training", stream), ("validation", val)):
        if len(part) < 2 * (seq_len + 1):
            raise DataError(f"the {what} text holds {len(part)} tokens: too few for seq_len {seq_len}")
    return TokenData(train=stream, val=val)


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


