"""analyze split over the ranks of a torchrun job: the split, and real 2-process gloo jobs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth
from safetensors.torch import save_file

import alphaspec
from alphaspec import analyze_checkpoint
from alphaspec.analysis.sharded import JobProgress, share
from alphaspec.distributed import solve_cost, split_by_cost
from alphaspec.sources.checkpoint import TensorInfo
from alphaspec.sources.matrices import plan

DRIVER = Path(__file__).with_name("torchrun_driver.py")
CONFIG = {"model_type": "llama", "num_attention_heads": synth.HEADS, "num_key_value_heads": 2, "hidden_size": synth.D}


def test_split_by_cost_covers_every_name_once_and_balances():
    costs = {f"t{i}": c for i, c in enumerate([90, 70, 50, 40, 40, 30, 20, 10, 5, 5])}
    shares = split_by_cost(costs, 3)
    assert sorted(n for s in shares for n in s) == sorted(costs)
    loads = [sum(costs[n] for n in s) for s in shares]
    assert max(loads) - min(loads) <= max(costs.values())  # greedy bound: never worse than one item
    assert split_by_cost(dict(reversed(costs.items())), 3) == shares  # order-free: every rank agrees
    assert solve_cost(10, 4) == solve_cost(4, 10) == 4 * 4 * 10 + 4**3


def test_share_keeps_the_parts_of_a_fused_tensor_together():
    infos = [TensorInfo(n, tuple(t.shape), "float32", Path("m.safetensors")) for n, t in synth.phi3(layers=3).items()]
    matrices = plan(infos, {"model_type": "phi3", "num_attention_heads": synth.HEADS, "num_key_value_heads": 2,
                            "hidden_size": synth.D}).matrices
    shares = [share(matrices, r, 2) for r in range(2)]
    assert sorted(id(m) for s in shares for m in s) == sorted(id(m) for m in matrices)
    tensors = [{m.tensor for m in s} for s in shares]
    assert not tensors[0] & tensors[1] and all(tensors)


def sharded_model(folder: Path, files: int = 3) -> Path:
    tensors = synth.llama(layers=4, dtype=__import__("torch").float32)
    names, weight_map = sorted(tensors), {}
    folder.mkdir()
    for i in range(files):
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in names[i::files]}, str(folder / name))
        weight_map |= {n: name for n in names[i::files]}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return folder


def torchrun(tmp_path: Path, fail_rank: int, *args: str, command: str = "analyze") -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(DRIVER),
           str(tmp_path), str(fail_rank), command, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_ranks_give_one_process_table_each_reading_only_its_tensors(tmp_path):
    model = sharded_model(tmp_path / "model")
    res = torchrun(tmp_path, -1, str(model), "-o", str(tmp_path / "out.json"), "--save-spectra",
                   str(tmp_path / "s.npz"), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    single = analyze_checkpoint(model, device="cpu", keep_spectra=True)
    got = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["matrices"])
    want = single.table
    assert list(got["name"]) == list(want["name"])  # same rows in the same order
    numeric = [c for c in want.columns if pd.api.types.is_float_dtype(want[c])]
    np.testing.assert_allclose(got[numeric].to_numpy(float), want[numeric].to_numpy(float), rtol=0, atol=1e-12)
    with np.load(tmp_path / "s.npz") as spectra:
        assert set(spectra.files) == set(single.spectra)
        for name, eigs in single.spectra.items():
            np.testing.assert_allclose(spectra[name], eigs, rtol=0, atol=1e-12)
    reads = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    read = [{name for _, names in rank for name in names} for rank in reads]
    assert not read[0] & read[1] and read[0] | read[1] == set(want["tensor"])  # each tensor read once in the job
    index = json.loads((model / "model.safetensors.index.json").read_text())["weight_map"]
    for rank in reads:
        assert all(names and {Path(file).name} == {index[n] for n in names} for file, names in rank)


def test_a_failing_rank_fails_the_job_with_its_error_and_writes_nothing(tmp_path):
    model = sharded_model(tmp_path / "model")
    res = torchrun(tmp_path, 1, str(model), "-o", str(tmp_path / "out.json"))
    assert res.returncode != 0
    errors = sorted(line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:"))
    assert len(errors) == 2, errors  # one line from each rank, saying what happened there
    assert errors[0].startswith("error: rank 0: stopped, rank 1 failed: ") and "injected read failure" in errors[0]
    assert errors[1].startswith("error: rank 1: ") and "injected read failure" in errors[1], errors
    text = res.stdout + res.stderr
    if "Traceback" in text:  # torchrun's own report of a failed job; no rank printed one
        report = text[text.index("Traceback"):]
        package = str(Path(alphaspec.__file__).parent) + os.sep  # not the checkout, which may be called alphaspec too
        assert text.count("Traceback") == 1 and "ChildFailedError" in report and package not in report
    assert not (tmp_path / "out.json").exists()


def test_python_api_under_torchrun_every_rank_gets_the_table_and_rank_0_sees_the_whole_job(tmp_path):
    model = sharded_model(tmp_path / "model")
    res = torchrun(tmp_path, -1, str(model), command="api")
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"api{r}.json").read_text()) for r in range(2)]
    want = list(analyze_checkpoint(model, device="cpu").table["name"])
    assert ranks[0]["names"] == ranks[1]["names"] == want
    total = len(want)
    assert ranks[0]["progress"][0] == [0, total] and ranks[0]["progress"][-1] == [total, total]
    assert all(b[0] >= a[0] for a, b in zip(ranks[0]["progress"], ranks[0]["progress"][1:], strict=False))
    assert ranks[1]["progress"] == []  # only rank 0 reports
    assert ranks[0]["ranks_in_store"] == ranks[1]["ranks_in_store"] == 2  # the counter the bar reads is the job's


def test_job_progress_reports_what_every_rank_added_to_the_store(monkeypatch):
    class Store:  # the part of c10d's store API that JobProgress uses: an atomic add that returns the sum
        def __init__(self):
            self.values = {}

        def add(self, key, n):
            self.values[key] = self.values.get(key, 0) + n
            return self.values[key]

    monkeypatch.setattr("alphaspec.analysis.sharded.POLL_SECONDS", 0.01)
    seen = []
    board = JobProgress(0, lambda done, total: seen.append((done, total)))
    board.store = other = Store()
    board.start(10)
    board.add(3)  # this rank
    other.add(board.key, 4)  # another rank, through the shared store
    deadline = time.monotonic() + 5
    while (7, 10) not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    board.stop(finished=True)
    assert seen[0] == (0, 10) and (7, 10) in seen and seen[-1] == (10, 10)


def test_more_ranks_than_tensors_and_a_failure_every_rank_shares(tmp_path):
    """A rank with nothing to do still joins the gather; a missing source fails all ranks alike: rank 0's
    line is the plain one a single process prints, each other rank's the same with its rank; exit status 1."""
    one = tmp_path / "one"
    one.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": synth.rand(48, 32)}, str(one / "model.safetensors"))
    res = torchrun(tmp_path, -1, str(one), "-o", str(tmp_path / "one.csv"), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert pd.read_csv(tmp_path / "one.csv")["name"].tolist() == ["model.layers.0.mlp.up_proj.weight"]
    res = torchrun(tmp_path, -1, str(tmp_path / "missing"), "-o", str(tmp_path / "r.csv"))
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    line = f"{tmp_path / 'missing'}: no such file or directory"
    assert res.returncode != 0 and sorted(errors) == sorted([f"error: rank 1: {line}", f"error: {line}"]), errors


def test_many_sources_under_torchrun_share_each_source_and_equal_one_process(tmp_path):
    """analyze A B C under torchrun: every rank takes part in each source (its matrices split by cost), rank 0
    writes one long table equal to a single process's; a missing source is named and the others go on."""
    from alphaspec.analysis.many import analyze_many

    models = [sharded_model(tmp_path / f"checkpoint-{i}00", files=2) for i in (1, 2)]
    res = torchrun(tmp_path, -1, *map(str, models), str(tmp_path / "missing"), "-o", str(tmp_path / "long.csv"), "-q")
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"{tmp_path / 'missing'}: no such file or directory" in res.stderr + res.stdout
    table = pd.read_csv(tmp_path / "long.csv")
    one = analyze_many(models, device="cpu", cache=False).table
    assert list(table["source"]) == list(one["source"]) and list(table["step"]) == list(one["step"]) == \
        [100] * (len(one) // 2) + [200] * (len(one) // 2)
    for column in ("alpha", "spectral_norm", "log_alpha_norm"):
        assert table[column].to_numpy() == pytest.approx(one[column].to_numpy(float), rel=1e-9, nan_ok=True)
    for rank in (0, 1):  # each rank read its share of every source
        read = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert {Path(file).parent.name for file, _ in read} == {m.name for m in models}, rank
