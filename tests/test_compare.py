"""`alphaspec compare`: applied decay, seed pooling and the baseline difference against hand computations."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from alphaspec.cli import app
from alphaspec.train.compare import RunDirError, applied_decay, compare, load_run

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


def test_the_learning_rate_multiplier_of_an_lr_run_is_time_and_parameter_weighted(tmp_path):
    """tempbalance/llr runs: lr.csv's multipliers held until the next refresh, weighted by matrix size; said in
    a note beside the comparison, since a mean multiplier away from 1 changes the learning rate itself."""
    from alphaspec.train.compare import applied_lr_scale

    path = fake_run(tmp_path / "t", [3.0, 2.9], "tempbalance")
    pd.DataFrame([{"step": s, "name": n, "module": "", "layer": 0, "metric": 2.0, "lr_scale": v}
                  for s, n, v in [(0, A, 0.5), (0, B, 1.5), (6, A, 1.0), (6, B, 1.2)]]).to_csv(path / "lr.csv", index=False)
    # steps 1-5: (0.5*100 + 1.5*300)/400 = 1.25; steps 6-10: (1.0*100 + 1.2*300)/400 = 1.15
    assert applied_lr_scale(load_run(path)) == pytest.approx((5 * 1.25 + 5 * 1.15) / 10)
    assert math.isnan(applied_lr_scale(load_run(fake_run(tmp_path / "u", [3.0, 3.1]))))
    result = compare([tmp_path / "u", path])
    assert result.table.set_index("strategy").loc["tempbalance", "lr_scale"] == pytest.approx(1.2)
    assert any("times the schedule: tempbalance 1.20x" in n for n in result.notes), result.notes
    from alphaspec.plots.training import compare_figure

    panel = compare_figure(result).axes[3]  # the tempbalance run's multipliers, dashed, where its decay would be
    dashed = [line for line in panel.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata()) == 10]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == pytest.approx([1.25] * 5 + [1.15] * 5)
    assert "learning-rate multiplier" in panel.get_title(loc="left")
    (path / "lr.csv").write_text("step,name,module,layer,metric,lr_scale\n")  # no refresh finished yet: no figure
    assert math.isnan(compare([tmp_path / "u", path]).table.set_index("strategy").loc["tempbalance", "lr_scale"])


def test_seeds_are_pooled_and_set_against_the_uniform_baseline_with_welch(tmp_path):
    from scipy import stats

    u = [fake_run(tmp_path / f"u{s}", [3.5, v], seed=s) for s, v in enumerate([3.0, 3.2])]
    a = [fake_run(tmp_path / f"a{s}", [3.4, v], "alphadecay", seed=s) for s, v in enumerate([2.9, 3.0, 3.05])]
    result = compare([*a, *u])
    s = result.summary.set_index("label")
    assert result.summary.attrs["baseline"] == "uniform" and list(result.summary["label"]) == ["alphadecay", "uniform"]
    assert s.loc["uniform", "n"] == 2 and s.loc["alphadecay", "n"] == 3
    assert s.loc["alphadecay", "eval_loss"] == pytest.approx(np.mean([2.9, 3.0, 3.05]))
    assert s.loc["alphadecay", "eval_loss_std"] == pytest.approx(np.std([2.9, 3.0, 3.05], ddof=1))
    assert s.loc["alphadecay", "best_eval_loss"] == pytest.approx(np.mean([2.9, 3.0, 3.05]))
    # seed 2 has no uniform twin: Welch. By hand: se² = va/3 + vu/2, Welch-Satterthwaite df, t quantile.
    x, y = np.array([2.9, 3.0, 3.05]), np.array([3.0, 3.2])
    va, vu = x.var(ddof=1) / 3, y.var(ddof=1) / 2
    df = (va + vu) ** 2 / (va**2 / 2 + vu**2 / 1)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vu)
    assert not s.loc["alphadecay", "paired"] and s.loc["alphadecay", "df"] == pytest.approx(df)
    assert s.loc["alphadecay", "vs_baseline"] == pytest.approx(x.mean() - y.mean())
    assert (s.loc["alphadecay", "ci_low"], s.loc["alphadecay", "ci_high"]) == pytest.approx(
        (x.mean() - y.mean() - half, x.mean() - y.mean() + half))
    assert s.loc["alphadecay", "p_value"] == pytest.approx(stats.ttest_ind(x, y, equal_var=False).pvalue)
    assert s.loc["alphadecay", "p_holm"] == pytest.approx(s.loc["alphadecay", "p_value"])  # one label: unchanged
    assert math.isnan(s.loc["uniform", "ci_low"]) and s.loc["uniform", "vs_baseline"] == 0
    assert result.differing == []
    assert any("fewer than 3 runs for uniform" in n for n in result.notes)
    assert any("not paired by seed" in n for n in result.notes)


def test_same_seeds_are_compared_in_pairs(tmp_path):
    from scipy import stats

    uniform, alpha = [3.00, 3.20, 3.10], [2.98, 3.17, 3.09]  # seed effects shared, the strategy ~0.02 better
    runs = [fake_run(tmp_path / f"u{s}", [v], seed=s) for s, v in enumerate(uniform)]
    runs += [fake_run(tmp_path / f"a{s}", [v], "alphadecay", seed=s) for s, v in enumerate(alpha)]
    result = compare(runs)
    s = result.summary.set_index("label")
    d = np.subtract(alpha, uniform)
    se = d.std(ddof=1) / math.sqrt(3)
    t_975_df2 = 4.302652729749464  # the t distribution's 97.5 % quantile at 2 degrees of freedom (tables)
    assert bool(s.loc["alphadecay", "paired"]) and s.loc["alphadecay", "df"] == 2
    assert s.loc["alphadecay", "vs_baseline"] == pytest.approx(d.mean())
    assert (s.loc["alphadecay", "ci_low"], s.loc["alphadecay", "ci_high"]) == pytest.approx(
        (d.mean() - t_975_df2 * se, d.mean() + t_975_df2 * se))
    assert s.loc["alphadecay", "p_value"] == pytest.approx(stats.ttest_rel(alpha, uniform).pvalue)
    assert s.loc["alphadecay", "p_value"] == pytest.approx(2 * stats.t.sf(abs(d.mean() / se), 2))
    welch = math.sqrt(np.var(alpha, ddof=1) / 3 + np.var(uniform, ddof=1) / 3)
    assert se < welch / 5  # pairing removes the shared seed variance
    assert not any("fewer than 3" in n or "not paired" in n for n in result.notes)


def test_holm_against_a_hand_computation():
    from alphaspec.train.compare import holm

    # sorted 0.01, 0.03, 0.04 of m = 3: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept non-decreasing: 0.06
    got = holm(np.array([0.01, 0.04, np.nan, 0.03]))
    assert got[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[2])
    assert holm(np.array([0.5, 0.9])) == pytest.approx([1.0, 1.0])  # capped at 1


def test_a_single_run_per_label_gets_no_interval_and_says_so(tmp_path):
    runs = [fake_run(tmp_path / "u", [3.0]), fake_run(tmp_path / "a", [2.9], "alphadecay")]
    result = compare(runs)
    s = result.summary.set_index("label")
    assert s.loc["alphadecay", "vs_baseline"] == pytest.approx(-0.1) and math.isnan(s.loc["alphadecay", "ci_low"])
    assert math.isnan(s.loc["alphadecay", "p_value"])
    res = CliRunner().invoke(app, ["compare", str(runs[0]), str(runs[1])], env={"COLUMNS": "160"})
    assert res.exit_code == 0 and "(no CI)" in res.output and "fewer than 3 runs" in res.output


def alternative(value, f):
    """Another valid value of option field `f`, of its own type."""
    choices = f.metadata["choices"]
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.01
    if isinstance(value, list | tuple):
        return [*value[:-1], value[-1] + 1] if value and isinstance(value[-1], int | float) else ["elsewhere.txt"]
    if value is None:
        return 7 if "int" in str(f.type) else "elsewhere"
    return value + "-other"


BASES = [dict(strategy="uniform"), dict(strategy="alphadecay"), dict(strategy="adadecay"), dict(strategy="mup"),
         dict(strategy="alphadecay", optimizer="muon"), dict(strategy="uniform", multipliers="vector"),
         dict(strategy="alphadecay", decay_map="wd.json"), dict(strategy="tempbalance")]


def test_two_runs_are_replicates_exactly_when_they_differ_in_an_incidental_option():
    """Every option of TrainConfig, changed alone in a setting where it applies: the two runs share a label
    (are pooled as seeds of one setting) if and only if the option is marked incidental. A new option that
    changes what a run learns cannot be pooled silently: it is not incidental unless marked so."""
    from alphaspec.train.compare import labels
    from alphaspec.train.config import TrainConfig, option_fields

    checked = 0
    for _, f, key in option_fields():
        applies = f.metadata["applies"]
        base = next(c for c in (TrainConfig.of(**b).settled().flat() for b in BASES)
                    if applies is None or applies(c))
        other = base | {key: alternative(base[key], f)}
        a, b = labels([base, other])
        assert (a == b) == f.metadata["incidental"], (key, a, b)
        checked += 1
    assert checked == len(list(option_fields())) > 40
    incidental = {key for _, f, key in option_fields() if f.metadata["incidental"]}
    assert incidental == {"out", "resume", "seed", "log_every", "eval_every", "analyze_every", "checkpoint_every",
                          "keep_checkpoints", "token_cache", "device", "compile", "sharding", "micro_batch",
                          "report_to"}


def test_options_that_do_not_apply_split_no_replicates(tmp_path):
    """Muon's momentum means nothing to an AdamW run, and a refresh gap nothing to uniform decay: runs that
    differ only there are replicates, and the options stay out of the labels."""
    from alphaspec.train.compare import labels
    from alphaspec.train.config import TrainConfig

    adamw = TrainConfig.of(strategy="uniform").settled().flat()
    assert labels([adamw, adamw | {"muon_momentum": 0.5}, adamw | {"gap": 7}]) == ["uniform"] * 3
    muon = TrainConfig.of(strategy="uniform", optimizer="muon").settled().flat()
    assert labels([muon, muon | {"muon_momentum": 0.5}]) == ["uniform", "uniform muon_momentum=0.5"]
    mup = TrainConfig.of(strategy="mup").settled().flat()
    assert labels([mup, mup | {"mup_base_width": 64}]) == ["mup", "mup mup_base_width=64"]


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
    assert "alphadecay" in res.output and "-0.0500" in res.output and "Δ final" in res.output
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
    from alphaspec.plots.training import compare_figure

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


def with_alphas(run, level: float):
    """alphas.csv rows for two module types over three steps, alpha = level + step / 100."""
    rows = [{"step": s, "name": f"model.layers.{layer}.{part}.weight", "module": module, "layer": layer, "rows": 32,
             "cols": 32, "alpha": level + s / 100, "xmin": 1.0, "ks_d": 0.1, "n_tail": 10, "spectral_norm": 1.0,
             "stable_rank": 1.0, "log_norm": 0.0, "entropy": 0.5}
            for s in (0, 5, 10) for layer in (0, 1)
            for part, module in (("self_attn.q_proj", "att.q"), ("mlp.down_proj", "mlp.down"))]
    pd.DataFrame(rows).to_csv(run / "alphas.csv", index=False)
    return run


def test_the_figures_draw_one_line_per_label_not_per_seed(tmp_path):
    """Seeds overplotted into one tangle; now each label is its mean over seeds with a min..max band."""
    import matplotlib

    from alphaspec.plots.training import alphas_over_training, compare_figure

    matplotlib.use("Agg")
    runs = [with_alphas(fake_run(tmp_path / f"u{s}", [3.2, 3.0 + s / 10], seed=s), 3.0 + s / 10) for s in range(3)]
    runs += [with_alphas(fake_run(tmp_path / f"a{s}", [3.1, 2.9 + s / 10], "alphadecay", seed=s), 2.5) for s in range(3)]
    result = compare(runs)
    fig = compare_figure(result)
    eval_ax = fig.axes[1]
    assert len(eval_ax.get_lines()) == 2  # two labels, six runs
    assert sorted(t.get_text() for t in eval_ax.get_legend().get_texts()) == ["alphadecay (n=3)", "uniform (n=3)"]
    mean_uniform = next(line for line in eval_ax.get_lines() if line.get_color() == eval_ax.get_lines()[0].get_color())
    assert mean_uniform.get_ydata()[-1] == pytest.approx(3.1)  # the mean of 3.0, 3.1, 3.2
    alphas = [pd.read_csv(r / "alphas.csv") for r in runs]
    fig = alphas_over_training(result, alphas)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in shown] == ["att.q", "mlp.down"]
    uniform_line = shown[0].get_lines()[0]  # uniform is the first label in table order? labels in table order
    assert list(uniform_line.get_xdata()) == [0, 5, 10]
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--plot-alphas", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_alphas_without_any_alphas_is_one_error_line(tmp_path):
    runs = [fake_run(tmp_path / "u", [3.0]), fake_run(tmp_path / "a", [2.9], "alphadecay")]
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--plot-alphas", str(tmp_path / "a.png")])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("error: --plot-alphas")
    assert not (tmp_path / "a.png").exists()


def test_a_run_without_evaluation_gives_no_number_and_a_note(tmp_path):
    runs = [fake_run(tmp_path / f"u{s}", [3.0 + s / 10], seed=s) for s in range(3)]
    silent = fake_run(tmp_path / "a0", [2.9], "alphadecay")
    m = pd.read_csv(silent / "metrics.csv")
    m.assign(eval_loss=None, eval_ppl=None).to_csv(silent / "metrics.csv", index=False)
    result = compare([*runs, silent])
    s = result.summary.set_index("label")
    assert math.isnan(s.loc["alphadecay", "vs_baseline"]) and math.isnan(s.loc["alphadecay", "p_value"])
    assert any("has no evaluation yet" in n for n in result.notes)
    res = CliRunner().invoke(app, ["compare", *map(str, [*runs, silent])], env={"COLUMNS": "100"})
    assert res.exit_code == 0 and "nan" not in res.output.lower() and "- (no eval)" in res.output
    assert not any("not paired" in n for n in result.notes)


def test_runs_on_other_data_or_tokenizers_are_not_pooled_and_are_named(tmp_path):
    """Runs trained on different data or with different tokenizers are not replicates, and compare says the
    comparison is not like for like (their losses are not on one scale)."""
    runs = [fake_run(tmp_path / f"u{s}", [3.0 + s / 10], seed=s, data=["a.txt"]) for s in range(3)]
    runs += [fake_run(tmp_path / "other", [2.5], data=["b.txt"]), fake_run(tmp_path / "gpt2", [2.4], tokenizer="gpt2")]
    result = compare(runs, baseline="uniform data=a.txt")
    assert len(set(result.table["label"])) == 3
    assert result.differing == ["data", "tokenizer"]
    res = CliRunner().invoke(app, ["compare", *map(str, runs), "--baseline", "uniform data=a.txt"],
                             env={"COLUMNS": "120"})
    assert res.exit_code == 0 and "the runs differ in data, tokenizer: not a like-for-like comparison" in res.output
