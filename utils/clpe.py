"""Closed-loop pose estimation (stage 7): put a proxy into the scene with 9 degrees of freedom.

The proxy P comes in its generator's canonical frame; the segmented object O (the trained
scene's Gaussians of that object) is incomplete but in the right place. The result is ONE 4x4
affine map ``M`` (proxy -> world, ``x_w = A x_p + t``) that is applied exactly to the Gaussians
(covariances ``A Sigma A^T`` re-decomposed, :func:`utils.geometry.transform_gaussians`).

Method (SPEC §4.7; the original's behaviour and bugs are in reference §8):

1. Coarse (:func:`coarse_init`): initial scale from robust PCA extents of both centre clouds
   (:func:`utils.registration.robust_extent`), a deterministic well-spread rotation set
   (:func:`utils.registration.well_spread_rotations`) refined by ICP about the centroids and scored
   in both directions (:func:`utils.registration.multi_start_icp`), so that a proxy shrunk inside
   the degraded object does not win. Symmetric shapes fit in several rotations, so a few training
   views are also matched against renders of the proxy in its own frame from virtual viewpoints
   (:func:`appearance_pairs`); those 3D pairs give one more start and rank the near-best starts.
2. Closed loop, ``num_iterations`` rounds; round ``it`` uses the training cameras with index
   ``it mod l, it mod l + l, ...`` (``l = cam_list_interval``). For each camera
   (:func:`view_correspondences`):

   * the window: the box of the real mask united with the box of the projected proxy, enlarged by
     ``crop_margin`` and clipped to the image; its camera is ``camera.cropped(window)`` (per-camera
     intrinsics, principal point shifted by the crop offset);
   * the real crop (RGB x mask, black elsewhere) and the proxy render of that window camera
     (``proxy_rasterize_mode``: antialiased, so that small splats do not draw it fatter); the
     depth of the real side is the rendered depth of O, of the proxy side the rendered depth of P;
   * both crops are resized by one factor so that their long side is within
     [``match_min_size``, ``match_max_size``] and matched; match positions are scaled back to the
     window's pixels (exactly: one factor per axis) and lifted to 3D with the depth at their pixel
     (rejected off the silhouette and on depth edges) through the window camera.

   The pairs of all cameras give a solve from proxy-side points B to real-side points A: a RANSAC
   similarity (:func:`utils.alignment.ransac_similarity`), or in ``opt_shape_iterations`` the robust
   anisotropic fit ``A ~ R F^T diag(s) F B + t`` (:func:`utils.alignment.fit_anisotropic`, scales
   bounded). The correction T is composed on the left: ``M <- T M``; the proxy of the next round is
   the ORIGINAL proxy mapped by the new M (no accumulation of rounding errors). A round with fewer
   than ``min_matches`` usable pairs (or whose solver fails) is skipped with a warning. The loop stops
   early when a correction is below the convergence tolerances and no shape round is left.

Everything here is numpy plus injected callables: ``render(camera, gaussians, role)`` (role
``"proxy"`` or ``"object"``: the script renders the proxy with ``proxy_rasterize_mode``) returns numpy
``(rgb [H, W, 3] float in [0, 1], alpha [H, W], depth [H, W])`` where depth is the depth of the
first surface (:func:`sharpen_opacities` explains why not the plain expected depth), and ``matcher.match`` follows
:class:`utils.matching.Matcher`, so the loop is tested with the CPU renderer and any matcher.

Pixel convention: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, centre ``(j + 0.5, i + 0.5)``
(the renderer's); a window camera of ``[x0, x0 + w) x [y0, y0 + h)`` has ``cx' = cx - x0``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from scene.cameras import Camera
from utils.alignment import apply_matrix, as_matrix, fit_anisotropic, polar_rotation_np, ransac_similarity
from utils.arguments import check_options, opt
from utils.matching import inside_mask
from utils.registration import (SCORE_DISTANCE_FACTOR, multi_start_icp, robust_extent, rotation_angle_between,
                                well_spread_rotations)
from utils.views import erode, mask_bbox

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------
@dataclass
class AlignmentParams:
    """Stage 7 options (the loop schedule defaults come from D/description.yml)."""

    num_iterations: int = opt(0, "closed-loop rounds (0 = num_iterations of description.yml, else 6)")
    opt_shape_iterations: list[int] = opt([], "rounds (0-based) solved with the anisotropic 9-DoF fit instead of a similarity "
                                              "(default: opt_shape_iterations of description.yml, else 3 4)")
    cam_list_interval: int = opt(0, "round i uses the training cameras i, i+l, i+2l, ... (0 = cam_list_interval of "
                                    "description.yml when it is given, else ceil(#train / cameras_per_round))")
    cameras_per_round: int = opt(15, "target cameras per round when cam_list_interval comes from neither option nor description.yml")
    num_rotations: int = opt(64, "start rotations of the coarse multi-start ICP (deterministic well-spread set, identity first)")
    extent_percentiles: list[float] = opt([2.0, 98.0], "percentiles (lo hi) of the robust PCA extents that give the initial scale")
    icp_distance: float = opt(0.16, "ICP correspondence distance as a fraction of the object's mean robust extent "
                                    "(the original's 1.6 x delta with delta = extent / 10)")
    icp_iterations: int = opt(50, "ICP iterations per start rotation")
    icp_max_points: int = opt(3000, "ICP uses at most this many centres per cloud (evenly subsampled, deterministic)")
    min_opacity: float = opt(0.1, "proxy Gaussians below this opacity are left out of the centre cloud of the coarse step")
    appearance_views: int = opt(6, "coarse step: this many training views (evenly spread) are matched against renders of the proxy "
                                   "from virtual viewpoints; the 3D pairs tell apart start rotations that geometry cannot "
                                   "(a ball, a box turned upside down) and give one more start (0 = geometry only)")
    appearance_directions: int = opt(20, "coarse step: virtual viewing directions around the proxy (Fibonacci sphere)")
    appearance_rolls: int = opt(0, "coarse step: in-plane rotations of each virtual view (0 = 1 for sift, which is rotation "
                                   "invariant, else 4)")
    coarse_score_tolerance: float = opt(0.05, "coarse step: starts whose two-way ICP score is within this of the best are "
                                              "ranked by the appearance pairs they explain")
    crop_margin: float = opt(0.15, "the matching window is the box of the real mask and the projected proxy, enlarged by this "
                                   "fraction of its size on each side (clipped to the image)")
    match_min_size: int = opt(384, "windows whose long side is shorter are upscaled to it before matching (bicubic)")
    match_max_size: int = opt(1024, "windows whose long side is longer are downscaled to it before matching (area)")
    proxy_rasterize_mode: str = opt("antialiased", "how the proxy is rendered for matching: antialiased (opacities compensated for "
                                                   "the --eps2d filter, so that a proxy of small Gaussians is not rendered fatter than "
                                                   "it is, which biases the scale low) or classic", choices=["antialiased", "classic"])
    depth_opacity_power: float = opt(5.0, "depth of the first surface: the depth pass renders opacities as 1 - (1 - o)^power "
                                          "(1 = the plain expected depth, biased deeper on semi-transparent surfaces)")
    alpha_threshold: float = opt(0.5, "a rendered pixel belongs to the silhouette (and has a usable depth) above this alpha")
    fill_background: bool = opt(True, "fill both crops outside their silhouettes with a smooth extension of the object's colours "
                                      "before matching, so that keypoints rest on texture, not on the (differing) outlines")
    silhouette_margin: int = opt(2, "matches closer than this many pixels (working resolution) to either silhouette are dropped: "
                                    "keypoints on the outline shift with its softness (the proxy's alpha edge is soft, the real "
                                    "mask hard), which biases the scale")
    depth_edge_tolerance: float = opt(0.03, "matches whose 3x3 depth neighbourhood spans more than this fraction of the depth "
                                            "are dropped (depth edges)")
    min_view_area: int = opt(64, "cameras whose real mask has fewer pixels (at the working resolution) are skipped")
    min_matches: int = opt(12, "a round with fewer usable 3D pairs (all its cameras together) is skipped with a warning")
    inlier_threshold: float = opt(0.1, "3D RANSAC inlier distance as a fraction of the object's mean robust extent "
                                       "(as the original; loose because the real-side depths come from the degraded object)")
    reprojection_refinement: bool = opt(True, "refine each round's transform by the image error of the proxy points in the real "
                                              "views (needs no real-side depth)")
    reprojection_threshold: float = opt(2.0, "reprojection inlier threshold in pixels of the working resolution (of the "
                                             "matching resolution where windows were downscaled to --match_max_size)")
    ransac_iterations: int = opt(2000, "maximum RANSAC iterations per round (adaptive)")
    scale_bounds: list[float] = opt([0.75, 1.5], "per-axis scale bounds (lo hi) of one round's correction: the anisotropic "
                                                 "fit is bounded by them, a round whose correction leaves them is skipped")
    converge_rotation_deg: float = opt(0.1, "early stop: a correction rotating by less than this (degrees) ...")
    converge_scale: float = opt(0.002, "... scaling every axis by less than this relative amount ...")
    converge_translation: float = opt(0.002, "... and moving the proxy by less than this fraction of its size converges")
    mask_threshold: int = opt(127, "alpha value above which a pixel of D/masked_image_rgba belongs to the object")
    seed: int = opt(0, "seed of RANSAC")

    def check(self) -> None:
        """Raise ValueError naming the first invalid option (schedule values may still be 0 = from description.yml)."""
        for name in ("extent_percentiles", "scale_bounds"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"--{name} takes two values (lo hi), got {getattr(self, name)}")
        lo, hi = self.extent_percentiles
        sb_lo, sb_hi = self.scale_bounds
        checks = [
            ("num_iterations", self.num_iterations >= 0, ">= 0"),
            ("cam_list_interval", self.cam_list_interval >= 0, ">= 0"),
            ("cameras_per_round", self.cameras_per_round >= 1, ">= 1"),
            ("num_rotations", self.num_rotations >= 1, ">= 1"),
            ("extent_percentiles", 0 <= lo < hi <= 100, "lo hi with 0 <= lo < hi <= 100"),
            ("icp_distance", self.icp_distance > 0, "> 0"),
            ("icp_iterations", self.icp_iterations >= 1, ">= 1"),
            ("icp_max_points", self.icp_max_points >= 10, ">= 10"),
            ("min_opacity", 0 <= self.min_opacity < 1, "in [0, 1)"),
            ("appearance_views", self.appearance_views >= 0, ">= 0"),
            ("appearance_directions", self.appearance_directions >= 1, ">= 1"),
            ("appearance_rolls", self.appearance_rolls >= 0, ">= 0"),
            ("coarse_score_tolerance", 0 <= self.coarse_score_tolerance <= 1, "in [0, 1]"),
            ("crop_margin", self.crop_margin >= 0, ">= 0"),
            ("match_min_size", self.match_min_size >= 16, ">= 16"),
            ("match_max_size", self.match_max_size >= self.match_min_size, ">= match_min_size"),
            ("alpha_threshold", 0 < self.alpha_threshold < 1, "in (0, 1)"),
            ("depth_opacity_power", self.depth_opacity_power >= 1, ">= 1"),
            ("depth_edge_tolerance", self.depth_edge_tolerance > 0, "> 0"),
            ("silhouette_margin", self.silhouette_margin >= 0, ">= 0"),
            ("min_view_area", self.min_view_area >= 1, ">= 1"),
            ("min_matches", self.min_matches >= 6, ">= 6 (the anisotropic fit needs 6 inliers)"),
            ("inlier_threshold", self.inlier_threshold > 0, "> 0"),
            ("reprojection_threshold", self.reprojection_threshold > 0, "> 0"),
            ("ransac_iterations", self.ransac_iterations >= 1, ">= 1"),
            ("scale_bounds", 0 < sb_lo < 1 < sb_hi, "lo hi with 0 < lo < 1 < hi"),
            ("converge_rotation_deg", self.converge_rotation_deg >= 0, ">= 0"),
            ("converge_scale", self.converge_scale >= 0, ">= 0"),
            ("converge_translation", self.converge_translation >= 0, ">= 0"),
            ("mask_threshold", 0 <= self.mask_threshold < 255, "in [0, 255)"),
        ]
        check_options(self, checks)
        if any(i < 0 for i in self.opt_shape_iterations):
            raise ValueError(f"--opt_shape_iterations must be >= 0, got {self.opt_shape_iterations}")


@dataclass
class Schedule:
    """The resolved loop schedule: rounds, shape rounds, camera interval (and where each came from)."""

    num_iterations: int
    opt_shape_iterations: list[int]
    cam_list_interval: int
    sources: dict = field(default_factory=dict)

    def cameras(self, it: int, num_cameras: int) -> list[int]:
        """Indices (into the sorted training cameras) used by round ``it``."""
        step = self.cam_list_interval
        return list(range(it % step, num_cameras, step))


def resolve_schedule(params: AlignmentParams, description, num_cameras: int) -> Schedule:
    """Options first, then description.yml (``cam_list_interval`` only when the file gives it), then defaults.

    ``description`` is a :class:`scene.dataset.Description` (or None); ``description.given`` lists the keys
    the file really contains.
    """
    given = set(getattr(description, "given", ()) or ())
    src = {}
    if params.num_iterations > 0:
        n, src["num_iterations"] = params.num_iterations, "option"
    elif description is not None and "num_iterations" in given:
        n, src["num_iterations"] = description.num_iterations, "description.yml"
    else:
        n, src["num_iterations"] = 6, "default"
    if params.opt_shape_iterations:
        shape, src["opt_shape_iterations"] = list(params.opt_shape_iterations), "option"
    elif description is not None and "opt_shape_iterations" in given:
        shape, src["opt_shape_iterations"] = list(description.opt_shape_iterations), "description.yml"
    else:
        shape, src["opt_shape_iterations"] = [3, 4], "default"
    if params.cam_list_interval > 0:
        step, src["cam_list_interval"] = params.cam_list_interval, "option"
    elif description is not None and "cam_list_interval" in given:
        step, src["cam_list_interval"] = description.cam_list_interval, "description.yml"
    else:
        step, src["cam_list_interval"] = max(1, math.ceil(num_cameras / params.cameras_per_round)), "cameras_per_round"
    outside = [i for i in shape if i >= n]
    if outside:
        log.warning("opt_shape_iterations %s lie beyond the %d rounds and never run", outside, n)
    return Schedule(n, sorted(set(shape)), step, src)


# --------------------------------------------------------------------------------------------
# Coarse initialisation
# --------------------------------------------------------------------------------------------
def even_subsample(points: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows taken at evenly spaced indices (deterministic)."""
    if len(points) <= n:
        return points
    return points[np.round(np.linspace(0, len(points) - 1, n)).astype(np.int64)]


