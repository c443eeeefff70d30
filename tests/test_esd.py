"""The ESD engine: eigenvalues equal numpy's squared singular values, whichever Gram route is taken."""

import numpy as np
import pytest
import torch

from alphaspec import esd


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
