"""Coverage report: from which directions did the training views see each object?

Written by ``segmentation_3dgs.py`` (``--no-coverage`` skips it) as ``M/coverage/<prompt>.json``
and ``M/coverage/<prompt>.png``, with a table on stdout. It tells which objects need completion.

Definitions (all pure functions below; angles in degrees):

* **Object centre** c: the median of the object's Gaussian centres.
* **Viewing direction** of camera v: the unit vector from c to the camera centre C_v.
* **Valid camera**: c is in front of it and projects inside its image (the view frustum), and
  the object's mask in that view has at least ``coverage_min_mask_pixels`` pixels.
* **Covered direction**: a unit direction u is covered when some valid training camera's viewing
  direction lies within ``coverage_angle`` of u. The fraction of covered directions is measured
  on a Fibonacci sphere of ``coverage_directions`` nearly uniform directions (each direction
  stands for the same solid angle).
* **Upper hemisphere**: the directions with u·up >= 0. Objects rest on a support (table, floor):
  no capture can see them from below it, and a generator completing them need not either, so the
  upper-hemisphere fraction is the number that says how complete the capture is (the full-sphere
  fraction is at most about one half plus the band below the horizon seen by low cameras). ``up``
  is estimated from the cameras (the mean of their image "up" axes, −R[1] in world coordinates;
  people and rigs keep images upright) unless ``--coverage_up`` gives it.
* **Under-observed Gaussians**: the share of the object's Gaussians seen by fewer than
  ``coverage_min_views`` training views; a Gaussian is seen by a view when its compositing weight
  Σ_p α T there exceeds ``--seen_weight`` pixels (counted in the segmentation's render pass).

The PNG is an equirectangular map in the object's frame (up = top; azimuth 0 = world x projected
onto the horizontal plane, increasing counter-clockwise seen from above) coloured by how many
valid training cameras see the object from within ``coverage_angle`` of each direction (grey: none),
with training cameras as white dots and test cameras as red crosses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from utils.arguments import opt


@dataclass
class CoverageParams:
    """Coverage report options (segmentation_3dgs.py)."""

    coverage: bool = opt(True, "write M/coverage/<prompt>.json and .png and print the coverage table")
    coverage_angle: float = opt(20.0, "a direction is covered when a training camera sees the object centre from within this angle (degrees)")
    coverage_directions: int = opt(1000, "number of directions (Fibonacci sphere) on which the covered fractions are measured")
    coverage_min_mask_pixels: int = opt(16, "a camera counts only if the object's mask has at least this many pixels in its view")
    coverage_min_views: int = opt(3, "report the share of the object's Gaussians seen by fewer than this many training views")
    coverage_up: list[float] = opt([], "world up vector (3 numbers) of the support plane; default: estimated from the camera orientations")
    coverage_map_width: int = opt(720, "width in pixels of the coverage map PNG (height = width / 2 plus a legend)")
    coverage_advise: float = opt(0.75, "completion is advised when the upper-hemisphere coverage is below this fraction")
    coverage_advise_unseen: float = opt(0.25, "... or when more than this share of the object's Gaussians is under-observed")

    def check(self) -> None:
        if not 0.0 < self.coverage_angle < 180.0:
            raise ValueError(f"--coverage_angle must be in (0, 180), got {self.coverage_angle}")
        if self.coverage_directions < 10 or self.coverage_map_width < 64 or self.coverage_min_views < 1:
            raise ValueError("--coverage_directions >= 10, --coverage_map_width >= 64 and --coverage_min_views >= 1 are required")
        if self.coverage_up and (len(self.coverage_up) != 3 or np.linalg.norm(self.coverage_up) == 0):
            raise ValueError(f"--coverage_up must be 3 numbers, not all zero, got {self.coverage_up}")


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def fibonacci_sphere(n: int) -> np.ndarray:
    """[n, 3] nearly uniform unit directions (golden-angle spiral; equal area per point)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def estimate_up(rotations: np.ndarray) -> tuple[np.ndarray, float]:
    """World up from W2C rotations [V, 3, 3] (OpenCV: image y points down, so up ≈ −R[1]).

    Returns:
        (unit up [3], agreement in [0, 1] = length of the mean of the cameras' up axes;
        near 0 when the cameras are rolled every way and the estimate means little).
    """
    rotations = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if len(rotations) == 0:
        return np.array([0.0, 0.0, 1.0]), 0.0
    mean = -rotations[:, 1, :].mean(0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-9:
        return np.array([0.0, 0.0, 1.0]), 0.0
    return mean / norm, norm


def up_frame(up: np.ndarray) -> np.ndarray:
    """[3, 3] rows (x, y, up): a right-handed frame whose x is world x (or y) projected off ``up``."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    ref = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = ref - up * (ref @ up)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(up, x), up])


def view_directions(centers: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[V, 3] unit directions from ``target`` [3] to the camera centres [V, 3]."""
    d = np.asarray(centers, dtype=np.float64).reshape(-1, 3) - np.asarray(target, dtype=np.float64)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def direction_counts(directions: np.ndarray, view_dirs: np.ndarray, angle_deg: float) -> np.ndarray:
    """[..., ] int: for directions [..., 3], how many of the unit ``view_dirs`` [V, 3] lie within
    ``angle_deg`` of each."""
    directions = np.asarray(directions, dtype=np.float64)
    view_dirs = np.asarray(view_dirs, dtype=np.float64).reshape(-1, 3)
    if len(view_dirs) == 0:
        return np.zeros(directions.shape[:-1], dtype=np.int64)
    cos_t = math.cos(math.radians(angle_deg))
    flat = directions.reshape(-1, 3)
    out = np.zeros(len(flat), dtype=np.int64)
    for s in range(0, len(flat), 65536):  # bounded memory for large maps
        out[s:s + 65536] = (flat[s:s + 65536] @ view_dirs.T >= cos_t - 1e-12).sum(1)
    return out.reshape(directions.shape[:-1])


def in_frustum(R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int, point: np.ndarray,
               near: float = 0.01) -> bool:
    """True when ``point`` [3] is in front of the W2C camera (R, t) and projects inside its image."""
    pc = np.asarray(R, dtype=np.float64) @ np.asarray(point, dtype=np.float64) + np.asarray(t, dtype=np.float64)
    if pc[2] <= near:
        return False
    u = K[0, 0] * pc[0] / pc[2] + K[0, 2]
    v = K[1, 1] * pc[1] / pc[2] + K[1, 2]
    return bool(0.0 <= u < width and 0.0 <= v < height)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def coverage_report(
    centre: np.ndarray,
    up: np.ndarray,
    train_dirs: np.ndarray,
    seen_count: np.ndarray,
    params: CoverageParams,
    test_dirs: Optional[np.ndarray] = None,
) -> dict:
    """The numbers of one object's coverage.

    Args:
        centre: [3] object centre. up: [3] world up.
        train_dirs: [V, 3] unit viewing directions of the VALID training cameras.
        seen_count: [M] number of training views that saw each of the object's Gaussians.
        test_dirs: optional [T, 3] unit viewing directions of the test cameras that see the object.

    Returns:
        a JSON-ready dict (fractions in [0, 1]).
    """
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    dirs = fibonacci_sphere(params.coverage_directions)
    counts = direction_counts(dirs, train_dirs, params.coverage_angle)
    covered = counts > 0
    upper = dirs @ up >= 0.0
    seen_count = np.asarray(seen_count).reshape(-1)
    low = seen_count < params.coverage_min_views
    elev = np.degrees(np.arcsin(np.clip(np.asarray(train_dirs).reshape(-1, 3) @ up, -1, 1))) if len(train_dirs) else np.zeros(0)
    rep = {
        "centre": np.asarray(centre, dtype=float).tolist(),
        "up": up.tolist(),
        "angle_deg": params.coverage_angle,
        "directions": int(len(dirs)),
        "train_views_used": int(len(train_dirs)),
        "covered_sphere": float(covered.mean()),
        "covered_upper_hemisphere": float(covered[upper].mean()) if upper.any() else 0.0,
        "mean_views_per_covered_direction": float(counts[covered].mean()) if covered.any() else 0.0,
        "train_elevation_deg": {"min": float(elev.min()), "max": float(elev.max())} if len(elev) else None,
        "gaussians": int(len(seen_count)),
        "min_views": params.coverage_min_views,
        "under_observed_share": float(low.mean()) if len(seen_count) else None,
        "seen_count_histogram": np.bincount(np.minimum(seen_count, 10), minlength=11).tolist() if len(seen_count) else [],
    }
    if test_dirs is not None and len(test_dirs):
        tc = direction_counts(np.asarray(test_dirs), train_dirs, params.coverage_angle)
        rep["test_views"] = int(len(test_dirs))
        rep["test_views_uncovered"] = int((tc == 0).sum())
    uo = rep["under_observed_share"]
    rep["completion_advised"] = bool(rep["covered_upper_hemisphere"] < params.coverage_advise
                                     or (uo is not None and uo > params.coverage_advise_unseen))
    return rep


# ---------------------------------------------------------------------------------------------
# Drawing (numpy + OpenCV; no matplotlib)
# ---------------------------------------------------------------------------------------------
_RAMP = np.array([  # a perceptually ordered dark-blue -> teal -> green -> yellow ramp (RGB)
    [40, 30, 110], [35, 90, 150], [30, 140, 140], [60, 180, 100], [160, 210, 50], [250, 230, 40],
], dtype=np.float64)
_NONE = np.array([70, 70, 70], dtype=np.float64)


def colour_counts(counts: np.ndarray, vmax: Optional[int] = None) -> np.ndarray:
    """[..., 3] uint8 RGB for integer counts: grey for 0, the ramp from 1 to ``vmax``."""
    counts = np.asarray(counts)
    vmax = max(int(counts.max()) if counts.size else 1, 1) if vmax is None else max(int(vmax), 1)
    t = np.clip((counts - 1) / max(vmax - 1, 1), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(np.floor(t).astype(int), len(_RAMP) - 2)
    f = (t - i)[..., None]
    rgb = _RAMP[i] * (1 - f) + _RAMP[i + 1] * f
    rgb = np.where((counts > 0)[..., None], rgb, _NONE)
    return np.round(rgb).astype(np.uint8)


def equirect_directions(width: int, height: int, up: np.ndarray) -> np.ndarray:
    """[H, W, 3] world directions at the pixel centres of an equirectangular map (row 0 = up)."""
    frame = up_frame(up)
    az = (np.arange(width) + 0.5) / width * 2 * math.pi - math.pi  # -180..180 left to right
    el = math.pi / 2 - (np.arange(height) + 0.5) / height * math.pi
    az, el = np.meshgrid(az, el)
    local = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    return local @ frame


def direction_to_pixel(dirs: np.ndarray, up: np.ndarray, width: int, height: int) -> np.ndarray:
    """[V, 2] float map coordinates (x, y) of unit world directions [V, 3] (inverse of the above)."""
    local = np.asarray(dirs, dtype=np.float64).reshape(-1, 3) @ up_frame(up).T
    az = np.arctan2(local[:, 1], local[:, 0])
    el = np.arcsin(np.clip(local[:, 2], -1, 1))
    return np.stack([(az + math.pi) / (2 * math.pi) * width, (math.pi / 2 - el) / math.pi * height], 1)


def draw_coverage_map(
    up: np.ndarray,
    train_dirs: np.ndarray,
    angle_deg: float,
    width: int = 720,
    test_dirs: Optional[np.ndarray] = None,
    title: str = "",
    lines: Sequence[str] = (),
) -> np.ndarray:
    """The coverage map as an [H, W, 3] uint8 RGB image (map, then a legend strip below)."""
    import cv2

    width = int(width)
    mh = width // 2
    dirs = equirect_directions(width, mh, up)
    counts = direction_counts(dirs, train_dirs, angle_deg)
    vmax = max(int(counts.max()), 1)
    img = colour_counts(counts, vmax)
    img = np.ascontiguousarray(img)
    # parallels every 30 degrees, the horizon (support plane) brighter; meridians every 90
    for el in (-60, -30, 30, 60):
        y = int(round((90 - el) / 180 * mh))
        cv2.line(img, (0, y), (width - 1, y), (120, 120, 120), 1, cv2.LINE_AA)
    cv2.line(img, (0, mh // 2), (width - 1, mh // 2), (230, 230, 230), 1, cv2.LINE_AA)
    for az in (-90, 0, 90):
        x = int(round((az + 180) / 360 * width))
        cv2.line(img, (x, 0), (x, mh - 1), (120, 120, 120), 1, cv2.LINE_AA)
    r = max(2, width // 180)
    for x, y in direction_to_pixel(train_dirs, up, width, mh) if len(train_dirs) else []:
        cv2.circle(img, (int(x), int(y)), r, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), r, (0, 0, 0), 1, cv2.LINE_AA)
    if test_dirs is not None and len(test_dirs):
        for x, y in direction_to_pixel(test_dirs, up, width, mh):
            p, s = (int(x), int(y)), r + 2
            cv2.line(img, (p[0] - s, p[1] - s), (p[0] + s, p[1] + s), (230, 30, 30), 2, cv2.LINE_AA)
            cv2.line(img, (p[0] - s, p[1] + s), (p[0] + s, p[1] - s), (230, 30, 30), 2, cv2.LINE_AA)
    scale = width / 720.0
    font = cv2.FONT_HERSHEY_SIMPLEX
    for text, y in (("above", int(mh * 0.06)), ("support plane", mh // 2 - 4), ("below", mh - 6)):
        cv2.putText(img, text, (4, max(y, 12)), font, 0.4 * scale, (235, 235, 235), 1, cv2.LINE_AA)

    # legend strip: title, colour bar with its counts, marker keys, extra lines
    line_h = int(18 * scale) + 2
    n_lines = 3 + len(lines)
    legend = np.full((line_h * n_lines + 8, width, 3), 255, np.uint8)
    cv2.putText(legend, title, (6, line_h), font, 0.5 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    bar_w = width // 3
    bar_vals = np.concatenate([[0], 1 + np.arange(bar_w - bar_w // 8) * max(vmax - 1, 0) / max(bar_w - bar_w // 8 - 1, 1)])
    bar = colour_counts(np.round(np.repeat(bar_vals[None], line_h // 2, 0)).astype(int), vmax)
    y0 = line_h + 6
    legend[y0:y0 + bar.shape[0], 6:6 + bar.shape[1]] = bar[:, : min(bar.shape[1], width - 6)]
    cv2.putText(legend, f"cameras within {angle_deg:g} deg: 0 .. {vmax}", (12 + bar.shape[1], y0 + line_h // 2),
                font, 0.4 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    y1 = y0 + line_h + 4
    cv2.circle(legend, (12, y1 - 4), r, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(legend, "training camera", (22, y1), font, 0.4 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(legend, (170 - r, y1 - 4 - r), (170 + r, y1 - 4 + r), (230, 30, 30), 2, cv2.LINE_AA)
    cv2.line(legend, (170 - r, y1 - 4 + r), (170 + r, y1 - 4 - r), (230, 30, 30), 2, cv2.LINE_AA)
    cv2.putText(legend, "test camera", (180, y1), font, 0.4 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    for j, text in enumerate(lines):
        cv2.putText(legend, text, (6, y1 + line_h * (j + 1)), font, 0.4 * scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, legend], 0)


def format_table(rows: Sequence[dict]) -> str:
    """The stdout table: one row per object (dicts with prompt and a coverage_report's keys)."""
    seen = f"seen<{rows[0].get('min_views', 3)}" if rows else "seen<3"
    head = f"{'object':<20} {'Gaussians':>9} {'views':>5} {'sphere':>7} {'upper':>7} {seen:>8}  completion"
    out = [head, "-" * len(head)]
    for r in rows:
        if r.get("covered_sphere") is None:
            out.append(f"{r['prompt'][:20]:<20} {r.get('gaussians', 0):>9} {'-':>5} {'-':>7} {'-':>7} {'-':>8}  {r.get('note', 'n/a')}")
            continue
        uo = r["under_observed_share"]
        out.append(
            f"{r['prompt'][:20]:<20} {r['gaussians']:>9} {r['train_views_used']:>5} {r['covered_sphere']:>7.1%} "
            f"{r['covered_upper_hemisphere']:>7.1%} {('-' if uo is None else format(uo, '.1%')):>8}  "
            f"{'advised' if r['completion_advised'] else 'not needed'}"
        )
    return "\n".join(out)


__all__ = [
    "CoverageParams", "colour_counts", "coverage_report", "direction_counts", "direction_to_pixel", "draw_coverage_map",
    "equirect_directions", "estimate_up", "fibonacci_sphere", "format_table", "in_frustum", "up_frame", "view_directions",
]
