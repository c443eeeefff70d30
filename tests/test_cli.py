"""The CLI as a user meets it: exit codes, one-line errors, output files, the HF cache offline."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import synth
import torch

from alphaspec import analyze_checkpoint


def cli(*args, env=None, cwd=None):
    full_env = os.environ | {"COLUMNS": "120", "HF_HUB_DISABLE_TELEMETRY": "1"} | (env or {})
    return subprocess.run([sys.executable, "-m", "alphaspec", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def in_process(*args, env=None):
    """The command in this process (click's runner): for tests of what a command does, not of the process
    (start-up, signals, exit through the interpreter), which `cli` runs for real."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from alphaspec.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "120", **(env or {})})
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return synth.write(folder, synth.llama(), synth.LLAMA_CONFIG)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for f in fragments:
        assert f in lines[0]


def test_bad_inputs_exit_1_with_one_line(tmp_path):
    assert_one_line_error(cli("analyze", tmp_path / "missing.safetensors"), "missing.safetensors", "no such file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("analyze", tmp_path / "empty"), "no weights found")
    good = synth.write(tmp_path / "good", {"w.weight": synth.rand(50, 50)}) / "model.safetensors"
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) - 100])
    assert_one_line_error(cli("analyze", tmp_path / "truncated.safetensors"), "truncated.safetensors",
                          "not a valid safetensors file")
    (tmp_path / "random.safetensors").write_bytes(os.urandom(4096))
    assert_one_line_error(cli("analyze", tmp_path / "random.safetensors"), "random.safetensors")
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    assert_one_line_error(cli("analyze", tmp_path / "random.bin"), "random.bin", "not a readable PyTorch state dict")
    offline = cli("analyze", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(offline, "no-such-org/no-such-model")
    assert_one_line_error(cli("analyze", "example:nope"), "unknown example 'nope'", "example:minilm")


def test_usage_errors_exit_2(llama_dir, tmp_path):
    assert cli("analyze", llama_dir, "-o", tmp_path / "out.txt").returncode == 2
    assert cli("analyze", llama_dir, "-e", "hill").returncode == 2
    assert cli("analyze", llama_dir, "--include", "(").returncode == 2
    assert cli("analyze").returncode == 2
    missing_dev = cli("analyze", llama_dir, "--device", "cuda:7")
    assert missing_dev.returncode == 1 and "cuda:7" in missing_dev.stderr


def test_outputs_all_formats(llama_dir, tmp_path):
    proc = cli("analyze", llama_dir, "-o", tmp_path / "r.json", "--save-spectra", tmp_path / "s.npz")
    assert proc.returncode == 0, proc.stderr
    assert "alpha per module type" in proc.stdout and "att.q" in proc.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc) >= {"alphaspec", "source", "estimator", "device", "matrices", "skipped"}
    assert doc["estimator"] == "median" and doc["device"] == "cpu"
    assert len(doc["matrices"]) == 15 and len(doc["skipped"]) == 5
    assert doc["matrices"][0]["layer"] is None and isinstance(doc["matrices"][1]["layer"], int)
    expected = analyze_checkpoint(llama_dir, device="cpu").table
    assert [m["alpha"] for m in doc["matrices"]] == pytest.approx(list(expected["alpha"]), rel=1e-15)
    columns = ["name", "layer", "module", "rows", "cols", "n_eigs", "n_zero", "estimator", "alpha", "xmin", "ks_d",
               "n_tail", "lambda_max", "spectral_norm", "frobenius_norm", "stable_rank", "log_spectral_norm",
               "log_norm", "alpha_weighted", "entropy"]
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"r{suffix}"
        assert cli("analyze", llama_dir, "-q", "-e", "fix-finger", "-o", out).returncode == 0
        table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
        assert list(table.columns[: len(columns)]) == columns
        assert (table["estimator"] == "fix-finger").all() and len(table) == 15
    import numpy as np

    spectra = np.load(tmp_path / "s.npz")
    assert len(spectra.files) == 15 and spectra["model.layers.0.mlp.up_proj.weight"].shape == (32,)


def test_quiet_prints_nothing(llama_dir, tmp_path):
    proc = cli("analyze", llama_dir, "-q", "-o", tmp_path / "r.csv")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


def test_nan_matrix_does_not_stop_the_run(tmp_path):
    bad = synth.rand(40, 40)
    bad[0, 0] = float("nan")
    folder = synth.write(tmp_path / "m", {"model.layers.0.mlp.up_proj.weight": bad,
                                          "model.layers.0.mlp.down_proj.weight": synth.rand(40, 40, seed=3)})
    proc = cli("analyze", folder, "-o", tmp_path / "r.csv")
    assert proc.returncode == 0, proc.stderr
    assert "matrix contains NaN or Inf" in proc.stdout
    table = pd.read_csv(tmp_path / "r.csv")
    assert table["status"].tolist() == ["ok", "matrix contains NaN or Inf"] or \
        sorted(table["status"]) == ["matrix contains NaN or Inf", "ok"]


def _hf_cache(root, repo, tensors, commit="0123456789abcdef0123456789abcdef01234567"):
    """The hub cache layout huggingface_hub reads offline: snapshots/<commit>/ and refs/main."""
    base = root / "hub" / f"models--{repo.replace('/', '--')}"
    synth.write(base / "snapshots" / commit, tensors, synth.LLAMA_CONFIG)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return commit


