"""`alphaspec diff`: changes exactly where they were planted, a model against its own GGUF, the checkpoints of a
training run, the subspace overlap against its closed form, and the bad pairs as one line."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from alphaspec.analysis.diff import diff_checkpoints
from alphaspec.sources.checkpoint import example_path
from alphaspec.spectra.subspaces import pair_metrics

EDITS = {"encoder.layer.2.intermediate.dense.weight": 0.02, "encoder.layer.4.attention.self.key.weight": 0.05}


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """MiniLM with two matrices changed by known Gaussian noise."""
    root = tmp_path_factory.mktemp("minilm-edit")
    tensors = load_file(str(example_path("minilm") / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    noise = {}
    for name, scale in EDITS.items():
        noise[name] = scale * torch.randn(tensors[name].shape, generator=g)
        tensors[name] = tensors[name] + noise[name]
    save_file(tensors, str(root / "model.safetensors"))
    shutil.copy(example_path("minilm") / "config.json", root / "config.json")
    return root, noise


def test_changes_show_where_they_were_planted_and_nowhere_else(perturbed):
    root, noise = perturbed
    result = diff_checkpoints(["example:minilm", root], device="cpu", workers=2)
    table = result.table.set_index("name")
    original = load_file(str(example_path("minilm") / "model.safetensors"))
    edited = load_file(str(root / "model.safetensors"))
    for name in EDITS:
        want = np.linalg.norm((edited[name].double() - original[name].double()).numpy()) / np.linalg.norm(
            original[name].double().numpy())
        assert table.loc[name, "rel_change"] == pytest.approx(want, rel=1e-10)
        assert table.loc[name, "delta_alpha"] != 0
    rest = table.drop(index=list(EDITS))
    assert (rest["rel_change"] == 0).all() and (rest["delta_alpha"].fillna(0) == 0).all()
    assert np.allclose(rest["subspace_overlap"].dropna(), 1.0)
    assert list(result.table["name"]) == list(result.analyses[0]["name"])  # analyze's row order
    assert set(result.table["from"]) == {"example:minilm"} and set(result.table["to"]) == {str(root)}


def test_subspace_overlap_is_cos_squared_of_the_angle_between_the_directions():
    """A = U S Vᵀ and B = U S Wᵀ of rank k, with W = V cos θ + V⊥ sin θ: the overlap is cos²θ exactly."""
    g = torch.Generator().manual_seed(1)
    n, m, k = 200, 120, 6
    q = torch.linalg.qr(torch.randn(m, 2 * k, generator=g, dtype=torch.float64)).Q
    v, v_perp = q[:, :k], q[:, k:]
    u = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    s = torch.diag(torch.linspace(10, 5, k, dtype=torch.float64))
    for theta in (0.0, 0.3, 1.0, math.pi / 2):
        w = v * math.cos(theta) + v_perp * math.sin(theta)
        got = pair_metrics(u @ s @ v.T, u @ s @ w.T, k)["subspace_overlap"]
        assert got == pytest.approx(math.cos(theta) ** 2, abs=1e-9)


def numpy_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """‖V_Aᵀ V_B‖_F² / k from numpy's float64 SVD: the reference subspace_overlap is held to."""
    va = np.linalg.svd(a.astype(np.float64), full_matrices=False)[2][:k].T
    vb = np.linalg.svd(b.astype(np.float64), full_matrices=False)[2][:k].T
    return float(np.square(va.T @ vb).sum()) / k


@pytest.mark.parametrize("name", ["encoder.layer.1.attention.self.value.weight",  # σ8/σ9 close: the old finder's 0.108
                                  "encoder.layer.0.intermediate.dense.weight",  # tall
                                  "encoder.layer.3.output.dense.weight"])  # wide
