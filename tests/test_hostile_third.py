"""The third hostile battery: the surfaces added last (hub revisions, report, maps, adapters, verdict gates).
Rows of the same suite as tests/test_hostile.py, checked the same way (`check_case`: the exit status, one
`error:` line naming the problem, no traceback, nothing of the user's changed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import synth
import torch
from safetensors.torch import save_file
from test_hostile import Case, base, check_case, copy, llama_dir, write  # noqa: F401 - base: a fixture
from test_hostile_second import TRAIN, cache_copy

from alphaspec.maps.file import DecayMap
from alphaspec.maps.methods import lora_ranks

R = 4  # the rank of the adapters below


def adapter(d: Path, config: dict | None = None, a_shape=(R, synth.D), b_shape=(synth.D, R), **extra) -> Path:
    """A base model and a LoRA adapter on its q_proj of layer 0 ({"r": R, "lora_alpha": 8} unless given)."""
    llama_dir(d)
    folder = d / "adapter"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{key}.lora_A.weight": torch.randn(*a_shape, generator=g),
               f"{key}.lora_B.weight": torch.randn(*b_shape, generator=g)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    text = json.dumps({"peft_type": "LORA", "r": R, "lora_alpha": 8, **(config or {}), **extra}) \
        if not isinstance(config, str) else config
    write(folder / "adapter_config.json", text)
    return folder


def analyze_adapter(d: Path, *args, **kw) -> list:
    return ["analyze", adapter(d, *args, **kw), "--base", d / "m", "-o", d / "out.csv"]


def decay_map_with(b: Path, d: Path, change) -> Path:
    doc = json.loads((b / "wd.json").read_text())
    change(doc)
    return write(d / "wd2.json", json.dumps(doc))


def results_with(b: Path, d: Path, column: str, value, row: int = 0) -> Path:
    """The base's results table as CSV with one cell changed (its spectra beside it, as analyze leaves them)."""
    import pandas as pd

    doc = json.loads((b / "results.json").read_text())
    table = pd.DataFrame(doc["matrices"]).astype(object)
    table.loc[row, column] = value
    path = d / "r.csv"
    table.to_csv(path, index=False)
    copy(b, d, "results.npz").rename(d / "r.npz")
    return path


def run_with(b: Path, d: Path, change) -> Path:
    """A copy of the base's training run whose oldest checkpoint `change(path)` replaces."""
    run = copy(b, d, "run")
    oldest = sorted((run / "checkpoints").glob("step_*.pt"))[0]
    oldest.unlink()
    change(oldest)
    return run


def two_spellings(doc: dict) -> None:
    first = doc["modules"][0]
    doc["modules"].append({**first, "name": first["name"].removeprefix("model."), "weight_decay": 0.5})


