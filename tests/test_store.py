"""The eigenvalue store: a later analysis of the same weights takes each spectrum from it instead of solving, and
its rows equal a fresh solve's exactly; a changed matrix, a damaged or forged entry is solved again; the store
stays within its bound; `--no-cache`, ALPHASPEC_NO_CACHE and `alphaspec cache` do what they say."""

from __future__ import annotations

import json
import math
import os
import threading

import numpy as np
import pandas as pd
import pytest
import synth
import torch

from alphaspec.analysis import rows as rows_module
from alphaspec.analysis import solve as solve_module
from alphaspec.analysis.engine import analyze_checkpoint
from alphaspec.analysis.store import EigenStore, Entry, entry_key, matrix_key, store_bound
from alphaspec.spectra.powerlaw import PowerLawFit


@pytest.fixture(autouse=True)
def store_on(tmp_path, monkeypatch):
    """The store on, in a directory of this test's own."""
    monkeypatch.setenv("ALPHASPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ALPHASPEC_NO_CACHE", raising=False)
    return tmp_path / "cache" / "spectra"


@pytest.fixture
def llama_dir(tmp_path):
    return synth.write(tmp_path / "llama", synth.llama(), synth.LLAMA_CONFIG)


def solves(monkeypatch) -> list[int]:
    """Count the matrices the solver is handed (a store hit never reaches it)."""
    counted = [0]
    real = solve_module.scaled_eigenvalues

    def counting(w, *args, **kwargs):
        counted[0] += len(w)
        return real(w, *args, **kwargs)

    monkeypatch.setattr(solve_module, "scaled_eigenvalues", counting)
    return counted


def test_a_second_analysis_solves_nothing_and_equals_a_fresh_one(llama_dir, monkeypatch, store_on):
    counted = solves(monkeypatch)
    first = analyze_checkpoint(llama_dir, "median", "cpu", keep_spectra=True).table
    n = len(first)
    assert counted[0] == n and len(EigenStore(store_on).entries()) > 0
    for estimator in ("median", "gof", "fix-finger"):  # any estimator re-fits from the kept spectra
        counted[0] = 0
        warm = analyze_checkpoint(llama_dir, estimator, "cpu", keep_spectra=True)
        assert counted[0] == 0, estimator
        fresh = analyze_checkpoint(llama_dir, estimator, "cpu", keep_spectra=True, cache=False)
        pd.testing.assert_frame_equal(warm.table, fresh.table)
        assert warm.spectra.keys() == fresh.spectra.keys()
        assert all((warm.spectra[k] == fresh.spectra[k]).all() for k in warm.spectra)


def fits_made(monkeypatch) -> list[str]:
    """The estimators of every KS scan made (fit_with_gof: one per matrix fitted)."""
    made = []
    real = rows_module.fit_with_gof

    def counting(lam, estimator, **kwargs):
        made.append(estimator)
        return real(lam, estimator, **kwargs)

    monkeypatch.setattr(rows_module, "fit_with_gof", counting)
    return made


def test_the_fits_kept_beside_a_spectrum_are_not_made_again(llama_dir, monkeypatch):
    made = fits_made(monkeypatch)
    analyze_checkpoint(llama_dir, "median", "cpu")
    n = len(made)
    assert n > 0 and set(made) == {"median"}
    for estimator, scans in (("median", 0), ("gof", 0), ("fix-finger", n)):  # gof's fit comes with every other
        made.clear()
        warm = analyze_checkpoint(llama_dir, estimator, "cpu").table
        assert len(made) == scans, estimator
        fresh = analyze_checkpoint(llama_dir, estimator, "cpu", cache=False).table
        pd.testing.assert_frame_equal(warm, fresh)


def test_fits_kept_by_other_code_are_made_again(llama_dir, monkeypatch):
    made = fits_made(monkeypatch)
    analyze_checkpoint(llama_dir, "gof", "cpu")
    n = len(made)
    monkeypatch.setattr(rows_module, "fits_revision", lambda: "another release")
    made.clear()
    warm = analyze_checkpoint(llama_dir, "gof", "cpu").table
    assert len(made) == n  # the spectra are reused, their fits are not
    pd.testing.assert_frame_equal(warm, analyze_checkpoint(llama_dir, "gof", "cpu", cache=False).table)