def test_hub_id_from_offline_cache(tmp_path):
    commit = _hf_cache(tmp_path / "hf", "tiny-org/tiny-llama", synth.llama(dtype=torch.float32))
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for source in ("tiny-org/tiny-llama", f"tiny-org/tiny-llama@{commit}"):
        proc = cli("analyze", source, "-o", tmp_path / "hub.json", env=env)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((tmp_path / "hub.json").read_text())
        assert doc["source"] == source and len(doc["matrices"]) == 15
    assert cli("analyze", "tiny-org/tiny-llama@nope", env=env).returncode == 1


@pytest.mark.parametrize("columns", [80, 160])
def test_help_reads_like_click_at_any_width(columns):
    """Metavars such as PATH, N, FLOAT, [a|b] and the argument as SOURCE; no Python type placeholders."""
    from click.testing import CliRunner

    from alphaspec.cli import app

    for command in ("analyze", "diff", "plot", "report", "decay-map", "train", "compare"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": str(columns)}).output
        for placeholder in ("<bool>", "<str>", "<int", "<float", "<path>", "<list", "{source}", "range>", "INTEGER",
                            "RANGE", "FILENAME", "DIRECTORY"):
            assert placeholder not in text, (command, placeholder)
        assert max(map(len, text.splitlines())) <= columns, command
        assert "Arguments:" in text or command == "train", command  # each argument says what it takes
        assert re.search(r"-q, --quiet\s+Print only", text), command  # every command's -q says what it does
    text = " ".join(CliRunner().invoke(app, ["decay-map", "--help"], env={"COLUMNS": "160"}).output.split())
    for shown in ("decay-map [OPTIONS] SOURCE", "-o, --output PATH", "--weight-decay FLOAT", "x>=0.0]",
                  "--ratio S1 S2", "--assign [linear|sqrt|log2|sigmoid]", "--include REGEX", "--device DEVICE"):
        assert shown in text, shown
    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "160"}).output.split())
    assert "--steps N" in text and "--optimizer [adamw|adam|muon]" in text and "--lr FLOAT" in text


def test_examples_fit_80_columns_unwrapped():
    """Every example line of every command's --help shows whole at 80 columns, copyable as written."""
    from click.testing import CliRunner

    from alphaspec.cli import app

    for name, command in app.commands.items():
        code = [line.strip() for line in (command.epilog or "").splitlines() if line.startswith("    ")]
        assert code, f"{name} --help has no examples"
        text = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"}).output
        shown = {line.strip() for line in text.splitlines()}
        for line in code:
            assert line in shown, (name, line)


def test_help_has_examples():
    proc = cli("analyze", "--help")
    assert proc.returncode == 0 and "Examples" in proc.stdout and "example:minilm" in proc.stdout
    assert cli("--version").stdout.startswith("alphaspec ")
    for command, example in (("train", "torchrun"), ("compare", "--plot"), ("decay-map", "--preserve-mean")):
        proc = cli(command, "--help")
        assert proc.returncode == 0 and "Examples" in proc.stdout and example in proc.stdout, command
    listed = cli("--help").stdout
    assert [c for c in ("analyze", "plot", "decay-map", "train", "compare") if c in listed] == \
        ["analyze", "plot", "decay-map", "train", "compare"]


def test_plot_from_results_file_without_recomputing(llama_dir, tmp_path):
    assert in_process("analyze", llama_dir, "-q", "-o", tmp_path / "r.json", "--save-spectra", tmp_path / "r.npz").returncode == 0
    # the checkpoint is gone: the figures must come from the files alone
    proc = in_process("plot", tmp_path / "r.json", "-o", tmp_path / "figs", "--format", "svg")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["alpha-depth.svg", "alpha-modules.svg", "spectra.svg"]
    proc = in_process("plot", tmp_path / "r.json", "-o", tmp_path / "esd", "--module", "layers.1.mlp.down", "--format", "svg")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "esd").iterdir()] == ["esd-model.layers.1.mlp.down_proj.weight.svg"]
    (tmp_path / "r.npz").unlink()
    missing = in_process("plot", tmp_path / "r.json", "-o", tmp_path / "figs2", "--kind", "spectra")
    assert_one_line_error(missing, "--save-spectra")
    assert in_process("plot", tmp_path / "r.json", "-o", tmp_path / "figs3", "--kind", "alpha-depth").returncode == 0
    decay = in_process("plot", tmp_path / "r.json", "-o", tmp_path / "figs4", "--decay-map", tmp_path / "nope.json")
    assert_one_line_error(decay, "nope.json")


def test_plot_decay_without_a_map_says_it_draws_the_default(llama_dir, tmp_path):
    assert in_process("analyze", llama_dir, "-q", "-o", tmp_path / "r.json").returncode == 0
    proc = in_process("plot", tmp_path / "r.json", "-o", tmp_path / "figs", "--kind", "decay")
    assert proc.returncode == 0, proc.stderr
    assert "the default map (linear, w = 0.1)" in proc.stdout
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["decay.png"]


def test_analyze_plots_option(llama_dir, tmp_path):
    proc = in_process("analyze", llama_dir, "--plots", tmp_path / "figs")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["alpha-depth.png", "alpha-modules.png", "spectra.png"]


def test_an_existing_output_is_replaced_only_by_a_finished_result(llama_dir, tmp_path):
    """As the README says: -o FILE replaces FILE, but only when the work succeeded; a failed command leaves it."""
    out = tmp_path / "r.csv"
    out.write_text("my earlier table\n")
    proc = cli("analyze", tmp_path / "missing-model", "-o", out)
    assert proc.returncode == 1 and out.read_text() == "my earlier table\n"
    proc = cli("analyze", llama_dir, "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_csv(out)["name"]) == list(analyze_checkpoint(llama_dir, device="cpu").table["name"])
