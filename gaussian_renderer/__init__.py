"""One Gaussian renderer, two backends.

``render(camera, gaussians, background)`` renders a :class:`scene.gaussian_model.GaussianModel`
from a :class:`scene.cameras.Camera`; ``rasterize(...)`` is the same on plain tensors.

Backends (``backend=``):

* ``"gsplat"``: gsplat's CUDA kernels; CUDA tensors only.
* ``"torch"``: the readable pure-PyTorch rasterizer of :mod:`gaussian_renderer.torch_backend`,
  on any device, differentiable, memory-bounded by tiling.
* ``"auto"`` (default): gsplat when the tensors are on CUDA and gsplat is installed, else torch.

Both compute the same image (see torch_backend's docstring for the exact model) and are
compared forward and backward in ``tests/test_renderer_cuda.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from gaussian_renderer import torch_backend

if TYPE_CHECKING:  # pragma: no cover
    from scene.cameras import Camera
    from scene.gaussian_model import GaussianModel

BACKENDS = ("auto", "torch", "gsplat")
RASTERIZE_MODES = ("classic", "antialiased")


@dataclass
class RenderOutput:
    """What a render returns.

    Attributes:
        image: [3, H, W] colour composited over the background.
        alpha: [1, H, W] accumulated opacity Σ_i α_i T_i.
        depth: [1, H, W] expected camera depth Σ_i z_i α_i T_i / alpha (0 where alpha ≈ 0);
            None when rendered with ``with_depth=False``.
        means2d: projected centres in pixels, [N, 2] (gsplat: [1, N, 2]); when the means
            require grad its gradient is retained: :meth:`screen_grad` reads it after backward.
        radii: [N] screen radius in pixels (max over x, y); 0 = not rendered (culled).
        weights: [N] Σ_p α_i(p) T_i(p) per Gaussian, or [K, N] Σ_p α_i T_i M_k(p) when
            ``weight_masks`` [K, H, W] were given; None unless asked for.
        backend: the backend that ran.
    """

    image: Tensor
    alpha: Tensor
    depth: Optional[Tensor]
    means2d: Tensor
    radii: Tensor
    weights: Optional[Tensor]
    backend: str

    def screen_grad(self) -> Optional[Tensor]:
        """[N, 2] d loss / d means2d (pixels) after backward, or None."""
        g = self.means2d.grad
        return None if g is None else g.reshape(-1, 2)

    @property
    def visibility(self) -> Tensor:
        """[N] bool: rendered in this view."""
        return self.radii > 0


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"renderer backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            from gaussian_renderer.gsplat_backend import gsplat_available

            return "gsplat" if gsplat_available() else "torch"
        return "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("the gsplat backend needs CUDA tensors; use --renderer torch on this device")
    return backend


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: Optional[int] = None,
    background: Optional[Tensor] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    rasterize_mode: str = "classic",
    backend: str = "auto",
    weight_masks: Optional[Tensor] = None,
    compute_weights: bool = False,
    tile_size: int = 16,
    max_elements: int = 1 << 22,
    antialiased_mask: Optional[Tensor] = None,
    with_depth: bool = True,
) -> RenderOutput:
    """Render N Gaussians into one camera.

    Args:
        means: [N, 3] world centres. quats: [N, 4] unit quaternions (wxyz).
        scales: [N, 3] standard deviations (activated). opacities: [N] in (0, 1).
        colors: [N, 3] colours, or [N, K, 3] SH coefficients when ``sh_degree`` is given
            (colour = max(SH(dir) + 0.5, 0), dir = centre − camera centre).
        viewmat: [4, 4] world-to-camera (OpenCV). K: [3, 3] pixel intrinsics.
        background: [3] colour behind the Gaussians (default black).
        near_plane, far_plane: depth range kept. eps2d: 2D low-pass added to the projected covariance.
        rasterize_mode: "classic" (3DGS) or "antialiased" (opacities compensated for the eps2d
            filter, so that small Gaussians are not enlarged by it; gsplat's option of that name).
        weight_masks: optional [K, H, W] pixel weights for the per-Gaussian weight sums.
        compute_weights: also return Σ_p α_i T_i per Gaussian.
        tile_size, max_elements: torch backend tiling (ignored by gsplat but tile_size).
        antialiased_mask: optional [N] bool: these Gaussians are drawn in "antialiased" mode and the
            others in "classic" (``rasterize_mode`` must be "classic"), in one pass, so that models
            made for either mode can be composited together — a trained 3DGS scene (classic) with
            generated objects (TRELLIS renders its Gaussians with Mip-Splatting's rasterizer, whose
            2D filter is the antialiased mode). The compensation ``sqrt(det Σ2d / det(Σ2d + eps2d I))``
            of those Gaussians is computed in PyTorch and multiplies their opacities before either
            backend rasterizes (differentiable).
        with_depth: also composite the expected depth (one more channel through the rasterizer;
            the training loop asks for it only when it has depth supervision).
    """
    n = means.shape[0]
    for name, t, shape in (("means", means, (n, 3)), ("quats", quats, (n, 4)), ("scales", scales, (n, 3)), ("opacities", opacities, (n,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if weight_masks is not None and tuple(weight_masks.shape[-2:]) != (height, width):
        raise ValueError(f"weight_masks must be [K, {height}, {width}], got {tuple(weight_masks.shape)}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    device = means.device
    if antialiased_mask is not None:
        opacities = _compensate_some(means, quats, scales, opacities, antialiased_mask, viewmat, K, width, height,
                                     near_plane, far_plane, eps2d, rasterize_mode)
    which = resolve_backend(backend, device)
    bg = torch.zeros(3, device=device) if background is None else background.to(device=device, dtype=means.dtype)

    if which == "gsplat":
        from gaussian_renderer.gsplat_backend import rasterize_gsplat

        out = rasterize_gsplat(
            means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree,
            near_plane, far_plane, eps2d, tile_size, weight_masks, compute_weights, rasterize_mode, with_depth,
        )
        rgb, depth, alpha = out["rgb"], out["depth"], out["alpha"]
        means2d, radii, weights = out["means2d"], out["radii"], out.get("weights")
    else:
        if sh_degree is not None:
            from utils.sh import eval_sh

            campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
            rgb_g = torch.clamp_min(eval_sh(sh_degree, colors, means - campos) + 0.5, 0.0)
        else:
            rgb_g = colors
        covars = torch_backend.quats_scales_to_covars(quats, scales)
        proj = torch_backend.project_gaussians(means, covars, opacities, viewmat, K, width, height, near_plane, far_plane, eps2d,
                                               antialiased=rasterize_mode == "antialiased")
        means2d = proj["means2d"]
        if means2d.requires_grad:
            means2d.retain_grad()
        feats = torch.cat([rgb_g, proj["depths"][:, None]], dim=-1) if with_depth else rgb_g
        img, alpha, weights = torch_backend.composite(
            means2d, proj["conics"], proj["opacities"], feats, proj["radii"], proj["depths"], width, height,
            tile=tile_size, max_elements=max_elements, weight_masks=weight_masks, compute_weights=compute_weights,
        )
        rgb = img[..., :3]
        depth = img[..., 3:4] / torch.clamp(alpha, min=1e-10) if with_depth else None
        radii = proj["radii"]
    image = rgb + (1.0 - alpha) * bg
    radii_max = radii.max(dim=-1).values if radii.dim() == 2 else radii
    return RenderOutput(
        image=image.permute(2, 0, 1),
        alpha=alpha.permute(2, 0, 1),
        depth=None if depth is None else depth.permute(2, 0, 1),
        means2d=means2d,
        radii=radii_max,
        weights=weights,
        backend=which,
    )


def _compensate_some(means, quats, scales, opacities, mask, viewmat, K, width, height, near, far, eps2d, mode) -> Tensor:
    """The opacities with the antialiased-mode compensation applied where ``mask`` is True."""
    if mode != "classic":
        raise ValueError(f"antialiased_mask needs rasterize_mode='classic' (the other Gaussians' mode), got {mode!r}")
    n = means.shape[0]
    if tuple(mask.shape) != (n,) or mask.dtype != torch.bool:
        raise ValueError(f"antialiased_mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
    idx = torch.nonzero(mask.to(means.device)).squeeze(1)
    if idx.numel() == 0:
        return opacities
    covars = torch_backend.quats_scales_to_covars(quats[idx], scales[idx])
    cov2d = torch_backend.project_covariances(means[idx], covars, viewmat, K, width, height, near, far)["cov2d"]
    comp = torch_backend.antialias_compensation(cov2d, eps2d)
    return opacities.index_put((idx,), opacities[idx] * comp.to(opacities.dtype))


def render(
    camera: "Camera",
    gaussians: "GaussianModel",
    background: Optional[Tensor] = None,
    *,
    sh_degree: Optional[int] = None,
    override_color: Optional[Tensor] = None,
    scale_modifier: float = 1.0,
    backend: str = "auto",
    **kwargs,
) -> RenderOutput:
    """Render a Gaussian model from a camera (see :func:`rasterize` for the outputs and kwargs).

    Args:
        sh_degree: SH degree used (default the model's ``active_sh_degree``).
        override_color: [N, 3] colours replacing the SH colours.
        scale_modifier: multiplies every scale (visualisation).
    """
    device = gaussians.device
    if override_color is not None:
        colors, degree = override_color, None
    else:
        degree = gaussians.active_sh_degree if sh_degree is None else sh_degree
        k = (degree + 1) ** 2  # only the coefficients in use go through the renderer
        sh0, shN = gaussians.params["sh0"], gaussians.params["shN"]
        colors = sh0 if k == 1 else torch.cat([sh0, shN[:, : k - 1]], dim=1)
    return rasterize(
        gaussians.means,
        gaussians.quats,
        gaussians.scales * scale_modifier,
        gaussians.opacities,
        colors,
        camera.viewmat_tensor(device),
        camera.K_tensor(device),
        camera.width,
        camera.height,
        sh_degree=degree,
        background=background,
        backend=backend,
        **kwargs,
    )


__all__ = ["BACKENDS", "RASTERIZE_MODES", "RenderOutput", "rasterize", "render", "resolve_backend"]
