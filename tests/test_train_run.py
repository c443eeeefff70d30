"""`alphaspec train` end to end: the run directory contract, resume, strategies in a real loop, torchrun DDP."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from alphaspec.cli import app
from alphaspec.maps.alphadecay import build_decay_map
from alphaspec.train import DataError, RunError, TrainConfig, train
from alphaspec.train.compare import compare
from alphaspec.train.data import bundled_corpus
from alphaspec.train.rundir import ALPHA_COLUMNS, DECAY_COLUMNS, METRICS_COLUMNS

SMALL = dict(model="tiny", vocab_size=512, seq_len=32, batch_size=4, steps=8, warmup_steps=2, eval_every=4,
             log_every=2, eval_windows=8, checkpoint_every=4, keep_checkpoints=5)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "hamlet.txt"
    path.write_text(bundled_corpus()[0].read_text()[:80_000])
    return str(path)


def run(tmp_path, text, name="run", **options):
    cfg = TrainConfig.of(out=str(tmp_path / name), data=[text], **{**SMALL, **options})
    return train(cfg), tmp_path / name


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def hill_median(w: np.ndarray) -> float:
    """docs/math.md §2 median alpha, written out independently with numpy."""
    lam = np.sort(np.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T))
    lam = lam[lam > 1e-12 * lam[-1]]
    i = len(lam) // 2
    return 1 + (len(lam) - i) / np.log(lam[i:] / lam[i]).sum()


def test_run_directory_contract(tmp_path, text):
    last, out = run(tmp_path, text)
    for f in ("run.json", "config.json", "model.safetensors", "metrics.csv", "decay.csv", "alphas.csv", "tokenizer.json"):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000004.pt", "step_0000008.pt"]
    with open(out / "metrics.csv") as f:
        assert next(csv.reader(f)) == METRICS_COLUMNS
    with open(out / "decay.csv") as f:
        assert next(csv.reader(f)) == DECAY_COLUMNS
    with open(out / "alphas.csv") as f:
        assert next(csv.reader(f)) == ALPHA_COLUMNS
    metrics = rows(out / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [2, 4, 6, 8]
    assert int(metrics[-1]["tokens"]) == 8 * 4 * 32
    assert metrics[-1]["eval_ppl"] and float(metrics[-1]["eval_ppl"]) == pytest.approx(math.exp(float(metrics[-1]["eval_loss"])))
    assert float(metrics[-1]["loss"]) < math.log(512)  # learned something beyond uniform guessing
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["steps"] == 8 and info["parameters"] > 0 and "torch" in info and "started" in info
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(out)
    assert hf.config.vocab_size == 512 and hf.config.num_hidden_layers == 2

    from alphaspec import analyze
    table = analyze(str(out))
    assert sorted(table["module"].value_counts().items()) == sorted(
        {"att.q": 2, "att.k": 2, "att.v": 2, "att.o": 2, "mlp.gate": 2, "mlp.up": 2, "mlp.down": 2,
         "embed": 1, "lm_head": 1}.items())


def test_alphas_during_training_are_the_spectra_of_the_weights(tmp_path, text):
    _, out = run(tmp_path, text, analyze_every=3)
    alphas = rows(out / "alphas.csv")
    assert sorted({int(r["step"]) for r in alphas}) == [0, 3, 6, 8] and len(alphas) == 4 * 14
    weights = load_file(out / "model.safetensors")
    for r in (r for r in alphas if r["step"] == "8"):
        w = weights[r["name"]]
        assert (int(r["rows"]), int(r["cols"])) == tuple(w.shape)
        assert float(r["alpha"]) == pytest.approx(hill_median(w.double().numpy()), rel=1e-9)
    res = CliRunner().invoke(app, ["plot", str(out), "--kind", "training", "-o", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "training.png").read_bytes()[:4] == b"\x89PNG"
    _, quiet = run(tmp_path, text, name="no-alphas", steps=2, analyze_every=0)
    assert rows(quiet / "alphas.csv") == []


def test_existing_run_is_never_overwritten(tmp_path, text):
    _, out = run(tmp_path, text, steps=2)
    with pytest.raises(RunError, match="--resume"):
        run(tmp_path, text, steps=2)
    with pytest.raises(RunError, match="no checkpoint"):
        run(tmp_path, text, name="fresh", resume=True)
    with pytest.raises(RunError, match="already at step 2"):
        run(tmp_path, text, steps=2, resume=True)
    (out / "tokenizer.json").unlink()
    with pytest.raises(RunError, match="tokenizer.json"):
        run(tmp_path, text, steps=4, resume=True)


@pytest.mark.parametrize("options", [{"strategy": "awd"}, {"strategy": "alphadecay", "gap": 3, "overlap": False},
                                     {"strategy": "uniform", "optimizer": "muon"},
                                     {"strategy": "tempbalance", "gap": 3, "overlap": False},
                                     {"strategy": "llr", "gap": 3, "overlap": False, "optimizer": "muon"},
                                     {"strategy": "adadecay", "gap": 3}, {"strategy": "cautious"}])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, text, options):
    _, straight = run(tmp_path, text, name="straight", **options)
    crashed = tmp_path / "crashed"
    shutil.copytree(straight, crashed)
    (crashed / "checkpoints" / "step_0000008.pt").unlink()  # as if killed after the step-4 checkpoint
    run(tmp_path, text, name="crashed", resume=True, **options)
    a, b = rows(straight / "metrics.csv"), rows(crashed / "metrics.csv")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    for ra, rb in zip(a, b, strict=True):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-5)
    da, db = rows(straight / "decay.csv"), rows(crashed / "decay.csv")  # decays and their schedule resumed too
    assert [(r["step"], r["name"]) for r in db] == [(r["step"], r["name"]) for r in da]
    assert [float(r["weight_decay"]) for r in db] == pytest.approx([float(r["weight_decay"]) for r in da], rel=1e-5)
    final = [torch.load(d / "checkpoints" / "step_0000008.pt", weights_only=False)["optimizer"]["param_groups"]
             for d in (straight, crashed)]  # refreshes after the resume reach the optimizer (its groups are new dicts)
    for ga, gb in zip(*final, strict=True):
        assert (gb["lr"], gb["weight_decay"]) == pytest.approx((ga["lr"], ga["weight_decay"]), rel=1e-5), ga.get("name")
    if options["strategy"] in ("tempbalance", "llr"):  # learning rates and their schedule resumed too
        la, lb = rows(straight / "lr.csv"), rows(crashed / "lr.csv")
        assert [(r["step"], r["name"]) for r in lb] == [(r["step"], r["name"]) for r in la]
        assert [float(r["lr_scale"]) for r in lb] == pytest.approx([float(r["lr_scale"]) for r in la], rel=1e-5)
    wa, wb = load_file(straight / "model.safetensors"), load_file(crashed / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6)
    if options.get("optimizer") == "muon":  # Muon's momentum and AdamW's moments restored: bit for bit on CPU
        assert all(torch.equal(wb[name], wa[name]) for name in wa)


def test_refreshed_alphadecay_decays_come_from_the_current_weights(tmp_path, text):
    run(tmp_path, text, strategy="alphadecay", gap=8, overlap=False, weight_decay=0.1, ratio=(0.5, 2.0))
    out = tmp_path / "run"
    decays = rows(out / "decay.csv")
    assert {int(r["step"]) for r in decays} == {0, 8} and len(decays) == 28
    weights = load_file(out / "model.safetensors")  # the weights the step-8 refresh saw
    final = [r for r in decays if r["step"] == "8"]
    alphas = {r["name"]: hill_median(weights[r["name"]].double().numpy()) for r in final}
    lo, hi = min(alphas.values()), max(alphas.values())
    for r in final:
        assert float(r["metric"]) == pytest.approx(alphas[r["name"]], rel=1e-9)
        expected = 0.1 * (0.5 + 1.5 * (alphas[r["name"]] - lo) / (hi - lo))
        assert float(r["weight_decay"]) == pytest.approx(expected, rel=1e-9)
    state = torch.load(out / "checkpoints" / "step_0000008.pt", weights_only=False)
    in_optimizer = {g["name"]: g["weight_decay"] for g in state["optimizer"]["param_groups"] if "layers" in g.get("name", "")}
    assert in_optimizer == {r["name"]: pytest.approx(float(r["weight_decay"]), rel=1e-12) for r in final}


@pytest.mark.parametrize("strategy,optimizer", [("tempbalance", "adamw"), ("tempbalance", "muon"), ("llr", "adamw")])
def test_learning_rate_maps_come_from_the_current_weights(tmp_path, text, strategy, optimizer):
    """lr.csv's multipliers at the step-8 refresh are the release's interpolation of the median alphas of the
    final weights (TempBalance: every block matrix but the first, onto 0.5..1.5; layer-wise LR: onto 1..3,
    embeddings and head at 3), and the optimizer's groups hold the scheduled LR times each multiplier."""
    if optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    run(tmp_path, text, strategy=strategy, gap=8, overlap=False, optimizer=optimizer, lr_ease=0)  # no easing in
    out = tmp_path / "run"
    scales = rows(out / "lr.csv")
    outer = {"model.embed_tokens.weight", "lm_head.weight"} if strategy == "llr" else set()
    assert {int(r["step"]) for r in scales} == {0, 8} and len(scales) == 2 * (14 + len(outer))
    weights = load_file(out / "model.safetensors")  # the weights the step-8 refresh saw
    final = [r for r in scales if r["step"] == "8"]
    alphas = {r["name"]: hill_median(weights[r["name"]].double().numpy()) for r in final if r["name"] not in outer}
    first = "model.layers.0.self_attn.q_proj.weight" if strategy == "tempbalance" else None
    tuned = [a for n, a in alphas.items() if n != first]
    span = (0.5, 1.5) if strategy == "tempbalance" else (1.0, 3.0)
    assert {r["name"] for r in final} == set(alphas) | outer
    for r in final:
        expected = 1.0 if r["name"] == first else span[1] if r["name"] in outer else \
            np.interp(alphas[r["name"]], [min(tuned), max(tuned)], span)
        assert float(r["lr_scale"]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    state = torch.load(out / "checkpoints" / "step_0000008.pt", weights_only=False)
    lr_now = float(rows(out / "metrics.csv")[-1]["lr"])  # the scheduled LR of step 8
    groups = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"] if g.get("name") in {r["name"] for r in final}}
    assert groups == {r["name"]: pytest.approx(lr_now * float(r["lr_scale"]), rel=1e-9) for r in final}
    if optimizer == "adamw":  # `plot RUN --kind map` draws the multipliers of the last refresh against alpha
        from alphaspec.plots.maps import map_figure

        res = CliRunner().invoke(app, ["plot", str(out), "--kind", "map", "-o", str(tmp_path / "figs"), "-q"])
        assert res.exit_code == 0 and (tmp_path / "figs" / "map-lr.png").is_file(), res.output
        from alphaspec.train.applied import applied_lr_map

        points = map_figure(applied_lr_map(out)).axes[0].collections
        drawn = sorted(tuple(xy) for c in points for xy in c.get_offsets().data.tolist())
        np.testing.assert_allclose(drawn, sorted((float(r["metric"]), float(r["lr_scale"])) for r in final), rtol=1e-9)


def test_static_decay_map_is_applied_and_a_foreign_map_refused(tmp_path, text):
    from alphaspec import analyze

    _, first = run(tmp_path, text, name="first", steps=2)
    dmap = build_decay_map(analyze(str(first)), 0.05, ratio=(0.67, 3.0))
    dmap.save(tmp_path / "wd.json")
    run(tmp_path, text, name="static", steps=4, decay_map=str(tmp_path / "wd.json"), strategy="alphadecay")
    state = torch.load(tmp_path / "static" / "checkpoints" / "step_0000004.pt", weights_only=False)
    groups = {g["name"]: g["weight_decay"] for g in state["optimizer"]["param_groups"]}
    assert {n: groups[n] for n in dmap.decays()} == dmap.decays()
    assert groups["untuned"] == dmap.default_weight_decay
    logged = {r["name"]: (float(r["metric"]), float(r["weight_decay"])) for r in rows(tmp_path / "static" / "decay.csv")}
    assert logged == {m["name"]: (pytest.approx(m["alpha"]), m["weight_decay"]) for m in dmap.modules}
    (tmp_path / "wd.json").unlink()  # the run kept its own copy
    assert (tmp_path / "static" / "decay-map.json").is_file()
    run(tmp_path, text, name="static", steps=6, decay_map=str(tmp_path / "wd.json"), strategy="alphadecay", resume=True)
    assert int(rows(tmp_path / "static" / "metrics.csv")[-1]["step"]) == 6

    runner = CliRunner()
    foreign = tmp_path / "foreign.json"
    doc = dmap.to_json()
    doc["modules"] = [{**m, "name": m["name"].replace("layers.1.", "layers.7.")} for m in doc["modules"]]
    foreign.write_text(json.dumps(doc))
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--data", text, "--decay-map", str(foreign)])
    assert res.exit_code == 1 and "layers.7." in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()  # a run that failed while being set up leaves nothing behind
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "y"), "--data", text, "--decay-map", str(foreign)])
    assert res.exit_code == 1 and (tmp_path / "y" / "notes.txt").read_text() == "mine"  # never someone else's files