def test_subspace_overlap_equals_numpy_svd_on_real_weights_whose_directions_turn(name):
    """MiniLM's matrices, whose top singular values are close (σ8/σ9 ≈ 1.01), rotated by a perturbation that turns
    their strongest directions: the overlap equals numpy's SVD to 1e-6 (a randomised range finder was 0.1 off)."""
    from safetensors.numpy import load_file

    from alphaspec.sources.checkpoint import example_path

    a = load_file(str(example_path("minilm") / "model.safetensors"))[name]
    rng = np.random.default_rng(0)
    u, s, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
    turn = np.linalg.qr(np.eye(len(s)) + 0.4 * rng.standard_normal((len(s), len(s))) / np.sqrt(len(s)))[0]
    b = (u @ np.diag(s) @ turn.T @ vt + 0.01 * rng.standard_normal(a.shape)).astype(np.float32)
    expected = numpy_overlap(a, b, 8)
    assert 0.05 < expected < 0.95  # the directions really changed
    got = pair_metrics(torch.from_numpy(a), torch.from_numpy(b), 8)["subspace_overlap"]
    assert got == pytest.approx(expected, abs=1e-6)


def test_subspace_overlap_of_matrices_that_cannot_have_one_is_empty():
    """NaN/Inf entries or an all-zero matrix: no overlap and no LinAlgError (was a traceback)."""
    a = torch.randn(20, 10, dtype=torch.float64)
    for b in (a.clone().index_fill_(0, torch.tensor([3]), float("nan")), torch.zeros(20, 10, dtype=torch.float64),
              a.clone().index_fill_(1, torch.tensor([2]), float("inf"))):
        assert math.isnan(pair_metrics(a, b, 4)["subspace_overlap"])
    assert math.isnan(pair_metrics(a, a.clone().fill_(float("nan")), 4)["rel_change"])


def test_a_model_against_its_own_gguf(tmp_path):
    """F16 and Q8_0 GGUFs written as llama.cpp writes them (q/k rows permuted): matched by name, rows back in
    order, so the change is the quantisation error alone (F16 ~1e-4, Q8_0 ~1e-2) and the directions stay."""
    gguf = pytest.importorskip("gguf")
    from test_gguf import HEADS, KV, LLAMA_META, LLAMA_NAMES, converter_permute, llama_tensors, write_gguf  # noqa: I001

    hf = llama_tensors(seed=2)
    save_file({k: torch.from_numpy(v) for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    stored = {LLAMA_NAMES[k]: converter_permute(v, HEADS, HEADS if "q_proj" in k else KV)
              if k.endswith(("q_proj.weight", "k_proj.weight")) else v for k, v in hf.items()}
    limits = {}
    for qtype, limit in ((gguf.GGMLQuantizationType.F16, 1e-3), (gguf.GGMLQuantizationType.Q8_0, 3e-2)):
        write_gguf(tmp_path / f"m-{qtype.name}.gguf", "llama", stored, qtype, LLAMA_META)
        limits[qtype.name] = limit
    result = diff_checkpoints([tmp_path / "model.safetensors", tmp_path / "m-F16.gguf", tmp_path / "m-Q8_0.gguf"],
                              device="cpu")
    for (a, b), rows in result.table.groupby(["from", "to"], sort=False):
        limit = limits[b.rsplit("-", 1)[-1].removesuffix(".gguf")]
        assert (rows["rel_change"] < limit).all(), (a, b, rows["rel_change"].max())
        assert (rows["subspace_overlap"] > 0.9).all()
    assert len(result.table) == 2 * len(result.analyses[0])


def test_the_checkpoints_of_a_training_run(tmp_path):
    from alphaspec.train import TrainConfig, train
    from alphaspec.train.data import bundled_corpus

    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:60_000])
    train(TrainConfig.of(out=str(tmp_path / "run"), data=[str(text)], vocab_size=512, seq_len=32, batch_size=4,
                         steps=6, warmup_steps=1, checkpoint_every=2, keep_checkpoints=3, eval_every=6, eval_windows=2))
    res = subprocess.run([sys.executable, "-m", "alphaspec", "diff", str(tmp_path / "run"), "-o",
                          str(tmp_path / "d.csv"), "--plot", str(tmp_path / "d.png")], capture_output=True, text=True,
                         env=os.environ | {"COLUMNS": "120"})
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "d.csv")
    assert list(dict.fromkeys(zip(table["from"], table["to"], strict=True))) == [("run@2", "run@4"), ("run@4", "run@6")]
    assert (table["rel_change"] > 0).all() and "changes per module type" in res.stdout
    assert (tmp_path / "d.png").stat().st_size > 10_000


