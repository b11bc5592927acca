"""Stage 5 core: proxy Gaussians for each object, in the generator's canonical frame.

Three backends share this module's canonical frame, options and writer:

* ``file`` (here): import another generator's output, either a Gaussian PLY (3DGS layout, any SH
  degree), taken as is, or a mesh (.glb / .obj / mesh .ply), sampled into thin surface Gaussians;
* ``trellis`` (:mod:`utils.trellis`): the official TRELLIS image-to-3D pipeline;
* ``hull`` (:mod:`utils.hull`): a visual hull carved from the object's masks.

The canonical frame is TRELLIS's: the object inside [-0.5, 0.5]^3. Each object gets
``M/generated/<prompt>.ply`` and ``M/generated/<prompt>.json`` (schema: object, backend, inputs
[{path, sha256}], input_kind, normalisation {applied, scale, offset, matrix: input -> canonical},
num_gaussians, sh_degree, seed, options, plus what the backend adds), written by
:func:`write_outputs` only after every object was read and checked.

This module is imported by ``trellis_img2gs.py``, which users may run with the python of a
separate generator environment: it needs only numpy, Pillow and plyfile at import time (trimesh
is imported when a mesh is read). It therefore does NOT import ``scene.gaussian_model`` or
``utils.proxy`` (both import torch); the PLY layout is :mod:`scene.gaussian_ply` (numpy).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional

import numpy as np

from scene.colmap import rotmat_to_qvec
from scene.gaussian_ply import C0, GaussianArrays, gaussian_arrays_from_vertex, has_gaussian_properties, write_gaussian_ply
from utils.arguments import opt
from utils.errors import InputError
from utils.io import atomic_path, file_sha256, write_json

SELECTED = "masked_image_rgba_selected"
GENERATED = "generated"
PROXY_EXTENSIONS = (".ply", ".glb", ".obj")  # looked for in this order

CANONICAL_HALF_SIDE = 0.5  # TRELLIS: objects inside [-0.5, 0.5]^3
DEFAULT_GAUSSIANS_PER_MESH = 20000
DEFAULT_NORMAL_SCALE_RATIO = 0.1  # sigma along the face normal / sigma along the surface
DEFAULT_OPACITY = 0.95  # activated opacity of mesh-sampled Gaussians
DEFAULT_GREY = (0.5, 0.5, 0.5)  # colour of meshes without texture or colours
DEFAULT_SEED = 0
UV_EDGE_TOLERANCE = 1e-4  # texture coordinates this close outside [0, 1] are rounding, not repeats


@dataclass
class ProxyParams:
    """Options shared by the backends: seeds, mesh sampling, the Gaussians made, the canonical frame."""

    seed: int = opt(DEFAULT_SEED, "seed of the generator (trellis) and of the mesh surface sampling (file, trellis --save_type mesh)")
    gaussians_per_mesh: int = opt(DEFAULT_GAUSSIANS_PER_MESH, "Gaussians sampled on a mesh proxy (file backend meshes, trellis --save_type mesh)")
    normal_scale_ratio: float = opt(DEFAULT_NORMAL_SCALE_RATIO, "sigma along the surface normal / sigma along the surface, of mesh-sampled and hull Gaussians")
    opacity: float = opt(DEFAULT_OPACITY, "opacity of mesh-sampled and hull Gaussians, in (0, 1)")
    canonical: bool = opt(True, "normalise into the canonical box [-0.5, 0.5]^3 (a Gaussian PLY that fits is left as is)")

    def validate(self) -> None:
        """Raise InputError naming the first option that is out of range."""
        if self.gaussians_per_mesh < 1:
            raise InputError(None, f"--gaussians_per_mesh must be >= 1, got {self.gaussians_per_mesh}")
        if self.seed < 0:
            raise InputError(None, f"--seed must be >= 0, got {self.seed}")
        if not 0.0 < self.normal_scale_ratio:
            raise InputError(None, f"--normal_scale_ratio must be > 0, got {self.normal_scale_ratio}")
        if not 0.0 < self.opacity < 1.0:
            raise InputError(None, f"--opacity must be in (0, 1), got {self.opacity}")


# --------------------------------------------------------------------------------------------
# Gaussians (numpy) and their PLY
# --------------------------------------------------------------------------------------------
def gaussians_from_vertex_data(path: str, data: np.ndarray) -> GaussianArrays:
    """The Gaussians of a generator's Gaussian PLY, checked for use as a proxy."""
    g = gaussian_arrays_from_vertex(path, data)
    if len(g) == 0:
        raise InputError(path, "Gaussian PLY holds no Gaussians")
    if not (np.isfinite(g.xyz).all() and np.isfinite(g.scale).all()):
        raise InputError(path, "Gaussian PLY has non-finite positions or scales")
    return g


