"""The tokenizer of a run: a `tokenizer.json`, a directory holding one, a hub id, or a BPE trained on the data.

A tokenizer travels with its end-of-text id (`Vocab`), which separates documents in the token stream
and pads them under `--packing docs`; a hub tokenizer's comes from its own `tokenizer_config.json`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from alphaspec.errors import AlphaspecError, check_input_file, first_line, parse_json
from alphaspec.train.sources import DataError

EOS = "<|endoftext|>"
# end-of-text tokens of common tokenizers, tried in order when a tokenizer does not say which is its own
EOS_NAMES = (EOS, "</s>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


@dataclass
class Vocab:
    """A tokenizer and its end-of-text id (None when it has none)."""

    tokenizer: Tokenizer
    eos_id: int | None

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def fingerprint(self) -> str:
        """What identifies the tokenizer for the token cache: a hash of its serialised form and EOS id."""
        return hashlib.sha256(f"{self.tokenizer.to_str()}|{self.eos_id}".encode()).hexdigest()[:32]


def train_bpe(texts: Iterator[str], vocab_size: int) -> Vocab:
    """A GPT-2-style byte-level BPE with an end-of-text token, trained on the texts."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return Vocab(tok, tok.token_to_id(EOS))


def load_tokenizer(path: Path) -> Tokenizer:
    """A tokenizers JSON file; a damaged or foreign one is a DataError naming it."""
    try:
        check_input_file(path, "tokenizer file")
        return Tokenizer.from_file(str(path))
    except AlphaspecError as e:
        raise DataError(str(e)) from e
    except Exception as e:  # tokenizers raises a bare Exception for unreadable files
        raise DataError(f"{path}: not a tokenizers JSON file ({first_line(e)})") from e


def resolve_tokenizer(spec: str | Path) -> Vocab:
    """A tokenizer.json, a directory with one (and its tokenizer_config.json), or a hub id NAME[@REVISION]
    fetched through huggingface_hub (its cache, HF_HUB_OFFLINE and HF_HOME apply)."""
    path = Path(spec)
    if path.is_dir():
        return _with_eos(load_tokenizer(path / "tokenizer.json"), path / "tokenizer_config.json")
    if path.exists() or str(spec).endswith(".json") or "/" not in str(spec) and path.suffix:
        return _with_eos(load_tokenizer(path), path.parent / "tokenizer_config.json")
    return _from_hub(str(spec))


def _from_hub(spec: str) -> Vocab:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo, _, revision = spec.partition("@")
    try:
        file = hf_hub_download(repo, "tokenizer.json", revision=revision or None)
    except EntryNotFoundError as e:
        if isinstance(e, LocalEntryNotFoundError):  # offline, or no network, and not in the cache
            raise DataError(f"{spec}: no such tokenizer in the local cache, and the hub cannot be reached "
                            f"({first_line(e)})") from e
        raise DataError(f"{spec}: the repository has no tokenizer.json (a fast tokenizer is needed)") from None
    except Exception as e:  # not found, offline without a cached copy, no network, bad revision
        raise DataError(f"{spec}: no such tokenizer on the hub or in the local cache ({first_line(e)})") from e
    try:
        config = Path(hf_hub_download(repo, "tokenizer_config.json", revision=revision or None))
    except Exception:  # optional: the EOS token is then found by name
        config = Path(file).parent / "tokenizer_config.json"
    return _with_eos(load_tokenizer(Path(file)), config)


def _with_eos(tok: Tokenizer, config: Path) -> Vocab:
    name = None
    if config.is_file():
        try:
            eos = parse_json(config.read_text(encoding="utf-8")).get("eos_token")
            name = eos.get("content") if isinstance(eos, dict) else eos
        except (OSError, ValueError, AttributeError):
            name = None
    for candidate in ([name] if name else []) + list(EOS_NAMES):
        if tok.token_to_id(candidate) is not None:
            return Vocab(tok, tok.token_to_id(candidate))
    return Vocab(tok, None)
