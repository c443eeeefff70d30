"""Fine-tuning deltas and LoRA adapters: W − W_base against a copy with known edits, an adapter made with peft
against numpy's SVD of its true (lora_alpha / r)·B·A and the merged model against peft's own merge; the
bad cases as one error line, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import alphaspec
from alphaspec.sources.checkpoint import SourceError

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama(seed: int = 0, intermediate: int = 128):
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=intermediate, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A base model, a LoRA adapter trained... by random init (init_lora_weights=False), and peft's merge."""
    root = tmp_path_factory.mktemp("lora")
    base = tiny_llama()
    base.save_pretrained(root / "base")
    config = peft.LoraConfig(r=16, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False,
                             rank_pattern={"down_proj": 12}, alpha_pattern={"v_proj": 24})
    model = peft.get_peft_model(base, config)
    model.save_pretrained(root / "adapter")
    updates = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            scaling = module.scaling["default"]
            updates[name.removeprefix("base_model.model.") + ".weight"] = (scaling * b.double() @ a.double()).detach()
    model.merge_and_unload().save_pretrained(root / "merged")
    return root, updates


def singular_values(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.double().numpy(), compute_uv=False)


def test_an_adapter_is_analysed_as_its_updates(made):
    """Each target's row is the spectrum of (lora_alpha / r)·B·A with peft's own scaling (rank_pattern and
    alpha_pattern included): numpy's singular values to 1e-10."""
    root, updates = made
    table = alphaspec.analyze(root / "adapter").set_index("name")
    assert set(table.index) == set(updates) and len(updates) == 6
    for name, delta in updates.items():
        s = singular_values(delta)
        assert table.loc[name, "spectral_norm"] == pytest.approx(s.max(), rel=1e-10)
        assert table.loc[name, "frobenius_norm"] == pytest.approx(np.sqrt((s**2).sum()), rel=1e-10)
        rank = 12 if "down_proj" in name else 16
        assert table.loc[name, "n_eigs"] - table.loc[name, "n_zero"] == rank  # a rank-r update
    assert table.attrs["notes"][0].startswith("each matrix is a LoRA update")
    assert (table["content"] == "adapter").all()
    assert (table["warning"] == "").all()  # rank r by design: no tail fit on r eigenvalues is read as a verdict


def test_the_merged_model_is_w_plus_the_update(made):
    """Targets: numpy's singular values of W + ΔW in float64 (1e-10); the whole table: peft's merge_and_unload
    to float32 rounding (peft stores the merged weights in float32, alphaspec adds in float64)."""
    root, updates = made
    merged = alphaspec.analyze(root / "adapter", base=root / "base", merge=True)
    base = load_file(str(root / "base" / "model.safetensors"))
    rows = merged.set_index("name")
    for name, delta in updates.items():
        s = singular_values(base[name].double() + delta)
        assert rows.loc[name, "spectral_norm"] == pytest.approx(s.max(), rel=1e-10)
        assert rows.loc[name, "frobenius_norm"] == pytest.approx(np.sqrt((s**2).sum()), rel=1e-10)
    want = alphaspec.analyze(root / "merged")
    assert list(merged["name"]) == list(want["name"])
    assert (merged["content"] == "weights").all() and list(merged["warning"]) == list(want["warning"])
    numeric = [c for c in ("alpha", "spectral_norm", "frobenius_norm", "stable_rank", "entropy", "sigma_mp")]
    np.testing.assert_allclose(merged[numeric].to_numpy(float), want[numeric].to_numpy(float), rtol=1e-5)


def test_base_gives_the_spectra_of_known_edits(tmp_path):
    """A copy with two matrices edited by known E: those rows are E's spectrum, every other matrix is zero."""
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    tensors = load_file(str(tmp_path / "base" / "model.safetensors"))
    g = torch.Generator().manual_seed(3)
    edits = {"model.layers.1.mlp.up_proj.weight": torch.randn(128, 64, generator=g) * 0.01,
             "model.layers.0.self_attn.o_proj.weight": torch.randn(64, 64, generator=g) * 0.02}
    for name, e in edits.items():
        tensors[name] = tensors[name] + e
    (tmp_path / "tuned").mkdir()
    save_file(tensors, str(tmp_path / "tuned" / "model.safetensors"))
    (tmp_path / "tuned" / "config.json").write_text((tmp_path / "base" / "config.json").read_text())
    table = alphaspec.analyze(tmp_path / "tuned", base=tmp_path / "base").set_index("name")
    for name, e in edits.items():  # the stored float32 sums: E up to float32 rounding of W + E
        actual = tensors[name].double() - load_file(str(tmp_path / "base" / "model.safetensors"))[name].double()
        assert table.loc[name, "spectral_norm"] == pytest.approx(singular_values(actual).max(), rel=1e-9)
        assert table.loc[name, "spectral_norm"] == pytest.approx(singular_values(e).max(), rel=1e-4)
    others = table.drop(index=list(edits))
    assert (others["status"] == "unchanged").all() and (others["frobenius_norm"] == 0).all()
    assert (others["warning"] == "").all()  # unchanged is a status, not a verdict (was rank-collapse, no-tail)
    assert (table["content"] == "delta").all()
    assert not any("every matrix is all zeros" in n for n in table.attrs["notes"])
    same = alphaspec.analyze(tmp_path / "base", base=tmp_path / "base")  # a base that is the model: said once
    assert "every matrix is all zeros: the base holds exactly these weights (nothing changed)" in same.attrs["notes"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "alphaspec", "analyze", *map(str, args)], capture_output=True,
                          text=True, env=os.environ | {"COLUMNS": "200"})


