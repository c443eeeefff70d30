"""The ESD engine: eigenvalues equal numpy's squared singular values, whichever Gram route is taken."""

import numpy as np
import pytest
import torch

from alphaspec.spectra import eigenvalues as esd


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (700, 600), (600, 700), (3, 640, 520)])
def test_eigenvalues_are_squared_singular_values(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    lam = esd.eigenvalues(w).numpy()
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    expected = np.sort(s**2, axis=-1)
    assert lam.shape == expected.shape
    np.testing.assert_allclose(lam, expected, rtol=1e-10, atol=1e-12 * expected.max())


def test_triangle_gram_is_used_and_equals_full_product():
    a = torch.randn(900, 700, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert a.shape[-1] >= esd.TRIANGLE_MIN
    g = esd.gram(a)
    full = (a.T @ a).numpy()
    low = np.tril(g.numpy())
    np.testing.assert_allclose(low, np.tril(full), rtol=1e-12, atol=1e-12 * np.abs(full).max())
    first = round(700 / esd.TRIANGLE_BLOCKS)
    assert not g[:first, first:].any()  # blocks above the diagonal are never formed: eigvalsh reads only "L"


def test_bf16_input_is_promoted_before_the_product():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    lam = esd.eigenvalues(w).numpy()
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(lam, np.sort(s**2), rtol=1e-10, atol=1e-12 * s.max() ** 2)


@pytest.mark.parametrize("shape", [(300, 200), (700, 600), (3, 640, 520)])
def test_fp32_eigenvalues_are_within_single_precision_of_the_squared_singular_values(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    lam = esd.eigenvalues(w, precision="fp32")
    assert lam.dtype == torch.float64  # widened for the fits
    expected = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2, axis=-1)
    top = expected.max(axis=-1, keepdims=True)
    error = np.abs(lam.numpy() - expected) / top
    assert error.max() < max(shape[-2:]) * np.finfo(np.float32).eps  # Gram sums of n products: ~n eps of the largest
    assert error.max() > 1e-12  # and it really was single precision


def test_no_process_wide_setting_is_written_by_a_solve_and_fp32_never_runs_in_tf32(tmp_path, monkeypatch):
    """Defect 6 of the GPU review: the solver flipped torch's float32 matmul precision (process-wide) around
    every Gram product, from worker threads, racing the trainer and recompiling compiled steps. Now
    nothing is written; with TF32/bf16 products allowed, fp32 solves form the Gram matrix in float64."""
    from safetensors.torch import save_file

    from alphaspec import analyze

    writes = []
    real_setattr = type(torch.backends.cuda.matmul).__setattr__
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda v: writes.append(("precision", v)))
    monkeypatch.setattr(torch._C, "_set_float32_matmul_precision", lambda v: writes.append(("_C", v)))
    monkeypatch.setattr(type(torch.backends.cuda.matmul), "__setattr__",
                        lambda self, k, v: (writes.append((k, v)), real_setattr(self, k, v)))
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # what a trainer sets for speed
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(96 + i, 64) for i in range(4)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    for precision in ("fp64", "fp32"):
        analyze(tmp_path / "model.safetensors", device="cpu", workers=2, precision=precision)
    assert writes == []
    assert esd.gram_dtype("fp32", torch.device("cpu")) == torch.float64  # "high" would allow bf16/TF32 products
    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(4))
    lam = esd.eigenvalues(w, precision="fp32").numpy()
    expected = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2)
    assert np.abs(lam - expected).max() / expected.max() < 200 * np.finfo(np.float32).eps


def test_fp32_alphas_match_fp64_on_heavy_tailed_matrices_and_bad_precisions_are_refused(tmp_path):
    from safetensors.torch import save_file

    from alphaspec import analyze
    from alphaspec.errors import UsageError

    torch.manual_seed(5)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.distributions.StudentT(3.0).sample((256, 128)) * 0.02
               for i in range(3)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    for estimator in ("median", "gof"):
        a64 = analyze(tmp_path / "model.safetensors", estimator, "cpu")
        a32 = analyze(tmp_path / "model.safetensors", estimator, "cpu", precision="fp32")
        np.testing.assert_allclose(a32["alpha"], a64["alpha"], rtol=0, atol=1e-4)
        assert not np.array_equal(a32["lambda_max"], a64["lambda_max"])  # two different solves
    with pytest.raises(UsageError, match="unknown precision 'fp16'"):
        analyze(tmp_path / "model.safetensors", precision="fp16")


def test_bounded_map_keeps_order_caps_what_is_in_flight_and_stops_at_a_failure():
    """Results come in the items' order whatever finishes first; the items are drawn at most 2·workers ahead of
    what was consumed; a failure propagates and what had not started never runs."""
    import threading
    import time

    from alphaspec.analysis.pool import bounded_map

    drawn, started = [], []
    lock = threading.Lock()

    def items():
        for i in range(20):
            drawn.append(i)
            yield i

    def slow_first(i):
        with lock:
            started.append(i)
        time.sleep(0.05 if i == 0 else 0.001)
        return i * i

    results = bounded_map(slow_first, items(), workers=2)
    assert next(results) == 0 and len(drawn) <= 4  # the first result waited for: at most 2·2 drawn
    assert list(results) == [i * i for i in range(1, 20)]

    def fail_at_3(i):
        with lock:
            started.append(i)
        if i == 3:
            raise ValueError("item 3")
        time.sleep(0.01)
        return i

    started.clear()
    with pytest.raises(ValueError, match="item 3"):
        list(bounded_map(fail_at_3, range(100), workers=2))
    assert max(started) < 3 + 2 * 2  # nothing far past the failure was started
    assert list(bounded_map(lambda i: -i, range(5), workers=1)) == [0, -1, -2, -3, -4]
