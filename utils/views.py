"""View selection (stage 4): score the training views of one object and pick a few good, diverse ones.

Pure functions of numpy arrays and small dataclasses; no paths, no argparse (``view_selection.py``
does the I/O). Conventions:

* images are ``[H, W, 3]`` uint8 RGB (the full, unmasked frame) and masks ``[H, W]`` bool;
* pixel ``(x, y)`` (column, row) has its centre at ``(x + 0.5, y + 0.5)`` in the camera's pixel
  coordinates (see :mod:`scene.cameras`);
* boxes are ``(x0, y0, x1, y1)`` with exclusive ``x1, y1`` (numpy slicing ``[y0:y1, x0:x1]``);
* cameras are W2C: the centre is ``C = -R^T t``; a pixel ray has the world direction
  ``R^T K^-1 (u, v, 1)``, so the optical axis is the third ROW of ``R``.

Per object and per training view ``v`` (views sorted by stem) the quality terms, each in [0, 1]:

* ``sharpness``: variance of the Laplacian of the grey image over the mask pixels, the mask first
  eroded by ``sharpness_erode_px`` so that the silhouette edge against the background does not
  count. Normalised robustly: ``r = s / median(s)`` over the candidates, term ``r / (1 + r)``
  (the median view scores 0.5; one very sharp outlier cannot squash the others, unlike min-max).
* ``size``: mask area / the largest mask area of the object over the views.
* ``completeness``: ``1 - cut``, where ``cut`` is the fraction of the mask's boundary pixels that
  lie on the image border (0: the mask is not cut by the frame; 1: every boundary pixel is).
* ``solidity``: mask area / area of its filled convex hull (both counted in pixels).

``quality`` is the weighted mean of the terms. Views whose mask is smaller than
``max(min_mask_pixels, min_area_fraction * largest area)`` are no candidates (this is the size
filter the authors meant for the crops: the crop holds the mask). Views whose ``cut`` exceeds
``max_cut_fraction`` are used only once the complete candidates are exhausted.

Diversity: the object centre ``X`` (median of the object's segmented Gaussians, or the
triangulated mask centroids, see :func:`triangulate_rays`) is seen from view ``v`` along
``d_v = normalise(X - C_v)``. Greedy selection adds, ``img_num`` times, the candidate maximising
``quality + diversity_weight * div`` with ``div`` = its smallest angle to the already chosen
directions / 180 deg (1 for the first pick). Ties (within ``TIE_TOLERANCE``) go to the lowest index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from scene.cameras import Camera
from utils.arguments import opt

log = logging.getLogger(__name__)

TIE_TOLERANCE = 1e-9
"""Scores within this of the best are a tie (then the lowest view index wins): keeps the choice
independent of floating-point noise."""

TRIANGULATION_ITERATIONS = 10
"""Iteratively reweighted least-squares rounds of :func:`triangulate_rays`."""

TRIANGULATION_MIN_EIGEN = 1e-6
"""Smallest eigenvalue (per ray, of the normal matrix) below which the rays are called parallel."""

GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])
"""ITU-R 601 luma weights (R, G, B) of the grey image used for sharpness."""


@dataclass
class ViewSelectionParams:
    """Stage 4 options: quality terms, filters, diversity and crops."""

    img_num: int = opt(3, "views chosen per object (default: img_num of description.yml, else 3)")
    w_sharpness: float = opt(1.0, "weight of the sharpness term (Laplacian variance inside the eroded mask, median-normalised)")
    w_size: float = opt(1.0, "weight of the size term (mask area / the object's largest mask area)")
    w_completeness: float = opt(1.0, "weight of the completeness term (1 - fraction of the mask boundary on the image border)")
    w_solidity: float = opt(0.5, "weight of the solidity term (mask area / convex-hull area; low for fragmented or occluded masks)")
    diversity_weight: float = opt(1.0, "weight of diversity (smallest angle to the chosen directions towards the object centre / 180 deg) against the quality in [0, 1]")
    sharpness_erode_px: int = opt(2, "erode the mask by this many pixels before measuring sharpness, so the silhouette edge does not count")
    min_area_fraction: float = opt(0.2, "views whose mask area is below this fraction of the object's largest mask area are no candidates")
    min_mask_pixels: int = opt(16, "views whose mask has fewer pixels are no candidates")
    max_cut_fraction: float = opt(0.05, "views whose mask has more than this fraction of its boundary on the image border are used only when the complete views run out")
    crop_margin: float = opt(0.1, "crop margin around the mask box, as a fraction of the box width/height (clipped at the image)")
    min_crop_pixels: int = opt(10000, "crops with fewer pixels (w*h) are upscaled x2 (bicubic RGB, nearest alpha) until they reach it")
    centre: str = opt("auto", "object centre for diversity: gs_seg (median of M/gs_seg/<prompt>.ply), masks (triangulated mask centroids) or auto (gs_seg when the file exists)", choices=["auto", "gs_seg", "masks"])

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        checks = [
            ("img_num", self.img_num >= 1, ">= 1"),
            ("sharpness_erode_px", self.sharpness_erode_px >= 0, ">= 0"),
            ("min_area_fraction", 0.0 <= self.min_area_fraction <= 1.0, "in [0, 1]"),
            ("min_mask_pixels", self.min_mask_pixels >= 1, ">= 1"),
            ("max_cut_fraction", 0.0 <= self.max_cut_fraction <= 1.0, "in [0, 1]"),
            ("crop_margin", self.crop_margin >= 0.0, ">= 0"),
            ("min_crop_pixels", self.min_crop_pixels >= 0, ">= 0"),
            ("diversity_weight", self.diversity_weight >= 0.0, ">= 0"),
        ]
        for name in ("w_sharpness", "w_size", "w_completeness", "w_solidity"):
            checks.append((name, getattr(self, name) >= 0.0, ">= 0"))
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"--{name} must be {want}, got {getattr(self, name)}")
        if self.w_sharpness + self.w_size + self.w_completeness + self.w_solidity <= 0:
            raise ValueError("at least one of --w_sharpness, --w_size, --w_completeness, --w_solidity must be > 0")


# --------------------------------------------------------------------------------------------
# Per-view measures
# --------------------------------------------------------------------------------------------
@dataclass
class ViewMeasures:
    """Raw measures of one object in one view.

    Attributes:
        area: mask pixels. area_fraction: area / (H * W).
        sharpness: Laplacian variance of the grey image (0..255 scale) inside the eroded mask.
        cut_fraction: fraction of the mask's boundary pixels on the image border, in [0, 1].
        solidity: area / filled convex-hull area, in (0, 1] (0 for an empty mask).
        centroid: [2] mean pixel position (u, v) of the mask, pixel centres at +0.5.
        bbox: (x0, y0, x1, y1) tight mask box, exclusive ends; None for an empty mask.
        size: (width, height) of the image.
    """

    area: int
    area_fraction: float
    sharpness: float
    cut_fraction: float
    solidity: float
    centroid: Optional[np.ndarray]
    bbox: Optional[tuple[int, int, int, int]]
    size: tuple[int, int]


def _check_image_mask(rgb: np.ndarray, mask: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got shape {rgb.shape}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask must be [H, W] = {rgb.shape[:2]}, got shape {mask.shape}")


def grey(rgb: np.ndarray) -> np.ndarray:
    """[H, W] float64 luma (0..255 for uint8 input) of an [H, W, 3] RGB image."""
    return rgb.astype(np.float64) @ GREY_WEIGHTS


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """[H, W] bool mask eroded by ``px`` pixels (3x3 cross element, applied ``px`` times).

    Outside the image counts as inside the mask, so a mask cut by the border is not eroded there."""
    if px <= 0:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    out = cv2.erode(mask.astype(np.uint8), kernel, iterations=int(px), borderType=cv2.BORDER_REPLICATE)
    return out.astype(bool)


def sharpness_in_mask(rgb: np.ndarray, mask: np.ndarray, erode_px: int) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image over the mask eroded by ``erode_px``.

    When the eroded mask has fewer than 2 pixels the un-eroded mask is used (tiny objects);
    an empty mask gives 0. Only pixels inside the object count: the background, whatever its
    texture, does not change the value.
    """
    _check_image_mask(rgb, mask)
    lap = cv2.Laplacian(grey(rgb), cv2.CV_64F, ksize=1, borderType=cv2.BORDER_REPLICATE)
    inner = erode(mask, erode_px)
    if inner.sum() < 2:
        inner = mask
    if inner.sum() < 2:
        return 0.0
    return float(lap[inner].var())