def one_error(proc, *fragments, code: int = 1):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_bad_pairs_are_one_line_and_write_nothing(made, tmp_path):
    root, _ = made
    tiny_llama(intermediate=96).save_pretrained(tmp_path / "other")
    one_error(cli(root / "merged", "--base", tmp_path / "other", "-o", tmp_path / "r.csv"),
              "differ in shape from the base", "mlp.down_proj.weight [64, 128] vs [64, 96]")
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4, vocab_size=100)
                                 ).save_pretrained(tmp_path / "gpt2")
    one_error(cli(root / "merged", "--base", tmp_path / "gpt2", "-o", tmp_path / "r.csv"),
              "are not in the base", "a base of another model?")
    one_error(cli(root / "adapter", "--base", tmp_path / "gpt2", "--merge", "-o", tmp_path / "r.csv"),
              "targets model.layers.0.", "which the base", "does not have")
    one_error(cli(root / "adapter", "--merge"), "--merge adds an adapter to its base: give the base with --base",
              code=2)  # a usage error: the options do not go together
    one_error(cli(root / "merged", "--base", root / "base", "--merge"), "--merge needs a PEFT adapter directory")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((root / "adapter" / "adapter_config.json").read_text())
    data = (root / "adapter" / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    one_error(cli(broken, "-o", tmp_path / "r.csv"), "adapter_model.safetensors")
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 0, "lora_alpha": 8}')
    one_error(cli(broken), "adapter_config.json", "r must be a whole number above 0")
    assert not (tmp_path / "r.csv").exists()


def test_adapter_errors_in_python_are_source_errors(made, tmp_path):
    root, _ = made
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}')
    with pytest.raises(SourceError, match="a DoRA adapter"):
        alphaspec.analyze(tmp_path / "a")


def lora_dir(folder: Path, a: torch.Tensor, b: torch.Tensor, r: int, alpha: float) -> Path:
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": a.contiguous(),
               "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight": b.contiguous()},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": alpha}))
    return folder


def test_a_large_update_is_solved_from_its_core_with_the_dense_spectrum(tmp_path, monkeypatch):
    """Above DENSE_ENTRIES an update is never formed: its r×r core has the same non-zero singular values (numpy's
    SVD of the dense s·B·A, to 1e-10), the rest of the spectrum is zeros, and the row is the dense one's."""
    import alphaspec.sources.deltas as deltas

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(12, 200, generator=g), torch.randn(300, 12, generator=g)
    folder = lora_dir(tmp_path / "ad", a, b, 12, 24)
    dense = alphaspec.analyze(folder).iloc[0]
    monkeypatch.setattr(deltas, "DENSE_ENTRIES", 100)
    core = alphaspec.analyze(folder)
    row = core.iloc[0]
    s = singular_values(2.0 * b.double() @ a.double())
    assert row["spectral_norm"] == pytest.approx(s.max(), rel=1e-10)
    assert row["frobenius_norm"] == pytest.approx(np.sqrt((s**2).sum()), rel=1e-10)
    assert (row["rows"], row["cols"], row["n_eigs"], row["n_zero"]) == (300, 200, 200, 188)
    numeric = ["alpha", "alpha_gof", "stable_rank", "entropy", "log_norm", "alpha_weighted"]
    np.testing.assert_allclose(row[numeric].to_numpy(float), dense[numeric].to_numpy(float), rtol=1e-9)
    assert any("r×r core" in n for n in core.attrs["notes"])


