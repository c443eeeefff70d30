"""What the eigenvalue store saves: the first command on a checkpoint solves and keeps each spectrum, a second
(another estimator, a map, a figure, a report) re-fits from the store.

    python bench/store.py [SOURCE] [--repeat 3]

Each measurement runs in a fresh process (as a second command does) against a store of its own: the time of
the analysis itself (`analyze_checkpoint`, not the Python and torch start-up every command pays), without the
store, then with it empty (the first command: solving and keeping), then with it filled (a second command,
with another estimator). Also: the cost of keying (BLAKE3 of every matrix as read, or of a GGUF file's
quantised blocks as stored) against the solves it saves, and whole `alphaspec analyze` and `alphaspec map`
commands, cold and warm, wall clock.

Prints the machine, then one line per measurement (the median of --repeat runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

TIMED = """
import sys, time
from alphaspec.analysis.engine import analyze_checkpoint
source, estimator, cache = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
t = time.perf_counter()
analyze_checkpoint(source, estimator, "cpu", cache=cache, workers={workers})
print(time.perf_counter() - t)
"""

KEYING = """
import sys, time
from alphaspec.analysis.solve import plan_checkpoint
from alphaspec.analysis.store import matrix_key
from alphaspec.sources.deltas import open_source
from alphaspec.spectra.eigenvalues import scaled_eigenvalues
ckpt = open_source(sys.argv[1])
solving = 0.0
todo = plan_checkpoint(ckpt, (), (), True)
seconds, as_stored, as_read, unread = 0.0, 0, 0, set()
for name in sorted({m.tensor for m in todo.matrices}):  # keyed as stored (GGUF blocks): never read on a hit
    t = time.perf_counter()
    key = ckpt.stored_key(name)
    seconds += time.perf_counter() - t
    as_stored += key is not None
    if key is None:
        unread.add(name)
for file in ckpt.files:
    for name, tensor in ckpt.read(file, [t.name for t in ckpt.tensors if t.file == file and t.name in unread]):
        for spec in [m for m in todo.matrices if m.tensor == name]:
            m = spec.extract(tensor)
            m.sum()  # page the matrix in (a cost of reading, which keying and solving would otherwise share)
            t = time.perf_counter()
            matrix_key(m)
            seconds += time.perf_counter() - t
            as_read += 1
            if len(sys.argv) > 2:  # the eigen-solve the key saves, one matrix at a time
                t = time.perf_counter()
                scaled_eigenvalues(m.unsqueeze(0), "cpu")
                solving += time.perf_counter() - t
print(seconds, as_stored, as_read, solving)
"""


def child(code: str, *args: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default="example:minilm")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}")
    print(f"source: {args.source}; analysis time in a fresh process, median of {args.repeat}, {workers} workers")
    timed = TIMED.format(workers=workers)
    with tempfile.TemporaryDirectory() as tmp:
        env = os.environ | {"ALPHASPEC_CACHE": tmp}
        env.pop("ALPHASPEC_NO_CACHE", None)

        def median(estimator: str, cache: bool, clear: bool) -> float:
            runs = []
            for _ in range(args.repeat):
                if clear:
                    subprocess.run([sys.executable, "-m", "alphaspec", "cache", "clear"], env=env, check=True,
                                   capture_output=True)
                runs.append(float(child(timed, args.source, estimator, "1" if cache else "0", env=env)))
            return statistics.median(runs)

        plain = median("median", False, False)
        first = median("median", True, True)
        child(timed, args.source, "median", "1", env=env)  # fill the store
        second = median("gof", True, False)
        print(f"  without the store            {plain:7.3f} s")
        print(f"  first command (solve, keep)  {first:7.3f} s  ({first / plain - 1:+.1%} for keying and keeping)")
        print(f"  second command, -e gof       {second:7.3f} s  ({plain / second:.1f}x faster than without)")
        runs = [list(map(float, child(KEYING, args.source, "solve", env=env).split())) for _ in range(args.repeat)]
        seconds, as_stored, as_read, solving = (statistics.median(r[i] for r in runs) for i in range(4))
        against = f", {seconds / solving:.1%} of their eigen-solves ({solving:.3f} s)" if as_read else ""
        print(f"  keying: {seconds:.3f} s, {seconds / plain:.1%} of the analysis without the store{against} "
              f"({as_stored:.0f} tensors keyed as stored, {as_read:.0f} matrices as read)")
        for what in (["analyze", args.source, "-q"], ["map", "sparsity", args.source, "-q", "-o", f"{tmp}/s.json"]):
            walls = []
            for clear in (True, False):
                if clear:
                    subprocess.run([sys.executable, "-m", "alphaspec", "cache", "clear"], env=env, check=True,
                                   capture_output=True)
                t = time.perf_counter()
                subprocess.run([sys.executable, "-m", "alphaspec", *what], env=env, check=True, capture_output=True)
                walls.append(time.perf_counter() - t)
            print(f"  alphaspec {what[0]:<8} wall clock: cold {walls[0]:.2f} s, warm {walls[1]:.2f} s")


if __name__ == "__main__":
    main()
