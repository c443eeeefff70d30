"""`analyze --dry-run`: the matrices an analysis would solve (the same rows, shapes and skips as the analysis),
read from the headers alone, with an estimate of time and memory; any size answers in seconds."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pandas as pd
import pytest
import synth
import torch

from alphaspec.analysis.dry_run import EIGH_FLOPS, dry_run, matrix_cost
from alphaspec.analysis.engine import analyze_checkpoint
from alphaspec.analysis.options import AnalysisOptions
from alphaspec.sources.checkpoint import Checkpoint
from alphaspec.sources.deltas import open_source


def cli(*args):
    return subprocess.run([sys.executable, "-m", "alphaspec", *map(str, args)], capture_output=True, text=True,
                          env=os.environ | {"COLUMNS": "80"}, timeout=300)


def test_the_plan_is_the_analysis_without_the_solves(tmp_path, monkeypatch):
    config = {"model_type": "phi3", "hidden_size": synth.D, "num_attention_heads": 4, "num_key_value_heads": 2}
    folder = synth.write(tmp_path / "m", synth.phi3() | {"extra.int": torch.arange(4)}, config)
    analysis = analyze_checkpoint(folder, "median", "cpu", cache=False)

    def no_reading(*args, **kwargs):
        raise AssertionError("a dry run read a tensor")

    monkeypatch.setattr(Checkpoint, "read", no_reading)
    plan = dry_run(open_source(folder), AnalysisOptions(), torch.device("cpu"), rate=1e9)
    assert list(plan.table["name"]) == list(analysis.table["name"])  # the same order, fused parts split alike
    assert (plan.table[["rows", "cols"]].to_numpy() == analysis.table[["rows", "cols"]].to_numpy()).all()
    assert [(s.name, s.reason) for s in plan.skipped] == [(s.name, s.reason) for s in analysis.skipped]
    fused = plan.table[plan.table["part"] != ""]
    assert len(fused) and set(fused["tensor"]) <= {t for t in plan.table["tensor"] if "qkv" in t or "gate_up" in t}
    # the estimate: every matrix's Gram product and eigen-solve at the given rate, plus a fixed cost per matrix
    flops = sum(2 * r * c * min(r, c) + EIGH_FLOPS * min(r, c) ** 3 for r, c in zip(plan.table["rows"],
                                                                                  plan.table["cols"], strict=True))
    assert plan.seconds == pytest.approx(flops / 1e9 + 0.004 * len(plan.table))
    assert matrix_cost(10, 4) == 2 * 10 * 4 * 4 + EIGH_FLOPS * 64
    assert 0 < plan.summary()["share"].sum() == pytest.approx(1.0)


def sparse_checkpoint(folder, layers: int = 40, hidden: int = 5120, ffn: int = 13824, per_shard: int = 5):
    """A Llama-13B-shaped checkpoint in shards: real safetensors headers over holes (26 GB that take no disk)."""
    folder.mkdir()
    index = {"metadata": {}, "weight_map": {}}
    for k in range(0, layers, per_shard):
        shapes = {}
        for i in range(k, min(k + per_shard, layers)):
            p = f"model.layers.{i}."
            shapes |= {p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"}
            shapes |= {p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
                       p + "mlp.down_proj.weight": (hidden, ffn), p + "input_layernorm.weight": (hidden,)}
        header, offset = {}, 0
        for name, shape in shapes.items():
            size = 2 * int(torch.Size(shape).numel())
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            index["weight_map"][name] = f"shard-{k}.safetensors"
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / f"shard-{k}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(8 + len(text) + offset)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_a_13b_header_is_planned_in_seconds_and_written_with_o(tmp_path):
    folder = sparse_checkpoint(tmp_path / "big")
    start = time.perf_counter()
    proc = cli("analyze", folder, "--dry-run", "-o", tmp_path / "plan.csv")
    assert proc.returncode == 0, proc.stderr
    assert time.perf_counter() - start < 60
    plan = pd.read_csv(tmp_path / "plan.csv")
    assert len(plan) == 40 * 7 and set(plan["module"]) == {"att.q", "att.k", "att.v", "att.o", "mlp.gate",
                                                           "mlp.up", "mlp.down"}
    text = proc.stdout
    assert "would analyse 280 matrices" in text and "40 tensor(s) would be skipped" in text
    assert "estimate on cpu" in text and "GB held at once" in text
    assert max(map(len, text.splitlines())) <= 80


def test_a_bad_source_is_one_line(tmp_path):
    proc = cli("analyze", tmp_path / "missing", "--dry-run")
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_with_the_store_on_the_estimate_says_kept_spectra_are_not_solved(tmp_path):
    folder = synth.write(tmp_path / "llama", synth.llama(), synth.LLAMA_CONFIG)
    note = "spectra the eigenvalue store holds already are not solved again"
    env = {k: v for k, v in os.environ.items() if k != "ALPHASPEC_NO_CACHE"} | {"COLUMNS": "80",
                                                                              "ALPHASPEC_CACHE": str(tmp_path / "c")}
    on = subprocess.run([sys.executable, "-m", "alphaspec", "analyze", folder, "--dry-run"], capture_output=True,
                        text=True, env=env, timeout=300)
    off = subprocess.run([sys.executable, "-m", "alphaspec", "analyze", folder, "--dry-run", "--no-cache"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert on.returncode == off.returncode == 0, on.stderr + off.stderr
    assert note in " ".join(on.stdout.split()) and note not in " ".join(off.stdout.split())
    assert not (tmp_path / "c").exists()  # a dry run reads headers only: nothing solved, nothing kept
