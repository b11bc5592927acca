"""The pure-PyTorch renderer: conventions, compositing, weights and gradients (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaussian_renderer import rasterize, render, resolve_backend
from scene.cameras import Camera, look_at
from scene.gaussian_model import GaussianModel


def random_gaussians(n: int, dtype=torch.float32, seed: int = 0, spread: float = 0.3, size=(0.05, 0.1)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=dtype), dim=-1)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * (size[1] - size[0]) + size[0]
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.6 + 0.2
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


def camera(w=32, h=30, fx=40.0, fy=42.0, cx=16.3, cy=15.1) -> Camera:
    R, t = look_at(np.array([0.0, -3.0, 1.0]), np.zeros(3))
    return Camera(R, t, fx, fy, cx, cy, w, h)


def test_single_gaussian_lands_on_its_pixel_with_principal_point():
    cam = Camera(np.eye(3), np.zeros(3), 50.0, 50.0, 10.0, 7.0, 24, 16)
    # a point on the optical axis projects to (cx, cy) = (10, 7): the centre of pixel (row 6, col 9)
    # is at (9.5, 6.5), so the brightest pixels are cols 9-10 / rows 6-7 symmetric around (10, 7)
    means = torch.tensor([[0.0, 0.0, 2.0]])
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.01), torch.tensor([0.9]),
                    torch.ones(1, 3), cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height)
    a = out.alpha[0]
    top = torch.topk(a.flatten(), 4).indices
    rows, cols = sorted(set((top // cam.width).tolist())), sorted(set((top % cam.width).tolist()))
    assert rows == [6, 7] and cols == [9, 10]
    assert torch.allclose(a[6, 9], a[7, 10], atol=1e-6)
    assert torch.allclose(out.means2d, torch.tensor([[10.0, 7.0]]))
    assert out.depth[0, 6, 9] == pytest.approx(2.0, abs=1e-5)


def test_antialiased_mode_keeps_a_small_gaussians_footprint():
    """eps2d widens a sub-pixel Gaussian; "classic" keeps its peak opacity (so its integrated alpha
    grows by det(S + eps I) / det S), "antialiased" scales the opacity by sqrt(det S / det(S + eps I)),
    which keeps the integral of a faint Gaussian and its 50 % footprint close to the unfiltered one."""
    cam = Camera(np.eye(3), np.zeros(3), 100.0, 100.0, 16.0, 16.0, 32, 32)
    sigma_px = 0.4
    args = (torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), sigma_px * 2.0 / 100.0),
            torch.tensor([0.2]), torch.ones(1, 3), cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height)
    area = {}
    for mode in ("classic", "antialiased"):
        area[mode] = float(rasterize(*args, eps2d=0.3, rasterize_mode=mode).alpha.sum())
    unfiltered = 0.2 * 2 * np.pi * sigma_px**2  # integral of o exp(-d^2 / 2 s^2) over the plane
    ratio = (sigma_px**2 + 0.3) / sigma_px**2
    assert area["classic"] == pytest.approx(unfiltered * ratio, rel=0.05)
    assert area["antialiased"] == pytest.approx(unfiltered, rel=0.05)
    with pytest.raises(ValueError, match="rasterize_mode"):
        rasterize(*args, rasterize_mode="mip")


def test_antialiased_mask_mixes_the_two_modes_in_one_pass():
    """A per-Gaussian mask draws its Gaussians as "antialiased" and the rest as "classic": all True is
    the antialiased image, all False the classic one, forward and backward; a mixed mask changes only
    what the masked Gaussians contribute (a lone masked Gaussian far from the others)."""
    cam = camera(48, 40, 60.0, 62.0, 24.3, 20.1)
    means, quats, scales, opac, colors = random_gaussians(60, dtype=torch.float64, size=(0.005, 0.03))
    view = (cam.viewmat_tensor().double(), cam.K_tensor().double(), cam.width, cam.height)

    def run(mode, mask):
        m = means.clone().requires_grad_(True)
        o = opac.clone().requires_grad_(True)
        out = rasterize(m, quats, scales, o, colors, *view, rasterize_mode=mode, antialiased_mask=mask)
        (out.image * torch.linspace(0, 1, out.image.numel(), dtype=out.image.dtype).reshape(out.image.shape)).sum().backward()
        return out.image.detach(), m.grad, o.grad

    n = means.shape[0]
    for mask, mode in ((torch.ones(n, dtype=torch.bool), "antialiased"), (torch.zeros(n, dtype=torch.bool), "classic")):
        mixed, reference = run("classic", mask), run(mode, None)
        for a, b in zip(mixed, reference):
            assert torch.allclose(a, b, atol=1e-10)
    half = torch.arange(n) % 2 == 0
    mixed = run("classic", half)[0]
    assert not torch.allclose(mixed, run("classic", None)[0]) and not torch.allclose(mixed, run("antialiased", None)[0])
    with pytest.raises(ValueError, match="classic"):
        rasterize(means, quats, scales, opac, colors, *view, rasterize_mode="antialiased", antialiased_mask=half)
    with pytest.raises(ValueError, match="bool"):
        rasterize(means, quats, scales, opac, colors, *view, antialiased_mask=half.float())


def test_background_and_alpha_compose():
    means, quats, scales, opac, colors = random_gaussians(40)
    cam = camera()
    bg = torch.tensor([0.2, 0.5, 0.9])
    out0 = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height)
    out1 = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height, background=bg)
    expected = out0.image + (1 - out0.alpha) * bg[:, None, None]
    assert torch.allclose(out1.image, expected, atol=1e-6)
    assert float(out0.alpha.max()) <= 1.0 and float(out0.alpha.min()) >= 0.0


def test_gaussians_behind_camera_are_culled():
    cam = Camera(np.eye(3), np.zeros(3), 50.0, 50.0, 12.0, 8.0, 24, 16)
    means = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.005]])
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.1), torch.tensor([0.9, 0.9]),
                    torch.ones(2, 3), cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height)
    assert out.radii.tolist() == [0, 0]
    assert float(out.alpha.abs().max()) == 0.0


def test_weights_sum_to_alpha_and_masks_split_them():
    means, quats, scales, opac, colors = random_gaussians(60)
    cam = camera(40, 28)
    mask = torch.zeros(2, cam.height, cam.width)
    mask[0, :, :20] = 1
    mask[1, :, 20:] = 1
    out = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height,
                    compute_weights=True)
    outm = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height,
                     weight_masks=mask)
    assert out.weights.shape == (60,) and outm.weights.shape == (2, 60)
    assert float(out.weights.sum()) == pytest.approx(float(out.alpha.sum()), rel=1e-4)
    assert torch.allclose(outm.weights.sum(0), out.weights, atol=1e-4)
    left = float((out.alpha[0] * mask[0]).sum())
    assert float(outm.weights[0].sum()) == pytest.approx(left, rel=1e-4)


@pytest.mark.parametrize("max_elements", [1 << 10, 1 << 22])
def test_tiling_does_not_change_the_image(max_elements):
    means, quats, scales, opac, colors = random_gaussians(80)
    cam = camera(50, 37)
    ref = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height, tile_size=16)
    out = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height,
                    tile_size=8, max_elements=max_elements)
    assert torch.allclose(ref.image, out.image, atol=1e-5)
    assert torch.allclose(ref.depth, out.depth, atol=1e-4)


def test_gradients_match_finite_differences():
    dt = torch.float64
    means, quats, scales, opac, colors = random_gaussians(25, dtype=dt, size=(0.05, 0.15))
    cam = camera()
    vm, K = cam.viewmat_tensor().to(dt), cam.K_tensor().to(dt)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=dt)
    weight = torch.rand(3, cam.height, cam.width, dtype=dt, generator=torch.Generator().manual_seed(1))

    def f(m, q, s, o, c):
        out = rasterize(m, q, s, o, c, vm, K, cam.width, cam.height, background=bg)
        return (out.image * weight).sum() + 0.1 * (out.depth[0] * weight[0]).sum()

    inputs = tuple(x.clone().requires_grad_(True) for x in (means, quats, scales, opac, colors))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-3)


def test_sh_colour_and_screen_gradients_through_render():
    torch.manual_seed(0)
    xyz = np.random.default_rng(0).normal(size=(50, 3)) * 0.3
    model = GaussianModel.from_points(xyz, np.random.default_rng(1).random((50, 3)), sh_degree=3)
    model.params["shN"].data.normal_(0, 0.1)
    cam = camera(36, 30)
    out = render(cam, model, torch.zeros(3))
    out.image.sum().backward()
    g = out.screen_grad()
    assert g is not None and g.shape == (50, 2)
    assert model.params["shN"].grad is not None and float(model.params["shN"].grad.abs().sum()) > 0
    # degree 0 ignores the higher coefficients
    model.active_sh_degree = 0
    out0 = render(cam, model, torch.zeros(3))
    model2 = model.clone()
    model2.params["shN"].data.zero_()
    model2.active_sh_degree = 0
    assert torch.allclose(out0.image, render(cam, model2, torch.zeros(3)).image)


def test_backend_resolution_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError):
        resolve_backend("opengl", torch.device("cpu"))


def test_memory_bounded_at_256px_with_50k_gaussians():
    """256x256 with 50k Gaussians renders forward+backward within a few GB (tiled evaluation)."""
    import resource

    means, quats, scales, opac, colors = random_gaussians(50_000, spread=0.5, size=(0.005, 0.035))
    means.requires_grad_(True)
    R, t = look_at(np.array([0.0, -3.0, 1.0]), np.zeros(3))
    cam = Camera(R, t, 250.0, 250.0, 128.0, 128.0, 256, 256)
    out = rasterize(means, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), 256, 256)
    out.image.sum().backward()
    assert means.grad is not None and torch.isfinite(means.grad).all()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    assert peak_gb < 6.0, f"peak RSS {peak_gb:.1f} GB"


def test_without_depth_same_image_and_gradients():
    means, quats, scales, opac, colors = random_gaussians(60)
    cam = camera(40, 30)
    outs = []
    for with_depth in (True, False):
        m = means.clone().requires_grad_(True)
        out = rasterize(m, quats, scales, opac, colors, cam.viewmat_tensor(), cam.K_tensor(), cam.width, cam.height, with_depth=with_depth)
        out.image.square().sum().backward()
        outs.append((out, m.grad))
    (a, ga), (b, gb) = outs
    assert b.depth is None and a.depth is not None
    assert torch.allclose(a.image, b.image, atol=1e-6) and torch.allclose(a.alpha, b.alpha, atol=1e-6)
    assert torch.allclose(ga, gb, atol=1e-6)
