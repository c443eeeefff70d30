"""Synthetic checkpoints of each family give the right layer, module, shape, split names and skips."""

import pytest
import synth
import torch
from safetensors.torch import load_file

from alphaspec import analyze_checkpoint
from alphaspec.sources.checkpoint import open_checkpoint
from alphaspec.sources.matrices import plan

D, FF, HD = synth.D, synth.FF, synth.HD


def rows_of(table):
    return {r.name: (None if r.layer is None or r.layer != r.layer else int(r.layer), r.module, r.rows, r.cols)
            for r in table.itertuples()}


def analysed(folder, **kw):
    result = analyze_checkpoint(folder, device="cpu", **kw)
    table = result.table
    layers = [None if v is None or str(v) == "<NA>" else int(v) for v in table["layer"].astype(object)]
    columns = zip(table["name"], layers, table["module"], table["rows"], table["cols"], strict=True)
    got = {n: (la, m, r, c) for n, la, m, r, c in columns}
    return result, got, {s.name: s.reason for s in result.skipped}


def test_llama_gqa_tied(tmp_path):
    folder = synth.write(tmp_path / "llama", synth.llama(), synth.LLAMA_CONFIG)
    result, got, skipped = analysed(folder)
    assert got["model.embed_tokens.weight"] == (None, "embed", synth.VOCAB, D)
    p = "model.layers.1."
    assert got[p + "self_attn.q_proj.weight"] == (1, "att.q", 32, D)
    assert got[p + "self_attn.k_proj.weight"] == (1, "att.k", 16, D)
    assert got[p + "self_attn.v_proj.weight"] == (1, "att.v", 16, D)
    assert got[p + "self_attn.o_proj.weight"] == (1, "att.o", D, 32)
    assert got[p + "mlp.gate_proj.weight"] == (1, "mlp.gate", FF, D)
    assert got[p + "mlp.up_proj.weight"] == (1, "mlp.up", FF, D)
    assert got[p + "mlp.down_proj.weight"] == (1, "mlp.down", D, FF)
    assert len(got) == 1 + 2 * 7
    assert set(skipped) == {"model.norm.weight"} | {f"model.layers.{i}.{n}_layernorm.weight"
                                                     for i in range(2) for n in ("input", "post_attention")}
    assert all(r == "1-D tensor (bias or norm gain)" for r in skipped.values())
    assert list(result.table["dtype"].unique()) == ["bfloat16"]


def test_gpt2_conv1d_transposed_and_split(tmp_path):
    tensors = synth.gpt2()
    folder = synth.write(tmp_path / "gpt2", tensors)  # no config: Conv1D is detected from c_attn's shape
    result, got, skipped = analysed(folder)
    assert got["h.0.attn.c_attn.weight[q]"] == (0, "att.q", D, D)
    assert got["h.0.attn.c_attn.weight[v]"] == (0, "att.v", D, D)
    assert got["h.1.attn.c_proj.weight"] == (1, "att.o", D, D)
    assert got["h.1.mlp.c_fc.weight"] == (1, "mlp.up", 4 * D, D)
    assert got["h.1.mlp.c_proj.weight"] == (1, "mlp.down", D, 4 * D)
    assert got["wte.weight"][1] == "embed" and got["wpe.weight"][1] == "embed"
    assert "4-D tensor" in skipped["h.0.attn.bias"]
    assert skipped["h.0.attn.c_attn.bias"].startswith("1-D")
    # the q part is the first third of the stored (in, 3*out) weight, transposed to (out, in)
    ckpt = open_checkpoint(folder)
    spec = next(s for s in plan(ckpt.tensors).matrices if s.name == "h.0.attn.c_attn.weight[k]")
    w = tensors["h.0.attn.c_attn.weight"]
    assert torch.equal(spec.extract(w), w[:, D:2 * D].T)


def test_gpt2_no_split(tmp_path):
    folder = synth.write(tmp_path / "gpt2", synth.gpt2(), {"model_type": "gpt2", "n_embd": D, "n_head": 4})
    _, got, _ = analysed(folder, split_fused=False)
    assert got["h.0.attn.c_attn.weight"] == (0, "att.qkv", 3 * D, D)


