"""Distances between points and triangle meshes (numpy; no rtree needed)."""

from __future__ import annotations

import numpy as np


def point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """[P] distance of points [P, 3] to the nearest of triangles [T, 3, 3] (closest-point regions of
    the triangle: vertices, edges, face; vectorised)."""
    a, b, c = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]
    p = p[:, None]
    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2

    def safe(x):
        return np.where(np.abs(x) < 1e-30, 1e-30, x)

    den = safe(va + vb + vc)
    q = a + ab * (vb / den)[..., None] + ac * (vc / den)[..., None]  # inside the face
    regions = [  # later entries win: edges, then vertices
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + (c - b) * ((d4 - d3) / safe(d4 - d3 + d5 - d6))[..., None]),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * (d2 / safe(d2 - d6))[..., None]),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * (d1 / safe(d1 - d3))[..., None]),
        ((d6 >= 0) & (d5 <= d6), np.broadcast_to(c, q.shape)),
        ((d3 >= 0) & (d4 <= d3), np.broadcast_to(b, q.shape)),
        ((d1 <= 0) & (d2 <= 0), np.broadcast_to(a, q.shape)),
    ]
    for cond, val in regions:
        q = np.where(cond[..., None], val, q)
    return np.linalg.norm(p - q, axis=-1).min(1)


def points_to_mesh_distance(points: np.ndarray, triangles: np.ndarray, chunk: int = 128, margin: float = np.inf) -> np.ndarray:
    """[P] distance of points [P, 3] to a mesh given as triangles [T, 3, 3].

    Points farther than ``margin`` outside the mesh's bounding box get ``inf`` without being
    measured (cheap culling when only near points matter)."""
    points = np.asarray(points, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.float64)
    out = np.full(len(points), np.inf)
    lo, hi = triangles.reshape(-1, 3).min(0) - margin, triangles.reshape(-1, 3).max(0) + margin
    near = np.flatnonzero(((points >= lo) & (points <= hi)).all(1))
    for s in range(0, len(near), chunk):
        idx = near[s : s + chunk]
        out[idx] = point_triangle_distance(points[idx], triangles)
    return out


def read_mesh_triangles(path: str) -> np.ndarray:
    """[T, 3, 3] triangles of a PLY mesh (plyfile; no trimesh needed)."""
    from plyfile import PlyData

    ply = PlyData.read(path)
    v = np.stack([ply["vertex"][k] for k in ("x", "y", "z")], 1).astype(np.float64)
    faces = np.stack(ply["face"]["vertex_indices"]).astype(np.int64)
    return v[faces]


def sample_triangles(triangles: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] points uniformly distributed over the area of [T, 3, 3] triangles."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    idx = rng.choice(len(triangles), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[idx] + u[:, None] * (b[idx] - a[idx]) + v[:, None] * (c[idx] - a[idx])


def chamfer_to_mesh(points: np.ndarray, triangles: np.ndarray, samples: int = 20000, seed: int = 0) -> dict:
    """Chamfer distance between a point set and a mesh surface, both directions.

    ``to_mesh``: mean exact distance of the points to the surface (accuracy); ``to_points``: mean
    distance of ``samples`` area-uniform surface samples to their nearest point (completeness);
    ``chamfer`` = their mean. Same units as the inputs.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    d_pm = points_to_mesh_distance(pts, triangles)
    surf = sample_triangles(triangles, samples, np.random.default_rng(seed))
    d_mp, _ = cKDTree(pts).query(surf)
    return {"to_mesh": float(d_pm.mean()), "to_points": float(d_mp.mean()), "chamfer": float(0.5 * (d_pm.mean() + d_mp.mean()))}
