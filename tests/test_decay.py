"""Decay assignment against docs/math.md §3 by hand, the decay-map file, and applying it to a torch model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import synth
import torch

from alphaspec import DecayMap, DecayMapError, analyze_checkpoint, assign_decays, build_decay_map

A = np.array([1.5, 2.0, 3.0, 4.5])
W = 0.1


def test_linear_by_hand():
    got = assign_decays(A, W, ratio=(0.67, 3.0), assign="linear")
    expected = [W * (0.67 + 2.33 * (a - 1.5) / 3.0) for a in A]  # a_min 1.5, a_max 4.5
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    assert got[0] == pytest.approx(0.067) and got[-1] == pytest.approx(0.3)


def test_sqrt_and_log2_by_hand():
    s = sum(math.sqrt(a) for a in A)
    np.testing.assert_allclose(assign_decays(A, W, assign="sqrt"), [W * 4 * math.sqrt(a) / s for a in A], rtol=1e-14)
    s2 = sum(math.log2(a) for a in A)
    np.testing.assert_allclose(assign_decays(A, W, assign="log2"), [W * 4 * math.log2(a) / s2 for a in A], rtol=1e-14)


def test_sigmoid_by_hand_per_block():
    # block 0: 1.5, 2.0 (mean 1.75, population std 0.25); block 1: 3.0, 4.5 (mean 3.75, std 0.75)
    got = assign_decays(A, W, assign="sigmoid", blocks=[0, 0, 1, 1])
    expected = []
    for a, mean, std in ((1.5, 1.75, 0.25), (2.0, 1.75, 0.25), (3.0, 3.75, 0.75), (4.5, 3.75, 0.75)):
        z = (a - mean) / (std + 1e-8)
        expected.append(W * 2 / (1 + math.exp(-4 * z)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_edge_cases():
    np.testing.assert_array_equal(assign_decays([2.5, 2.5, 2.5], W), [W, W, W])  # all equal: w, not s2*w
    for assign in ("linear", "sqrt", "log2", "sigmoid"):
        assert assign_decays([3.0], W, assign=assign) == pytest.approx([W])  # a single module gets w
    with pytest.raises(DecayMapError, match="log2 assignment needs every metric value > 1"):
        assign_decays([0.9, 2.0], W, assign="log2")
    with pytest.raises(DecayMapError, match="ratio"):
        assign_decays(A, W, ratio=(3.0, 1.0))
    with pytest.raises(DecayMapError, match="no finite metric"):
        assign_decays([2.0, float("nan")], W)
    with pytest.raises(DecayMapError, match="unknown assignment"):
        assign_decays(A, W, assign="cubic")


@pytest.mark.parametrize("assign", ["linear", "sqrt", "sigmoid"])
def test_preserve_mean(assign):
    sizes = np.array([100.0, 100.0, 400.0, 400.0])
    plain = assign_decays(A, W, assign=assign, blocks=[0, 0, 1, 1], preserve_mean="modules")
    assert abs(plain.mean() - W) < 1e-12 * W * 10
    weighted = assign_decays(A, W, assign=assign, blocks=[0, 0, 1, 1], sizes=sizes, preserve_mean="params")
    assert abs((weighted * sizes).sum() / sizes.sum() - W) < 1e-12 * W * 10
    raw = assign_decays(A, W, assign=assign, blocks=[0, 0, 1, 1])
    np.testing.assert_allclose(weighted / raw, (weighted / raw)[0])  # a rescaling, not a new shape


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return synth.write(tmp_path_factory.mktemp("llama"), synth.llama(dtype=torch.float32, lm_head=True),
                       synth.LLAMA_CONFIG)


class TinyLlama(torch.nn.Module):
    """Parameter names and shapes of synth.llama, as a torch module."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.names = list(state)
        for i, t in enumerate(state.values()):
            self.register_parameter(f"p{i}", torch.nn.Parameter(t.clone()))

    def named_parameters(self, *args, **kwargs):
        return iter([(n, getattr(self, f"p{i}")) for i, n in enumerate(self.names)])


