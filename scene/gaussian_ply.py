"""The 3DGS Gaussian PLY layout, at numpy level (no torch: stage 5 runs in a generator's own environment).

One binary little-endian ``vertex`` element of float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-4) opacity scale_0..2 rot_0..3`` with K = (d+1)^2 for SH
degree d; ``f_rest`` is channel-major; opacity is a logit, scale a log standard deviation, rot a
quaternion (w, x, y, z). Files of any degree are read (a degree-0 generator file has 17 properties).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from utils.errors import InputError
from utils.io import atomic_path

C0 = 0.28209479177387814  # degree-0 SH basis constant: rgb = 0.5 + C0 * f_dc


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    d = int(round(np.sqrt(k))) - 1
    if (d + 1) ** 2 != k:
        raise ValueError(f"{k} is not a number of SH coefficients (expected (d+1)^2)")
    return d


# --------------------------------------------------------------------------------------------
# PLY I/O (numpy level)
# --------------------------------------------------------------------------------------------
@dataclass
class GaussianArrays:
    """Raw Gaussian parameters as float32 numpy arrays (the PLY content).

    Attributes:
        xyz: [N, 3]; f_dc: [N, 3]; f_rest: [N, 3*(K-1)] channel-major; opacity: [N] logit;
        scale: [N, 3] log; rot: [N, 4] wxyz; normals: [N, 3] (zeros in 3DGS files).
    """

    xyz: np.ndarray
    f_dc: np.ndarray
    f_rest: np.ndarray
    opacity: np.ndarray
    scale: np.ndarray
    rot: np.ndarray
    normals: Optional[np.ndarray] = None

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.f_rest.shape[1] // 3 + 1)

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def ply_property_names(sh_degree: int) -> list[str]:
    """The 3DGS property names for ``sh_degree``, in file order."""
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def read_gaussian_ply(path: str | os.PathLike) -> GaussianArrays:
    """Read a 3DGS Gaussian PLY of any SH degree.

    Raises:
        InputError: missing, truncated or malformed files, or files without the 3DGS properties.
    """
    from plyfile import PlyData

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "Gaussian PLY file not found")
    try:
        ply = PlyData.read(path)
        vertex = ply["vertex"]
        data = vertex.data
    except KeyError:
        raise InputError(path, "not a Gaussian PLY: no 'vertex' element") from None
    except Exception as exc:  # plyfile raises several types for corrupt files
        raise InputError(path, f"cannot read PLY ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    return gaussian_arrays_from_vertex(path, data)


REQUIRED_PROPERTIES = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]


def has_gaussian_properties(names) -> bool:
    """True when a PLY vertex element carries the 3DGS properties (else it is e.g. a mesh or a point cloud)."""
    return set(REQUIRED_PROPERTIES) <= set(names or ())


def gaussian_arrays_from_vertex(path: str, data: np.ndarray) -> GaussianArrays:
    """The Gaussians of a PLY ``vertex`` element's structured array (``path`` names it in errors)."""
    names = set(data.dtype.names or ())
    missing = [n for n in REQUIRED_PROPERTIES if n not in names]
    if missing:
        raise InputError(path, f"not a Gaussian PLY: missing properties {', '.join(missing)}")
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    n_rest = len(rest)
    if n_rest % 3 != 0 or rest != [f"f_rest_{i}" for i in range(n_rest)]:
        raise InputError(path, f"malformed f_rest properties ({n_rest} found)")
    try:
        sh_degree_from_bases(n_rest // 3 + 1)
    except ValueError:
        raise InputError(path, f"{n_rest} f_rest properties is not 3*((d+1)^2-1) for any SH degree d") from None

    def cols(keys: Iterable[str]) -> np.ndarray:
        keys = list(keys)
        if not keys:
            return np.zeros((len(data), 0), dtype=np.float32)
        return np.stack([np.asarray(data[k], dtype=np.float32) for k in keys], axis=1)

    arrays = GaussianArrays(
        xyz=cols(["x", "y", "z"]),
        f_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        f_rest=cols(rest),
        opacity=np.asarray(data["opacity"], dtype=np.float32).copy(),
        scale=cols([f"scale_{i}" for i in range(3)]),
        rot=cols([f"rot_{i}" for i in range(4)]),
        normals=cols(["nx", "ny", "nz"]) if {"nx", "ny", "nz"} <= names else None,
    )
    return arrays


def write_gaussian_ply(path: str | os.PathLike, g: GaussianArrays) -> None:
    """Write ``g`` as a binary 3DGS PLY (atomically: temporary file + rename)."""
    from plyfile import PlyData, PlyElement

    n = len(g)
    degree = g.sh_degree
    names = ply_property_names(degree)
    normals = g.normals if g.normals is not None else np.zeros((n, 3), dtype=np.float32)
    n_rest = 3 * (num_sh_bases(degree) - 1)
    columns = [(g.xyz, 3), (normals, 3), (g.f_dc, 3), (g.f_rest, n_rest), (g.opacity, 1), (g.scale, 3), (g.rot, 4)]
    # explicit widths: an empty model (n = 0) is a valid file too
    flat = np.concatenate([np.asarray(c, dtype=np.float32).reshape(n, w) for c, w in columns], axis=1)
    if flat.shape[1] != len(names):
        raise ValueError(f"internal: {flat.shape[1]} columns for {len(names)} PLY properties")
    records = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        records[name] = flat[:, i]
    element = PlyElement.describe(records, "vertex")
    with atomic_path(path) as tmp:
        PlyData([element], text=False, byte_order="<").write(tmp)
