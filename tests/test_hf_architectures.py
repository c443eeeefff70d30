"""Tiny models of 20+ transformers classes, saved with save_pretrained: every row's spectrum equals that of
the true (out, in) matrix, derived here from each family's modeling code; the live-weights hook gives the
decays `decay-map` gives for the saved checkpoint; and the map applies to the model built from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from alphaspec import AlphaDecay, analyze, analyze_checkpoint, build_decay_map
from alphaspec.maps.groups import match_names

transformers = pytest.importorskip("transformers")

H = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}
MOE = {"num_key_value_heads": 2, "num_experts_per_tok": 2}
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", H | {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", H | {"num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", H | {"num_key_value_heads": 2}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", H | {"num_key_value_heads": 2, "head_dim": 16}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", H | {"num_key_value_heads": 2, "head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", H | {"num_key_value_heads": 2, "pad_token_id": 0}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100,
                                               "n_positions": 32}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", H),
    "bloom": ("BloomConfig", "BloomForCausalLM", {"hidden_size": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100}),
    "falcon_mqa": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 64, "num_attention_heads": 4,
                                                         "num_hidden_layers": 2, "vocab_size": 100}),
    "falcon_mha": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 64, "num_attention_heads": 4,
                                                         "num_hidden_layers": 2, "vocab_size": 100,
                                                         "multi_query": False}),
    "falcon_new": ("FalconConfig", "FalconForCausalLM", {"hidden_size": 64, "num_attention_heads": 4,
                                                         "num_hidden_layers": 2, "vocab_size": 100,
                                                         "new_decoder_architecture": True, "num_kv_heads": 2}),
    "opt": ("OPTConfig", "OPTForCausalLM", {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                                            "ffn_dim": 128, "vocab_size": 100, "word_embed_proj_dim": 64}),
    "bert": ("BertConfig", "BertModel", H),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", H | MOE | {"num_local_experts": 4}),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", H | MOE | {"num_experts": 4, "moe_intermediate_size": 32,
                                                                      "shared_expert_intermediate_size": 48}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", H | MOE | {"num_experts": 4, "moe_intermediate_size": 32}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", H | MOE | {"num_experts": 4}),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", H | {
        "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
        "q_lora_rank": 24, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
        "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", H | MOE | {"num_local_experts": 4, "head_dim": 16,
                                                                "layer_types": ["full_attention"] * 2}),
    "codegen": ("CodeGenConfig", "CodeGenForCausalLM", {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 100,
                                                        "rotary_dim": 8, "n_positions": 32}),
    "gemma3_vision": ("Gemma3Config", "Gemma3ForConditionalGeneration", {
        "text_config": H | {"num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300},
        "vision_config": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 64,
                          "image_size": 28, "patch_size": 14},
        "mm_tokens_per_image": 4, "image_token_index": 299, "boi_token_index": 297, "eoi_token_index": 298}),
    "t5": ("T5Config", "T5ForConditionalGeneration", {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                                                      "num_heads": 4, "vocab_size": 100}),
}


def saved(folder) -> dict[str, torch.Tensor]:
    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            out |= {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return out


def rows_of(fused: torch.Tensor, groups: int, labels: str) -> dict[str, torch.Tensor]:
    """Split (out, in) rows as [groups, len(labels), rest]: the per-group interleaving of fused layouts."""
    view = fused.reshape(groups, len(labels), -1, fused.shape[-1])
    return {label: view[:, i].reshape(-1, fused.shape[-1]) for i, label in enumerate(labels)}


def truth(family: str, tensors: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Every matrix of the checkpoint as its modeling code applies it, (out, in), under alphaspec's row names."""
    out: dict[str, torch.Tensor] = {}
    d = getattr(cfg, "hidden_size", None)
    for name, w in tensors.items():
        if not w.is_floating_point() or w.ndim < 2 or w.ndim > 3 or name.endswith("bias"):
            continue  # stacked per-expert biases [experts, out] are vectors, not matrices
        if family == "gpt2" and name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            w = w.T  # Conv1D stores (in, out)
        if name.endswith(("c_attn.weight", "in_proj_weight")):  # GPT-2, torch.nn.MultiheadAttention: [q; k; v]
            out |= {f"{name}[{k}]": v for k, v in zip("qkv", w.chunk(3), strict=True)}
        elif name.endswith("query_key_value.weight"):
            nh, hd = cfg.num_attention_heads, d // cfg.num_attention_heads
            if family in ("gpt_neox", "bloom", "falcon_mha"):
                parts = rows_of(w, nh, "qkv")
            elif family == "falcon_new":
                nkv = cfg.num_kv_heads
                view = w.reshape(nkv, nh // nkv + 2, hd, -1)
                parts = {"q": view[:, :-2].reshape(-1, d), "k": view[:, -2].reshape(-1, d), "v": view[:, -1].reshape(-1, d)}
            else:  # multi-query Falcon: [q (nh heads) | k (1 head) | v (1 head)]
                parts = dict(zip("qkv", w.split([nh * hd, hd, hd]), strict=True))
            out |= {f"{name}[{k}]": v for k, v in parts.items()}
        elif name.endswith("qkv_proj.weight") and family == "codegen":
            out |= {f"{name}[{k}]": v for k, v in rows_of(w, 4, "qvk").items()}  # mp_num = 4 groups of [q v k]
        elif name.endswith("qkv_proj.weight"):
            hd = d // cfg.num_attention_heads
            sizes = [cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.num_key_value_heads * hd]
            out |= {f"{name}[{k}]": v for k, v in zip("qkv", w.split(sizes), strict=True)}
        elif name.endswith("kv_b_proj.weight"):
            view = w.reshape(cfg.num_attention_heads, cfg.qk_nope_head_dim + cfg.v_head_dim, -1)
            out |= {f"{name}[k]": view[:, :cfg.qk_nope_head_dim].reshape(-1, w.shape[-1]),
                    f"{name}[v]": view[:, cfg.qk_nope_head_dim:].reshape(-1, w.shape[-1])}
        elif name.endswith("experts.gate_up_proj"):  # GPT-OSS: [experts, in, out], gate = [..., ::2], up = [..., 1::2]
            for e in range(w.shape[0]):
                out |= {f"{name}[{e},gate]": w[e][:, ::2].T, f"{name}[{e},up]": w[e][:, 1::2].T}
        elif name.endswith("experts.down_proj"):  # GPT-OSS: [experts, in, out]
            out |= {f"{name}[{e}]": w[e].T for e in range(w.shape[0])}
        elif name.endswith("gate_up_proj.weight"):
            out |= {f"{name}[gate]": w.chunk(2)[0], f"{name}[up]": w.chunk(2)[1]}
        elif w.ndim == 2:
            out[name] = w
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    made = {}
    for family, (config_cls, model_cls, kwargs) in FAMILIES.items():
        if not hasattr(transformers, model_cls):
            continue
        folder = tmp_path_factory.mktemp(family)
        config = getattr(transformers, config_cls)(**kwargs)
        torch.manual_seed(0)
        getattr(transformers, model_cls)(config).save_pretrained(folder)
        made[family] = (folder, config, getattr(transformers, model_cls))
    return made


def test_enough_families(models):
    assert len(models) >= 20


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_row_is_the_true_matrix(models, family):
    if family not in models:
        pytest.skip(f"this transformers has no {FAMILIES[family][1]}")
    folder, config, _ = models[family]
    tensors = saved(folder)
    result = analyze_checkpoint(folder, device="cpu", keep_spectra=True)
    expected = truth(family, tensors, config)
    assert set(result.table["name"]) == set(expected), set(result.table["name"]) ^ set(expected)
    for name, w in expected.items():
        want = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2)
        got = result.spectra[name]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want.max(), err_msg=name)
    row = result.table.set_index("name")
    for name, w in expected.items():
        assert (row.loc[name, "rows"], row.loc[name, "cols"]) == tuple(w.shape), name
    accounted = set(result.table["tensor"]) | {s.name for s in result.skipped}
    assert accounted == set(tensors)  # every tensor a row or skipped, with its reason
    assert result.notes == []  # nothing kept whole: every fused layout is known


