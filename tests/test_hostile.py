"""Files a user did not make, and options that would ruin a run: every case ends in exactly one `error:` line
with the right exit status, no traceback, nothing of the user's changed, and nothing executed.

Each case builds its inputs in its own directory, snapshots that directory, runs the command in-process
and compares the snapshot afterwards. A pickle payload would create the file PWNED.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from alphaspec.cli import app
from alphaspec.train import TrainConfig, train
from alphaspec.train.data import bundled_corpus

TRAIN = ["--seq-len", "32", "--batch-size", "4", "--vocab-size", "512", "--steps", "4", "--warmup-steps", "1",
         "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "1", "--eval-windows", "4", "-q"]


class Payload:
    """Unpickling this runs `touch PWNED` in the working directory: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A model, its results and spectra, a decay map and a short training run, made once."""
    root = tmp_path_factory.mktemp("hostile-base")
    synth.write(root / "model", synth.llama(), synth.LLAMA_CONFIG)
    res = CliRunner().invoke(app, ["analyze", str(root / "model"), "-o", str(root / "results.json"), "--save-spectra",
                                   str(root / "results.npz"), "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["decay-map", str(root / "results.json"), "-o", str(root / "wd.json"), "-q"])
    assert res.exit_code == 0, res.output
    (root / "text.txt").write_text(bundled_corpus()[0].read_text()[:60_000])
    train(TrainConfig.of(out=str(root / "run"), data=[str(root / "text.txt")], vocab_size=512, seq_len=32, batch_size=4,
                      steps=4, warmup_steps=1, eval_every=2, checkpoint_every=2, log_every=1, eval_windows=4, keep_checkpoints=3))
    return root


def copy(base: Path, d: Path, name: str) -> Path:
    src, dst = base / name, d / name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    return dst


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def noise(n: int) -> bytes:
    """The same random bytes on every run."""
    return np.random.default_rng(n).bytes(n)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def loop(path: Path) -> Path:
    os.symlink(path.name, path)  # a link to itself
    return path


def edit_json(path: Path, change: Callable[[dict], object]) -> Path:
    doc = json.loads(path.read_text())
    out = change(doc)
    path.write_text(json.dumps(doc if out is None else out))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def llama_dir(d: Path, config: dict | None = None, **tensors) -> Path:
    return synth.write(d / "m", tensors or synth.llama(), synth.LLAMA_CONFIG if config is None else config)


def sharded(d: Path, change: Callable[[dict], object]) -> Path:
    """A two-shard model whose index is edited by `change`."""
    t = synth.llama()
    names = sorted(t)
    m = d / "m"
    m.mkdir()
    save_file({k: t[k] for k in names[:10]}, str(m / "a.safetensors"))
    save_file({k: t[k] for k in names[10:]}, str(m / "b.safetensors"))
    index = {"metadata": {}, "weight_map": {k: ("a" if i < 10 else "b") + ".safetensors" for i, k in enumerate(names)}}
    write(m / "model.safetensors.index.json", json.dumps(index))
    (m / "config.json").write_text(json.dumps(synth.LLAMA_CONFIG))
    edit_json(m / "model.safetensors.index.json", change)
    return m


def full_disk(monkeypatch) -> None:
    def replace(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    monkeypatch.setattr("alphaspec.files.os.replace", replace)


@dataclass
class Case:
    id: str
    build: Callable[[Path, Path], list]  # (base, case dir) -> argv
    code: int = 1
    says: tuple[str, ...] = ()  # fragments of the error line
    patch: Callable | None = None
    env: dict = field(default_factory=dict)


def pickled_bin(d: Path) -> Path:
    path = d / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload(d / "PWNED")}, f)
    return path


def planted_checkpoint(base: Path, d: Path) -> Path:
    run = copy(base, d, "run")
    for p in (run / "checkpoints").glob("*.pt"):
        torch.save({"step": 9, "payload": Payload(d / "PWNED")}, p)
    return run


def bad_gpt2_config(d: Path) -> Path:
    return synth.write(d / "m", synth.gpt2(), {"model_type": "gpt2", "n_embd": synth.D, "n_head": "four"})


def map_with(base: Path, d: Path, change: Callable[[dict], object]) -> Path:
    return edit_json(copy(base, d, "wd.json"), change)


def results_with(base: Path, d: Path, frame_change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    table = pd.DataFrame(json.loads((base / "results.json").read_text())["matrices"])
    frame_change(table).to_csv(d / "r.csv", index=False)
    return d / "r.csv"


def dup_names(doc: dict) -> None:
    doc["modules"].append(dict(doc["modules"][0]))


CHECKPOINT_CASES = [  # each is tried with analyze, decay-map and plot
    ("missing", lambda b, d: d / "nope.safetensors", ("nope.safetensors", "no such file")),
    ("link-loop", lambda b, d: loop(d / "x.safetensors"), ("x.safetensors", "link")),
    ("fifo", lambda b, d: fifo(d / "x.safetensors"), ("x.safetensors", "named pipe")),
    ("empty-dir", lambda b, d: (d / "m").mkdir() or d / "m", ("no weights found",)),
    ("truncated", lambda b, d: truncate(copy(b, d, "model") / "model.safetensors", 0.7), ("model.safetensors",)),
    ("random-bytes", lambda b, d: write(d / "x.safetensors", noise(2048)), ("x.safetensors",)),
    ("huge-header", lambda b, d: write(d / "x.safetensors", (10**12).to_bytes(8, "little") + b"{}"), ("x.safetensors",)),
    ("header-not-json", lambda b, d: write(d / "x.safetensors", (8).to_bytes(8, "little") + b"not json"),
     ("x.safetensors",)),
    ("random-bin", lambda b, d: write(d / "x.bin", noise(2048)), ("x.bin", "not a readable PyTorch state dict")),
    ("pickle-payload", lambda b, d: pickled_bin(d), ("evil.bin",)),
    ("pt-holds-list", lambda b, d: torch.save([torch.ones(20, 20)], d / "x.pt") or d / "x.pt", ("x.pt", "list")),
    ("pt-two-state-dicts", lambda b, d: torch.save({"model": synth.llama(), "state_dict": synth.llama()}, d / "x.pt")
     or d / "x.pt", ("x.pt", "several state dicts")),
    ("index-escapes", lambda b, d: sharded(d, lambda i: i["weight_map"].update(x="../../etc/passwd")),
     ("outside the model directory",)),
    ("index-absolute", lambda b, d: sharded(d, lambda i: i["weight_map"].update(x="/etc/passwd")),
     ("outside the model directory",)),
    ("index-map-list", lambda b, d: sharded(d, lambda i: i.update(weight_map=["a.safetensors"])), ("weight_map",)),
    ("index-names-absent", lambda b, d: sharded(d, lambda i: i["weight_map"].update(ghost="a.safetensors")),
     ("not in their shard", "ghost")),
    ("index-corrupt", lambda b, d: write(sharded(d, lambda i: None) / "model.safetensors.index.json", "{"),
     ("index",)),
    ("index-missing-shard", lambda b, d: sharded(d, lambda i: i["weight_map"].update(x="c.safetensors")),
     ("c.safetensors", "missing")),
    ("config-corrupt", lambda b, d: write(llama_dir(d) / "config.json", "{oops") and d / "m", ("config.json",)),
    ("config-list", lambda b, d: write(llama_dir(d) / "config.json", "[1, 2]") and d / "m", ("config.json",)),
    ("config-string-heads", lambda b, d: bad_gpt2_config(d), ("n_head", "four")),
    ("config-model-type-list", lambda b, d: llama_dir(d, {**synth.LLAMA_CONFIG, "model_type": ["llama"]}),
     ("model_type",)),
    ("only-vectors", lambda b, d: synth.write(d / "m", {"a.weight": torch.ones(8), "b.bias": torch.ones(8)}),
     ("no weight matrix",)),
    ("not-a-checkpoint", lambda b, d: write(d / "notes.txt", "hello"), ("notes.txt", "not a checkpoint")),
    ("hub-offline", lambda b, d: "no-such-org/no-such-model", ("no-such-org/no-such-model",)),
    ("unknown-example", lambda b, d: "example:nope", ("unknown example 'nope'",)),
]

COMMANDS = {
    "analyze": lambda src, d: ["analyze", src, "-o", d / "out.csv"],
    "decay-map": lambda src, d: ["decay-map", src, "-o", d / "wd-out.json"],
    "plot": lambda src, d: ["plot", src, "-o", d / "figs"],
}

CASES = [Case(f"{cmd}-{name}", lambda b, d, build=build, argv=argv: argv(build(b, d), d), 1, says,
              env={"HF_HUB_OFFLINE": "1"})
         for name, build, says in CHECKPOINT_CASES for cmd, argv in COMMANDS.items()]

CASES += [
    # outputs: checked before the work, every write failure one line, the previous file intact
    Case("analyze-o-under-a-file", lambda b, d: ["analyze", copy(b, d, "model"), "-o", write(d / "f", "x") / "r.csv"],
         1, ("r.csv", "not a directory")),
    Case("analyze-o-is-a-directory", lambda b, d: ["analyze", copy(b, d, "model"), "-o", (d / "r.csv").mkdir() or d / "r.csv"],
         1, ("r.csv", "is a directory")),
    Case("analyze-o-missing-dir", lambda b, d: ["analyze", copy(b, d, "model"), "-o", d / "no" / "r.csv"], 1,
         ("does not exist",)),
    Case("analyze-precision-unknown", lambda b, d: ["analyze", copy(b, d, "model"), "--precision", "fp16"], 2,
         ("fp16", "fp64", "fp32")),
    Case("analyze-o-unknown-format", lambda b, d: ["analyze", copy(b, d, "model"), "-o", d / "r.txt"], 2, ("r.txt",)),
    Case("analyze-spectra-not-npz", lambda b, d: ["analyze", copy(b, d, "model"), "--save-spectra", d / "s.txt"], 2,
         ("s.txt",)),
    Case("analyze-spectra-under-file", lambda b, d: ["analyze", copy(b, d, "model"), "--save-spectra",
                                                     write(d / "f", "x") / "s.npz"], 1, ("s.npz",)),
    Case("analyze-plots-is-a-file", lambda b, d: ["analyze", copy(b, d, "model"), "--plots", write(d / "figs", "x")], 1,
         ("figs", "not a directory")),
    Case("analyze-disk-full", lambda b, d: ["analyze", copy(b, d, "model"), "-o", write(d / "r.csv", "previous")], 1,
         ("r.csv", "no space left"), patch=full_disk),
    Case("analyze-json-disk-full", lambda b, d: ["analyze", copy(b, d, "model"), "-o", write(d / "r.json", "{}")], 1,
         ("r.json", "no space left"), patch=full_disk),
    Case("decay-map-disk-full", lambda b, d: ["decay-map", copy(b, d, "results.json"), "-o", write(d / "wd.json", "{}")],
         1, ("wd.json", "no space left"), patch=full_disk),
    Case("decay-map-o-under-file", lambda b, d: ["decay-map", copy(b, d, "results.json"), "-o",
                                                 write(d / "f", "x") / "wd.json"], 1, ("wd.json",)),
    Case("decay-map-o-directory", lambda b, d: ["decay-map", copy(b, d, "results.json"), "-o",
                                                (d / "wd.json").mkdir() or d / "wd.json"], 1, ("is a directory",)),
    Case("decay-map-o-not-json", lambda b, d: ["decay-map", copy(b, d, "results.json"), "-o", d / "wd.yaml"], 2,
         ("wd.yaml",)),
    Case("compare-o-under-file", lambda b, d: ["compare", copy(b, d, "run"), "-o", write(d / "f", "x") / "c.csv"], 1,
         ("c.csv",)),
    Case("compare-plot-format", lambda b, d: ["compare", copy(b, d, "run"), "--plot", d / "c.gif"], 2, ("c.gif",)),
    Case("compare-plot-missing-dir", lambda b, d: ["compare", copy(b, d, "run"), "--plot", d / "no" / "c.png"], 1,
         ("does not exist",)),
    Case("compare-disk-full", lambda b, d: ["compare", copy(b, d, "run"), "-o", write(d / "c.csv", "old")], 1,
         ("no space left",), patch=full_disk),
    Case("plot-o-is-a-file", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", write(d / "figs", "x")], 1,
         ("figs", "not a directory")),
    # numbers that would ruin a run or a map: usage errors naming the option
    *[Case(f"train-{'-'.join(a).lstrip('-')}", lambda b, d, a=a: ["train", "--out", d / "r", *a], 2, (a[0],))
      for a in (["--lr", "inf"], ["--lr", "nan"], ["--default-decay", "nan"], ["--default-decay", "-5"],
                ["--ratio", "0.67", "inf"], ["--ratio", "3", "1"], ["--weight-decay", "nan"], ["--lrm-decay", "inf"],
                ["--grad-clip", "nan"], ["--min-lr-ratio", "nan"])],
    *[Case(f"decay-map-{'-'.join(a).lstrip('-')}", lambda b, d, a=a: ["decay-map", copy(b, d, "results.json"), "-o",
                                                                       d / "o.json", *a], 2, (a[0],))
      for a in (["--weight-decay", "inf"], ["--ratio", "0.67", "inf"], ["--default-decay", "nan"])],
    # decay maps a user was handed
    Case("map-default-nan", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                          map_with(b, d, lambda m: m.update(default_weight_decay=float("nan")))],
         1, ("wd.json", "default_weight_decay")),
    Case("map-default-negative", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                               map_with(b, d, lambda m: m.update(default_weight_decay=-1))],
         1, ("wd.json", "default_weight_decay")),
    Case("map-duplicate-names", lambda b, d: ["train", "--out", d / "r", "--decay-map", map_with(b, d, dup_names)],
         1, ("wd.json", "more than once")),
    Case("map-decay-is-text", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                            map_with(b, d, lambda m: m["modules"][0].update(weight_decay="lots"))],
         1, ("wd.json",)),
    Case("map-not-json", lambda b, d: ["train", "--out", d / "r", "--decay-map", write(d / "wd.json", "{nope")], 1,
         ("wd.json", "not valid JSON")),
    Case("map-is-a-list", lambda b, d: ["train", "--out", d / "r", "--decay-map", write(d / "wd.json", "[]")], 1,
         ("wd.json",)),
    Case("map-foreign-schema", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                             map_with(b, d, lambda m: m.update(schema="other/9"))], 1, ("schema",)),
    Case("map-modules-not-list", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                               map_with(b, d, lambda m: m.update(modules={"a": 1}))], 1, ("modules",)),
    Case("map-is-fifo", lambda b, d: ["train", "--out", d / "r", "--decay-map", fifo(d / "wd.json")], 1,
         ("wd.json", "named pipe")),
    Case("map-ratio-text", lambda b, d: ["train", "--out", d / "r", "--decay-map",
                                         map_with(b, d, lambda m: m.update(ratio="wide"))], 1, ("ratio",)),
    Case("plot-map-for-another-model", lambda b, d: ["plot", copy(b, d, "results.json"), "--kind", "decay", "-o",
                                                     d / "f", "--decay-map", map_with(b, d, lambda m: [
                                                         e.update(name=e["name"].replace("layers.1.", "layers.9."))
                                                         for e in m["modules"]] and None)],
         1, ("another model", "layers.9.")),
    Case("plot-map-corrupt", lambda b, d: ["plot", copy(b, d, "results.json"), "--kind", "decay", "-o", d / "f",
                                           "--decay-map", write(d / "wd.json", "{")], 1, ("wd.json",)),
    # results tables and spectra
    Case("results-json-list", lambda b, d: ["plot", write(d / "r.json", "[1, 2]"), "-o", d / "f"], 1, ("r.json",)),
    Case("results-missing-columns", lambda b, d: ["plot", write(d / "r.csv", "a,b\n1,2\n"), "-o", d / "f"], 1,
         ("r.csv", "no column")),
    Case("results-binary-csv", lambda b, d: ["decay-map", write(d / "r.csv", noise(3000)), "-o", d / "o.json"], 1,
         ("r.csv",)),
    Case("results-corrupt-parquet", lambda b, d: ["plot", write(d / "r.parquet", b"PAR1" + noise(100)), "-o",
                                                  d / "f"], 1, ("r.parquet",)),
    Case("results-alpha-text", lambda b, d: ["decay-map", results_with(b, d, lambda t: t.assign(alpha="big")), "-o",
                                             d / "o.json"], 1, ("r.csv", "alpha")),
    Case("spectra-of-strings", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", d / "f", "--spectra",
                                             np.savez(d / "s.npz", a=np.array(["x", "y"])) or d / "s.npz"], 1,
         ("s.npz", "not a 1-D array of numbers")),
    Case("spectra-corrupt", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", d / "f", "--spectra",
                                          write(d / "s.npz", noise(500))], 1, ("s.npz",)),
    Case("spectra-2d", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", d / "f", "--spectra",
                                     np.savez(d / "s.npz", a=np.ones((3, 3))) or d / "s.npz"], 1, ("s.npz",)),
    Case("spectra-pickled-objects", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", d / "f", "--spectra",
                                                  np.savez(d / "s.npz", a=np.array([Payload(d / "PWNED")],
                                                                                   dtype=object)) or d / "s.npz"], 1,
         ("s.npz",)),
    # run directories
    Case("compare-same-run-twice", lambda b, d: ["compare", copy(b, d, "run"), d / "run"], 1, ("given twice",)),
    Case("compare-run-json-corrupt", lambda b, d: ["compare", write(copy(b, d, "run") / "run.json", "{").parent], 1,
         ("run.json", "damaged")),
    Case("compare-run-json-list", lambda b, d: ["compare", write(copy(b, d, "run") / "run.json", "[]").parent], 1,
         ("run.json",)),
    Case("compare-config-without-seed", lambda b, d: ["compare", edit_json(copy(b, d, "run") / "run.json",
                                                                          lambda r: r["config"].__delitem__("seed")).parent], 1,
         ("run.json", "seed")),
    Case("compare-metrics-cut-short", lambda b, d: ["compare", write(copy(b, d, "run") / "metrics.csv",
                                                                     "step,tokens,loss,lr,grad_norm,tokens_per_s,eval_loss,"
                                                                     "eval_ppl\n1,128,5.1,0.001,1.0,900,,\n2,25").parent],
         1, ("metrics.csv", "line 3")),
    Case("compare-metrics-binary", lambda b, d: ["compare", write(copy(b, d, "run") / "metrics.csv",
                                                                  noise(800)).parent], 1, ("metrics.csv",)),
    Case("compare-no-metrics", lambda b, d: ["compare", (copy(b, d, "run") / "metrics.csv").unlink() or d / "run"], 1,
         ("metrics.csv",)),
    Case("compare-weights-corrupt", lambda b, d: ["compare", truncate(copy(b, d, "run") / "model.safetensors",
                                                                      0.001).parent], 1, ("model.safetensors",)),
    Case("compare-a-file", lambda b, d: ["compare", write(d / "notes.txt", "x")], 1, ("notes.txt", "not a run")),
    Case("plot-training-alphas-garbled", lambda b, d: ["plot", write(copy(b, d, "run") / "alphas.csv",
                                                                     "step,name\n1,x\n").parent, "--kind", "training",
                                                       "-o", d / "f"], 1, ("alphas.csv", "no column")),
    Case("plot-training-run-json-corrupt", lambda b, d: ["plot", write(copy(b, d, "run") / "run.json", "nope").parent,
                                                         "--kind", "training", "-o", d / "f"], 1, ("run.json",)),
    Case("analyze-run-weights-truncated", lambda b, d: ["analyze", truncate(copy(b, d, "run") / "model.safetensors",
                                                                            0.5).parent], 1, ("model.safetensors",)),
    Case("resume-tokenizer-corrupt", lambda b, d: ["train", "--out", write(copy(b, d, "run") / "tokenizer.json",
                                                                           "{garbage").parent, "--resume", "--steps",
                                                   "6", "-q"], 1, ("tokenizer.json",)),
    Case("resume-all-checkpoints-truncated", lambda b, d: ["train", "--out", _truncate_all(copy(b, d, "run")),
                                                           "--resume", "--steps", "6", "-q"], 1,
         ("no intact checkpoint", "step_0000004.pt", "step_0000002.pt")),
    Case("resume-planted-pickle", lambda b, d: ["train", "--out", planted_checkpoint(b, d), "--resume", "--steps", "6",
                                                "-q"], 1, ("no intact checkpoint",)),
    Case("resume-tokens-corrupt", lambda b, d: ["train", "--out", write(copy(b, d, "run") / "data" / "tokens.npy",
                                                                        noise(300)).parent.parent, "--resume",
                                                "--steps", "6", "-q"], 1, ("tokens.npy",)),
    Case("resume-data-record-corrupt", lambda b, d: ["train", "--out", write(copy(b, d, "run") / "data" / "cache.json",
                                                                             noise(300)).parent.parent, "--resume",
                                                     "--steps", "6", "-q"], 1, ("cache.json", "damaged")),
    Case("resume-token-cache-gone", lambda b, d: ["train", "--out", _point_at(copy(b, d, "run"), d / "gone"), "--resume",
                                                  "--steps", "6", "-q"], 1, ("gone", "not a token cache")),
    Case("tokenize-jsonl-not-json", lambda b, d: ["tokenize", write(d / "d.jsonl", '{"text": "a"}\n{oops\n'), "-o",
                                                  d / "c"], 1, ("d.jsonl:2", "not a JSON record")),
    Case("tokenize-into-a-users-directory", lambda b, d: ["tokenize", copy(b, d, "text.txt"), "-o",
                                                          write(d / "mine" / "notes.txt", "x").parent], 1,
         ("mine", "not a token cache")),
    Case("resume-settings-damaged", lambda b, d: ["train", "--out", _damage_checkpoint_config(copy(b, d, "run")),
                                                  "--resume", "--steps", "6", "-q"], 1, ("settings are damaged",)),
    Case("train-out-is-a-file", lambda b, d: ["train", "--out", write(d / "r", "x"), *TRAIN], 1,
         ("not a directory",)),
    Case("train-data-fifo", lambda b, d: ["train", "--out", d / "r", "--data", fifo(d / "t.txt"), *TRAIN], 1,
         ("t.txt", "named pipe")),
    Case("train-data-not-utf8", lambda b, d: ["train", "--out", d / "r", "--data", write(d / "t.txt", b"\xff\xfe" * 50),
                                              *TRAIN], 1, ("t.txt", "UTF-8")),
    Case("train-tokenizer-corrupt", lambda b, d: ["train", "--out", d / "r", "--data", copy(b, d, "text.txt"),
                                                  "--tokenizer", write(d / "tok.json", "{"), *TRAIN], 1, ("tok.json",)),
    Case("train-val-data-missing", lambda b, d: ["train", "--out", d / "r", "--data", copy(b, d, "text.txt"),
                                                 "--val-data", d / "none.txt", *TRAIN], 1, ("none.txt",)),
    Case("train-out-under-a-file", lambda b, d: ["train", "--out", write(d / "f", "x") / "r", *TRAIN], 1, ("f",)),
    Case("plot-o-under-a-file", lambda b, d: ["plot", copy(b, d, "results.json"), "-o", write(d / "f", "x") / "figs"], 1,
         ("not a directory",)),
    Case("train-data-link-loop", lambda b, d: ["train", "--out", d / "r", "--data", loop(d / "t.txt"), *TRAIN], 1,
         ("t.txt",)),
]


def _truncate_all(run: Path) -> Path:
    for p in (run / "checkpoints").glob("*.pt"):
        truncate(p, 0.4)
    return run


def _point_at(run: Path, cache: Path) -> Path:
    link = json.loads((run / "data" / "cache.json").read_text())
    (run / "data" / "cache.json").write_text(json.dumps({**link, "train": str(cache)}))
    return run


def _damage_checkpoint_config(run: Path) -> Path:
    for p in (run / "checkpoints").glob("*.pt"):
        state = torch.load(p, weights_only=True)
        state["config"]["betas"] = 7
        torch.save(state, p)
    return run


def snapshot(d: Path) -> dict[str, str]:
    """Every entry under d: its kind and, for files, a hash of its bytes."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_fifo():
            out[rel] = "fifo"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_there_are_enough_cases():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case, base, tmp_path, monkeypatch):
    check_case(case, base, tmp_path, monkeypatch)


