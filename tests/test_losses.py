"""The training SSIM (analytic backward) against the autograd reference."""

from __future__ import annotations

import pytest
import torch

from utils.losses import SSIM_SIGMA, SSIM_WINDOW, _SSIMMap, ssim, ssim_map


def _pair(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=dtype)
    b = (0.7 * a + 0.3 * torch.rand(shape, generator=g, dtype=dtype)).clamp(0, 1)  # correlated, like a render and its target
    return a.requires_grad_(True), b.requires_grad_(True)


def test_value_equals_reference():
    a, b = _pair((2, 3, 21, 26))
    assert float(ssim(a, b)) == pytest.approx(float(ssim_map(a, b).mean()), abs=1e-12)
    assert float(ssim(a[0], b[0])) == pytest.approx(float(ssim_map(a[0], b[0]).mean()), abs=1e-12)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-9)


def test_gradcheck_both_inputs():
    a, b = _pair((1, 2, 13, 15), seed=1)
    assert torch.autograd.gradcheck(lambda x, y: _SSIMMap.apply(x, y, SSIM_WINDOW, SSIM_SIGMA), (a, b))


def test_gradients_equal_autograd_reference_float32():
    a, b = _pair((3, 40, 52), seed=2, dtype=torch.float32)
    w = torch.rand(3, 40, 52)
    ga = torch.autograd.grad((ssim_map(a, b) * w).sum(), (a, b))
    gb = torch.autograd.grad((_SSIMMap.apply(a[None], b[None], SSIM_WINDOW, SSIM_SIGMA)[0] * w).sum(), (a, b))
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)
    # only the render needs a gradient in training: the target's is not computed
    a2 = a.detach().requires_grad_(True)
    ssim(a2, b.detach()).backward()
    assert torch.allclose(a2.grad, torch.autograd.grad(ssim_map(a, b).mean(), a)[0], atol=1e-7)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
