"""Diagnoses from the spectra: the Marchenko–Pastur bulk against its closed forms, spikes against planted
signals, correlation traps against planted entries, verdicts and --fail-on, and WeightWatcher's own numbers."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import synth
import torch

import alphaspec
from alphaspec.errors import UsageError
from alphaspec.spectra.verdicts import Thresholds, parse_fail_on, verdicts

SHAPES = [(256, 256), (768, 256), (1024, 512), (300, 1000)]


def gaussians(shape, scale: float, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(*shape, generator=g, dtype=torch.float64) * scale
            for i in range(count)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [0.02, 3.0])
def test_the_bulk_of_gaussian_matrices_is_the_marchenko_pastur_law(shape, scale):
    """σ within 1.5 % of the entries' scale and the edge within 3 % of n·σ²·(1 + √y)² (measured: 0.2-0.8 %
    and 1 %); no spike in 20 draws of each shape (80 matrices, the false-spike rate the docs quote)."""
    table = alphaspec.analyze(gaussians(shape, scale, 20))
    n, m = max(shape), min(shape)
    assert table["sigma_mp"].to_numpy() == pytest.approx(np.full(20, scale), rel=0.015)
    assert table["bulk_max"].to_numpy() == pytest.approx(np.full(20, n * scale**2 * (1 + math.sqrt(m / n)) ** 2),
                                                         rel=0.03)
    assert (table["num_spikes"] == 0).all()
    np.testing.assert_allclose(table["mp_softrank"], table["bulk_max"] / table["lambda_max"], rtol=1e-12)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_planted_rank_k_signal_gives_exactly_k_spikes(k):
    """Signals θ_j·u_j·v_jᵀ above the BBP threshold θ_c = σ·(n·m)^(1/4) (here 3θ_c and more) each give one
    eigenvalue out of the bulk; nothing else passes the threshold."""
    g = torch.Generator().manual_seed(k)
    n, m = 1024, 512
    w = torch.randn(n, m, generator=g, dtype=torch.float64)
    for j in range(k):
        u, v = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64)
        w += 3 * (n * m) ** 0.25 * (1 + 0.3 * j) * torch.outer(u / u.norm(), v / v.norm())
    row = alphaspec.analyze({"model.layers.0.mlp.up_proj.weight": w}).iloc[0]
    assert row["num_spikes"] == k and row["sigma_mp"] == pytest.approx(1.0, rel=0.02)


def test_verdicts_by_hand_and_their_thresholds():
    """Each verdict from its own column: alpha_gof for the alpha thresholds (whatever the table's alpha), num_spikes
    with a fitted bulk for random-like, trap_z >= 5 for traps, the zero share, an empty alpha."""
    nan = math.nan
    table = pd.DataFrame({"alpha": [1.5, 3.0, 7.0, nan, 3.0, 2.5, 1.7, 2.1], "estimator": ["median"] * 8,
                          "alpha_gof": [1.9, 3.0, 7.0, nan, 3.0, 2.5, 2.5, 6.5], "n_zero": [0, 0, 0, 0, 5, 0, 0, 0],
                          "n_eigs": [100] * 8, "trap_z": [nan, nan, nan, nan, nan, 5.0, 4.9, nan],
                          "sigma_mp": [0.1] * 7 + [0.1], "num_spikes": [3, 3, 3, 0, 3, 3, 3, 0],
                          "status": ["ok"] * 8})
    table.loc[3, "sigma_mp"] = nan  # no bulk (no spectrum): not random-like
    assert list(verdicts(table)) == ["over-trained", "", "under-trained", "no-tail", "rank-collapse", "traps", "",
                                     "under-trained,random-like"]
    assert list(verdicts(table, Thresholds(over_trained=1.0, under_trained=8.0, rank_loss=0.1))) == [
        "", "", "", "no-tail", "", "traps", "", "random-like"]
    both = pd.DataFrame({"alpha": [1.0], "estimator": ["gof"], "n_zero": [50], "n_eigs": [100], "status": ["ok"]})
    assert list(verdicts(both)) == ["over-trained,rank-collapse"]  # a gof table without alpha_gof: its alpha
    median = both.assign(estimator="median")
    assert list(verdicts(median)) == ["rank-collapse"]  # a median alpha is never read against WeightWatcher's 2
    for bad in ({"over_trained": 7.0}, {"rank_loss": 1.5}, {"over_trained": 0.0}):
        with pytest.raises(UsageError):
            Thresholds(**bad)
    assert parse_fail_on("traps, over-trained,traps") == ("traps", "over-trained")  # each named once
    for bad in ("traps,vibes", "", " , "):
        with pytest.raises(UsageError, match="choose from over-trained"):
            parse_fail_on(bad)


def test_updates_are_not_judged_as_weights():
    """An all-zero update is `unchanged` with no verdict; a low-rank update (an adapter's s·B·A) gets no verdict at
    all, not even random-like or traps (a bulk and a spike on 16 eigenvalues); a full-rank update gets none of the
    verdicts calibrated on trained weights (alpha thresholds, rank-collapse, no-tail), but random-like and traps."""
    nan = math.nan
    table = pd.DataFrame({"content": ["delta", "adapter", "delta", "weights", "adapter"],
                          "alpha": [nan, 9.0, 1.2, nan, 3.0], "alpha_gof": [nan, 9.0, 1.2, nan, 3.0],
                          "estimator": ["median"] * 5, "n_zero": [64, 48, 0, 64, 48], "n_eigs": [64] * 5,
                          "status": ["unchanged", "ok", "ok", "all-zero matrix", "ok"],
                          "sigma_mp": [nan, nan, 0.1, nan, 0.1], "num_spikes": [0, 16, 0, 0, 0],
                          "trap_z": [nan, nan, 7.0, nan, 7.0]})
    assert list(verdicts(table)) == ["", "", "random-like,traps", "rank-collapse,no-tail", ""]


def test_a_gaussian_matrix_has_no_traps_and_planted_entries_are_found():
    """Over 10 seeds of permutation a Gaussian matrix has no trap; three planted entries far above the BBP
    threshold make traps, and trap_where names exactly those entries (row, col) = value."""
    w = gaussians((768, 256), 0.02, 1)["model.layers.0.mlp.up_proj.weight"]
    for seed in range(10):
        row = alphaspec.analyze({"model.layers.0.mlp.up_proj.weight": w}, randomize=True, seed=seed).iloc[0]
        assert row["traps"] == 0 and "traps" not in row["warning"] and row["trap_share"] == 0
    planted = w.clone()
    for (i, j), value in {(3, 7): 1.5, (100, 200): -2.0, (400, 5): 1.2}.items():
        planted[i, j] = value
    row = alphaspec.analyze({"model.layers.0.mlp.up_proj.weight": planted}, randomize=True).iloc[0]
    assert row["traps"] >= 1 and "traps" in row["warning"] and row["trap_share"] == 1 and row["permutations"] == 7
    assert row["trap_entries"] == 3 and row["trap_max_entry"] == 2.0
    assert row["trap_where"] == "(100, 200) = -2; (3, 7) = 1.5; (400, 5) = 1.2"
    again = alphaspec.analyze({"model.layers.0.mlp.up_proj.weight": planted}, randomize=True).iloc[0]
    assert again["rand_lambda_max"] == row["rand_lambda_max"]  # seeded: the run repeats


def test_rand_distance_is_small_for_noise_and_large_for_structure():
    """Jensen–Shannon distance between a matrix's spectrum and its permutation's: a Gaussian matrix is its own
    permutation in distribution; a strong low-rank structure is destroyed by permuting."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(768, 256, generator=g, dtype=torch.float64)
    low_rank = torch.randn(768, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 256, generator=g,
                                                                                   dtype=torch.float64)
    table = alphaspec.analyze({"model.layers.0.mlp.up_proj.weight": noise,
                               "model.layers.1.mlp.up_proj.weight": low_rank + 0.05 * noise}, randomize=True)
    assert table["rand_distance"].iloc[0] < 0.15 < 0.6 < table["rand_distance"].iloc[1]


def test_cli_fail_on_exits_3_after_writing_and_says_why(tmp_path):
    tensors = {name: w.float() for name, w in gaussians((96, 32), 0.1, 3).items()}
    tensors["model.layers.3.mlp.up_proj.weight"] = torch.zeros(96, 32).index_fill_(1, torch.tensor([0]), 1.0)
    model = synth.write(tmp_path / "m", tensors, synth.LLAMA_CONFIG)
    env = os.environ | {"COLUMNS": "200"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "alphaspec", "analyze", str(model), *args], capture_output=True,
                              text=True, env=env)

    ok = cli("-o", str(tmp_path / "ok.csv"), "--fail-on", "traps", "--randomize")
    assert ok.returncode == 0, ok.stderr
    assert "1 rank-collapse, 1 no-tail" in ok.stdout
    bad = cli("-o", str(tmp_path / "r.csv"), "--fail-on", "rank-collapse,traps", "--randomize", "-q")
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 3 and lines == [
        "error: 1 of 4 matrices have a --fail-on verdict (1 rank-collapse), e.g. model.layers.3.mlp.up_proj.weight"]
    written = pd.read_csv(tmp_path / "r.csv", keep_default_na=False)
    assert written["warning"].tolist()[3].startswith("rank-collapse")  # the table is written before the exit
    assert cli("--fail-on", "vibes").returncode == 2
    never = cli("--fail-on", "traps")  # traps are only looked for with --randomize: a gate that could not fire
    assert never.returncode == 2 and "--fail-on traps needs --randomize" in never.stderr
    assert cli("--fail-on", "").returncode == 2
    assert cli("--over-trained", "9").returncode == 2


def test_weightwatcher_agrees_on_traps_and_on_the_bulk_of_rectangular_matrices():
    """WeightWatcher 0.7.7's mp_fit=True / randomize=True on MiniLM's layer 1-2 MLP matrices (its own code,
    when installed). Traps agree; σ (relative to the entries' RMS, as WeightWatcher normalises) agrees to
    15 %, the spike count and mp_softrank to 35 % (ours: fewer spikes, a wider margin). Square matrices are
    not compared: WeightWatcher's quarter-circle fit returns σ ≈ 1 there, the scale of the whole spectrum
    (docs/estimators.md)."""
    ww = pytest.importorskip("weightwatcher")
    from safetensors.torch import load_file

    from alphaspec.sources.checkpoint import example_path

    weights = load_file(str(example_path("minilm") / "model.safetensors"))
    names = [n for n in weights if n.startswith(("encoder.layer.1.", "encoder.layer.2.")) and n.endswith("dense.weight")
             and weights[n].shape[0] != weights[n].shape[1]]
    model = torch.nn.Sequential(*[torch.nn.Linear(weights[n].shape[1], weights[n].shape[0], bias=False) for n in names])
    for layer, n in zip(model, names, strict=True):
        layer.weight.data.copy_(weights[n])
    details = ww.WeightWatcher(model=model).analyze(mp_fit=True, randomize=True, min_evals=10)
    ours = alphaspec.analyze({n: weights[n] for n in names}, randomize=True).set_index("name").loc[names]
    rms = ours["frobenius_norm"] / np.sqrt(ours["rows"] * ours["cols"])
    np.testing.assert_allclose(ours["sigma_mp"] / rms, details["sigma_mp"], rtol=0.15)
    np.testing.assert_allclose(ours["num_spikes"], details["num_spikes"], rtol=0.35)  # ours: fewer (a wider margin)
    np.testing.assert_allclose(ours["mp_softrank"], details["mp_softrank"], rtol=0.35)
    assert ours["traps"].tolist() == details["num_traps"].tolist()


def test_the_esd_figure_overlays_the_mp_law_and_the_permuted_spectrum(tmp_path):
    """The MP curve is a density (integrates to 1 over its support) with its edge at bulk_max; the permuted
    spectrum comes back from --save-spectra under NAME#randomized and is drawn beside the ESD."""
    from alphaspec.analysis.engine import analyze_checkpoint
    from alphaspec.plots.spectra import esd_figure, mp_curve

    x, density = mp_curve(0.5, 768, 256, points=20_000)
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=2e-3)
    assert x.max() == pytest.approx(768 * 0.25 * (1 + math.sqrt(1 / 3)) ** 2, rel=1e-4)
    model = synth.write(tmp_path / "m", {k: v.float() for k, v in gaussians((768, 256), 0.5, 1).items()},
                        synth.LLAMA_CONFIG)
    result = analyze_checkpoint(model, device="cpu", keep_spectra=True, randomize=True)
    name = "model.layers.0.mlp.up_proj.weight"
    assert set(result.spectra) == {name, name + "#randomized"}
    row = result.table.iloc[0]
    fig = esd_figure(name, result.spectra[name], "median", (row["sigma_mp"], 768, 256), result.spectra[name + "#randomized"])
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "entries permuted" in labels and any(label.startswith("Marchenko–Pastur, σ = 0.5") for label in labels)


