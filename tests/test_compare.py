"""`alphaspec compare`: applied decay, seed pooling and the baseline difference against hand computations."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from alphaspec.cli import app
from alphaspec.compare import RunDirError, applied_decay, compare, load_run

A, B = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"


def fake_run(path, eval_losses, strategy="uniform", seed=0, decays=None, **config):
    """A run directory as `alphaspec train` writes it, with chosen numbers."""
    path.mkdir(parents=True)
    cfg = {"strategy": strategy, "seed": seed, "weight_decay": 0.1, "model": "tiny", "steps": 10, "gap": 500, **config}
    (path / "run.json").write_text(json.dumps({"config": cfg}))
    steps = [5 * (i + 1) for i in range(len(eval_losses))]
    pd.DataFrame({"step": steps, "tokens": [s * 100 for s in steps], "loss": [e + 0.1 for e in eval_losses],
                  "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1000.0, "eval_loss": eval_losses,
                  "eval_ppl": np.exp(eval_losses)}).to_csv(path / "metrics.csv", index=False)
    decays = decays or [(0, A, 0.1), (0, B, 0.1)]
    pd.DataFrame([{"step": s, "name": n, "module": "", "layer": 0, "metric": "", "weight_decay": w} for s, n, w in decays]
                 ).to_csv(path / "decay.csv", index=False)
    save_file({A: torch.zeros(10, 10), B: torch.zeros(30, 10)}, str(path / "model.safetensors"))
    return path


def test_applied_decay_is_time_and_parameter_weighted(tmp_path):
    run = load_run(fake_run(tmp_path / "r", [3.0, 2.9], decays=[(0, A, 0.1), (0, B, 0.2), (5, A, 0.3)]))
    # steps 1-4: (0.1*100 + 0.2*300)/400; steps 5-10: (0.3*100 + 0.2*300)/400
    assert applied_decay(run) == pytest.approx((4 * 0.175 + 6 * 0.225) / 10)


def test_seeds_are_pooled_and_set_against_the_uniform_baseline(tmp_path):
    u = [fake_run(tmp_path / f"u{s}", [3.5, v], seed=s) for s, v in enumerate([3.0, 3.2])]
    a = [fake_run(tmp_path / f"a{s}", [3.4, v], "alphadecay", seed=s) for s, v in enumerate([2.9, 3.0, 3.05])]
    result = compare([*a, *u])
    s = result.summary.set_index("label")
    assert result.summary.attrs["baseline"] == "uniform" and list(result.summary["label"]) == ["alphadecay", "uniform"]
    assert s.loc["uniform", "n"] == 2 and s.loc["alphadecay", "n"] == 3
    assert s.loc["alphadecay", "eval_loss"] == pytest.approx(np.mean([2.9, 3.0, 3.05]))
    assert s.loc["alphadecay", "eval_loss_std"] == pytest.approx(np.std([2.9, 3.0, 3.05], ddof=1))
    assert s.loc["alphadecay", "vs_baseline"] == pytest.approx(np.mean([2.9, 3.0, 3.05]) - 3.1)
    se = math.sqrt(np.var([2.9, 3.0, 3.05], ddof=1) / 3 + np.var([3.0, 3.2], ddof=1) / 2)
    assert s.loc["alphadecay", "vs_baseline_se"] == pytest.approx(se) and not s.loc["alphadecay", "paired"]
    assert math.isnan(s.loc["uniform", "vs_baseline_se"]) and s.loc["uniform", "vs_baseline"] == 0
    assert result.differing == []


def test_same_seeds_are_compared_in_pairs(tmp_path):
    uniform, alpha = [3.00, 3.20, 3.10], [2.98, 3.17, 3.09]  # seed effects shared, the strategy ~0.02 better
    runs = [fake_run(tmp_path / f"u{s}", [v], seed=s) for s, v in enumerate(uniform)]
    runs += [fake_run(tmp_path / f"a{s}", [v], "alphadecay", seed=s) for s, v in enumerate(alpha)]
    s = compare(runs).summary.set_index("label")
    d = np.subtract(alpha, uniform)
    assert bool(s.loc["alphadecay", "paired"])
    assert s.loc["alphadecay", "vs_baseline"] == pytest.approx(d.mean())
    assert s.loc["alphadecay", "vs_baseline_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3))
    welch = math.sqrt(np.var(alpha, ddof=1) / 3 + np.var(uniform, ddof=1) / 3)
    assert s.loc["alphadecay", "vs_baseline_se"] < welch / 5  # pairing removes the shared seed variance


def test_labels_name_only_the_settings_that_matter(tmp_path):
    runs = [fake_run(tmp_path / "u", [3.0], gap=7), fake_run(tmp_path / "a1", [3.0], "alphadecay", gap=10),
            fake_run(tmp_path / "a2", [3.0], "alphadecay", gap=50), fake_run(tmp_path / "l", [3.0], steps=20)]
    result = compare(runs, baseline="uniform steps=10")  # two uniform labels of one run each: named
    assert list(result.table["label"]) == ["uniform steps=10", "alphadecay gap=10 steps=10",
                                           "alphadecay gap=50 steps=10", "uniform steps=20"]
    assert result.differing == ["steps"]


def test_bad_runs_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="not an alphaspec training run"):
        load_run(tmp_path / "empty")
    with pytest.raises(RunDirError, match="baseline"):
        compare([fake_run(tmp_path / "u", [3.0])], baseline="nope")
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "empty")])
    assert res.exit_code == 1 and res.output.startswith("error:") and "Traceback" not in res.output


def test_cli_writes_table_and_figure(tmp_path):
    runs = [str(fake_run(tmp_path / "u", [3.2, 3.0])), str(fake_run(tmp_path / "a", [3.1, 2.95], "alphadecay",
                                                                   decays=[(0, A, 0.05), (0, B, 0.3)]))]
    res = CliRunner().invoke(app, ["compare", *runs, "-o", str(tmp_path / "c.csv"), "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert "alphadecay" in res.output and "-0.0500" in res.output
    assert "average decay differs" in res.output  # (0.05*100+0.3*300)/400 = 0.2375 = 2.4 w
    table = pd.read_csv(tmp_path / "c.csv")
    assert table.loc[table["strategy"] == "alphadecay", "applied_over_w"].item() == pytest.approx(2.375)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_the_default_baseline_is_the_uniform_label_with_most_runs(tmp_path):
    runs = [fake_run(tmp_path / f"u{i}", [3.0 + i / 10], seed=i) for i in range(2)]
    runs += [fake_run(tmp_path / "short", [3.5], steps=5), fake_run(tmp_path / "a", [2.9], "alphadecay")]
    result = compare(runs)
    assert result.summary.attrs["baseline"] == "uniform steps=10"  # 2 runs against 1
    s = result.summary.set_index("label")
    assert s.loc["alphadecay steps=10", "vs_baseline"] == pytest.approx(2.9 - 3.0)  # paired with seed 0
    assert compare(runs, baseline="uniform steps=5").summary.attrs["baseline"] == "uniform steps=5"
    with pytest.raises(RunDirError, match="2 uniform labels have 1 run"):
        compare([runs[0], runs[2]])
    with pytest.raises(RunDirError, match="no uniform-decay runs"):
        compare([runs[3], fake_run(tmp_path / "w", [3.0], "awd")])


def test_every_legend_entry_of_the_figure_has_its_curve(tmp_path):
    from alphaspec.training_plots import compare_figure

    runs = [fake_run(tmp_path / "u", [3.2, 3.0]), fake_run(tmp_path / "a", [3.1, 2.9], "alphadecay"),
            fake_run(tmp_path / "w", [3.1, 3.0], "awd")]
    metrics = pd.read_csv(runs[2] / "metrics.csv")
    metrics.assign(eval_loss=None, eval_ppl=None).to_csv(runs[2] / "metrics.csv", index=False)  # not evaluated yet
    fig = compare_figure(compare(runs))
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        drawn = {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()}
        for text in legend.get_texts():
            assert drawn.get(text.get_text(), 0) > 0, text.get_text()
        assert "awd" not in [t.get_text() for t in legend.get_texts()]