TYPES = {  # spot checks of module types and stacks
    "t5": {"encoder.block.1.layer.1.DenseReluDense.wo.weight": ("mlp.down", "encoder", 1),
           "decoder.block.1.layer.2.DenseReluDense.wi.weight": ("mlp.up", "decoder", 1),
           "decoder.block.0.layer.1.EncDecAttention.o.weight": ("att.o", "decoder", 0),
           "decoder.block.0.layer.1.EncDecAttention.q.weight": ("att.q", "decoder", 0)},
    "deepseek_v3": {"model.layers.0.self_attn.q_a_proj.weight": ("att.q", None, 0),
                    "model.layers.0.self_attn.q_b_proj.weight": ("att.q", None, 0),
                    "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": ("att.kv", None, 0),
                    "model.layers.0.self_attn.kv_b_proj.weight[v]": ("att.v", None, 0)},
    "gpt_oss": {"model.layers.1.mlp.experts.gate_up_proj[2,gate]": ("mlp.gate", None, 1),
                "model.layers.1.mlp.experts.down_proj[3]": ("mlp.down", None, 1)},
    "gemma3_vision": {"vision_tower.encoder.layers.1.self_attn.out_proj.weight": ("att.o", "vision", 1),
                      "language_model.model.layers.1.self_attn.o_proj.weight": ("att.o", "text", 1)},
    "codegen": {"transformer.h.1.attn.qkv_proj.weight[v]": ("att.v", None, 1),
                "transformer.h.1.mlp.fc_in.weight": ("mlp.up", None, 1)},
}