def test_kept_fits_read_back_as_they_were_nan_and_status_included():
    nan = float("nan")
    fits = rows_module.Fits(3, {"gof": PowerLawFit(2.5, 0.125, 0.03, 40),
                                "median": PowerLawFit(nan, nan, nan, 0, "no power-law tail: 1 distinct eigenvalue(s)")},
                            {"median": 2.13})
    back = rows_module.Fits.from_json(json.loads(json.dumps(fits.to_json())))
    assert back.n_zero == 3 and back.random == {"median": 2.13}
    assert back.fits["gof"] == fits.fits["gof"]
    assert back.fits["median"].status == fits.fits["median"].status and math.isnan(back.fits["median"].alpha)
    assert rows_module.Fits.from_json({"revision": rows_module.fits_revision(), "fits": 3}).fits == {}  # not its layout
    assert rows_module.Fits.from_json(None).fits == {}


def test_randomized_and_farms_solves_are_kept_with_their_settings(llama_dir, monkeypatch):
    counted = solves(monkeypatch)
    settings = {"randomize": 3, "seed": 1, "farms": True, "keep_spectra": True}
    analyze_checkpoint(llama_dir, "median", "cpu", **settings)
    counted[0] = 0
    warm = analyze_checkpoint(llama_dir, "median", "cpu", **settings)
    assert counted[0] == 0
    fresh = analyze_checkpoint(llama_dir, "median", "cpu", cache=False, **settings)
    pd.testing.assert_frame_equal(warm.table, fresh.table)
    assert warm.spectra.keys() == fresh.spectra.keys()  # the permuted spectra too
    counted[0] = 0
    analyze_checkpoint(llama_dir, "median", "cpu", **(settings | {"seed": 2}))  # another seed: solved again
    assert counted[0] > 0


def test_a_changed_matrix_is_solved_again_the_others_are_not(tmp_path, monkeypatch):
    tensors = synth.llama()
    synth.write(tmp_path / "a", tensors, synth.LLAMA_CONFIG)
    changed = dict(tensors)
    name = "model.layers.1.mlp.down_proj.weight"
    changed[name] = changed[name].clone()
    changed[name].view(-1)[0] += 1  # one entry, one bf16 step
    synth.write(tmp_path / "b", changed, synth.LLAMA_CONFIG)
    counted = solves(monkeypatch)
    analyze_checkpoint(tmp_path / "a", "median", "cpu")
    counted[0] = 0
    table = analyze_checkpoint(tmp_path / "b", "median", "cpu").table
    assert counted[0] == 1
    fresh = analyze_checkpoint(tmp_path / "b", "median", "cpu", cache=False).table
    pd.testing.assert_frame_equal(table, fresh)


def test_keys_see_every_byte_dtype_and_shape():
    w = synth.rand(64, 32)
    flipped = w.clone()
    flipped.view(torch.int32)[5, 7] ^= 1  # the last bit of one float
    assert matrix_key(w) == matrix_key(w.clone()) != matrix_key(flipped)
    assert matrix_key(w) != matrix_key(w.reshape(32, 64)) and matrix_key(w) != matrix_key(w.double())
    assert matrix_key(w.t()) == matrix_key(w.t().contiguous())  # a view is keyed by its values
    assert entry_key("k", 64, 32, "fp64") != entry_key("k", 64, 32, "fp32")


def test_a_damaged_or_forged_entry_is_solved_again(llama_dir, monkeypatch, store_on):
    fresh = analyze_checkpoint(llama_dir, "median", "cpu", cache=False).table
    analyze_checkpoint(llama_dir, "median", "cpu")
    paths = sorted(p for p, _, _ in EigenStore(store_on).entries())
    damaged, forged, source = paths[0], paths[1], paths[2]
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF  # an eigenvalue's bytes
    damaged.write_bytes(bytes(data))
    forged.write_bytes(source.read_bytes())  # a valid entry under another key
    paths[3].write_bytes(b"\xff" * 40)  # not a safetensors file at all
    counted = solves(monkeypatch)
    store = EigenStore(store_on)
    assert store.get(damaged.stem) is None and store.get(forged.stem) is None and store.rejected == 2
    assert not damaged.exists() and not forged.exists()  # deleted, never trusted
    table = analyze_checkpoint(llama_dir, "median", "cpu").table
    assert counted[0] >= 2
    pd.testing.assert_frame_equal(table, fresh)


