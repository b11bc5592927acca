"""Coarse rigid/similarity registration of a proxy point cloud onto an (incomplete) target.

Pure numpy/scipy, float64. Conventions follow :mod:`utils.geometry` and :mod:`utils.alignment`:
points are column vectors and a map is ``x' = A x + t``; batched points are rows ``[N, 3]``; a
4x4 matrix holds ``[[A, t], [0, 1]]``. Least-squares fits reuse :func:`utils.alignment.umeyama`,
matrices are built and chained with :func:`utils.alignment.as_matrix` / :func:`compose` /
:func:`apply_matrix`.

What this module provides for the coarse initialisation of the alignment stage (SPEC §4.7):

* :func:`well_spread_rotations`: a deterministic, well-spread rotation set made in code (the
  original shipped ``.npz`` files, reference §11), identity first.
* :func:`robust_extent`: extents along PCA axes between robust percentiles (the original used
  world-axis-aligned min/max boxes, which depend on orientation and are inflated by floaters).
* :func:`icp`: trimmed point-to-point ICP (rigid or similarity) with a convergence test.
* :func:`bidirectional_score`: fitness in both directions. The original ranked ICP starts by
  source fitness only, which prefers a proxy shrunk inside an incomplete target (reference §8.7).
* :func:`multi_start_icp`: one ICP per start rotation, about the pre-scaled proxy centroid moved
  onto the target centroid (the original's pre-translation used the centroid from before the
  scaling, reference §8.3 [bug]; here it is ``c_O - s R c_P``), best bidirectional score wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from utils.alignment import apply_matrix, as_matrix, compose, umeyama

#: Seed of the private generator that draws the candidate pool of :func:`well_spread_rotations`.
ROTATION_POOL_SEED = 20250
#: Candidate pool size of :func:`well_spread_rotations` is ``max(ROTATION_POOL_MIN, ROTATION_POOL_PER_ROTATION * n)``.
ROTATION_POOL_MIN = 8192
ROTATION_POOL_PER_ROTATION = 256
#: Default coverage distance of the multi-start score as a fraction of the ICP correspondence
#: distance. ICP gathers pairs at 1.6 delta (reference §8.3) so that it can pull from afar, but a
#: score taken at that loose a distance lets a proxy shrunk inside a thin target still "cover" most
#: of it; scoring at delta (= 1.6 delta / 1.6) separates the two (tests/test_registration.py).
SCORE_DISTANCE_FACTOR = 1.0 / 1.6


# --------------------------------------------------------------------------------------------
# Rotation set
# --------------------------------------------------------------------------------------------
def rotation_angle_between(A, B) -> np.ndarray:
    """Geodesic angle (radians) between rotations: ``arccos((tr(A^T B) - 1) / 2)``.

    A, B: [..., 3, 3] (broadcast). Returns [...] float64 in [0, pi].
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    tr = np.einsum("...ij,...ij->...", A, B)
    return np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))


def min_pairwise_angle(rotations) -> float:
    """Minimum geodesic angle (radians) over all pairs of a [K, 3, 3] rotation set (K >= 2)."""
    R = np.asarray(rotations, dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3) or R.shape[0] < 2:
        raise ValueError(f"rotations must have shape [K >= 2, 3, 3], got {R.shape}")
    q = Rotation.from_matrix(R).as_quat()
    dots = np.abs(q @ q.T)
    np.fill_diagonal(dots, 0.0)
    return float(2.0 * np.arccos(np.clip(dots.max(), 0.0, 1.0)))


@lru_cache(maxsize=16)
def _well_spread_quaternions(n: int) -> np.ndarray:
    pool_size = max(ROTATION_POOL_MIN, ROTATION_POOL_PER_ROTATION * n)
    rng = np.random.default_rng(ROTATION_POOL_SEED)  # private generator: no global RNG state is touched
    pool = rng.standard_normal((pool_size, 4))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    pool[0] = (0.0, 0.0, 0.0, 1.0)  # identity (scipy order x, y, z, w)
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = 0
    # closeness[c] = max over chosen rotations of |<q_c, q_chosen>| = cos(angle / 2): the greedy
    # farthest-point step picks the candidate with the smallest value (largest minimum angle).
    closeness = np.abs(pool @ pool[0])
    for k in range(1, n):
        c = int(np.argmin(closeness))  # ties: first index
        chosen[k] = c
        np.maximum(closeness, np.abs(pool @ pool[c]), out=closeness)
    return pool[chosen].copy()