def test_map_applied_to_matching_model(llama_dir, tmp_path):
    table = analyze_checkpoint(llama_dir, device="cpu").table
    dmap = build_decay_map(table, W, default="matrices", source=str(llama_dir))
    path = tmp_path / "wd.json"
    dmap.save(path)
    loaded = DecayMap.load(path)
    assert loaded.decays() == dmap.decays() and len(loaded.modules) == 14
    state = synth.llama(dtype=torch.float32, lm_head=True)
    model = TinyLlama(state)
    groups = loaded.param_groups(model, lr=1e-3)
    doc = json.loads(path.read_text())
    in_file = {m["name"]: m["weight_decay"] for m in doc["modules"]}
    params = dict(model.named_parameters())
    got = {}
    for g in groups:
        for p in g["params"]:
            got[next(n for n, q in params.items() if q is p)] = g["weight_decay"]
    assert set(got) == set(params)  # every parameter is in exactly one group
    for name, wd in in_file.items():
        assert got[name] == wd
    assert got["lm_head.weight"] == W and got["model.embed_tokens.weight"] == 0.0 and got["model.norm.weight"] == 0.0
    torch.optim.AdamW(groups)  # the groups are valid optimizer input


def test_map_refused_for_another_model(llama_dir):
    dmap = build_decay_map(analyze_checkpoint(llama_dir, device="cpu").table, W)
    gpt2 = TinyLlama({k: v for k, v in synth.gpt2().items() if v.ndim == 2})
    with pytest.raises(DecayMapError) as err:
        dmap.param_groups(gpt2)
    msg = str(err.value)
    assert "\n" not in msg
    assert "not in the model: model.layers.0." in msg and "not in the map: h.0.attn.c_attn.weight" in msg


