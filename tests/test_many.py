"""Many checkpoints at once: `analyze A B C ...` into one long table with source, step and tokens; a summary
per source; rank correlations with a score; the series and zoo figures; the bad cases as one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import synth
import torch

from alphaspec.analysis.engine import analyze_checkpoint
from alphaspec.analysis.many import analyze_many, detect_step
from alphaspec.analysis.summary import MIN_MODELS, correlate, summarize


def cli(*args, env=None):
    """The command in this process (click's runner: no interpreter and torch start-up per call)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from alphaspec.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100", **(env or {})})
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def subprocess_cli(*args):
    return subprocess.run([sys.executable, "-m", "alphaspec", *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"COLUMNS": "100"}, timeout=600)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Six small llamas whose weights grow more heavy-tailed from one to the next (a known order)."""
    root = tmp_path_factory.mktemp("zoo")
    paths = []
    for i in range(6):
        tensors = synth.llama(dtype=torch.float32)
        g = torch.Generator().manual_seed(i)
        for name, t in tensors.items():
            if t.ndim == 2:  # a rank-one spike of growing size: alpha falls as it grows
                u, v = torch.randn(t.shape[0], 1, generator=g), torch.randn(1, t.shape[1], generator=g)
                tensors[name] = t + (0.5 * i) * u @ v / math.sqrt(t.shape[1])
        paths.append(synth.write(root / f"checkpoint-{1000 * (i + 1)}", tensors, synth.LLAMA_CONFIG))
    return paths


@pytest.mark.parametrize("label,step", [("runs/ad@500", 500), ("EleutherAI/pythia-70m@step143000", 143000),
                                        ("out/checkpoint-5000", 5000), ("allenai/OLMo-1B@stage1-step5000-tokens21B",
                                                                        5000),
                                        ("ckpt/global_step200", 200), ("megatron/iter_0005000", 5000),
                                        ("./my-model", None), ("org/model@main", None)])
def test_steps_are_read_from_the_names_users_give(label, step):
    assert detect_step(label) == step


def test_the_long_table_is_each_analysis_with_source_step_and_tokens(zoo):
    result = analyze_many(zoo[:3], device="cpu", cache=False)
    assert result.failures == [] and result.sources == [str(p) for p in zoo[:3]]
    table = result.table
    assert list(table.columns[:3]) == ["source", "step", "tokens"]
    assert list(table["step"].unique()) == [1000, 2000, 3000] and table["tokens"].isna().all()
    for path in zoo[:3]:
        one = analyze_checkpoint(path, "median", "cpu", cache=False).table
        part = table[table["source"] == str(path)].drop(columns=["source", "step", "tokens", "log_alpha_norm"])
        pd.testing.assert_frame_equal(part.reset_index(drop=True), one, check_dtype=False)


def test_log_alpha_norm_is_weightwatchers(zoo):
    """log10 of the sum of the eigenvalues to the power alpha, as WeightWatcher's log_alpha_norm."""
    result = analyze_many(zoo[:1], device="cpu", cache=False)
    spectra = analyze_checkpoint(zoo[0], "median", "cpu", keep_spectra=True, cache=False).spectra
    for row in result.table.itertuples():
        eigs = spectra[row.name]
        assert row.log_alpha_norm == pytest.approx(np.log10(np.sum(eigs[eigs > 0] ** row.alpha)), rel=1e-12)


def test_a_failing_source_is_named_and_the_others_go_on(zoo, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = cli("analyze", zoo[0], tmp_path / "broken", zoo[1], "-o", tmp_path / "t.csv")
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(tmp_path / "broken") in errors[0] and "1 of 3 sources failed" in errors[1]
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(dict.fromkeys(table["source"])) == [str(zoo[0]), str(zoo[1])]


def test_bad_lists_are_usage_errors_before_any_work(zoo, tmp_path):
    for args, said in (([zoo[0], zoo[0]], "is given more than once"),
                       ([zoo[0], zoo[1], "--steps", "1,2,3"], "--steps gives 3 step(s) for 2 source(s)"),
                       ([zoo[0], zoo[1], "--steps", "1,x"], "whole numbers"),
                       ([str(tmp_path / "nothing*")], "no file or directory matches")):
        proc = cli("analyze", *args, "-o", tmp_path / "t.csv")
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert not (tmp_path / "t.csv").exists()


def test_a_list_file_a_glob_and_steps(zoo, tmp_path):
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# the first two\n{zoo[0]}\n\n{zoo[1]}  # a comment\n")
    proc = cli("analyze", f"@{listing}", "--steps", "10,20", "-o", tmp_path / "l.csv", "-q")
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_csv(tmp_path / "l.csv").drop_duplicates("source")["step"]) == [10, 20]
    proc = cli("analyze", str(zoo[0].parent / "checkpoint-*"), "-o", tmp_path / "g.csv", "-q")
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "g.csv").drop_duplicates("source")) == 6


