"""CUDA backend: gsplat's rasterizer (PyPI ``gsplat``; JIT-compiles its kernels on first use).

Only called with CUDA tensors. gsplat 1.5.3 asserts when ``packed=True`` is combined with
``backgrounds`` (upstream issue #764), so we rasterize unpacked and composite the background
ourselves. Per-Gaussian compositing weights come from ``rasterize_to_indices_in_range``,
which lists every (Gaussian, pixel) pair that contributes; α and T are then recomputed for
those pairs with the same formula as the kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gaussian_renderer.torch_backend import ALPHA_THRESHOLD, MAX_ALPHA


def _import_gsplat():
    try:
        import gsplat
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the CUDA renderer needs gsplat: `pip install gsplat` (or use --renderer torch)") from exc
    return gsplat


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    sh_degree: Optional[int],
    near_plane: float,
    far_plane: float,
    eps2d: float,
    tile_size: int = 16,
    weight_masks: Optional[Tensor] = None,
    compute_weights: bool = False,
    rasterize_mode: str = "classic",
    with_depth: bool = True,
) -> dict[str, Tensor]:
    """See :func:`gaussian_renderer.rasterize`. Returns a dict of raw outputs (no background).

    SH colours are evaluated here (``gsplat.spherical_harmonics``, clamped like gsplat) rather
    than by ``gsplat.rasterization``, which inverts the view matrix on the GPU for the camera
    centre every call (a cuSOLVER call and a host-device sync per render); the centre is
    ``-R^T t``. Same colours; gsplat masks culled Gaussians, whose colours get no gradient anyway.
    """
    gsplat = _import_gsplat()
    if sh_degree is not None:
        campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
        colors = torch.clamp_min(gsplat.spherical_harmonics(sh_degree, means - campos, colors) + 0.5, 0.0)
    render, alphas, meta = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmat[None],
        Ks=K[None],
        width=width,
        height=height,
        near_plane=near_plane,
        far_plane=far_plane,
        eps2d=eps2d,
        sh_degree=None,
        packed=False,
        tile_size=tile_size,
        render_mode="RGB+ED" if with_depth else "RGB",
        rasterize_mode=rasterize_mode,
    )
    if meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    out = {
        "rgb": render[0, ..., :3],
        "depth": render[0, ..., 3:4] if with_depth else None,
        "alpha": alphas[0],
        "means2d": meta["means2d"],
        "radii": meta["radii"][0],
        "meta": meta,
    }
    if weight_masks is not None or compute_weights:
        masks = weight_masks if weight_masks is not None else torch.ones(1, height, width, device=means.device)
        w = gaussian_weights_gsplat(meta, masks, width, height, means.shape[0])
        out["weights"] = w if weight_masks is not None else w[0]
    return out


@torch.no_grad()
def gaussian_weights_gsplat(meta: dict, masks: Tensor, width: int, height: int, n: int) -> Tensor:
    """Σ_p α_i(p) T_i(p) M_k(p) for every Gaussian i and mask k: [K, N]."""
    _import_gsplat()
    from gsplat.cuda._wrapper import rasterize_to_indices_in_range

    means2d = meta["means2d"].reshape(-1, 2)
    conics = meta["conics"].reshape(-1, 3)
    opac = meta["opacities"].reshape(-1)
    depths = meta["depths"].reshape(-1)
    trans = torch.ones(1, height, width, device=means2d.device)
    gids, pids, _ = rasterize_to_indices_in_range(
        0,
        2**30,
        trans,
        meta["means2d"].reshape(1, -1, 2),
        meta["conics"].reshape(1, -1, 3),
        meta["opacities"].reshape(1, -1),
        width,
        height,
        meta["tile_size"],
        meta["isect_offsets"],
        meta["flatten_ids"],
    )
    gids = gids.long()
    pids = pids.long()
    k = masks.shape[0]
    result = torch.zeros(k, n, device=means2d.device)
    if gids.numel() == 0:
        return result
    px = (pids % width).float() + 0.5
    py = (pids // width).float() + 0.5
    d = means2d[gids] - torch.stack([px, py], -1)
    con = conics[gids]
    sigma = 0.5 * (con[:, 0] * d[:, 0] ** 2 + con[:, 2] * d[:, 1] ** 2) + con[:, 1] * d[:, 0] * d[:, 1]
    alpha = torch.clamp(opac[gids] * torch.exp(-sigma), max=MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    # front-to-back order within each pixel, then a segmented exclusive product of (1 - α)
    rank = torch.empty_like(depths, dtype=torch.long)
    rank[torch.argsort(depths)] = torch.arange(depths.numel(), device=depths.device)
    order = torch.argsort(pids * depths.numel() + rank[gids])
    gids, pids, alpha = gids[order], pids[order], alpha[order]
    lg = torch.log1p(-alpha.double())
    cs = torch.cumsum(lg, 0)
    first = torch.ones_like(pids, dtype=torch.bool)
    first[1:] = pids[1:] != pids[:-1]
    seg_start = torch.cummax(torch.where(first, torch.arange(pids.numel(), device=pids.device), torch.zeros_like(pids)), 0).values
    base = cs[seg_start] - lg[seg_start]
    T = torch.exp(cs - lg - base).float()
    w = alpha * T
    flat_masks = masks.reshape(k, -1).float()
    result.index_add_(1, gids % n, w[None] * flat_masks[:, pids])
    return result


def gsplat_available() -> bool:
    try:
        _import_gsplat()
    except ImportError:
        return False
    return True


__all__ = ["rasterize_gsplat", "gaussian_weights_gsplat", "gsplat_available"]