def test_bad_files_are_refused(tmp_path):
    (tmp_path / "corrupt.json").write_text('{"schema": "alphaspec.decay-map/1", "modules": [')
    with pytest.raises(DecayMapError, match="not valid JSON"):
        DecayMap.load(tmp_path / "corrupt.json")
    (tmp_path / "future.json").write_text(json.dumps({"schema": "alphaspec.decay-map/9", "modules": []}))
    with pytest.raises(DecayMapError, match="unsupported schema 'alphaspec.decay-map/9'"):
        DecayMap.load(tmp_path / "future.json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DecayMapError, match="not an alphaspec decay map"):
        DecayMap.load(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text(json.dumps({"schema": "alphaspec.decay-map/1", "weight_decay": 0.1,
                                                   "modules": [{"name": "x"}]}))
    with pytest.raises(DecayMapError, match="malformed"):
        DecayMap.load(tmp_path / "bad.json")


def test_fused_tensor_gets_parameter_weighted_mean_of_parts(tmp_path):
    cfg = {"model_type": "phi3", "hidden_size": synth.D, "num_attention_heads": 4, "num_key_value_heads": 2}
    table = analyze_checkpoint(synth.write(tmp_path, synth.phi3(), cfg), device="cpu").table
    dmap = build_decay_map(table, W)
    entry = next(m for m in dmap.modules if m["name"] == "model.layers.0.self_attn.qkv_proj.weight")
    parts = entry["parts"]
    assert [p["module"] for p in parts] == ["att.q", "att.k", "att.v"] and entry["module"] == "att.qkv"
    rows = {"att.q": 32, "att.k": 16, "att.v": 16}
    expected = sum(p["weight_decay"] * rows[p["module"]] for p in parts) / 64
    assert entry["weight_decay"] == pytest.approx(expected, rel=1e-12)


def test_cli_decay_map(llama_dir, tmp_path):
    env = os.environ | {"COLUMNS": "120"}
    out = tmp_path / "wd.json"
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "decay-map", str(llama_dir), "-o", str(out),
                           "--weight-decay", "5e-6", "--ratio", "0.67", "5", "--preserve-mean", "params"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "parameter-weighted" in proc.stdout and "mean preserved: params" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["schema"] == "alphaspec.decay-map/1" and doc["ratio"] == [0.67, 5.0]
    wd = np.array([m["weight_decay"] for m in doc["modules"]])
    size = np.array([m["params"] for m in doc["modules"]])
    assert (wd * size).sum() / size.sum() == pytest.approx(5e-6, rel=1e-12)
    bad = subprocess.run([sys.executable, "-m", "alphaspec", "decay-map", str(llama_dir), "-o", str(out),
                          "--metric", "vibes"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2


def test_a_decay_spec_checks_its_values_when_made():
    from alphaspec import DecaySpec

    assert DecaySpec() == DecaySpec(ratio=[0.67, 3.0])  # a list from JSON is the same spec
    for bad in ({"metric": "alfa"}, {"assign": "cubic"}, {"ratio": (3.0, 1.0)}, {"ratio": (0.5, math.inf)},
                {"include": ["(unclosed"]}, {"estimator": "mean"}):
        with pytest.raises(DecayMapError):
            DecaySpec(**bad)
    with pytest.raises(TypeError, match="ratios"):
        build_decay_map(None, 0.1, ratios=(1, 2))  # a misspelt option is refused, not ignored
    with pytest.raises(AttributeError):
        DecaySpec().metric = "entropy"  # frozen: one spec can be shared safely


def test_one_spec_gives_the_same_decays_to_the_map_and_the_hook(llama_dir):
    """build_decay_map(table, w, spec) and AlphaDecay(..., spec=spec) on the same weights agree, and equal the
    keyword spelling; the hand value of a linear map's extremes is s1*w and s2*w."""
    from alphaspec import AlphaDecay, DecaySpec

    spec = DecaySpec(ratio=(0.5, 4.0), assign="linear", metric="alpha")
    table = analyze_checkpoint(llama_dir, device="cpu").table
    by_spec = build_decay_map(table, W, spec).decays()
    assert by_spec == build_decay_map(table, W, ratio=(0.5, 4.0)).decays()
    assert min(by_spec.values()) == pytest.approx(0.5 * W) and max(by_spec.values()) == pytest.approx(4.0 * W)
    model = TinyLlama(synth.llama(dtype=torch.float32, lm_head=True))
    hook = AlphaDecay(model, torch.optim.AdamW(model.parameters(), weight_decay=W), spec=spec, overlap=False,
                      config=synth.LLAMA_CONFIG)
    assert hook.decays == pytest.approx(by_spec, rel=1e-9)


def gaussian_llama(tmp_path, seed: int = 0):
    """A random-init LLaMA's shapes (square attention, 3x-wide MLP) filled with Gaussian entries."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.q_proj": (96, 96), "self_attn.k_proj": (96, 96), "self_attn.v_proj": (96, 96),
              "self_attn.o_proj": (96, 96), "mlp.gate_proj": (288, 96), "mlp.up_proj": (288, 96),
              "mlp.down_proj": (96, 288)}
    tensors = {f"model.layers.{i}.{n}.weight": torch.randn(*s, generator=g) / 10 for i in range(4)
               for n, s in shapes.items()}
    return analyze_checkpoint(synth.write(tmp_path, tensors, synth.LLAMA_CONFIG), device="cpu").table


def test_a_map_decided_by_shape_says_so_and_alpha_excess_removes_the_shape(tmp_path):
    """Random Gaussian weights: alpha differs between square and 3:1 matrices only by shape, which the map
    would turn into decays; the note says so (R² of alpha on alpha_random, computed here with numpy)."""
    table = gaussian_llama(tmp_path)
    dmap = build_decay_map(table, 0.1)
    r2 = np.corrcoef(table["alpha"], table["alpha_random"])[0, 1] ** 2
    assert r2 > 0.5 and len(dmap.notes) == 1 and dmap.notes[0].startswith(f"{r2:.0%} of the spread of alpha")
    excess = build_decay_map(table, 0.1, metric="alpha_excess")
    assert excess.notes == []
    want = assign_decays((table["alpha"] - table["alpha_random"]).to_numpy(), 0.1,
                         blocks=table["layer"].tolist(), sizes=(table["rows"] * table["cols"]).tolist())
    assert [m["weight_decay"] for m in excess.modules] == pytest.approx(list(want), rel=1e-12)
    assert [m["alpha_excess"] for m in excess.modules] == pytest.approx(
        list(table["alpha"] - table["alpha_random"]), rel=1e-12)
    same_shape = table[table["module"].str.startswith("att")]  # one shape: nothing for the shape to explain
    assert build_decay_map(same_shape, 0.1).notes == []


def test_the_cli_and_the_hook_print_the_shape_note(tmp_path, caplog):
    from alphaspec import AlphaDecay

    gaussian_llama(tmp_path / "m")
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "decay-map", str(tmp_path / "m"), "-o",
                           str(tmp_path / "wd.json")], capture_output=True, text=True,
                          env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 0 and "note: " in proc.stdout and "--metric alpha_excess" in proc.stdout
    from safetensors.torch import load_file

    model = TinyLlama(load_file(str(tmp_path / "m" / "model.safetensors")))
    opt = torch.optim.AdamW(model.parameters(), weight_decay=0.1)
    with caplog.at_level("WARNING", logger="alphaspec"):
        hook = AlphaDecay(model, opt, gap=1, overlap=False)
        hook.step()
    notes = [r.message for r in caplog.records if "note:" in r.message]
    assert len(notes) == 1 and "follows their shapes" in notes[0]  # once, not at every refresh


def test_paper_compat_leaves_what_the_release_leaves_and_says_so(tmp_path):
    """A MoE router (8 x 96: 8 eigenvalues, too few to fit) made --paper-compat refuse the model; the release
    drops every Linear with fewer than 50 eigenvalues (after the first and the last) and so does alphaspec.
    The summary no longer counts the untouched Linears among the tuned."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(3):
        for name, shape in {"self_attn.q_proj": (96, 96), "mlp.gate": (8, 96), "mlp.up_proj": (192, 96),
                            "mlp.down_proj": (96, 192)}.items():
            tensors[f"model.layers.{i}.{name}.weight"] = torch.randn(*shape, generator=g)
    tensors["lm_head.weight"] = torch.randn(128, 96, generator=g)  # the last Linear, which the release drops
    model = synth.write(tmp_path / "m", tensors, synth.LLAMA_CONFIG)
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "decay-map", str(model), "-o", str(tmp_path / "wd.json"),
                           "--paper-compat"], capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "wd.json").read_text())
    untouched = [m["name"] for m in doc["modules"] if m["alpha"] is None]
    assert untouched == ["model.layers.0.self_attn.q_proj.weight"] + [f"model.layers.{i}.mlp.gate.weight"
                                                                       for i in range(3)]
    assert all(m["weight_decay"] == 0.1 for m in doc["modules"] if m["alpha"] is None)
    assert "4 Linear(s) the release leaves untuned keep w: model.layers.0.self_attn.q_proj.weight" in proc.stdout
    assert "(8 tuned tensors)" in proc.stdout
    tuned_row = next(line for line in proc.stdout.splitlines() if "all tuned" in line)
    assert "│ 8 " in tuned_row or " 8 │" in tuned_row  # 12 matrices - 4 untouched


def same_json(got, want, where="") -> None:
    """Equal documents: the same keys in the same order, the same strings, numbers to 1e-12 (a float64 solve on
    another CPU may differ in its last bit; on one machine the files were byte-identical)."""
    assert type(got) is type(want) or {type(got), type(want)} <= {int, float}, where
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for key in want:
            same_json(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same_json(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), where
    else:
        assert got == want, where


@pytest.mark.parametrize("name", ["minilm-default", "minilm-params", "moe-default", "moe-modules"])
def test_decay_maps_are_what_they_were_before_the_maps_redesign(tmp_path, name):
    """Golden maps written by the code before maps/ existed (MiniLM and a Mixtral-style MoE, default and other
    options): the redesigned code writes the same documents."""
    from alphaspec import analyze

    if name.startswith("minilm"):
        table, source = analyze("example:minilm", device="cpu"), "example:minilm"
    else:
        tensors = {k: v.float() for k, v in synth.mixtral(layers=2, experts=3).items()}
        table = analyze(synth.write(tmp_path / "moe", tensors, synth.LLAMA_CONFIG | {"model_type": "mixtral"}),
                        device="cpu")
        source = "moe"
    options = {"minilm-params": {"preserve_mean": "params", "assign": "sqrt"},
               "moe-modules": {"ratio": (0.6666, 5.0), "preserve_mean": "modules"}}.get(name, {})
    build_decay_map(table, 0.1, source=source, **options).save(tmp_path / "wd.json")
    golden = Path(__file__).parent / "data" / "golden" / f"{name}.json"
    written = json.loads((tmp_path / "wd.json").read_text())
    assert written.pop("kind") == "weight_decay"  # the one field the map engine adds
    same_json(written, json.loads(golden.read_text()))
    assert DecayMap.load(golden).kind == "weight_decay"  # a map written before `kind` existed still loads


def test_a_map_of_another_kind_is_refused_where_decays_are_read(tmp_path):
    doc = {"schema": "alphaspec.decay-map/1", "kind": "lr", "weight_decay": 0.1, "modules": []}
    (tmp_path / "lr.json").write_text(json.dumps(doc))
    with pytest.raises(DecayMapError, match="a map of 'lr', not of weight decays"):
        DecayMap.load(tmp_path / "lr.json")
