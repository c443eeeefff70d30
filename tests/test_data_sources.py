"""Training data sources, tokenizers and the token cache: every format gives the tokens of the same text in a
plain file; caches are reused, resumed and refused as they should be; --packing docs masks its padding."""

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alphaspec.train.cache import build_cache, open_cache
from alphaspec.train.data import IGNORE, DocStream, TokenData, _held_out, bundled_corpus
from alphaspec.train.sources import DataError, open_sources, split_pieces
from alphaspec.train.tokenizer import EOS, Vocab, train_bpe

TEXT = bundled_corpus()[0].read_text()
DOCS = [TEXT[i:i + 3000] for i in range(0, 90_000, 3000)]  # 30 documents


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return train_bpe(iter(DOCS), 512)


def tokens_of(cache) -> tuple[np.ndarray, np.ndarray]:
    starts, lengths, _ = cache.documents()
    return np.concatenate([np.asarray(s) for s in cache.shards()]), lengths


def write_formats(d: Path) -> dict[str, str]:
    """The same documents in every format a source can have."""
    (d / "txt").mkdir()
    for i, doc in enumerate(DOCS):
        (d / "txt" / f"{i:03d}.txt").write_text(doc)
    lines = "".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(DOCS))
    (d / "d.jsonl").write_text(lines)
    with gzip.open(d / "d.jsonl.gz", "wt") as f:
        f.write(lines)
    import zstandard

    (d / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), d / "d.parquet", row_group_size=7)
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(d / "saved"))
    return {"txt": str(d / "txt"), "jsonl": str(d / "d.jsonl"), "gz": str(d / "d.jsonl.gz"),
            "zst": str(d / "d.jsonl.zst"), "parquet": str(d / "d.parquet"), "hf-saved": f"hf:{d / 'saved'}",
            "saved-dir": str(d / "saved")}


def test_every_format_gives_the_tokens_of_the_plain_text(tmp_path, vocab):
    sources = write_formats(tmp_path)
    want = np.concatenate([np.asarray(vocab.tokenizer.encode(doc).ids + [vocab.eos_id]) for doc in DOCS])
    for name, spec in sources.items():
        cache = build_cache(open_sources([spec]), tmp_path / f"cache-{name}", vocab)
        tokens, lengths = tokens_of(cache)
        assert np.array_equal(tokens, want), name
        assert len(lengths) == len(DOCS) and (tokens[np.cumsum(lengths) - 1] == vocab.eos_id).all(), name
    assert open_cache(tmp_path / "cache-zst").manifest["dtype"] == "uint16"


def test_token_files_are_read_as_they_are_and_checked_against_the_vocabulary(tmp_path, vocab):
    ids = np.concatenate([np.asarray(vocab.tokenizer.encode(doc).ids + [vocab.eos_id]) for doc in DOCS[:5]])
    ids.astype(np.uint16).tofile(tmp_path / "train.bin")  # nanoGPT's format
    np.save(tmp_path / "train.npy", ids.astype(np.uint32))
    for name in ("train.bin", "train.npy"):
        cache = build_cache(open_sources([tmp_path / name]), tmp_path / f"c-{name}", vocab)
        tokens, lengths = tokens_of(cache)
        assert np.array_equal(tokens, ids) and len(lengths) == 5  # documents end at each EOS
    np.save(tmp_path / "big.npy", np.asarray([1, 2, 900], dtype=np.uint32))
    with pytest.raises(DataError, match="token id 900 is outside the tokenizer's vocabulary of 512"):
        build_cache(open_sources([tmp_path / "big.npy"]), tmp_path / "c-big", vocab)


def test_compressed_and_parquet_sources_stream_in_bounded_memory(tmp_path):
    """40 MB of records, read piece by piece: the reader never holds more than a few pieces."""
    import zstandard

    record = json.dumps({"text": "x" * 9_000 + "\n"}) + "\n"
    (tmp_path / "big.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress((record * 4500).encode()))
    with gzip.open(tmp_path / "big.jsonl.gz", "wt") as f:
        f.write(record * 4500)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["y" * 9_000] * 4500}), tmp_path / "big.parquet", row_group_size=500)
    for name in ("big.jsonl.zst", "big.jsonl.gz", "big.parquet"):
        (source,) = open_sources([tmp_path / name])
        tracemalloc.start()
        total = sum(len(text) for text, _ in source.pieces())
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert total >= 4500 * 9_000 and peak < 16e6, (name, peak)


