"""Pure-PyTorch Gaussian rasterizer (any device, differentiable).

It follows the maths of the CUDA rasterizer (gsplat, "classic" and "antialiased" modes) so that
the two backends agree to float precision:

1. EWA projection: camera-space covariance ``W Σ Wᵀ`` pushed through the Jacobian of the
   perspective map (the camera-space x/y clamped to 1.3x the field of view), plus ``eps2d``
   on the diagonal of the 2D covariance (low-pass filter). In "antialiased" mode (Mip-Splatting's
   2D filter, gsplat's ``rasterize_mode="antialiased"``) the opacity is multiplied by
   ``sqrt(det Σ2d / det(Σ2d + eps2d I))`` so that the filter blurs a small Gaussian without
   enlarging its footprint (in "classic" mode a sub-pixel Gaussian grows by the filter).
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
    """[N, 4] quaternions (wxyz, normalised here as gsplat does, so that gradients agree) and
    [N, 3] scales -> [N, 3, 3] covariances R S Sᵀ Rᵀ."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
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


def project_covariances(
    means: Tensor,
    covars: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
) -> dict[str, Tensor]:
    """EWA projection of N Gaussians' centres and covariances into one pinhole camera (no filter).

    Args:
        means: [N, 3] world centres. covars: [N, 3, 3] world covariances.
        viewmat: [4, 4] world-to-camera (OpenCV). K: [3, 3] intrinsics.

    Returns:
        dict with ``means2d`` [N, 2] pixels, ``cov2d`` [N, 2, 2] (before ``eps2d``), ``depths`` [N]
        camera z and ``valid`` [N] bool (``near < z < far``).
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
    return {"means2d": means2d, "cov2d": cov2d, "depths": tz, "valid": valid}


def antialias_compensation(cov2d: Tensor, eps2d: float) -> Tensor:
    """[N] Mip-Splatting's opacity factor ``sqrt(det Σ2d / det(Σ2d + eps2d I))`` for [N, 2, 2] ``cov2d``:
    the ``eps2d`` filter then blurs a Gaussian without enlarging its footprint (0 where undefined)."""
    det_orig = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    a = cov2d[:, 0, 0] + eps2d
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    ok = det > 0
    return torch.sqrt(torch.clamp(det_orig / torch.where(ok, det, torch.ones_like(det)), min=0.0)) * ok


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
    antialiased: bool = False,
) -> dict[str, Tensor]:
    """EWA projection of N Gaussians into one pinhole camera.

    Args:
        means: [N, 3] world centres. covars: [N, 3, 3] world covariances.
        opacities: [N] activated opacities (used for the opacity-aware screen radius).
        viewmat: [4, 4] world-to-camera (OpenCV). K: [3, 3] intrinsics.
        antialiased: compensate the opacity for the ``eps2d`` filter (see the module docstring).

    Returns:
        dict with ``means2d`` [N, 2] pixels, ``conics`` [N, 3] (upper triangle of the inverse
        2D covariance: a, b, c), ``depths`` [N] camera z, ``radii`` [N, 2] int (0 = culled),
        ``opacities`` [N] the opacities to composite with (compensated in antialiased mode).
    """
    pc = project_covariances(means, covars, viewmat, K, width, height, near, far)
    means2d, cov2d, tz, valid = pc["means2d"], pc["cov2d"], pc["depths"], pc["valid"]

    a = cov2d[:, 0, 0] + eps2d
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + eps2d
    det = a * c - b * b
    valid = valid & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    if antialiased:
        opacities = opacities * antialias_compensation(cov2d, eps2d)

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
    return {"means2d": means2d, "conics": conics, "depths": tz, "radii": radii, "opacities": opacities}


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


def _alpha(xy: Tensor, con: Tensor, op: Tensor, pix: Tensor):
    """Per pixel x Gaussian slot of a tile batch: offsets and α.

    Shapes: xy [T, L, 2], con [T, L, 3], op [T, L], pix [T, P, 2] -> dx, dy, α [T, P, L], and
    ``unclamped`` (α below its maximum, where it has a derivative). Padding slots carry opacity 0;
    the conics are positive definite, so σ ≥ 0 and α < 1/255 is the only cut needed.
    """
    dx = xy[:, None, :, 0] - pix[:, :, None, 0]
    dy = xy[:, None, :, 1] - pix[:, :, None, 1]
    half_a, b, half_c = 0.5 * con[:, None, :, 0], con[:, None, :, 1], 0.5 * con[:, None, :, 2]
    sigma = dx * (half_a * dx + b * dy) + half_c * dy * dy
    raw = op[:, None, :] * torch.exp(-sigma)
    unclamped = raw < MAX_ALPHA
    alpha = raw.clamp(max=MAX_ALPHA) * (raw >= ALPHA_THRESHOLD)
    return dx, dy, alpha, unclamped


LOG_MIN_T = math.log(MIN_TRANSMITTANCE)


def _block_weights(alpha: Tensor, carry: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back weights of one block of slots, given the log-transmittance ``carry`` [T, P]
    before the block, with the rasterizer's early stop (a slot that would bring T to ≤ 1e-4 and
    every later one are dropped).

    Returns (T before each slot [T, P, L], α with dropped slots zeroed, carry after the block)."""
    log_1ma = torch.log1p(-alpha)
    log_incl = carry[..., None] + torch.cumsum(log_1ma, dim=-1)
    keep = log_incl > LOG_MIN_T
    alpha = alpha * keep
    return torch.exp(log_incl - log_1ma), alpha, carry + (log_1ma * keep).sum(-1)