CASES = [
    # read outside the named places: a hub revision is a ref name, never a path into the cache
    Case("hub-revision-dotdot", lambda b, d: ["analyze", "some-org/name@../../../../outside/ref"], 1,
         ("not a revision", "'../../../../outside/ref'"), env={"HF_HUB_OFFLINE": "1"}),
    Case("hub-revision-absolute", lambda b, d: ["analyze", "some-org/name@/etc/ref"], 1, ("not a revision",),
         env={"HF_HUB_OFFLINE": "1"}),
    # a user's file is never the output
    Case("report-decay-map-is-the-output", lambda b, d: ["report", copy(b, d, "results.json"), "--decay-map",
                                                         write(d / "map.htm", "{}"), "-o", d / "map.htm"], 2,
         ("map.htm", "is an input")),
    # gates that cannot fire
    Case("fail-on-traps-without-randomize", lambda b, d: ["analyze", copy(b, d, "model"), "--fail-on", "traps"], 2,
         ("--fail-on traps needs --randomize",)),
    Case("fail-on-empty", lambda b, d: ["analyze", copy(b, d, "model"), "--fail-on", ""], 2, ("choose from",)),
    # maps: numbers out of range, one parameter named twice
    Case("lora-beta-huge", lambda b, d: ["map", "lora_rank", copy(b, d, "results.json"), "-o", d / "r.json",
                                         "--beta", "1e6"], 1, ("beta 1e+06", "range of floating point")),
    Case("lora-budget-above-the-matrices", lambda b, d: ["map", "lora_rank", copy(b, d, "results.json"), "-o",
                                                         d / "r.json", "--budget", "1000000000"], 1,
         ("rank", "above the smaller side")),
    # results tables: one validator, every reader behind it
    *[Case(f"{cmd}-results-{what}", lambda b, d, cmd=cmd, col=col, v=v: [
        *(["plot"] if cmd == "plot" else [cmd]), results_with(b, d, col, v), "-o",
        d / {"plot": "figs", "report": "r.html", "decay-map": "wd-out.json"}[cmd]], 1, ("r.csv", says))
      for cmd in ("plot", "report", "decay-map")
      for what, col, v, says in (("inf-alpha", "alpha", "inf", "column alpha holds an infinite value"),
                                 ("inf-xmin", "xmin", "-inf", "column xmin holds an infinite value"),
                                 ("empty-rows", "rows", "", "column rows must give every matrix's size"),
                                 ("huge-layer", "layer", "1e20", "column layer holds values that are not whole"),
                                 ("zero-size", "cols", "0", "column cols must give every matrix's size"))],
    # training state that is no longer a number stops the run, whatever the loss of the step before said
    Case("train-decay-1e30", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d), "--weight-decay",
                                           "1e30", "--log-every", "1", *TRAIN], 1,
         ("the run stopped", "weight decay")),
    # contradicting options are usage errors (exit 2), as the parser's own
    Case("train-lr-ratio-zero", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d), "--strategy",
                                              "tempbalance", "--lr-ratio", "0", "1", *TRAIN], 2,
         ("--lr-ratio", "freezes a matrix")),
    Case("train-tempbalance-with-decay-map", lambda b, d: ["train", "--out", d / "r", "--data", cache_copy(b, d),
                                                           "--strategy", "tempbalance", "--decay-map",
                                                           copy(b, d, "wd.json"), *TRAIN], 2,
         ("--decay-map is AlphaDecay's static map",)),
    # a run's checkpoints: files, holding state dicts of named tensors
    Case("diff-run-checkpoint-fifo", lambda b, d: ["diff", run_with(b, d, os.mkfifo), "-o", d / "d.csv"], 1,
         ("not a regular file",)),
    Case("diff-run-model-a-list", lambda b, d: ["diff", run_with(b, d, lambda p: torch.save({"model": [1, 2]}, p)),
                                                "-o", d / "d.csv"], 1, ("not a state dict of named tensors",)),
    Case("diff-run-model-ints", lambda b, d: ["diff", run_with(b, d, lambda p: torch.save({"model": {"a": 1}}, p)),
                                              "-o", d / "d.csv"], 1, ("not a state dict of named tensors",)),
    # adapter configs: finite, positive, whole ranks; factors of the rank the config says; patterns that are regexes
    Case("adapter-r-nan", lambda b, d: analyze_adapter(d, '{"peft_type": "LORA", "r": NaN, "lora_alpha": 8}'), 1,
         ("adapter_config.json", "r must be a whole number")),
    Case("adapter-r-1e400", lambda b, d: analyze_adapter(d, '{"peft_type": "LORA", "r": 1e400, "lora_alpha": 8}'), 1,
         ("r must be",)),
    Case("adapter-alpha-infinity", lambda b, d: analyze_adapter(d, '{"peft_type": "LORA", "r": 4, "lora_alpha": '
                                                                 'Infinity}'), 1, ("lora_alpha must be a finite",)),
    Case("adapter-alpha-pattern-nan", lambda b, d: analyze_adapter(d, '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, '
                                                                    '"alpha_pattern": {"q_proj": NaN}}'), 1,
         ("alpha_pattern['q_proj']",)),
    Case("adapter-r-not-the-factors", lambda b, d: analyze_adapter(d, r=16), 1,
         ("r of model.layers.0.self_attn.q_proj is 16", "rank 4")),
    Case("adapter-rank-pattern-not-a-regex", lambda b, d: analyze_adapter(d, rank_pattern={"q_proj(": 4}), 1,
         ("rank_pattern pattern 'q_proj('", "not a regular expression")),
    Case("adapter-rank-pattern-zero", lambda b, d: analyze_adapter(d, rank_pattern={"q_proj": 0}), 1,
         ("rank_pattern['q_proj'] must be a whole number above 0",)),
    Case("adapter-rank-pattern-list", lambda b, d: analyze_adapter(d, rank_pattern=["q_proj"]), 1,
         ("rank_pattern must be an object",)),
    Case("adapter-lora-a-1d", lambda b, d: analyze_adapter(d, a_shape=(R * synth.D,)), 1,
         (f"lora_A [{R * synth.D}]", "not an (r, in)")),
    Case("adapter-lora-b-3d", lambda b, d: analyze_adapter(d, b_shape=(2, synth.D, R)), 1, (f"lora_B [2, {synth.D}, 4]",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input_gives_one_clear_line(case, base, tmp_path, monkeypatch):  # noqa: F811 - base: a fixture
    check_case(case, base, tmp_path, monkeypatch)


def test_a_pattern_that_backtracks_is_matched_in_bounded_time(tmp_path):
    """`(.|.)*Z` as a rank_pattern key backtracked for minutes under `re` (and ignored SIGTERM); patterns from a
    file go through `regex`, with a time bound as a backstop."""
    import time

    from alphaspec.sources.deltas import AdapterCheckpoint

    folder = adapter(tmp_path, rank_pattern={"(.|.)*Z": 4, "(x+x+)+y": 4})
    start = time.perf_counter()
    ckpt = AdapterCheckpoint(folder)
    assert time.perf_counter() - start < 5
    assert ckpt.scale("model.layers.0.self_attn.q_proj.weight") == 8 / R


def test_lora_ranks_refuse_a_power_that_leaves_floating_point():
    """AlphaLoRA's a^beta for beta 1e6 was inf / inf = NaN, cast to ranks of -9223372036854775808."""
    with pytest.raises(Exception, match="range of floating point"):
        lora_ranks(np.array([2.0, 3.0]), 10, 1e6)
    assert lora_ranks(np.array([2.0, 3.0]), 10, 2.0).tolist() == [3, 7]  # 4/13 and 9/13 of 10, rounded


def test_expert_parameter_counts_must_be_whole_and_positive():
    """Per-expert `params` of -1 and 2 gave a fused expert tensor a decay of -0.3 (all 0: a ZeroDivisionError)."""
    from alphaspec.maps.groups import match_names

    params = {"model.layers.0.mlp.experts.gate_up_proj": torch.zeros(2, 8, 4),
              "model.layers.0.mlp.experts.down_proj": torch.zeros(2, 4, 4)}
    decays = {f"model.layers.0.mlp.experts.{e}.{p}.weight": 0.1 for e in range(2) for p in ("gate_proj", "up_proj",
                                                                                            "down_proj")}
    sizes = dict.fromkeys(decays, 16)
    assert match_names(decays, params, sizes=sizes)["model.layers.0.mlp.experts.down_proj"] == pytest.approx(0.1)
    for bad in (-1, 0, 2.5):
        with pytest.raises(Exception, match="whole number above 0"):
            match_names(decays, params, sizes={**sizes, "model.layers.0.mlp.experts.1.down_proj.weight": bad})


def test_a_decay_map_naming_one_parameter_twice_is_refused_in_param_groups(base):  # noqa: F811 - base: a fixture
    doc = json.loads((base / "wd.json").read_text())
    two_spellings(doc)
    dmap = DecayMap.from_json(doc)
    with pytest.raises(Exception, match="twice"):
        dmap.param_groups(synth_model(), lr=1e-3)


def synth_model() -> torch.nn.Module:
    """A module holding the synthetic Llama's tensors under their names (for param_groups)."""
    root = torch.nn.Module()
    for name, t in synth.llama().items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(t.float()))
    return root


def test_figure_text_from_users_is_literal():
    """A name or run path holding `$\\frac{a}$` was parsed as mathtext when the figure was drawn (a traceback in
    `report RUN` and `compare --plot`); every figure takes its text literally."""
    import io

    from alphaspec.plots.spectra import esd_figure

    name = r"run$\frac{a}$/model.layers.0.mlp.up_proj.weight"
    eigs = np.linspace(0.1, 5.0, 60) ** 2
    fig = esd_figure(name, eigs)
    fig.savefig(io.BytesIO(), format="png")
    assert fig._suptitle.get_text() == name


@pytest.mark.parametrize("bad", [{"gap": 0}, {"gap": 2.5}, {"ease": -3}, {"warmup": "sometimes"}, {"keep_history": 0}])
def test_callback_settings_fail_where_the_callback_is_made(bad):
    """They raised inside trainer.train() (gap=2.5 was accepted); now where the callback is made, as the hooks."""
    pytest.importorskip("transformers")
    from alphaspec.maps.callbacks import AlphaDecayCallback, AlphaLRCallback

    for callback in (AlphaLRCallback, AlphaDecayCallback):
        if "ease" in bad and callback is AlphaDecayCallback:
            continue  # AlphaDecay has no easing: an unknown argument there
        with pytest.raises(ValueError, match=next(iter(bad))):
            callback(**bad)


def _peak_of_diff(run: Path) -> int:
    """Peak resident memory (kB) of `alphaspec diff RUN` in a child process. glibc's mmap threshold is pinned: by
    default it rises after the first large free, and the heap then keeps some freed tensors resident at random."""
    import subprocess
    import sys

    script = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "alphaspec", "diff", str(run), "-q",
                          "-o", str(run.parent / f"{run.name}.csv")], capture_output=True, text=True, check=True,
                         env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"}).stdout.split()
    assert out[0] == "0"
    return int(out[1])