@pytest.mark.parametrize("family", list(TYPES))
def test_module_types_and_stacks(models, family):
    if family not in models:
        pytest.skip("not in this transformers")
    table = analyze(models[family][0], device="cpu").set_index("name")
    for name, (module, stack, layer) in TYPES[family].items():
        got = table.loc[name]
        assert (got["module"], None if got["stack"] is None else got["stack"], got["layer"]) == (module, stack, layer)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hook_decays_equal_the_decay_map_of_the_checkpoint(models, family):
    if family not in models:
        pytest.skip("not in this transformers")
    folder, _, model_cls = models[family]
    model = model_cls.from_pretrained(folder)
    dmap = build_decay_map(analyze(folder, device="cpu"), 0.1)
    dmap.param_groups(model)  # the map made from the checkpoint applies to the model built from it
    params = dict(model.named_parameters())
    sizes = {m["name"]: m["params"] for m in dmap.modules}
    from_map = match_names(dmap.decays(), params, model, sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    hook = AlphaDecay(model, optimizer, overlap=False)  # decays from the weights at construction
    assert set(hook.decays) == set(from_map)
    for name, wd in from_map.items():
        assert hook.decays[name] == pytest.approx(wd, rel=1e-12, abs=1e-15), name


# --- --paper-compat: the AlphaDecay release's decays, reproduced ------------------------------------------------


def released_decays(model: torch.nn.Module, w: float, s1: float, s2: float) -> dict[str, float]:
    """A copy of the release's logic (net_esd_estimator + get_layer_temps + build_optimizer_param_group), with
    its median fit in float64: every nn.Linear in module order, the first and the last dropped, then those
    with fewer than eigs_thresh = 50 eigenvalues, np.interp over the rest; a module's parameters (bias too)
    share its decay; everything else gets w."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    alphas, eigs_num = [], []
    for _, m in linears:
        eigs = np.sort(np.linalg.svd(m.weight.detach().double().numpy(), compute_uv=False) ** 2)
        i = int(len(eigs) / 2)
        n = len(eigs) - i
        alphas.append(1 + n / (np.sum(np.log(eigs[i:])) - n * np.log(eigs[i])))
        eigs_num.append(len(eigs))
    linears, alphas, eigs_num = linears[1:-1], np.array(alphas[1:-1]), np.array(eigs_num[1:-1])
    keep = eigs_num >= 50
    linears, alphas = [lin for lin, k in zip(linears, keep, strict=True) if k], alphas[keep]
    wd = np.interp(alphas, [alphas.min(), alphas.max()], [s1 * w, s2 * w])
    out = {n: w for n, _ in model.named_parameters()}
    for (name, module), d in zip(linears, wd, strict=True):
        for pname, _ in module.named_parameters():
            out[f"{name}.{pname}"] = float(d)
    return out


@pytest.mark.parametrize("family", ["smollm2", "minilm"])
def test_paper_compat_reproduces_the_release(tmp_path, family):
    from click.testing import CliRunner

    from alphaspec import DecayMap
    from alphaspec.cli import app

    if family == "smollm2":  # tied head, GQA, no biases
        config = transformers.LlamaConfig(**H, num_key_value_heads=2, tie_word_embeddings=True)
        model_cls = transformers.LlamaForCausalLM
    else:  # BERT with biases and a pooler
        config, model_cls = transformers.BertConfig(**H), transformers.BertModel
    torch.manual_seed(1)
    model_cls(config).save_pretrained(tmp_path / "m")
    res = CliRunner().invoke(app, ["decay-map", str(tmp_path / "m"), "-o", str(tmp_path / "wd.json"), "--weight-decay",
                                   "1e-5", "--ratio", "0.6666", "3", "--paper-compat", "-q"])
    assert res.exit_code == 0, res.output
    model = model_cls.from_pretrained(tmp_path / "m")
    groups = DecayMap.load(tmp_path / "wd.json").param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
    expected = released_decays(model, 1e-5, 0.6666, 3.0)
    assert ours.keys() == expected.keys()
    for name, wd in expected.items():
        assert ours[name] == pytest.approx(wd, rel=1e-9, abs=1e-20), name
    assert len({round(v, 15) for v in ours.values()}) > 3  # a real spread of decays, not all equal
    if family == "smollm2":  # the 32 x 64 k/v projections have 32 eigenvalues: the release leaves them at w
        assert ours["model.layers.1.self_attn.k_proj.weight"] == ours["model.layers.1.self_attn.v_proj.weight"] == 1e-5
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    hook = AlphaDecay(model, optimizer, ratio=(0.6666, 3.0), paper_compat=True, overlap=False)
    for name, wd in hook.decays.items():  # the live hook, from the same weights: the release's decays too
        assert wd == pytest.approx(expected[name], rel=1e-9, abs=1e-20), name


RENAMED_ON_LOAD = {"gpt_neox", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gemma3_vision"}


def same_rows(got, want, by_name: bool) -> None:
    """The same matrices with the same numbers (1e-12); by name, or, where transformers renames or fuses
    tensors as it loads (per-expert weights into one [experts, out, in] tensor), by module, layer and spectrum."""
    if by_name:
        assert list(got["name"]) == list(want["name"])
    else:
        got, want = (t.sort_values(["layer", "module", "lambda_max"], kind="stable") for t in (got, want))
    numeric = [c for c in want.columns if want[c].dtype.kind == "f"]
    np.testing.assert_allclose(got[numeric].to_numpy(float), want[numeric].to_numpy(float), rtol=0, atol=1e-12)
    assert list(got["module"]) == list(want["module"]) and list(got["status"]) == list(want["status"])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_model_in_memory_gives_the_table_of_its_saved_checkpoint(models, family):
    """analyze(model) from from_pretrained: its config splits the fused matrices, a tied weight counts once
    (as save_pretrained keeps it); the rows of analyze(saved_dir) to 1e-12, and the weights untouched. The
    rows carry the live model's own names (those its optimizer and the hook see)."""
    if family not in models:
        pytest.skip(f"{family} is not in this transformers")
    folder, _, model_cls = models[family]
    model = model_cls.from_pretrained(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = analyze(folder)
    got = analyze(model)
    same_rows(got, want, by_name=family not in RENAMED_ON_LOAD)
    assert set(got["name"].str.replace(r"\[.*\]$", "", regex=True)) <= set(model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    config = model.config.to_dict()
    same_rows(analyze(model.state_dict(), config=config), got, by_name=True)
