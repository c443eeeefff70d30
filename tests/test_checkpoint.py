"""Every SOURCE kind of docs/analyze.md resolves to the same tensors; numbers match an independent numpy SVD."""

import json
import math

import numpy as np
import pytest
import synth
import torch
from safetensors.torch import save_file

from alphaspec import analyze_checkpoint, fit, open_checkpoint
from alphaspec.sources.checkpoint import SourceError


@pytest.fixture
def llama_tensors():
    return synth.llama(dtype=torch.float32, lm_head=True)


def _alphas(source):
    table = analyze_checkpoint(source, device="cpu").table
    return dict(zip(table["name"], table["alpha"], strict=True))


def test_sharded_directory_with_index(tmp_path, llama_tensors):
    single = synth.write(tmp_path / "single", llama_tensors, synth.LLAMA_CONFIG)
    names = sorted(llama_tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for file, keys in shards.items():
        save_file({k: llama_tensors[k] for k in keys}, str(sharded / file))
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    ckpt = open_checkpoint(sharded)
    assert [f.name for f in ckpt.files] == list(shards)
    assert _alphas(sharded) == _alphas(single) == _alphas(single / "model.safetensors")


def test_missing_shard_is_an_error(tmp_path, llama_tensors):
    folder = synth.write(tmp_path / "m", llama_tensors, filename="model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match="missing: model-00002-of-00002.safetensors"):
        open_checkpoint(folder)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_torch_state_dicts(tmp_path, llama_tensors, wrap, suffix):
    path = tmp_path / f"model{suffix}"
    state = {k: v.clone() for k, v in llama_tensors.items()}
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    reference = _alphas(synth.write(tmp_path / "st", llama_tensors))
    assert _alphas(path) == reference


def test_bin_directory(tmp_path, llama_tensors):
    torch.save(llama_tensors, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(synth.LLAMA_CONFIG))
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.config["model_type"] == "llama"
    assert len(analyze_checkpoint(tmp_path, device="cpu").table) == 2 * 7 + 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rows_match_numpy_svd(tmp_path, dtype):
    """Every number of a row, recomputed from numpy's SVD of the same (upcast) matrix."""
    w = synth.rand(96, 40, dtype=dtype)
    synth.write(tmp_path, {"model.layers.0.mlp.up_proj.weight": w})
    row = analyze_checkpoint(tmp_path, device="cpu", estimator="gof").table.iloc[0]
    w64 = w.to(torch.float64).numpy()
    s = np.linalg.svd(w64, compute_uv=False)
    lam = np.sort(s**2)
    ref = fit(lam, "gof")
    assert (row["rows"], row["cols"], row["n_eigs"], row["n_zero"]) == (96, 40, 40, 0)
    assert row["alpha"] == pytest.approx(ref.alpha, rel=1e-9)
    assert row["xmin"] == pytest.approx(ref.xmin, rel=1e-9)
    assert row["spectral_norm"] == pytest.approx(s.max(), rel=1e-12)
    assert row["lambda_max"] == pytest.approx(s.max() ** 2, rel=1e-12)
    assert row["frobenius_norm"] == pytest.approx(np.linalg.norm(w64), rel=1e-12)
    assert row["stable_rank"] == pytest.approx(np.sum(s**2) / s.max() ** 2, rel=1e-12)
    assert row["log_norm"] == pytest.approx(np.log10(np.sum(s**2)), rel=1e-12)
    assert row["log_spectral_norm"] == pytest.approx(np.log10(s.max() ** 2), rel=1e-12)
    assert row["alpha_weighted"] == pytest.approx(ref.alpha * np.log10(s.max() ** 2), rel=1e-9)
    p = s**2 / np.sum(s**2)
    assert row["entropy"] == pytest.approx(-np.sum(p * np.log(p)) / np.log(40), rel=1e-12)


def test_rank_deficient_matrix_counts_zeros(tmp_path):
    low_rank = synth.rand(64, 8, dtype=torch.float64) @ synth.rand(8, 48, dtype=torch.float64)
    synth.write(tmp_path, {"w.weight": low_rank})
    row = analyze_checkpoint(tmp_path, device="cpu").table.iloc[0]
    assert row["n_eigs"] == 48 and row["n_zero"] == 40
    assert row["status"] == "too few non-zero eigenvalues (8 < 10)"
    assert math.isnan(row["alpha"]) and row["frobenius_norm"] > 0


def test_broken_matrices_become_explained_rows(tmp_path):
    bad = synth.rand(40, 40)
    bad[3, 5] = float("nan")
    inf = synth.rand(40, 40, seed=1)
    inf[0, 0] = float("inf")
    tensors = {"a.nan.weight": bad, "b.inf.weight": inf, "c.zero.weight": torch.zeros(40, 40),
               "d.row.weight": synth.rand(1, 40), "e.good.weight": synth.rand(40, 40, seed=2)}
    synth.write(tmp_path, tensors)
    table = analyze_checkpoint(tmp_path, device="cpu").table.set_index("name")
    assert table.loc["a.nan.weight", "status"] == "matrix contains NaN or Inf"
    assert table.loc["b.inf.weight", "status"] == "matrix contains NaN or Inf"
    assert table.loc["c.zero.weight", "status"] == "all-zero matrix"
    assert table.loc["c.zero.weight", "n_zero"] == 40 and table.loc["c.zero.weight", "frobenius_norm"] == 0
    assert table.loc["d.row.weight", "status"].startswith("too few non-zero eigenvalues (1 <")
    assert table.loc["e.good.weight", "status"] == "ok" and table.loc["e.good.weight", "alpha"] > 1
    good_alone = analyze_checkpoint(synth.write(tmp_path / "g", {"e.good.weight": tensors["e.good.weight"]}), device="cpu").table
    assert table.loc["e.good.weight", "alpha"] == good_alone["alpha"].iloc[0]


def test_every_tensor_is_a_row_or_skipped(tmp_path):
    tensors = synth.bert() | synth.gpt2()
    result = analyze_checkpoint(synth.write(tmp_path, tensors), device="cpu")
    accounted = set(result.table["tensor"]) | {s.name for s in result.skipped}
    assert accounted == set(tensors)


def test_concurrent_workers_give_the_same_table(tmp_path):
    folder = synth.write(tmp_path, synth.llama(layers=3, dtype=torch.float32), synth.LLAMA_CONFIG)
    one = analyze_checkpoint(folder, device="cpu", estimator="gof").table
    three = analyze_checkpoint(folder, device="cpu", estimator="gof", workers=3).table
    assert one.equals(three)


def test_hub_fetches_only_weights_index_and_config(tmp_path, monkeypatch):
    import huggingface_hub

    synth.write(tmp_path / "snap", synth.llama(dtype=torch.float32), synth.LLAMA_CONFIG)
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(tmp_path / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ckpt = open_checkpoint("some-org/some-model@v1.2")
    assert calls == [{"repo_id": "some-org/some-model", "revision": "v1.2",
                      "allow_patterns": ["*.safetensors", "*.safetensors.index.json", "config.json"]}]
    assert ckpt.config["model_type"] == "llama" and len(ckpt.tensors) == 1 + 1 + 2 * 9
    (tmp_path / "snap" / "model.safetensors").unlink()  # a repo with .bin weights only
    with pytest.raises(SourceError, match="the hub repo has no .safetensors weights"):
        open_checkpoint("some-org/bin-only")


def test_progress_counts_every_matrix(tmp_path):
    folder = synth.write(tmp_path, synth.llama(dtype=torch.float32), synth.LLAMA_CONFIG)
    seen = []
    analyze_checkpoint(folder, device="cpu", progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 15) and seen[-1] == (15, 15)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
