"""Unit tests of the closed-loop alignment core (utils/clpe.py) and the reprojection refinement."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from scene.cameras import Camera, look_at
from utils.alignment import apply_matrix, as_matrix, project_points, refine_reprojection
from utils.clpe import (
    AlignmentParams,
    RealView,
    ViewPairs,
    align,
    coarse_init,
    depth_at,
    draw_matches,
    fill_outside,
    lift,
    match_scale,
    resize_for_matching,
    resolve_schedule,
    sharpen_opacities,
    transform_errors,
    virtual_cameras,
    window,
)
from utils.matching import Matches


def ring_cameras(n=12, radius=1.0, height=0.5, w=160, h=120):
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        centre = np.array([radius * math.cos(a), radius * math.sin(a), height])
        R, t = look_at(centre, np.zeros(3))
        cams.append(Camera(uid=i, image_name=f"v{i:02d}", R=R, t=t, fx=150.0 + i, fy=148.0 + i, cx=w / 2 + 3, cy=h / 2 - 2,
                           width=w, height=h))
    return cams


def test_lift_inverts_projection_through_a_cropped_and_resized_window():
    cam = ring_cameras(1)[0]
    rng = np.random.default_rng(0)
    X = rng.uniform(-0.1, 0.1, (50, 3))
    win = cam.cropped(40, 25, 70, 60)
    uv, z = win.project(X)
    assert np.allclose(lift(win, uv, z), X, atol=1e-9)
    # a window resized for matching: positions scale by the exact per-axis factors
    img = rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)
    mask = np.ones((60, 70), bool)
    _, m2, (sx, sy) = resize_for_matching(img, mask, 384 / 70)
    assert m2.shape == (round(60 * 384 / 70), 384)
    big = win.resized(m2.shape[1], m2.shape[0])
    uv_big, _ = big.project(X)
    assert np.allclose(uv_big / [sx, sy], uv, atol=1e-9)


def test_depth_lookup_rejects_edges_invalid_pixels_and_outside():
    depth = np.full((20, 20), 2.0)
    depth[:, 10:] = 3.0  # a depth edge at column 10
    valid = np.ones((20, 20), bool)
    valid[0:3, 0:3] = False
    xy = np.array([[5.5, 10.5], [9.5, 10.5], [15.5, 10.5], [1.5, 1.5], [4.5, 4.5], [-1.0, 5.0], [25.0, 5.0]])
    z, ok = depth_at(depth, valid, xy, edge_tolerance=0.03)
    assert ok.tolist() == [True, False, True, False, True, False, False]
    assert z[0] == 2.0 and z[2] == 3.0


def test_window_union_margin_and_clip():
    assert window([(10, 10, 20, 30), (15, 5, 40, 25)], 100, 100, 0.0) == (10, 5, 30, 25)
    assert window([(0, 0, 10, 10)], 100, 100, 0.5) == (0, 0, 15, 15)
    assert window([None, None], 100, 100, 0.1) is None
    assert match_scale(50, 40, 384, 1024) == pytest.approx(384 / 50)
    assert match_scale(2000, 1000, 384, 1024) == pytest.approx(1024 / 2000)
    assert match_scale(500, 400, 384, 1024) == 1.0


def test_sharpened_opacities_and_fill():
    x = torch.tensor([-4.0, -1.0, 0.0, 3.0])
    o = torch.sigmoid(x)
    assert torch.allclose(torch.sigmoid(sharpen_opacities(x, 5.0)), 1 - (1 - o) ** 5, atol=1e-6)
    assert np.allclose(sharpen_opacities(x.numpy(), 1.0), x.numpy(), atol=1e-6)
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = (200, 100, 50)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    out = fill_outside(img, mask)
    assert (out[mask] == img[mask]).all()
    assert np.abs(out[~mask].astype(int) - [200, 100, 50]).max() <= 1  # a constant object extends as a constant


def _synthetic_pairs(T_true, cams, n_per_view=30, noise_px=0.2, outliers=0.2, seed=0):
    """Pairs of one round: proxy points B (world), their pixels in each view after the true correction."""
    rng = np.random.default_rng(seed)
    pairs = []
    for cam in cams:
        B = rng.normal(0, 0.05, (n_per_view, 3))
        uv, _ = cam.project(apply_matrix(T_true, B))
        uv += rng.normal(0, noise_px, uv.shape)
        bad = rng.random(n_per_view) < outliers
        uv[bad] += rng.uniform(-30, 30, (bad.sum(), 2))
        # a (biased) real-side depth: lift the pixel at the true depth times 1.05
        _, z = cam.project(apply_matrix(T_true, B))
        A = lift(cam, uv, z * 1.05)
        pairs.append(ViewPairs(cam.image_name, A, B, uv, uv, np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 3), np.uint8),
                               pixels=uv, camera=cam, pixel_weight=1.0))
    return pairs


@pytest.mark.parametrize("anisotropic", [False, True])
def test_reprojection_refinement_recovers_the_correction(anisotropic):
    cams = ring_cameras(10)
    R = Rotation.from_rotvec([0.05, -0.08, 0.1]).as_matrix()
    if anisotropic:
        F = Rotation.from_rotvec([0.3, 0.2, -0.4]).as_matrix()
        A = R @ F.T @ np.diag([1.12, 0.9, 1.04]) @ F
    else:
        A = 1.08 * R
    T = as_matrix((A, np.array([0.01, -0.02, 0.015])))
    pairs = _synthetic_pairs(T, cams)
    B = np.concatenate([p.source for p in pairs])
    x = np.concatenate([p.pixels for p in pairs])
    cam_of = [p.camera for p in pairs for _ in range(len(p.source))]
    K = np.array([[c.fx, c.fy, c.cx, c.cy] for c in cam_of])
    res = refine_reprojection(B, x, K, np.array([c.R for c in cam_of]), np.array([c.t for c in cam_of]), np.eye(4),
                              anisotropic=anisotropic, threshold=2.0)
    err = transform_errors(res.matrix, T, B)
    assert err["rotation_deg"] < 0.2 and err["max_scale_error"] < 0.005 and err["translation_rel"] < 0.005
    uv, _ = project_points(apply_matrix(res.matrix, B), K, np.array([c.R for c in cam_of]), np.array([c.t for c in cam_of]))
    assert res.inliers.sum() > 0.7 * len(B)


def test_schedule_options_then_description_then_defaults():
    desc = types.SimpleNamespace(num_iterations=4, opt_shape_iterations=[2], cam_list_interval=3,
                                 given=frozenset({"num_iterations", "opt_shape_iterations", "cam_list_interval"}))
    s = resolve_schedule(AlignmentParams(), desc, 31)
    assert (s.num_iterations, s.opt_shape_iterations, s.cam_list_interval) == (4, [2], 3)
    assert s.cameras(1, 10) == [1, 4, 7] and s.cameras(4, 10) == [1, 4, 7]
    s = resolve_schedule(AlignmentParams(num_iterations=2, cam_list_interval=5, opt_shape_iterations=[1]), desc, 31)
    assert (s.num_iterations, s.opt_shape_iterations, s.cam_list_interval) == (2, [1], 5)
    bare = types.SimpleNamespace(num_iterations=6, opt_shape_iterations=[3, 4], cam_list_interval=10, given=frozenset())
    s = resolve_schedule(AlignmentParams(), bare, 31)
    assert (s.num_iterations, s.opt_shape_iterations, s.cam_list_interval) == (6, [3, 4], 3)  # ceil(31 / 15)
    assert s.sources["cam_list_interval"] == "cameras_per_round"


def test_alignment_params_are_checked():
    with pytest.raises(ValueError, match="scale_bounds"):
        AlignmentParams(scale_bounds=[1.2, 1.5]).check()
    with pytest.raises(ValueError, match="min_matches"):
        AlignmentParams(min_matches=3).check()
    AlignmentParams().check()


class _NoMatches:
    name = "none"

    def match(self, *a, **k):
        return Matches.empty()


def test_a_round_without_matches_is_skipped_not_fatal():
    rng = np.random.default_rng(0)
    cams = ring_cameras(4)
    obj_xyz = rng.normal(0, 0.05, (300, 3)) * [1.0, 0.6, 0.3]
    proxy_xyz = obj_xyz[:, [1, 0, 2]] * 2.0
    views = [RealView(c, np.zeros((c.height, c.width, 3), np.uint8), np.ones((c.height, c.width), bool)) for c in cams]

    def render(cam, model, role):
        h, w = cam.height, cam.width
        return np.zeros((h, w, 3)), np.ones((h, w)), np.ones((h, w))

    desc = types.SimpleNamespace(num_iterations=2, opt_shape_iterations=[1], cam_list_interval=1,
                                 given=frozenset({"num_iterations", "opt_shape_iterations", "cam_list_interval"}))
    sched = resolve_schedule(AlignmentParams(), desc, len(cams))
    res = align(obj_xyz, proxy_xyz, views, None, lambda M: None, render, _NoMatches(), sched, AlignmentParams(num_rotations=8))
    assert len(res.rounds) == 2 and all("usable 3D pairs" in r.skipped for r in res.rounds)
    assert np.allclose(res.matrix, res.coarse_matrix)  # nothing applied, coarse result kept
    assert res.coarse["initial_scale"] == pytest.approx(0.5, rel=0.05)


def test_draw_matches_and_errors():
    a = np.zeros((40, 50, 3), np.uint8)
    b = np.zeros((80, 60, 3), np.uint8)
    pic = draw_matches(a, b, np.array([[10.5, 10.5]]), np.array([[20.5, 40.5]]), np.array([True]))
    assert pic.shape == (40, 50 + 30, 3) and pic.any()
    T = as_matrix((Rotation.from_rotvec([0, 0, math.radians(2)]).as_matrix() * 1.01, np.zeros(3)))
    e = transform_errors(T, np.eye(4), np.random.default_rng(0).normal(size=(100, 3)))
    assert e["rotation_deg"] == pytest.approx(2.0, abs=1e-6) and e["max_scale_error"] == pytest.approx(0.01, abs=1e-9)


def _sphere(n, rng):
    u = rng.normal(size=(n, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def test_appearance_pairs_pick_the_rotation_of_a_symmetric_shape():
    """Every start fits a ball equally well; the appearance pairs (30 % outliers) decide."""
    rng = np.random.default_rng(3)
    R_true = Rotation.from_rotvec([0.4, -2.2, 1.1]).as_matrix()
    M_true = as_matrix((R_true, np.array([0.3, -0.2, 0.8]), 0.12))
    proxy = 0.45 * _sphere(3000, rng)
    obj = apply_matrix(M_true, 0.45 * _sphere(3000, rng))
    B = 0.45 * _sphere(200, rng)
    A = apply_matrix(M_true, B) + rng.normal(0, 0.001, (200, 3))
    A[:60] = rng.uniform(obj.min(0), obj.max(0), (60, 3))
    params = AlignmentParams(num_rotations=16, icp_iterations=10)
    M_geo, info_geo = coarse_init(obj, proxy, params)
    M_app, info = coarse_init(obj, proxy, params, (A, B), np.random.default_rng(0))
    e_geo = transform_errors(M_geo, M_true, proxy)["rotation_deg"]
    e_app = transform_errors(M_app, M_true, proxy)
    assert info_geo["chosen_by"] == "geometry" and e_geo > 10.0  # geometry alone cannot tell
    assert info["chosen_by"] == "appearance" and info["candidates"] == 17
    assert e_app["rotation_deg"] < 1.0 and e_app["max_scale_error"] < 0.02
    # too few pairs: geometry only
    _, info_few = coarse_init(obj, proxy, params, (A[:5], B[:5]))
    assert info_few["chosen_by"] == "geometry" and "appearance_pairs" not in info_few


def test_virtual_cameras_frame_the_proxy():
    centre, radius, size = np.array([0.1, -0.2, 0.05]), 0.4, 200
    cams = virtual_cameras(centre, radius, size, directions=10, rolls=4, margin=0.15)
    assert len(cams) == 40 and len({c.image_name for c in cams}) == 40
    for c in cams:
        uv, z = c.project(centre[None])
        assert np.allclose(uv[0], [100.0, 100.0], atol=1e-6) and z[0] > 0
        # the silhouette of the sphere spans size / (1 + 2 margin) pixels
        direction = c.R[2]  # viewing direction (third row of R)
        side = np.cross(direction, c.R[1])
        edge = centre - direction * radius**2 / np.linalg.norm(c.R.T @ -c.t - centre) + side * radius * math.sqrt(
            1 - (radius / np.linalg.norm(c.R.T @ -c.t - centre)) ** 2)
        uv_e, _ = c.project(edge[None])
        assert np.linalg.norm(uv_e[0] - uv[0]) == pytest.approx(0.5 * size / 1.3, rel=1e-6)