def test_permutations_and_random_starts_are_drawn_on_the_cpu(monkeypatch):
    """So a GPU gives the same permuted matrices (and numbers) as the CPU: no generator on the device is made."""
    import alphaspec.spectra.randomize as randomize

    made = []
    real = torch.Generator

    def spy(*args, **kwargs):
        made.append(kwargs.get("device", args[0] if args else "cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", spy)
    w = torch.randn(1, 40, 30, dtype=torch.float64)
    randomize.permuted(w, [1])
    randomize.trap_sources(w[0], 1, 0.01)
    assert made and all(str(d) == "cpu" for d in made)


def test_blockwise_permutations_are_uniform_and_keep_the_entries():
    """A matrix larger than a block is shuffled blockwise (cache-sized gathers): every one of the 6! orders of
    six entries in blocks of two is equally likely (chi-square over 7,200 seeds against 720 equal cells:
    mean 719, sd 38; a bias towards keeping entries in their block would show hundreds above), the multiset
    of entries stays, and a seed repeats its order. Up to one block it is torch's seeded randperm itself."""
    from collections import Counter

    from alphaspec.spectra.randomize import shuffled

    counts = Counter(tuple(shuffled(torch.arange(6), seed, block=2).tolist()) for seed in range(7_200))
    cells = np.array([counts[p] for p in itertools.permutations(range(6))])
    chi2 = float(((cells - 10) ** 2 / 10).sum())
    assert cells.min() > 0 and chi2 < 719 + 5 * 38
    stay = sum(n for p, n in counts.items() if sorted(p[:2]) == [0, 1]) / 7_200  # first block kept whole
    assert abs(stay - 1 / 15) < 0.012  # C(6,2) = 15 pairs equally likely to fill it

    x = torch.randn(10_007, dtype=torch.float64)
    y = shuffled(x, 7, block=1000)
    assert torch.equal(torch.sort(y).values, torch.sort(x).values) and torch.equal(y, shuffled(x, 7, block=1000))
    assert not torch.equal(y, shuffled(x, 8, block=1000))
    small = torch.randn(500)
    order = torch.randperm(500, generator=torch.Generator().manual_seed(3))
    assert torch.equal(shuffled(small, 3), small[order])


def test_median_bounds_are_the_binomial_order_statistics():
    """The bounds on the median are the order statistics scipy's binomial distribution names: X_(k) with k the
    most for which P(Binomial(n, 1/2) <= k - 1) <= 1 %; none below 7 values (all 7 on one side: 1/128)."""
    from scipy.stats import binom

    from alphaspec.spectra.randomize import TRAP_LEVEL, median_bounds

    rng = np.random.default_rng(0)
    for n in range(1, 31):
        z = rng.normal(size=n)
        k = max((j for j in range(n + 1) if binom.cdf(j - 1, n, 0.5) <= TRAP_LEVEL), default=0)
        low, high = median_bounds(z)
        if k == 0:
            assert math.isnan(low) and math.isnan(high) and n < 7
        else:
            assert (low, high) == (np.sort(z)[k - 1], np.sort(z)[n - k])
    assert median_bounds(list(range(15)))[0] == 2  # n = 15: the 3rd smallest


def test_a_matrix_at_the_threshold_rarely_gets_the_traps_verdict():
    """The stopping rule fed permutations whose spike stands above 5 half of the time (a matrix exactly at the
    threshold) decides 'traps' in about 1 % of runs; one above 5 in every permutation always, after 7."""
    from alphaspec.spectra.randomize import TRAP_Z, median_bounds, undecided

    def verdict(p_above: float, rng) -> tuple[bool, int]:
        z: list[float] = []
        while len(z) < 15 and (len(z) < 2 or undecided(z)):
            z.append(TRAP_Z + (1.0 if rng.random() < p_above else -1.0))
        return bool(median_bounds(z)[0] >= TRAP_Z), len(z)

    rng = np.random.default_rng(1)
    at_threshold = [verdict(0.5, rng)[0] for _ in range(4000)]
    assert np.mean(at_threshold) < 0.03
    assert all(verdict(1.0, rng) == (True, 7) for _ in range(20))
    assert all(verdict(0.0, rng) == (False, 7) for _ in range(20))