def test_long_documents_are_cut_into_pieces_at_line_ends_losing_nothing():
    doc = "".join(f"line {i} of the text\n" for i in range(100_000)) + "no newline at the end"
    pieces = list(split_pieces(doc))
    assert "".join(t for t, _ in pieces) == doc and [last for _, last in pieces] == [False] * (len(pieces) - 1) + [True]
    assert all(t.endswith("\n") for t, _ in pieces[:-1]) and len(pieces) > 1


def test_a_killed_tokenize_resumes_to_the_same_cache(tmp_path, vocab, monkeypatch):
    sources = write_formats(tmp_path)
    whole = build_cache(open_sources([sources["jsonl"]]), tmp_path / "whole", vocab, shard_tokens=5000)
    (source,) = open_sources([sources["jsonl"]])
    real = type(source).pieces

    def dies_after_20_documents(self):
        done = 0
        for text, last in real(self):
            yield text, last
            done += last
            if done == 20:
                raise KeyboardInterrupt  # killed

    monkeypatch.setattr(type(source), "pieces", dies_after_20_documents)
    monkeypatch.setattr("alphaspec.train.cache.BATCH_CHARS", 5000)  # encode (and so write) as it goes
    with pytest.raises(KeyboardInterrupt):
        build_cache(open_sources([sources["jsonl"]]), tmp_path / "resumed", vocab, shard_tokens=5000)
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and 0 < len(partial["shards"]) < len(whole.manifest["shards"])
    monkeypatch.undo()
    resumed = build_cache(open_sources([sources["jsonl"]]), tmp_path / "resumed", vocab, shard_tokens=5000)
    assert np.array_equal(tokens_of(resumed)[0], tokens_of(whole)[0])
    assert resumed.manifest["shards"] == whole.manifest["shards"] and resumed.manifest["documents"] == len(DOCS)
    assert np.array_equal(resumed.documents()[2], whole.documents()[2])


def test_a_cache_is_reused_and_refused_for_other_data_or_tokenizers(tmp_path, vocab):
    sources = write_formats(tmp_path)
    first = build_cache(open_sources([sources["jsonl"]]), tmp_path / "c", vocab)
    stamp = (tmp_path / "c" / "tokens-00000.bin").stat().st_mtime_ns
    again = build_cache(open_sources([sources["jsonl"]]), tmp_path / "c", vocab)  # idempotent: nothing rewritten
    assert again.manifest == first.manifest and (tmp_path / "c" / "tokens-00000.bin").stat().st_mtime_ns == stamp
    other = train_bpe(iter(DOCS), 600)
    with pytest.raises(DataError, match="other data or another tokenizer"):
        build_cache(open_sources([sources["jsonl"]]), tmp_path / "c", other)
    with pytest.raises(DataError, match="other data or another tokenizer"):
        build_cache(open_sources([sources["parquet"]]), tmp_path / "c", vocab)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a token cache"):
        build_cache(open_sources([sources["jsonl"]]), tmp_path / "mine", vocab)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_runs_reuse_the_cache_of_the_same_data_and_tokenizer(tmp_path):
    """The run-level cache of raw data is keyed by source and tokenizer fingerprints."""
    from alphaspec.train.config import TrainConfig
    from alphaspec.train.data import _cache_for

    sources = write_formats(tmp_path)
    opts = TrainConfig.of(token_cache=str(tmp_path / "caches"), vocab_size=512).data
    a = _cache_for([sources["jsonl"]], opts, None, lambda _: None)
    b = _cache_for([sources["jsonl"]], opts, None, lambda _: None)
    c = _cache_for([sources["jsonl"]], opts, train_bpe(iter(DOCS[:10]), 300), lambda _: None)
    assert a.root == b.root and c.root != a.root and len(list((tmp_path / "caches").iterdir())) == 2


def test_runs_started_together_wait_for_the_one_writing_their_cache(tmp_path):
    """Two runs started at once on one corpus share its cache: the second failed ("another alphaspec tokenize
    is writing this cache"). A run now says it waits, waits for the lock, then reuses what the first wrote."""
    import threading
    import time

    from alphaspec.train.cache import LOCK
    from alphaspec.train.config import TrainConfig
    from alphaspec.train.data import _cache_for
    from alphaspec.train.rundir import exclusive_lock

    sources = write_formats(tmp_path)
    opts = TrainConfig.of(token_cache=str(tmp_path / "caches"), vocab_size=512).data
    first = _cache_for([sources["jsonl"]], opts, None, lambda _: None)
    stamp = (first.root / "tokens-00000.bin").stat().st_mtime_ns
    held = exclusive_lock(first.root / LOCK, RuntimeError("held"))  # the lock a writing process holds
    threading.Timer(1.0, held.close).start()
    lines, started = [], time.perf_counter()
    second = _cache_for([sources["jsonl"]], opts, None, lines.append)
    assert time.perf_counter() - started >= 0.9
    assert any("another alphaspec process is writing the token cache" in line and "waiting" in line for line in lines)
    assert second.manifest == first.manifest and (first.root / "tokens-00000.bin").stat().st_mtime_ns == stamp