class _Sweep:
    """Front-to-back sweep over the depth-sorted slots of a batch of tiles, ``block`` slots at a time.

    Tiles leave the sweep when they have no more slots or all their pixels are saturated
    (T ≤ 1e-4). Active tiles are kept compacted in contiguous buffers: per-slot tensors advance
    by slicing (views), and rows are gathered only when tiles leave, so the bookkeeping costs far
    less than the maths. Forward and backward run the same sweep, so they take the same decisions.

    Args:
        counts: [T] valid slots per tile. block: slots per step.
        slots: per-slot inputs, name -> [T, L, ...]; ``view`` gives the current block.
        outs: per-slot outputs, name -> [T, L, ...] (zeros); the current block is written through
            ``view["out_<name>"]`` and lands in these tensors.
        state: per-tile state, name -> [T, ...]; must contain ``carry`` (log transmittance [T, P]);
            read and replace entries through ``sweep.state`` inside the loop.
        on_retire: called with (tile indices, their state) when tiles leave.
        compact_below: compact the buffers once fewer than this fraction of the tiles are alive.
    """

    def __init__(self, counts: Tensor, block: int, slots: dict, outs: dict, state: dict, on_retire, compact_below: float = 0.75) -> None:
        self.block = block
        self.compact_below = compact_below
        self.act = torch.arange(counts.numel(), device=counts.device)
        self.counts = counts
        self.slots = slots
        self.targets = outs
        self.bufs = outs  # the out-buffers of the active rows; the targets themselves until a compaction
        self.buf_rows: Optional[Tensor] = None  # target rows of the buffers (None: buffers are the targets)
        self.buf_col0 = 0  # target column of the buffers' first column
        self.state = state
        self.on_retire = on_retire
        self.col = 0

    def _flush(self) -> None:
        if self.buf_rows is None:
            return
        n = self.col - self.buf_col0
        for k, buf in self.bufs.items():
            self.targets[k][self.buf_rows, self.buf_col0 : self.col] = buf[:, :n]

    def __iter__(self):
        b = self.block
        L = int(self.counts.max()) if self.counts.numel() else 0
        while self.col < L:
            c = self.col - self.buf_col0
            view = {k: v[:, :b] for k, v in self.slots.items()}
            view.update({f"out_{k}": v[:, c : c + b] for k, v in self.bufs.items()})
            yield view
            self.col += b
            self.slots = {k: v[:, b:] for k, v in self.slots.items()}
            self.counts = self.counts - b
            alive = (self.counts > 0) & (self.state["carry"] > LOG_MIN_T).any(-1)
            n_alive = int(alive.sum())
            if n_alive > self.compact_below * self.act.numel():
                continue  # finished tiles ride along (their α is masked to 0) until enough have finished
            done = ~alive
            self.on_retire(self.act[done], {k: v[done] for k, v in self.state.items()})
            self._flush()
            keep = torch.nonzero(alive).squeeze(1)
            self.act = self.act[keep]
            if keep.numel() == 0:
                return
            self.slots = {k: v[keep] for k, v in self.slots.items()}
            self.state = {k: v[keep] for k, v in self.state.items()}
            self.counts = self.counts[keep]
            self.bufs = {k: v.new_zeros((keep.numel(), v.shape[1] - self.col) + v.shape[2:]) for k, v in self.targets.items()}
            self.buf_rows = self.act
            self.buf_col0 = self.col
        if self.act.numel():
            self.on_retire(self.act, self.state)
            self._flush()


