"""FARMS against an independent numpy implementation of the paper's procedure, and on Gaussian matrices."""

import numpy as np
import pytest
import torch

from alphaspec.spectra.farms import farms_alpha, farms_spectrum, window_starts


def fixed_sampling_starts(dim: int, num_samples: int, sampling_ops_per_dim: int) -> list[int]:
    """The window starts of the authors' `fixed_sampling` (HUST-AI-HYZ/FARMS, lib/sampling.py), as written there."""
    step = max(1, (dim - num_samples) // (sampling_ops_per_dim - 1))
    windows = min(sampling_ops_per_dim, max(1, (dim - num_samples) // step + 1))
    return [min(i * step, dim - num_samples) for i in range(windows)]


def numpy_farms_median_alpha(w: np.ndarray, window: int, per_dim: int) -> float:
    """The paper's recipe written out: square windows on the authors' grid (their fixed_sampling, with the
    window no larger than the matrix), singular values squared, pooled; Hill's estimate from the median."""
    m = min(window, *w.shape)
    starts = [fixed_sampling_starts(dim, m, per_dim) for dim in w.shape]
    pooled = np.sort(np.concatenate([np.linalg.svd(w[r:r + m, c:c + m], compute_uv=False) ** 2
                                     for r in starts[0] for c in starts[1]]))
    pooled = pooled[pooled > 1e-12 * pooled[-1]]
    xmin = pooled[len(pooled) // 2]
    tail = pooled[pooled >= xmin]
    return 1 + len(tail) / np.log(tail / xmin).sum()


@pytest.mark.parametrize("shape", [(300, 120), (310, 131), (577, 200)])
def test_equals_an_independent_numpy_implementation(shape):
    """Including shapes where per_dim − 1 does not divide dim − window (310 − 120 = 190, 131 − 80 = 51, ...),
    where the authors' integer step and an evenly spread grid differ."""
    rng = np.random.default_rng(0)
    w = rng.standard_t(3, size=shape)  # heavy-tailed entries
    for window, per_dim in ((2000, 10), (80, 4), (50, 7)):
        ours = farms_alpha(torch.as_tensor(w), "median", window, per_dim).alpha
        assert ours == pytest.approx(numpy_farms_median_alpha(w, window, per_dim), rel=1e-9), (window, per_dim)
    assert window_starts(310, 120, 10) == fixed_sampling_starts(310, 120, 10) == list(range(0, 190, 21))


def test_windows_stay_square_on_small_matrices():
    assert window_starts(1024, 1024, 10) == [0]
    assert window_starts(4096, 2000, 15)[-1] == 2086 and len(window_starts(4096, 2000, 15)) == 15  # step 149: short of 2096
    lam = farms_spectrum(torch.randn(64, 1000, dtype=torch.float64), window=2000, per_dim=10)
    assert lam.numel() == 10 * 64 and bool((lam[1:] >= lam[:-1]).all())  # one row of 10 windows of 64 x 64


def test_farms_removes_the_shape_effect_on_gaussian_matrices():
    """Plain alphas of Gaussian matrices differ by ~0.9 between aspect 1 and 0.375; FARMS's agree within the
    sampling error (the spread over seeds)."""
    from alphaspec import fit

    def alphas(rows, cols, farms):
        out = []
        for seed in range(3):
            w = torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
            out.append(farms_alpha(w, window=375).alpha if farms else fit(torch.linalg.eigvalsh(w.T @ w)).alpha)
        return np.array(out)

    square, long = alphas(750, 750, False), alphas(2000, 750, False)
    assert long.mean() - square.mean() > 0.5  # the shape effect, plain
    fsquare, flong = alphas(750, 750, True), alphas(2000, 750, True)
    spread = max(fsquare.std(), flong.std(), 0.01)
    assert abs(flong.mean() - fsquare.mean()) < 4 * spread
    assert abs(flong.mean() - fsquare.mean()) < 0.1 * (long.mean() - square.mean())


def test_analyze_decay_map_and_the_hook_use_farms_when_asked(tmp_path):
    import json
    import subprocess
    import sys

    import synth
    from safetensors.torch import load_file

    from alphaspec import AlphaDecay, analyze_checkpoint, build_decay_map
    from alphaspec.maps.spec import DecayMapError

    folder = synth.write(tmp_path / "m", synth.llama(dtype=torch.float32, lm_head=True), synth.LLAMA_CONFIG)
    plain = analyze_checkpoint(folder, device="cpu").table
    assert "alpha_farms" not in plain
    table = analyze_checkpoint(folder, device="cpu", farms=True).table
    weights = load_file(str(next(folder.glob("*.safetensors"))))
    row = table[table["name"] == "model.layers.1.mlp.down_proj.weight"].iloc[0]
    assert row["alpha_farms"] == farms_alpha(weights["model.layers.1.mlp.down_proj.weight"].double()).alpha
    with pytest.raises(DecayMapError, match="analyse with --farms"):
        build_decay_map(plain, 0.1, metric="alpha_farms")
    assert build_decay_map(table, 0.1, metric="alpha_farms").metric == "alpha_farms"
    proc = subprocess.run([sys.executable, "-m", "alphaspec", "decay-map", str(folder), "-o", str(tmp_path / "wd.json"),
                           "--metric", "alpha_farms", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "wd.json").read_text())["modules"][0]["alpha_farms"] > 0
    from test_decay import TinyLlama

    model = TinyLlama(synth.llama(dtype=torch.float32, lm_head=True))
    hook = AlphaDecay(model, torch.optim.AdamW(model.parameters(), weight_decay=0.1), metric="alpha_farms",
                      overlap=False, config=synth.LLAMA_CONFIG)
    assert all(v > 0 for v in hook.alphas.values())