def test_the_store_keeps_within_its_bound_least_recently_used_first(tmp_path):
    store = EigenStore(tmp_path, max_bytes=10**9)
    for i in range(6):
        store.put(f"{i:064x}", Entry({"eigs": torch.arange(1000, dtype=torch.float64).numpy() + i}, {"exponent": 0}))
        os.utime(store._path(f"{i:064x}"), (1000 + i, 1000 + i))
    store.get(f"{0:064x}")  # the oldest, used now
    size = store.entries()[0][1]
    store.max_bytes = 3 * size
    assert EigenStore(tmp_path, max_bytes=3 * size).trim() == 0  # it put nothing: nothing can have grown
    assert store.trim() == 3
    kept = sorted(p.stem for p, _, _ in store.entries())
    assert kept == [f"{i:064x}" for i in (0, 4, 5)]
    assert store.clear() == (3, 3 * size) and store.entries() == []


def test_concurrent_analyses_share_the_store(llama_dir):
    fresh = analyze_checkpoint(llama_dir, "median", "cpu", cache=False).table
    tables, errors = [], []

    def run():
        try:
            tables.append(analyze_checkpoint(llama_dir, "median", "cpu").table)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(tables) == 4
    for table in tables:
        pd.testing.assert_frame_equal(table, fresh)


def test_the_bound_reads_sizes(monkeypatch):
    for text, size in (("500M", 500 << 20), ("4G", 4 << 30), ("1.5g", int(1.5 * (1 << 30))), ("2048", 2048),
                       ("10MiB", 10 << 20)):
        monkeypatch.setenv("ALPHASPEC_CACHE_SIZE", text)
        assert store_bound() == size, text
    monkeypatch.setenv("ALPHASPEC_CACHE_SIZE", "lots")
    with pytest.raises(Exception, match="ALPHASPEC_CACHE_SIZE"):
        store_bound()