def one_line(proc, code: int, *fragments) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_bad_pairs_are_one_line_and_write_nothing(perturbed, tmp_path):
    root, _ = perturbed
    tensors = load_file(str(root / "model.safetensors"))
    tensors["encoder.layer.1.output.dense.weight"] = tensors["encoder.layer.1.output.dense.weight"][:, :100].contiguous()
    (tmp_path / "cut").mkdir()
    save_file(tensors, str(tmp_path / "cut" / "model.safetensors"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "alphaspec", "diff", *map(str, args), "-o", str(tmp_path / "d.csv")],
                              capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})

    one_line(cli(root, tmp_path / "cut"), 1, "encoder.layer.1.output.dense.weight is [384, 100], [384, 1536] in")
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(64, 32)}, str(tmp_path / "other.safetensors"))
    one_line(cli(root, tmp_path / "other.safetensors"), 1, "other.safetensors: has no", "different models?")
    one_line(cli(root), 2, "diff needs two or more checkpoints")
    one_line(cli(root, tmp_path / "missing"), 1, "missing")
    more = dict(load_file(str(root / "model.safetensors")), **{"extra.dense.weight": torch.randn(48, 40)})
    (tmp_path / "more").mkdir()
    save_file(more, str(tmp_path / "more" / "model.safetensors"))
    (tmp_path / "more" / "config.json").write_text((root / "config.json").read_text())
    one_line(cli(root, tmp_path / "more"), 1, "has extra.dense.weight, which", "lacks")  # was silently dropped
    assert not (tmp_path / "d.csv").exists()


def test_hub_revisions_of_one_repo(tmp_path):
    """`org/name@rev` sources: two snapshots of one repo in the offline hub cache, compared by revision."""
    import synth

    base = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-llama"
    first, second = "1" * 40, "2" * 40
    tensors = synth.llama(dtype=torch.float32)
    synth.write(base / "snapshots" / first, tensors, synth.LLAMA_CONFIG)
    changed = dict(tensors, **{"model.layers.1.mlp.up_proj.weight": tensors["model.layers.1.mlp.up_proj.weight"] * 1.5})
    synth.write(base / "snapshots" / second, changed, synth.LLAMA_CONFIG)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(second)
    res = subprocess.run([sys.executable, "-m", "alphaspec", "diff", f"tiny-org/tiny-llama@{first}",
                          "tiny-org/tiny-llama", "-o", str(tmp_path / "d.csv")], capture_output=True, text=True,
                         env=os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "COLUMNS": "120"})
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "d.csv").set_index("name")
    assert table.loc["model.layers.1.mlp.up_proj.weight", "rel_change"] == pytest.approx(0.5, rel=1e-6)
    assert (table.drop(index="model.layers.1.mlp.up_proj.weight")["rel_change"] == 0).all()


def test_the_terminal_summary_fits_80_columns(tmp_path):
    import synth

    a = synth.write(tmp_path / "a-model-with-a-rather-long-name", synth.llama(dtype=torch.float32), synth.LLAMA_CONFIG)
    changed = synth.llama(dtype=torch.float32)
    changed["model.layers.0.mlp.up_proj.weight"] = changed["model.layers.0.mlp.up_proj.weight"] * 1.1
    b = synth.write(tmp_path / "b", changed, synth.LLAMA_CONFIG)
    res = subprocess.run([sys.executable, "-m", "alphaspec", "diff", str(a), str(b)], capture_output=True, text=True,
                         env=os.environ | {"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert any("a-model-with-a-rather-long-name → b: changes per module type" in line for line in lines)
    assert any("mlp.up" in line and "0.1" in line for line in lines)
