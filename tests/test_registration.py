"""Coarse registration (utils/registration.py), tested by synthetic round trips with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from utils.alignment import apply_matrix, as_matrix
from utils.registration import (
    SCORE_DISTANCE_FACTOR,
    IcpResult,
    bidirectional_score,
    icp,
    min_pairwise_angle,
    multi_start_icp,
    robust_extent,
    rotation_angle_between,
    start_matrix,
    well_spread_rotations,
)

# An asymmetric "tripod" of three boxes with unequal arms (no proper rotational symmetry).
TRIPOD = (
    ((0.0, 0.0, 0.0), (3.0, 0.8, 0.6)),  # long arm along x
    ((0.0, 0.0, 0.0), (0.8, 0.8, 2.0)),  # arm along z
    ((0.0, 0.0, 0.0), (0.6, 1.5, 0.6)),  # short arm along y
)


def _box_surface(rng: np.random.Generator, lo, hi, n: int) -> np.ndarray:
    """[n, 3] points uniform on the surface of the axis-aligned box [lo, hi]."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    e = hi - lo
    areas = np.array([e[1] * e[2], e[0] * e[2], e[0] * e[1]])  # faces normal to x, y, z (each twice)
    axis = rng.choice(3, size=n, p=areas / areas.sum())
    P = lo + rng.random((n, 3)) * e
    side = rng.integers(0, 2, size=n)
    P[np.arange(n), axis] = np.where(side == 1, hi[axis], lo[axis])
    return P


def _union_surface(rng: np.random.Generator, boxes, n: int) -> np.ndarray:
    """About n points on the surface of a union of boxes (points inside another box removed)."""
    areas = [2 * sum(a * b for a, b in ((e[0], e[1]), (e[1], e[2]), (e[0], e[2]))) for e in (np.subtract(h, l) for l, h in boxes)]
    parts = []
    for (lo, hi), a in zip(boxes, areas):
        parts.append(_box_surface(rng, lo, hi, int(round(n * a / sum(areas)))))
    P = np.concatenate(parts)
    inside = np.zeros(len(P), bool)
    for lo, hi in boxes:
        inside |= np.all((P > np.asarray(lo) + 1e-9) & (P < np.asarray(hi) - 1e-9), axis=1)
    return P[~inside]