# --------------------------------------------------------------------------------------------
# Canonical frame
# --------------------------------------------------------------------------------------------
@dataclass
class Normalisation:
    """x_canonical = scale * x_input + offset (uniform scale)."""

    scale: float
    offset: np.ndarray  # [3]
    applied: bool

    @staticmethod
    def identity() -> "Normalisation":
        return Normalisation(1.0, np.zeros(3), False)

    @staticmethod
    def fit(points: np.ndarray, half_side: float = CANONICAL_HALF_SIDE) -> "Normalisation":
        """Centre on the bounding-box centre, scale the largest side to 2*half_side."""
        lo = points.min(axis=0).astype(np.float64)
        hi = points.max(axis=0).astype(np.float64)
        side = float((hi - lo).max())
        if not np.isfinite(side) or side <= 0.0:
            raise ValueError("degenerate bounding box")
        k = 2.0 * half_side / side
        return Normalisation(k, -k * (lo + hi) / 2.0, True)

    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] *= self.scale
        m[:3, 3] = self.offset
        return m

    def apply_points(self, p: np.ndarray) -> np.ndarray:
        return p * self.scale + self.offset

    def record(self) -> dict:
        return {"applied": self.applied, "scale": float(self.scale), "offset": [float(v) for v in self.offset],
                "matrix": self.matrix().tolist(),
                "convention": "x_canonical = matrix[:3, :3] @ x_input + matrix[:3, 3]; log-scales + log(scale)"}


def fits_canonical(xyz: np.ndarray, half_side: float = CANONICAL_HALF_SIDE) -> bool:
    return bool(np.all(np.abs(xyz) <= half_side))


def normalise_gaussians(g: GaussianArrays, canonical: bool, path: Optional[str] = None) -> tuple[GaussianArrays, Normalisation]:
    """Canonicalise a Gaussian PLY: untouched when it already fits in the box (or not canonical)."""
    if not canonical or fits_canonical(g.xyz):
        return g, Normalisation.identity()
    try:
        norm = Normalisation.fit(g.xyz.astype(np.float64))
    except ValueError:
        raise InputError(path, "cannot normalise: every Gaussian centre is the same point, outside the canonical box "
                               "(use --no-canonical)") from None
    out = GaussianArrays(
        xyz=norm.apply_points(g.xyz.astype(np.float64)).astype(np.float32),
        f_dc=g.f_dc, f_rest=g.f_rest, opacity=g.opacity,
        scale=(g.scale.astype(np.float64) + np.log(norm.scale)).astype(np.float32), rot=g.rot,
    )
    return out, norm


# --------------------------------------------------------------------------------------------
# Meshes -> surface Gaussians
# --------------------------------------------------------------------------------------------
@dataclass
class MeshPart:
    """One triangle mesh with its colours resolved per vertex-of-face (world units, scene transforms applied)."""

    triangles: np.ndarray  # [F, 3, 3]
    colour_kind: str  # texture | vertex | face | material | default
    uv: Optional[np.ndarray] = None  # [F, 3, 2]
    image: Optional[np.ndarray] = None  # [H, W, 3] float in [0, 1]
    corner_colours: Optional[np.ndarray] = None  # [F, 3, 3] in [0, 1] (vertex / face / material / default)


def _rgb01(colours) -> np.ndarray:
    """trimesh colours (uint8 RGBA) -> float RGB in [0, 1]."""
    return np.asarray(colours, dtype=np.float64)[..., :3] / 255.0


