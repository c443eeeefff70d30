"""The estimators against closed forms, known distributions, a plain reference loop and `powerlaw`."""

import math
import warnings

import numpy as np
import pytest
import torch

from alphaspec import eigenvalues, fit
from alphaspec.spectra.powerlaw import fix_finger_peak


def pareto(a: float, n: int, seed: int) -> np.ndarray:
    """Samples with density proportional to x^-a on [1, inf), by inverse transform."""
    u = np.random.default_rng(seed).random(n)
    return (1.0 - u) ** (-1.0 / (a - 1.0))


def reference(lam: np.ndarray, candidates: range) -> tuple[float, float, float]:
    """docs/math.md §2 written as the plain loop it describes: (alpha, xmin, D) of the smallest D."""
    lam = np.sort(lam)
    best = None
    for i in candidates:
        tail = lam[i:]
        n = len(tail)
        alpha = 1 + n / np.sum(np.log(tail / lam[i]))
        d = 1.0
        if alpha > 1:
            d = np.max(np.abs(1 - (tail / lam[i]) ** (1 - alpha) - np.arange(n) / n))
        if best is None or d < best[2]:
            best = (alpha, lam[i], d)
    return best


def reference_fix_finger(lam: np.ndarray) -> tuple[float, float, float]:
    lam = np.sort(lam)
    counts, edges = np.histogram(np.log10(lam), bins=100)
    peak = 10 ** edges[np.argmax(counts)]
    window = [i for i in range(len(lam) - 1) if 0.95 * peak <= lam[i] <= 1.5 * peak]
    if not window:
        window = [int(np.argmin(np.abs(lam[:-1] - peak)))]
    return reference(lam, window)


def gaussian_esd(rows: int, cols: int, seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return eigenvalues(torch.randn(rows, cols, generator=g, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("a", [2.0, 3.0, 4.0])
@pytest.mark.parametrize("estimator", ["median", "gof"])
def test_pareto_tail_is_recovered(a, estimator):
    result = fit(pareto(a, 4000, seed=int(a)), estimator)
    assert result.alpha == pytest.approx(a, rel=0.04)
    assert result.status == "ok"


def test_median_closed_form():
    lam = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0])
    result = fit(lam, "median")
    i = len(lam) // 2  # 0-based floor(N/2): xmin = 32
    n = len(lam) - i
    expected = 1 + n / sum(math.log(x / lam[i]) for x in lam[i:])
    assert result.xmin == 32.0
    assert result.n_tail == n
    assert result.alpha == pytest.approx(expected, rel=1e-13)
    tail = lam[i:]
    d = np.max(np.abs(1 - (tail / lam[i]) ** (1 - expected) - np.arange(n) / n))
    assert result.ks_d == pytest.approx(d, rel=1e-12)


@pytest.mark.parametrize(("rows", "cols", "expected"), [(1000, 1000, 2.13), (2048, 768, 3.0)])
def test_gaussian_matrix_median_alpha(rows, cols, expected):
    alphas = [fit(gaussian_esd(rows, cols, seed)).alpha for seed in range(2)]
    assert np.mean(alphas) == pytest.approx(expected, rel=0.015)


@pytest.mark.parametrize("data", ["pareto", "gaussian", "lognormal"])
def test_gof_and_fix_finger_equal_reference_loop(data):
    lam = {"pareto": lambda: pareto(2.5, 600, 7), "gaussian": lambda: gaussian_esd(500, 300, 3),
           "lognormal": lambda: np.random.default_rng(5).lognormal(0.0, 1.5, 400)}[data]()
    for estimator, ref in (("gof", reference(lam, range(len(lam) - 1))), ("fix-finger", reference_fix_finger(lam))):
        got = fit(lam, estimator)
        assert got.xmin == ref[1], estimator
        assert got.alpha == pytest.approx(ref[0], rel=1e-9, abs=0), estimator
        assert got.ks_d == pytest.approx(ref[2], rel=1e-9, abs=1e-12), estimator


def test_fix_finger_legacy_reproduces_the_released_window():
    """The released code's window: log10(0.95 p) <= lambda <= 1.5 p, the lower bound in the wrong units."""
    lam = np.sort(gaussian_esd(500, 300, 3))
    counts, edges = np.histogram(np.log10(lam), bins=100)
    peak = 10 ** edges[np.argmax(counts)]
    window = [i for i in range(len(lam) - 1) if np.log10(0.95 * peak) <= lam[i] <= 1.5 * peak]
    ref = reference(lam, window)
    got = fit(lam, "fix-finger-legacy")
    assert got.xmin == ref[1] and got.alpha == pytest.approx(ref[0], rel=1e-9)
    assert window[0] == 0  # peak below 10/0.95: no lower bound at all, unlike the intended window
    assert fit(lam, "fix-finger").xmin >= 0.95 * peak


def test_fix_finger_peak_is_numpy_histogram_peak():
    lam = np.sort(gaussian_esd(400, 400, 11))
    counts, edges = np.histogram(np.log10(lam), bins=100)
    assert fix_finger_peak(torch.from_numpy(lam)) == pytest.approx(10 ** edges[np.argmax(counts)], rel=1e-12)


@pytest.mark.parametrize("data", ["pareto", "gaussian"])
def test_gof_agrees_with_powerlaw_package(data):
    powerlaw = pytest.importorskip("powerlaw")
    lam = pareto(3.0, 500, 0) if data == "pareto" else gaussian_esd(600, 300, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = powerlaw.Fit(lam, parameter_ranges={"alpha": [1.0, 1e6]}, verbose=0)
    got = fit(lam, "gof")
    assert got.xmin == ref.xmin
    assert got.alpha == pytest.approx(ref.alpha, rel=1e-9)
    assert got.ks_d == pytest.approx(ref.D, rel=1e-9)


def test_zeros_are_excluded_and_order_does_not_matter():
    lam = pareto(3.0, 300, 4)
    with_zeros = np.concatenate([np.zeros(50), lam, [1e-20]])
    np.random.default_rng(0).shuffle(with_zeros)
    assert fit(with_zeros, "gof").alpha == pytest.approx(fit(lam, "gof").alpha, rel=1e-12)


def test_degenerate_inputs_give_an_explained_empty_fit():
    assert fit(np.zeros(20)).status == "all eigenvalues are zero"
    few = fit(np.arange(1.0, 6.0))
    assert math.isnan(few.alpha) and few.status.startswith("too few non-zero eigenvalues")
    with pytest.raises(ValueError, match="NaN"):
        fit(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="unknown estimator"):
        fit(pareto(3.0, 100, 0), "hill")


def test_curves_hold_every_candidate():
    lam = pareto(3.0, 200, 2)
    result = fit(lam, "gof", curves=True)
    assert len(result.curves["xmin"]) == len(lam) - 1
    assert result.curves["ks_d"].min() == result.ks_d


def test_fit_stays_a_function_after_the_package_loaded_its_modules():
    import alphaspec

    alphaspec.analyze  # noqa: B018 - loads the analysis modules, which import the estimators
    import alphaspec.analysis.engine  # noqa: F401

    lam = np.arange(1.0, 101.0)
    assert alphaspec.fit(lam).alpha == pytest.approx(alphaspec.spectra.powerlaw.fit(lam).alpha)
    assert callable(alphaspec.fit)