def test_learnable_multipliers_train_and_fold(tmp_path, text):
    run(tmp_path, text, strategy="lrm", steps=4, lr=3e-3)
    out = tmp_path / "run"
    state = torch.load(out / "checkpoints" / "step_0000004.pt", weights_only=False)
    rows_ = state["model"]["model.layers.0.self_attn.q_proj.row_mult"]
    assert not torch.allclose(rows_, torch.ones_like(rows_))  # the multipliers learn
    saved = load_file(out / "model.safetensors")
    assert not any(k.endswith(("row_mult", "col_mult", "scale")) for k in saved)
    w, r = state["model"]["model.layers.0.mlp.down_proj.weight"], state["model"]["model.layers.0.mlp.down_proj.row_mult"]
    c = state["model"]["model.layers.0.mlp.down_proj.col_mult"]
    torch.testing.assert_close(saved["model.layers.0.mlp.down_proj.weight"], r[:, None] * w * c[None, :])


@pytest.mark.parametrize("argv,message,code", [
    (["--data", "/nonexistent/corpus"], "no such file", 1),
    (["--model", "llama-9000"], "'llama-9000' is not one of 'tiny'", 2),  # a bad choice is a usage error
    (["--strategy", "uniform", "--decay-map", "wd.json"], "cannot be used", 2),  # contradicting options: a usage error
    (["--batch-size", "6", "--micro-batch", "4"], "not a multiple", 1),
    (["--strategy", "alphadecay", "--assign", "cubic"], "'cubic' is not one of 'linear'", 2),
    (["--default-decay", "lots"], "--default-decay", 2),
])
def test_cli_bad_input_is_one_error_line(tmp_path, argv, message, code):
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "-q", *argv], env={"COLUMNS": "200"})
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output