def test_validation_is_held_out_by_whole_documents(tmp_path, vocab):
    docs = [f"document {i}: " + TEXT[i * 500:(i + 1) * 500] for i in range(400)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cache = build_cache(open_sources([tmp_path / "d.jsonl"]), tmp_path / "c", vocab)
    data = _held_out(cache, 0.1, 32, {})
    starts, lengths, _ = cache.documents()
    train = set(zip(data.train.starts.tolist(), data.train.lengths.tolist(), strict=True))
    val = set(zip(data.val.starts.tolist(), data.val.lengths.tolist(), strict=True))
    assert not train & val and train | val == set(zip(starts.tolist(), lengths.tolist(), strict=True))
    assert 0.05 < len(val) / len(docs) < 0.15 and data.held_out == f"{len(val)} of 400 documents"
    # the side of a document depends on its text alone: the same split from the documents in another order
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in reversed(docs)))
    again = _held_out(build_cache(open_sources([tmp_path / "r.jsonl"]), tmp_path / "r", vocab), 0.1, 32, {})
    decode = vocab.tokenizer.decode
    first_words = sorted(decode(again.val.documents(np.arange(len(again.val.lengths)), 4, 0)[0][i].tolist())
                         for i in range(len(again.val.lengths)))
    assert first_words == sorted(decode(data.val.documents(np.arange(len(data.val.lengths)), 4, 0)[0][i].tolist())
                                 for i in range(len(data.val.lengths)))


def test_packing_docs_pads_and_leaves_the_padding_out_of_the_loss():
    """Two documents, 5 and 3 tokens, seq_len 4: rows [a0..a3] and [b0 b1 b2 pad]; the loss is the mean
    over the 4 + 2 real next-token targets, by hand."""
    shard = np.asarray([10, 11, 12, 13, 14, 20, 21, 22], dtype=np.uint16)
    stream = DocStream([shard], np.asarray([0, 5]), np.asarray([5, 3]))
    x, y = stream.documents(np.asarray([0, 1]), seq_len=4, pad=0)
    assert x.tolist() == [[10, 11, 12, 13], [20, 21, 22, 0]]
    assert y.tolist() == [[11, 12, 13, 14], [21, 22, IGNORE, IGNORE]]
    logits = torch.randn(2, 4, 30, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, dim=-1)
    by_hand = -sum(logp[0, t, y[0, t]] for t in range(4)) - logp[1, 0, 21] - logp[1, 1, 22]
    assert F.cross_entropy(logits.flatten(0, 1), y.flatten()) == pytest.approx(float(by_hand) / 6, rel=1e-6)
    data = TokenData(train=stream, val=stream, packing="docs")
    bx, by = data.batch(step=1, batch_size=8, seq_len=4, seed=0)
    assert bx.shape == (8, 4) and set(map(tuple, bx.tolist())) <= {tuple(r) for r in x.tolist()}


def test_a_stream_over_documents_reads_across_shards_as_one_array():
    shards = [np.arange(0, 10, dtype=np.uint16), np.arange(10, 25, dtype=np.uint16)]
    stream = DocStream(shards, np.asarray([0, 4, 10, 18]), np.asarray([4, 6, 8, 7]))  # documents 1 and 2 skipped
    assert len(stream) == 25 and stream.array().tolist() == list(range(25))
    keep = DocStream(shards, np.asarray([4, 18]), np.asarray([6, 7]))
    assert keep.array().tolist() == [4, 5, 6, 7, 8, 9, 18, 19, 20, 21, 22, 23, 24]
    head, tail = keep.cut(8)
    assert head.array().tolist() == [4, 5, 6, 7, 8, 9, 18, 19] and tail.array().tolist() == [20, 21, 22, 23, 24]