def boundary(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool: mask pixels with a 4-neighbour outside the mask; outside the image counts as
    outside the mask, so pixels on the image border are boundary pixels."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def border_cut_fraction(mask: np.ndarray) -> float:
    """Fraction of the mask's boundary pixels that lie on the image border (0 for an empty mask).

    0 means the object is entirely inside the frame; a half-visible square cut straight by the
    border gives about 1/3 to 1/4; a mask filling the frame gives 1."""
    b = boundary(mask)
    n = int(b.sum())
    if n == 0:
        return 0.0
    on_border = int(b[0].sum() + b[-1].sum() + b[1:-1, 0].sum() + b[1:-1, -1].sum())
    return on_border / n


def solidity(mask: np.ndarray) -> float:
    """Mask area / area of the filled convex hull of all mask pixels (pixel counts, in (0, 1]).

    0 for an empty mask. Both areas are counted on the same pixel grid, so a filled rectangle is
    exactly 1 (polygon areas through pixel centres would not be)."""
    m = mask.astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return 0.0
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pts = np.concatenate([c.reshape(-1, 2) for c in contours], axis=0)
    hull = cv2.convexHull(pts)
    filled = np.zeros_like(m)
    cv2.fillPoly(filled, [hull], 1)
    hull_area = int((filled.astype(bool) | mask.astype(bool)).sum())
    return area / hull_area


def mask_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Tight box (x0, y0, x1, y1) of the mask, exclusive ends; None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def measure_view(rgb: np.ndarray, mask: np.ndarray, sharpness_erode_px: int = 2) -> ViewMeasures:
    """All raw measures of one object in one view.

    Args:
        rgb: [H, W, 3] uint8 full frame. mask: [H, W] bool object mask.
    """
    _check_image_mask(rgb, mask)
    mask = mask.astype(bool)
    h, w = mask.shape
    area = int(mask.sum())
    if area == 0:
        return ViewMeasures(0, 0.0, 0.0, 0.0, 0.0, None, None, (w, h))
    ys, xs = np.nonzero(mask)
    centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    return ViewMeasures(
        area=area,
        area_fraction=area / (h * w),
        sharpness=sharpness_in_mask(rgb, mask, sharpness_erode_px),
        cut_fraction=border_cut_fraction(mask),
        solidity=solidity(mask),
        centroid=centroid,
        bbox=mask_bbox(mask),
        size=(w, h),
    )


# --------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------
TERM_NAMES = ("sharpness", "size", "completeness", "solidity")


@dataclass
class QualityTerms:
    """Normalised quality of V views of one object.

    Attributes:
        terms: name -> [V] term in [0, 1] (names in ``TERM_NAMES``).
        quality: [V] weighted mean of the terms, in [0, 1].
        candidate: [V] bool, passes the size filter (non-empty, large enough).
        complete: [V] bool, ``cut_fraction <= max_cut_fraction``.
        min_area: the area threshold of the size filter, in pixels.
        reasons: [V] why a view is not a candidate ("" when it is).
    """

    terms: dict[str, np.ndarray]
    quality: np.ndarray
    candidate: np.ndarray
    complete: np.ndarray
    min_area: float
    reasons: list[str] = field(default_factory=list)


def quality_terms(measures: Sequence[ViewMeasures], params: ViewSelectionParams) -> QualityTerms:
    """Normalise the raw measures of one object's views into terms, the quality and the filters."""
    v = len(measures)
    area = np.array([m.area for m in measures], dtype=np.float64)
    sharp = np.array([m.sharpness for m in measures], dtype=np.float64)
    cut = np.array([m.cut_fraction for m in measures], dtype=np.float64)
    solid = np.array([m.solidity for m in measures], dtype=np.float64)
    max_area = float(area.max()) if v else 0.0
    min_area = max(float(params.min_mask_pixels), params.min_area_fraction * max_area)
    candidate = (area > 0) & (area >= min_area)
    reasons = []
    for a in area:
        if a == 0:
            reasons.append("empty mask")
        elif a < min_area:
            reasons.append(f"mask area {int(a)} px < {min_area:.0f} px")
        else:
            reasons.append("")
    size = area / max_area if max_area > 0 else np.zeros(v)
    ref = sharp[candidate & (sharp > 0)]
    med = float(np.median(ref)) if ref.size else 0.0
    if med > 0:
        r = sharp / med
        sharp_term = r / (1.0 + r)
    else:
        sharp_term = np.zeros(v)
    terms = {
        "sharpness": sharp_term,
        "size": size,
        "completeness": np.where(area > 0, 1.0 - cut, 0.0),
        "solidity": solid,
    }
    weights = {
        "sharpness": params.w_sharpness,
        "size": params.w_size,
        "completeness": params.w_completeness,
        "solidity": params.w_solidity,
    }
    total_w = sum(weights.values())
    quality = sum(weights[k] * terms[k] for k in TERM_NAMES) / total_w
    complete = cut <= params.max_cut_fraction
    return QualityTerms(terms, np.asarray(quality, dtype=np.float64), candidate, complete, min_area, reasons)


# --------------------------------------------------------------------------------------------
# Geometry: object centre and directions
# --------------------------------------------------------------------------------------------
def pixel_rays(camera: Camera, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixel positions.

    Args:
        camera: W2C camera whose ``width``/``height`` are those of the image ``uv`` refers to.
        uv: [N, 2] pixel positions (pixel centres at +0.5).
    Returns:
        origins [N, 3] (the camera centre) and unit directions [N, 3] = normalise(R^T K^-1 (u, v, 1)).
        The ray through the principal point is the third ROW of R.
    """
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    x = (uv[:, 0] - camera.cx) / camera.fx
    y = (uv[:, 1] - camera.cy) / camera.fy
    d_cam = np.stack([x, y, np.ones_like(x)], axis=1)
    d = d_cam @ camera.R  # row i: R^T d_cam_i
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.repeat(camera.center[None], len(d), axis=0), d


def triangulate_rays(origins: np.ndarray, dirs: np.ndarray, weights: Optional[np.ndarray] = None,
                     iterations: int = TRIANGULATION_ITERATIONS) -> tuple[np.ndarray, bool]:
    """Least-squares intersection of rays, made robust by reweighting.

    Minimises ``sum_i w_i |(I - d_i d_i^T)(X - o_i)|^2`` (squared distances of X to the rays):
    ``X = (sum w_i P_i)^-1 sum w_i P_i o_i`` with ``P_i = I - d_i d_i^T``. Then
    ``iterations`` rounds of iteratively reweighted least squares with Cauchy weights
    ``1 / (1 + (r_i / s)^2)``, ``s`` = 1.4826 x the median distance ``r_i`` (a ray through a wrong
    mask centroid loses its pull).

    Args:
        origins: [N, 3]; dirs: [N, 3] (need not be unit); weights: [N] >= 0 (default ones).
    Returns:
        (X [3], ok). ``ok`` is False when the rays are (nearly) parallel or fewer than 2: then X is
        the point of the weighted mean ray closest to the mean origin plus the mean distance of the
        origins from it (a finite point on the common direction), with a warning.
    """
    o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    n = len(o)
    if n == 0:
        raise ValueError("triangulate_rays needs at least one ray")
    w0 = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(n)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [N, 3, 3]

    def solve(w: np.ndarray) -> Optional[np.ndarray]:
        A = (w[:, None, None] * P).sum(0)
        b = (w[:, None, None] * P @ o[:, :, None]).sum(0)[:, 0]
        if np.linalg.eigvalsh(A)[0] < TRIANGULATION_MIN_EIGEN * max(w.sum(), 1e-12):
            return None
        return np.linalg.solve(A, b)

    x = solve(w0)
    if x is None:
        mean_d = (w0[:, None] * d).sum(0)
        mean_d /= max(np.linalg.norm(mean_d), 1e-12)
        spread = float(np.linalg.norm(o - o.mean(0), axis=1).mean())
        log.warning("the %d rays towards the object are (nearly) parallel: its centre cannot be triangulated", n)
        return o.mean(0) + mean_d * max(spread, 1.0), False
    for _ in range(iterations):
        r = np.linalg.norm((P @ (x - o)[:, :, None])[:, :, 0], axis=1)
        s = 1.4826 * float(np.median(r))
        if s <= 1e-12:
            break
        x_new = solve(w0 / (1.0 + (r / s) ** 2))
        if x_new is None:
            break
        x = x_new
    return x, True


def triangulate_mask_centroids(cameras: Sequence[Camera], measures: Sequence[ViewMeasures],
                               use: Optional[np.ndarray] = None) -> tuple[np.ndarray, bool]:
    """Object centre from the rays through the mask centroids of the given views.

    Args:
        cameras: [V] cameras, each at the size of its mask image (``ViewMeasures.size``).
        measures: [V] measures (views with an empty mask are skipped).
        use: [V] bool, the views to use (default: every non-empty one).
    Returns:
        (X [3], ok) as :func:`triangulate_rays`.
    """
    origins, dirs = [], []
    for i, (cam, m) in enumerate(zip(cameras, measures)):
        if m.centroid is None or (use is not None and not use[i]):
            continue
        if (cam.width, cam.height) != m.size:
            cam = cam.resized(*m.size)
        o, d = pixel_rays(cam, m.centroid[None])
        origins.append(o[0])
        dirs.append(d[0])
    if not origins:
        raise ValueError("no view with a non-empty mask to triangulate from")
    return triangulate_rays(np.stack(origins), np.stack(dirs))


def directions_to(centre: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[V, 3] unit directions from the camera centres [V, 3] towards the point ``centre`` [3]."""
    d = np.asarray(centre, dtype=np.float64)[None] - np.asarray(centers, dtype=np.float64)
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    return d / np.maximum(norm, 1e-12)


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] angles in degrees between unit vectors a [A, 3] and b [B, 3]."""
    c = np.clip(np.asarray(a) @ np.asarray(b).T, -1.0, 1.0)
    return np.degrees(np.arccos(c))


# --------------------------------------------------------------------------------------------
# Greedy selection
# --------------------------------------------------------------------------------------------
@dataclass
class Pick:
    """One greedy step: the view index, its quality, diversity (in [0, 1]) and total score."""

    index: int
    quality: float
    diversity: float
    score: float
    complete: bool


def greedy_select(quality: np.ndarray, directions: np.ndarray, candidate: np.ndarray, k: int,
                  diversity_weight: float, preferred: Optional[np.ndarray] = None) -> list[Pick]:
    """Choose up to ``k`` views maximising ``quality + diversity_weight * diversity`` greedily.

    Args:
        quality: [V] in [0, 1]. directions: [V, 3] unit directions towards the object centre.
        candidate: [V] bool, the views that may be chosen.
        preferred: [V] bool (default all): chosen first; the others only once no preferred
            candidate is left (used for views cut by the image border).
    Returns:
        the picks in selection order. diversity = smallest angle to the chosen directions / 180
        (1 for the first pick). Ties within ``TIE_TOLERANCE`` go to the lowest index.
    """
    quality = np.asarray(quality, dtype=np.float64)
    v = len(quality)
    candidate = np.asarray(candidate, dtype=bool)
    preferred = np.ones(v, dtype=bool) if preferred is None else np.asarray(preferred, dtype=bool)
    free = candidate.copy()
    picks: list[Pick] = []
    chosen_dirs: list[np.ndarray] = []
    for _ in range(k):
        pool = free & preferred
        if not pool.any():
            pool = free
        if not pool.any():
            break
        if chosen_dirs:
            div = angles_deg(directions, np.stack(chosen_dirs)).min(axis=1) / 180.0
        else:
            div = np.ones(v)
        score = quality + diversity_weight * div
        best = score[pool].max()
        idx = int(np.flatnonzero(pool & (score >= best - TIE_TOLERANCE))[0])
        picks.append(Pick(idx, float(quality[idx]), float(div[idx]), float(score[idx]), bool(preferred[idx])))
        chosen_dirs.append(directions[idx])
        free[idx] = False
    return picks


@dataclass
class ObjectSelection:
    """The result of :func:`select_views` for one object.

    Attributes:
        picks: the chosen views in order. centre: [3] object centre used. directions: [V, 3].
        quality: the normalised terms and filters. pairwise_angles: [k, k] degrees between the
        chosen directions.
    """

    picks: list[Pick]
    centre: np.ndarray
    directions: np.ndarray
    quality: QualityTerms
    pairwise_angles: np.ndarray

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.picks]

    @property
    def min_angle(self) -> Optional[float]:
        """Smallest angle (degrees) between two chosen directions; None with fewer than 2 picks."""
        k = len(self.picks)
        if k < 2:
            return None
        return float(self.pairwise_angles[np.triu_indices(k, 1)].min())


def select_views(measures: Sequence[ViewMeasures], camera_centers: np.ndarray, centre: np.ndarray,
                 params: ViewSelectionParams) -> ObjectSelection:
    """Score the views of one object and choose ``params.img_num`` of them.

    Args:
        measures: [V] per-view measures (training views, sorted by stem).
        camera_centers: [V, 3] camera centres ``-R^T t``.
        centre: [3] object centre in world coordinates.
    Raises:
        ValueError: no view has a non-empty mask.
    """
    if not any(m.area > 0 for m in measures):
        raise ValueError("the object's mask is empty in every view")
    q = quality_terms(measures, params)
    dirs = directions_to(centre, camera_centers)
    picks = greedy_select(q.quality, dirs, q.candidate, params.img_num, params.diversity_weight, q.complete)
    chosen = dirs[[p.index for p in picks]]
    return ObjectSelection(picks, np.asarray(centre, dtype=np.float64), dirs, q, angles_deg(chosen, chosen))


# --------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------
@dataclass
class Crop:
    """An RGBA crop: ``rgba`` [h, w, 4] uint8 (alpha in {0, 255}), ``box`` (x0, y0, x1, y1) in the
    frame (exclusive ends) and the upscale factor applied after cropping (a power of 2)."""

    rgba: np.ndarray
    box: tuple[int, int, int, int]
    upscale: int


def crop_box(bbox: tuple[int, int, int, int], size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """The mask box grown by ``margin`` x its width (left/right) and height (top/bottom),
    rounded up to whole pixels and clipped at the image of ``size`` = (width, height)."""
    x0, y0, x1, y1 = bbox
    mx = int(np.ceil(margin * (x1 - x0)))
    my = int(np.ceil(margin * (y1 - y0)))
    w, h = size
    return max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)


def crop_rgba(rgb: np.ndarray, mask: np.ndarray, margin: float, min_crop_pixels: int) -> Crop:
    """Crop the frame to the mask box plus margin as RGBA (RGB = original pixels, alpha = mask).

    While the crop has fewer than ``min_crop_pixels`` pixels its scale is doubled; the resulting
    power-of-2 factor is applied in one resize (one bicubic interpolation of the RGB rather than
    several; nearest for alpha, which stays in {0, 255}).

    Args:
        rgb: [H, W, 3] uint8. mask: [H, W] bool, not empty.
    """
    _check_image_mask(rgb, mask)
    bbox = mask_bbox(mask)
    if bbox is None:
        raise ValueError("cannot crop to an empty mask")
    h, w = mask.shape
    x0, y0, x1, y1 = crop_box(bbox, (w, h), margin)
    rgb_c = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    alpha_c = np.where(mask[y0:y1, x0:x1], 255, 0).astype(np.uint8)
    factor = 1
    cw, ch = x1 - x0, y1 - y0
    while cw * factor * ch * factor < min_crop_pixels:
        factor *= 2
    if factor > 1:
        size = (cw * factor, ch * factor)
        rgb_c = np.asarray(Image.fromarray(rgb_c, "RGB").resize(size, Image.BICUBIC))
        alpha_c = np.asarray(Image.fromarray(alpha_c, "L").resize(size, Image.NEAREST))
    rgba = np.concatenate([rgb_c, alpha_c[:, :, None]], axis=2)
    return Crop(np.ascontiguousarray(rgba), (x0, y0, x1, y1), factor)