def test_torchrun_setup_failure_on_rank_0_gives_each_rank_one_line(tmp_path, text):
    """Rank 0 alone reads the decay map, the corpus and the checkpoint: when that fails, the other ranks stop
    with its error rather than waiting at the next collective and dying with a gloo traceback."""
    bad = tmp_path / "map.json"
    bad.write_text("{not json")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alphaspec",
           "train", "--out", str(tmp_path / "run"), "--data", text, "--strategy", "alphadecay", "--decay-map", str(bad),
           "--device", "cpu", "--model", "tiny", "--vocab-size", "512", "--seq-len", "32", "--batch-size", "4",
           "--steps", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode != 0
    errors = sorted(line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:"))
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"error: rank 0: {bad}: not valid JSON"), errors
    assert errors[1].startswith(f"error: rank 1: stopped, rank 0 failed: {bad}: not valid JSON"), errors
    text_out = res.stdout + res.stderr
    assert "[rank1]" not in text_out and "/alphaspec/" not in text_out  # no rank printed a traceback
    assert not (tmp_path / "run").exists()  # the failed setup removed what it created


@pytest.mark.parametrize("argv,code,line", [
    (["--version"], 0, "alphaspec "), (["plot", "/nonexistent.json"], 1, "error: /nonexistent.json"),
    (["analyze", "/nonexistent"], 2, "error: torch.distributed could not start its gloo group for WORLD_SIZE=2"),
    (["train", "--out", "/nonexistent/run", "--device", "cpu"], 2, "error: torch.distributed could not start")])