def test_eos_comes_from_the_tokenizer(vocab, tmp_path):
    from alphaspec.train.tokenizer import resolve_tokenizer

    assert vocab.eos_id == vocab.tokenizer.token_to_id(EOS)
    vocab.tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert resolve_tokenizer(tmp_path / "tokenizer.json").eos_id == vocab.eos_id
    assert resolve_tokenizer(tmp_path).eos_id == vocab.eos_id  # a directory holding tokenizer.json


# -- the command line, and bad input --------------------------------------------------------------------------------
def cli(*args, env=None):
    full = os.environ | {"COLUMNS": "120"} | (env or {})
    return subprocess.run([sys.executable, "-m", "alphaspec", *map(str, args)], capture_output=True, text=True,
                          env=full, timeout=300)


def hub_cache(home: Path, vocab: Vocab, repo: str = "tiny-org/tiny-tok") -> None:
    """The hub cache layout huggingface_hub reads offline, holding a tokenizer whose EOS is '</s>'."""
    base = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    vocab.tokenizer.add_special_tokens(["</s>"])
    vocab.tokenizer.save(str(snap / "tokenizer.json"))
    (snap / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("a" * 40)


def test_tokenize_with_a_hub_tokenizer_offline(tmp_path):
    vocab = train_bpe(iter(DOCS), 512)
    hub_cache(tmp_path / "hf", vocab)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:4]))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("tokenize", tmp_path / "d.jsonl", "-o", tmp_path / "c", "--tokenizer", "tiny-org/tiny-tok", env=env)
    assert proc.returncode == 0, proc.stderr
    cache = open_cache(tmp_path / "c")
    assert cache.vocab.eos_id == vocab.tokenizer.token_to_id("</s>") == 512  # its own EOS, not <|endoftext|>
    tokens, lengths = tokens_of(cache)
    assert len(lengths) == 4 and (tokens[np.cumsum(lengths) - 1] == cache.vocab.eos_id).all()
    missing = cli("tokenize", tmp_path / "d.jsonl", "-o", tmp_path / "c2", "--tokenizer", "nobody/none", env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("error: nobody/none: no such tokenizer in the local cache")
    assert not (tmp_path / "c2").exists()


def test_an_unknown_hub_dataset_offline_is_one_error_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = cli("tokenize", "hf:nobody/nothing:en", "-o", tmp_path / "c", "--vocab-size", "512", env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: hf:nobody/nothing:en: cannot open the dataset")


def test_train_on_a_cache_made_by_tokenize(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    assert cli("tokenize", tmp_path / "d.jsonl", "-o", tmp_path / "c", "--vocab-size", "512", "-q").returncode == 0
    again = cli("tokenize", tmp_path / "d.jsonl", "-o", tmp_path / "c", "--vocab-size", "512")
    assert again.returncode == 0 and "30 documents" in again.stdout
    proc = cli("train", "--out", tmp_path / "r", "--data", tmp_path / "c", "--steps", "2", "--seq-len", "32",
               "--batch-size", "2", "--eval-every", "2", "--eval-windows", "2", "--packing", "docs")
    assert proc.returncode == 0, proc.stderr
    assert "using the token cache" in proc.stderr + proc.stdout


def bad_inputs(d: Path, vocab: Vocab) -> dict:
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    (d / "field.jsonl").write_text('{"content": "no text field"}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), d / "col.parquet")
    np.save(d / "ids.npy", np.asarray([1, 70_000], dtype=np.uint32))
    vocab.tokenizer.save(str(d / "tok.json"))
    (d / "empty.jsonl").write_text("\n\n")
    return {"bad.jsonl:2: not a JSON record": [d / "bad.jsonl"],
            "field.jsonl:1: no 'text' field (found: content)": [d / "field.jsonl"],
            "col.parquet: no column 'text' (columns: body)": [d / "col.parquet"],
            "token id 70000 is outside the tokenizer's vocabulary of 512": [d / "ids.npy", "--tokenizer", d / "tok.json"],
            "the data holds no text": [d / "empty.jsonl"],
            "missing.jsonl: no such file": [d / "missing.jsonl"]}


def test_bad_data_gives_one_error_line_and_no_finished_cache(tmp_path, vocab):
    for i, (message, args) in enumerate(bad_inputs(tmp_path, vocab).items()):
        out = tmp_path / f"cache{i}"
        proc = cli("tokenize", *args, "-o", out)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (message, proc.stderr)
        assert message in lines[0], (message, lines[0])
        assert not (out / "manifest.json").exists() or not json.loads((out / "manifest.json").read_text())["complete"]