def check_case(case: Case, base: Path, tmp_path: Path, monkeypatch) -> None:
    """Run one case in-process: its exit status, exactly one `error:` line (naming what `says`), no traceback,
    nothing of the user's changed and nothing left behind, no code run, no warning."""
    d = tmp_path / "case"
    d.mkdir()
    argv = [str(a) for a in case.build(base, d)]
    before = snapshot(d)
    for k, v in {"HF_HOME": str(tmp_path / "hf"), "COLUMNS": "200", **case.env}.items():
        monkeypatch.setenv(k, v)
    if case.patch:
        case.patch(monkeypatch)
    monkeypatch.chdir(d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = CliRunner().invoke(app, argv)
    out = res.output
    assert isinstance(res.exception, SystemExit) and res.exit_code == case.code, (res.exit_code, out, res.exception)
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], out  # work done before a write failure may be reported
    if case.patch is None:
        assert len(lines) == 1, out  # bad input is found before anything else is printed
    assert "Traceback" not in out and "Warning" not in out
    for fragment in case.says:
        assert fragment in errors[0], (fragment, errors[0])
    assert snapshot(d) == before  # nothing of the user's changed, nothing left behind
    assert not (d / "PWNED").exists()
    ours = [w for w in caught if "alphaspec" in str(w.filename) or w.category in (RuntimeWarning, UserWarning)]
    assert not ours, [str(w.message) for w in ours]


