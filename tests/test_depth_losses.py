"""The training depth losses (masked sums, no host syncs) against the indexing + lstsq formulation."""

from __future__ import annotations

import pytest
import torch

from utils.arguments import OptimizationParams
from utils.training import TrainView, depth_losses

H, W = 12, 17


def _reference(out_depth, out_alpha, view, op):
    """The direct formulation: boolean indexing, a least-squares fit by lstsq, Python branches."""
    loss = out_depth.new_zeros(())
    covered = out_alpha.detach() > op.depth_alpha_min
    if view.depth is not None:
        valid = (view.depth > op.depth_min) & (view.depth < op.depth_max) & covered
        if valid.any():
            loss = loss + (1.0 / out_depth.clamp(min=1e-6)[valid] - 1.0 / view.depth[valid]).abs().mean()
    if view.depth_est is not None:
        valid = (view.depth_est > 0) & covered
        if valid.sum() > op.depth_est_min_pixels:
            r, e = out_depth[valid], view.depth_est[valid]
            A = torch.stack([e, torch.ones_like(e)], -1)
            sol = torch.linalg.lstsq(A, r.detach()[:, None]).solution
            loss = loss + (r - (A @ sol).squeeze(-1)).abs().mean() / r.detach().mean()
    return loss


def _case(seed, with_sensor=True, with_est=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    out_depth = (1.0 + 4.0 * torch.rand(1, H, W, generator=g, dtype=dtype)).requires_grad_(True)
    out_alpha = torch.rand(1, H, W, generator=g, dtype=dtype)
    depth = est = None
    if with_sensor:
        depth = 0.1 + 8.0 * torch.rand(1, H, W, generator=g, dtype=dtype)  # some outside (0.3, 7)
        depth[torch.rand(1, H, W, generator=g) < 0.2] = 0  # invalid pixels
    if with_est:
        est = 3.0 * out_depth.detach() + 0.5 + 0.3 * torch.randn(1, H, W, generator=g, dtype=dtype)
        est[torch.rand(1, H, W, generator=g) < 0.2] = 0
    view = TrainView(camera=None, image=torch.zeros(3, H, W, dtype=dtype), alpha=None, depth=depth, depth_est=est)
    return out_depth, out_alpha, view


@pytest.mark.parametrize("sensor,est", [(True, True), (True, False), (False, True)])
def test_value_and_gradient_equal_reference(sensor, est):
    op = OptimizationParams()
    for seed in range(3):
        d, a, view = _case(seed, sensor, est)
        loss = depth_losses(d, a, view, op)
        (g,) = torch.autograd.grad(loss, d)
        d2 = d.detach().clone().requires_grad_(True)
        ref = _reference(d2, a, view, op)
        (g_ref,) = torch.autograd.grad(ref, d2)
        assert loss.item() > 0
        assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_affine_estimate_gives_zero_loss():
    """A rendered depth that is exactly an affine map of the estimate has nothing to fit."""
    op = OptimizationParams()
    d, a, view = _case(4, with_sensor=False)
    view.depth_est = torch.where(view.depth_est > 0, (d.detach() - 0.2) / 2.5, torch.zeros_like(d))
    assert depth_losses(d, a, view, op).item() == pytest.approx(0.0, abs=1e-9)


def test_no_valid_pixels_gives_zero_loss_and_finite_gradient():
    op = OptimizationParams()
    d, a, view = _case(5)
    a = torch.zeros_like(a)  # nothing rendered: no pixel is covered
    loss = depth_losses(d, a, view, op)
    (g,) = torch.autograd.grad(loss, d)
    assert loss.item() == 0.0
    assert torch.isfinite(g).all() and float(g.abs().max()) == 0.0


def test_too_few_estimate_pixels_skip_the_fit():
    op = OptimizationParams(depth_est_min_pixels=10)
    d, a, view = _case(6, with_sensor=False)
    a = torch.zeros_like(a)
    a.view(-1)[:10] = 1.0  # exactly 10 covered pixels: not more than the minimum
    view.depth_est = torch.ones_like(d.detach())
    assert depth_losses(d, a, view, op).item() == 0.0
    a.view(-1)[:11] = 1.0
    assert depth_losses(d, a, view, op).item() > 0.0


def test_float32_close_to_reference():
    op = OptimizationParams()
    d, a, view = _case(7, dtype=torch.float32)
    d2 = d.detach().clone().requires_grad_(True)
    assert depth_losses(d, a, view, op).item() == pytest.approx(_reference(d2, a, view, op).item(), rel=1e-4)