def test_a_5_mb_adapter_on_a_40000_wide_matrix_stays_small(tmp_path):
    """lora_A 16×40000 and lora_B 40000×16 built a 40000² float64 update (> 12 GB); now the core: peak memory
    of the process stays under 1.5 GB (torch itself is most of it)."""
    g = torch.Generator().manual_seed(0)
    folder = lora_dir(tmp_path / "ad", torch.randn(16, 40000, generator=g), torch.randn(40000, 16, generator=g), 16, 32)
    code = ("import alphaspec, sys; t = alphaspec.analyze(sys.argv[1]); "
            "print(next(x for x in open('/proc/self/status') if x.startswith('VmHWM:')).split()[1], t['n_zero'].iloc[0])")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_kb, zeros = map(int, out.stdout.split())
    assert zeros == 40000 - 16 and peak_kb < 1.5 * 2**20


def numpy_pair(before: np.ndarray, after: np.ndarray, k: int = 8) -> tuple[float, float]:
    """rel_change and the top-k right singular subspace overlap, from numpy's SVD."""
    va = np.linalg.svd(before, full_matrices=False)[2][:k].T
    vb = np.linalg.svd(after, full_matrices=False)[2][:k].T
    return np.linalg.norm(after - before) / np.linalg.norm(before), float(np.square(va.T @ vb).sum()) / k


