"""One home for every training setting: each option's default is written once, in TrainConfig, and is the
same in `alphaspec train --help` and in run.json of a run started without that option."""

import json
import sys
from dataclasses import MISSING, fields

import pytest
import typer
from typer.testing import CliRunner

from alphaspec.cli import app
from alphaspec.train.config import SECTIONS, TrainConfig, default_gap
from alphaspec.train.data import bundled_corpus

CLI_FIELDS = [f for f in fields(TrainConfig) if f.metadata["cli"]]
GIVEN = {"out", "data", "steps", "vocab_size", "seq_len", "batch_size", "eval_every", "eval_windows"}  # set below
DERIVED = {"strategy": "uniform", "gap": default_gap(2)}  # None in the dataclass: filled from other settings


def default_of(f):
    return [] if f.default is MISSING else f.default


def test_the_options_are_the_fields_with_their_defaults_and_sections():
    command = typer.main.get_command(app).commands["train"]
    params = {p.name: p for p in command.params}
    assert set(params) - {"help"} == {f.name for f in CLI_FIELDS} | {"quiet"}
    for f in CLI_FIELDS:
        p = params[f.name]
        if f.name == "out":
            assert p.required
            continue
        want = default_of(f)
        got = [] if p.default is None and want == [] else p.default
        assert (list(got) if isinstance(got, tuple) else got) == (list(want) if isinstance(want, tuple) else want), f.name
        assert p.rich_help_panel == f.metadata["section"] in SECTIONS
    res = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert [s for s in SECTIONS if f"─ {s} " in res.output] == list(SECTIONS)  # --help grouped by section


@pytest.mark.slow
def test_run_json_holds_the_defaults_of_options_not_given(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(bundled_corpus()[0].read_text()[:20_000])
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(text), "--steps", "2",
                                   "--vocab-size", "256", "--seq-len", "16", "--batch-size", "2", "--eval-every", "1",
                                   "--eval-windows", "2", "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    for f in CLI_FIELDS:
        if f.name in GIVEN:
            continue
        want = DERIVED.get(f.name, default_of(f))
        got = saved[f.name]
        assert got == (list(want) if isinstance(want, tuple) else want), f.name


def test_the_config_module_needs_no_torch():
    import subprocess

    code = "import sys, alphaspec.train.config, alphaspec.compare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
