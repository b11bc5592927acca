"""The coverage report core (utils/coverage.py) on synthetic camera setups with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scene.cameras import Camera, look_at
from utils.coverage import (
    CoverageParams,
    colour_counts,
    coverage_report,
    direction_counts,
    direction_to_pixel,
    draw_coverage_map,
    equirect_directions,
    estimate_up,
    fibonacci_sphere,
    format_table,
    in_frustum,
    up_frame,
    view_directions,
)


def ring_cameras(azimuths_deg, elevation_deg=0.0, radius=2.0, centre=(0.0, 0.0, 0.0)):
    """Cameras around ``centre`` at the given azimuths, all looking at it, world up = +z."""
    cams = []
    for i, az in enumerate(np.radians(azimuths_deg)):
        el = math.radians(elevation_deg)
        c = np.asarray(centre) + radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        R, t = look_at(c, np.asarray(centre, dtype=float))
        cams.append(Camera(R, t, 50.0, 50.0, 32.0, 24.0, 64, 48, image_name=f"v{i:03d}"))
    return cams


def band_fraction(theta_deg: float, arc_deg: float) -> float:
    """Exact share of the sphere within theta of a great-circle arc of length arc_deg on the equator
    (a band of half-width theta along the arc plus a half cap at each end)."""
    t = math.radians(theta_deg)
    band = math.radians(arc_deg) * 2 * math.sin(t)
    caps = 2 * math.pi * (1 - math.cos(t))
    return (band + caps) / (4 * math.pi)


def test_fibonacci_sphere_is_uniform():
    d = fibonacci_sphere(2000)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    assert np.abs(d.mean(0)).max() < 2e-3
    assert abs((d[:, 2] >= 0).mean() - 0.5) < 1e-3
    # the share within 30 degrees of any axis is the cap's solid angle
    cap = (1 - math.cos(math.radians(30))) / 2
    for axis in np.eye(3):
        assert abs((d @ axis >= math.cos(math.radians(30))).mean() - cap) < 0.005


def test_half_circle_of_cameras_covers_half_the_equator():
    """Cameras every degree on one half of the horizontal circle around the object: the equator
    is covered over 180 + 2 x 20 degrees, the sphere over the band-and-caps area."""
    cams = ring_cameras(np.arange(0, 181, 1.0))
    dirs = view_directions(np.stack([c.center for c in cams]), np.zeros(3))
    np.testing.assert_allclose(dirs[90], [0, 1, 0], atol=1e-12)
    eq_az = np.radians(np.arange(0.5, 360, 1.0))
    equator = np.stack([np.cos(eq_az), np.sin(eq_az), np.zeros_like(eq_az)], 1)
    covered_eq = (direction_counts(equator, dirs, 20.0) > 0).mean()
    assert covered_eq == pytest.approx((180 + 40) / 360, abs=0.006)

    up, agreement = estimate_up(np.stack([c.R for c in cams]))
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-9)
    assert agreement == pytest.approx(1.0)
    params = CoverageParams(coverage_directions=4000)
    rep = coverage_report(np.zeros(3), up, dirs, np.array([5, 5, 5, 1]), params)
    want = band_fraction(20.0, 180.0)  # ~0.201
    assert rep["covered_sphere"] == pytest.approx(want, abs=0.01)
    # the arc lies in the horizon plane: the upper hemisphere holds exactly half of the covered set
    assert rep["covered_upper_hemisphere"] == pytest.approx(want, abs=0.01)
    assert rep["train_views_used"] == 181 and rep["under_observed_share"] == pytest.approx(0.25)
    assert rep["completion_advised"] is True

    # a full ring covers twice the band (no end caps)
    full = ring_cameras(np.arange(0, 360, 1.0))
    rep_full = coverage_report(np.zeros(3), up, view_directions(np.stack([c.center for c in full]), np.zeros(3)),
                               np.array([9]), params)
    assert rep_full["covered_sphere"] == pytest.approx(math.sin(math.radians(20)), abs=0.01)


def test_upper_hemisphere_of_a_dome_capture():
    """Cameras on a dense dome over the object (elevations 0..90) cover the whole upper hemisphere
    and, with a 20 degree tolerance, a 20 degree band below the horizon."""
    cams = []
    for el in np.arange(0, 91, 5.0):
        cams += ring_cameras(np.arange(0, 360, 5.0), elevation_deg=el)
    dirs = view_directions(np.stack([c.center for c in cams]), np.zeros(3))
    rep = coverage_report(np.zeros(3), np.array([0, 0, 1.0]), dirs, np.array([10, 10]), CoverageParams(coverage_directions=4000))
    assert rep["covered_upper_hemisphere"] == pytest.approx(1.0, abs=1e-9)
    assert rep["covered_sphere"] == pytest.approx(0.5 + math.sin(math.radians(20)) / 2, abs=0.01)
    assert rep["completion_advised"] is False and rep["under_observed_share"] == 0.0
    assert rep["train_elevation_deg"]["max"] == pytest.approx(90.0)


def test_no_cameras_and_test_views():
    params = CoverageParams(coverage_directions=500)
    rep = coverage_report(np.zeros(3), np.array([0, 0, 1.0]), np.zeros((0, 3)), np.array([0, 0]), params,
                          test_dirs=np.array([[1.0, 0, 0]]))
    assert rep["covered_sphere"] == 0.0 and rep["covered_upper_hemisphere"] == 0.0
    assert rep["under_observed_share"] == 1.0 and rep["test_views_uncovered"] == 1 and rep["completion_advised"]
    dirs = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    rep = coverage_report(np.zeros(3), np.array([0, 0, 1.0]), dirs, np.array([3]), params,
                          test_dirs=np.array([[math.cos(0.1), math.sin(0.1), 0], [-1.0, 0, 0]]))
    assert rep["test_views"] == 2 and rep["test_views_uncovered"] == 1


def test_estimate_up_follows_the_cameras_and_flags_disagreement():
    R = np.array([[0.3, 0.5, 0.8], [-0.6, 0.7, 0.1], [0.2, 0.1, 0.9]])
    Q, _ = np.linalg.qr(R)  # a random world frame
    cams = ring_cameras(np.arange(0, 360, 30.0), elevation_deg=30.0)
    rots = np.stack([c.R @ Q.T for c in cams])  # the same rig in a rotated world: up = Q @ z
    up, agreement = estimate_up(rots)
    np.testing.assert_allclose(up, Q @ np.array([0, 0, 1.0]), atol=1e-9)
    assert agreement > 0.8
    # cameras rolled by 0 and 180 degrees cancel: no reliable up
    flip = np.diag([-1.0, -1.0, 1.0])
    _, bad = estimate_up(np.stack([cams[0].R, flip @ cams[0].R]))
    assert bad < 1e-9
    frame = up_frame(up)
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame) == pytest.approx(1.0)


def test_in_frustum():
    cam = ring_cameras([0.0])[0]
    assert in_frustum(cam.R, cam.t, cam.K(), cam.width, cam.height, np.zeros(3))
    assert not in_frustum(cam.R, cam.t, cam.K(), cam.width, cam.height, np.array([4.0, 0, 0]))  # behind the camera
    assert not in_frustum(cam.R, cam.t, cam.K(), cam.width, cam.height, np.array([0, 5.0, 0]))  # far to the side


def test_map_pixels_round_trip_and_colours():
    up = np.array([0.0, 0.0, 1.0])
    grid = equirect_directions(360, 180, up)
    px = direction_to_pixel(grid.reshape(-1, 3), up, 360, 180)
    xs, ys = np.meshgrid(np.arange(360) + 0.5, np.arange(180) + 0.5)
    np.testing.assert_allclose(px[:, 0], xs.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(px[:, 1], ys.reshape(-1), atol=1e-6)
    c = colour_counts(np.array([0, 1, 5, 9]), vmax=9)
    assert c.dtype == np.uint8 and tuple(c[0]) == (70, 70, 70) and len({tuple(x) for x in c}) == 4


def test_draw_coverage_map_marks_cameras_and_uncovered_directions():
    cams = ring_cameras(np.arange(0, 181, 10.0), elevation_deg=30.0)
    dirs = view_directions(np.stack([c.center for c in cams]), np.zeros(3))
    test_dirs = view_directions(np.stack([c.center for c in ring_cameras([270.0], elevation_deg=30.0)]), np.zeros(3))
    up = np.array([0.0, 0.0, 1.0])
    img = draw_coverage_map(up, dirs, 20.0, width=720, test_dirs=test_dirs, title="cup", lines=["a line"])
    assert img.dtype == np.uint8 and img.shape[1] == 720 and img.shape[2] == 3 and img.shape[0] > 360
    # straight down is uncovered (grey), the direction of a camera is coloured
    assert tuple(img[355, 100]) == (70, 70, 70)
    x, y = direction_to_pixel(dirs[9:10] + np.array([[0.0, 0.0, 0.2]]), up, 720, 360)[0]
    assert tuple(img[int(y), int(x)]) != (70, 70, 70)
    # the test camera's red cross lies in an uncovered region (azimuth 270 = -90)
    tx, ty = direction_to_pixel(test_dirs, up, 720, 360)[0]
    patch = img[int(ty) - 3:int(ty) + 4, int(tx) - 3:int(tx) + 4].reshape(-1, 3).astype(int)
    assert ((patch[:, 0] > 180) & (patch[:, 1] < 90)).any()


def test_table_and_params_check():
    rows = [{"prompt": "cup", "gaussians": 10, "train_views_used": 4, "covered_sphere": 0.2, "covered_upper_hemisphere": 0.4,
             "under_observed_share": 0.1, "min_views": 3, "completion_advised": True},
            {"prompt": "ghost", "gaussians": 0, "covered_sphere": None, "note": "no Gaussians"}]
    text = format_table(rows)
    assert "cup" in text and "40.0%" in text and "advised" in text and "no Gaussians" in text
    with pytest.raises(ValueError, match="coverage_angle"):
        CoverageParams(coverage_angle=0.0).check()
    with pytest.raises(ValueError, match="coverage_up"):
        CoverageParams(coverage_up=[0.0, 1.0]).check()
    CoverageParams(coverage_up=[0.0, 0.0, 1.0]).check()