def _ellipsoid_surface(rng: np.random.Generator, radii, n: int) -> np.ndarray:
    u = rng.standard_normal((n, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True) * np.asarray(radii, float)


def _angle_deg(R1, R2) -> float:
    return float(np.degrees(rotation_angle_between(R1, R2)))


# --------------------------------------------------------------------------------------------
# (a) rotation set
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, floor_deg", [(24, 77.0), (64, 54.0), (128, 42.0)])
def test_well_spread_rotations_proper_identity_spread(n, floor_deg):
    R = well_spread_rotations(n)
    assert R.shape == (n, 3, 3) and R.dtype == np.float64
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (n, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(R[0], np.eye(3), atol=1e-15)
    assert np.degrees(min_pairwise_angle(R)) >= floor_deg


def test_well_spread_rotations_deterministic_and_no_global_rng():
    np.random.seed(1)
    before = np.random.random()
    np.random.seed(1)
    A = well_spread_rotations(32)
    after = np.random.random()
    assert before == after  # the global RNG stream is untouched
    B = well_spread_rotations(32)
    np.testing.assert_array_equal(A, B)
    A[0, 0, 0] = 99.0  # the returned array is a copy: mutating it does not poison later calls
    np.testing.assert_array_equal(well_spread_rotations(32)[0], np.eye(3))
    with pytest.raises(ValueError):
        well_spread_rotations(0)


def test_well_spread_rotations_cover_so3():
    """Every rotation of SO(3) lies within the covering radius; a random probe set checks that no
    rotation is far from the 64-set (for a good spread the covering radius is well below 90 deg)."""
    R = well_spread_rotations(64)
    probes = Rotation.random(2000, random_state=7).as_matrix()
    nearest = rotation_angle_between(probes[:, None], R[None]).min(axis=1)
    assert np.degrees(nearest.max()) < 60.0


# --------------------------------------------------------------------------------------------
# (b) robust extents
# --------------------------------------------------------------------------------------------
def test_robust_extent_rotation_invariant_and_ignores_floaters():
    rng = np.random.default_rng(3)
    X = _union_surface(rng, TRIPOD, 6000)
    c0, axes0, e0 = robust_extent(X)
    assert e0.shape == (3,) and axes0.shape == (3, 3) and c0.shape == (3,)
    np.testing.assert_allclose(axes0 @ axes0.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(axes0) == pytest.approx(1.0)
    assert np.all(e0 > 0)

    # Rotation + translation of the cloud: same extents, centre and axes follow.
    R = Rotation.from_rotvec([0.7, -1.1, 0.4]).as_matrix()
    t = np.array([5.0, -2.0, 1.0])
    c1, axes1, e1 = robust_extent(X @ R.T + t)
    np.testing.assert_allclose(e1, e0, rtol=1e-3)
    np.testing.assert_allclose(c1, R @ c0 + t, atol=1e-3 * e0.max())
    np.testing.assert_allclose(np.abs(np.sum(axes1 * (axes0 @ R.T), axis=1)), 1.0, atol=1e-6)

    # 1% far floaters: extents barely move, while a world-axis-aligned min/max box explodes.
    n_f = len(X) // 100
    floaters = X.mean(0) + rng.uniform(-1, 1, (n_f, 3)) * 30.0
    Xf = np.concatenate([X, floaters])
    _, _, ef = robust_extent(Xf)
    np.testing.assert_allclose(ef, e0, rtol=0.03)
    aabb = Xf.max(0) - Xf.min(0)
    assert aabb.min() > 5 * e0.max()


def test_robust_extent_box_values():
    """On a box surface the 0-100 extents are close to the true side lengths (the PCA axes of a
    finite sample are tilted by ~1 deg, which lengthens the projections by a few percent)."""
    rng = np.random.default_rng(4)
    X = _box_surface(rng, (0, 0, 0), (4.0, 2.0, 1.0), 20000)
    c, axes, e = robust_extent(X, percentiles=(0, 100))
    np.testing.assert_allclose(e, [4.0, 2.0, 1.0], rtol=0.05)
    np.testing.assert_allclose(np.abs(axes), np.eye(3), atol=0.03)
    np.testing.assert_allclose(c, [2.0, 1.0, 0.5], atol=0.01)
    with pytest.raises(ValueError):
        robust_extent(X, percentiles=(60, 40))


# --------------------------------------------------------------------------------------------
# (c) ICP
# --------------------------------------------------------------------------------------------
def test_icp_recovers_rigid_transform_from_nearby_start():
    rng = np.random.default_rng(5)
    X = _box_surface(rng, (-1.5, -0.8, -0.5), (1.5, 0.8, 0.5), 4000)
    size = float(np.linalg.norm(X.max(0) - X.min(0)))
    R = Rotation.from_rotvec([0.3, -0.5, 0.9]).as_matrix()
    t = np.array([0.4, -1.2, 2.0])
    # Target: an independent sample of the same surface (not the same points), moved and noisy.
    Y0 = _box_surface(rng, (-1.5, -0.8, -0.5), (1.5, 0.8, 0.5), 4000)
    Y = Y0 @ R.T + t + rng.normal(scale=0.005 * size, size=Y0.shape)
    # Start 10 deg and 5% of the size away from the truth.
    dR = Rotation.from_rotvec(np.radians(10) * np.array([1.0, 1.0, 0.0]) / np.sqrt(2)).as_matrix()
    init = as_matrix((dR @ R, t + 0.05 * size * np.array([1.0, 0.0, 0.0])))
    res = icp(X, Y, init, max_correspondence_distance=0.2 * size, max_iterations=100)
    assert isinstance(res, IcpResult) and res.matrix.shape == (4, 4)
    A, tt = res.matrix[:3, :3], res.matrix[:3, 3]
    np.testing.assert_allclose(A @ A.T, np.eye(3), atol=1e-10)  # rigid: no scale crept in
    assert _angle_deg(A, R) < 0.5
    assert np.linalg.norm(tt - t) < 0.01 * size
    assert res.fitness > 0.99 and res.rmse < 0.03 * size
    assert 1 <= res.iterations <= 100


def test_icp_with_scale_and_degenerate_input():
    rng = np.random.default_rng(6)
    X = _ellipsoid_surface(rng, (1.6, 0.9, 0.5), 3000)
    R = Rotation.from_rotvec([0.1, 0.2, -0.1]).as_matrix()
    Y = 1.3 * _ellipsoid_surface(rng, (1.6, 0.9, 0.5), 3000) @ R.T + 1.0
    res = icp(X, Y, as_matrix((np.eye(3), np.ones(3), 1.2)), 0.5, max_iterations=200, with_scale=True)
    s = np.cbrt(np.linalg.det(res.matrix[:3, :3]))
    assert s == pytest.approx(1.3, rel=0.01)
    assert _angle_deg(res.matrix[:3, :3] / s, R) < 1.0
    # Without scale, a scale in init is kept.
    res2 = icp(X, Y, as_matrix((np.eye(3), np.ones(3), 1.3)), 0.5, with_scale=False)
    assert np.cbrt(np.linalg.det(res2.matrix[:3, :3])) == pytest.approx(1.3)
    # No correspondence at all: the init comes back with zero fitness, no exception.
    far = icp(X, Y + 100.0, np.eye(4), 0.5)
    assert far.fitness == 0.0 and np.isnan(far.rmse) and far.iterations == 0
    np.testing.assert_array_equal(far.matrix, np.eye(4))


# --------------------------------------------------------------------------------------------
# (d) multi-start ICP: complete proxy onto an incomplete, arbitrarily rotated target
# --------------------------------------------------------------------------------------------
def _incomplete_target(seed: int, n: int = 3000):
    rng = np.random.default_rng(seed)
    P = _union_surface(rng, TRIPOD, n)  # the complete proxy (its own canonical frame)
    R = Rotation.from_rotvec([2.1, -0.9, 1.4]).as_matrix()  # arbitrary, far from any start
    t = np.array([10.0, -3.0, 4.0])
    s = 1.25
    Y = s * _union_surface(rng, TRIPOD, n) @ R.T + t  # independent sample of the same object
    cut = np.percentile(Y[:, 0], 100 * 2 / 3)  # remove everything with x above: a third of the surface
    Y = Y[Y[:, 0] <= cut]
    Y = Y + rng.normal(scale=0.01, size=Y.shape)
    return P, Y, R, t, s


def test_multi_start_icp_recovers_arbitrary_rotation_of_incomplete_target():
    P, Y, R, t, s = _incomplete_target(8, n=1500)
    rots = well_spread_rotations(64)
    assert min(_angle_deg(Rk, R) for Rk in rots) > 10.0  # the truth is not one of the starts
    delta = float(np.mean(robust_extent(Y)[2])) / 10.0
    out = multi_start_icp(P, Y, rots, scale=s, max_correspondence_distance=1.6 * delta, max_iterations=40)
    assert len(out.scores) == len(out.results) == 64
    A = out.best.matrix[:3, :3]
    assert np.cbrt(np.linalg.det(A)) == pytest.approx(s)
    assert _angle_deg(A / s, R) < 5.0
    # The recovered map puts the proxy where the truth does.
    truth = apply_matrix(as_matrix((R, t, s)), P)
    assert np.median(np.linalg.norm(apply_matrix(out.best.matrix, P) - truth, axis=1)) < delta
    # Determinism: the same call (on a subset of starts that contains the winner) gives the same answer.
    sub = np.unique(np.r_[0:8, out.best_index])
    again = multi_start_icp(P, Y, rots[sub], scale=s, max_correspondence_distance=1.6 * delta, max_iterations=40)
    assert sub[again.best_index] == out.best_index
    np.testing.assert_array_equal(again.best.matrix, out.best.matrix)


def test_start_matrix_rotates_about_scaled_proxy_centroid():
    rng = np.random.default_rng(9)
    P = rng.normal(size=(50, 3)) + 3.0
    cO = np.array([-1.0, 2.0, 0.5])
    R = Rotation.from_rotvec([0.2, 0.4, -0.3]).as_matrix()
    M = start_matrix(P.mean(0), cO, R, 2.0)
    Q = apply_matrix(M, P)
    np.testing.assert_allclose(Q.mean(0), cO, atol=1e-12)  # centroid lands on the target centroid
    np.testing.assert_allclose(Q - cO, 2.0 * (P - P.mean(0)) @ R.T, atol=1e-12)


def test_multi_start_ties_go_to_lower_index():
    rng = np.random.default_rng(10)
    X = _ellipsoid_surface(rng, (1.0, 0.7, 0.4), 500)
    rots = np.stack([np.eye(3), np.eye(3), np.eye(3)])
    out = multi_start_icp(X, X.copy(), rots, max_correspondence_distance=0.2)
    assert out.best_index == 0
    assert out.scores[0] == out.scores[1] == out.scores[2]


# --------------------------------------------------------------------------------------------
# (e) bidirectional scoring versus source-only fitness
# --------------------------------------------------------------------------------------------
def test_bidirectional_score_prefers_true_scale_over_shrunk_proxy():
    P, Y, R, t, s = _incomplete_target(11)
    delta = float(np.mean(robust_extent(Y)[2])) / 10.0
    dist = 1.6 * delta  # ICP gate, as in the original (reference §8.3)
    score_dist = SCORE_DISTANCE_FACTOR * dist  # = delta, multi_start_icp's default
    true_map = as_matrix((R, t, s))
    # Proxy shrunk by 30%, placed inside the target (its centroid on the incomplete target's
    # centroid), then refined by rigid ICP as the original pipeline would.
    shrunk_init = start_matrix(P.mean(0), Y.mean(0), R, 0.7 * s)
    shrunk = icp(P, Y, shrunk_init, dist, max_iterations=60).matrix
    true = icp(P, Y, true_map, dist, max_iterations=60).matrix

    sc_true = bidirectional_score(apply_matrix(true, P), Y, score_dist)
    sc_shrunk = bidirectional_score(apply_matrix(shrunk, P), Y, score_dist)
    # The original's ranking (source fitness at the ICP gate) prefers the shrunk proxy as well.
    assert icp(P, Y, shrunk, dist, max_iterations=0).fitness > icp(P, Y, true, dist, max_iterations=0).fitness
    # Source-only fitness (the original's criterion): the shrunk proxy wins or ties, because the
    # complete proxy's missing third has no target to land on.
    assert sc_shrunk["fitness_src"] >= sc_true["fitness_src"]
    # Both directions: the shrunk proxy leaves much of the target uncovered and loses.
    assert sc_true["fitness_dst"] > sc_shrunk["fitness_dst"] + 0.1
    assert sc_true["score"] > sc_shrunk["score"]


def test_bidirectional_score_values():
    Y = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    X = np.array([[0.05, 0, 0], [5, 5, 5]])
    sc = bidirectional_score(X, Y, 0.1)
    assert sc["fitness_src"] == pytest.approx(0.5)
    assert sc["fitness_dst"] == pytest.approx(0.25)
    assert sc["score"] == pytest.approx(2 * 0.5 * 0.25 / 0.75)
    assert sc["rmse"] == pytest.approx(0.05)
    none = bidirectional_score(X + 100, Y, 0.1)
    assert none["score"] == 0.0 and np.isnan(none["rmse"])
