"""Robust 3D-3D alignment estimators (pure numpy/scipy, float64).

Conventions follow :mod:`utils.geometry`: points are column vectors and a map is
``x' = A x + t``; batched points are rows ``[N, 3]`` so the code computes ``X @ A.T + t``.
A 4x4 matrix holds ``[[A, t], [0, 1]]``.

Estimators
----------
* :func:`umeyama`: weighted least-squares similarity ``dst ~ s R src + t`` (proper rotation).
* :func:`ransac_similarity`: 7-DoF similarity by RANSAC on minimal samples of 3 pairs, with an
  adaptive iteration count and a least-squares refit on the inliers.
* :func:`fit_anisotropic`: the 9-DoF "shape" model ``dst ~ R F^T diag(s) F src + t`` (R, F rotations,
  s per-axis scales in bounds), initialised by an affine RANSAC whose linear part is split by the
  polar decomposition, then refined by a robust :func:`scipy.optimize.least_squares`.

Unlike the original implementation (reference §8.4b), the anisotropic fit uses a robust loss and
outlier rejection, and it has no regulariser on the scales at all (the original pulled the
*logit* of the scale towards 1, i.e. s towards ~1.30); the scales are only box-bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

#: sqrt(lambda_2 / lambda_1) of the (weighted) source covariance below which the source points are
#: treated as collinear (or coincident) by :func:`umeyama`.
DEGENERACY_TOL = 1e-8
#: Minimal RANSAC samples whose normalised area (3 points) or volume (4 points) is below this are
#: rejected as (nearly) degenerate.
SAMPLE_DEGENERACY_TOL = 1e-3


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class SimilarityResult:
    """``dst ~ s R src + t``.

    R: [3, 3] rotation (det +1); t: [3]; s: scale > 0; inliers: [N] bool; rmse: root mean squared
    residual norm over the inliers (input units).
    """

    R: np.ndarray
    t: np.ndarray
    s: float
    inliers: np.ndarray
    rmse: float

    @property
    def linear(self) -> np.ndarray:
        """[3, 3] linear part ``s R``."""
        return self.s * self.R


@dataclass
class AnisotropicResult:
    """``dst ~ R F^T diag(scales) F src + t``.

    R: [3, 3] rotation; t: [3]; scales: [3] per-axis factors; frame: [3, 3] rotation F whose ROWS
    are the scaling axes (in source coordinates); inliers: [N] bool; rmse over the inliers.

    Only the linear map ``R F^T diag(s) F`` is identifiable: (scales, frame) are defined up to a
    simultaneous permutation of the scales / rows of F and sign flips of rows of F, and F is
    arbitrary within an eigenspace of repeated scales. Compare :attr:`linear`, not the factors.
    """

    R: np.ndarray
    t: np.ndarray
    scales: np.ndarray
    frame: np.ndarray
    inliers: np.ndarray
    rmse: float

    @property
    def linear(self) -> np.ndarray:
        """[3, 3] linear part ``R F^T diag(s) F``."""
        return self.R @ self.frame.T @ np.diag(self.scales) @ self.frame


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _points(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3], got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values")
    return a


def _pair(src, dst) -> tuple[np.ndarray, np.ndarray]:
    s, d = _points(src, "src"), _points(dst, "dst")
    if s.shape[0] != d.shape[0]:
        raise ValueError(f"src and dst must have the same number of points, got {s.shape[0]} and {d.shape[0]}")
    return s, d


def _residual_norms(src: np.ndarray, dst: np.ndarray, A: np.ndarray, t: np.ndarray) -> np.ndarray:
    """[N] ``||A src_i + t - dst_i||``."""
    return np.linalg.norm(src @ A.T + t - dst, axis=1)


def _rmse(r: np.ndarray) -> float:
    return float(np.sqrt(np.mean(r**2))) if r.size else float("nan")


def _adaptive_iterations(n_inliers: int, n_total: int, sample_size: int, confidence: float) -> float:
    """Number of samples needed to draw one all-inlier sample with probability ``confidence``."""
    w = n_inliers / n_total
    p_good = w**sample_size
    if p_good <= 0.0:
        return math.inf
    if p_good >= 1.0:
        return 0.0
    return math.log(1.0 - confidence) / math.log(1.0 - p_good)


def _check_ransac_args(inlier_threshold: float, max_iterations: int, confidence: float) -> None:
    if not (np.isfinite(inlier_threshold) and inlier_threshold > 0):
        raise ValueError(f"inlier_threshold must be a positive number, got {inlier_threshold}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _triangle_ok(p: np.ndarray) -> bool:
    """p: [3, 3] rows. Normalised area |(b-a) x (c-a)| / (longest edge)^2 above the tolerance."""
    e1, e2 = p[1] - p[0], p[2] - p[0]
    longest = max(np.dot(e1, e1), np.dot(e2, e2), np.dot(p[2] - p[1], p[2] - p[1]))
    return longest > 0 and np.linalg.norm(np.cross(e1, e2)) > SAMPLE_DEGENERACY_TOL * longest


def _tetra_ok(p: np.ndarray) -> bool:
    """p: [4, 3] rows. |det(edges)| / product of edge norms above the tolerance (not coplanar)."""
    E = p[1:] - p[0]
    norms = np.linalg.norm(E, axis=1)
    denom = float(np.prod(norms))
    return denom > 0 and abs(np.linalg.det(E)) > SAMPLE_DEGENERACY_TOL * denom


def _proper_rotation_from_svd(U: np.ndarray, Vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R = U D Vt, D diagonal) with D = diag(1, 1, det(U Vt)) so that det R = +1."""
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0
    return U @ np.diag(d) @ Vt, d