def cli(*args, env=None):
    """The command in this process (click's runner: no interpreter and torch start-up per call)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from alphaspec.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100", **(env or {})})
    return SimpleNamespace(returncode=res.exit_code, stdout=res.stdout, stderr=res.stderr)


def test_the_cache_command_and_no_cache(llama_dir, store_on):
    assert cli("analyze", llama_dir, "-q", "--no-cache").returncode == 0
    assert not store_on.exists() or EigenStore(store_on).entries() == []
    assert cli("analyze", llama_dir, "-q", env={"ALPHASPEC_NO_CACHE": "1"}).returncode == 0
    assert not store_on.exists() or EigenStore(store_on).entries() == []
    assert cli("analyze", llama_dir, "-q").returncode == 0
    count = len(EigenStore(store_on).entries())
    assert count > 0
    info = cli("cache", "info")
    assert info.returncode == 0 and f"{count} entries" in info.stdout and str(store_on) in info.stdout
    cleared = cli("cache", "clear")
    assert cleared.returncode == 0 and f"deleted {count} entries" in cleared.stdout
    assert EigenStore(store_on).entries() == []
    bad = cli("analyze", llama_dir, "-q", env={"ALPHASPEC_CACHE_SIZE": "lots"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: ALPHASPEC_CACHE_SIZE") and "Traceback" not in bad.stderr


def test_a_store_that_cannot_be_written_is_skipped_and_info_says_why(llama_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"ALPHASPEC_CACHE": str(blocker)}
    assert cli("analyze", llama_dir, "-q", "-o", tmp_path / "r.csv", env=env).returncode == 0  # analysed all the same
    info = cli("cache", "info", env=env)
    assert info.returncode == 0 and f"cannot be written: {blocker} is not a folder" in " ".join(info.stdout.split())
    fine = cli("cache", "info", env={"ALPHASPEC_CACHE": str(tmp_path / "new")})
    assert "cannot be written" not in fine.stdout and not (tmp_path / "new").exists()  # info creates nothing


def test_a_results_table_with_its_spectra_is_fitted_again_for_any_estimator(tmp_path, llama_dir):
    """`analyze -o r.json --save-spectra r.npz` once: a method or `-e` asking for another estimator re-fits from the
    spectra (equal to analysing the checkpoint with it, to round-off), where a table without them is refused or
    noted."""
    import numpy as np

    from alphaspec.analysis.results import REFITTED, results_or_analysis
    from alphaspec.analysis.table import write_results, write_spectra
    from alphaspec.maps.build import build_map

    analysis = analyze_checkpoint(llama_dir, "median", "cpu", keep_spectra=True, split_fused=False, cache=False)
    write_results(analysis, tmp_path / "r.json")
    write_spectra(analysis, tmp_path / "r.npz")
    for estimator in ("gof", "fix-finger"):
        table, _ = results_or_analysis(tmp_path / "r.json", estimator, asked="-e")
        fresh = analyze_checkpoint(llama_dir, estimator, "cpu", split_fused=False, cache=False).table
        for column in [c for c in REFITTED if c != "status"] + ["alpha_random"]:
            np.testing.assert_allclose(table[column].to_numpy(float), fresh[column].to_numpy(float), rtol=1e-10)
        assert list(table["status"]) == list(fresh["status"]) and set(table["estimator"]) == {estimator}
    table, _ = results_or_analysis(tmp_path / "r.json", "fix-finger", refit=True)
    assert build_map(table, "sparsity").notes == [] or all("fitted with" not in n for n in build_map(table, "sparsity").notes)
    (tmp_path / "r.npz").unlink()  # without its spectra: the table as it is, and the map says so
    table, _ = results_or_analysis(tmp_path / "r.json", "fix-finger", refit=True)
    assert set(table["estimator"]) == {"median"}
    assert any("fitted with median; alphapruning fits with fix-finger" in n for n in build_map(table, "sparsity").notes)
    with pytest.raises(Exception, match="fitted with median, not gof"):
        results_or_analysis(tmp_path / "r.json", "gof", asked="-e")


# -- GGUF: block-quantised tensors keyed as stored, so a kept tensor is never dequantised
def quantised_gguf(path, seed: int = 0, change: str | None = None):
    """A Q8_0 llama GGUF (a stacked Q8_0 MoE tensor too: one matrix per expert); `change`: a tensor whose
    first block gets one more quantisation step."""
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2moe")
    for key, value in {"qwen2moe.block_count": 1, "qwen2moe.embedding_length": 64, "qwen2moe.feed_forward_length": 96,
                       "qwen2moe.attention.head_count": 4, "qwen2moe.attention.head_count_kv": 4}.items():
        w.add_uint32(key, value)
    shapes = {"blk.0.attn_q.weight": (64, 64), "blk.0.attn_output.weight": (64, 64),
              "blk.0.ffn_up_exps.weight": (3, 96, 64)}
    for name, shape in shapes.items():
        q = quantize((rng.standard_t(4, size=shape) * 0.05).astype(np.float32), T.Q8_0)
        if name == change:
            q.reshape(-1, q.shape[-1])[0, 2] ^= 1  # the first block's first quantised value (after its f16 scale)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def dequantised(monkeypatch) -> list[tuple]:
    """The shapes of every tensor the gguf package dequantises."""
    from alphaspec.sources import gguf as gguf_source

    seen = []
    real = gguf_source._dequantise

    def counting(data, qtype, shape):
        seen.append(shape)
        return real(data, qtype, shape)

    monkeypatch.setattr(gguf_source, "_dequantise", counting)
    return seen


def test_a_kept_gguf_tensor_is_not_even_dequantised(tmp_path, monkeypatch):
    model = quantised_gguf(tmp_path / "m.gguf")
    seen, counted = dequantised(monkeypatch), solves(monkeypatch)
    first = analyze_checkpoint(model, "median", "cpu", keep_spectra=True)
    assert len(seen) == 3 and counted[0] == 5  # q, o and three experts
    seen.clear()
    counted[0] = 0
    warm = analyze_checkpoint(model, "gof", "cpu", keep_spectra=True)
    assert seen == [] and counted[0] == 0
    fresh = analyze_checkpoint(model, "gof", "cpu", keep_spectra=True, cache=False)
    pd.testing.assert_frame_equal(warm.table, fresh.table)
    assert all((warm.spectra[k] == fresh.spectra[k]).all() for k in fresh.spectra) and len(first.spectra) == 5


def test_a_changed_block_the_config_or_the_dequantiser_is_another_key(tmp_path, monkeypatch):
    from alphaspec.sources.checkpoint import open_checkpoint
    from alphaspec.sources.deltas import RoundedCheckpoint

    model = quantised_gguf(tmp_path / "a.gguf")
    quantised_gguf(tmp_path / "b.gguf", change="blk.0.ffn_up_exps.weight")
    a, b = open_checkpoint(model), open_checkpoint(tmp_path / "b.gguf")
    up, q = "model.layers.0.mlp.experts.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    assert a.stored_key(q) == b.stored_key(q) and a.stored_key(up) != b.stored_key(up)
    assert a.stored_key(q) != a.stored_key(q, torch.device("cuda"))  # expanded by torch there: another dequantiser
    a.config["num_attention_heads"] = 8  # the config the rows are read under (hf_rows)
    assert a.stored_key(q) != b.stored_key(q)
    assert RoundedCheckpoint(b).stored_key(q) is None  # a reader that changes the values keys what it read
    seen = dequantised(monkeypatch)
    analyze_checkpoint(model, "median", "cpu")
    seen.clear()
    table = analyze_checkpoint(tmp_path / "b.gguf", "median", "cpu").table
    assert seen == [(3, 96, 64)]  # the changed tensor alone
    pd.testing.assert_frame_equal(table, analyze_checkpoint(tmp_path / "b.gguf", "median", "cpu", cache=False).table)
    rounded = analyze_checkpoint(model, "median", "cpu", checkpoint=RoundedCheckpoint(open_checkpoint(model))).table
    fresh = analyze_checkpoint(model, "median", "cpu", cache=False,
                               checkpoint=RoundedCheckpoint(open_checkpoint(model))).table
    pd.testing.assert_frame_equal(rounded, fresh)


def test_on_a_gpu_a_tensor_keyed_as_stored_keeps_that_key(tmp_path):
    """The callbacks a GPU analysis reads with (no CUDA call in them: run here): the blocks' key, set before the
    tensor is read, is not replaced by the matrix's (which a GPU-expanded tensor has none of)."""
    from alphaspec.analysis.options import AnalysisOptions
    from alphaspec.analysis.solve import _store_callbacks, plan_checkpoint, solve_options
    from alphaspec.analysis.solved import view_key
    from alphaspec.sources.checkpoint import open_checkpoint

    ckpt = open_checkpoint(quantised_gguf(tmp_path / "m.gguf"))
    how, cuda, keys = solve_options(ckpt, AnalysisOptions.of(estimator="median")), torch.device("cuda"), {}
    callbacks = _store_callbacks(ckpt, cuda, how, keys)
    tensor = "model.layers.0.mlp.experts.up_proj.weight"
    specs = [s for s in plan_checkpoint(ckpt, (), (), True).matrices if s.tensor == tensor]
    assert len(specs) == 3 and callbacks["kept"](tensor, specs) is None  # nothing kept yet: read it
    expected = [view_key(ckpt.stored_key(tensor, cuda), s) for s in specs]
    assert [keys[s.name] for s in specs] == expected and len(set(expected)) == 3  # one per expert
    callbacks["on_read"](specs[0], torch.zeros(96, 64))
    assert keys[specs[0].name] == expected[0]


def test_hostile_gguf_blocks_with_the_store_on(tmp_path, monkeypatch):
    """Blocks that expand to NaN are analysed (their row says so) and never kept; a file that cannot be read
    while its blocks are keyed is one error line naming it, nothing written."""
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    from alphaspec.sources import checkpoint as checkpoint_source

    model = quantised_gguf(tmp_path / "m.gguf")
    nan = tmp_path / "nan.gguf"
    w = gguf.GGUFWriter(str(nan), "llama")
    q = quantize(np.ones((64, 64), np.float32), T.Q8_0)
    q[:, :2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)  # every block's scale: NaN
    w.add_tensor("blk.0.attn_q.weight", q, raw_shape=q.shape, raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for _ in range(2):  # the second run finds nothing kept: solved (and said) again
        table = analyze_checkpoint(nan, "median", "cpu").table
        assert table["status"].tolist() == ["matrix contains NaN or Inf"]

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint_source, "blocks_key", unreadable)
    res = cli("analyze", model, "-q", "-o", tmp_path / "r.csv")
    assert res.returncode == 1 and res.stderr.startswith(f"error: {model}: cannot read tensor data")
    assert len(res.stderr.splitlines()) == 1 and not (tmp_path / "r.csv").exists()
