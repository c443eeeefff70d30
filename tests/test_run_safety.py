"""A training run survives what happens to real runs: SIGKILL at any moment, two trainers on one directory,
a kill before the first checkpoint, half-written files, planted checkpoints; nothing is lost or executed."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from alphaspec.cli import app
from alphaspec.train import RunError, TrainConfig, train
from alphaspec.train.data import bundled_corpus

ARGS = ["--seq-len", "32", "--batch-size", "4", "--vocab-size", "512", "--steps", "12", "--eval-every", "3",
        "--checkpoint-every", "3", "--log-every", "1", "--eval-windows", "4", "--keep-checkpoints", "2", "-q"]
SMALL = dict(vocab_size=512, seq_len=32, batch_size=4, steps=6, eval_every=3, checkpoint_every=3, log_every=1,
             eval_windows=4, keep_checkpoints=3)


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(bundled_corpus()[0].read_text()[:60_000])
    return path


def command(out: Path, text: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alphaspec", "train", "--out", str(out), "--data", str(text), *ARGS, *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(run: Path, ref: Path) -> None:
    """Same steps, losses and evaluations, same final weights (timings aside)."""
    a, b = rows(ref / "metrics.csv"), rows(run / "metrics.csv")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        for col in ("loss", "lr", "grad_norm", "eval_loss"):
            if ra[col]:
                assert float(rb[col]) == pytest.approx(float(ra[col]), rel=1e-5), (col, ra["step"])
            else:
                assert rb[col] == ""
    wa, wb = load_file(ref / "model.safetensors"), load_file(run / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6)


def finish(out: Path, text: Path, kill_after: float | None = None) -> None:
    """Continue a killed run as a user would: --resume once it has recorded its settings, else start it
    again; optionally kill this attempt too (during its start-up)."""
    started = (out / "run.json").exists()
    argv = command(out, text, "--resume") if started else command(out, text)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        time.sleep(kill_after)
        proc.kill()
        proc.communicate()
        return
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 or "already at step 12" in err, err
    assert "Traceback" not in err


# not marked slow: resuming after kills is a gate of the default run (it found a stale final checkpoint)
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, text):
    ref = tmp_path / "ref"
    t0 = time.perf_counter()
    subprocess.run(command(ref, text), check=True, capture_output=True, timeout=300)
    duration = time.perf_counter() - t0
    rng = random.Random(0)
    # moments spread over the whole run: start-up, tokenising, steps, checkpoint writes, the end
    delays = [duration * f for f in (0.15, 0.45, 0.9)] + [rng.uniform(0.3, duration)]
    for trial, delay in enumerate(delays):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(command(out, text), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if trial % 2:
            finish(out, text, kill_after=min(1.5, duration / 3))  # killed again while resuming
        finish(out, text)
        assert_same_run(out, ref)
        assert not [p for p in out.rglob(".*") if "tmp" in p.name]  # no temporaries left behind


@pytest.mark.slow
def test_two_trainers_on_one_out_exactly_one_runs(tmp_path, text):
    out = tmp_path / "run"
    procs = [subprocess.Popen(command(out, text), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "another alphaspec train is using this run directory" in loser and "Traceback" not in loser
    assert [r["step"] for r in rows(out / "metrics.csv")][-1] == "12"


def test_a_held_run_directory_is_refused(tmp_path, text):
    """While one trainer owns RUN/.lock (a stand-in process holds the lock), a second one is refused."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match="another alphaspec train"):
            train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the owner
    finally:
        holder.kill()
        holder.wait()
    train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))  # the lock died with its process


def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_zero(tmp_path, text):
    out = tmp_path / "run"
    train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    ref = tmp_path / "ref"
    train(TrainConfig.of(out=str(ref), data=[str(text)], **SMALL))
    for p in (out / "checkpoints").iterdir():
        p.unlink()  # as if killed at step 2: files written, no checkpoint yet
    with pytest.raises(RunError, match="not empty; pass --resume"):
        train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    warned = []
    train(TrainConfig.of(out=str(out), resume=True), on_warning=warned.append)  # the recorded settings, not these
    assert any("starting it again from step 0" in w for w in warned)
    assert_same_run(out, ref)