def _parts_are_labelled(folder, fused_name):
    """Each split part selects exactly the rows labelled 1 (q), 2 (k) or 3 (v) in the synthetic tensor."""
    ckpt = open_checkpoint(folder)
    tensor = load_file(str(folder / "model.safetensors"))[fused_name]
    specs = {s.module: s for s in plan(ckpt.tensors, ckpt.config).matrices if s.tensor == fused_name}
    assert set(specs) == {"att.q", "att.k", "att.v"}
    for module, label in (("att.q", 1.0), ("att.k", 2.0), ("att.v", 3.0)):
        m = specs[module].extract(tensor)
        assert m.shape == (specs[module].rows, specs[module].cols)
        assert torch.allclose(m.mean(1), torch.full((m.shape[0],), label), atol=0.05), module
    return specs


def test_neox_per_head_interleaving(tmp_path):
    folder = synth.write(tmp_path / "neox", synth.neox(),
                         {"model_type": "gpt_neox", "hidden_size": D, "num_attention_heads": 4})
    _, got, skipped = analysed(folder)
    p = "gpt_neox.layers.0."
    specs = _parts_are_labelled(folder, p + "attention.query_key_value.weight")
    assert specs["att.q"].rows == D
    assert got[p + "attention.query_key_value.weight[q]"] == (0, "att.q", D, D)
    assert got[p + "attention.dense.weight"] == (0, "att.o", D, D)
    assert got[p + "mlp.dense_h_to_4h.weight"] == (0, "mlp.up", 4 * D, D)
    assert got[p + "mlp.dense_4h_to_h.weight"] == (0, "mlp.down", D, 4 * D)
    assert got["embed_out.weight"][1] == "lm_head" and got["gpt_neox.embed_in.weight"][1] == "embed"
    assert p + "attention.rotary_emb.inv_freq" in skipped


def test_neox_without_config_keeps_fused_with_a_note(tmp_path):
    folder = synth.write(tmp_path / "neox", synth.neox())
    result, got, _ = analysed(folder)
    assert got["gpt_neox.layers.0.attention.query_key_value.weight"][1] == "att.qkv"
    assert any("config.json" in n for n in result.notes)


def test_phi3_qkv_and_gate_up(tmp_path):
    cfg = {"model_type": "phi3", "hidden_size": D, "num_attention_heads": 4, "num_key_value_heads": 2}
    folder = synth.write(tmp_path / "phi3", synth.phi3(), cfg)
    _, got, _ = analysed(folder)
    p = "model.layers.1."
    specs = _parts_are_labelled(folder, p + "self_attn.qkv_proj.weight")
    assert (specs["att.q"].rows, specs["att.k"].rows, specs["att.v"].rows) == (32, 16, 16)
    assert got[p + "self_attn.qkv_proj.weight[k]"] == (1, "att.k", 16, D)
    assert got[p + "mlp.gate_up_proj.weight[gate]"] == (1, "mlp.gate", FF, D)
    assert got[p + "mlp.gate_up_proj.weight[up]"] == (1, "mlp.up", FF, D)
    ckpt = open_checkpoint(folder)
    w = load_file(str(folder / "model.safetensors"))[p + "mlp.gate_up_proj.weight"]
    up = next(s for s in plan(ckpt.tensors, ckpt.config).matrices if s.name == p + "mlp.gate_up_proj.weight[up]")
    assert torch.allclose(up.extract(w).mean(), torch.tensor(2.0), atol=0.01)  # the second half is `up`


def test_bert(tmp_path):
    folder = synth.write(tmp_path / "bert", synth.bert())
    _, got, skipped = analysed(folder)
    p = "bert.encoder.layer.1."
    assert got[p + "attention.self.query.weight"] == (1, "att.q", D, D)
    assert got[p + "attention.self.key.weight"] == (1, "att.k", D, D)
    assert got[p + "attention.self.value.weight"] == (1, "att.v", D, D)
    assert got[p + "attention.output.dense.weight"] == (1, "att.o", D, D)
    assert got[p + "intermediate.dense.weight"] == (1, "mlp.up", 4 * D, D)
    assert got[p + "output.dense.weight"] == (1, "mlp.down", D, 4 * D)
    assert got["bert.pooler.dense.weight"] == (None, "other", D, D)
    assert got["cls.predictions.transform.dense.weight"][1] == "other"
    assert got["bert.embeddings.token_type_embeddings.weight"] == (None, "embed", 2, D)
    assert skipped["bert.embeddings.position_ids"] == "non-float dtype int64"


