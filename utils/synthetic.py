"""A synthetic SCORP scene rendered by ray casting textured triangle meshes.

The scene is independent of any Gaussian renderer, so that tests of our renderer, trainer and
alignment against it are not circular. Everything here is a pure function of a
:class:`SceneConfig` (and numpy generators derived from its seed); writing files is the job of
``scripts/make_demo_scene.py``.

World and conventions
---------------------
* World Z up, units metres. The floor is z = 0; a table (top at ``table_height``) stands at the
  origin inside a closed room; three objects lie on the table.
* Cameras follow :mod:`scene.cameras`: W2C extrinsics, OpenCV axes (x right, y down, z forward),
  per-camera PINHOLE intrinsics, pixel centres at half-integers (the ray of pixel (i, j) passes
  through u = j + 0.5, v = i + 0.5).
* Every mesh part carries per-vertex UVs (in texture repeats: the procedural textures tile) and
  per-vertex shading normals. A hit's colour is the bilinear texture lookup at its barycentric
  UV times a view-INDEPENDENT shading ``ambient + diffuse * max(0, n . l)`` with a fixed
  directional light ``l`` (no shadows, no specular), so Gaussians with SH can fit it exactly.
* Object ids: 0 is the background (room, table), k >= 1 is ``object_names[k - 1]``.

Proxy ("generator output") convention
--------------------------------------
:func:`make_proxy` imitates a TRELLIS output: Gaussians sampled on the object surface with a
colour change and low-opacity junk, mapped into a canonical frame inside [-0.5, 0.5]^3 with a
random rotation, a per-axis shape distortion and a uniform scale. The TRUE proxy-to-world map is
``x_world = A @ x_proxy + t`` with ``A = R @ F.T @ diag(s) @ F`` where R is a rotation, F a
rotation whose ROWS are the axes (in proxy coordinates) along which the per-axis scales s act.
Covariances map exactly: ``Sigma_world = A @ Sigma_proxy @ A.T``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from scene.cameras import Camera, look_at
from scene.gaussian_model import C0, GaussianArrays

logger = logging.getLogger(__name__)

OBJECT_PROMPTS: tuple[str, ...] = ("red box", "blue mug", "green ball")
"""The prompts of the demo objects; also their names (folder and file names), object ids 1, 2, 3."""

TRANSFORM_CONVENTION = (
    "x_world = R @ F.T @ diag(s) @ F @ x_proxy + t, i.e. x_world = matrix[:3, :3] @ x_proxy + matrix[:3, 3]; "
    "R = rotation (3x3), F = scale_frame (3x3 rotation whose rows are the axes, in proxy coordinates, "
    "along which the per-axis scales s = scale act), t = translation; covariances map as "
    "Sigma_world = A @ Sigma_proxy @ A.T with A = matrix[:3, :3]"
)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class ProxyConfig:
    """How the stand-in generator output (the "proxy") of each object is made."""

    num_surface_gaussians: int = 4000
    """Gaussians sampled on the object surface (area-uniform)."""
    junk_fraction: float = 0.1
    """Fraction of ALL proxy Gaussians that are low-opacity junk scattered around the object."""
    opacity_range: tuple[float, float] = (0.85, 0.95)
    """Activated opacity of surface Gaussians, uniform in this range."""
    junk_opacity_range: tuple[float, float] = (0.005, 0.045)
    """Activated opacity of junk Gaussians (below the 0.1 truncation threshold of stage 6)."""
    brightness: float = 0.85
    """Colour change: multiply the rendered colour by this factor..."""
    saturation: float = 1.15
    """...and scale its distance to its grey value by this factor."""
    colour_noise: float = 0.03
    """Standard deviation of additive per-Gaussian colour noise."""
    tangent_scale: float = 0.6
    """In-plane standard deviation in units of the mean sample spacing sqrt(area / N)."""
    normal_scale: float = 0.08
    """Standard deviation along the surface normal in units of the mean sample spacing (thin)."""
    distortion_range: tuple[float, float] = (0.85, 1.15)
    """Per-axis shape distortion factors of the canonical frame, uniform in this range."""
    half_extent: float = 0.45
    """The surface Gaussians' centres fill [-half_extent, half_extent]^3 along their longest axis."""
    junk_margin: float = 0.1
    """Junk is scattered in the proxy bounding box of the object enlarged by this fraction (clipped
    to [-0.49, 0.49]^3)."""
    junk_scale_range: tuple[float, float] = (0.005, 0.02)
    """Isotropic standard deviation of junk Gaussians, in proxy units."""
    random_scale_frame: bool = False
    """Distort along a random frame F instead of the proxy axes (F = identity)."""