def well_spread_rotations(n: int) -> np.ndarray:
    """[n, 3, 3] float64 well-spread proper rotations, the identity first; deterministic.

    Greedy farthest-point selection on SO(3) (geodesic angle, via unit quaternions up to sign)
    from a fixed candidate pool of ``max(8192, 256 n)`` uniform random rotations drawn by a private
    ``numpy.random.default_rng(ROTATION_POOL_SEED)`` (the global RNG is not used), starting from
    the identity. Measured minimum pairwise geodesic angles: 24 -> 78.0 deg, 32 -> 63.1 deg,
    64 -> 54.8 deg, 128 -> 42.5 deg (cf. the original's 54.9 deg for 64 and 41.4 deg for 128 without identity,
    reference §11).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    q = _well_spread_quaternions(int(n))
    return Rotation.from_quat(q).as_matrix()


# --------------------------------------------------------------------------------------------
# Robust extents
# --------------------------------------------------------------------------------------------
def _points(x, name: str, min_points: int = 1) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {a.shape}")
    if a.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def robust_extent(points, percentiles: Sequence[float] = (2, 98)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Extents of a cloud along its PCA axes between robust percentiles.

    Args:
        points: [N, 3] (N >= 4).
        percentiles: (lo, hi) with 0 <= lo < hi <= 100.

    Returns:
        centre [3]: the middle of the [lo, hi] percentile box, in input coordinates;
        axes [3, 3]: PCA directions as ROWS (a proper rotation, largest variance first, each row's
            largest-magnitude component positive, the last row's sign set so that det = +1);
        extents [3]: ``percentile(p, hi) - percentile(p, lo)`` of the projections ``p`` on each axis.

    The PCA is computed on the points that survive a trim of the ``100 - hi`` percent farthest from
    the centre (centre refined twice, from the coordinate-wise median), so that a small fraction of
    far floaters neither tilts the axes nor inflates the extents; the box is then taken over all
    points. The result follows a rotation of the cloud (up to the median start, whose effect on the
    trimmed set is negligible), unlike a world-axis-aligned min/max box.
    """
    X = _points(points, "points", min_points=4)
    lo, hi = (float(p) for p in percentiles)
    if not (0.0 <= lo < hi <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles}")
    centre = np.median(X, axis=0)
    keep = np.ones(X.shape[0], dtype=bool)
    for _ in range(3):
        d = np.linalg.norm(X - centre, axis=1)
        keep = d <= np.percentile(d, hi)
        if np.count_nonzero(keep) < 4:
            keep = np.ones(X.shape[0], dtype=bool)
        centre = X[keep].mean(axis=0)
    Xc = X[keep] - centre
    _, V = np.linalg.eigh(Xc.T @ Xc / Xc.shape[0])
    axes = V[:, ::-1].T.copy()  # rows, descending variance
    for k in range(3):
        if axes[k, np.argmax(np.abs(axes[k]))] < 0:
            axes[k] = -axes[k]
    if np.linalg.det(axes) < 0:
        axes[2] = -axes[2]
    proj = X @ axes.T  # [N, 3]
    p_lo = np.percentile(proj, lo, axis=0)
    p_hi = np.percentile(proj, hi, axis=0)
    extents = p_hi - p_lo
    box_centre = axes.T @ ((p_lo + p_hi) / 2.0)
    return box_centre, axes, extents


# --------------------------------------------------------------------------------------------
# ICP
# --------------------------------------------------------------------------------------------
@dataclass
class IcpResult:
    """Result of :func:`icp`.

    matrix: [4, 4] map from source to target coordinates (includes any scale of ``init``);
    fitness: fraction of source points with a target point within the correspondence distance;
    rmse: root mean squared distance over those correspondences (nan when there are none);
    iterations: number of ICP updates applied.
    """

    matrix: np.ndarray
    fitness: float
    rmse: float
    iterations: int


