"""The GPU runbook rehearsed on the CPU: `GPU_SH_DEVICE=cpu bash bench/gpu.sh PART` runs every part's commands
end to end at toy sizes, from alphaspec installed the way the GPU machine installs it, and leaves in $OUT
what the device call would bring back (at most 8 files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = {  # part -> files its $OUT must hold
    "tests-decay": ["machine.txt", "gpu-tests.log", "decay.log"],
    "esd": ["machine.txt", "esd.log", "esd.json"],
    "esd-more": ["machine.txt", "esd-more.log", "esd-more.json"],
    "ww": ["machine.txt", "ww.log"],
    "train": ["machine.txt", "train.log", "train.json"],
    "train-130m": ["machine.txt", "train-130m.log", "train-130m.json"],
    "scale": ["machine.txt", "esd-405b.json", "precision.log", "torchrun.csv"],
    "study": ["machine.txt", "study.log", "compare-w0.1.csv", "study-runs.tar.gz"],
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the tracked tree (what a fresh clone holds), so the rehearsal writes nothing here."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout")
    dest = tmp_path_factory.mktemp("clone") / "alphaspec"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


LANES = {  # the parts each test rehearses: the first installs; then two lanes by the files they write
    "gate": ["tests-decay", ["esd", "ww", "scale"], ["train"]],
    "more": ["tests-decay", ["esd-more"], ["train-130m", "study"]],
}


def rehearse(checkout: Path, tmp_path: Path, lanes: list) -> dict:
    """Run the parts of `lanes` with GPU_SH_DEVICE=cpu (the first alone: it installs alphaspec into the site the
    others share, as a warm machine would keep it; then two lanes side by side, as two cores allow); each part
    must exit 0 and leave its files."""
    from concurrent.futures import ThreadPoolExecutor

    env = os.environ | {"GPU_SH_DEVICE": "cpu", "GPU_SH_SITE": str(tmp_path / "site"), "PYTHONPATH": ""}

    def run(parts: list[str]) -> list:
        return [(part, subprocess.run(["bash", "bench/gpu.sh", part], cwd=checkout, env=env | {"OUT": str(tmp_path / part)},
                                      capture_output=True, text=True, timeout=600)) for part in parts]

    done = run([lanes[0]])
    with ThreadPoolExecutor(2) as pool:
        for lane in pool.map(run, lanes[1:]):
            done += lane
    for part, res in done:
        expected, out = PARTS[part], tmp_path / part
        assert res.returncode == 0, (part, res.stdout[-3000:], res.stderr[-3000:])
        assert "gpu.sh:" not in res.stdout.replace("gpu.sh ww: skipped", ""), (part, res.stdout[-3000:])
        files = sorted(p.name for p in out.iterdir())
        assert set(expected) <= set(files) and len(files) <= 8, (part, files)  # a device call brings back 8 files
        assert "rehearsal on the CPU" in (out / "machine.txt").read_text()
    return dict(done)


def test_every_part_of_the_runbook_is_rehearsed():
    """The two rehearsals together cover every part of bench/gpu.sh."""
    parts = [p for lanes in LANES.values() for lane in lanes for p in ([lane] if isinstance(lane, str) else lane)]
    assert set(parts) == set(PARTS)


# not marked slow: the rehearsal of the GPU runbook's main parts is a gate of the default run
def test_the_gpu_runbook_runs_on_the_cpu(checkout, tmp_path):
    """The CUDA tests and refresh cost, the 13B-shaped analyze, WeightWatcher (skipped when absent), trainer
    throughput, the scale part (405B estimate, precision, torchrun)."""
    rehearse(checkout, tmp_path, LANES["gate"])
    assert json.loads((tmp_path / "esd" / "esd.json").read_text())["alphaspec_median_s"] > 0
    assert "bare float64 Gram" in (tmp_path / "esd" / "esd.log").read_text()
    train = json.loads((tmp_path / "train" / "train.json").read_text())["results"]
    assert [r["strategy"] for r in train] == ["uniform", "alphadecay", "lrm"]
    assert "passed" in (tmp_path / "tests-decay" / "gpu-tests.log").read_text() or "skipped" in (
        tmp_path / "tests-decay" / "gpu-tests.log").read_text()
    assert (tmp_path / "scale" / "torchrun.csv").read_text().count("\n") == 29  # 28 matrices and the header
    assert not (checkout / "build").exists() and not (checkout / "alphaspec.egg-info").exists()


@pytest.mark.slow
def test_the_rest_of_the_gpu_runbook_runs_on_the_cpu(checkout, tmp_path):
    """The further analyze shapes, the 130M trainer and the study (tokenize, runs, compare)."""
    rehearse(checkout, tmp_path, LANES["more"])
    assert (tmp_path / "study" / "compare-w0.1.csv").read_text().count("\n") >= 2


def test_a_part_that_does_not_exist_is_a_usage_error(checkout, tmp_path):
    res = subprocess.run(["bash", "bench/gpu.sh", "nope"], cwd=checkout, capture_output=True, text=True,
                         env=os.environ | {"GPU_SH_DEVICE": "cpu", "OUT": str(tmp_path / "o"),
                                           "GPU_SH_SITE": str(tmp_path / "site")}, timeout=300)
    assert res.returncode == 2 and "usage: [GPU_SH_DEVICE=cpu] bash bench/gpu.sh" in res.stderr