# --- damaged but usable: what can be analysed is, the rest says why --------------------------------------------


def hill_median(w: np.ndarray) -> float:
    """The median-xmin Hill alpha, written out with numpy (independent of alphaspec's estimator)."""
    lam = np.sort(np.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T))
    lam = lam[lam > 1e-12 * lam[-1]]
    i = len(lam) // 2
    return 1 + (len(lam) - i) / np.log(lam[i:] / lam[i]).sum()


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_degenerate_matrices_get_a_status_and_everything_else_is_drawn(tmp_path):
    t = synth.llama(dtype=torch.float32)
    q, _ = torch.linalg.qr(synth.rand(32, 32, seed=5).double())
    t["model.layers.0.self_attn.q_proj.weight"] = torch.eye(32)  # all eigenvalues equal
    t["model.layers.1.self_attn.q_proj.weight"] = q.float()  # equal up to float32 rounding
    t["model.layers.1.self_attn.o_proj.weight"] = torch.ones(32, 32)  # rank one
    fp8 = synth.rand(16, 32, seed=9).to(torch.float8_e4m3fn)
    t["model.layers.1.self_attn.k_proj.weight"] = fp8
    model = synth.write(tmp_path / "m", t, synth.LLAMA_CONFIG)
    res = CliRunner().invoke(app, ["analyze", str(model), "-o", str(tmp_path / "r.json"), "--save-spectra",
                                   str(tmp_path / "r.npz")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in strict_json((tmp_path / "r.json").read_text())["matrices"]}
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert rows[name]["alpha"] is None and rows[name]["status"].startswith("no power-law tail"), rows[name]
    assert rows["model.layers.1.self_attn.o_proj.weight"]["status"].startswith("too few non-zero eigenvalues")
    k = rows["model.layers.1.self_attn.k_proj.weight"]
    assert k["status"] == "ok" and k["dtype"] == "float8_e4m3fn"
    assert k["alpha"] == pytest.approx(hill_median(fp8.double().numpy()), rel=1e-9)
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "r.json"), "-o", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["alpha-depth.png", "alpha-modules.png", "spectra.png"]
    res = CliRunner().invoke(app, ["decay-map", str(tmp_path / "r.json"), "-o", str(tmp_path / "wd.json")],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output  # matrices without a tail keep the base decay; the rest are assigned
    entries = {m["name"]: m for m in strict_json((tmp_path / "wd.json").read_text())["modules"]}
    identity = entries["model.layers.0.self_attn.q_proj.weight"]
    assert identity["alpha"] is None and identity["weight_decay"] == 0.1 and "no power-law tail" in identity["note"]
    fitted = [m for m in entries.values() if m["alpha"] is not None]
    assert min(m["weight_decay"] for m in fitted) == pytest.approx(0.067) and max(
        m["weight_decay"] for m in fitted) == pytest.approx(0.3)  # s1*w at the smallest fitted alpha, s2*w at the largest


def test_results_without_spectra_draw_what_they_can(base, tmp_path):
    shutil.copy(base / "results.json", tmp_path / "r.json")
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "r.json"), "-o", str(tmp_path / "figs")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["alpha-depth.png", "alpha-modules.png"]
    assert "skipped spectra: needs the eigenvalues" in res.output