def coarse_init(xyz_object: np.ndarray, xyz_proxy: np.ndarray, params: AlignmentParams,
                appearance: Optional[tuple[np.ndarray, np.ndarray]] = None,
                rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, dict]:
    """4x4 proxy -> world start: robust-extent scale, multi-start ICP scored both ways, appearance.

    Args:
        xyz_object: [N, 3] centres of the segmented object (world).
        xyz_proxy: [M, 3] centres of the proxy (canonical frame).
        appearance: optional 3D pairs (world [K, 3], canonical [K, 3]) from :func:`appearance_pairs`.

    The scale is the geometric mean of the ratios of the sorted robust PCA extents (orientation
    independent; the original used world-axis boxes). The ICP correspondence distance is
    ``icp_distance`` x the object's mean extent; the scoring distance that ranks the starts is
    :data:`utils.registration.SCORE_DISTANCE_FACTOR` times that.

    Geometry alone cannot tell apart the rotations of a symmetric shape (every start of a ball
    scores the same, a box fits upside down). With ``appearance`` pairs, a RANSAC similarity of
    them (refined by ICP) is one more start, and among the starts whose score is within
    ``coarse_score_tolerance`` of the best, the one that maps the most proxy-side points within
    ``inlier_threshold`` x size of their real-side partners wins.
    """
    from utils.registration import bidirectional_score, icp

    pct = params.extent_percentiles
    e_obj = np.sort(robust_extent(xyz_object, pct)[2])
    e_pro = np.sort(robust_extent(xyz_proxy, pct)[2])
    if np.any(e_pro <= 0) or np.any(e_obj <= 0):
        raise ValueError("a centre cloud is flat (zero robust extent along an axis)")
    s0 = float(np.exp(np.mean(np.log(e_obj / e_pro))))
    size = float(np.mean(e_obj))
    src = even_subsample(xyz_proxy, params.icp_max_points)
    dst = even_subsample(xyz_object, params.icp_max_points)
    rotations = well_spread_rotations(params.num_rotations)
    maxd = params.icp_distance * size
    res = multi_start_icp(src, dst, rotations, scale=s0, max_correspondence_distance=maxd, max_iterations=params.icp_iterations)
    matrices = [np.asarray(r.matrix, dtype=np.float64) for r in res.results]
    scores = [float(sc["score"]) for sc in res.scores]
    chosen, how = int(res.best_index), "geometry"
    info = {"initial_scale": s0, "object_extents": e_obj.tolist(), "proxy_extents": e_pro.tolist(), "object_size": size,
            "starts": len(rotations)}
    if appearance is not None and len(appearance[0]) >= params.min_matches:
        A, B = appearance
        thr = params.inlier_threshold * size
        try:
            sim = ransac_similarity(B, A, thr, max_iterations=params.ransac_iterations,
                                    rng=rng if rng is not None else np.random.default_rng(params.seed),
                                    min_inliers=max(3, params.min_matches // 2))
        except ValueError as exc:
            log.info("coarse step: no similarity from the appearance pairs (%s)", exc)
        else:
            r = icp(src, dst, as_matrix((sim.R, sim.t, sim.s)), maxd, params.icp_iterations)
            matrices.append(np.asarray(r.matrix, dtype=np.float64))
            scores.append(float(bidirectional_score(apply_matrix(matrices[-1], src), dst, SCORE_DISTANCE_FACTOR * maxd)["score"]))
        explained = [int((np.linalg.norm(apply_matrix(M, B) - A, axis=1) < thr).sum()) for M in matrices]
        near = [k for k in range(len(matrices)) if scores[k] >= max(scores) - params.coarse_score_tolerance]
        chosen = max(near, key=lambda k: (explained[k], scores[k], -k))
        how = "appearance" if chosen == len(res.results) else ("geometry+appearance" if chosen != res.best_index else "geometry")
        info.update({"appearance_pairs": len(A), "appearance_explained": explained[chosen],
                     "geometry_best_explained": explained[res.best_index], "candidates": len(near)})
    info.update({"best_start": chosen, "score": scores[chosen], "chosen_by": how})
    return matrices[chosen], info


# --------------------------------------------------------------------------------------------
# Surface depth
# --------------------------------------------------------------------------------------------
def sharpen_opacities(opacity_logits, power: float):
    """Opacity logits of ``1 - (1 - o)^power`` (torch or numpy), for the depth pass.

    The renderer's depth is the expectation over the Gaussians along the ray. Over a surface of
    semi-transparent Gaussians (a trained scene, or a generator's proxy with opacities ~0.9) it
    mixes in the surfaces behind, which biases it deeper by a fair fraction of the object's
    thickness (about 10 mm on the demo's 12 cm box). Rendering the depth with opacities raised to
    ``1 - (1 - o)^power`` lets the first surface hide what lies behind it (a Gaussian of opacity
    0.5 becomes 0.97 with power 5), which gives the depth of the first surface; colours and
    silhouettes still come from the unchanged model.
    """
    try:
        import torch

        if isinstance(opacity_logits, torch.Tensor):
            # log(1 - o) = -softplus(x) for o = sigmoid(x)
            log_t = -power * torch.nn.functional.softplus(opacity_logits)
            return torch.log(-torch.expm1(log_t)) - log_t
    except ImportError:  # pragma: no cover - numpy path below
        pass
    x = np.asarray(opacity_logits, dtype=np.float64)
    log_t = -power * np.logaddexp(0.0, x)
    return np.log(-np.expm1(log_t)) - log_t


# --------------------------------------------------------------------------------------------
# Windows, crops, depth lookup and lifting
# --------------------------------------------------------------------------------------------
def projected_box(camera: Camera, xyz: np.ndarray) -> Optional[tuple[float, float, float, float]]:
    """Box of the projections of the points in front of the camera, or None."""
    uv, z = camera.project(xyz)
    ok = (z > 1e-6) & np.isfinite(uv).all(1)
    if not ok.any():
        return None
    uv = uv[ok]
    return float(uv[:, 0].min()), float(uv[:, 1].min()), float(uv[:, 0].max()), float(uv[:, 1].max())


def window(boxes: Sequence[Optional[tuple]], width: int, height: int, margin: float) -> Optional[tuple[int, int, int, int]]:
    """(x0, y0, w, h): the union of the boxes, enlarged by ``margin`` x its size per side, clipped to the image."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    x0 = max(0, int(math.floor(x0 - mx)))
    y0 = max(0, int(math.floor(y0 - my)))
    x1 = min(width, int(math.ceil(x1 + mx)))
    y1 = min(height, int(math.ceil(y1 + my)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1 - x0, y1 - y0


def match_scale(width: int, height: int, min_size: int, max_size: int) -> float:
    """Factor that brings the long side of a window into [min_size, max_size] (1 if it already is)."""
    long_side = max(width, height)
    if long_side < min_size:
        return min_size / long_side
    if long_side > max_size:
        return max_size / long_side
    return 1.0


def resize_for_matching(img: np.ndarray, mask: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Resize an [H, W, 3] uint8 image and its [H, W] bool mask by ``factor``.

    Returns (image, mask, (sx, sy)) with the exact per-axis factors new_size / old_size, so that a
    position maps back as ``x_old = x_new / sx`` (pixel centres at +0.5 on both sides).
    """
    import cv2

    h, w = mask.shape
    if factor == 1.0:
        return img, mask, (1.0, 1.0)
    nw, nh = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    interp = cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA
    out = cv2.resize(img, (nw, nh), interpolation=interp)
    m = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    return out, m, (nw / w, nh / h)


def fill_outside(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 image whose pixels outside ``mask`` are a smooth extension of those inside
    (pull-push: mask-weighted averages over an image pyramid, coarse levels fill the holes).

    Matching the real crop against the proxy render should rest on texture, not on the outline:
    the two outlines differ (a splatted proxy's silhouette is soft and about a pixel wider, a real
    mask has its own errors), and keypoints near a black-background outline shift with it, which
    biases the fitted scale. Without the outline both images show only the object's texture.
    """
    import cv2

    m = mask.astype(np.float32)
    if m.all() or not m.any():
        return img
    c = img.astype(np.float32) * m[..., None]
    levels = [(c, m)]
    while min(levels[-1][1].shape) > 1:
        c2 = cv2.resize(levels[-1][0], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        m2 = cv2.resize(levels[-1][1], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        if c2.ndim == 2:
            c2 = c2[..., None]
        levels.append((c2.reshape(m2.shape + (3,)), m2))
    c_l, m_l = levels[-1]
    filled = c_l / np.maximum(m_l, 1e-6)[..., None]
    for c_l, m_l in reversed(levels[:-1]):
        up = cv2.resize(filled, (m_l.shape[1], m_l.shape[0]), interpolation=cv2.INTER_LINEAR).reshape(m_l.shape + (3,))
        own = c_l / np.maximum(m_l, 1e-6)[..., None]
        w = np.clip(m_l, 0.0, 1.0)[..., None]
        filled = w * own + (1.0 - w) * up
    out = np.where(mask[..., None], img.astype(np.float32), filled)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def depth_at(depth: np.ndarray, valid: np.ndarray, xy: np.ndarray, edge_tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Depth at positions ``xy`` (centres at +0.5) from the pixel they fall in.

    Returns (z [N], ok [N]); ok is False off the image, where ``valid`` is False, or where the
    valid depths of the 3x3 neighbourhood span more than ``edge_tolerance`` x z (a depth edge, where
    the nearest pixel may belong to the other surface) or the neighbourhood is partly invalid.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    h, w = depth.shape
    j = np.floor(xy[:, 0]).astype(np.int64)
    i = np.floor(xy[:, 1]).astype(np.int64)
    ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    i, j = np.where(ok, i, 0), np.where(ok, j, 0)
    z = np.where(ok, depth[i, j], 0.0)
    all_valid = minimum_filter(valid.astype(np.uint8), size=3, mode="constant", cval=0).astype(bool)
    hi = maximum_filter(np.where(valid, depth, -np.inf), size=3, mode="nearest")
    lo = minimum_filter(np.where(valid, depth, np.inf), size=3, mode="nearest")
    ok &= all_valid[i, j] & (z > 0)
    ok &= (hi[i, j] - lo[i, j]) <= edge_tolerance * z
    return z, ok


def lift(camera: Camera, xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """World points [N, 3] of pixel positions ``xy`` (centres at +0.5) at camera depths ``z``."""
    x = (xy[:, 0] - camera.cx) / camera.fx * z
    y = (xy[:, 1] - camera.cy) / camera.fy * z
    pc = np.stack([x, y, z], axis=1)
    return (pc - camera.t) @ camera.R  # R^T (pc - t)


# --------------------------------------------------------------------------------------------
# One view
# --------------------------------------------------------------------------------------------
RenderFn = Callable[[Camera, object, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class RealView:
    """A training view of the object: camera at the working resolution, RGB, mask."""

    camera: Camera
    rgb: np.ndarray  # [H, W, 3] uint8 (full frame)
    mask: np.ndarray  # [H, W] bool


@dataclass
class ViewPairs:
    """The lifted correspondences of one camera in one round, and what the match picture needs."""

    name: str
    target: np.ndarray  # [N, 3] real side (A)
    source: np.ndarray  # [N, 3] proxy side (B)
    xy_real: np.ndarray  # [N, 2] at match resolution
    xy_proxy: np.ndarray  # [N, 2]
    image_real: np.ndarray  # [h, w, 3] uint8 crop at match resolution
    image_proxy: np.ndarray
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [N, 2] real side, window camera pixels
    camera: Optional[Camera] = None  # the window camera
    pixel_weight: float = 1.0  # residual unit: window pixels, or match pixels when the window was downscaled
    raw_matches: int = 0
    note: str = ""


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass
class Side:
    """One side of a match: a (window) camera and what it sees, at that camera's pixels."""

    camera: Camera
    image: np.ndarray  # [h, w, 3] uint8 (filled outside the mask when --fill_background)
    mask: np.ndarray  # [h, w] bool: the silhouette
    depth: np.ndarray  # [h, w] first-surface depth
    valid: np.ndarray  # [h, w] bool: depth usable


def real_side(view: RealView, win: tuple[int, int, int, int], obj, render: RenderFn, params: AlignmentParams) -> Side:
    """The real masked crop of ``view`` in the window ``(x0, y0, w, h)``; depth from the object's render."""
    x0, y0, w, h = win
    wcam = view.camera.cropped(x0, y0, w, h)
    real_mask = view.mask[y0:y0 + h, x0:x0 + w]
    real_rgb = (view.rgb[y0:y0 + h, x0:x0 + w] * real_mask[..., None]).astype(np.uint8)
    if params.fill_background:
        real_rgb = fill_outside(real_rgb, real_mask)
    _, o_alpha, o_depth = render(wcam, obj, "object")
    return Side(wcam, real_rgb, real_mask, o_depth, real_mask & (o_alpha > params.alpha_threshold))


def proxy_side(camera: Camera, proxy, render: RenderFn, params: AlignmentParams) -> Side:
    """The proxy rendered from ``camera`` (silhouette = alpha above ``alpha_threshold``)."""
    p_rgb, p_alpha, p_depth = render(camera, proxy, "proxy")
    p_mask = p_alpha > params.alpha_threshold
    # the render over black is premultiplied by alpha: divide it out, or the soft outline is a dark rim
    img = _to_uint8(np.where(p_mask[..., None], p_rgb / np.maximum(p_alpha, 1e-6)[..., None], 0.0))
    if params.fill_background:
        img = fill_outside(img, p_mask)
    return Side(camera, img, p_mask, p_depth, p_mask)


@dataclass
class SideMatches:
    """Matches between two sides, lifted to 3D (``ok`` rows only)."""

    target: np.ndarray  # [N, 3] points of side 0 in its camera's world
    source: np.ndarray  # [N, 3] points of side 1 in its camera's world
    xy0: np.ndarray  # [N, 2] at side 0's match resolution
    xy1: np.ndarray  # [N, 2] at side 1's match resolution
    pixels0: np.ndarray  # [N, 2] side 0 window pixels
    image0: np.ndarray  # side 0 at match resolution
    image1: np.ndarray
    pixel_weight: float  # residual unit of side 0: window pixels, or match pixels when downscaled
    raw: int


def match_sides(side0: Side, side1: Side, matcher, params: AlignmentParams) -> SideMatches:
    """Match two sides (each resized into [match_min_size, match_max_size] by its own factor) and lift
    the matches to 3D with each side's depth through its camera; matches off a silhouette (or within
    ``silhouette_margin`` of it) or on a depth edge are dropped."""
    sides = (side0, side1)
    scaled = [resize_for_matching(s.image, s.mask, match_scale(s.camera.width, s.camera.height, params.match_min_size,
                                                                params.match_max_size)) for s in sides]
    (img0, m0, f0), (img1, m1, f1) = scaled
    if not side1.mask.any() or not side0.mask.any():
        z = np.zeros((0, 3))
        return SideMatches(z, z, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), img0, img1, 1.0, 0)
    m = matcher.match(img0, img1, m0, m1)
    xy = [m.xy0 / np.array(f0), m.xy1 / np.array(f1)]
    ok = np.ones(len(m), dtype=bool)
    zs = []
    for s, p in zip(sides, xy):
        z, ok_s = depth_at(s.depth, s.valid, p, params.depth_edge_tolerance)
        zs.append(z)
        ok &= ok_s
        if params.silhouette_margin > 0:
            ok &= inside_mask(p, erode(s.mask, params.silhouette_margin))
    A = lift(side0.camera, xy[0][ok], zs[0][ok])
    B = lift(side1.camera, xy[1][ok], zs[1][ok])
    return SideMatches(A, B, m.xy0[ok], m.xy1[ok], xy[0][ok], img0, img1, min(1.0, float(np.sqrt(f0[0] * f0[1]))), len(m))


def view_correspondences(view: RealView, obj, proxy, proxy_xyz: np.ndarray, render: RenderFn, matcher,
                         params: AlignmentParams) -> ViewPairs:
    """Match the real masked crop of one view against the proxy render and lift both sides to 3D.

    ``obj`` and ``proxy`` are whatever ``render`` accepts (GaussianModels in the script);
    ``proxy_xyz`` [M, 3] are the proxy's world centres (for its projected box).
    """
    cam = view.camera
    empty = np.zeros((0, 3))
    win = window([mask_bbox(view.mask), projected_box(cam, proxy_xyz)], cam.width, cam.height, params.crop_margin)
    if win is None:
        return ViewPairs(cam.image_name, empty, empty, np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((1, 1, 3), np.uint8),
                         np.zeros((1, 1, 3), np.uint8), note="no window")
    real = real_side(view, win, obj, render, params)
    prox = proxy_side(real.camera, proxy, render, params)
    sm = match_sides(real, prox, matcher, params)
    note = "" if prox.mask.any() else "proxy not visible"
    return ViewPairs(cam.image_name, sm.target, sm.source, sm.xy0, sm.xy1, sm.image0, sm.image1, pixels=sm.pixels0,
                     camera=real.camera, pixel_weight=sm.pixel_weight, raw_matches=sm.raw, note=note)


# --------------------------------------------------------------------------------------------
# Appearance pairs for the coarse step
# --------------------------------------------------------------------------------------------
VIRTUAL_DISTANCE = 4.0
"""Virtual cameras of the coarse step stand this many proxy radii from its centre (mild perspective)."""


def virtual_cameras(centre: np.ndarray, radius: float, size: int, directions: int, rolls: int, margin: float) -> list[Camera]:
    """Square ``size`` x ``size`` cameras around ``centre`` looking at it, from ``directions`` well-spread
    directions (Fibonacci sphere) x ``rolls`` in-plane rotations; the sphere of ``radius`` spans
    ``size / (1 + 2 margin)`` pixels, as the real object spans its matching window."""
    from scene.cameras import look_at
    from utils.coverage import fibonacci_sphere

    d = VIRTUAL_DISTANCE * radius
    f = 0.5 * size / (1.0 + 2.0 * margin) / math.tan(math.asin(1.0 / VIRTUAL_DISTANCE))
    cams = []
    for i, u in enumerate(fibonacci_sphere(directions)):
        up = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        R, t = look_at(centre + d * u, centre, up)
        for k in range(rolls):
            a = 2.0 * math.pi * k / rolls
            Rz = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
            cams.append(Camera(Rz @ R, Rz @ t, f, f, 0.5 * size, 0.5 * size, size, size, image_name=f"virtual_{i}_{k}"))
    return cams


def spread_indices(n: int, k: int) -> list[int]:
    """``min(n, k)`` indices evenly spread over ``range(n)``."""
    if k >= n:
        return list(range(n))
    return sorted(set(np.round(np.linspace(0, n - 1, k)).astype(int).tolist()))


def appearance_pairs(views: Sequence[RealView], obj, proxy, proxy_xyz: np.ndarray, render: RenderFn, matcher, params: AlignmentParams,
                     rolls: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """3D pairs (world [K, 3], proxy frame [K, 3]) between the object and a proxy in ITS OWN frame.

    ``appearance_views`` training views (evenly spread among those with ``min_view_area`` mask
    pixels; real crop = the mask box with ``crop_margin``) are each matched against renders of the
    proxy (``render(camera, proxy, "proxy")``, proxy in its canonical frame, ``proxy_xyz`` its
    centres) from :func:`virtual_cameras`; matches are lifted with the object's depth on the real
    side and the proxy's depth on the virtual side. No pose of the proxy is assumed: the pairs
    constrain the rotation where the shape does not.
    """
    usable = [v for v in views if v.mask.sum() >= params.min_view_area]
    chosen = [usable[i] for i in spread_indices(len(usable), params.appearance_views)]
    reals = []
    for v in chosen:
        win = window([mask_bbox(v.mask)], v.camera.width, v.camera.height, params.crop_margin)
        if win is not None:
            reals.append(real_side(v, win, obj, render, params))
    info = {"views": [r.camera.image_name for r in reals], "virtual_views": 0, "pairs": 0}
    if not reals:
        return np.zeros((0, 3)), np.zeros((0, 3)), info
    size = int(np.median([max(r.camera.width, r.camera.height) for r in reals]))
    centre = np.median(proxy_xyz, axis=0)
    radius = float(np.percentile(np.linalg.norm(proxy_xyz - centre, axis=1), 98))
    sides = [proxy_side(c, proxy, render, params) for c in virtual_cameras(centre, radius, size, params.appearance_directions, rolls,
                                                                          params.crop_margin)]
    sides = [sd for sd in sides if sd.mask.any()]
    A, B = [], []
    for r in reals:
        for sd in sides:
            sm = match_sides(r, sd, matcher, params)
            A.append(sm.target)
            B.append(sm.source)
    A = np.concatenate(A) if A else np.zeros((0, 3))
    B = np.concatenate(B) if B else np.zeros((0, 3))
    info.update({"virtual_views": len(sides), "pairs": len(A)})
    return A, B, info


# --------------------------------------------------------------------------------------------
# Solving one round
# --------------------------------------------------------------------------------------------
@dataclass
class RoundSolve:
    """A round's correction T (4x4, world -> world) and its diagnostics."""

    matrix: np.ndarray
    inliers: np.ndarray
    rmse: float
    kind: str


def solve_round(pairs: Sequence[ViewPairs], shape: bool, size: float, params: AlignmentParams,
                rng: np.random.Generator) -> RoundSolve:
    """Correction T with ``A ~ T(B)`` from the pairs of all cameras of a round.

    1. 3D-3D: a RANSAC similarity, or the robust anisotropic fit when ``shape`` (threshold
       ``inlier_threshold`` x size; the real-side depths come from the degraded object and can be
       biased, so this only gives the start and a first inlier set);
    2. multi-view reprojection refinement of the same model (:func:`utils.alignment.refine_reprojection`):
       T(B) must project onto the matched real pixels (threshold ``reprojection_threshold`` pixels
       at the matching resolution). Skipped with ``--no-reprojection_refinement``.
    """
    from utils.alignment import refine_reprojection

    A = np.concatenate([p.target for p in pairs])
    B = np.concatenate([p.source for p in pairs])
    thr = params.inlier_threshold * size
    if shape:
        res = fit_anisotropic(B, A, rng=rng, scale_bounds=tuple(params.scale_bounds), inlier_threshold=thr,
                              max_iterations=params.ransac_iterations, min_inliers=params.min_matches // 2)
        M = as_matrix((res.linear, res.t))
    else:
        res = ransac_similarity(B, A, thr, max_iterations=params.ransac_iterations, rng=rng,
                                min_inliers=max(3, params.min_matches // 2))
        M = as_matrix((res.R, res.t, res.s))
    if not params.reprojection_refinement:
        return RoundSolve(M, res.inliers, res.rmse, "anisotropic" if shape else "similarity")
    cams = [p.camera for p in pairs for _ in range(len(p.target))]
    ref = refine_reprojection(
        B,
        np.concatenate([p.pixels for p in pairs]),
        np.array([[c.fx, c.fy, c.cx, c.cy] for c in cams]).reshape(-1, 4),
        np.array([c.R for c in cams]).reshape(-1, 3, 3),
        np.array([c.t for c in cams]).reshape(-1, 3),
        M,
        anisotropic=shape,
        pixel_weights=np.concatenate([np.full(len(p.target), p.pixel_weight) for p in pairs]),
        threshold=params.reprojection_threshold,
        initial_inliers=res.inliers,
        scale_bounds=tuple(params.scale_bounds),
        min_inliers=max(6, params.min_matches // 2),
    )
    return RoundSolve(ref.matrix, ref.inliers, ref.rmse_px, ("anisotropic" if shape else "similarity") + "+reprojection")


def polar_angle_deg(A: np.ndarray) -> float:
    """Rotation angle (degrees) of the polar (nearest proper) rotation of a 3x3 linear map."""
    return math.degrees(float(rotation_angle_between(polar_rotation_np(A), np.eye(3))))


def correction_size(T: np.ndarray, centre: np.ndarray, size: float) -> dict:
    """How far a correction is from the identity: rotation (deg), max relative axis scale change,
    displacement of the object centre relative to the object size."""
    A = T[:3, :3]
    S = np.linalg.svd(A, compute_uv=False)
    angle = polar_angle_deg(A)
    moved = apply_matrix(T, centre[None])[0] - centre
    return {"rotation_deg": angle, "scale": float(np.max(np.abs(S - 1.0))), "translation": float(np.linalg.norm(moved) / size)}


def converged(delta: dict, params: AlignmentParams) -> bool:
    return (delta["rotation_deg"] < params.converge_rotation_deg and delta["scale"] < params.converge_scale
            and delta["translation"] < params.converge_translation)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """What happened in one round (written to the transform JSON)."""

    index: int
    kind: str
    cameras: list
    pairs: int
    inliers: int = 0
    rmse: float = float("nan")
    delta: Optional[dict] = None
    skipped: str = ""
    seconds: float = 0.0
    views: list = field(default_factory=list)


@dataclass
class AlignmentResult:
    """Total proxy -> world map and the per-round history."""

    matrix: np.ndarray
    coarse_matrix: np.ndarray
    coarse: dict
    rounds: list
    object_size: float
    stopped_early: bool


def transform_record(M: np.ndarray) -> dict:
    """The 4x4 map and its factors ``A = R F^T diag(s) F`` (polar + eigen), for the JSON."""
    from utils.alignment import decompose_linear

    R, F, s = decompose_linear(M[:3, :3])
    return {
        "matrix": M.tolist(),
        "rotation": R.tolist(),
        "scale": s.tolist(),
        "scale_frame": F.tolist(),
        "translation": M[:3, 3].tolist(),
        "uniform_scale": float(np.cbrt(abs(np.linalg.det(M[:3, :3])))),
    }


def align(obj_xyz: np.ndarray, proxy_xyz: np.ndarray, views: Sequence[RealView], obj, make_proxy: Callable[[np.ndarray], object],
          render: RenderFn, matcher, schedule: Schedule, params: AlignmentParams,
          on_round: Optional[Callable[[int, np.ndarray, RoundRecord, list], None]] = None,
          progress: Optional[Callable] = None) -> AlignmentResult:
    """Coarse initialisation, then the closed loop.

    Args:
        obj_xyz: [N, 3] world centres of the segmented object; proxy_xyz: [M, 3] canonical centres
            of the proxy (opacity-filtered for the coarse step).
        views: the sorted training views (working resolution).
        obj: the segmented object as ``render`` takes it.
        make_proxy: ``M -> renderable proxy`` (the original proxy mapped by the 4x4 M).
        on_round: called after every round with (round, M after the round, record, view pairs)
            (the script writes the per-round PLY and the match pictures there).
        progress: wraps an iterable of cameras (e.g. tqdm) or None.
    """
    rng = np.random.default_rng(params.seed)
    appearance = None
    if params.appearance_views > 0:
        rolls = params.appearance_rolls or (1 if getattr(matcher, "name", "") == "sift" else 4)
        A, B, a_info = appearance_pairs(views, obj, make_proxy(np.eye(4)), proxy_xyz, render, matcher, params, rolls)
        appearance = (A, B)
        log.info("coarse step: %d appearance pairs from %d views x %d virtual views", len(A), len(a_info["views"]),
                 a_info["virtual_views"])
    M0, coarse = coarse_init(obj_xyz, proxy_xyz, params, appearance, rng)
    size = coarse["object_size"]
    M = M0.copy()
    rounds: list[RoundRecord] = []
    stopped_early = False
    last_shape = max([i for i in schedule.opt_shape_iterations if i < schedule.num_iterations], default=-1)
    centre_c = np.median(proxy_xyz, axis=0)
    for it in range(schedule.num_iterations):
        t0 = time.perf_counter()
        shape = it in schedule.opt_shape_iterations
        idx = schedule.cameras(it, len(views))
        proxy = make_proxy(M)
        world_xyz = apply_matrix(M, proxy_xyz)
        pairs: list[ViewPairs] = []
        cams = [views[i] for i in idx if views[i].mask.sum() >= params.min_view_area]
        for view in (progress(cams, it) if progress else cams):
            pairs.append(view_correspondences(view, obj, proxy, world_xyz, render, matcher, params))
        A = np.concatenate([p.target for p in pairs]) if pairs else np.zeros((0, 3))
        B = np.concatenate([p.source for p in pairs]) if pairs else np.zeros((0, 3))
        rec = RoundRecord(it, "anisotropic" if shape else "similarity", [views[i].camera.image_name for i in idx], len(A),
                          views=[{"view": p.name, "matches": p.raw_matches, "pairs": len(p.target), **({"note": p.note} if p.note else {})}
                                 for p in pairs])
        inliers = np.zeros(len(A), dtype=bool)
        if len(A) < params.min_matches:
            rec.skipped = f"only {len(A)} usable 3D pairs (< --min_matches {params.min_matches})"
            log.warning("round %d skipped: %s", it, rec.skipped)
        else:
            try:
                sol = solve_round(pairs, shape, size, params, rng)
            except ValueError as exc:
                sol = None
                rec.skipped = f"solver failed: {exc}"
                log.warning("round %d skipped: %s", it, rec.skipped)
            if sol is not None:
                sv = np.linalg.svd(sol.matrix[:3, :3], compute_uv=False)
                lo, hi = params.scale_bounds
                if sv.min() < lo or sv.max() > hi:
                    rec.skipped = (f"implausible correction: axis scales {np.round(sv, 3).tolist()} outside --scale_bounds "
                                   f"{lo} {hi} (wrong matches?)")
                    log.warning("round %d skipped: %s", it, rec.skipped)
                    sol = None
            if sol is not None:
                inliers = sol.inliers
                rec.inliers = int(sol.inliers.sum())
                rec.rmse = float(sol.rmse)
                rec.delta = correction_size(sol.matrix, apply_matrix(M, centre_c[None])[0], size)
                M = sol.matrix @ M
        rec.seconds = time.perf_counter() - t0
        rounds.append(rec)
        if on_round is not None:
            on_round(it, M, rec, [(p, inl) for p, inl in zip(pairs, _split(inliers, [len(p.target) for p in pairs]))])
        if rec.delta is not None and it >= last_shape and converged(rec.delta, params) and it < schedule.num_iterations - 1:
            stopped_early = True
            log.info("converged after round %d (rotation %.3f deg, scale %.4f, translation %.4f)", it,
                     rec.delta["rotation_deg"], rec.delta["scale"], rec.delta["translation"])
            break
    return AlignmentResult(M, M0, coarse, rounds, size, stopped_early)


def _split(values: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    out, k = [], 0
    for c in counts:
        out.append(values[k:k + c])
        k += c
    return out


# --------------------------------------------------------------------------------------------
# Match pictures
# --------------------------------------------------------------------------------------------
def draw_matches(img0: np.ndarray, img1: np.ndarray, xy0: np.ndarray, xy1: np.ndarray, inliers: Optional[np.ndarray] = None) -> np.ndarray:
    """Side-by-side picture (real crop | proxy crop, the right one resized to the left's height)
    with a line per match: hue by match index for inliers, grey for outliers. [H, W, 3] uint8."""
    import cv2

    h0, w0 = img0.shape[:2]
    h1, w1 = img1.shape[:2]
    f = h0 / h1
    right = cv2.resize(img1, (max(1, int(round(w1 * f))), h0), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    canvas = np.concatenate([img0, right], axis=1).copy()
    n = len(xy0)
    inl = np.ones(n, dtype=bool) if inliers is None else np.asarray(inliers, dtype=bool)
    for k in range(n):
        p0 = (int(round(xy0[k, 0] - 0.5)), int(round(xy0[k, 1] - 0.5)))
        p1 = (int(round((xy1[k, 0] - 0.5) * f)) + w0, int(round((xy1[k, 1] - 0.5) * f)))
        if inl[k]:
            hsv = np.uint8([[[int(179 * k / max(n - 1, 1)), 255, 255]]])
            colour = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
        else:
            colour = (110, 110, 110)
        cv2.line(canvas, p0, p1, colour, 1, cv2.LINE_AA)
        cv2.drawMarker(canvas, p0, colour, cv2.MARKER_TILTED_CROSS, 6, 1)
        cv2.drawMarker(canvas, p1, colour, cv2.MARKER_TILTED_CROSS, 6, 1)
    return canvas


# --------------------------------------------------------------------------------------------
# Evaluation against a known transform
# --------------------------------------------------------------------------------------------
def transform_errors(M_est: np.ndarray, M_true: np.ndarray, points: np.ndarray) -> dict:
    """Errors of an estimated proxy -> world map against the true one.

    ``E = A_true^-1 A_est`` is the error in the proxy frame: rotation = angle of its polar rotation
    (degrees), scale = its singular values (relative error per principal axis, max), translation =
    the world distance between the two images of the proxy's centre (median of ``points``, proxy
    frame) relative to the true object size (mean extent of ``points`` mapped by the truth).
    """
    P = np.asarray(points, dtype=np.float64)
    E = np.linalg.solve(M_true[:3, :3], M_est[:3, :3])
    S = np.linalg.svd(E, compute_uv=False)
    angle = polar_angle_deg(E)
    c = np.median(P, axis=0)
    d = np.linalg.norm(apply_matrix(M_est, c[None])[0] - apply_matrix(M_true, c[None])[0])
    world = apply_matrix(M_true, P)
    size = float(np.mean(world.max(0) - world.min(0)))
    return {
        "rotation_deg": angle,
        "scale_errors": (S - 1.0).tolist(),
        "max_scale_error": float(np.max(np.abs(S - 1.0))),
        "translation": float(d),
        "translation_rel": float(d / size),
        "object_size": size,
    }