# --------------------------------------------------------------------------------------------
# Umeyama
# --------------------------------------------------------------------------------------------
def umeyama(src, dst, weights=None, with_scale: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least-squares similarity ``argmin sum_i w_i ||s R src_i + t - dst_i||^2``.

    Args:
        src, dst: [N, 3] corresponding points (N >= 3).
        weights: [N] non-negative weights (all ones if None); at least 3 must be positive.
        with_scale: estimate s; if False, s = 1 (rigid fit).

    Returns:
        (R [3, 3] proper rotation, t [3], s float), float64.

    Raises:
        ValueError: fewer than 3 (positively weighted) points, or a degenerate configuration:
        collinear/coincident source points, or a cross-covariance of rank < 2 (e.g. collinear dst),
        for which the rotation is not determined.
    """
    X, Y = _pair(src, dst)
    n = X.shape[0]
    if n < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {n}")
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape [{n}], got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
    if np.count_nonzero(w > 0) < 3:
        raise ValueError("umeyama needs at least 3 points with positive weight")
    W = w.sum()
    mu_x = w @ X / W
    mu_y = w @ Y / W
    Xc, Yc = X - mu_x, Y - mu_y
    cov_x = (Xc * w[:, None]).T @ Xc / W
    ev = np.linalg.eigvalsh(cov_x)  # ascending
    if ev[2] <= 0 or math.sqrt(max(ev[1], 0.0) / ev[2]) < DEGENERACY_TOL:
        raise ValueError("degenerate input for umeyama: source points are collinear or coincident")
    cov_xy = (Yc * w[:, None]).T @ Xc / W  # sum_i w_i y_i x_i^T / W
    U, S, Vt = np.linalg.svd(cov_xy)
    if S[0] <= 0 or S[1] < DEGENERACY_TOL * S[0]:
        raise ValueError("degenerate input for umeyama: cross-covariance has rank < 2 (collinear target?)")
    R, d = _proper_rotation_from_svd(U, Vt)
    var_x = float(np.trace(cov_x))
    s = float(S @ d / var_x) if with_scale else 1.0
    if with_scale and s <= 0:
        raise ValueError("degenerate input for umeyama: non-positive scale")
    t = mu_y - s * R @ mu_x
    return R, t, s


# --------------------------------------------------------------------------------------------
# RANSAC similarity
# --------------------------------------------------------------------------------------------
def ransac_similarity(
    src,
    dst,
    inlier_threshold: float,
    max_iterations: int = 2000,
    confidence: float = 0.999,
    min_inliers: int = 3,
    rng: Optional[np.random.Generator] = None,
    refine_iterations: int = 3,
) -> SimilarityResult:
    """Robust similarity ``dst ~ s R src + t`` by RANSAC.

    Each iteration draws 3 distinct pairs (samples whose source or target triangle is nearly
    degenerate are skipped but counted), fits :func:`umeyama`, and counts the inliers
    ``||s R src + t - dst|| < inlier_threshold``. The best model has the most inliers; ties go to
    the lower sum of squared inlier residuals. The iteration count adapts to the best inlier ratio
    w: ``log(1 - confidence) / log(1 - w^3)``, capped by ``max_iterations``. The best model is then
    refitted by least squares on its inliers, re-thresholded and refitted again
    (``refine_iterations`` times at most, stopping when the inlier set is stable).

    Args:
        src, dst: [N, 3] correspondences (N >= 3).
        inlier_threshold: residual norm (input units) below which a pair is an inlier.
        rng: random generator (``np.random.default_rng(0)`` if None, for reproducibility).

    Returns:
        :class:`SimilarityResult` with inliers [N] bool and rmse over the inliers.

    Raises:
        ValueError: fewer than 3 pairs, collinear source points, or no model with at least
        ``max(min_inliers, 3)`` inliers.
    """
    X, Y = _pair(src, dst)
    n = X.shape[0]
    if n < 3:
        raise ValueError(f"ransac_similarity needs at least 3 point pairs, got {n}")
    _check_ransac_args(inlier_threshold, max_iterations, confidence)
    rng = np.random.default_rng(0) if rng is None else rng
    need = max(int(min_inliers), 3)
    # Whole-set degeneracy (collinear source): umeyama raises a clear ValueError.
    umeyama(X, Y)

    best = None  # (count, sse, R, t, s, inlier mask)
    needed = math.inf
    it = 0
    while it < max_iterations and it < needed:
        it += 1
        idx = rng.choice(n, size=3, replace=False)
        if not (_triangle_ok(X[idx]) and _triangle_ok(Y[idx])):
            continue
        try:
            R, t, s = umeyama(X[idx], Y[idx])
        except (ValueError, np.linalg.LinAlgError):
            continue
        r = _residual_norms(X, Y, s * R, t)
        mask = r < inlier_threshold
        count = int(mask.sum())
        sse = float(np.sum(r[mask] ** 2))
        if best is None or count > best[0] or (count == best[0] and sse < best[1]):
            best = (count, sse, R, t, s, mask)
            needed = _adaptive_iterations(count, n, 3, confidence)
    if best is None or best[0] < need:
        got = 0 if best is None else best[0]
        raise ValueError(
            f"RANSAC found no similarity with >= {need} inliers (best: {got} of {n} "
            f"at threshold {inlier_threshold:g} after {it} samples)"
        )
    _, _, R, t, s, mask = best
    for _ in range(refine_iterations):
        try:
            R2, t2, s2 = umeyama(X[mask], Y[mask])
        except ValueError:
            break
        r = _residual_norms(X, Y, s2 * R2, t2)
        mask2 = r < inlier_threshold
        if mask2.sum() < need:
            break
        R, t, s = R2, t2, s2
        if np.array_equal(mask2, mask):
            break
        mask = mask2
    r = _residual_norms(X, Y, s * R, t)
    return SimilarityResult(R=R, t=t, s=float(s), inliers=mask, rmse=_rmse(r[mask]))


# --------------------------------------------------------------------------------------------
# Anisotropic (9-DoF) fit
# --------------------------------------------------------------------------------------------
def _affine_lstsq(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A [3, 3], t [3]) = argmin ||A X + t - Y||^2 (rows), X not coplanar."""
    H = np.hstack([X, np.ones((X.shape[0], 1))])
    sol, *_ = np.linalg.lstsq(H, Y, rcond=None)  # [4, 3]
    return sol[:3].T, sol[3]


def _ransac_affine(
    X: np.ndarray, Y: np.ndarray, thr: float, max_iterations: int, confidence: float, need: int,
    rng: np.random.Generator, refine_iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affine RANSAC on minimal samples of 4 non-coplanar pairs; returns (A, t, inliers)."""
    n = X.shape[0]
    best = None
    needed = math.inf
    it = 0
    while it < max_iterations and it < needed:
        it += 1
        idx = rng.choice(n, size=4, replace=False)
        if not _tetra_ok(X[idx]):
            continue
        A, t = _affine_lstsq(X[idx], Y[idx])
        r = _residual_norms(X, Y, A, t)
        mask = r < thr
        count = int(mask.sum())
        sse = float(np.sum(r[mask] ** 2))
        if best is None or count > best[0] or (count == best[0] and sse < best[1]):
            best = (count, sse, A, t, mask)
            needed = _adaptive_iterations(count, n, 4, confidence)
    if best is None or best[0] < need:
        got = 0 if best is None else best[0]
        raise ValueError(
            f"anisotropic fit: RANSAC found no affine model with >= {need} inliers (best: {got} of {n} "
            f"at threshold {thr:g} after {it} samples)"
        )
    _, _, A, t, mask = best
    for _ in range(refine_iterations):
        A2, t2 = _affine_lstsq(X[mask], Y[mask])
        mask2 = _residual_norms(X, Y, A2, t2) < thr
        if mask2.sum() < need:
            break
        A, t = A2, t2
        if np.array_equal(mask2, mask):
            break
        mask = mask2
    return A, t, mask


def decompose_linear(A, scale_bounds: Optional[tuple[float, float]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 3x3 linear map into ``A ~ R F^T diag(s) F`` (closed form).

    The polar decomposition ``A = R P`` is taken with R a proper rotation (SVD ``A = W S V^T``,
    ``R = W D V^T`` with ``D = diag(1, 1, det(W V^T))``), so ``P = R^T A = V D S V^T`` is symmetric; its
    eigendecomposition ``P = F^T diag(s) F`` gives the frame F (rows = eigenvectors, det +1) and the
    scales s. For ``det A < 0`` one scale is negative: no (R, F, s > 0) reproduces A exactly.

    Returns (R [3, 3], F [3, 3], s [3]); s clipped to ``scale_bounds`` when given.
    """
    A = np.asarray(A, dtype=np.float64)
    W, S, Vt = np.linalg.svd(A)
    R, _ = _proper_rotation_from_svd(W, Vt)
    P = R.T @ A
    P = 0.5 * (P + P.T)
    s, V = np.linalg.eigh(P)
    F = V.T
    if np.linalg.det(F) < 0:
        F[2] *= -1.0
    if scale_bounds is not None:
        s = np.clip(s, scale_bounds[0], scale_bounds[1])
    return R, F, s


def _robust_scale(Y: np.ndarray) -> float:
    """Median distance of the points to their coordinate-wise median."""
    return float(np.median(np.linalg.norm(Y - np.median(Y, axis=0), axis=1)))


def fit_anisotropic(
    src,
    dst,
    rng: Optional[np.random.Generator] = None,
    frame_init=None,
    scale_bounds: tuple[float, float] = (0.75, 1.5),
    loss: str = "huber",
    huber_delta: Optional[float] = None,
    inlier_threshold: Optional[float] = None,
    max_iterations: int = 2000,
    confidence: float = 0.999,
    min_inliers: int = 6,
    refine_iterations: int = 3,
) -> AnisotropicResult:
    """Robust fit of ``dst ~ R F^T diag(s) F src + t``.

    Parametrisation: R (rotation) and F (rotation; its ROWS are the scaling axes in source
    coordinates) are optimised as rotation-vector increments ``R = R0 Exp(a)``, ``F = Exp(b) F0``
    about their initial values, the scales as ``log s`` box-bounded to ``log(scale_bounds)``, and t
    about the source centroid c (``dst ~ L (src - c) + t_c``, ``t = t_c - L c``) for conditioning.
    Only ``L = R F^T diag(s) F`` is identifiable (see :class:`AnisotropicResult`).

    Steps:
      1. Affine RANSAC (minimal samples of 4 non-coplanar pairs, adaptive iteration count,
         least-squares refit on the inliers) gives ``A, t`` and an inlier set.
      2. Closed-form start: ``A = R P`` (polar), ``P = F^T diag(s) F`` (eigen), s clipped to the bounds
         (:func:`decompose_linear`). If ``frame_init`` is given, a second start uses it as F with
         ``s = clip(diag(F P F^T))``; the start with the lower cost wins.
      3. :func:`scipy.optimize.least_squares` (``loss`` = 'huber' / 'soft_l1' / 'linear' / ...,
         ``f_scale = huber_delta``) on the per-coordinate residuals of the current inliers, then
         re-threshold all pairs and refit (``refine_iterations`` times at most).

    Args:
        src, dst: [N, 3] correspondences (N >= 4; at least 4 non-coplanar source points).
        rng: random generator for RANSAC (``np.random.default_rng(0)`` if None).
        frame_init: optional [3, 3] rotation, initial F.
        scale_bounds: (lo, hi), 0 < lo < hi; the scales stay within them.
        huber_delta: robust loss scale on each residual coordinate (default inlier_threshold / 2).
        inlier_threshold: residual norm of an inlier (default 2% of the robust size of dst: the
            median distance of dst to its coordinate-wise median).
        min_inliers: a model needs at least ``max(min_inliers, 5)`` inliers (4 pairs always fit an
            affine map exactly, so 4 would accept anything).

    Returns:
        :class:`AnisotropicResult` (float64).

    Raises:
        ValueError: too few pairs, coplanar source points, bad arguments, or no model with enough
        inliers.
    """
    X, Y = _pair(src, dst)
    n = X.shape[0]
    if n < 4:
        raise ValueError(f"fit_anisotropic needs at least 4 point pairs, got {n}")
    lo, hi = float(scale_bounds[0]), float(scale_bounds[1])
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"scale_bounds must satisfy 0 < lo < hi < inf, got {scale_bounds}")
    if inlier_threshold is None:
        inlier_threshold = 0.02 * _robust_scale(Y)
        if inlier_threshold <= 0:
            raise ValueError("degenerate input for fit_anisotropic: target points are coincident")
    _check_ransac_args(inlier_threshold, max_iterations, confidence)
    delta = 0.5 * inlier_threshold if huber_delta is None else float(huber_delta)
    if not (np.isfinite(delta) and delta > 0):
        raise ValueError(f"huber_delta must be positive, got {huber_delta}")
    rng = np.random.default_rng(0) if rng is None else rng
    need = max(int(min_inliers), 5)
    cov = np.cov((X - X.mean(0)).T)
    ev = np.linalg.eigvalsh(cov)
    if ev[2] <= 0 or math.sqrt(max(ev[0], 0.0) / ev[2]) < DEGENERACY_TOL:
        raise ValueError("degenerate input for fit_anisotropic: source points are coplanar, collinear or coincident")

    A0, t0, mask = _ransac_affine(X, Y, inlier_threshold, max_iterations, confidence, need, rng, refine_iterations)
    R0, F0, s0 = decompose_linear(A0, (lo, hi))
    starts = [(R0, F0, s0)]
    if frame_init is not None:
        Fi = np.asarray(frame_init, dtype=np.float64)
        if Fi.shape != (3, 3) or not np.allclose(Fi @ Fi.T, np.eye(3), atol=1e-6) or np.linalg.det(Fi) <= 0:
            raise ValueError("frame_init must be a [3, 3] rotation matrix")
        P = R0.T @ A0
        starts.append((R0, Fi, np.clip(np.diag(Fi @ (0.5 * (P + P.T)) @ Fi.T), lo, hi)))

    log_lo, log_hi = math.log(lo), math.log(hi)
    margin = 1e-9 * (log_hi - log_lo)

    def unpack(p, Rb, Fb):
        R = Rb @ Rotation.from_rotvec(p[0:3]).as_matrix()
        F = Rotation.from_rotvec(p[3:6]).as_matrix() @ Fb
        s = np.exp(p[6:9])
        return R, F, s, p[9:12]

    def solve(Rb, Fb, sb, tc0, m):
        Xc = X[m] - c
        Ym = Y[m]

        def fun(p):
            R, F, s, tc = unpack(p, Rb, Fb)
            L = R @ F.T @ np.diag(s) @ F
            return (Xc @ L.T + tc - Ym).ravel()

        p0 = np.concatenate([np.zeros(6), np.clip(np.log(sb), log_lo + margin, log_hi - margin), tc0])
        lb = np.full(12, -np.inf)
        ub = np.full(12, np.inf)
        lb[6:9], ub[6:9] = log_lo, log_hi
        res = least_squares(fun, p0, bounds=(lb, ub), loss=loss, f_scale=delta, method="trf",
                            x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        R, F, s, tc = unpack(res.x, Rb, Fb)
        return R, F, s, tc, float(res.cost)

    c = X[mask].mean(0)
    best = None
    for Rb, Fb, sb in starts:
        L0 = Rb @ Fb.T @ np.diag(sb) @ Fb
        tc0 = (Y[mask] - (X[mask] - c) @ L0.T).mean(0)
        sol = solve(Rb, Fb, sb, tc0, mask)
        if best is None or sol[4] < best[4]:
            best = sol
    R, F, s, tc, _ = best

    def lin_t(R, F, s, tc):
        L = R @ F.T @ np.diag(s) @ F
        return L, tc - L @ c

    for _ in range(refine_iterations):
        L, t = lin_t(R, F, s, tc)
        mask2 = _residual_norms(X, Y, L, t) < inlier_threshold
        if mask2.sum() < need or np.array_equal(mask2, mask):
            break
        mask = mask2
        R, F, s, tc, _ = solve(R, F, s, tc, mask)

    L, t = lin_t(R, F, s, tc)
    r = _residual_norms(X, Y, L, t)
    final_mask = r < inlier_threshold
    if final_mask.sum() < need:
        final_mask = mask
    return AnisotropicResult(R=R, t=t, scales=s, frame=F, inliers=final_mask, rmse=_rmse(r[final_mask]))


# --------------------------------------------------------------------------------------------
# 4x4 matrices
# --------------------------------------------------------------------------------------------
def as_matrix(transform) -> np.ndarray:
    """[4, 4] float64 matrix ``[[A, t], [0, 1]]`` of a fitted transform.

    Accepts a :class:`SimilarityResult`, an :class:`AnisotropicResult`, a ``(R, t, s)`` tuple as
    returned by :func:`umeyama`, an ``(A, t)`` tuple, or a [4, 4] array (validated, copied).
    """
    if isinstance(transform, (SimilarityResult, AnisotropicResult)):
        A, t = transform.linear, transform.t
    elif isinstance(transform, tuple) and len(transform) == 3:
        R, t, s = transform
        A = float(s) * np.asarray(R, dtype=np.float64)
    elif isinstance(transform, tuple) and len(transform) == 2:
        A, t = transform
    else:
        M = np.asarray(transform, dtype=np.float64)
        if M.shape != (4, 4) or not np.allclose(M[3], [0, 0, 0, 1]):
            raise ValueError(f"expected a [4, 4] affine matrix with last row (0, 0, 0, 1), got shape {M.shape}")
        return M.copy()
    A = np.asarray(A, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if A.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"expected A [3, 3] and t [3], got {A.shape} and {t.shape}")
    M = np.eye(4)
    M[:3, :3] = A
    M[:3, 3] = t
    return M


def compose(*transforms: Sequence) -> np.ndarray:
    """[4, 4] matrix applying the transforms in the order given (the first argument first).

    ``compose(T1, T2) = as_matrix(T2) @ as_matrix(T1)``, i.e. ``x -> T2(T1(x))``. Each argument is
    anything :func:`as_matrix` accepts. With no argument, the identity.
    """
    M = np.eye(4)
    for T in transforms:
        M = as_matrix(T) @ M
    return M


def apply_matrix(M, points) -> np.ndarray:
    """[N, 3] points mapped by a [4, 4] affine matrix (``X @ A.T + t``)."""
    M = as_matrix(M)
    X = _points(points, "points")
    return X @ M[:3, :3].T + M[:3, 3]


# --------------------------------------------------------------------------------------------
# Multi-view reprojection refinement
# --------------------------------------------------------------------------------------------
@dataclass
class ReprojectionResult:
    """Refined correction ``x' = A x + t`` (4x4 ``matrix``), its inliers and their rms image error."""

    matrix: np.ndarray
    inliers: np.ndarray
    rmse_px: float
    residuals_px: np.ndarray


def project_points(points: np.ndarray, intrinsics: np.ndarray, R_cam: np.ndarray, t_cam: np.ndarray,
                   min_depth: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-point pinhole projection: point i through its own camera i.

    Args:
        points [N, 3] world; intrinsics [N, 4] (fx, fy, cx, cy); R_cam [N, 3, 3], t_cam [N, 3] world-to-camera.
    Returns:
        (uv [N, 2] pixels, pixel centres at +0.5; z [N] camera depth, clamped below by ``min_depth``).
    """
    pc = np.einsum("nij,nj->ni", R_cam, points) + t_cam
    z = np.maximum(pc[:, 2], min_depth)
    u = intrinsics[:, 0] * pc[:, 0] / z + intrinsics[:, 2]
    v = intrinsics[:, 1] * pc[:, 1] / z + intrinsics[:, 3]
    return np.stack([u, v], axis=1), pc[:, 2]


def refine_reprojection(
    points,
    pixels,
    intrinsics,
    R_cam,
    t_cam,
    init,
    anisotropic: bool = False,
    pixel_weights=None,
    threshold: float = 3.0,
    initial_inliers=None,
    scale_bounds: tuple[float, float] = (0.75, 1.5),
    loss: str = "soft_l1",
    refine_iterations: int = 3,
    min_inliers: int = 6,
) -> ReprojectionResult:
    """Refine a 3D correction T so that T(points) reprojects onto the matched pixels in each view.

    Each pair i is a point X_i (world) and the pixel x_i where it is seen in camera i (its own
    intrinsics and pose). T is a similarity ``s R`` (7 DoF) or, with ``anisotropic``,
    ``R F^T diag(s) F`` (12 parameters, scales box-bounded by ``scale_bounds``), with translation;
    it is parametrised about the points' centroid c, as increments of the decomposition of ``init``.
    The residuals are image errors ``w_i (pi_i(T X_i) - x_i)`` (``pixel_weights`` w_i convert
    pixels of each view to a common unit, e.g. pixels at the matching resolution), minimised with a
    robust ``loss`` (scale ``threshold / 2``); then all pairs are re-thresholded at ``threshold`` and
    the fit repeated on the inliers (``refine_iterations`` times at most).

    This needs no depth on the image side: the depth of the matched pixels (from a possibly
    degraded reconstruction) only served the 3D-3D RANSAC that produced ``init``.

    Args:
        points [N, 3]; pixels [N, 2]; intrinsics [N, 4]; R_cam [N, 3, 3]; t_cam [N, 3];
        init [4, 4] start; initial_inliers [N] bool (default: all pairs).
    """
    X = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    x = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(intrinsics, dtype=np.float64).reshape(-1, 4)
    Rc = np.asarray(R_cam, dtype=np.float64).reshape(-1, 3, 3)
    tcam = np.asarray(t_cam, dtype=np.float64).reshape(-1, 3)
    n = len(X)
    if not (len(x) == len(K) == len(Rc) == len(tcam) == n):
        raise ValueError("points, pixels, intrinsics, R_cam and t_cam must have the same length")
    w = np.ones(n) if pixel_weights is None else np.asarray(pixel_weights, dtype=np.float64).reshape(-1)
    need = max(int(min_inliers), 4)
    if n < need:
        raise ValueError(f"refine_reprojection needs at least {need} pairs, got {n}")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    M0 = np.asarray(init, dtype=np.float64)
    c = X.mean(axis=0)

    def residuals(L, t, m):
        """[m, 2] weighted image errors of the pairs selected by m under x -> L x + t."""
        uv, _ = project_points(X[m] @ L.T + t, K[m], Rc[m], tcam[m])
        return (uv - x[m]) * w[m, None]

    mask = np.ones(n, dtype=bool) if initial_inliers is None else np.asarray(initial_inliers, dtype=bool).copy()
    if mask.sum() < need:
        mask = np.ones(n, dtype=bool)
    if anisotropic:
        # the constrained model R F^T diag(s) F cannot turn its frame while the scales are equal (a
        # gauge freedom), so a free linear map is fitted first and decomposed into the start
        lo, hi = float(scale_bounds[0]), float(scale_bounds[1])
        L_free = M0[:3, :3].copy()
        tc_free = L_free @ c + M0[:3, 3]

        def unpack_free(p):
            L = p[:9].reshape(3, 3)
            return L, p[9:12] - L @ c

        pf = least_squares(lambda p: residuals(*unpack_free(p), mask).ravel(), np.concatenate([L_free.ravel(), tc_free]), loss=loss,
                           f_scale=0.5 * threshold, method="trf", x_scale="jac", max_nfev=500).x
        L_free, t_free = unpack_free(pf)
        if np.linalg.det(L_free) > 0:
            M0 = as_matrix((L_free, t_free))
        R0, F0, s0 = decompose_linear(M0[:3, :3])
        s0 = np.clip(s0, lo * (1 + 1e-9), hi * (1 - 1e-9))
    else:
        s_uni = float(np.cbrt(abs(np.linalg.det(M0[:3, :3]))))
        R0, F0, s0 = polar_rotation_np(M0[:3, :3]), np.eye(3), np.full(3, s_uni)
    L0 = R0 @ F0.T @ np.diag(s0) @ F0
    tc0 = L0 @ c + M0[:3, 3] + (M0[:3, :3] - L0) @ c  # T0(c)

    def unpack(p):
        R = R0 @ Rotation.from_rotvec(p[0:3]).as_matrix()
        if anisotropic:
            F = Rotation.from_rotvec(p[3:6]).as_matrix() @ F0
            s = np.exp(p[6:9])
            tc = p[9:12]
        else:
            F = np.eye(3)
            s = np.full(3, math.exp(p[3]))
            tc = p[4:7]
        L = R @ F.T @ np.diag(s) @ F
        return L, tc - L @ c

    if anisotropic:
        p0 = np.concatenate([np.zeros(6), np.log(s0), tc0])
        lb, ub = np.full(12, -np.inf), np.full(12, np.inf)
        lb[6:9], ub[6:9] = math.log(lo), math.log(hi)
        bounds = (lb, ub)
    else:
        p0 = np.concatenate([np.zeros(3), [math.log(s0[0])], tc0])
        bounds = (-np.inf, np.inf)

    def solve(p_start, m):
        res = least_squares(lambda p: residuals(*unpack(p), m).ravel(), p_start, bounds=bounds, loss=loss,
                            f_scale=0.5 * threshold, method="trf", x_scale="jac", max_nfev=500)
        return res.x

    p = solve(p0, mask)
    for _ in range(refine_iterations):
        L, t = unpack(p)
        err = np.linalg.norm(residuals(L, t, np.ones(n, dtype=bool)), axis=1)
        m2 = err < threshold
        if m2.sum() < need or np.array_equal(m2, mask):
            break
        mask = m2
        p = solve(p, mask)
    L, t = unpack(p)
    err = np.linalg.norm(residuals(L, t, np.ones(n, dtype=bool)), axis=1)
    inl = err < threshold
    if inl.sum() < need:
        raise ValueError(f"reprojection refinement kept {int(inl.sum())} inliers (< {need}) at {threshold} px")
    return ReprojectionResult(as_matrix((L, t)), inl, _rmse(err[inl]), err)


def polar_rotation_np(A: np.ndarray) -> np.ndarray:
    """The proper rotation nearest to a 3x3 matrix (polar decomposition via SVD)."""
    U, _, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64))
    R, _ = _proper_rotation_from_svd(U, Vt)
    return R
