"""Stage 5, ``hull`` backend: a proxy carved from the object's masks (no generator weights needed).

The visual hull of an object is the set of 3D points that project inside its mask in every view.
Here it is carved on a voxel grid over the object's box and made robust to mask errors and
occlusion, then turned into thin surface Gaussians coloured from the views.

Steps (pure functions of numpy arrays, cameras and :class:`HullParams`; the I/O is
:func:`run_hull_backend`):

1. Box: per axis the ``[p, 100 - p]`` percentiles (``p = hull_box_percentile``) of the centres of
   ``M/gs_seg/<prompt>.ply`` (robust to floaters), enlarged on every side by ``hull_box_margin`` x
   its largest side. Keep the margin small: cameras that all look from above (or from around) never
   carve the top and bottom of an object (a ray through a point above it still hits the object
   behind), so there the box, not the masks, bounds the hull.
2. Grid: cubic voxels of side ``h = largest box side / hull_resolution``; voxel centres are tested.
3. Carving: a training view *votes* on a voxel when the voxel's centre projects inside its image
   (in front of the camera) and, with ``hull_occluders``, not onto a pixel of ANOTHER object's mask
   only (such a pixel may hide this object: it says nothing). The mask is tested between pixel
   centres (bilinear, level 0.5; ``hull_subpixel``) or at the nearest pixel. The voxel is kept when
   it was voted on by at least ``hull_min_views`` views and lies inside the object's mask in at
   least ``hull_min_fraction`` of them. Mind that what lies just outside an object is often carved
   by very few views (those that see the surface edge-on): any tolerance below 1 leaves bulges;
   the default 0.95 forgives one bad view in 20.
4. Cleanup: ``hull_open_iterations`` binary openings (6-connected) remove thin spurs, then the
   largest 26-connected component is kept and its inner holes are filled.
5. Surface: one point at the centre of every voxel face between the solid and the empty space,
   with the face's axis as its normal (the hull's boundary to the voxel's precision).
6. Colour: per view a z-buffer of those surface points (each splatted on its pixel, then the
   buffer min-filtered over the footprint of a voxel face so that close views have no holes). A
   point is *visible* in a view when it is inside the image, inside the object's mask and its
   depth is within ``hull_visibility_tolerance`` x max(``h``, the pixel's footprint) of the
   buffer; its colour is the per-channel median over the views where it is visible (a robust
   mean), and points visible in no view take the colour of the nearest coloured point.
7. Gaussians: one flat SH-0 Gaussian per face point, lying in the face, with sigma
   ``hull_sigma_ratio`` x ``h`` along the face and that times ``normal_scale_ratio`` along the
   normal, and the given opacity.

Conventions: cameras are W2C with OpenCV axes and per-camera intrinsics (:mod:`scene.cameras`);
pixel ``(i, j)`` (row, column) covers ``[j, j+1) x [i, i+1)`` and has its centre at
``(j + 0.5, i + 0.5)``, so a projection ``(u, v)`` falls in pixel ``(floor(v), floor(u))``.
Masks are the alpha of ``D/masked_image_rgba/<prompt>/<stem>.png`` (> ``MASK_ALPHA_THRESHOLD``);
their RGB is the full frame. The output keeps the scene's world axes (a hull has no canonical
orientation); it is normalised into the canonical box by a uniform scale and a translation, recorded
as a 4x4 world -> canonical matrix.

Needs numpy, scipy (ndimage, spatial), Pillow, plyfile and PyYAML (the scene folder); no torch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from scene.cameras import Camera
from scene.colmap import rotmat_to_qvec
from scene.gaussian_ply import C0, GaussianArrays
from utils.arguments import opt
from utils.errors import InputError

log = logging.getLogger(__name__)

MASK_DIR = "masked_image_rgba"
UNION_MASK_FOLDER = "masked"  # D/masked_image_rgba/masked/ is the union of the objects, not an object
GS_SEG = "gs_seg"
MASK_ALPHA_THRESHOLD = 127
"""A pixel belongs to the mask when its alpha is above this (stage 1 writes alpha in {0, 255})."""
MIN_DEPTH = 1e-9
"""Points at or behind this camera depth (metres) are not in front of the camera."""
MAX_LISTED_MISSING = 5
"""How many missing frames an error message names before it only gives the count."""


@dataclass
class HullParams:
    """Options of the ``hull`` backend (visual hull from the training masks)."""

    hull_resolution: int = opt(96, "voxels along the longest side of the object's box (the hull's precision is box side / this)")
    hull_box_percentile: float = opt(1.0, "the object's box spans the [p, 100-p] percentiles of its M/gs_seg Gaussian centres per axis (robust to floaters)")
    hull_box_margin: float = opt(0.02, "enlarge the box on every side by this fraction of its largest side (small: views from above or around cannot carve the top and bottom, the box does)")
    hull_min_fraction: float = opt(0.95, "keep a voxel inside the object's mask in at least this fraction of the training views that see it (below 1 tolerates wrong masks, but leaves bulges where few views carve)")
    hull_min_views: int = opt(2, "keep only voxels seen (inside the image, not behind another object's mask) by at least this many training views")
    hull_open_iterations: int = opt(1, "binary openings of the carved voxels (removes spurs this many voxels thin); 0 disables")
    hull_visibility_tolerance: float = opt(2.0, "a surface point is visible in a view when its depth is within this many voxel sizes (or pixel footprints, when larger) of the view's z-buffer")
    hull_sigma_ratio: float = opt(0.5, "sigma of a surface Gaussian along its voxel face / the voxel size (0.5: the face is covered to 1 sigma)")
    hull_subpixel: bool = opt(True, "test the masks between pixel centres (bilinear, level 0.5) instead of at the nearest pixel: a sub-pixel silhouette, less erosion when many views intersect")
    hull_occluders: bool = opt(True, "pixels inside another object's mask (D/masked_image_rgba/<other>/) do not vote: that object may hide this one")

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        checks = [
            ("hull_resolution", self.hull_resolution >= 4, ">= 4"),
            ("hull_box_percentile", 0.0 <= self.hull_box_percentile < 50.0, "in [0, 50)"),
            ("hull_box_margin", self.hull_box_margin >= 0.0, ">= 0"),
            ("hull_min_fraction", 0.0 < self.hull_min_fraction <= 1.0, "in (0, 1]"),
            ("hull_min_views", self.hull_min_views >= 1, ">= 1"),
            ("hull_open_iterations", self.hull_open_iterations >= 0, ">= 0"),
            ("hull_visibility_tolerance", self.hull_visibility_tolerance > 0.0, "> 0"),
            ("hull_sigma_ratio", self.hull_sigma_ratio > 0.0, "> 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"--{name} must be {want}, got {getattr(self, name)}")


@dataclass
class HullSceneParams:
    """Where the hull backend finds the scene (values not given come from M/cfg_args)."""

    source_path: str = opt("", "scene folder D; empty: the source_path of M/cfg_args", short="s")
    images: str = opt("images", "image folder of D, relative to D or absolute", short="i")
    resolution: int = opt(-1, "1/2/4/8 divide the images; -1 caps the width at 1600 px; any other value is a target width", short="r")
    eval: bool = opt(False, "hold out test views (from --split_yml_name, else every 8th view); the hull uses the training views only")
    split_yml_name: str = opt("", "split file inside D with `train` and `test` lists of image stems (e.g. split.yml)")


# ---------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------
@dataclass
class MaskView:
    """One training view of one object at the camera's resolution.

    Attributes:
        camera: the view's camera (W2C, intrinsics at ``width`` x ``height``).
        mask: [H, W] bool, the object's mask.
        rgb: [H, W, 3] float32 in [0, 1], the full frame.
        occluder: [H, W] bool, pixels of OTHER objects' masks (they do not vote), or None.
    """

    camera: Camera
    mask: np.ndarray
    rgb: np.ndarray
    occluder: Optional[np.ndarray] = None


def read_mask_file(path: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] bool mask, [H, W, 3] float32 RGB) of a stage-1 RGBA file at ``size`` = (width, height).

    The alpha is resized with nearest neighbours, the RGB with PIL's bicubic filter (as 3DGS)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGBA", "LA"):
                raise InputError(path, f"has no alpha channel (mode {im.mode}); expected an RGBA PNG written by segmentation_2d.py")
            alpha = im.getchannel("A")
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise InputError(path, "mask image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None
    if alpha.size != tuple(size):
        alpha = alpha.resize(tuple(size), Image.NEAREST)
        rgb = rgb.resize(tuple(size), Image.BICUBIC)
    return np.asarray(alpha) > MASK_ALPHA_THRESHOLD, np.asarray(rgb, dtype=np.float32) / 255.0


def read_alpha(path: str, size: tuple[int, int]) -> np.ndarray:
    """[H, W] bool mask of an RGBA (alpha) or grey mask file, nearest-resized to ``size``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("L")
            if a.size != tuple(size):
                a = a.resize(tuple(size), Image.NEAREST)
            return np.asarray(a) > MASK_ALPHA_THRESHOLD
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Box and grid
# ---------------------------------------------------------------------------------------------
def object_box(xyz: np.ndarray, percentile: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(lo [3], hi [3]): the per-axis [p, 100-p] percentile box of ``xyz`` [N, 3], enlarged on every
    side by ``margin`` x its largest side."""
    xyz = np.asarray(xyz, dtype=np.float64)
    lo = np.percentile(xyz, percentile, axis=0)
    hi = np.percentile(xyz, 100.0 - percentile, axis=0)
    pad = margin * float((hi - lo).max())
    return lo - pad, hi + pad


@dataclass
class VoxelGrid:
    """Cubic voxels: voxel (a, b, c) has its centre at ``origin + (a, b, c) * size``."""

    origin: np.ndarray  # [3] centre of voxel (0, 0, 0)
    size: float
    shape: tuple[int, int, int]

    @staticmethod
    def over_box(lo: np.ndarray, hi: np.ndarray, resolution: int) -> "VoxelGrid":
        """``resolution`` voxels along the largest side of [lo, hi]; the grid is centred on the box."""
        side = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
        if not np.isfinite(side).all() or side.max() <= 0.0:
            raise ValueError("degenerate box")
        h = float(side.max()) / resolution
        shape = tuple(int(max(1, np.ceil(s / h - 1e-9))) for s in side)
        centre = (np.asarray(lo) + np.asarray(hi)) / 2.0
        origin = centre - (np.asarray(shape) - 1) * h / 2.0
        return VoxelGrid(origin.astype(np.float64), h, shape)  # type: ignore[arg-type]

    def centres(self) -> np.ndarray:
        """[X*Y*Z, 3] voxel centres in C order (index = (a * Y + b) * Z + c)."""
        axes = [self.origin[k] + np.arange(self.shape[k]) * self.size for k in range(3)]
        g = np.meshgrid(*axes, indexing="ij")
        return np.stack([a.ravel() for a in g], axis=1)


# ---------------------------------------------------------------------------------------------
# Carving
# ---------------------------------------------------------------------------------------------
def project_points(cam: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(u [N], v [N], depth [N], inside [N] bool): pixel coordinates of world points (pixel centres at
    +0.5) and whether they are in front of the camera and inside the image.

    Computed in the dtype of ``points`` (float32 voxel centres halve the memory traffic)."""
    dt = points.dtype.type if points.dtype in (np.float32, np.float64) else np.float64
    pc = points @ cam.R.T.astype(dt) + cam.t.astype(dt)
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = pc[:, 0] / z * dt(cam.fx) + dt(cam.cx)
        v = pc[:, 1] / z * dt(cam.fy) + dt(cam.cy)
        inside = (z > MIN_DEPTH) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    return u, v, z, inside


def pixel_of(cam: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row [N] int, column [N] int, depth [N], inside [N] bool): the pixel that each world point
    falls in, pixel (i, j) covering [j, j+1) x [i, i+1) (0 where not inside the image)."""
    u, v, z, inside = project_points(cam, points)
    col = np.zeros(len(points), np.int64)
    row = np.zeros(len(points), np.int64)
    col[inside] = u[inside].astype(np.int64)  # floor: u >= 0 there
    row[inside] = v[inside].astype(np.int64)
    # a value just below width can round up to width in floating point: clamp
    np.clip(col, 0, cam.width - 1, out=col)
    np.clip(row, 0, cam.height - 1, out=row)
    return row, col, z, inside


def mask_value(mask: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[N] the bilinear interpolation of a binary mask [H, W] between its pixel centres at the
    projections (u, v) (edge-clamped). Its 0.5 level passes midway between inside and outside pixel
    centres: a sub-pixel estimate of the silhouette (a nearest-pixel test errs by up to half a pixel,
    and intersecting many views accumulates that error into an eroded hull)."""
    h, w = mask.shape
    x = np.clip(u - 0.5, 0.0, w - 1.0)
    y = np.clip(v - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(y.astype(np.int64), max(h - 2, 0))
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    m = mask.astype(np.float32) if mask.dtype == bool else mask
    top = m[y0, x0] * (1 - fx) + m[y0, x1] * fx
    bottom = m[y1, x0] * (1 - fx) + m[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def carve(points: np.ndarray, views: Sequence[MaskView], min_fraction: float, min_views: int,
          subpixel: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The robust visual-hull test of ``points`` [N, 3].

    A point is inside a view's mask when the mask, bilinearly interpolated between pixel centres
    (:func:`mask_value`), is >= 0.5 there (``subpixel``), else when its pixel is in the mask. A view
    votes when the point is inside its image and not on a pixel of another object's mask (unless
    also inside this one's). A point is kept when ``votes >= min_views`` and
    ``inside >= min_fraction * votes``. Points already outside the mask in more than
    ``(1 - min_fraction) * len(views)`` views can never pass and are not projected into the
    remaining views (same result, far fewer projections).

    Returns:
        (keep [N] bool, votes [N] int: views that see the point, inside [N] int: of those, the
        views whose mask contains it; both counted until the point was ruled out).
    """
    votes = np.zeros(len(points), np.int32)
    inside = np.zeros(len(points), np.int32)
    alive = np.arange(len(points))
    max_outside = (1.0 - min_fraction) * len(views)
    for v in views:
        if len(alive) == 0:
            break
        cam = v.camera
        u, vv, _, ok = project_points(cam, points[alive])
        col = np.clip(np.where(ok, u, 0).astype(np.int64), 0, cam.width - 1)
        row = np.clip(np.where(ok, vv, 0).astype(np.int64), 0, cam.height - 1)
        if subpixel:
            in_mask = np.zeros(len(alive), bool)
            in_mask[ok] = mask_value(v.mask, u[ok], vv[ok]) >= 0.5
        else:
            in_mask = v.mask[row, col]
        if v.occluder is not None:
            ok &= ~(v.occluder[row, col] & ~in_mask)
        votes[alive] += ok
        inside[alive] += ok & in_mask
        alive = alive[(votes[alive] - inside[alive]) <= max_outside]
    keep = (votes >= min_views) & (inside >= min_fraction * votes)
    return keep, votes, inside


def clean_solid(occupancy: np.ndarray, open_iterations: int) -> tuple[np.ndarray, dict]:
    """Opening (6-connected), the largest 26-connected component, inner holes filled."""
    from scipy import ndimage

    solid = occupancy.copy()
    if open_iterations > 0 and solid.any():
        opened = ndimage.binary_opening(solid, structure=ndimage.generate_binary_structure(3, 1), iterations=open_iterations)
        if opened.any():  # an opening that erases everything is not a cleanup
            solid = opened
    labels, n = ndimage.label(solid, structure=np.ones((3, 3, 3), bool))
    info = {"voxels_carved": int(occupancy.sum()), "voxels_after_opening": int(solid.sum()), "components": int(n)}
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        solid = labels == int(np.argmax(sizes))
    solid = ndimage.binary_fill_holes(solid)
    info["voxels_final"] = int(solid.sum())
    return solid, info


def boundary_faces(solid: np.ndarray, grid: VoxelGrid) -> tuple[np.ndarray, np.ndarray]:
    """([F, 3] centres, [F, 3] outward unit normals) of the faces between solid and empty voxels
    (the grid's outside counts as empty); sorted by voxel index, then by direction."""
    padded = np.pad(solid, 1)
    centres, normals = [], []
    for axis in range(3):
        for sign in (-1, 1):
            neighbour = np.roll(padded, -sign, axis=axis)
            face = padded & ~neighbour
            idx = np.argwhere(face[1:-1, 1:-1, 1:-1])
            if len(idx) == 0:
                continue
            n = np.zeros(3)
            n[axis] = sign
            centres.append(grid.origin + idx * grid.size + 0.5 * grid.size * n)
            normals.append(np.broadcast_to(n, (len(idx), 3)))
    if not centres:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate(centres), np.concatenate(normals).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Colour
# ---------------------------------------------------------------------------------------------
def visible_in_view(view: MaskView, points: np.ndarray, face_size: float, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(visible [N] bool, row [N], column [N]) of surface ``points`` in one view: inside the image,
    inside the object's mask and not behind the z-buffer of the points themselves.

    The z-buffer holds the nearest point depth per pixel, min-filtered over the footprint of a face
    (only when a face covers more than a pixel: otherwise the points leave no gaps). A point is in
    front when its depth is within ``tolerance`` x (the larger of ``face_size`` and the pixel's
    footprint at its depth) of the buffer: the buffer cannot resolve depth finer than either."""
    from scipy import ndimage

    cam = view.camera
    row, col, z, ok = pixel_of(cam, points)
    zbuf = np.full((cam.height, cam.width), np.inf)
    np.minimum.at(zbuf, (row[ok], col[ok]), z[ok])
    focal = max(cam.fx, cam.fy)
    if ok.any():
        footprint = face_size * focal / float(z[ok].min())  # pixels covered by a face, at most
        radius = int(np.ceil((footprint - 1.0) / 2.0))
        if radius > 0:
            zbuf = ndimage.minimum_filter(zbuf, size=2 * radius + 1, mode="nearest")
    slack = tolerance * np.maximum(face_size, z / focal)
    vis = ok & view.mask[row, col] & (z <= zbuf[row, col] + slack)
    return vis, row, col


def colour_points(points: np.ndarray, views: Sequence[MaskView], face_size: float, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """([N, 3] RGB in [0, 1], [N] number of views that coloured each point).

    ``tolerance``: the depth slack of :func:`visible_in_view`, in voxel or pixel sizes.
    Colour = per-channel median over the views where the point is visible; points seen by no
    view take the colour of the nearest coloured point (grey when none is coloured)."""
    n = len(points)
    samples = np.full((len(views), n, 3), np.nan, np.float32)
    for k, v in enumerate(views):
        vis, row, col = visible_in_view(v, points, face_size, tolerance)
        samples[k, vis] = v.rgb[row[vis], col[vis]]
    seen = (~np.isnan(samples[..., 0])).sum(axis=0)
    rgb = np.full((n, 3), 0.5)
    have = seen > 0
    if have.any():
        rgb[have] = np.nanmedian(samples[:, have], axis=0)
        if not have.all():
            from scipy.spatial import cKDTree

            _, nearest = cKDTree(points[have]).query(points[~have])
            rgb[~have] = rgb[have][nearest]
    return np.clip(rgb, 0.0, 1.0), seen


# ---------------------------------------------------------------------------------------------
# Gaussians
# ---------------------------------------------------------------------------------------------
def face_gaussians(centres: np.ndarray, normals: np.ndarray, rgb: np.ndarray, sigma: float, normal_scale_ratio: float,
                   opacity: float) -> GaussianArrays:
    """Flat SH-0 Gaussians lying in their faces: scale_0/1 = ``sigma`` along the face, scale_2 =
    ``sigma * normal_scale_ratio`` along the normal (the third column of the rotation)."""
    n = len(centres)
    helper = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    t1 = np.cross(helper, normals)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    rot = rotmat_to_qvec(np.stack([t1, t2, normals], axis=2)) if n else np.zeros((0, 4))
    log_s = np.log(np.array([sigma, sigma, sigma * normal_scale_ratio]))
    return GaussianArrays(
        xyz=centres.astype(np.float32),
        f_dc=((rgb - 0.5) / C0).astype(np.float32),
        f_rest=np.zeros((n, 0), np.float32),
        opacity=np.full(n, np.log(opacity / (1.0 - opacity)), np.float32),
        scale=np.broadcast_to(log_s, (n, 3)).astype(np.float32),
        rot=np.asarray(rot, np.float32),
    )


def box_sides_touched(solid: np.ndarray) -> list[str]:
    """The sides of the grid (``-x``, ``+x``, ...) that the solid reaches: there the box, not the
    masks, bounded it (typically the bottom on a table, and the top when all views look from above)."""
    sides = []
    for axis, name in enumerate("xyz"):
        lo = np.take(solid, 0, axis=axis)
        hi = np.take(solid, -1, axis=axis)
        if lo.any():
            sides.append(f"-{name}")
        if hi.any():
            sides.append(f"+{name}")
    return sides


@dataclass
class HullResult:
    """The hull of one object in WORLD coordinates and what was done to get it."""

    gaussians: GaussianArrays
    grid: VoxelGrid
    box: tuple[np.ndarray, np.ndarray]
    info: dict


def visual_hull(xyz_seg: np.ndarray, views: Sequence[MaskView], params: HullParams, normal_scale_ratio: float,
                opacity: float) -> HullResult:
    """The whole hull pipeline for one object (steps 1-7 of the module docstring).

    Args:
        xyz_seg: [N, 3] centres of the object's segmented Gaussians (world).
        views: the object's training views.
    Raises:
        ValueError: when nothing survives the carving (the message says what to change).
    """
    t0 = time.perf_counter()
    lo, hi = object_box(xyz_seg, params.hull_box_percentile, params.hull_box_margin)
    grid = VoxelGrid.over_box(lo, hi, params.hull_resolution)
    keep, votes, inside = carve(grid.centres().astype(np.float32), views, params.hull_min_fraction, params.hull_min_views,
                                params.hull_subpixel)
    occupancy = keep.reshape(grid.shape)
    if not occupancy.any():
        raise ValueError(f"no voxel is inside the mask in {params.hull_min_fraction:.0%} of the (at least "
                         f"{params.hull_min_views}) views that see it; check the masks, the cameras and the box "
                         "(M/gs_seg), or lower --hull_min_fraction")
    solid, info = clean_solid(occupancy, params.hull_open_iterations)
    t1 = time.perf_counter()
    centres, normals = boundary_faces(solid, grid)
    rgb, seen = colour_points(centres, views, grid.size, params.hull_visibility_tolerance)
    g = face_gaussians(centres, normals, rgb, params.hull_sigma_ratio * grid.size, normal_scale_ratio, opacity)
    t2 = time.perf_counter()
    info["touches_box"] = box_sides_touched(solid)
    info.update({
        "grid_shape": list(grid.shape), "voxel_size": grid.size, "box_min": lo.tolist(), "box_max": hi.tolist(),
        "views": len(views), "surface_faces": int(len(centres)),
        "faces_coloured": int((seen > 0).sum()), "faces_uncoloured": int((seen == 0).sum()),
        "median_views_per_face": float(np.median(seen)) if len(seen) else 0.0,
        "seconds": {"carve": round(t1 - t0, 3), "surface_and_colour": round(t2 - t1, 3)},
    })
    return HullResult(g, grid, (lo, hi), info)


# ---------------------------------------------------------------------------------------------
# I/O: the backend
# ---------------------------------------------------------------------------------------------
def resolve_scene(model_path: str, given: dict) -> HullSceneParams:
    """The scene options: those ``given`` (not None) on the command line, else M/cfg_args's, else
    the defaults. InputError when no source_path results."""
    from utils.arguments import read_cfg_args

    base = read_cfg_args(model_path)
    values = asdict(HullSceneParams())
    for k in values:
        if given.get(k) is not None:
            values[k] = given[k]
        elif base.get(k) is not None:
            values[k] = base[k]
    out = HullSceneParams(**values)
    if not out.source_path:
        raise InputError(os.path.join(model_path, "cfg_args"), "no source_path: give -s/--source_path (the scene folder D)")
    return out


def mask_files(folder: str, stems: list[str]) -> list[str]:
    """D/masked_image_rgba/<prompt>/<stem>.png for every training stem; InputError listing the missing."""
    if not os.path.isdir(folder):
        raise InputError(folder, "mask folder of the object not found (run segmentation_2d.py first)")
    paths = [os.path.join(folder, f"{s}.png") for s in stems]
    missing = [s for s, p in zip(stems, paths) if not os.path.isfile(p)]
    if missing:
        listed = ", ".join(missing[:MAX_LISTED_MISSING])
        more = f" (+{len(missing) - MAX_LISTED_MISSING} more)" if len(missing) > MAX_LISTED_MISSING else ""
        raise InputError(folder, f"{len(missing)} of {len(stems)} training frames missing: {listed}{more}")
    return paths


def load_views(source_path: str, prompt: str, cameras: list[Camera], occluders: bool) -> tuple[list[MaskView], list[str]]:
    """The object's training views (masks at the camera resolution) and the mask files read."""
    root = os.path.join(source_path, MASK_DIR)
    paths = mask_files(os.path.join(root, prompt), [c.image_name for c in cameras])
    others = []
    if occluders and os.path.isdir(root):
        others = sorted(d for d in os.listdir(root) if d not in (prompt, UNION_MASK_FOLDER) and not d.startswith(".")
                        and os.path.isdir(os.path.join(root, d)))
    views = []
    for cam, path in zip(cameras, paths):
        mask, rgb = read_mask_file(path, (cam.width, cam.height))
        occ = None
        for other in others:
            p = os.path.join(root, other, f"{cam.image_name}.png")
            if os.path.isfile(p):
                m = read_alpha(p, (cam.width, cam.height))
                occ = m if occ is None else (occ | m)
        views.append(MaskView(cam, mask, rgb, occ))
    if not any(v.mask.any() for v in views):
        raise InputError(os.path.join(root, prompt), f"the mask of {prompt!r} is empty in every one of the {len(views)} training views")
    return views, paths


def segmented_centres(model_path: str, prompt: str) -> tuple[np.ndarray, str]:
    """The finite centres of M/gs_seg/<prompt>.ply and its path."""
    from scene.gaussian_ply import read_gaussian_ply

    path = os.path.join(model_path, GS_SEG, f"{prompt}.ply")
    if not os.path.isfile(path):
        raise InputError(path, "segmented object not found (run segmentation_3dgs.py first): the hull backend bounds its "
                               "voxel grid with it")
    xyz = read_gaussian_ply(path).xyz.astype(np.float64)
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    if len(xyz) < 2:
        raise InputError(path, f"has {len(xyz)} Gaussian(s): too few to bound the object")
    if float((xyz.max(0) - xyz.min(0)).max()) <= 0.0:
        raise InputError(path, "every Gaussian centre is the same point: cannot bound the object")
    return xyz, path


def training_cameras(scene: HullSceneParams) -> list[Camera]:
    from scene.dataset import load_scene

    data = load_scene(scene.source_path, scene.images, scene.resolution, scene.eval, scene.split_yml_name)
    cams = sorted(data.train_cameras, key=lambda c: c.image_name)
    if not cams:
        raise InputError(os.path.join(scene.source_path, scene.split_yml_name or "sparse"), "no training views")
    return cams


def run_hull_backend(model_path: str, object_name: Optional[str], proxy, params: HullParams, scene: HullSceneParams) -> list[str]:
    """The visual hull of every object; every input is read and every hull carved before anything
    is written. Writes M/generated/<prompt>.ply and .json (the world -> canonical matrix in
    ``normalisation``); returns the prompts.

    Args:
        proxy: :class:`utils.generation.ProxyParams` (opacity, normal_scale_ratio, canonical).
        scene: the scene folder and split (see :func:`resolve_scene`).
    """
    from scene.dataset import load_description
    from utils.generation import CANONICAL_HALF_SIDE, Normalisation, ObjectOutput, input_record, list_objects, write_outputs

    proxy.validate()
    try:
        params.validate()
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    fallback = None
    if object_name is None and not os.path.isdir(os.path.join(model_path, "masked_image_rgba_selected")):
        fallback = load_description(scene.source_path).prompts
    prompts = list_objects(model_path, object_name, None, fallback)
    seg = {p: segmented_centres(model_path, p) for p in prompts}
    cameras = training_cameras(scene)
    for p in prompts:  # every object's masks exist before any is carved
        mask_files(os.path.join(scene.source_path, MASK_DIR, p), [c.image_name for c in cameras])
    options = {**asdict(params), "opacity": proxy.opacity, "normal_scale_ratio": proxy.normal_scale_ratio,
               "canonical": proxy.canonical, "canonical_half_side": CANONICAL_HALF_SIDE, "scene": asdict(scene),
               "mask_alpha_threshold": MASK_ALPHA_THRESHOLD}
    results = []
    for prompt in prompts:
        xyz, seg_path = seg[prompt]
        views, paths = load_views(scene.source_path, prompt, cameras, params.hull_occluders)
        try:
            hull = visual_hull(xyz, views, params, proxy.normal_scale_ratio, proxy.opacity)
        except ValueError as exc:
            raise InputError(os.path.join(scene.source_path, MASK_DIR, prompt), f"{prompt}: {exc}") from None
        g = hull.gaussians
        norm = Normalisation.fit(g.xyz.astype(np.float64)) if proxy.canonical else Normalisation.identity()
        if norm.applied:
            g = GaussianArrays(xyz=norm.apply_points(g.xyz.astype(np.float64)).astype(np.float32), f_dc=g.f_dc, f_rest=g.f_rest,
                               opacity=g.opacity, scale=(g.scale.astype(np.float64) + np.log(norm.scale)).astype(np.float32),
                               rot=g.rot)
        log.info("%s: hull of %d voxels from %d views -> %d Gaussians%s", prompt, hull.info["voxels_final"], len(views), len(g),
                 f" (cut by its box at {', '.join(hull.info['touches_box'])})" if hull.info["touches_box"] else "")
        record = {
            "object": prompt, "backend": "hull",
            "inputs": [input_record(seg_path)] + [input_record(p) for p in paths],
            "input_kind": "visual_hull", "train_views": [v.camera.image_name for v in views],
            "frame": "the scene's world axes, translated and uniformly scaled: x_canonical = matrix @ x_world",
            "normalisation": norm.record(), "hull": hull.info,
            "num_gaussians": len(g), "sh_degree": g.sh_degree, "seed": None, "options": options,
        }
        results.append(ObjectOutput(prompt, g, record))
    write_outputs(model_path, results)
    return prompts