def test_int_keyed_state_dict_is_read(tmp_path):
    w = synth.rand(40, 24)
    torch.save({0: synth.rand(24, 24), "model.layers.1.mlp.down_proj.weight": w}, tmp_path / "x.pt")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "x.pt"), "-o", str(tmp_path / "r.csv"), "-q"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "r.csv").set_index("name")
    assert set(table.index) == {"0", "model.layers.1.mlp.down_proj.weight"}
    assert table.loc["model.layers.1.mlp.down_proj.weight", "alpha"] == pytest.approx(hill_median(w.double().numpy()))


def test_compare_names_unfinished_runs(base, tmp_path):
    run = copy(base, tmp_path, "run")
    kept = (run / "metrics.csv").read_text().splitlines()[:3]  # header and steps 1-2 of 4
    (run / "metrics.csv").write_text("\n".join(kept) + "\n")
    res = CliRunner().invoke(app, ["compare", str(run)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "stopped at step 2 of 4" in res.output


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz])
def test_every_float8_format_is_promoted_before_any_arithmetic(tmp_path, dtype):
    w = synth.rand(48, 32, seed=3).to(dtype)
    synth.write(tmp_path / "m", {"model.layers.0.mlp.down_proj.weight": w})
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "m"), "-o", str(tmp_path / "r.csv"), "-q"])
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "r.csv").iloc[0]
    assert row["status"] == "ok" and row["alpha"] == pytest.approx(hill_median(w.double().numpy()), rel=1e-9)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes whatever the permissions say")
