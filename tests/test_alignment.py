"""Alignment estimators (utils/alignment.py), tested by synthetic round trips with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.alignment import (
    AnisotropicResult,
    SimilarityResult,
    apply_matrix,
    as_matrix,
    compose,
    decompose_linear,
    fit_anisotropic,
    ransac_similarity,
    umeyama,
)
from utils.geometry import anisotropic_scale_transform, random_rotation, rotation_angle_deg, similarity_matrix


def _rot(seed: int) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return random_rotation(g, dtype=torch.float64).numpy()


def _angle_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    return float(rotation_angle_deg(torch.from_numpy(R1), torch.from_numpy(R2)))


def _size(X: np.ndarray) -> float:
    """Bounding-box diagonal."""
    return float(np.linalg.norm(X.max(0) - X.min(0)))


def _corrupt(rng: np.random.Generator, Y: np.ndarray, frac: float) -> np.ndarray:
    """Boolean mask of the pairs replaced by gross outliers (uniform in an inflated box of Y)."""
    n = Y.shape[0]
    out = np.zeros(n, bool)
    out[rng.choice(n, int(round(frac * n)), replace=False)] = True
    lo, hi = Y.min(0), Y.max(0)
    pad = 0.5 * (hi - lo)
    Y[out] = rng.uniform(lo - pad, hi + pad, size=(out.sum(), 3))
    return out


# --------------------------------------------------------------------------------------------
# umeyama
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_umeyama_exact_noise_free(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20, 3)) * [1.0, 2.0, 0.5] + rng.normal(size=3)
    R, t, s = _rot(seed), rng.normal(size=3) * 3, float(rng.uniform(0.3, 3.0))
    Y = s * X @ R.T + t
    R2, t2, s2 = umeyama(X, Y)
    assert np.linalg.det(R2) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-10)
    assert s2 == pytest.approx(s, rel=1e-12)
    # Rigid variant on rigid data.
    R3, t3, s3 = umeyama(X, X @ R.T + t, with_scale=False)
    assert s3 == 1.0
    np.testing.assert_allclose(R3, R, atol=1e-10)
    np.testing.assert_allclose(t3, t, atol=1e-10)
    # 4x4 helpers agree with the similarity of utils.geometry and with applying the map.
    M = as_matrix((R2, t2, s2))
    np.testing.assert_allclose(M, similarity_matrix(R, t, s).numpy(), atol=1e-9)
    np.testing.assert_allclose(apply_matrix(M, X), Y, atol=1e-9)


def test_umeyama_minimal_three_points_and_reflection_fix():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(3, 3))
    R, t = _rot(7), np.array([0.1, -2.0, 0.5])
    R2, t2, s2 = umeyama(X, 1.7 * X @ R.T + t)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    assert s2 == pytest.approx(1.7, rel=1e-10)
    # Mirrored data: the best *proper* rotation is returned, never a reflection.
    Xm = rng.normal(size=(30, 3))
    Ym = Xm * [1.0, 1.0, -1.0]
    Rr, tr, sr = umeyama(Xm, Ym)
    assert np.linalg.det(Rr) == pytest.approx(1.0, abs=1e-12)
    # For the returned rotation, s and t are the least-squares optimum.
    Xc, Yc = Xm - Xm.mean(0), Ym - Ym.mean(0)
    assert sr == pytest.approx(np.sum((Xc @ Rr.T) * Yc) / np.sum(Xc**2), rel=1e-10)
    np.testing.assert_allclose(tr, Ym.mean(0) - sr * Rr @ Xm.mean(0), atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_umeyama_weights(seed):
    rng = np.random.default_rng(100 + seed)
    X = rng.normal(size=(30, 3))
    R, t, s = _rot(100 + seed), rng.normal(size=3), 0.8
    Y = s * X @ R.T + t
    bad = np.zeros(30, bool)
    bad[:8] = True
    Y[bad] += rng.normal(size=(8, 3)) * 5.0
    # Zero weight on the corrupted pairs: exact recovery, while the unweighted fit is off.
    w = (~bad).astype(float)
    R2, t2, s2 = umeyama(X, Y, w)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-10)
    assert s2 == pytest.approx(s, rel=1e-10)
    Ru, _, _ = umeyama(X, Y)
    assert _angle_deg(Ru, R) > 1.0
    # Integer weights equal duplicated points.
    k = rng.integers(1, 4, size=30)
    Rw, tw, sw = umeyama(X, Y, k.astype(float))
    Rd, td, sd = umeyama(np.repeat(X, k, 0), np.repeat(Y, k, 0))
    np.testing.assert_allclose(Rw, Rd, atol=1e-10)
    np.testing.assert_allclose(tw, td, atol=1e-10)
    assert sw == pytest.approx(sd, rel=1e-10)


def test_umeyama_degenerate_inputs():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)))
    line = np.outer(rng.normal(size=10), [1.0, 2.0, -0.5]) + [1.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="collinear"):
        umeyama(line, rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="collinear"):
        umeyama(np.ones((5, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="rank"):
        umeyama(rng.normal(size=(10, 3)), line)
    with pytest.raises(ValueError, match="positive weight"):
        umeyama(rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="shape"):
        umeyama(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)))
    with pytest.raises(ValueError, match="same number"):
        umeyama(rng.normal(size=(5, 3)), rng.normal(size=(4, 3)))


# --------------------------------------------------------------------------------------------
# RANSAC similarity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_ransac_similarity_recovers_similarity_with_outliers(seed):
    rng = np.random.default_rng(1000 + seed)
    n = 200
    X = rng.uniform(-1, 1, size=(n, 3)) * rng.uniform(0.5, 2.0, size=3) + rng.normal(size=3)
    R, s, t = _rot(1000 + seed), float(rng.uniform(0.3, 3.0)), rng.normal(size=3) * 2
    Y = s * X @ R.T + t
    size = _size(Y)
    Y += rng.normal(size=Y.shape) * 1e-3 * size
    outliers = _corrupt(rng, Y, 0.3)
    res = ransac_similarity(X, Y, inlier_threshold=0.01 * size, rng=np.random.default_rng(seed))
    assert isinstance(res, SimilarityResult)
    assert _angle_deg(res.R, R) < 0.5
    assert abs(res.s / s - 1) < 5e-3
    assert np.linalg.norm(res.t - t) < 5e-3 * size
    truth = ~outliers
    # The found inlier set is (almost) the true one.
    assert (res.inliers & truth).sum() >= 0.97 * truth.sum()
    assert (res.inliers & outliers).sum() <= 0.02 * n
    assert res.rmse < 3e-3 * size
    # The result maps the inliers (4x4 path).
    np.testing.assert_allclose(apply_matrix(as_matrix(res), X[truth]), s * X[truth] @ R.T + t, atol=5e-3 * size)


def test_ransac_similarity_is_deterministic_and_adaptive():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(100, 3))
    R = _rot(5)
    Y = 2.0 * X @ R.T + 1.0
    a = ransac_similarity(X, Y, 1e-3, rng=np.random.default_rng(1))
    b = ransac_similarity(X, Y, 1e-3, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.R, b.R)
    assert a.inliers.all() and a.rmse < 1e-9
    np.testing.assert_allclose(a.R, R, atol=1e-9)


def test_ransac_similarity_degenerate_inputs():
    rng = np.random.default_rng(11)
    with pytest.raises(ValueError, match="at least 3"):
        ransac_similarity(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), 0.1, rng=rng)
    line = np.outer(rng.normal(size=50), [0.3, 1.0, 2.0])
    with pytest.raises(ValueError, match="collinear"):
        ransac_similarity(line, line * 2.0, 0.1, rng=rng)
    # All outliers: unrelated random clouds, no similarity explains 3 pairs within the threshold.
    with pytest.raises(ValueError, match="no similarity"):
        ransac_similarity(rng.normal(size=(100, 3)), rng.normal(size=(100, 3)), 1e-4, rng=rng, max_iterations=300)
    # A model exists but with too few inliers for min_inliers.
    X = rng.normal(size=(40, 3))
    Y = rng.normal(size=(40, 3))
    Y[:5] = X[:5]
    with pytest.raises(ValueError, match=">= 10 inliers"):
        ransac_similarity(X, Y, 1e-6, min_inliers=10, rng=rng, max_iterations=3000)
    with pytest.raises(ValueError, match="inlier_threshold"):
        ransac_similarity(X, X, 0.0, rng=rng)


# --------------------------------------------------------------------------------------------
# Anisotropic fit
# --------------------------------------------------------------------------------------------
def _anisotropic_case(seed: int, n: int = 300, outlier_frac: float = 0.2):
    rng = np.random.default_rng(2000 + seed)
    X = rng.uniform(-1, 1, size=(n, 3)) * rng.uniform(0.6, 1.5, size=3) + rng.normal(size=3) * 0.5
    F, R = _rot(3000 + seed), _rot(4000 + seed)
    scales = rng.uniform(0.8, 1.2, size=3)
    S, _ = anisotropic_scale_transform(scales, F)
    L = R @ S.numpy()
    t = rng.normal(size=3)
    Y = X @ L.T + t
    size = _size(Y)
    Y += rng.normal(size=Y.shape) * 1e-3 * size
    outliers = _corrupt(rng, Y, outlier_frac)
    return X, Y, L, t, size, outliers


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("loss", ["huber", "soft_l1"])
def test_fit_anisotropic_recovers_linear_map(seed, loss):
    X, Y, L, t, size, outliers = _anisotropic_case(seed)
    res = fit_anisotropic(X, Y, rng=np.random.default_rng(seed), loss=loss, inlier_threshold=0.01 * size)
    assert isinstance(res, AnisotropicResult)
    assert np.linalg.det(res.R) == pytest.approx(1.0, abs=1e-9)
    assert np.linalg.det(res.frame) == pytest.approx(1.0, abs=1e-9)
    assert ((res.scales >= 0.75) & (res.scales <= 1.5)).all()
    Lh = res.linear
    assert np.linalg.norm(Lh - L) / np.linalg.norm(L) < 1e-2
    sv_true = np.linalg.svd(L, compute_uv=False)
    sv_fit = np.linalg.svd(Lh, compute_uv=False)
    np.testing.assert_allclose(sv_fit, sv_true, rtol=1e-2)
    # The scales themselves, matched up to the permutation ambiguity.
    np.testing.assert_allclose(np.sort(res.scales), sv_true[::-1], rtol=1e-2)
    assert np.linalg.norm(res.t - t) < 5e-3 * size
    truth = ~outliers
    assert (res.inliers & truth).sum() >= 0.97 * truth.sum()
    assert (res.inliers & outliers).sum() <= 0.02 * len(X)
    np.testing.assert_allclose(as_matrix(res)[:3, :3], Lh)


def test_fit_anisotropic_default_threshold_and_frame_init():
    X, Y, L, t, size, _ = _anisotropic_case(42)
    res = fit_anisotropic(X, Y)  # default threshold and rng
    assert np.linalg.norm(res.linear - L) / np.linalg.norm(L) < 1e-2
    res2 = fit_anisotropic(X, Y, frame_init=_rot(3042))  # the true frame as a start
    assert np.linalg.norm(res2.linear - L) / np.linalg.norm(L) < 1e-2
    with pytest.raises(ValueError, match="frame_init"):
        fit_anisotropic(X, Y, frame_init=np.diag([1.0, 1.0, -1.0]))


def test_fit_anisotropic_respects_scale_bounds():
    """A uniform scale of 2 lies outside (0.75, 1.5): the scales stay on the bound."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(100, 3))
    R = _rot(9)
    res = fit_anisotropic(X, 2.0 * X @ R.T, rng=rng, inlier_threshold=10.0)
    np.testing.assert_allclose(res.scales, 1.5, atol=1e-9)
    assert _angle_deg(res.R, R) < 0.1


