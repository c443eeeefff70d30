"""Progress where there is no terminal (nohup, SLURM, CI): plain lines on stderr, the first, at most one every
PLAIN_EVERY seconds, and the last; none with -q. On a terminal the bar (not tested here: rich draws it)."""

from __future__ import annotations

import re

import pytest
import synth
from rich.console import Console

from alphaspec.cli import progress as progress_module
from alphaspec.cli.progress import PlainLines


def test_plain_lines_come_first_then_every_ten_seconds_then_last(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    lines = PlainLines(Console(stderr=True), "analysing", "matrices")
    for done, at in ((0, 100.0), (1, 101.0), (2, 105.0), (3, 110.5), (4, 115.0), (5, 121.0), (9, 122.0),
                     (10, 123.0), (10, 124.0)):
        now[0] = at
        lines(done, 10)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in err] == ["analysing 0/10 matrices (0%)", "analysing 3/10 matrices (30%)",
                                                      "analysing 5/10 matrices (50%)", "analysing 10/10 matrices (100%)"]
    assert err[1].endswith("0:00:10 elapsed, eta 0:00:24")  # 3 in 10.5 s: 0.29/s, 7 left
    assert "0.3 matrices/s" in err[1] and "eta" not in err[-1]


def cli(*args, env=None):
    """The command in this process (click's runner: no interpreter and torch start-up per call)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from alphaspec.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100", **(env or {})})
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return synth.write(tmp_path_factory.mktemp("llama"), synth.llama(), synth.LLAMA_CONFIG)


def test_commands_print_progress_lines_without_a_terminal(llama_dir, tmp_path):
    for args, label in ((["analyze", llama_dir, "-o", tmp_path / "r.csv"], "analysing"),
                        (["diff", llama_dir, llama_dir], "comparing"),
                        (["map", "lr", llama_dir, "-o", tmp_path / "lr.json"], "analysing"),
                        (["report", llama_dir, "-o", tmp_path / "r.html"], "analysing")):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith(label)]
        assert re.match(rf"{label} 0/\d+ matrices \(0%\)", lines[0]) and "(100%)" in lines[-1], (args, proc.stderr)
        quiet = cli(*args, "-q")
        assert quiet.returncode == 0 and label not in quiet.stderr, args