def _mesh_part(mesh) -> Optional[MeshPart]:
    import trimesh

    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(faces) == 0:
        return None
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    tris = verts[faces]
    grey = np.broadcast_to(np.asarray(DEFAULT_GREY, np.float64), (len(faces), 3, 3)).copy()
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        mat = visual.material
        image = getattr(mat, "baseColorTexture", None)
        if image is None:
            image = getattr(mat, "image", None)
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None and len(uv) == len(verts):
            arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
            return MeshPart(tris, "texture", uv=np.asarray(uv, np.float64)[faces], image=arr)
        main = getattr(mat, "main_color", None)
        if main is not None:
            c = _rgb01(np.asarray(main))
            return MeshPart(tris, "material", corner_colours=np.broadcast_to(c, (len(faces), 3, 3)).copy())
        return MeshPart(tris, "default", corner_colours=grey)
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        vc = _rgb01(np.asarray(visual.vertex_colors))
        return MeshPart(tris, "vertex", corner_colours=vc[faces])
    if kind == "face":
        fc = _rgb01(np.asarray(visual.face_colors))
        return MeshPart(tris, "face", corner_colours=np.repeat(fc[:, None, :], 3, axis=1))
    return MeshPart(tris, "default", corner_colours=grey)


def load_mesh_parts(path: str) -> list[MeshPart]:
    """Read a mesh file (.glb/.obj/.ply) into triangle parts; InputError when unreadable or empty."""
    try:
        import trimesh
    except ImportError:
        raise InputError(path, "reading a mesh needs the trimesh package, which is not installed") from None
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        raise InputError(path, f"cannot read mesh ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    if isinstance(loaded, trimesh.Scene):
        meshes = [m for m in loaded.dump(concatenate=False) if isinstance(m, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        meshes = [loaded]
    else:
        meshes = []
    parts = [p for p in (_mesh_part(m) for m in meshes) if p is not None]
    if not parts:
        raise InputError(path, "mesh has no triangles")
    all_tris = np.concatenate([p.triangles for p in parts])
    if not np.isfinite(all_tris).all():
        raise InputError(path, "mesh has non-finite vertices")
    areas = 0.5 * np.linalg.norm(np.cross(all_tris[:, 1] - all_tris[:, 0], all_tris[:, 2] - all_tris[:, 0]), axis=1)
    if not areas.sum() > 0.0:
        raise InputError(path, "mesh has zero surface area")
    return parts


def _sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup (edge-clamped, repeat outside [0, 1]); uv origin bottom-left (trimesh/OBJ convention)."""
    h, w = image.shape[:2]
    # repeat only outside [0, 1] (with a float-rounding margin): 1.0 is the far edge, not the near one
    inside = (uv >= -UV_EDGE_TOLERANCE) & (uv <= 1.0 + UV_EDGE_TOLERANCE)
    uv = np.clip(np.where(inside, uv, uv % 1.0), 0.0, 1.0)
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    xa, xb = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    ya, yb = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    top = image[ya, xa] * (1 - fx) + image[ya, xb] * fx
    bottom = image[yb, xa] * (1 - fx) + image[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


def mesh_to_gaussians(
    parts: list[MeshPart],
    count: int = DEFAULT_GAUSSIANS_PER_MESH,
    seed: int = DEFAULT_SEED,
    normal_scale_ratio: float = DEFAULT_NORMAL_SCALE_RATIO,
    opacity: float = DEFAULT_OPACITY,
    canonical: bool = True,
) -> tuple[GaussianArrays, Normalisation, list[str]]:
    """Area-weighted surface samples -> thin SH-0 Gaussians lying in the surface.

    Each Gaussian: centre on a triangle, two tangent axes with sigma = the mean sample spacing
    sqrt(area / count), the third along the face normal with sigma * ``normal_scale_ratio``;
    colour from the texture (bilinear UV lookup) or interpolated vertex/face colours.
    Returns the Gaussians, the normalisation applied to the mesh first, and the colour sources.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    tris = np.concatenate([p.triangles for p in parts])
    part_of = np.concatenate([np.full(len(p.triangles), i) for i, p in enumerate(parts)])
    norm = Normalisation.fit(tris.reshape(-1, 3)) if canonical else Normalisation.identity()
    tris = norm.apply_points(tris)
    e1 = tris[:, 1] - tris[:, 0]
    e2 = tris[:, 2] - tris[:, 0]
    cross = np.cross(e1, e2)
    double_area = np.linalg.norm(cross, axis=1)
    area = 0.5 * double_area
    total = float(area.sum())

    rng = np.random.default_rng(seed)
    face = rng.choice(len(tris), size=count, p=area / total)
    r1 = np.sqrt(rng.random(count))
    r2 = rng.random(count)
    bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], axis=1)  # uniform on the triangle
    centres = np.einsum("nk,nkd->nd", bary, tris[face])

    normal = cross[face] / double_area[face, None]
    t1 = e1[face] / np.linalg.norm(e1[face], axis=1, keepdims=True)
    t2 = np.cross(normal, t1)
    rot = rotmat_to_qvec(np.stack([t1, t2, normal], axis=2))  # columns: the axes of scale_0..2

    sigma = np.sqrt(total / count)
    log_s = np.log(np.array([sigma, sigma, sigma * normal_scale_ratio]))

    rgb = np.empty((count, 3))
    for i, p in enumerate(parts):
        sel = part_of[face] == i
        if not sel.any():
            continue
        local = face[sel] - np.flatnonzero(part_of == i)[0]
        if p.colour_kind == "texture":
            uv = np.einsum("nk,nkd->nd", bary[sel], p.uv[local])
            rgb[sel] = _sample_texture(p.image, uv)
        else:
            rgb[sel] = np.einsum("nk,nkd->nd", bary[sel], p.corner_colours[local])
    rgb = np.clip(rgb, 0.0, 1.0)
    g = GaussianArrays(
        xyz=centres.astype(np.float32),
        f_dc=((rgb - 0.5) / C0).astype(np.float32),
        f_rest=np.zeros((count, 0), np.float32),
        opacity=np.full(count, np.log(opacity / (1 - opacity)), np.float32),
        scale=np.broadcast_to(log_s, (count, 3)).astype(np.float32),
        rot=rot.astype(np.float32),
    )
    return g, norm, sorted({p.colour_kind for p in parts})


# --------------------------------------------------------------------------------------------
# The `file` backend
# --------------------------------------------------------------------------------------------
def list_objects(model_path: str, object_name: Optional[str], proxy: Optional[str],
                 fallback: Optional[list[str]] = None) -> list[str]:
    """The prompts to process: ``object_name``; else the sorted folders of M/masked_image_rgba_selected;
    else, for a single proxy file, its file name without extension; else ``fallback`` (the hull
    backend's prompts of D/description.yml)."""
    if object_name is not None:
        return [object_name]
    sel = os.path.join(model_path, SELECTED)
    if os.path.isdir(sel):
        prompts = sorted(d for d in os.listdir(sel) if os.path.isdir(os.path.join(sel, d)) and not d.startswith("."))
        if not prompts:
            raise InputError(sel, "no <prompt> folder in it (run view_selection.py first)")
        return prompts
    if proxy is not None and os.path.isfile(proxy):
        return [os.path.splitext(os.path.basename(proxy))[0]]
    if fallback:
        return list(fallback)
    raise InputError(sel, "folder not found (run view_selection.py first, or give --object_name)")


def find_proxy(proxy: str, prompt: str, n_objects: int) -> str:
    """The input file for ``prompt``: ``proxy`` itself (one object) or <proxy>/<prompt>.ply|.glb|.obj."""
    if os.path.isfile(proxy):
        if n_objects != 1:
            raise InputError(proxy, f"a single proxy file needs exactly one object, got {n_objects}: use a folder of "
                                    "<prompt>.ply|.glb|.obj or --object_name")
        return proxy
    if not os.path.isdir(proxy):
        raise InputError(proxy, "proxy file or folder not found")
    candidates = [os.path.join(proxy, prompt + ext) for ext in PROXY_EXTENSIONS]
    for c in candidates:
        if os.path.isfile(c):
            return c
    names = ", ".join(os.path.basename(c) for c in candidates)
    raise InputError(proxy, f"no proxy for '{prompt}' (looked for {names})")


def import_proxy(path: str, count: int = DEFAULT_GAUSSIANS_PER_MESH, seed: int = DEFAULT_SEED,
                 normal_scale_ratio: float = DEFAULT_NORMAL_SCALE_RATIO, opacity: float = DEFAULT_OPACITY,
                 canonical: bool = True) -> tuple[GaussianArrays, dict]:
    """Read one generator output and return its canonical Gaussians and a record of what was done."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in PROXY_EXTENSIONS:
        raise InputError(path, f"unsupported proxy format '{ext}' (expected {', '.join(PROXY_EXTENSIONS)})")
    if ext == ".ply":
        from plyfile import PlyData

        try:
            ply = PlyData.read(path)
            data = ply["vertex"].data
        except KeyError:
            raise InputError(path, "PLY has no 'vertex' element") from None
        except Exception as exc:
            raise InputError(path, f"cannot read PLY ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
        if has_gaussian_properties(data.dtype.names):
            g, norm = normalise_gaussians(gaussians_from_vertex_data(path, data), canonical, path)
            return g, {"input_kind": "gaussian_ply", "normalisation": norm.record()}
    parts = load_mesh_parts(path)
    g, norm, kinds = mesh_to_gaussians(parts, count, seed, normal_scale_ratio, opacity, canonical)
    return g, {"input_kind": "mesh", "colour_source": kinds, "normalisation": norm.record()}


def input_record(path: str) -> dict:
    """{path, sha256} of an input file (provenance)."""
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}


@dataclass
class ObjectOutput:
    """What stage 5 writes for one object: the proxy Gaussians, their JSON record and, optionally,
    a GLB file (made in a temporary folder) copied to M/generated/<prompt>.glb."""

    prompt: str
    gaussians: GaussianArrays
    record: dict
    glb_source: Optional[str] = None


def write_outputs(model_path: str, outputs: list[ObjectOutput]) -> list[str]:
    """Write every object's files (each atomically); returns the paths written."""
    out_dir = os.path.join(model_path, GENERATED)
    written = []
    for o in outputs:
        if o.glb_source is not None:
            glb = os.path.join(out_dir, f"{o.prompt}.glb")
            with atomic_path(glb) as tmp:
                shutil.copyfile(o.glb_source, tmp)
            written.append(glb)
        ply = os.path.join(out_dir, f"{o.prompt}.ply")
        write_gaussian_ply(ply, o.gaussians)
        meta = os.path.join(out_dir, f"{o.prompt}.json")
        write_json(meta, o.record)
        written += [ply, meta]
    return written


def run_file_backend(model_path: str, proxy: Optional[str], object_name: Optional[str] = None,
                     count: int = DEFAULT_GAUSSIANS_PER_MESH, seed: int = DEFAULT_SEED,
                     normal_scale_ratio: float = DEFAULT_NORMAL_SCALE_RATIO, opacity: float = DEFAULT_OPACITY,
                     canonical: bool = True) -> list[str]:
    """Import every object's proxy; everything is read and checked before anything is written.

    Writes M/generated/<prompt>.ply and M/generated/<prompt>.json; returns the prompts.
    """
    if proxy is None:
        raise InputError(None, "the file backend needs --proxy (a proxy file or a folder of <prompt>.ply|.glb|.obj)")
    params = ProxyParams(seed=seed, gaussians_per_mesh=count, normal_scale_ratio=normal_scale_ratio, opacity=opacity,
                         canonical=canonical)
    params.validate()
    prompts = list_objects(model_path, object_name, proxy)
    inputs = [find_proxy(proxy, p, len(prompts)) for p in prompts]
    options = {"gaussians_per_mesh": count, "normal_scale_ratio": normal_scale_ratio, "opacity": opacity,
               "canonical": canonical, "canonical_half_side": CANONICAL_HALF_SIDE}
    results = []
    for prompt, path in zip(prompts, inputs):
        g, info = import_proxy(path, count, seed, normal_scale_ratio, opacity, canonical)
        src = input_record(path)
        record = {"object": prompt, "backend": "file", "input": src["path"], "input_sha256": src["sha256"], "inputs": [src],
                  **info, "num_gaussians": len(g), "sh_degree": g.sh_degree, "seed": seed, "options": options}
        results.append(ObjectOutput(prompt, g, record))
    write_outputs(model_path, results)
    return prompts