def test_a_torchrun_rank_ends_with_its_exit_status_and_output_flushed(argv, code, line):
    """Under torchrun the CLI ends a rank with os._exit (see distributed.end_rank): the status and every line
    printed must still come out, through a pipe (block-buffered) as much as on a terminal. WORLD_SIZE without
    the rest of torchrun's environment (left set in a shell) is one line too."""
    res = subprocess.run([sys.executable, "-m", "alphaspec", *argv], capture_output=True, text=True, timeout=120,
                         env={**{k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")},
                              "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert res.returncode == code
    assert (res.stdout + res.stderr).startswith(line), res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sharding,strategy,precision,optimizer", [
    ("ddp", "alphadecay", "fp32", "adamw"), ("fsdp", "alphadecay", "fp32", "adamw"), ("fsdp", "awd", "fp32", "adamw"),
    ("fsdp", "adadecay", "fp32", "adamw"), ("fsdp", "lrm", "fp32", "adamw"), ("fsdp", "uniform", "bf16", "adamw"),
    ("ddp", "alphadecay", "fp32", "muon")])
def test_torchrun_trains_like_one_process(tmp_path, text, sharding, strategy, precision, optimizer):
    """Two gloo ranks, each accumulating two micro-batches, take the same steps as one process with the
    whole batch: with DDP and with FSDP2-sharded weights, decays, checkpoints and spectra included
    (bf16: FSDP2's mixed-precision gather against autocast, so only to bf16 accuracy)."""
    _, single = run(tmp_path, text, name="single", batch_size=8, strategy=strategy, gap=4, overlap=False,
                    analyze_every=4, precision=precision, optimizer=optimizer)
    exact = precision == "fp32" and optimizer != "muon"  # Muon orthogonalises in bfloat16 (torch.optim.Muon)
    tol = 1e-4 if exact else 2e-2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alphaspec",
           "train", "--out", str(tmp_path / "multi"), "--data", text, "--strategy", strategy, "--gap", "4",
           "--no-overlap", "--analyze-every", "4", "--sharding", sharding, "--precision", precision,
           "--batch-size", "8", "--micro-batch", "2", "-q", "--device", "cpu", "--optimizer", optimizer]  # 2 x 2
    for k, v in SMALL.items():
        if k != "batch_size":
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    subprocess.run(cmd, check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    multi = tmp_path / "multi"
    a, b = rows(single / "metrics.csv"), rows(multi / "metrics.csv")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=tol)
        if ra["eval_loss"]:
            assert float(rb["eval_loss"]) == pytest.approx(float(ra["eval_loss"]), rel=tol)
    for log, column in (("decay.csv", "weight_decay"), ("alphas.csv", "alpha")):
        da, db = rows(single / log), rows(multi / log)
        assert [r["name"] for r in da] == [r["name"] for r in db], log
        assert [float(r[column]) for r in db] == pytest.approx([float(r[column]) for r in da], rel=10 * tol), log
    wa, wb = load_file(single / "model.safetensors"), load_file(multi / "model.safetensors")
    assert wa.keys() == wb.keys()
    atol = 1e-5 if exact else 1e-2  # bf16: rounding can flip single Adam steps of size ~lr
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=10 * tol, atol=atol)
    state = torch.load(multi / "checkpoints" / "step_0000008.pt", weights_only=False)
    assert all(not hasattr(t, "to_local") for t in state["model"].values())  # whole tensors, loadable anywhere