def test_opt(tmp_path):
    folder = synth.write(tmp_path / "opt", synth.opt())
    _, got, skipped = analysed(folder)
    p = "model.decoder.layers.0."
    assert [got[p + f"self_attn.{x}_proj.weight"][1] for x in ("q", "k", "v", "out")] == ["att.q", "att.k", "att.v", "att.o"]
    assert got[p + "fc1.weight"] == (0, "mlp.up", 4 * D, D)
    assert got[p + "fc2.weight"] == (0, "mlp.down", D, 4 * D)
    assert got["model.decoder.embed_positions.weight"][1] == "embed"
    assert got["lm_head.weight"] == (None, "lm_head", synth.VOCAB, D)
    assert skipped == {f"model.decoder.layers.{i}.fc1.bias": "1-D tensor (bias or norm gain)" for i in range(2)}


@pytest.mark.parametrize(("layout", "kv", "config"), [
    ("contiguous", 1, {"model_type": "falcon", "multi_query": True}),
    ("grouped", 2, {"model_type": "falcon", "new_decoder_architecture": True, "num_kv_heads": 2}),
    ("per_head", 4, {"model_type": "falcon", "multi_query": False}),
])
def test_falcon_layouts(tmp_path, layout, kv, config):
    cfg = {"hidden_size": D, "num_attention_heads": 4} | config
    folder = synth.write(tmp_path / layout, synth.falcon(layout, kv), cfg)
    _, got, _ = analysed(folder)
    p = "transformer.h.1."
    specs = _parts_are_labelled(folder, p + "self_attention.query_key_value.weight")
    assert (specs["att.q"].rows, specs["att.k"].rows) == (4 * HD, kv * HD)
    assert got[p + "self_attention.dense.weight"] == (1, "att.o", D, D)
    assert got[p + "mlp.dense_h_to_4h.weight"] == (1, "mlp.up", 4 * D, D)
    assert got["transformer.word_embeddings.weight"][1] == "embed"


def test_moe_per_expert_tensors(tmp_path):
    folder = synth.write(tmp_path / "mixtral", synth.mixtral(experts=3))
    result, got, _ = analysed(folder)
    q = "model.layers.0.block_sparse_moe."
    assert got[q + "experts.2.w1.weight"] == (0, "mlp.gate", FF, D)
    assert got[q + "experts.2.w3.weight"] == (0, "mlp.up", FF, D)
    assert got[q + "experts.2.w2.weight"] == (0, "mlp.down", D, FF)
    assert got[q + "gate.weight"] == (0, "other", 3, D)  # the router
    experts = result.table.set_index("name")["expert"]
    assert experts[q + "experts.2.w2.weight"] == 2 and experts.isna()[q + "gate.weight"]


def test_moe_fused_3d_experts(tmp_path):
    tensors = synth.fused_moe(experts=3)
    tensors["model.layers.0.mlp.experts.down_proj_bias"] = synth.rand(3, D)  # GPT-OSS-style stacked biases
    folder = synth.write(tmp_path / "moe", tensors, {"hidden_size": D})
    result, got, _ = analysed(folder)
    p = "model.layers.0.mlp.experts."
    for e in range(3):
        assert got[f"{p}gate_up_proj[{e},gate]"] == (0, "mlp.gate", FF, D)
        assert got[f"{p}gate_up_proj[{e},up]"] == (0, "mlp.up", FF, D)
        assert got[f"{p}down_proj[{e}]"] == (0, "mlp.down", D, FF)
    ckpt = open_checkpoint(folder)
    spec = next(s for s in plan(ckpt.tensors, ckpt.config).matrices if s.name == f"{p}gate_up_proj[1,up]")
    assert torch.equal(spec.extract(tensors[p + "gate_up_proj"]), tensors[p + "gate_up_proj"][1, FF:])
    assert len(result.table) == 1 + 1 + 3 * 3
    assert {s.name: s.reason for s in result.skipped} == {"model.layers.0.mlp.experts.down_proj_bias": "bias [3, 32]"}


def test_include_exclude_are_reported(tmp_path):
    folder = synth.write(tmp_path / "llama", synth.llama(), synth.LLAMA_CONFIG)
    _, got, skipped = analysed(folder, include=[r"layers\.0\."], exclude=["k_proj"])
    assert all(n.startswith("model.layers.0.") for n in got)
    assert "k_proj" not in " ".join(got)
    assert skipped["model.layers.0.self_attn.k_proj.weight"] == "excluded by pattern 'k_proj'"
    assert skipped["model.embed_tokens.weight"] == "not matched by any include pattern"