def test_diff_of_a_run_holds_two_checkpoints_at_most(tmp_path):
    """`diff RUN` over 8 checkpoints of 19 MB (each matrix with learnable row multipliers, folded on reading)
    peaks where 2 checkpoints do: each checkpoint is mapped only while its tensor is read (it grew by a
    checkpoint's size per checkpoint when every one was opened and folded up front)."""
    hidden, vocab, layers = 256, 8000, 2

    def make(count: int) -> Path:
        run = tmp_path / f"run{count}"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden,
                                                     "num_hidden_layers": layers, "num_attention_heads": 4,
                                                     "num_key_value_heads": 4, "intermediate_size": 4 * hidden,
                                                     "vocab_size": vocab}))
        g = torch.Generator().manual_seed(0)
        for step in range(count):
            state = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g),
                     "lm_head.weight": torch.randn(vocab, hidden, generator=g)}
            for layer in range(layers):
                for name, shape in (("mlp.up_proj", (4 * hidden, hidden)), ("mlp.down_proj", (hidden, 4 * hidden))):
                    state[f"model.layers.{layer}.{name}.weight"] = torch.randn(*shape, generator=g)
                    state[f"model.layers.{layer}.{name}.row_mult"] = torch.rand(shape[0], generator=g) + 0.5
            torch.save({"model": state}, run / "checkpoints" / f"step_{step + 1:07d}.pt")
        return run

    two, eight = _peak_of_diff(make(2)), _peak_of_diff(make(8))
    assert eight - two < 40_000, (two, eight)  # kB: less than two checkpoints' worth more (6 more would be 114 MB)