def test_a_delta_is_judged_by_its_size_and_the_directions_it_turns(tmp_path):
    """MiniLM with three matrices turned (a rotation of part of their input space) and one scaled: each update's
    rel_change and subspace_overlap equal numpy's SVD of base and fine-tune to 1e-6; an unchanged matrix keeps
    all of its directions (overlap 1, change 0); none of the updates gets a verdict."""
    from alphaspec.sources.checkpoint import example_path

    src = example_path("minilm")
    weights = load_file(str(src / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    tuned = dict(weights)
    turned = ["encoder.layer.1.attention.self.value.weight", "encoder.layer.3.intermediate.dense.weight",
              "encoder.layer.5.output.dense.weight"]
    for name in turned:
        w = weights[name].double()
        q = torch.linalg.qr(torch.randn(w.shape[1], w.shape[1], generator=g, dtype=torch.float64)).Q
        mix = torch.eye(w.shape[1], dtype=torch.float64) + 0.3 * (q - torch.eye(w.shape[1], dtype=torch.float64))
        tuned[name] = (w @ mix).float()
    tuned["encoder.layer.2.attention.output.dense.weight"] = weights["encoder.layer.2.attention.output.dense.weight"] * 1.5
    (tmp_path / "tuned").mkdir()
    save_file(tuned, str(tmp_path / "tuned" / "model.safetensors"))
    (tmp_path / "tuned" / "config.json").write_text((src / "config.json").read_text())
    table = alphaspec.analyze(tmp_path / "tuned", base=src).set_index("name")
    for name in [*turned, "encoder.layer.2.attention.output.dense.weight"]:
        rel, overlap = numpy_pair(weights[name].double().numpy(), tuned[name].double().numpy())
        assert table.loc[name, "rel_change"] == pytest.approx(rel, abs=1e-6)
        assert table.loc[name, "subspace_overlap"] == pytest.approx(overlap, abs=1e-6)
    assert (table.loc[turned, "subspace_overlap"] < 0.9).all()  # the turn moved their strongest directions
    assert table.loc["encoder.layer.2.attention.output.dense.weight", "subspace_overlap"] == pytest.approx(1, abs=1e-9)
    still = table.loc["encoder.layer.0.attention.self.query.weight"]
    assert still["status"] == "unchanged" and still["rel_change"] == 0 and still["subspace_overlap"] == pytest.approx(1)
    assert (table["warning"] == "").all()


def test_an_adapter_with_its_base_compares_the_merged_matrix(made):
    """An adapter analysed with --base: each target's rel_change and subspace_overlap are those of W and
    W + (lora_alpha / r)·B·A by numpy's SVD; without the base the columns are absent."""
    root, updates = made
    table = alphaspec.analyze(root / "adapter", base=root / "base").set_index("name")
    base = load_file(str(root / "base" / "model.safetensors"))
    for name, delta in updates.items():
        w = base[name].double().numpy()
        rel, overlap = numpy_pair(w, w + delta.numpy())
        assert table.loc[name, "rel_change"] == pytest.approx(rel, rel=1e-9)
        assert table.loc[name, "subspace_overlap"] == pytest.approx(overlap, abs=1e-6)
    assert "subspace_overlap" not in alphaspec.analyze(root / "adapter").columns


def test_the_terminal_shows_what_changed_not_alphas(tmp_path):
    """`analyze FT --base BASE` on MiniLM with one matrix edited: the summary is per module type what changed
    (count, changed, rank, size, relative change, overlap), one line for the 39 unchanged matrices instead of
    39 'empty fit' lines, and no alpha table; it fits 80 columns."""
    from alphaspec.sources.checkpoint import example_path

    src = example_path("minilm")
    weights = load_file(str(src / "model.safetensors"))
    name = "encoder.layer.1.attention.self.value.weight"
    weights[name] = weights[name] + 0.01 * torch.randn(weights[name].shape, generator=torch.Generator().manual_seed(0))
    (tmp_path / "ft").mkdir()
    save_file(weights, str(tmp_path / "ft" / "model.safetensors"))
    (tmp_path / "ft" / "config.json").write_text((src / "config.json").read_text())
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "analyze", str(tmp_path / "ft"), "--base", str(src)],
                          capture_output=True, text=True, env=os.environ | {"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "what changed, per module type" in text and "alpha per module type" not in text
    assert "39 of 40 matrices unchanged" in text and "fit(s) empty" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    att_v = next(line for line in text.splitlines() if line.startswith("│ att.v"))
    assert att_v.split("│")[3].strip() == "1" and att_v.split("│")[4].strip() == "384"  # one changed, full rank


# -- live PEFT models: the same rows as the adapter files give ------------------------------------------------------
def live(config: peft.LoraConfig, seed: int = 0, base=None):
    return peft.get_peft_model(base if base is not None else tiny_llama(seed), config)


def compare(table, reference, columns=("alpha", "spectral_norm", "frobenius_norm"), rel=1e-6):
    assert list(table["name"]) == list(reference["name"])
    for column in columns:
        np.testing.assert_allclose(table[column].to_numpy(float), reference[column].to_numpy(float), rtol=rel,
                                   err_msg=column)


def test_a_live_peft_model_is_analysed_as_it_computes(tmp_path):
    """64 rows (lora_A, lora_B and base_layer typed `other`) became the base model's rows: W + s·B·A under the
    base names, equal to peft's merge_and_unload (which adds in float32) to its rounding."""
    import copy

    for extra in ({}, {"use_rslora": True}, {"rank_pattern": {"down_proj": 12}, "alpha_pattern": {"v_proj": 24}}):
        config = peft.LoraConfig(r=16, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, **extra)
        model = live(config)
        table = alphaspec.analyze(model, device="cpu")
        assert len(table) == len(alphaspec.analyze(tiny_llama(0), device="cpu"))
        assert not table["name"].str.contains("lora_|base_layer").any()
        compare(table, alphaspec.analyze(copy.deepcopy(model).merge_and_unload(), device="cpu"))
        updates = alphaspec.analyze(model, device="cpu", updates=True)  # the updates alone: the adapter files' rows
        model.save_pretrained(tmp_path / str(len(extra)))
        compare(updates, alphaspec.analyze(tmp_path / str(len(extra))), ("spectral_norm", "frobenius_norm", "n_zero"),
                rel=1e-12)
        assert (updates["content"] == "adapter").all() and len(updates) == 6


def test_a_merged_in_place_peft_model_is_not_added_twice():
    import copy

    model = live(peft.LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    before = alphaspec.analyze(model, device="cpu")
    model.merge_adapter()  # W now holds W + s·B·A itself
    compare(alphaspec.analyze(model, device="cpu"), before)
    compare(alphaspec.analyze(copy.deepcopy(model).unload(), device="cpu"), before)


def test_gpt2_conv1d_targets_are_transposed_like_their_weights():
    import copy

    base = transformers.GPT2Model(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100))
    model = live(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], init_lora_weights=False,
                                 fan_in_fan_out=True), base=base)
    compare(alphaspec.analyze(model, device="cpu"), alphaspec.analyze(copy.deepcopy(model).merge_and_unload(),
                                                                      device="cpu"))


def test_what_a_live_peft_model_cannot_be_is_one_line():
    dora = live(peft.LoraConfig(r=4, target_modules=TARGETS, use_dora=True))
    with pytest.raises(SourceError, match="a DoRA adapter"):
        alphaspec.analyze(dora, device="cpu")
    two = live(peft.LoraConfig(r=4, target_modules=TARGETS))
    two.add_adapter("second", peft.LoraConfig(r=4, target_modules=TARGETS))
    two.base_model.set_adapter(["default", "second"])
    with pytest.raises(SourceError, match="2 active adapters"):
        alphaspec.analyze(two, device="cpu")
    with pytest.raises(alphaspec.AlphaspecError, match="updates=True is for a live PEFT model"):
        alphaspec.analyze(tiny_llama(0), device="cpu", updates=True)