def test_permissions_are_reported_as_such(base, tmp_path):
    model = copy(base, tmp_path, "model")
    (model / "model.safetensors").chmod(0)
    res = CliRunner().invoke(app, ["analyze", str(model)], env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "permission denied" in res.output
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    res = CliRunner().invoke(app, ["analyze", str(base / "model"), "-o", str(locked / "r.csv")], env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "permission denied" in res.output and not list(locked.iterdir())


def raw_safetensors(path: Path, entries: list[tuple[str, str, list[int], int]]) -> Path:
    """A safetensors file written by hand, for dtypes torch cannot make (F4, F6, F8_E8M0)."""
    header, offset = {}, 0
    for name, dtype, shape, nbytes in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"\x01" * offset)
    return path


@pytest.mark.parametrize(("dtype", "nbytes", "reason"), [
    ("F8_E8M0", 400, "scale-only F8_E8M0"), ("F4", 200, "packed 4-bit F4"), ("F6_E3M2", 300, "packed 6-bit"),
    ("I64", 3200, "non-float dtype int64"), ("U8", 400, "non-float dtype uint8"), ("BOOL", 400, "non-float dtype bool"),
    ("C64", 3200, "non-float dtype complex64")])
def test_every_safetensors_dtype_is_read_or_skipped_with_its_reason(tmp_path, dtype, nbytes, reason):
    src = raw_safetensors(tmp_path / "x.safetensors", [("model.layers.0.mlp.up_proj.weight", dtype, [20, 20], nbytes),
                                                       ("model.layers.0.mlp.down_proj.weight", "F32", [20, 20], 1600)])
    res = CliRunner().invoke(app, ["analyze", str(src), "-q", "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in doc["matrices"]] == ["model.layers.0.mlp.down_proj.weight"]
    assert doc["skipped"][0]["name"] == "model.layers.0.mlp.up_proj.weight" and reason in doc["skipped"][0]["reason"]


def test_a_tied_head_in_a_bin_is_listed_as_tied_not_analysed_twice(tmp_path):
    embed = synth.rand(64, 32)
    torch.save({"model.embed_tokens.weight": embed, "lm_head.weight": embed,
                "model.layers.0.mlp.down_proj.weight": synth.rand(32, 48)}, tmp_path / "pytorch_model.bin")
    res = CliRunner().invoke(app, ["analyze", str(tmp_path / "pytorch_model.bin"), "-q", "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["name"] for m in doc["matrices"]] == ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"]
    assert doc["skipped"] == [{"name": "lm_head.weight",
                               "reason": "tied to model.embed_tokens.weight (the same weights, analysed once)"}]