def _unpack(gp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split packed slot attributes [..., 6 + D] into (xy, conic, opacity, features)."""
    return gp[..., 0:2], gp[..., 2:5], gp[..., 5], gp[..., 6:]


class _TileComposite(torch.autograd.Function):
    """Composite a batch of tiles front to back, with the analytic backward pass of 3DGS.

    For a pixel with slots i (front to back), w_i = α_i T_i, C = Σ w_i f_i, A = Σ w_i.
    Given g_C = dL/dC and g_A = dL/dA, with u_i = g_C·f_i + g_A:

        dL/df_i = w_i g_C
        dL/dα_i = T_i u_i − (Σ_{j>i} w_j u_j) / (1 − α_i)
        α_i = o_i exp(−σ_i):  dL/do_i = dL/dα_i · α_i / o_i,  dL/dσ_i = −dL/dα_i · α_i
        σ = ½(a dx² + c dy²) + b dx dy with dx = x_i − p_x, dy = y_i − p_y.

    Slots are visited by a :class:`_Sweep` (blocks along depth, saturated tiles leave early);
    the backward recomputes α instead of storing it.

    Inputs: gp [T, L, 6 + D] the slots' packed attributes (x, y | conic a, b, c | opacity |
    features), counts [T] (valid slots per tile), pix [T, P, 2], masks [K, T, P] or None, block.
    Outputs: features [T, P, D], alpha [T, P] and, with masks, the weight sums Σ_p w M_k per slot
    [K, T, L] (no gradient). The gradient of ``gp`` comes back packed the same way.
    """

    @staticmethod
    def forward(ctx, gp, counts, pix, masks, block):
        xy, con, op, feat = _unpack(gp)
        Tn, P = pix.shape[:2]
        out_feat = feat.new_zeros(Tn, P, feat.shape[2])
        out_alpha = feat.new_zeros(Tn, P)
        outs = {} if masks is None else {"per": torch.zeros(Tn, feat.shape[1], masks.shape[0], device=feat.device)}
        state = {"carry": feat.new_zeros(Tn, P), "pix": pix, "feat": torch.zeros_like(out_feat), "alpha": torch.zeros_like(out_alpha)}
        if masks is not None:
            state["masks"] = masks.permute(1, 2, 0).float()  # [T, P, K]

        def retire(rows, st):
            out_feat[rows] = st["feat"]
            out_alpha[rows] = st["alpha"]

        sweep = _Sweep(counts, block, {"gp": gp}, outs, state, retire)
        for v in sweep:
            st = sweep.state
            v["xy"], v["con"], v["op"], v["feat"] = _unpack(v["gp"])
            alpha = _alpha(v["xy"], v["con"], v["op"], st["pix"])[2]
            T, alpha, st["carry"] = _block_weights(alpha, st["carry"])
            w = alpha * T
            st["feat"] += torch.bmm(w, v["feat"])
            st["alpha"] += w.sum(-1)
            if masks is not None:
                v["out_per"].copy_(torch.bmm(w.float().transpose(1, 2), st["masks"]))
        per = None
        if masks is not None:
            per = outs["per"].permute(2, 0, 1)
            ctx.mark_non_differentiable(per)
        ctx.block = block
        ctx.save_for_backward(gp, counts, pix, out_feat, out_alpha)
        return out_feat, out_alpha, per

    @staticmethod
    def backward(ctx, g_feat, g_alpha, _g_per):
        gp, counts, pix, out_feat, out_alpha = ctx.saved_tensors
        xy, con, op, feat = _unpack(gp)
        Tn, P = pix.shape[:2]
        grads = {"gp": torch.zeros_like(gp)}
        # Σ_j w_j u_j over all slots of a pixel; the sweep turns it into Σ_{j>i}
        remaining = (g_feat * out_feat).sum(-1) + g_alpha * out_alpha
        state = {"carry": feat.new_zeros(Tn, P), "pix": pix, "g_feat": g_feat.contiguous(), "g_alpha": g_alpha, "remaining": remaining}
        sweep = _Sweep(counts, ctx.block, {"gp": gp}, grads, state, lambda rows, st: None)
        with torch.no_grad():
            for v in sweep:
                st = sweep.state
                v["xy"], v["con"], v["op"], v["feat"] = _unpack(v["gp"])
                con_b = v["con"]
                dx, dy, alpha, unclamped = _alpha(v["xy"], con_b, v["op"], st["pix"])
                T, alpha, st["carry"] = _block_weights(alpha, st["carry"])
                w = alpha * T
                u = torch.bmm(st["g_feat"], v["feat"].transpose(1, 2)) + st["g_alpha"][..., None]  # [t, P, b]
                after = st["remaining"][..., None] - torch.cumsum(w * u, -1)
                st["remaining"] = after[..., -1]
                g_a = torch.where(unclamped & (alpha > 0), T * u - after / (1.0 - alpha), torch.zeros_like(u))
                g_sigma = -g_a * alpha
                gs_dx, gs_dy = g_sigma * dx, g_sigma * dy
                a, b, c = con_b[:, None, :, 0], con_b[:, None, :, 1], con_b[:, None, :, 2]
                out = v["out_gp"]
                out[..., 0] = (gs_dx * a + gs_dy * b).sum(1)
                out[..., 1] = (gs_dy * c + gs_dx * b).sum(1)
                out[..., 2] = 0.5 * (gs_dx * dx).sum(1)
                out[..., 3] = (gs_dx * dy).sum(1)
                out[..., 4] = 0.5 * (gs_dy * dy).sum(1)
                out[..., 5] = (g_a * alpha).sum(1) / v["op"].clamp(min=1e-12)
                out[..., 6:] = torch.bmm(w.transpose(1, 2), st["g_feat"])
        return grads["gp"], None, None, None, None


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
    block: int = 32,
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Alpha-composite projected Gaussians front to back.

    Args:
        means2d: [N, 2]; conics: [N, 3]; opacities: [N]; features: [N, D] (colour, depth, ...);
        radii: [N, 2] (0 = culled); depths: [N] sort keys.
        max_elements: cap on tiles x pixels x Gaussians held in memory at once.
        block: Gaussians per tile composited per pass along depth (saturated tiles stop early).
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
        # one packed gather per batch (its backward is a single index_add)
        packed = torch.cat([means2d, conics, opacities[:, None], features], dim=-1)
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
            nt = max(1, min(n_tiles - i, max_elements // max(1, P * min(L, block))))
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
            masks_chunk = tiled_masks[:, tiles] if gweights is not None else None
            gp = packed.index_select(0, g.reshape(-1)).reshape(T, L, -1)
            gp = gp * torch.cat([torch.ones_like(gp[..., :5]), valid[..., None].to(dtype), torch.ones_like(gp[..., 6:])], -1)
            feat_c, alpha_c, per = _TileComposite.apply(gp, counts[tiles], pix, masks_chunk, block)
            feat_out_rows.append(feat_c)
            alpha_out_rows.append(alpha_c)
            if per is not None:
                gweights.index_add_(1, g.reshape(-1), per.reshape(per.shape[0], -1))
            rows.append(tiles)
        if rows:
            rows_t = torch.cat(rows)
            out_feat = out_feat.index_put((rows_t,), torch.cat(feat_out_rows))
            out_alpha = out_alpha.index_put((rows_t,), torch.cat(alpha_out_rows))

    img = out_feat.reshape(tiles_y, tiles_x, tile, tile, D).permute(0, 2, 1, 3, 4).reshape(tiles_y * tile, tiles_x * tile, D)
    acc = out_alpha.reshape(tiles_y, tiles_x, tile, tile).permute(0, 2, 1, 3).reshape(tiles_y * tile, tiles_x * tile, 1)
    if squeeze_weights:
        gweights = gweights[0]
    return img[:height, :width], acc[:height, :width], gweights
