"""alphaspec.analyze on a live nn.Module or a state dict: the same engine as on disk, weights read where they
live; the bad cases as one clear error. (The transformers families: tests/test_hf_architectures.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import alphaspec
from alphaspec.errors import AlphaspecError, UsageError


class Tied(nn.Module):
    """A tiny LM with its output layer tied to its embedding, and a plain MLP block."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(64, 32)
        self.layers = nn.ModuleList([nn.ModuleDict({"up_proj": nn.Linear(32, 48), "down_proj": nn.Linear(48, 32)})])
        self.lm_head = nn.Linear(32, 64, bias=False)
        self.lm_head.weight = self.embed_tokens.weight


def test_a_module_without_config_is_analysed_by_its_parameter_names_and_numpys_spectra():
    torch.manual_seed(0)
    model = Tied()
    table = alphaspec.analyze(model).set_index("name")
    assert "lm_head.weight" not in table.index  # the tied weight counts once, under its first name
    assert table.attrs["source"] == "<Tied in memory>" and table.attrs["device"] == "cpu"
    for name, w in [("layers.0.up_proj.weight", model.layers[0]["up_proj"].weight),
                    ("embed_tokens.weight", model.embed_tokens.weight)]:
        s = np.linalg.svd(w.detach().double().numpy(), compute_uv=False)
        assert table.loc[name, "spectral_norm"] == pytest.approx(s.max(), rel=1e-12)
        assert table.loc[name, "frobenius_norm"] == pytest.approx(np.sqrt((s ** 2).sum()), rel=1e-12)


def test_state_dict_options_and_decay_map_of_a_live_model():
    torch.manual_seed(0)
    model = Tied()
    table = alphaspec.analyze(model.state_dict(), farms=True, include=[r"layers\."])
    assert set(table["name"]) == {"layers.0.up_proj.weight", "layers.0.down_proj.weight"}
    assert table["alpha_farms"].notna().all() and table.attrs["source"] == "<state dict of 6 tensors>"
    wd = alphaspec.decay_map(model, weight_decay=0.1)
    assert wd.source == "<Tied in memory>"  # the layers' matrices; the embedding keeps the default decay
    assert [m["name"] for m in wd.modules] == ["layers.0.up_proj.weight", "layers.0.down_proj.weight"]


def test_bf16_weights_are_widened_per_matrix_and_never_changed():
    torch.manual_seed(0)
    model = Tied().to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = alphaspec.analyze(model, precision="fp32").set_index("name")
    w = model.layers[0]["down_proj"].weight.detach().double().numpy()
    assert table.loc["layers.0.down_proj.weight", "spectral_norm"] == pytest.approx(
        np.linalg.svd(w, compute_uv=False).max(), rel=1e-5)
    assert table.loc["layers.0.down_proj.weight", "dtype"] == "bfloat16"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("source", "message"), [
    (lambda: Tied().to("meta"), "is on the meta device (no values); load the weights first"),
    (lambda: {"w": [[1.0, 2.0]]}, "'w' is not a tensor named by a string"),
    (lambda: {3: torch.zeros(4, 4)}, "3 is not a tensor named by a string"),
    (lambda: {"a.bias": torch.zeros(4)}, "no weight matrix to analyse among its 1 tensor(s)"),
])
def test_bad_in_memory_sources_are_one_clear_error(source, message):
    with pytest.raises(AlphaspecError) as err:
        alphaspec.analyze(source())
    assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300


def test_config_is_only_for_in_memory_sources():
    with pytest.raises(UsageError, match="config= is for an in-memory model or state dict"):
        alphaspec.analyze("example:minilm", config={"model_type": "llama"})


def test_alphaspec_error_is_importable_from_the_package_root():
    assert alphaspec.AlphaspecError is AlphaspecError and "AlphaspecError" in alphaspec.__all__