@pytest.mark.slow
def test_fsdp_run_resumes_from_its_gathered_checkpoint(tmp_path, text):
    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alphaspec",
               "train", "--out", str(tmp_path / "fsdp"), "--data", text, "--sharding", "fsdp", "--strategy", "awd",
               "-q", "--device", "cpu", *extra]
        subprocess.run(cmd, check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})

    options = [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    torchrun(*options)
    straight = rows(tmp_path / "fsdp" / "metrics.csv")
    (tmp_path / "fsdp" / "checkpoints" / "step_0000008.pt").unlink()
    torchrun(*options, "--resume")  # the same command line again, plus --resume
    resumed = rows(tmp_path / "fsdp" / "metrics.csv")
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]
    assert [float(r["loss"]) for r in resumed] == pytest.approx([float(r["loss"]) for r in straight], rel=1e-5)
    (tmp_path / "fsdp" / "checkpoints" / "step_0000008.pt").unlink()
    run(tmp_path, text, name="fsdp", resume=True, strategy="awd")  # FSDP2's checkpoint, one process, no sharding
    single = rows(tmp_path / "fsdp" / "metrics.csv")
    assert [float(r["loss"]) for r in single] == pytest.approx([float(r["loss"]) for r in straight], rel=1e-4)


def test_held_out_validation_text(tmp_path, text):
    val = tmp_path / "val.txt"
    val.write_text(bundled_corpus()[1].read_text()[:20_000])
    _, out = run(tmp_path, text, steps=2, val_data=[str(val)])
    from tokenizers import Tokenizer

    from alphaspec.train.cache import open_cache
    from alphaspec.train.data import load_tokens

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tokens = load_tokens(out, 0.05, 32)
    assert tok.decode(tokens.val.array().tolist()).startswith(val.read_text()[:200])
    train_cache = json.loads((out / "data" / "cache.json").read_text())["train"]
    assert len(tokens.train) == open_cache(Path(train_cache)).manifest["tokens"]  # nothing held out of the training data
    with pytest.raises(DataError, match="no such file"):
        run(tmp_path, text, name="bad", val_data=[str(tmp_path / "missing.txt")])