def test_decompose_linear_round_trip():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        R, F, s = _rot(seed), _rot(50 + seed), rng.uniform(0.5, 2.0, size=3)
        A = R @ F.T @ np.diag(s) @ F
        R2, F2, s2 = decompose_linear(A)
        np.testing.assert_allclose(R2, R, atol=1e-10)
        np.testing.assert_allclose(R2 @ F2.T @ np.diag(s2) @ F2, A, atol=1e-10)
        np.testing.assert_allclose(np.sort(s2), np.sort(s), atol=1e-10)


def test_fit_anisotropic_degenerate_inputs():
    rng = np.random.default_rng(13)
    with pytest.raises(ValueError, match="at least 4"):
        fit_anisotropic(rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng=rng)
    line = np.outer(rng.normal(size=50), [1.0, -1.0, 0.5])
    with pytest.raises(ValueError, match="collinear"):
        fit_anisotropic(line, line, rng=rng)
    plane = rng.normal(size=(50, 3)) * [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="coplanar"):
        fit_anisotropic(plane, plane, rng=rng)
    with pytest.raises(ValueError, match="no affine model"):
        fit_anisotropic(rng.normal(size=(100, 3)), rng.normal(size=(100, 3)), rng=rng,
                        inlier_threshold=1e-4, max_iterations=300)
    X = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="scale_bounds"):
        fit_anisotropic(X, X, rng=rng, scale_bounds=(1.5, 0.75))


# --------------------------------------------------------------------------------------------
# 4x4 helpers
# --------------------------------------------------------------------------------------------
def test_compose_applies_in_order():
    rng = np.random.default_rng(21)
    X = rng.normal(size=(10, 3))
    T1 = (_rot(1), rng.normal(size=3), 2.0)
    A2 = rng.normal(size=(3, 3))
    T2 = (A2, rng.normal(size=3))
    expected = (2.0 * X @ T1[0].T + T1[1]) @ A2.T + T2[1]
    np.testing.assert_allclose(apply_matrix(compose(T1, T2), X), expected, atol=1e-12)
    np.testing.assert_allclose(compose(), np.eye(4))
    with pytest.raises(ValueError):
        as_matrix(np.ones((4, 4)))
