"""Pure-PyTorch Gaussian rasterizer (any device, differentiable).

It follows the maths of the CUDA rasterizer (gsplat, "classic" mode) so that the two backends
agree to float precision:

1. EWA projection: camera-space covariance ``W Σ Wᵀ`` pushed through the Jacobian of the
   perspective map (the camera-space x/y clamped to 1.3x the field of view), plus ``eps2d``
   on the diagonal of the 2D covariance (low-pass filter).
2. Per Gaussian: an opacity-aware screen box ``extend = min(3.33, sqrt(2 ln(o / (1/255))))``
   standard deviations; Gaussians behind ``near``/beyond ``far``, outside the image or with
   o < 1/255 are culled (radius 0).
3. Per pixel (centre at +0.5), front to back by camera depth:
   ``α_i = min(0.999, o_i exp(-½ dᵀ Σ'^{-1} d))`` (skipped when < 1/255),
   ``T_i = Π_{j<i} (1 - α_j)``, stop before the Gaussian that would bring T to ≤ 1e-4;
   ``C = Σ_i c_i α_i T_i + T_final · background``.

Compositing works tile by tile (16x16 pixels): Gaussian/tile pairs are sorted by tile and
depth, tiles with similar pair counts are batched and padded, and each batch is evaluated as
dense [tiles, pixels, gaussians] tensors whose size is capped by ``max_elements`` — memory
stays bounded whatever the image size, and autograd provides the backward pass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
MIN_TRANSMITTANCE = 1e-4
MAX_EXTEND = 3.33


def quats_scales_to_covars(quats: Tensor, scales: Tensor) -> Tensor:
    """[N, 4] unit quaternions (wxyz) and [N, 3] scales -> [N, 3, 3] covariances R S Sᵀ Rᵀ."""
    w, x, y, z = quats.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    opacities: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> dict[str, Tensor]:
    """EWA projection of N Gaussians into one pinhole camera.

    Args:
        means: [N, 3] world centres. covars: [N, 3, 3] world covariances.
        opacities: [N] activated opacities (used for the opacity-aware screen radius).
        viewmat: [4, 4] world-to-camera (OpenCV). K: [3, 3] intrinsics.

    Returns:
        dict with ``means2d`` [N, 2] pixels, ``conics`` [N, 3] (upper triangle of the inverse
        2D covariance: a, b, c), ``depths`` [N] camera z, ``radii`` [N, 2] int (0 = culled).
    """
    R = viewmat[:3, :3]
    t = viewmat[:3, 3]
    mc = means @ R.T + t
    cov_c = R @ covars @ R.T
    tx, ty, tz = mc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    valid = (tz > near) & (tz < far)
    tz_safe = torch.where(valid, tz, torch.ones_like(tz))

    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    txc = tz_safe * torch.clamp(tx / tz_safe, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz_safe * torch.clamp(ty / tz_safe, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(tz)
    J = torch.stack(
        [fx / tz_safe, zeros, -fx * txc / tz_safe**2, zeros, fy / tz_safe, -fy * tyc / tz_safe**2], dim=-1
    ).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * tx / tz_safe + cx, fy * ty / tz_safe + cy], dim=-1)

    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    with torch.no_grad():
        op = opacities.detach()
        valid = valid & (op >= ALPHA_THRESHOLD)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(torch.clamp(op, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=MAX_EXTEND)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp(a.detach(), min=0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp(c.detach(), min=0)))
        m2 = means2d.detach()
        inside = (m2[:, 0] + rx > 0) & (m2[:, 0] - rx < width) & (m2[:, 1] + ry > 0) & (m2[:, 1] - ry < height)
        valid = valid & inside & (rx > 0) & (ry > 0) & torch.isfinite(m2).all(-1)
        radii = torch.stack([rx, ry], dim=-1).to(torch.int32) * valid[:, None].to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": tz, "radii": radii}


def _tile_pairs(means2d: Tensor, radii: Tensor, depths: Tensor, tile: int, tiles_x: int, tiles_y: int):
    """Gaussian/tile intersections sorted by (tile, depth).

    Returns (gaussian ids [M], tile ids [M]) as int64, in that order.
    """
    dev = means2d.device
    vis = torch.nonzero(radii[:, 0] > 0).squeeze(1)
    if vis.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    m = means2d.detach()[vis]
    r = radii[vis].to(m.dtype)
    x0 = torch.clamp(torch.floor((m[:, 0] - r[:, 0]) / tile), 0, tiles_x).long()
    x1 = torch.clamp(torch.ceil((m[:, 0] + r[:, 0]) / tile), 0, tiles_x).long()
    y0 = torch.clamp(torch.floor((m[:, 1] - r[:, 1]) / tile), 0, tiles_y).long()
    y1 = torch.clamp(torch.ceil((m[:, 1] + r[:, 1]) / tile), 0, tiles_y).long()
    wx = (x1 - x0).clamp(min=0)
    wy = (y1 - y0).clamp(min=0)
    counts = wx * wy
    keep = counts > 0
    vis, x0, y0, wx, counts = vis[keep], x0[keep], y0[keep], wx[keep], counts[keep]
    if vis.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    owner = torch.repeat_interleave(torch.arange(vis.numel(), device=dev), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(owner.numel(), device=dev) - start[owner]
    tx = x0[owner] + local % wx[owner]
    ty = y0[owner] + local // wx[owner]
    tile_id = ty * tiles_x + tx
    gid = vis[owner]
    depth_rank = torch.empty(depths.numel(), dtype=torch.long, device=dev)
    depth_rank[torch.argsort(depths.detach())] = torch.arange(depths.numel(), device=dev)
    key = tile_id * depths.numel() + depth_rank[gid]
    order = torch.argsort(key)
    return gid[order], tile_id[order]


def composite(
    means2d: Tensor,
    conics: Tensor,
    opacities: Tensor,
    features: Tensor,
    radii: Tensor,
    depths: Tensor,
    width: int,
    height: int,
    tile: int = 16,
    max_elements: int = 1 << 22,
    weight_masks: Optional[Tensor] = None,
    compute_weights: bool = False,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Alpha-composite projected Gaussians front to back.

    Args:
        means2d: [N, 2]; conics: [N, 3]; opacities: [N]; features: [N, D] (colour, depth, ...);
        radii: [N, 2] (0 = culled); depths: [N] sort keys.
        max_elements: cap on tiles x pixels x Gaussians evaluated at once.
        weight_masks: optional [K, H, W] pixel weights; returns Σ_p α_i T_i M_k(p) per Gaussian.
        compute_weights: return Σ_p α_i T_i per Gaussian even without masks.

    Returns:
        (features [H, W, D] without background, alpha [H, W, 1],
         per-Gaussian weights [N] (or [K, N] with masks) or None).
    """
    dev = means2d.device
    dtype = features.dtype
    D = features.shape[1]
    N = means2d.shape[0]
    tiles_x = math.ceil(width / tile)
    tiles_y = math.ceil(height / tile)
    n_tiles = tiles_x * tiles_y
    P = tile * tile
    out_feat = torch.zeros(n_tiles, P, D, device=dev, dtype=dtype)
    out_alpha = torch.zeros(n_tiles, P, device=dev, dtype=dtype)
    squeeze_weights = weight_masks is None and compute_weights
    if squeeze_weights:
        # pixels of edge tiles that lie outside the image must not count
        weight_masks = torch.ones(1, height, width, device=dev)
    if weight_masks is not None:
        k_masks = weight_masks.shape[0]
        gweights = torch.zeros(k_masks, N, device=dev, dtype=torch.float32)
        # [K, tiles_y*tile, tiles_x*tile] -> [K, n_tiles, P]
        padded = torch.zeros(k_masks, tiles_y * tile, tiles_x * tile, device=dev, dtype=torch.float32)
        padded[:, :height, :width] = weight_masks.to(dev, torch.float32)
        tiled_masks = padded.reshape(k_masks, tiles_y, tile, tiles_x, tile).permute(0, 1, 3, 2, 4).reshape(k_masks, n_tiles, P)
    else:
        gweights = None

    gid, tid = _tile_pairs(means2d, radii, depths, tile, tiles_x, tiles_y)
    if gid.numel() > 0:
        counts = torch.bincount(tid, minlength=n_tiles)
        offsets = torch.cumsum(counts, 0) - counts
        tile_order = torch.argsort(counts, descending=True)
        counts_sorted = counts[tile_order].tolist()
        # local pixel centres of a tile
        ly, lx = torch.meshgrid(torch.arange(tile, device=dev), torch.arange(tile, device=dev), indexing="ij")
        local_xy = torch.stack([lx.reshape(-1), ly.reshape(-1)], -1).to(dtype) + 0.5
        feat_out_rows, alpha_out_rows, rows = [], [], []
        i = 0
        while i < n_tiles and counts_sorted[i] > 0:
            L = counts_sorted[i]
            nt = max(1, min(n_tiles - i, max_elements // max(1, P * L)))
            # only tiles with at least one Gaussian
            j = i
            while j < i + nt and counts_sorted[j] > 0:
                j += 1
            tiles = tile_order[i:j]
            i = j
            T = tiles.numel()
            ar = torch.arange(L, device=dev)
            idx = offsets[tiles][:, None] + ar[None, :]
            valid = ar[None, :] < counts[tiles][:, None]
            idx = torch.where(valid, idx, torch.zeros_like(idx))
            g = gid[idx]  # [T, L]
            origin = torch.stack([(tiles % tiles_x) * tile, (tiles // tiles_x) * tile], -1).to(dtype)
            pix = origin[:, None, :] + local_xy[None]  # [T, P, 2]
            xy = means2d[g]  # [T, L, 2]
            con = conics[g]  # [T, L, 3]
            dx = xy[:, None, :, 0] - pix[:, :, None, 0]  # [T, P, L]
            dy = xy[:, None, :, 1] - pix[:, :, None, 1]
            sigma = 0.5 * (con[:, None, :, 0] * dx * dx + con[:, None, :, 2] * dy * dy) + con[:, None, :, 1] * dx * dy
            alpha = torch.clamp(opacities[g][:, None, :] * torch.exp(-sigma), max=MAX_ALPHA)
            ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & valid[:, None, :]
            alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
            log_1ma = torch.log1p(-alpha)
            log_T_incl = torch.cumsum(log_1ma, dim=-1)
            keep = (log_T_incl > math.log(MIN_TRANSMITTANCE)).detach()
            w = alpha * torch.exp(log_T_incl - log_1ma) * keep  # α_i T_i
            feat_out_rows.append(torch.einsum("tpl,tld->tpd", w, features[g]))
            alpha_out_rows.append(w.sum(-1))
            rows.append(tiles)
            if gweights is not None:
                per = torch.einsum("tpl,ktp->ktl", w.detach().float(), tiled_masks[:, tiles])
                gweights.index_add_(1, g.reshape(-1), per.reshape(k_masks, -1))
        if rows:
            rows_t = torch.cat(rows)
            out_feat = out_feat.index_put((rows_t,), torch.cat(feat_out_rows))
            out_alpha = out_alpha.index_put((rows_t,), torch.cat(alpha_out_rows))

    img = out_feat.reshape(tiles_y, tiles_x, tile, tile, D).permute(0, 2, 1, 3, 4).reshape(tiles_y * tile, tiles_x * tile, D)
    acc = out_alpha.reshape(tiles_y, tiles_x, tile, tile).permute(0, 2, 1, 3).reshape(tiles_y * tile, tiles_x * tile, 1)
    if squeeze_weights:
        gweights = gweights[0]
    return img[:height, :width], acc[:height, :width], gweights