def test_cli_resume_keeps_the_runs_own_length(tmp_path, text):
    """`--resume` without --steps continues to the step count the run was started with."""
    _, out = run(tmp_path, text)
    (out / "checkpoints" / "step_0000008.pt").unlink()  # crashed after step 4
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "tiny (0.5 M parameters) · adamw · uniform · 4 x 32 tokens/step · 8 steps from step 4" in res.output  # vocab 512
    assert [int(r["step"]) for r in rows(out / "metrics.csv")] == [2, 4, 6, 8]
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--steps", "10", "--data", text, "-q"])
    assert res.exit_code == 0, res.output  # repeating the run's own settings is fine
    assert int(rows(out / "metrics.csv")[-1]["step"]) == 10
    record = json.loads((out / "run.json").read_text())  # the settings in force, and what each resume changed
    assert record["config"]["steps"] == 10 and record["config"]["resume"] is False
    assert [r["changed"] for r in record["resumed"]] == [{}, {"steps": [8, 10]}]
    notes = compare([out]).notes  # compare reads it: the schedule of this run changed mid-run
    assert any(f"{out} was planned for 8 steps and extended on resume (at step 8)" in n for n in notes), notes
    res = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--steps", "12", "--batch-size", "5", "-q"])
    assert res.exit_code == 1 and "--batch-size 5 (the run has 4)" in res.output and "Traceback" not in res.output


def test_preparation_steps_are_reported(tmp_path, text):
    lines, starts, again = [], [], []
    options = {**SMALL, "steps": 2, "token_cache": str(tmp_path / "cache")}
    train(TrainConfig.of(out=str(tmp_path / "r"), data=[text], **options), on_status=lines.append,
          on_start=starts.append)
    assert lines[0].startswith("tokenising 1 source(s) into") and "training a 512-token BPE" in lines
    assert "building the model" in lines and lines[-1].startswith("validation: ")
    assert starts[0]["parameters"] > 0 and starts[0]["start_step"] == 0
    train(TrainConfig.of(out=str(tmp_path / "r2"), data=[text], **options), on_status=again.append)
    assert again[0].startswith("reusing the token cache") and not any("BPE" in x for x in again)