def _nearest_within(tree: cKDTree, query: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dist [N], index [N], mask [N]) of the nearest tree point, mask = within ``distance``."""
    d, j = tree.query(query, k=1, distance_upper_bound=distance)
    mask = np.isfinite(d)
    return d, j, mask


def _fitness_rmse(d: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    n = int(np.count_nonzero(mask))
    fitness = n / d.shape[0] if d.shape[0] else 0.0
    rmse = float(np.sqrt(np.mean(d[mask] ** 2))) if n else float("nan")
    return float(fitness), rmse


def _check_distance(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return v


def icp(
    src,
    dst,
    init=None,
    max_correspondence_distance: float = 1.0,
    max_iterations: int = 50,
    tolerance: float = 1e-6,
    with_scale: bool = False,
    _tree: Optional[cKDTree] = None,
) -> IcpResult:
    """Trimmed point-to-point ICP of ``src`` onto ``dst``.

    Args:
        src: [N, 3] source points; dst: [M, 3] target points.
        init: [4, 4] (or anything :func:`utils.alignment.as_matrix` accepts) initial source-to-target
            map; identity if None. It may contain a scale, which is kept when ``with_scale`` is False.
        max_correspondence_distance: only nearest-neighbour pairs closer than this are used.
        max_iterations: maximum number of updates.
        tolerance: stop when both |delta fitness| and |delta rmse| / max_correspondence_distance
            between successive iterates fall below it.
        with_scale: each update is a similarity (else rigid), fitted by
            :func:`utils.alignment.umeyama` between the current moved sources and their matches.

    Returns:
        :class:`IcpResult` evaluated at the returned matrix. Fewer than 3 correspondences, or a
        degenerate configuration for umeyama, stops the iteration (never raises).
    """
    X = _points(src, "src")
    Y = _points(dst, "dst")
    maxd = _check_distance(max_correspondence_distance, "max_correspondence_distance")
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    if not (tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    tree = _tree if _tree is not None else cKDTree(Y)
    M = np.eye(4) if init is None else as_matrix(init)

    moved = apply_matrix(M, X)
    d, j, mask = _nearest_within(tree, moved, maxd)
    fitness, rmse = _fitness_rmse(d, mask)
    iterations = 0
    for _ in range(max_iterations):
        if np.count_nonzero(mask) < 3:
            break
        try:
            update = umeyama(moved[mask], Y[j[mask]], with_scale=with_scale)
        except ValueError:
            break
        M = compose(M, update)
        iterations += 1
        moved = apply_matrix(M, X)
        d, j, mask = _nearest_within(tree, moved, maxd)
        new_fitness, new_rmse = _fitness_rmse(d, mask)
        converged = (
            abs(new_fitness - fitness) < tolerance
            and math.isfinite(new_rmse)
            and math.isfinite(rmse)
            and abs(new_rmse - rmse) / maxd < tolerance
        )
        fitness, rmse = new_fitness, new_rmse
        if converged:
            break
    return IcpResult(matrix=M, fitness=fitness, rmse=rmse, iterations=iterations)


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
def bidirectional_score(src_transformed, dst, distance: float, _dst_tree: Optional[cKDTree] = None) -> dict:
    """Overlap of two clouds measured from both sides.

    Args:
        src_transformed: [N, 3] source points already mapped into the target frame.
        dst: [M, 3] target points.
        distance: a point is covered when the other cloud has a point within this distance.

    Returns:
        dict with float values:
        ``fitness_src``: fraction of source points covered by the target;
        ``fitness_dst``: fraction of target points covered by the source;
        ``rmse``: root mean squared nearest distance over the covered points of both directions
            (nan when none);
        ``score``: harmonic mean of the two fitnesses (0 when either is 0). A proxy shrunk inside
            an incomplete target has high ``fitness_src`` but leaves target points uncovered.
    """
    X = _points(src_transformed, "src_transformed")
    Y = _points(dst, "dst")
    dist = _check_distance(distance, "distance")
    tree_y = _dst_tree if _dst_tree is not None else cKDTree(Y)
    d_xy, _, m_xy = _nearest_within(tree_y, X, dist)
    d_yx, _, m_yx = _nearest_within(cKDTree(X), Y, dist)
    fs, _ = _fitness_rmse(d_xy, m_xy)
    fd, _ = _fitness_rmse(d_yx, m_yx)
    both = np.concatenate([d_xy[m_xy], d_yx[m_yx]])
    rmse = float(np.sqrt(np.mean(both**2))) if both.size else float("nan")
    score = 2.0 * fs * fd / (fs + fd) if fs > 0 and fd > 0 else 0.0
    return {"fitness_src": fs, "fitness_dst": fd, "rmse": rmse, "score": float(score)}


# --------------------------------------------------------------------------------------------
# Multi-start ICP
# --------------------------------------------------------------------------------------------
@dataclass
class MultiStartResult:
    """Result of :func:`multi_start_icp`.

    best: the chosen :class:`IcpResult` (its matrix maps the ORIGINAL, unscaled source to the target);
    best_index: index of the winning start rotation;
    scores: list of K :func:`bidirectional_score` dicts, one per start (after its ICP);
    results: list of K :class:`IcpResult`, one per start.
    """

    best: IcpResult
    best_index: int
    scores: list = field(default_factory=list)
    results: list = field(default_factory=list)


def start_matrix(src_centroid, dst_centroid, rotation, scale: float) -> np.ndarray:
    """[4, 4] ``x -> s R (x - c_P) + c_O``: scale and rotate about the proxy centroid c_P, then move
    it onto the target centroid c_O (the fixed form of the original's pre-translation, §8.3)."""
    R = np.asarray(rotation, dtype=np.float64)
    cP = np.asarray(src_centroid, dtype=np.float64)
    cO = np.asarray(dst_centroid, dtype=np.float64)
    s = float(scale)
    return as_matrix((R, cO - s * R @ cP, s))


def multi_start_icp(
    src,
    dst,
    rotations,
    scale: float = 1.0,
    max_correspondence_distance: float = 1.0,
    max_iterations: int = 50,
    tolerance: float = 1e-6,
    with_scale: bool = False,
    score_distance: Optional[float] = None,
) -> MultiStartResult:
    """ICP from several start rotations, ranked by :func:`bidirectional_score`.

    Args:
        src: [N, 3] proxy points (unscaled); dst: [M, 3] target points.
        rotations: [K, 3, 3] start rotations (e.g. :func:`well_spread_rotations`).
        scale: pre-scale applied to the proxy about its centroid (e.g. from :func:`robust_extent`).
        max_correspondence_distance, max_iterations, tolerance, with_scale: passed to :func:`icp`.
        score_distance: coverage distance of the score; if None,
            ``SCORE_DISTANCE_FACTOR * max_correspondence_distance``.

    For each start k: ``init_k = start_matrix(mean(src), mean(dst), R_k, scale)``, then ICP, then
    the score of the moved proxy against the target. The best start has the highest score; ties go
    to the lower rmse, then to the lower index. Deterministic.
    """
    X = _points(src, "src")
    Y = _points(dst, "dst")
    Rs = np.asarray(rotations, dtype=np.float64)
    if Rs.ndim != 3 or Rs.shape[1:] != (3, 3) or Rs.shape[0] < 1:
        raise ValueError(f"rotations must have shape [K >= 1, 3, 3], got {Rs.shape}")
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    maxd = _check_distance(max_correspondence_distance, "max_correspondence_distance")
    sd = SCORE_DISTANCE_FACTOR * maxd if score_distance is None else _check_distance(score_distance, "score_distance")
    tree = cKDTree(Y)
    cP, cO = X.mean(axis=0), Y.mean(axis=0)
    results, scores = [], []
    for R in Rs:
        res = icp(X, Y, start_matrix(cP, cO, R, s), maxd, max_iterations, tolerance, with_scale, _tree=tree)
        results.append(res)
        scores.append(bidirectional_score(apply_matrix(res.matrix, X), Y, sd, _dst_tree=tree))

    def key(k: int):
        r = scores[k]["rmse"]
        return (-scores[k]["score"], r if math.isfinite(r) else math.inf, k)

    best = min(range(len(results)), key=key)
    return MultiStartResult(best=results[best], best_index=best, scores=scores, results=results)