def test_a_summary_per_source_and_module(zoo):
    table = analyze_many(zoo[:2], device="cpu", cache=False).table
    summary = summarize(table)
    for source, part in table.groupby("source", sort=False):
        row = summary[(summary["source"] == source) & (summary["module"] == "all")].iloc[0]
        assert row["matrices"] == len(part) and row["alpha_median"] == pytest.approx(part["alpha"].median())
        assert row["alpha_excess_mean"] == pytest.approx((part["alpha"] - part["alpha_random"]).mean())
        assert row["log_norm_mean"] == pytest.approx(part["log_norm"].mean())
        q = summary[(summary["source"] == source) & (summary["module"] == "att.q")].iloc[0]
        assert q["matrices"] == (part["module"] == "att.q").sum()


def test_correlations_equal_scipy_and_few_models_are_said_so():
    from scipy import stats

    rng = np.random.default_rng(0)
    sources = [f"m{i}" for i in range(8)]
    summary = pd.DataFrame({"source": sources, "module": "all", "step": pd.NA, "matrices": 10,
                            "alpha_median": rng.normal(3, 0.3, 8)} | {f"{m}_mean": rng.normal(0, 1, 8) for m in
                                                                      ("alpha", "alpha_excess", "log_norm")})
    scores = dict(zip(sources, rng.normal(0, 1, 8), strict=True))
    correlations, notes = correlate(summary, scores)
    row = correlations.set_index("metric").loc["alpha_median"]
    x, y = summary["alpha_median"].to_numpy(), np.array([scores[s] for s in sources])
    assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert row["kendall_p"] == pytest.approx(stats.kendalltau(x, y).pvalue)
    assert row["spearman_low"] <= row["spearman"] <= row["spearman_high"] and notes == []
    few, notes = correlate(summary.iloc[:MIN_MODELS - 1], dict(list(scores.items())[:MIN_MODELS - 1]))
    assert few.empty and "too few" in notes[0]


def test_scores_the_zoo_figure_and_the_series_figure(zoo, tmp_path):
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"source": [str(p) for p in zoo], "score": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}).to_csv(scores,
                                                                                                   index=False)
    proc = cli("analyze", *zoo, "-o", tmp_path / "t.parquet", "--summary", tmp_path / "s.csv", "--scores", scores,
               "--plots", tmp_path / "figs")
    assert proc.returncode == 0, proc.stderr
    assert "rank correlation with the score" in proc.stdout
    summary = pd.read_csv(tmp_path / "s.csv")
    assert set(summary["module"]) >= {"all", "att.q"} and len(summary[summary["module"] == "all"]) == 6
    for figure in ("series.png", "zoo.png"):
        assert (tmp_path / "figs" / figure).stat().st_size > 10_000
    proc = cli("plot", tmp_path / "t.parquet", "--kind", "series", "-o", tmp_path / "p")
    assert proc.returncode == 0 and (tmp_path / "p" / "series.png").is_file(), proc.stderr
    proc = cli("plot", tmp_path / "t.parquet", "--kind", "zoo", "--scores", scores, "-o", tmp_path / "p")
    assert proc.returncode == 0 and (tmp_path / "p" / "zoo.png").is_file(), proc.stderr