@dataclass
class SceneConfig:
    """Everything that defines a synthetic scene (all lengths in metres, angles in degrees)."""

    seed: int = 0
    """Seed of every random choice (textures, layout, cameras, points, split, proxies)."""
    num_views: int = 48
    """Number of frames along the orbit."""
    width: int = 256
    """Image width in pixels."""
    height: int = 192
    """Image height in pixels."""
    supersample: int = 2
    """Rays per pixel along each axis (box-filtered) for anti-aliasing."""
    texture_size: int = 512
    """Side in texels of every procedural texture."""
    # scene layout
    table_size: tuple[float, float, float] = (1.0, 0.7, 0.05)
    """Table top length (x), depth (y) and thickness."""
    table_height: float = 0.75
    """Height of the table top surface above the floor."""
    room_half_size: float = 2.6
    """The room spans [-r, r]^2 horizontally."""
    room_height: float = 2.6
    """Height of the ceiling."""
    # cameras
    radius_range: tuple[float, float] = (0.75, 0.95)
    """Distance of the cameras to the look-at point."""
    elevation_range: tuple[float, float] = (20.0, 45.0)
    """Elevation of the cameras above the look-at point, degrees."""
    azimuth_jitter: float = 0.3
    """Azimuth jitter as a fraction of the angular step between views."""
    target_jitter: float = 0.02
    """Look-at point jitter (uniform per axis)."""
    focal_factor: float = 0.95
    """Nominal fx = focal_factor * width (about 56 degrees horizontal field of view)."""
    focal_jitter: float = 0.05
    """Per-camera relative jitter of fx; fy differs from fx by up to 1/5 of this."""
    principal_offset_range: tuple[float, float] = (0.01, 0.03)
    """|cx - W/2| / W and |cy - H/2| / H, uniform in this range, random sign, per camera."""
    # shading
    light_dir: tuple[float, float, float] = (0.45, 0.3, 1.0)
    """Direction TOWARDS the directional light (normalised)."""
    ambient: float = 0.45
    """Ambient term of the shading."""
    diffuse: float = 0.6
    """Lambert term of the shading."""
    # sparse points
    num_points: int = 12000
    """Target number of COLMAP 3D points (kept only if seen by min_track_length views)."""
    point_noise: float = 0.002
    """Standard deviation of the positional noise added to the 3D points (mimics SfM)."""
    min_track_length: int = 2
    """A 3D point is kept if it is visible in at least this many views."""
    depth_tolerance_rel: float = 0.01
    """Visibility test: |z - zbuffer| <= depth_tolerance_abs + depth_tolerance_rel * z."""
    depth_tolerance_abs: float = 0.003
    """See depth_tolerance_rel."""
    # split
    test_fraction: float = 0.35
    """Fraction of the frames held out as test views."""
    num_arcs: int = 2
    """Number of contiguous held-out arcs of the orbit."""
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    """How the stand-in generator outputs are made."""

    def check(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.num_views < 3:
            raise ValueError(f"num_views must be >= 3, got {self.num_views}")
        if self.width < 8 or self.height < 8:
            raise ValueError(f"width and height must be >= 8, got {self.width}x{self.height}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.num_arcs < 1:
            raise ValueError(f"num_arcs must be >= 1, got {self.num_arcs}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")
        if self.min_track_length < 2:
            raise ValueError(f"min_track_length must be >= 2, got {self.min_track_length}")
        if not 0.0 <= self.proxy.junk_fraction < 1.0:
            raise ValueError(f"proxy.junk_fraction must be in [0, 1), got {self.proxy.junk_fraction}")
        if self.proxy.num_surface_gaussians < 10:
            raise ValueError(f"proxy.num_surface_gaussians must be >= 10, got {self.proxy.num_surface_gaussians}")
        if not 0.0 < self.proxy.half_extent <= 0.5:
            raise ValueError(f"proxy.half_extent must be in (0, 0.5], got {self.proxy.half_extent}")



# ---------------------------------------------------------------------------------------------
# Small linear-algebra helpers (einsum: many-row products with tiny matrices avoid BLAS threading
# overhead, which dominates on busy machines)
# ---------------------------------------------------------------------------------------------
def apply_linear(M: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[N, 3] rows ``M @ x_i`` for a [3, 3] matrix M and [N, 3] points x."""
    return np.einsum("ij,nj->ni", M, x)


def project(cam: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [N, 2] and camera depths [N] of world points (u = fx x / z + cx, ...)."""
    pc = apply_linear(cam.R, points) + cam.t
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([cam.fx * pc[:, 0] / z + cam.cx, cam.fy * pc[:, 1] / z + cam.cy], -1)
    return uv, z


# ---------------------------------------------------------------------------------------------
# Procedural textures (all tileable: UVs are in texture repeats and wrap)
# ---------------------------------------------------------------------------------------------
def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def tileable_noise(rng: np.random.Generator, size: int, cells_u: int, cells_v: Optional[int] = None) -> np.ndarray:
    """Periodic value noise: [size, size] float32 in [0, 1].

    A random lattice of ``cells_v`` rows x ``cells_u`` columns, interpolated with smoothstep
    weights and wrapped, so the result tiles. Rows index v, columns index u.
    """
    cells_v = cells_u if cells_v is None else cells_v
    cells_u, cells_v = max(1, min(int(cells_u), size)), max(1, min(int(cells_v), size))
    grid = rng.random((cells_v, cells_u))
    x = np.arange(size) * (cells_u / size)
    y = np.arange(size) * (cells_v / size)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    tx, ty = _smoothstep(x - x0), _smoothstep(y - y0)
    x1, y1 = (x0 + 1) % cells_u, (y0 + 1) % cells_v
    x0, y0 = x0 % cells_u, y0 % cells_v
    top = grid[np.ix_(y0, x0)] * (1 - tx) + grid[np.ix_(y0, x1)] * tx
    bottom = grid[np.ix_(y1, x0)] * (1 - tx) + grid[np.ix_(y1, x1)] * tx
    return (top * (1 - ty)[:, None] + bottom * ty[:, None]).astype(np.float32)


def fractal_noise(
    rng: np.random.Generator, size: int, cells: int, octaves: int = 4, aspect: float = 1.0, persistence: float = 0.5
) -> np.ndarray:
    """Sum of ``octaves`` tileable noises, cells doubling per octave: [size, size] in [0, 1].

    ``aspect`` multiplies the number of cells along v (rows) relative to u (columns).
    """
    total = np.zeros((size, size), np.float32)
    norm = 0.0
    amp = 1.0
    for o in range(octaves):
        c = cells * 2**o
        total += amp * tileable_noise(rng, size, c, max(1, int(round(c * aspect))))
        norm += amp
        amp *= persistence
    return total / norm


def _uv_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Texel-centre coordinates (u, v) in [0, 1): u along columns, v along rows."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)


def _mix(a: Sequence[float], b: Sequence[float], t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a * (1.0 - t[..., None]) + b * t[..., None]


def _finish(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def wood_texture(rng: np.random.Generator, size: int, light: Sequence[float], dark: Sequence[float]) -> np.ndarray:
    """Wood: warped growth rings across v, grain streaks along u, centimetre-scale flecks."""
    u, v = _uv_grid(size)
    warp = fractal_noise(rng, size, 3, 3)
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (7.0 * v + 1.6 * warp + 0.15 * np.sin(2 * np.pi * u)))
    grain = fractal_noise(rng, size, 3, 3, aspect=12.0)
    flecks = fractal_noise(rng, size, 24, 2)
    t = np.clip(0.5 * rings**2 + 0.5 * grain + 0.45 * (flecks - 0.5), 0, 1)
    return _finish(_mix(light, dark, t))


def floor_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Floor tiles: 8 x 8 checker of two stone colours, per-tile brightness, grout, mottling."""
    u, v = _uv_grid(size)
    n = 8
    iu, iv = np.floor(u * n).astype(int), np.floor(v * n).astype(int)
    checker = ((iu + iv) % 2).astype(np.float32)
    tile_var = rng.random((n, n)).astype(np.float32)[iv, iu]
    col = _mix((0.72, 0.66, 0.55), (0.45, 0.47, 0.5), checker)
    mottle = fractal_noise(rng, size, 8, 4)
    speck = tileable_noise(rng, size, 200)
    col *= (0.8 + 0.3 * tile_var)[..., None] * (0.75 + 0.45 * mottle)[..., None] * (0.9 + 0.2 * speck)[..., None]
    fu, fv = u * n - iu, v * n - iv
    grout = (fu < 0.05) | (fv < 0.05)
    col[grout] = np.asarray((0.22, 0.2, 0.18), np.float32) * (0.8 + 0.4 * speck[grout])[..., None]
    return _finish(col)


def stripes_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Wallpaper: vertical stripes of random widths and palette colours, thin lines, noise."""
    u, v = _uv_grid(size)
    widths = rng.uniform(0.5, 1.5, 14)
    edges = np.concatenate([[0.0], np.cumsum(widths) / widths.sum()])
    palette = np.array([(0.85, 0.78, 0.55), (0.55, 0.7, 0.62), (0.78, 0.5, 0.42), (0.5, 0.55, 0.72)], np.float32)
    stripe = np.clip(np.searchsorted(edges, u[0], side="right") - 1, 0, len(widths) - 1)
    colours = palette[rng.integers(0, len(palette), len(widths))]
    col = colours[stripe][None, :, :].repeat(size, 0)
    lines = (np.abs(((u * 40.0) % 1.0) - 0.5) < 0.06) & (np.abs(((v * 24.0) % 1.0) - 0.5) < 0.35)
    col[lines] *= 0.7
    noise = fractal_noise(rng, size, 6, 4)
    col *= (0.75 + 0.5 * noise)[..., None]
    return _finish(col)


def brick_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bricks: 10 rows of 4 bricks, alternate rows offset by half a brick, mortar, noise."""
    u, v = _uv_grid(size)
    rows, per_row = 10, 4
    r = np.floor(v * rows).astype(int)
    uu = u * per_row + 0.5 * (r % 2)
    c = np.floor(uu).astype(int) % per_row
    brick_col = np.stack(
        [rng.uniform(0.55, 0.8, (rows, per_row)), rng.uniform(0.25, 0.4, (rows, per_row)), rng.uniform(0.18, 0.3, (rows, per_row))],
        axis=-1,
    ).astype(np.float32)
    col = brick_col[r, c]
    fu, fv = uu % 1.0, (v * rows) % 1.0
    mortar = (fu < 0.04) | (fv < 0.08)
    col[mortar] = (0.78, 0.76, 0.72)
    noise = fractal_noise(rng, size, 16, 3)
    col *= (0.75 + 0.5 * noise)[..., None]
    return _finish(col)


def blotch_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Three-colour camouflage blotches from thresholded fractal noise, plus speckle."""
    a = fractal_noise(rng, size, 5, 4)
    b = fractal_noise(rng, size, 7, 4)
    col = np.empty((size, size, 3), np.float32)
    col[:] = (0.62, 0.68, 0.78)
    col[a > 0.52] = (0.35, 0.42, 0.6)
    col[b > 0.56] = (0.82, 0.72, 0.5)
    speck = tileable_noise(rng, size, 180)
    col *= (0.85 + 0.3 * speck)[..., None]
    return _finish(col)


def dots_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Polka dots of random palette colours on a noisy light background."""
    u, v = _uv_grid(size)
    n = 12
    iu, iv = np.floor(u * n).astype(int), np.floor(v * n).astype(int)
    du, dv = u * n - iu - 0.5, v * n - iv - 0.5
    radius = rng.uniform(0.18, 0.4, (n, n))[iv, iu]
    palette = np.array([(0.8, 0.3, 0.35), (0.3, 0.5, 0.8), (0.9, 0.75, 0.3), (0.35, 0.65, 0.4)], np.float32)
    dot_col = palette[rng.integers(0, len(palette), (n, n))][iv, iu]
    bg = _mix((0.86, 0.84, 0.8), (0.7, 0.68, 0.66), fractal_noise(rng, size, 8, 3))
    inside = du * du + dv * dv < radius * radius
    col = np.where(inside[..., None], dot_col, bg)
    return _finish(col)


def ceiling_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Light plaster with a coarse grid."""
    u, v = _uv_grid(size)
    col = _mix((0.9, 0.9, 0.88), (0.65, 0.66, 0.7), fractal_noise(rng, size, 6, 5))
    grid = ((u * 6) % 1.0 < 0.03) | ((v * 6) % 1.0 < 0.03)
    col[grid] *= 0.6
    return _finish(col)


def red_box_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Red with darker diagonal stripes, a yellow border band and speckle."""
    u, v = _uv_grid(size)
    diag = ((u + v) * 5.0) % 1.0 < 0.5
    col = np.where(diag[..., None], np.float32([0.8, 0.12, 0.1]), np.float32([0.58, 0.06, 0.07]))
    border = (np.minimum(u, 1 - u) < 0.07) | (np.minimum(v, 1 - v) < 0.07)
    col = np.where(border[..., None], np.float32([0.92, 0.75, 0.2]), col)
    col = col * (0.8 + 0.4 * fractal_noise(rng, size, 8, 3))[..., None]
    return _finish(col)


def blue_mug_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blue glaze with waves and a white band of blue dots."""
    u, v = _uv_grid(size)
    waves = 0.5 + 0.5 * np.sin(2 * np.pi * (6.0 * u + 0.6 * np.sin(2 * np.pi * 2.0 * v)))
    col = _mix((0.1, 0.2, 0.65), (0.2, 0.4, 0.9), waves)
    band = (v > 0.42) & (v < 0.58)
    dots = ((((u * 16) % 1.0) - 0.5) ** 2 + ((((v - 0.42) / 0.16 * 2) % 1.0) - 0.5) ** 2) < 0.09
    col[band] = (0.92, 0.93, 0.95)
    col[band & dots] = (0.15, 0.3, 0.8)
    col = col * (0.82 + 0.36 * fractal_noise(rng, size, 8, 3))[..., None]
    return _finish(col)


def green_ball_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Green with dark spots and light meridian stripes."""
    u, v = _uv_grid(size)
    col = _mix((0.2, 0.62, 0.22), (0.3, 0.75, 0.25), fractal_noise(rng, size, 6, 3))
    spots = fractal_noise(rng, size, 8, 3) > 0.6
    col[spots] = (0.06, 0.3, 0.1)
    meridians = ((u * 8.0) % 1.0) < 0.08
    col[meridians] = (0.75, 0.92, 0.55)
    col = col * (0.88 + 0.24 * tileable_noise(rng, size, 96))[..., None]
    return _finish(col)


def make_textures(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """All textures of the demo scene, in a fixed order: name -> [size, size, 3] float32 in [0, 1]."""
    return {
        "table": wood_texture(rng, size, (0.72, 0.5, 0.3), (0.38, 0.22, 0.1)),
        "legs": wood_texture(rng, size, (0.45, 0.3, 0.18), (0.2, 0.11, 0.05)),
        "floor": floor_texture(rng, size),
        "wall_stripes": stripes_texture(rng, size),
        "wall_bricks": brick_texture(rng, size),
        "wall_blotches": blotch_texture(rng, size),
        "wall_dots": dots_texture(rng, size),
        "ceiling": ceiling_texture(rng, size),
        "red box": red_box_texture(rng, size),
        "blue mug": blue_mug_texture(rng, size),
        "green ball": green_ball_texture(rng, size),
    }


def sample_texture(textures: np.ndarray, tex_ids: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup.

    Args:
        textures: [T, S, S, 3] float32.
        tex_ids: [N] texture index of each lookup.
        uv: [N, 2] coordinates in texture repeats (u along columns, v along rows).

    Returns:
        [N, 3] float32 colours.
    """
    S = textures.shape[1]
    flat = textures.reshape(-1, 3)
    x = uv[:, 0] * S - 0.5
    y = uv[:, 1] * S - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    x0, y0 = x0.astype(np.int64) % S, y0.astype(np.int64) % S
    x1, y1 = (x0 + 1) % S, (y0 + 1) % S
    base = np.asarray(tex_ids, np.int64) * (S * S)
    r0, r1 = base + y0 * S, base + y1 * S
    top = flat[r0 + x0] * (1 - fx) + flat[r0 + x1] * fx
    bottom = flat[r1 + x0] * (1 - fx) + flat[r1 + x1] * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------
# Meshes with UVs and shading normals
# ---------------------------------------------------------------------------------------------
@dataclass
class MeshPart:
    """One textured triangle mesh.

    Attributes:
        name: a label (e.g. ``"table/top"``).
        vertices: [V, 3] float64 world positions.
        faces: [F, 3] int64, counter-clockwise seen from the side the normals point to.
        uv: [V, 2] float64 texture coordinates in texture repeats.
        normals: [V, 3] float64 unit shading normals.
        texture: name of its texture.
        object_id: 0 for background, k >= 1 for object k.
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray
    texture: str
    object_id: int = 0


def _grid_faces(na: int, nb: int) -> np.ndarray:
    """Faces of a (na+1) x (nb+1) vertex grid indexed a * (nb + 1) + b."""
    a, b = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    v00 = a * (nb + 1) + b
    v10 = (a + 1) * (nb + 1) + b
    v11 = (a + 1) * (nb + 1) + b + 1
    v01 = a * (nb + 1) + b + 1
    f = np.concatenate([np.stack([v00, v10, v11], -1).reshape(-1, 3), np.stack([v00, v11, v01], -1).reshape(-1, 3)])
    return f.astype(np.int64)


def _orient_faces(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Flip faces whose winding disagrees with their vertices' shading normals."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", fn, normals[faces].sum(1)) < 0
    out = faces.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


def _merge(pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]):
    """Concatenate (vertices, faces, uv, normals) pieces into one."""
    vs, fs, uvs, ns = [], [], [], []
    offset = 0
    for v, f, uv, n in pieces:
        vs.append(v)
        fs.append(f + offset)
        uvs.append(uv)
        ns.append(n)
        offset += len(v)
    return np.concatenate(vs), np.concatenate(fs), np.concatenate(uvs), np.concatenate(ns)


def quad_piece(origin: np.ndarray, a_vec: np.ndarray, b_vec: np.ndarray, tile: float, subdiv: int = 1,
               uv_offset: Sequence[float] = (0.0, 0.0)):
    """A planar quad origin + s a_vec + r b_vec (s, r in [0, 1]) as a subdivided grid.

    The normal is a_vec x b_vec (normalised); UVs are metres along a and b divided by ``tile``.
    """
    na = nb = max(1, int(subdiv))
    s = np.linspace(0.0, 1.0, na + 1)
    r = np.linspace(0.0, 1.0, nb + 1)
    S, Rr = np.meshgrid(s, r, indexing="ij")
    S, Rr = S.reshape(-1), Rr.reshape(-1)
    v = origin[None] + S[:, None] * a_vec[None] + Rr[:, None] * b_vec[None]
    uv = np.stack([S * np.linalg.norm(a_vec) / tile + uv_offset[0], Rr * np.linalg.norm(b_vec) / tile + uv_offset[1]], -1)
    n = np.cross(a_vec, b_vec)
    n = np.broadcast_to(n / np.linalg.norm(n), v.shape).copy()
    f = _orient_faces(v, _grid_faces(na, nb), n)
    return v, f, uv, n


def box_pieces(center: Sequence[float], size: Sequence[float], tile: float, subdiv: int = 1, inward: bool = False,
               yaw: float = 0.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The six faces of an axis-aligned box (then rotated by ``yaw`` about z around its centre).

    Order: -x, +x, -y, +y, -z, +z. Normals point outward, or inward with ``inward``.
    """
    c = np.asarray(center, np.float64)
    h = np.asarray(size, np.float64) / 2
    cz, sz = math.cos(yaw), math.sin(yaw)
    Rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    eye = np.eye(3)
    pieces = []
    for k in range(3):
        for sign in (-1.0, 1.0):
            n = sign * eye[k] * (-1.0 if inward else 1.0)
            a, b = eye[(k + 1) % 3], eye[(k + 2) % 3]
            a_vec, b_vec = 2 * h[(k + 1) % 3] * a, 2 * h[(k + 2) % 3] * b
            origin = sign * h[k] * eye[k] - h[(k + 1) % 3] * a - h[(k + 2) % 3] * b
            if np.dot(np.cross(a_vec, b_vec), n) < 0:
                origin, a_vec, b_vec = origin, b_vec, a_vec
            v, f, uv, nn = quad_piece(origin, a_vec, b_vec, tile, subdiv, uv_offset=(0.37 * k, 0.61 * (sign > 0)))
            pieces.append((v @ Rz.T + c, f, uv, nn @ Rz.T))
    return pieces


def cylinder_pieces(center_bottom: Sequence[float], radius: float, height: float, n_theta: int = 48, n_z: int = 6,
                    u_repeats: int = 2, yaw: float = 0.0):
    """A closed cylinder around +z: side (u wraps ``u_repeats`` times), bottom and top caps."""
    c = np.asarray(center_bottom, np.float64)
    th = np.linspace(0.0, 2 * np.pi, n_theta + 1) + yaw
    zs = np.linspace(0.0, height, n_z + 1)
    T, Z = np.meshgrid(th, zs, indexing="ij")
    T, Z = T.reshape(-1), Z.reshape(-1)
    v = np.stack([radius * np.cos(T), radius * np.sin(T), Z], -1) + c
    n = np.stack([np.cos(T), np.sin(T), np.zeros_like(T)], -1)
    circumference_tile = 2 * np.pi * radius / u_repeats
    uv = np.stack([(T - yaw) / (2 * np.pi) * u_repeats, Z / circumference_tile], -1)
    side = (v, _orient_faces(v, _grid_faces(n_theta, n_z), n), uv, n)
    pieces = [side]
    for z, up in ((0.0, -1.0), (height, 1.0)):
        ring = np.stack([radius * np.cos(th[:-1]), radius * np.sin(th[:-1]), np.full(n_theta, z)], -1)
        cv = np.concatenate([[[0.0, 0.0, z]], ring]) + c
        cn = np.tile([0.0, 0.0, up], (n_theta + 1, 1))
        cuv = 0.5 + (cv[:, :2] - c[:2]) / (2 * radius)
        i = np.arange(n_theta)
        cf = np.stack([np.zeros(n_theta, np.int64), 1 + i, 1 + (i + 1) % n_theta], -1)
        pieces.append((cv, _orient_faces(cv, cf, cn), cuv, cn))
    return pieces


def torus_arc_piece(center: Sequence[float], major: float, minor: float, phi_range: tuple[float, float],
                    n_phi: int = 16, n_psi: int = 12, yaw: float = 0.0):
    """An open tube along an arc of a circle in the x-z plane (a mug handle), rotated by ``yaw``.

    Centre line ``center + major (cos phi e_x + sin phi e_z)`` for phi in ``phi_range``.
    """
    c = np.asarray(center, np.float64)
    phi = np.linspace(phi_range[0], phi_range[1], n_phi + 1)
    psi = np.linspace(0.0, 2 * np.pi, n_psi + 1)
    P, S = np.meshgrid(phi, psi, indexing="ij")
    P, S = P.reshape(-1), S.reshape(-1)
    radial = np.stack([np.cos(P), np.zeros_like(P), np.sin(P)], -1)
    ey = np.array([0.0, 1.0, 0.0])
    n = np.cos(S)[:, None] * radial + np.sin(S)[:, None] * ey
    v = major * radial + minor * n
    cz, sz = math.cos(yaw), math.sin(yaw)
    Rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    v, n = v @ Rz.T + c, n @ Rz.T
    uv = np.stack([(P - phi_range[0]) / (2 * np.pi), S / (2 * np.pi)], -1)
    return v, _orient_faces(v, _grid_faces(n_phi, n_psi), n), uv, n


def icosphere_piece(center: Sequence[float], radius: float, subdivisions: int = 3):
    """An icosphere with unshared vertices and a spherical UV map whose seam is fixed per face."""
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0)
    unit = np.asarray(ico.vertices, np.float64)[np.asarray(ico.faces)]  # [F, 3, 3]
    unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
    u = np.arctan2(unit[..., 1], unit[..., 0]) / (2 * np.pi) + 0.5
    v = np.arccos(np.clip(unit[..., 2], -1, 1)) / np.pi
    # seam: a face straddling u = 0/1 gets its small u's moved by one repeat
    wrap = (u.max(1) - u.min(1)) > 0.5
    u = np.where(wrap[:, None] & (u < 0.5), u + 1.0, u)
    # poles: u is undefined there; use the mean of the face's other corners
    pole = np.hypot(unit[..., 0], unit[..., 1]) < 1e-9
    if pole.any():
        others = np.where(pole, 0.0, u).sum(1) / np.maximum((~pole).sum(1), 1)
        u = np.where(pole, others[:, None], u)
    nf = len(unit)
    normals = unit.reshape(-1, 3)
    vertices = normals * radius + np.asarray(center, np.float64)
    faces = np.arange(3 * nf, dtype=np.int64).reshape(nf, 3)
    uv = np.stack([u.reshape(-1), v.reshape(-1)], -1)
    return vertices, _orient_faces(vertices, faces, normals), uv, normals


def _part(name: str, pieces, texture: str, object_id: int = 0) -> MeshPart:
    if isinstance(pieces, tuple):
        pieces = [pieces]
    v, f, uv, n = _merge(pieces)
    return MeshPart(name, v, f, uv, n, texture, object_id)


# ---------------------------------------------------------------------------------------------
# The scene
# ---------------------------------------------------------------------------------------------
@dataclass
class SyntheticScene:
    """Meshes, textures and light of a synthetic scene, with everything concatenated for ray casting.

    Attributes:
        parts: the mesh parts.
        textures: [T, S, S, 3] float32 texture stack; texture_names: their names.
        object_names: name of object k at index k - 1.
        light_dir: [3] unit direction towards the light; ambient, diffuse: shading weights.
        vertices, faces: all parts concatenated; face_part, face_object, face_texture: [F] per face.
        corner_uv: [F, 3, 2]; corner_normal: [F, 3, 3] per face corner.
        face_v0, face_edges, face_normal, face_gram_inv: per-face first corner, the two edges from it,
        the unit geometric normal and the inverse Gram matrix of the edges (for barycentrics).
    """

    parts: list[MeshPart]
    textures: np.ndarray
    texture_names: list[str]
    object_names: list[str]
    light_dir: np.ndarray
    ambient: float
    diffuse: float
    vertices: np.ndarray = field(init=False, repr=False)
    faces: np.ndarray = field(init=False, repr=False)
    face_part: np.ndarray = field(init=False, repr=False)
    face_object: np.ndarray = field(init=False, repr=False)
    face_texture: np.ndarray = field(init=False, repr=False)
    corner_uv: np.ndarray = field(init=False, repr=False)
    corner_normal: np.ndarray = field(init=False, repr=False)
    face_v0: np.ndarray = field(init=False, repr=False)
    face_edges: np.ndarray = field(init=False, repr=False)
    face_normal: np.ndarray = field(init=False, repr=False)
    face_gram_inv: np.ndarray = field(init=False, repr=False)
    _intersector: object = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.light_dir = np.asarray(self.light_dir, np.float64) / np.linalg.norm(self.light_dir)
        tex_index = {n: i for i, n in enumerate(self.texture_names)}
        vs, fs, fp, fo, ft, cu, cn = [], [], [], [], [], [], []
        offset = 0
        for i, p in enumerate(self.parts):
            vs.append(p.vertices)
            fs.append(p.faces + offset)
            offset += len(p.vertices)
            nf = len(p.faces)
            fp.append(np.full(nf, i, np.int32))
            fo.append(np.full(nf, p.object_id, np.int32))
            ft.append(np.full(nf, tex_index[p.texture], np.int32))
            cu.append(p.uv[p.faces])
            cn.append(p.normals[p.faces])
        self.vertices = np.concatenate(vs)
        self.faces = np.concatenate(fs)
        self.face_part = np.concatenate(fp)
        self.face_object = np.concatenate(fo)
        self.face_texture = np.concatenate(ft)
        self.corner_uv = np.concatenate(cu)
        self.corner_normal = np.concatenate(cn)
        tri = self.vertices[self.faces]
        self.face_v0 = tri[:, 0].copy()
        self.face_edges = np.stack([tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]], 1)
        fn = np.cross(self.face_edges[:, 0], self.face_edges[:, 1])
        self.face_normal = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-300)
        gram = np.einsum("fac,fbc->fab", self.face_edges, self.face_edges)
        self.face_gram_inv = np.linalg.inv(gram)

    @property
    def num_objects(self) -> int:
        return len(self.object_names)

    def intersector(self):
        """The trimesh/embree ray intersector of all triangles (built once)."""
        if self._intersector is None:
            import trimesh
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            mesh = trimesh.Trimesh(self.vertices, self.faces, process=False, validate=False)
            self._intersector = RayMeshIntersector(mesh)
        return self._intersector

    def object_parts(self, object_id: int) -> list[MeshPart]:
        return [p for p in self.parts if p.object_id == object_id]

    def object_bounds(self, object_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) [3] corners of the axis-aligned bounding box of object ``object_id``."""
        v = np.concatenate([p.vertices for p in self.object_parts(object_id)])
        return v.min(0), v.max(0)


def shade(albedo: np.ndarray, normals: np.ndarray, light_dir: np.ndarray, ambient: float, diffuse: float) -> np.ndarray:
    """View-independent shading ``albedo * (ambient + diffuse * max(0, n . l))``, clipped to [0, 1]."""
    lambert = np.clip(np.einsum("nc,c->n", normals, np.asarray(light_dir, normals.dtype)), 0.0, None)
    return np.clip(albedo * (ambient + diffuse * lambert)[:, None], 0.0, 1.0).astype(np.float32)


def surface_attributes(scene: SyntheticScene, tri: np.ndarray, bary: np.ndarray):
    """Interpolated attributes of surface points given by triangle and barycentric coordinates.

    Args:
        tri: [N] face indices; bary: [N, 3] barycentric coordinates.

    Returns:
        (normals [N, 3] unit, albedo [N, 3], colour [N, 3] shaded) as float32/float64.
    """
    uv = np.einsum("nk,nkc->nc", bary, scene.corner_uv[tri])
    n = np.einsum("nk,nkc->nc", bary, scene.corner_normal[tri])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    albedo = sample_texture(scene.textures, scene.face_texture[tri], uv)
    return n, albedo, shade(albedo, n, scene.light_dir, scene.ambient, scene.diffuse)


def vertex_colours(scene: SyntheticScene, part: MeshPart) -> np.ndarray:
    """[V, 3] float32 shaded colours of a part's vertices."""
    tid = np.full(len(part.vertices), scene.texture_names.index(part.texture))
    albedo = sample_texture(scene.textures, tid, part.uv)
    return shade(albedo, part.normals, scene.light_dir, scene.ambient, scene.diffuse)


def object_trimesh(scene: SyntheticScene, object_id: int):
    """The world-space mesh of one object with its shaded vertex colours (a ``trimesh.Trimesh``)."""
    import trimesh

    parts = scene.object_parts(object_id)
    v, f, _, _ = _merge([(p.vertices, p.faces, p.uv, p.normals) for p in parts])
    cols = np.concatenate([vertex_colours(scene, p) for p in parts])
    rgba = np.concatenate([np.round(cols * 255).astype(np.uint8), np.full((len(v), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(v, f, vertex_colors=rgba, process=False, validate=False)


def build_scene(config: SceneConfig) -> SyntheticScene:
    """The demo scene: a room, a table and the three objects of :data:`OBJECT_PROMPTS`."""
    seeds = np.random.SeedSequence([config.seed, 1]).spawn(2)
    tex_rng, layout_rng = (np.random.default_rng(s) for s in seeds)
    textures = make_textures(tex_rng, config.texture_size)
    L, D, T = config.table_size
    top = config.table_height
    r, H = config.room_half_size, config.room_height
    parts: list[MeshPart] = []

    room = box_pieces((0.0, 0.0, H / 2), (2 * r, 2 * r, H), tile=1.3, inward=True)
    # order of box faces: -x, +x, -y, +y, -z (floor), +z (ceiling)
    for name, piece, tex in zip(
        ["wall_-x", "wall_+x", "wall_-y", "wall_+y", "floor", "ceiling"],
        room,
        ["wall_stripes", "wall_bricks", "wall_blotches", "wall_dots", "floor", "ceiling"],
    ):
        if name == "floor":  # finer tiles on the floor
            v, f, uv, n = piece
            piece = (v, f, uv * (1.3 / 1.0), n)
        parts.append(_part(f"room/{name}", piece, tex))

    parts.append(_part("table/top", box_pieces((0.0, 0.0, top - T / 2), (L, D, T), tile=0.5), "table"))
    leg_h = top - T
    inset = 0.06
    for sx in (-1, 1):
        for sy in (-1, 1):
            c = (sx * (L / 2 - inset), sy * (D / 2 - inset), leg_h / 2)
            parts.append(_part("table/leg", box_pieces(c, (0.05, 0.05, leg_h), tile=0.35), "legs"))

    jitter = lambda: layout_rng.uniform(-0.015, 0.015, 2)  # noqa: E731
    # 1: red box (12 x 9 x 10 cm)
    size = np.array([0.12, 0.09, 0.10])
    xy = np.array([-0.17, -0.06]) + jitter()
    yaw = layout_rng.uniform(-np.pi, np.pi)
    parts.append(_part("red box", box_pieces((xy[0], xy[1], top + size[2] / 2), size, tile=0.1, subdiv=8, yaw=yaw),
                       "red box", 1))
    # 2: blue mug (diameter 9 cm, height 11 cm, with a handle)
    xy = np.array([0.13, 0.09]) + jitter()
    yaw = layout_rng.uniform(-np.pi, np.pi)
    radius, height = 0.045, 0.11
    body = cylinder_pieces((xy[0], xy[1], top), radius, height, yaw=yaw)
    cz, sz = math.cos(yaw), math.sin(yaw)
    handle_centre = np.array([xy[0], xy[1], top + 0.055]) + (radius - 0.004) * np.array([cz, sz, 0.0])
    handle = torus_arc_piece(handle_centre, 0.03, 0.007, (-np.pi / 2, np.pi / 2), yaw=yaw)
    parts.append(_part("blue mug", body + [handle], "blue mug", 2))
    # 3: green ball (diameter 10 cm)
    xy = np.array([0.06, -0.16]) + jitter()
    parts.append(_part("green ball", icosphere_piece((xy[0], xy[1], top + 0.05), 0.05, 3), "green ball", 3))

    names = list(textures)
    return SyntheticScene(
        parts=parts,
        textures=np.stack([textures[n] for n in names]),
        texture_names=names,
        object_names=list(OBJECT_PROMPTS),
        light_dir=np.asarray(config.light_dir, np.float64),
        ambient=config.ambient,
        diffuse=config.diffuse,
    )


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------
def frame_name(index: int) -> str:
    """The stem of frame ``index``: ``frame_00000`` ..."""
    return f"frame_{index:05d}"


def orbit_cameras(config: SceneConfig, rng: np.random.Generator) -> list[Camera]:
    """Cameras on a jittered orbit around the table centre, in orbit order.

    Azimuths step evenly (with jitter); radius and elevation vary smoothly along the orbit within
    their ranges; each camera looks at the table-top centre (jittered) and has its own focal
    lengths and a principal point off the image centre.
    """
    n = config.num_views
    W, H = config.width, config.height
    target0 = np.array([0.0, 0.0, config.table_height + 0.04])
    phase0, phase1, phase2 = rng.uniform(0, 2 * np.pi, 3)
    cams = []
    for k in range(n):
        theta = phase0 + 2 * np.pi * (k + config.azimuth_jitter * rng.uniform(-1, 1)) / n
        s_el = 0.5 + 0.5 * math.sin(2 * theta + phase1)
        s_r = 0.5 + 0.5 * math.sin(3 * theta + phase2)
        el_lo, el_hi = config.elevation_range
        elev = math.radians(np.clip(el_lo + (el_hi - el_lo) * s_el + rng.uniform(-2, 2), el_lo, el_hi))
        r_lo, r_hi = config.radius_range
        radius = float(np.clip(r_lo + (r_hi - r_lo) * s_r + rng.uniform(-0.03, 0.03), r_lo, r_hi))
        target = target0 + rng.uniform(-config.target_jitter, config.target_jitter, 3)
        centre = target + radius * np.array([math.cos(elev) * math.cos(theta), math.cos(elev) * math.sin(theta), math.sin(elev)])
        R, t = look_at(centre, target)
        fx = config.focal_factor * W * (1 + rng.uniform(-config.focal_jitter, config.focal_jitter))
        fy = fx * (1 + rng.uniform(-config.focal_jitter, config.focal_jitter) / 5)
        lo, hi = config.principal_offset_range
        cx = W / 2 + rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi) * W
        cy = H / 2 + rng.choice([-1.0, 1.0]) * rng.uniform(lo, hi) * H
        name = frame_name(k)
        cams.append(Camera(R, t, fx, fy, cx, cy, W, H, image_name=name, image_path=f"{name}.png", uid=k))
    return cams


def camera_rays(cam: Camera, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through the sub-pixel centres of ``cam``.

    Sub-pixel (i', j') of the ``supersample``-times finer grid passes through
    u = (j' + 0.5) / s, v = (i' + 0.5) / s in the camera's pixel coordinates, so each pixel's
    s x s rays are centred in it and with s = 1 the ray of pixel (i, j) goes through (j + .5, i + .5).

    Returns:
        origins [H*s*W*s, 3] (a broadcast view of the centre) and directions [H*s*W*s, 3], row-major
        over (i', j'), scaled so that their camera z component is 1.
    """
    s = int(supersample)
    u = (np.arange(cam.width * s) + 0.5) / s
    v = (np.arange(cam.height * s) + 0.5) / s
    x = (u - cam.cx) / cam.fx
    y = (v - cam.cy) / cam.fy
    X, Y = np.meshgrid(x, y)
    d_cam = np.stack([X, Y, np.ones_like(X)], -1).reshape(-1, 3)
    d = apply_linear(cam.R.T, d_cam)  # the camera-frame ray (x, y, 1) in world coordinates
    return np.broadcast_to(cam.center, d.shape), d


def cast_rays(scene: SyntheticScene, origins: np.ndarray, directions: np.ndarray):
    """First hits of rays (embree through ``trimesh``'s ``intersects_id``).

    The hit position is the exact float64 intersection of the ray with the plane of the hit face.

    Args:
        origins: [N, 3]; directions: [N, 3] (any non-zero length).

    Returns:
        (tri [N] int64 face index, -1 for no hit; points [N, 3] hit positions (NaN for no hit);
        bary [N, 3] barycentric coordinates of the hit in its face (0 for no hit)).
    """
    n = len(origins)
    index_tri, index_ray = scene.intersector().intersects_id(
        origins, directions, multiple_hits=False, return_locations=False
    )
    tri = np.full(n, -1, np.int64)
    points = np.full((n, 3), np.nan)
    bary = np.zeros((n, 3))
    tri[index_ray] = index_tri
    if len(index_ray):
        o, d = origins[index_ray], directions[index_ray]
        v0, nrm = scene.face_v0[index_tri], scene.face_normal[index_tri]
        denom = np.einsum("ij,ij->i", d, nrm)
        t = np.einsum("ij,ij->i", v0 - o, nrm) / np.where(np.abs(denom) > 1e-300, denom, 1e-300)
        p = o + t[:, None] * d
        points[index_ray] = p
        bary[index_ray] = barycentric(scene, index_tri, p)
    return tri, points, bary


def barycentric(scene: SyntheticScene, tri: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 3] barycentric coordinates of points (on the planes of faces ``tri``), clipped to the face."""
    w = points - scene.face_v0[tri]
    e = scene.face_edges[tri]  # [N, 2, 3]
    d20 = np.einsum("ij,ij->i", w, e[:, 0])
    d21 = np.einsum("ij,ij->i", w, e[:, 1])
    g = scene.face_gram_inv[tri]  # [N, 2, 2]
    b1 = g[:, 0, 0] * d20 + g[:, 0, 1] * d21
    b2 = g[:, 1, 0] * d20 + g[:, 1, 1] * d21
    b = np.clip(np.stack([1.0 - b1 - b2, b1, b2], -1), 0.0, None)
    return b / np.maximum(b.sum(1, keepdims=True), 1e-12)


@dataclass
class ViewRender:
    """What ray casting one view gives.

    Attributes:
        rgb: [H, W, 3] float32 colours in [0, 1] (box-filtered sub-samples).
        coverage: [K, H, W] float32 fraction of each pixel's sub-samples whose FIRST hit is object k+1.
        tri_hi: [Hs, Ws] int64 hit face per sub-sample (-1: none).
        object_hi: [Hs, Ws] int32 object id of the first hit per sub-sample (0: background or none).
        depth_hi: [Hs, Ws] float32 hit depth along the camera z axis per sub-sample (0: none).
        points_hi: [Hs*Ws, 3] float64 hit positions (NaN: none).
        colour_hi: [Hs*Ws, 3] float32 shaded colour per sub-sample.
    """

    rgb: np.ndarray
    coverage: np.ndarray
    tri_hi: np.ndarray
    object_hi: np.ndarray
    depth_hi: np.ndarray
    points_hi: np.ndarray
    colour_hi: np.ndarray


def render_view(scene: SyntheticScene, cam: Camera, supersample: int = 1) -> ViewRender:
    """Ray cast one view (first hits only; misses are black, which the closed room prevents)."""
    s = int(supersample)
    Hs, Ws = cam.height * s, cam.width * s
    origins, dirs = camera_rays(cam, s)
    tri, points, bary = cast_rays(scene, origins, dirs)
    hit = tri >= 0
    colour = np.zeros((len(tri), 3), np.float32)
    if hit.any():
        _, _, colour[hit] = surface_attributes(scene, tri[hit], bary[hit])
    depth = np.zeros(len(tri), np.float32)
    depth[hit] = np.einsum("nc,c->n", points[hit] - cam.center, cam.R[2])
    label = np.zeros(len(tri), np.int32)
    label[hit] = scene.face_object[tri[hit]]
    rgb = colour.reshape(cam.height, s, cam.width, s, 3).mean((1, 3))
    lab = label.reshape(cam.height, s, cam.width, s)
    coverage = np.stack([(lab == k).mean((1, 3)) for k in range(1, scene.num_objects + 1)]).astype(np.float32)
    return ViewRender(
        rgb.astype(np.float32), coverage, tri.reshape(Hs, Ws), label.reshape(Hs, Ws), depth.reshape(Hs, Ws), points, colour
    )


def render_depth(scene: SyntheticScene, cam: Camera) -> np.ndarray:
    """[H, W] float32 first-hit depth along the camera z axis through each pixel centre (0: none)."""
    origins, dirs = camera_rays(cam, 1)
    tri, points, _ = cast_rays(scene, origins, dirs)
    depth = np.zeros(len(tri), np.float32)
    hit = tri >= 0
    depth[hit] = np.einsum("nc,c->n", points[hit] - cam.center, cam.R[2])
    return depth.reshape(cam.height, cam.width)


# ---------------------------------------------------------------------------------------------
# Sparse points (a COLMAP-like model with exact tracks)
# ---------------------------------------------------------------------------------------------
@dataclass
class SparsePoints:
    """3D points with tracks.

    Attributes:
        xyz: [P, 3] float64 noisy positions (what SfM would report).
        rgb: [P, 3] uint8 rendered (shaded) colours.
        error: [P] float64 mean pixel distance between the projections of the true and noisy point.
        tracks: per point, (view indices [L], 2D point indices [L]).
        xys: per view, [M, 2] float64 projections of its observed points (of the NOISY positions).
        point_index: per view, [M] int64 index into ``xyz`` of each 2D point.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray
    tracks: list[tuple[np.ndarray, np.ndarray]]
    xys: list[np.ndarray]
    point_index: list[np.ndarray]


def visibility(cams: Sequence[Camera], depth_hi: Sequence[np.ndarray], points: np.ndarray, supersample: int,
               tol_abs: float, tol_rel: float) -> np.ndarray:
    """[V, P] bool: point p projects inside view v and agrees with its z-buffer there."""
    s = int(supersample)
    vis = np.zeros((len(cams), len(points)), bool)
    for v, (cam, zbuf) in enumerate(zip(cams, depth_hi)):
        uv, z = project(cam, points)
        ok = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        ok &= np.isfinite(uv).all(1)
        jj = np.clip(np.floor(np.nan_to_num(uv[:, 0]) * s).astype(np.int64), 0, zbuf.shape[1] - 1)
        ii = np.clip(np.floor(np.nan_to_num(uv[:, 1]) * s).astype(np.int64), 0, zbuf.shape[0] - 1)
        zb = zbuf[ii, jj]
        ok &= (zb > 0) & (np.abs(z - zb) <= tol_abs + tol_rel * z)
        vis[v] = ok
    return vis


def make_sparse_points(cams: Sequence[Camera], candidates: np.ndarray, colours: np.ndarray,
                       depth_hi: Sequence[np.ndarray], config: SceneConfig, rng: np.random.Generator) -> SparsePoints:
    """Keep candidate surface points seen by >= ``min_track_length`` views, add noise, build tracks.

    Args:
        candidates: [P, 3] true surface points (hits of rendered rays); colours: [P, 3] float in [0, 1].
        depth_hi: per view, the supersampled z-buffer.
    """
    vis = visibility(cams, depth_hi, candidates, config.supersample, config.depth_tolerance_abs, config.depth_tolerance_rel)
    keep = np.flatnonzero(vis.sum(0) >= config.min_track_length)
    if len(keep) > config.num_points:
        keep = np.sort(rng.choice(keep, config.num_points, replace=False))
    true_xyz = candidates[keep]
    noisy = true_xyz + rng.normal(0.0, config.point_noise, true_xyz.shape)
    vis = vis[:, keep]
    # observations of the noisy points; drop those that leave the image
    proj = []
    err_sum = np.zeros(len(keep))
    for v, cam in enumerate(cams):
        uv, z = project(cam, noisy)
        inside = (z > 1e-6) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        vis[v] &= inside
        uv_true, _ = project(cam, true_xyz)
        err_sum += np.where(vis[v], np.linalg.norm(np.nan_to_num(uv - uv_true), axis=1), 0.0)
        proj.append(uv)
    final = vis.sum(0) >= config.min_track_length
    idx = np.flatnonzero(final)
    remap = np.full(len(keep), -1, np.int64)
    remap[idx] = np.arange(len(idx))
    vis = vis[:, idx]
    xys, point_index = [], []
    track_views: list[list[int]] = [[] for _ in idx]
    track_2d: list[list[int]] = [[] for _ in idx]
    for v in range(len(cams)):
        pts = np.flatnonzero(vis[v])  # ascending new point index
        xys.append(proj[v][idx[pts]])
        point_index.append(pts.astype(np.int64))
        for j, p in enumerate(pts.tolist()):
            track_views[p].append(v)
            track_2d[p].append(j)
    tracks = [(np.asarray(a, np.int64), np.asarray(b, np.int64)) for a, b in zip(track_views, track_2d)]
    counts = vis.sum(0)
    return SparsePoints(
        xyz=noisy[idx],
        rgb=np.round(np.clip(colours[keep][idx], 0, 1) * 255).astype(np.uint8),
        error=err_sum[idx] / np.maximum(counts, 1),
        tracks=tracks,
        xys=xys,
        point_index=point_index,
    )


def colmap_model(cams: Sequence[Camera], sparse: SparsePoints):
    """COLMAP records (cameras, images, points3D dicts keyed by 1-based ids): one PINHOLE camera per image."""
    from scene.colmap import ColmapCamera, ColmapImage, ColmapPoint3D, rotmat_to_qvec

    cameras, images, points = {}, {}, {}
    for v, cam in enumerate(cams):
        cid = v + 1
        cameras[cid] = ColmapCamera(cid, "PINHOLE", cam.width, cam.height, np.array([cam.fx, cam.fy, cam.cx, cam.cy]))
        images[cid] = ColmapImage(
            cid, rotmat_to_qvec(cam.R), cam.t, cid, f"{cam.image_name}.png", sparse.xys[v], sparse.point_index[v] + 1
        )
    for p in range(len(sparse.xyz)):
        views, idx2d = sparse.tracks[p]
        points[p + 1] = ColmapPoint3D(p + 1, sparse.xyz[p], sparse.rgb[p], float(sparse.error[p]), views + 1, idx2d)
    return cameras, images, points


# ---------------------------------------------------------------------------------------------
# Split and key frame
# ---------------------------------------------------------------------------------------------
def orbit_split(num_views: int, test_fraction: float, num_arcs: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Train and test view indices: the test views are ``num_arcs`` contiguous, evenly spaced arcs
    of the orbit covering ``round(test_fraction * num_views)`` views (at least 1, leaving >= 2 train)."""
    n_test = int(np.clip(round(test_fraction * num_views), 1, num_views - 2))
    arcs = max(1, min(num_arcs, n_test))
    lengths = [n_test // arcs + (1 if a < n_test % arcs else 0) for a in range(arcs)]
    offset = int(rng.integers(num_views))
    test = set()
    for a, length in enumerate(lengths):
        start = offset + int(round(a * num_views / arcs))
        test.update((start + i) % num_views for i in range(length))
    test_list = sorted(test)
    train = [i for i in range(num_views) if i not in test]
    return train, test_list


def choose_key_frame(masks: np.ndarray, candidates: Sequence[int]) -> int:
    """The view (among ``candidates``) where every object is best visible.

    Args:
        masks: [V, K, H, W] bool object masks.

    Score: the minimum over objects of (mask area / that object's largest area over all views);
    views where an object is missing or touches the image border score -1.
    """
    area = masks.sum((2, 3)).astype(np.float64)  # [V, K]
    border = masks[:, :, 0, :].any(-1) | masks[:, :, -1, :].any(-1) | masks[:, :, :, 0].any(-1) | masks[:, :, :, -1].any(-1)
    rel = area / np.maximum(area.max(0, keepdims=True), 1.0)
    score = np.where((area > 0) & ~border, rel, -1.0).min(1)
    cand = list(candidates)
    return cand[int(np.argmax(score[cand]))]


# ---------------------------------------------------------------------------------------------
# Gaussians and the proxy
# ---------------------------------------------------------------------------------------------
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """[3, 3] uniformly random rotation (from a normalised Gaussian quaternion)."""
    from scene.colmap import qvec_to_rotmat

    q = rng.normal(size=4)
    return qvec_to_rotmat(q / np.linalg.norm(q))


def covariances(scales: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """[N, 3, 3] covariances R diag(scales^2) R^T from [N, 3] standard deviations and [N, 3, 3] rotations."""
    return np.einsum("nij,nj,nkj->nik", rotations, scales**2, rotations)


def decompose_covariances(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact eigendecomposition of [N, 3, 3] covariances.

    Returns:
        (scales [N, 3] standard deviations, largest first, so a flat Gaussian's thin axis is the
        third; quats [N, 4] wxyz of the rotation whose columns are the matching eigenvectors).
    """
    from scene.colmap import rotmat_to_qvec

    cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[:, ::-1], evecs[:, :, ::-1]
    flip = np.linalg.det(evecs) < 0
    evecs[flip, :, 2] *= -1
    scales = np.sqrt(np.clip(evals, 1e-30, None))
    return scales, rotmat_to_qvec(evecs)


def sample_surface(scene: SyntheticScene, object_id: int, n: int, rng: np.random.Generator):
    """Area-uniform samples on an object's triangles.

    Returns:
        (points [n, 3], tri [n], bary [n, 3], total area).
    """
    faces = np.flatnonzero(scene.face_object == object_id)
    tri_v = scene.vertices[scene.faces[faces]]
    area = 0.5 * np.linalg.norm(np.cross(tri_v[:, 1] - tri_v[:, 0], tri_v[:, 2] - tri_v[:, 0]), axis=1)
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    sq = np.sqrt(r1)
    bary = np.stack([1 - sq, sq * (1 - r2), sq * r2], -1)
    points = np.einsum("nk,nkc->nc", bary, tri_v[pick])
    return points, faces[pick], bary, float(area.sum())


def _tangent_frames(normals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[N, 3, 3] rotations with columns (t1, t2, n): random in-plane orientation, third axis the normal."""
    ref = np.where(np.abs(normals[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    a = np.cross(normals, ref)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = np.cross(normals, a)
    ang = rng.uniform(0, 2 * np.pi, len(normals))[:, None]
    t1 = np.cos(ang) * a + np.sin(ang) * b
    t2 = np.cross(normals, t1)
    return np.stack([t1, t2, normals], -1)


def colour_change(rgb: np.ndarray, brightness: float, saturation: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness and saturation shift plus Gaussian noise, clipped to [0, 1]."""
    grey = rgb.mean(1, keepdims=True)
    out = (grey + (rgb - grey) * saturation) * brightness + rng.normal(0.0, noise, rgb.shape)
    return np.clip(out, 0.0, 1.0)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def transform_gaussians(xyz: np.ndarray, cov: np.ndarray, A: np.ndarray, b: np.ndarray):
    """Exact affine map of Gaussians: means A x + b, covariances A Sigma A^T (re-decomposed).

    Returns:
        (xyz [N, 3], scales [N, 3] standard deviations, quats [N, 4] wxyz).
    """
    new_xyz = apply_linear(A, xyz) + b
    scales, quats = decompose_covariances(np.einsum("ij,njk,lk->nil", A, cov, A))
    return new_xyz, scales, quats


def proxy_transform(points_world: np.ndarray, centre: np.ndarray, cfg: ProxyConfig, rng: np.random.Generator) -> dict:
    """The canonical frame of a proxy: world -> proxy is x_p = k (L (x - c) - m) with
    L = F^T diag(d) F Q^T (Q random rotation, d per-axis distortion, F identity or random),
    m the bounding-box centre of L (x - c) over ``points_world`` and k the uniform scale making
    them fill [-half_extent, half_extent]^3.

    Returns:
        dict with numpy fields: ``A`` (3x3) and ``t`` (3) of proxy -> world x_w = A x_p + t, and the
        factors ``R`` (= Q), ``F``, ``s`` (= 1 / (k d)), ``k``, ``d``, ``m``, ``c``.
    """
    Q = random_rotation(rng)
    d = rng.uniform(cfg.distortion_range[0], cfg.distortion_range[1], 3)
    F = random_rotation(rng) if cfg.random_scale_frame else np.eye(3)
    L = F.T @ np.diag(d) @ F @ Q.T
    y = apply_linear(L, points_world - centre)
    m = 0.5 * (y.min(0) + y.max(0))
    k = cfg.half_extent / np.abs(y - m).max()
    s = 1.0 / (k * d)
    A = Q @ F.T @ np.diag(s) @ F
    t = centre + Q @ F.T @ np.diag(1.0 / d) @ F @ m
    return {"A": A, "t": t, "R": Q, "F": F, "s": s, "k": float(k), "d": d, "m": m, "c": centre}


def transform_json(tr: dict, name: str) -> dict:
    """The JSON record of a proxy -> world transform (see :data:`TRANSFORM_CONVENTION`)."""
    M = np.eye(4)
    M[:3, :3] = tr["A"]
    M[:3, 3] = tr["t"]
    return {
        "object": name,
        "convention": TRANSFORM_CONVENTION,
        "matrix": M.tolist(),
        "rotation": tr["R"].tolist(),
        "scale": tr["s"].tolist(),
        "scale_frame": tr["F"].tolist(),
        "translation": tr["t"].tolist(),
        "world_to_proxy": np.linalg.inv(M).tolist(),
        "construction": {
            "description": "world -> proxy: x_p = k * (F.T @ diag(d) @ F @ R.T @ (x_w - c) - m)",
            "object_centre_world": tr["c"].tolist(),
            "distortion_d": tr["d"].tolist(),
            "uniform_scale_k": tr["k"],
            "offset_m": tr["m"].tolist(),
        },
    }


def make_proxy(scene: SyntheticScene, object_id: int, cfg: ProxyConfig, rng: np.random.Generator) -> tuple[GaussianArrays, dict]:
    """A degree-0 Gaussian "generator output" of one object in its canonical frame.

    Surface Gaussians (flat: in-plane scales along random tangents, a thin third axis along the
    normal) carry the rendered colour with a colour change and noise and opacity ~0.9; junk
    Gaussians (``junk_fraction`` of all) have opacity < 0.05. Everything is built in world space
    and mapped exactly by :func:`proxy_transform` (covariances re-decomposed).

    Returns:
        (Gaussians in proxy coordinates, the transform dict of :func:`proxy_transform`).
    """
    n = cfg.num_surface_gaussians
    pts, tri, bary, area = sample_surface(scene, object_id, n, rng)
    normals, _, colour = surface_attributes(scene, tri, bary)
    normals = normals.astype(np.float64)
    spacing = math.sqrt(area / n)
    sig = np.stack(
        [
            cfg.tangent_scale * spacing * rng.uniform(0.8, 1.2, n),
            cfg.tangent_scale * spacing * rng.uniform(0.8, 1.2, n),
            np.full(n, cfg.normal_scale * spacing),
        ],
        -1,
    )
    cov_w = covariances(sig, _tangent_frames(normals, rng))
    lo, hi = scene.object_bounds(object_id)
    tr = proxy_transform(pts, 0.5 * (lo + hi), cfg, rng)
    Minv = np.linalg.inv(tr["A"])
    xyz_p, scales_p, quats_p = transform_gaussians(pts, cov_w, Minv, -Minv @ tr["t"])
    rgb = colour_change(colour.astype(np.float64), cfg.brightness, cfg.saturation, cfg.colour_noise, rng)
    opacity = rng.uniform(cfg.opacity_range[0], cfg.opacity_range[1], n)

    n_junk = int(round(cfg.junk_fraction * n / (1.0 - cfg.junk_fraction)))
    box_lo, box_hi = xyz_p.min(0), xyz_p.max(0)
    grow = cfg.junk_margin * (box_hi - box_lo) / 2
    j_xyz = rng.uniform(np.maximum(box_lo - grow, -0.49), np.minimum(box_hi + grow, 0.49), (n_junk, 3))
    j_scale = np.repeat(rng.uniform(cfg.junk_scale_range[0], cfg.junk_scale_range[1], (n_junk, 1)), 3, 1)
    jq = rng.normal(size=(n_junk, 4))
    j_quat = jq / np.linalg.norm(jq, axis=1, keepdims=True)
    j_rgb = rng.random((n_junk, 3))
    j_opacity = rng.uniform(cfg.junk_opacity_range[0], cfg.junk_opacity_range[1], n_junk)

    order = rng.permutation(n + n_junk)
    cat = lambda a, b: np.concatenate([a, b])[order].astype(np.float32)  # noqa: E731
    g = GaussianArrays(
        xyz=cat(xyz_p, j_xyz),
        f_dc=cat((rgb - 0.5) / C0, (j_rgb - 0.5) / C0),
        f_rest=np.zeros((n + n_junk, 0), np.float32),
        opacity=cat(_logit(opacity), _logit(j_opacity)),
        scale=cat(np.log(scales_p), np.log(j_scale)),
        rot=cat(quats_p, j_quat),
    )
    return g, tr


# ---------------------------------------------------------------------------------------------
# Whole scene
# ---------------------------------------------------------------------------------------------
@dataclass
class GeneratedScene:
    """Everything a demo scene folder holds, in memory.

    Attributes:
        config: the configuration used.
        scene: the meshes.
        cameras: the views in orbit order.
        images: [V, H, W, 3] uint8.
        masks: [V, K, H, W] bool object masks (first hit covers >= 50% of the pixel's sub-samples).
        depths: [V, H, W] float32 metres along the camera z axis (0: no hit), or None.
        sparse: the 3D points and tracks.
        train, test: view indices; key_frame: the view index of ``first_image_name``.
        proxies: per object name, (Gaussians in proxy frame, transform dict).
        timings: seconds per phase.
    """

    config: SceneConfig
    scene: SyntheticScene
    cameras: list[Camera]
    images: np.ndarray
    masks: np.ndarray
    depths: Optional[np.ndarray]
    sparse: SparsePoints
    train: list[int]
    test: list[int]
    key_frame: int
    proxies: dict[str, tuple[GaussianArrays, dict]]
    timings: dict[str, float]

    def description(self, iteration: int) -> dict:
        """The SCORP ``description.yml`` content."""
        return {
            "prompts": ",".join(self.scene.object_names),
            "detect_conf": 0.3,
            "ext": "png",
            "first_image_name": self.cameras[self.key_frame].image_name,
            "iteration": int(iteration),
            "img_num": 3,
            "num_iterations": 4,
            "opt_shape_iterations": [2],
            "cam_list_interval": 2,
        }

    def split(self) -> dict:
        return {
            "train": [self.cameras[i].image_name for i in self.train],
            "test": [self.cameras[i].image_name for i in self.test],
        }

    def meta(self) -> dict:
        """``scene_meta.json`` content (timings as measured so far)."""
        objects = []
        for k, name in enumerate(self.scene.object_names, start=1):
            lo, hi = self.scene.object_bounds(k)
            objects.append(
                {
                    "name": name,
                    "object_id": k,
                    "centre": (0.5 * (lo + hi)).tolist(),
                    "bbox_min": lo.tolist(),
                    "bbox_max": hi.tolist(),
                    "size": (hi - lo).tolist(),
                    "mask_pixels_per_view": self.masks[:, k - 1].sum((1, 2)).tolist(),
                }
            )
        return {
            "generator": "utils.synthetic (ray-cast textured meshes, trimesh + embree)",
            "seed": self.config.seed,
            "width": self.config.width,
            "height": self.config.height,
            "supersample": self.config.supersample,
            "num_cameras": len(self.cameras),
            "num_train": len(self.train),
            "num_test": len(self.test),
            "first_image_name": self.cameras[self.key_frame].image_name,
            "num_points3D": int(len(self.sparse.xyz)),
            "mean_track_length": float(np.mean([len(t[0]) for t in self.sparse.tracks])) if self.sparse.tracks else 0.0,
            "world": "Z up, metres; floor z = 0; table top centre at (0, 0, table_height)",
            "objects": objects,
            "proxy_gaussians": {name: len(g) for name, (g, _) in self.proxies.items()},
            "config": asdict(self.config),
            "timings_s": dict(self.timings),
        }


def generate_scene(config: SceneConfig, depths: bool = True, progress: Optional[Callable] = None) -> GeneratedScene:
    """Build, render and annotate a demo scene in memory.

    Args:
        config: the scene configuration.
        depths: also ray cast pixel-centre depth maps.
        progress: optional wrapper of the view iterator (e.g. ``tqdm``).
    """
    config.check()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seeds = np.random.SeedSequence([config.seed, 2]).spawn(3)
    cam_rng, point_rng, split_rng = (np.random.default_rng(s) for s in seeds)
    scene = build_scene(config)
    cams = orbit_cameras(config, cam_rng)
    scene.intersector()
    timings["build"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    V, K = len(cams), scene.num_objects
    images = np.zeros((V, config.height, config.width, 3), np.uint8)
    masks = np.zeros((V, K, config.height, config.width), bool)
    depth_maps = np.zeros((V, config.height, config.width), np.float32) if depths else None
    zbuffers = []
    per_view = int(math.ceil(2.0 * config.num_points / V))
    cand_xyz, cand_rgb = [], []
    views = range(V) if progress is None else progress(range(V))
    for v in views:
        cam = cams[v]
        r = render_view(scene, cam, config.supersample)
        images[v] = np.round(np.clip(r.rgb, 0, 1) * 255).astype(np.uint8)
        masks[v] = r.coverage >= 0.5
        zbuffers.append(r.depth_hi)
        if depths:
            depth_maps[v] = render_depth(scene, cam)
        hits = np.flatnonzero(r.tri_hi.reshape(-1) >= 0)
        pick = point_rng.choice(hits, size=min(per_view, len(hits)), replace=False)
        cand_xyz.append(r.points_hi[pick])
        cand_rgb.append(r.colour_hi[pick])
    timings["render"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    sparse = make_sparse_points(cams, np.concatenate(cand_xyz), np.concatenate(cand_rgb), zbuffers, config, point_rng)
    timings["points"] = time.perf_counter() - t2

    train, test = orbit_split(V, config.test_fraction, config.num_arcs, split_rng)
    key = choose_key_frame(masks, train)

    t3 = time.perf_counter()
    proxies = {}
    obj_seeds = np.random.SeedSequence([config.seed, 3]).spawn(K)
    for k, name in enumerate(scene.object_names, start=1):
        proxies[name] = make_proxy(scene, k, config.proxy, np.random.default_rng(obj_seeds[k - 1]))
    timings["proxies"] = time.perf_counter() - t3
    return GeneratedScene(config, scene, cams, images, masks, depth_maps, sparse, train, test, key, proxies, timings)
