"""What `train` reports besides its CSV logs: TensorBoard and W&B (read back with their own readers, against
the CSV logs), the console's pace and refresh lines, and the warnings and errors around them."""

from __future__ import annotations

import csv
import glob
import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_train_run import SMALL, text  # noqa: F401 - text is a fixture

from alphaspec.cli import app


def argv(out, text, *more):  # noqa: F811
    options = {**SMALL, "steps": 6, "log_every": 2, "eval_every": 6, "checkpoint_every": 6}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return ["train", "--out", str(out), "--data", text, *flags, "--strategy", "alphadecay", "--gap", "2",
            "--no-overlap", *more]


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def means_by_step(path, column: str, module: str) -> dict[int, float]:
    """The CSV log's mean of `column` over the matrices of `module`, per step (computed here, independently)."""
    values = defaultdict(list)
    for row in csv_rows(path):
        if row["module"] == module:
            values[int(row["step"])].append(float(row[column]))
    return {step: sum(v) / len(v) for step, v in values.items()}


def test_tensorboard_event_files_hold_the_losses_decays_and_alphas(tmp_path, text):  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--report-to", "tensorboard"), env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    metrics = csv_rows(tmp_path / "r" / "metrics.csv")
    assert scalars["train/loss"] == pytest.approx({int(r["step"]): float(r["loss"]) for r in metrics}, rel=1e-6)
    assert scalars["train/tokens_per_s"].keys() == scalars["train/lr"].keys() == {2, 4, 6}
    assert scalars["eval/loss"] == pytest.approx({6: float(metrics[-1]["eval_loss"])}, rel=1e-6)
    for module in ("att.q", "mlp.down"):
        assert scalars[f"weight_decay/{module}"] == pytest.approx(
            means_by_step(tmp_path / "r" / "decay.csv", "weight_decay", module), rel=1e-6)
        assert scalars[f"alpha/{module}"] == pytest.approx(
            means_by_step(tmp_path / "r" / "alphas.csv", "alpha", module), rel=1e-6)


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline W&B run, read from its .wandb file once W&B's own process has written
    its exit record (wandb.finish hands the file to that process, which may still be writing)."""
    import time

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    deadline = time.monotonic() + 30
    while True:
        kinds, rows = wandb_records(Path(path))
        if "exit" in kinds or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def wandb_records(path: Path) -> tuple[set[str], list[dict]]:
    """The record kinds and the history rows of a .wandb file: a ':W&B' header, then LevelDB-log records
    (crc32, length, type; FULL/FIRST/MIDDLE/LAST) in 32 KiB blocks, each a wandb Record protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending, rows, kinds = path.read_bytes(), 7, b"", [], set()
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer / padding
            pos += left
            continue
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            kinds.add(record.WhichOneof("record_type"))
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return kinds, rows


def test_wandb_offline_run_holds_them_too(tmp_path, text, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key: offline
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--report-to", "wandb"), env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert f"W&B: logging offline into {tmp_path / 'r' / 'wandb'}" in res.output
    history = defaultdict(dict)
    for row in wandb_history(tmp_path / "r"):
        history[row["_step"]].update(row)
    metrics = csv_rows(tmp_path / "r" / "metrics.csv")
    assert {s: h["train/loss"] for s, h in history.items() if "train/loss" in h} == pytest.approx(
        {int(r["step"]): float(r["loss"]) for r in metrics}, rel=1e-9)
    assert {s: h["weight_decay/att.q"] for s, h in history.items() if "weight_decay/att.q" in h} == pytest.approx(
        means_by_step(tmp_path / "r" / "decay.csv", "weight_decay", "att.q"), rel=1e-9)


def test_console_lines_show_pace_and_refreshes(tmp_path, text):  # noqa: F811
    """Plain lines (not a terminal) with ms/step, elapsed time and ETA; a line per refresh; the banner names
    the optimizer (a Muon run's did not)."""
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--optimizer", "muon"), env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    logged = [line for line in lines if line.startswith("step 4/6 |")]
    assert len(logged) == 1 and " ms/step | 0:00:" in logged[0] and " elapsed, eta 0:00:" in logged[0], lines
    refreshed = [line for line in lines if "alphadecay refreshed" in line]
    assert [line.split(":")[0] for line in refreshed] == ["step 2", "step 4", "step 6"], lines
    assert " · muon · alphadecay · " in next(line for line in lines if line.startswith("alphaspec "))


def test_a_warmup_longer_than_the_run_is_warned(tmp_path, text):  # noqa: F811
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--warmup-steps", "12"), env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "warning: --warmup-steps 12 is longer than --steps 6: the learning rate stops at 50% of --lr" in res.output


def test_a_missing_writer_is_one_line_before_anything_starts(tmp_path, text, monkeypatch):  # noqa: F811
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--report-to", "tensorboard"))
    assert res.exit_code == 1 and not (tmp_path / "r").exists()  # the environment lacks it: not a usage error
    assert res.output.strip() == ("error: --report-to tensorboard needs the tensorboard package: "
                                  "pip install 'alphaspec[tensorboard]'")
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--report-to", "mlflow"))
    assert res.exit_code == 2 and "mlflow" in res.output and "tensorboard" in res.output


def test_a_writer_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path, text, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "sideways")  # a mode W&B refuses
    res = CliRunner().invoke(app, argv(tmp_path / "r", text, "--report-to", "wandb"))
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and "Traceback" not in res.output and not (tmp_path / "r").exists()
    assert len(lines) == 1 and lines[0].startswith("error: --report-to wandb: cannot start it ("), lines


def test_analyze_help_says_what_include_does_for_analyze():
    """`analyze --help` showed decay-map's text under --include."""
    res = CliRunner().invoke(app, ["analyze", "--help"], env={"COLUMNS": "200"})
    shown = " ".join(res.output.split())
    assert res.exit_code == 0 and "Only the tensors whose name matches" in shown
    assert "decay-map" not in shown and "instead of the" not in shown
    res = CliRunner().invoke(app, ["decay-map", "--help"], env={"COLUMNS": "200"})
    assert "Tune the tensors whose name matches instead of the" in " ".join(res.output.split())


def test_the_plain_line_shows_mfu_on_a_known_gpu():
    """MFU = tokens/s x model FLOPs per token / the GPU's peak (its dense bf16 figure), from what `train` hands
    the console at start; none on a CPU or an unknown GPU."""
    from alphaspec.cli.train import Report

    info = {"config": {"steps": 100, "model": "tiny", "optimizer": "adamw", "strategy": "uniform", "batch_size": 8,
                       "seq_len": 128, "out": "r"}, "start_step": 0, "alphaspec": "x", "parameters": 1e6,
            "device": "cuda:0", "world_size": 1, "precision": "bf16", "peak_flops": 989e12, "flops_per_token": 6e9}
    report = Report(quiet=True, plain=True)
    report.start(info)
    pace = report.pace({"step": 10, "tokens_per_s": 50_000.0})
    assert "MFU 30%" in pace  # 5e4 x 6e9 / 9.89e14 = 0.303
    report.start(info | {"peak_flops": None, "flops_per_token": 6e9})
    assert "MFU" not in report.pace({"step": 10, "tokens_per_s": 50_000.0})