def test_bad_scores_files_are_one_line(zoo, tmp_path):
    for text, said in (("source,score\nnowhere,1\n", "'nowhere', which is not among the sources"),
                       (f"source,score\n{zoo[0]},nan\n", "not a finite number"),
                       (f"source,score\n{zoo[0]},1\n{zoo[0]},2\n", "twice"),
                       ("name,value\n", "no column source, score")):
        scores = tmp_path / "s.csv"
        scores.write_text(text)
        proc = cli("analyze", zoo[0], zoo[1], "--scores", scores, "-o", tmp_path / "t.csv")
        assert proc.returncode == 2 and said in proc.stderr, (text, proc.stderr)
        assert not (tmp_path / "t.csv").exists()


def test_a_training_runs_checkpoints_are_a_series_with_tokens(tmp_path):
    run = tmp_path / "run"
    proc = subprocess_cli("train", "--out", run, "--steps", "6", "--checkpoint-every", "3", "--keep-checkpoints", "5",
                          "--eval-every", "100", "-q")
    assert proc.returncode == 0, proc.stderr
    proc = cli("analyze", run / "checkpoints", "-o", tmp_path / "s.csv", "-q")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "s.csv")
    metrics = pd.read_csv(run / "metrics.csv").set_index("step")
    assert list(table.drop_duplicates("source")["step"]) == [3, 6]
    for step, tokens in table.drop_duplicates("source")[["step", "tokens"]].itertuples(index=False):
        assert tokens == metrics.loc[step, "tokens"]
    assert json.loads((run / "run.json").read_text())  # the run itself untouched


def test_the_report_of_a_long_table_has_the_series_section(zoo, tmp_path):
    scores = tmp_path / "scores.csv"
    pd.DataFrame({"source": [str(p) for p in zoo], "score": range(6)}).to_csv(scores, index=False)
    assert cli("analyze", *zoo, "-q", "-o", tmp_path / "t.csv").returncode == 0
    proc = cli("report", tmp_path / "t.csv", "--scores", scores, "-o", tmp_path / "r.html")
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "r.html").read_text()
    assert "Many checkpoints: t.csv (6 sources)" in html and html.count('<table class="sortable">') == 1
    summary_rows = html.split('<table class="sortable">')[1].split("</table>")[0].count("<tr>") - 1
    assert summary_rows == 6 and "rank correlation of each metric with the score" in html
    assert html.count("<svg") + html.count("<img") >= 2  # the series and the zoo figures


def test_hostile_lists_of_sources_are_one_line(zoo, tmp_path):
    """@FILE: missing, a directory, not text, empty, listing itself (no recursion), too large."""
    (tmp_path / "self.txt").write_text(f"@{tmp_path / 'self.txt'}\n")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00" * 10)
    (tmp_path / "big.txt").write_text(f"{zoo[0]}\n" * 100_000)
    for given, code, said in ((tmp_path / "missing.txt", 1, "no such file"), (tmp_path, 1, "not a list of sources"),
                              (tmp_path / "binary.txt", 1, "cannot read the list"),
                              (tmp_path / "empty.txt", 1, "lists no source"),
                              (tmp_path / "self.txt", 1, "self.txt"), (tmp_path / "big.txt", 1, "is no list of sources")):
        proc = cli("analyze", f"@{given}", "-o", tmp_path / "t.csv")
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == code and lines and said in lines[0] and "Traceback" not in proc.stderr, (given,
                                                                                                           proc.stderr)
        assert not (tmp_path / "t.csv").exists()