def test_plain_log_lines_when_not_a_terminal(tmp_path, text):
    """nohup, SLURM and CI logs get one line per --log-every (and per evaluation); -q prints nothing."""
    argv = ["train", "--out", str(tmp_path / "r"), "--data", text, "--vocab-size", "512", "--seq-len", "32",
            "--batch-size", "4", "--steps", "6", "--warmup-steps", "2", "--log-every", "2", "--eval-every", "3",
            "--eval-windows", "4"]
    res = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    steps = [line.split(" |")[0] for line in res.output.splitlines() if line.startswith("step ") and " | " in line]
    assert steps == ["step 2/6", "step 3/6", "step 4/6", "step 6/6"]
    assert "eval" in res.output.splitlines()[[i for i, line in enumerate(res.output.splitlines())
                                              if line.startswith("step 3/6")][0]]
    res = CliRunner().invoke(app, [*argv[:2], str(tmp_path / "q"), *argv[3:], "-q"])
    assert res.exit_code == 0 and res.output == ""


def test_default_gap_refreshes_a_short_run(tmp_path, text):
    """Without --gap a 300-step run refreshes every 30 steps, not never (500 > 300)."""
    from alphaspec.train.loop import default_gap

    assert (default_gap(300), default_gap(20_000), default_gap(5)) == (30, 500, 1)
    run(tmp_path, text, strategy="alphadecay", steps=8, overlap=False)  # gap 1: decays set at every step
    assert sorted({int(r["step"]) for r in rows(tmp_path / "run" / "decay.csv")}) == list(range(0, 9))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["gap"] == 1


def test_learned_multipliers_are_recorded_and_drawn(tmp_path, text):
    """multipliers.csv: per matrix and kind, the statistics of the values and ‖W‖, ‖s·diag(r)·W·diag(c)‖ as
    computed here from the checkpoint; `plot --kind multipliers` and `compare --plot-multipliers` draw them."""
    _, out = run(tmp_path, text, strategy="lrm", multipliers="full", analyze_every=4)
    history = rows(out / "multipliers.csv")
    assert {int(r["step"]) for r in history} == {0, 4, 8}
    state = torch.load(out / "checkpoints" / "step_0000008.pt", weights_only=True)["model"]
    last = [r for r in history if r["step"] == "8" and r["name"] == "model.layers.1.mlp.down_proj"]
    assert {r["kind"] for r in last} == {"row_mult", "col_mult"}
    w = state["model.layers.1.mlp.down_proj.weight"].double()
    r_, c_ = (state[f"model.layers.1.mlp.down_proj.{k}"].double() for k in ("row_mult", "col_mult"))
    for row in last:
        values = r_ if row["kind"] == "row_mult" else c_
        assert float(row["mean"]) == pytest.approx(float(values.mean()), rel=1e-5)
        assert float(row["max"]) == pytest.approx(float(values.max()), rel=1e-5)
        assert float(row["weight_norm"]) == pytest.approx(float(w.norm()), rel=1e-5)
        assert float(row["effective_norm"]) == pytest.approx(float((r_[:, None] * w * c_[None, :]).norm()), rel=1e-5)
    assert float(r_.std()) > 0  # they learned something
    res = CliRunner().invoke(app, ["plot", str(out), "--kind", "multipliers", "-o", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "figs" / "multipliers.png").stat().st_size > 10_000
    res = CliRunner().invoke(app, ["compare", str(out), "--baseline", "lrm", "--plot-multipliers",
                                   str(tmp_path / "width.png"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "width.png").stat().st_size > 10_000
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "nope"), "--kind", "multipliers", "-o", str(tmp_path / "f")])
    assert res.exit_code == 1 and "learnable multipliers" in res.output


def test_a_run_loads_as_a_hugging_face_tokenizer_with_its_end_token(tmp_path, text):
    """AutoTokenizer.from_pretrained(RUN) had no eos_token: tokenizer_config.json now names the class and
    the token that separates documents."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    _, out = run(tmp_path, text, steps=2)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == Tokenizer.from_file(
        str(out / "tokenizer.json")).token_to_id("<|endoftext|>")
    sample = "To be, or not to be, that is the question."
    assert tok(sample)["input_ids"] == Tokenizer.from_file(str(out / "tokenizer.json")).encode(sample).ids
