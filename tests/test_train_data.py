"""Training data: tokenizer round trip, windows and their split over ranks, validation split, LR schedule."""

import math

import numpy as np
import pytest
import torch

from alphaspec.train import data
from alphaspec.train.cache import build_cache
from alphaspec.train.loop import TrainConfig, _lr_lambda
from alphaspec.train.sources import open_sources


def test_bundled_corpus_round_trips_through_the_bpe(tmp_path):
    files = data.bundled_corpus()
    assert len(files) == 3 and sum(f.stat().st_size for f in files) > 300_000
    docs = [f.read_text()[:20_000] for f in files]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc)
    cache = build_cache(open_sources([tmp_path]), tmp_path / "cache", vocab_size=512)
    tok, eos = cache.vocab.tokenizer, cache.vocab.eos_id
    assert tok.get_vocab_size() == 512 and eos == tok.token_to_id(data.EOS)
    for doc in docs:
        assert tok.decode(tok.encode(doc).ids) == doc
    stream = cache.shards()[0]
    assert stream.dtype == np.uint16 and (stream == eos).sum() == 3 and stream[-1] == eos
    assert len(stream) < sum(map(len, docs)) / 1.5  # even a 512-token BPE compresses English text


def test_windows_are_contiguous_next_token_pairs():
    tokens = data.TokenData(train=torch.arange(1000), val=torch.arange(1000, 1200))
    x, y = tokens.batch(step=3, batch_size=8, seq_len=16, seed=0)
    assert x.shape == y.shape == (8, 16)
    assert (x.diff(dim=1) == 1).all() and (y == x + 1).all() and (y[:, -1] < 1000).all()
    again, _ = tokens.batch(step=3, batch_size=8, seq_len=16, seed=0)
    other, _ = tokens.batch(step=4, batch_size=8, seq_len=16, seed=0)
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_any_split_over_ranks_and_accumulation_sees_the_same_batch():
    tokens = data.TokenData(train=torch.arange(5000), val=torch.arange(5000, 5400))
    whole, _ = tokens.batch(step=7, batch_size=8, seq_len=10, seed=1)
    parts = torch.cat([tokens.batch(step=7, batch_size=8, seq_len=10, seed=1, part=k, parts=4)[0] for k in range(4)])
    assert torch.equal(whole, parts)


def test_eval_windows_are_shared_out_without_overlap():
    tokens = data.TokenData(train=torch.arange(100), val=torch.arange(100, 400))
    everything = torch.cat([x for x, _ in tokens.eval_batches(20, 4, 10)])
    shares = [torch.cat([x for x, _ in tokens.eval_batches(20, 4, 10, rank=r, world=3)]) for r in range(3)]
    assert len(everything) == 20
    assert sorted(torch.cat(shares)[:, 0].tolist()) == sorted(everything[:, 0].tolist())


def test_split_keeps_the_tail_for_validation_and_refuses_tiny_text():
    stream = np.arange(10_000, dtype=np.uint16)
    tokens = data.TokenData.split(stream, 0.1, seq_len=32)
    assert len(tokens.val) == 1000 and tokens.val[0] == 9000 and tokens.train[-1] == 8999
    with pytest.raises(data.DataError, match="too few"):
        data.TokenData.split(np.arange(100, dtype=np.uint16), 0.1, seq_len=64)


def test_source_errors_name_the_path(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        open_sources([tmp_path / "missing.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="no data files"):
        open_sources([tmp_path / "empty"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(data.DataError, match="latin1.txt: not UTF-8"):
        [piece for source in open_sources([tmp_path]) for piece in source.pieces()]


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    cfg = TrainConfig.of(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    f = _lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