def test_orphaned_temporaries_and_a_truncated_newest_checkpoint(tmp_path, text):
    out = tmp_path / "run"
    train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    ref = tmp_path / "ref"
    train(TrainConfig.of(out=str(ref), data=[str(text)], **SMALL))
    newest = out / "checkpoints" / "step_0000006.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a kill while the OS was writing it out
    for orphan in (out / ".metrics.csv.x1.tmp", out / "checkpoints" / ".step_0000009.pt.x2.tmp"):
        orphan.write_bytes(b"half")
    warned = []
    train(TrainConfig.of(out=str(out), resume=True, steps=6), on_warning=warned.append)
    assert any("step_0000006.pt" in w and "step_0000003.pt" in w for w in warned), warned
    assert not list(out.rglob("*.tmp"))
    assert_same_run(out, ref)


def test_a_planted_newest_checkpoint_is_never_unpickled(tmp_path, text):
    out = tmp_path / "run"
    train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch '{marker}'",))

    torch.save({"step": 7, "model": Payload()}, out / "checkpoints" / "step_0000007.pt")
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--steps", "8", "-q"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "step_0000007.pt (holds Python objects other than tensors" in res.output
    assert not marker.exists()
    assert rows(out / "metrics.csv")[-1]["step"] == "8"


def test_a_failed_setup_leaves_the_users_directory_as_it_was(tmp_path, text):
    mine = tmp_path / "mine"
    mine.mkdir()
    res = CliRunner().invoke(app, ["train", "--out", str(mine), "--data", str(text), "--decay-map",
                                   str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and "missing.json" in res.output
    assert mine.is_dir() and list(mine.iterdir()) == []  # still there, still empty
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "new"), "--data", str(text), "--decay-map",
                                   str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and not (tmp_path / "new").exists()  # what the run made, it removes


def test_damaged_logs_on_resume(tmp_path, text):
    """A metrics row cut short is dropped with a warning; an unreadable log is kept aside, never lost."""
    out = tmp_path / "run"
    train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    (out / "checkpoints" / "step_0000006.pt").unlink()
    with open(out / "metrics.csv", "a") as f:
        f.write("7,89")  # a row cut short by a kill
    (out / "alphas.csv").write_bytes(b"\xff\xfe garbage")
    warned = []
    train(TrainConfig.of(out=str(out), resume=True), on_warning=warned.append)
    assert any("metrics.csv: dropped 1 incomplete" in w for w in warned), warned
    assert (out / "alphas.csv.damaged").read_bytes() == b"\xff\xfe garbage"
    assert [r["step"] for r in rows(out / "metrics.csv")] == [str(s) for s in range(1, 7)]
    assert json.loads((out / "run.json").read_text())["config"]["steps"] == 6


def test_a_kill_between_the_last_weights_and_the_last_checkpoint_is_redone(tmp_path, text, monkeypatch):
    """A run stopped while it writes its final step resumes to the uninterrupted result: the final
    model.safetensors is the last step's. (The checkpoint was written before the weights: a kill between the two
    left a run that reads "already at step N" with the weights of the checkpoint before.)"""
    import alphaspec.train.loop as loop

    ref = tmp_path / "ref"
    train(TrainConfig.of(out=str(ref), data=[str(text)], **SMALL))
    out = tmp_path / "run"
    real, calls = loop.save_weights, []

    def killed_at_the_last_save(*args):
        calls.append(1)  # the weights at the start, at step 3, then at step 6, the last
        if len(calls) == 1 + SMALL["steps"] // SMALL["checkpoint_every"]:
            raise KeyboardInterrupt  # the process ends here, as a kill while the last weights are written would
        return real(*args)

    monkeypatch.setattr(loop, "save_weights", killed_at_the_last_save)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.of(out=str(out), data=[str(text)], **SMALL))
    monkeypatch.setattr(loop, "save_weights", real)
    train(TrainConfig.of(out=str(out), resume=True))
    assert_same_run(out, ref)
