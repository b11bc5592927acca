"""Stage 4 (view selection): known-answer tests of the core (utils/views.py) and the script end to end.

The core tests build synthetic frames and cameras whose right answer is known: views spread on a
circle, a camera whose rotation is not symmetric (third row != third column), sharp versus blurred
objects with sharp or smooth backgrounds, masks cut by the image border.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from scene.cameras import Camera, look_at
from scene.gaussian_model import GaussianArrays, write_gaussian_ply
from utils.arguments import format_cfg_args
from utils.views import (
    ViewSelectionParams,
    angles_deg,
    border_cut_fraction,
    crop_rgba,
    directions_to,
    greedy_select,
    measure_view,
    pixel_rays,
    quality_terms,
    select_views,
    sharpness_in_mask,
    solidity,
    triangulate_mask_centroids,
    triangulate_rays,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 64, 48


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    """[h, w] bool disc of radius r around (cx, cy) in pixel coordinates (pixel centres at +0.5)."""
    ys, xs = np.mgrid[0:h, 0:w]
    return (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r * r


def noise_rgb(h: int, w: int, seed: int, amplitude: float = 60.0, base: float = 128.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(base + amplitude * rng.standard_normal((h, w, 3)), 0, 255).astype(np.uint8)


def camera_at(center, target, up=(0.0, 0.0, 1.0), cx=W / 2, cy=H / 2, f=60.0, name="v") -> Camera:
    R, t = look_at(np.asarray(center, float), np.asarray(target, float), np.asarray(up, float))
    return Camera(R, t, f, f, cx, cy, W, H, image_name=name)


def circle_cameras(n: int, target, radius: float = 3.0, height: float = 0.5) -> list[Camera]:
    cams = []
    for i in range(n):
        a = 2 * np.pi * i / n
        c = np.asarray(target) + np.array([radius * np.cos(a), radius * np.sin(a), height])
        cams.append(camera_at(c, target, name=f"v{i:02d}"))
    return cams


def project(cam: Camera, x) -> np.ndarray:
    uv, z = cam.project(np.asarray(x, float)[None])
    assert z[0] > 0
    return uv[0]


# ---------------------------------------------------------------------------------------------
# (a) views around a full circle, equal quality: the picks are spread
# ---------------------------------------------------------------------------------------------
def test_greedy_equal_quality_spreads_picks_on_a_circle():
    a = 2 * np.pi * np.arange(12) / 12
    dirs = np.stack([np.cos(a), np.sin(a), np.zeros(12)], axis=1)
    picks = greedy_select(np.full(12, 0.5), dirs, np.ones(12, bool), 3, diversity_weight=1.0)
    assert [p.index for p in picks] == [0, 6, 3]  # first the lowest index, then opposite, then a quarter
    ang = angles_deg(dirs[[0, 6, 3]], dirs[[0, 6, 3]])
    assert ang[np.triu_indices(3, 1)].min() >= 90.0 - 1e-6


def test_circle_scene_from_masks_picks_spread_views():
    target = np.array([0.3, -0.2, 0.4])
    cams = circle_cameras(12, target, height=0.0)  # the circle passes through the object's height
    rgb = noise_rgb(H, W, seed=1)
    measures = []
    for cam in cams:
        u, v = project(cam, target)
        assert abs(u - W / 2) < 1e-9 and abs(v - H / 2) < 1e-9  # each camera looks at the object
        measures.append(measure_view(rgb, disc(H, W, u, v, 8.0)))
    params = ViewSelectionParams(img_num=3)
    q = quality_terms(measures, params)
    assert np.ptp(q.quality) < 1e-12  # equal quality: only diversity decides
    centre, ok = triangulate_mask_centroids(cams, measures)
    assert ok and np.linalg.norm(centre - target) < 1e-6
    sel = select_views(measures, np.stack([c.center for c in cams]), centre, params)
    print(f"\n[circle] picks {sel.indices}, smallest pairwise angle {sel.min_angle:.1f} deg")
    assert len(sel.picks) == 3 and sel.min_angle >= 90.0 - 1e-6
    assert sel.indices[0] == 0


# ---------------------------------------------------------------------------------------------
# (b) the viewing direction is the third ROW of R (the authors used the third column)
# ---------------------------------------------------------------------------------------------
def test_viewing_direction_is_the_third_row_not_column():
    target = np.array([0.5, 0.2, 0.1])
    # off-centre principal points and oblique poses: R is far from symmetric
    cams = [
        camera_at([3.0, 1.0, 2.0], target, cx=30.0, cy=20.0, name="a"),
        camera_at([-2.0, 2.5, 0.5], target, cx=35.0, cy=26.0, name="b"),
        camera_at([0.5, -3.0, 1.5], target, cx=28.0, cy=22.0, name="c"),
    ]
    for cam in cams:
        true_dir = directions_to(target, cam.center[None])[0]
        # the ray through the principal point is the optical axis = R[2]; the column differs a lot
        _, d = pixel_rays(cam, np.array([[cam.cx, cam.cy]]))
        assert np.allclose(d[0], cam.R[2]) and np.allclose(d[0], cam.viewdir)
        assert np.allclose(d[0], true_dir, atol=1e-9)  # the camera looks at the target
        assert angles_deg(cam.R[:, 2][None], true_dir[None])[0, 0] > 20.0, "not a discriminating case"

    # masks around the projected centre; the centre is recovered from the masks
    rgb = noise_rgb(H, W, seed=2)
    measures = [measure_view(rgb, disc(H, W, *project(cam, target), 6.0)) for cam in cams]
    centre, ok = triangulate_mask_centroids(cams, measures)
    assert ok and np.linalg.norm(centre - target) < 0.02

    # a pixel ray away from the principal point still hits its 3D point (rows of R used throughout)
    p = target + np.array([0.1, -0.05, 0.08])
    for cam in cams:
        uv = project(cam, p)
        o, d = pixel_rays(cam, uv[None])
        along = (p - o[0]) @ d[0]
        assert np.linalg.norm(o[0] + along * d[0] - p) < 1e-9

    # what the column convention would give: rays through the same pixels with R replaced by R^T
    bad_cams = [Camera(c.R.T, -c.R.T @ c.center, c.fx, c.fy, c.cx, c.cy, W, H) for c in cams]
    bad_origins = np.stack([c.center for c in cams])
    bad_dirs = np.stack([pixel_rays(bc, m.centroid[None])[1][0] for bc, m in zip(bad_cams, measures)])
    bad_centre, _ = triangulate_rays(bad_origins, bad_dirs)
    assert np.linalg.norm(bad_centre - target) > 0.5  # the test would catch the bug


def test_selection_uses_directions_towards_the_object_not_the_optical_axes():
    # three cameras with equal masks; b looks at the object from the side opposite a, c from near a.
    # c's third COLUMN of R is made opposite to a's, so the authors' measure would call c diverse.
    target = np.zeros(3)
    ca = camera_at([3.0, 0.0, 0.0], target, name="a")
    cb = camera_at([-3.0, 0.3, 0.0], target, name="b")
    cc = camera_at([2.9, 0.8, 0.0], target, up=(0.0, 0.0, -1.0), name="c")
    cams = [ca, cb, cc]
    col_angle = angles_deg(ca.R[:, 2][None], cc.R[:, 2][None])[0, 0]
    row_angle = angles_deg(ca.R[2][None], cc.R[2][None])[0, 0]
    col_angle_b = angles_deg(ca.R[:, 2][None], cb.R[:, 2][None])[0, 0]
    # by columns c looks most different from a and b the same: the authors' measure would pick c
    assert col_angle > 150.0 and col_angle_b < 30.0 and row_angle < 20.0
    rgb = noise_rgb(H, W, seed=3)
    measures = [measure_view(rgb, disc(H, W, *project(c, target), 7.0)) for c in cams]
    # a gets the best quality (bigger mask); b and c equal
    measures[0] = measure_view(rgb, disc(H, W, *project(ca, target), 9.0))
    params = ViewSelectionParams(img_num=2)
    centre, ok = triangulate_mask_centroids(cams, measures)
    assert ok and np.linalg.norm(centre - target) < 1e-6
    sel = select_views(measures, np.stack([c.center for c in cams]), centre, params)
    assert sel.indices == [0, 1], (sel.indices, col_angle)
    assert sel.min_angle > 150.0


# ---------------------------------------------------------------------------------------------
# (c) sharpness is measured inside the mask
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("blurred_background", ["same", "sharper"])
def test_sharp_object_beats_blurred_object(blurred_background):
    mask = disc(H, W, W / 2, H / 2, 14.0)
    obj = noise_rgb(H, W, seed=4, amplitude=70.0)
    smooth_bg = np.full((H, W, 3), 120, np.uint8)
    blurred_obj = cv2.GaussianBlur(obj, (0, 0), 2.0)
    sharp_frame = np.where(mask[..., None], obj, smooth_bg)
    bg_b = smooth_bg if blurred_background == "same" else noise_rgb(H, W, seed=5, amplitude=100.0)
    blurred_frame = np.where(mask[..., None], blurred_obj, bg_b)
    s_sharp = sharpness_in_mask(sharp_frame, mask, 2)
    s_blur = sharpness_in_mask(blurred_frame, mask, 2)
    assert s_sharp > 3 * s_blur
    if blurred_background == "sharper":
        # measured over the whole frame (the authors' bug) the blurred frame would win
        lap = lambda im: cv2.Laplacian(im.astype(np.float64) @ [0.299, 0.587, 0.114], cv2.CV_64F).var()  # noqa: E731
        assert lap(blurred_frame) > lap(sharp_frame)
    measures = [measure_view(blurred_frame, mask), measure_view(sharp_frame, mask)]
    q = quality_terms(measures, ViewSelectionParams())
    assert q.terms["sharpness"][1] > q.terms["sharpness"][0]
    assert q.quality[1] > q.quality[0]
    sel = select_views(measures, np.array([[3.0, 0, 0], [0, 3.0, 0]]), np.zeros(3), ViewSelectionParams(img_num=1))
    assert sel.indices == [1]


def test_sharpness_ignores_the_silhouette_edge():
    # a flat object on a flat background of another colour: no texture inside, only the edge
    mask = disc(H, W, W / 2, H / 2, 12.0)
    frame = np.repeat(np.where(mask, 220, 20).astype(np.uint8)[..., None], 3, axis=2)
    assert sharpness_in_mask(frame, mask, 2) == pytest.approx(0.0, abs=1e-9)
    assert sharpness_in_mask(frame, mask, 0) > 100.0  # without erosion the edge would count


def test_sharpness_normalisation_is_robust_to_an_outlier():
    rgb_lo = noise_rgb(H, W, seed=6, amplitude=20.0)
    rgb_hi = noise_rgb(H, W, seed=7, amplitude=2000.0)  # saturates: an extreme outlier
    mask = disc(H, W, W / 2, H / 2, 12.0)
    measures = [measure_view(rgb_lo, mask) for _ in range(4)] + [measure_view(rgb_hi, mask)]
    t = quality_terms(measures, ViewSelectionParams()).terms["sharpness"]
    assert np.allclose(t[:4], 0.5)  # the median view scores 0.5 whatever the outlier
    assert 0.5 < t[4] < 1.0


# ---------------------------------------------------------------------------------------------
# (d) masks cut by the image border
# ---------------------------------------------------------------------------------------------
def test_border_cut_fraction_and_solidity_values():
    m = np.zeros((H, W), bool)
    m[10:26, 20:36] = True
    assert border_cut_fraction(m) == 0.0 and solidity(m) == 1.0
    m2 = np.zeros((H, W), bool)
    m2[10:26, 0:16] = True  # 16 x 16 square on the left border: 60 boundary pixels, 16 on the border
    assert border_cut_fraction(m2) == pytest.approx(16 / 60)
    assert border_cut_fraction(np.ones((H, W), bool)) == 1.0
    ring = disc(H, W, 32, 24, 15) & ~disc(H, W, 32, 24, 10)
    assert solidity(ring) < 0.6
    two = np.zeros((H, W), bool)
    two[5:10, 5:10] = True
    two[30:35, 50:55] = True
    assert solidity(two) < 0.2


def test_mask_cut_by_the_border_is_penalised():
    rgb = noise_rgb(H, W, seed=8)
    inside = np.zeros((H, W), bool)
    inside[12:30, 20:38] = True  # 18 x 18
    cut = np.zeros((H, W), bool)
    cut[10:30, 0:20] = True  # 20 x 20, larger, but on the border
    inside2 = np.zeros((H, W), bool)
    inside2[14:30, 40:56] = True
    measures = [measure_view(rgb, cut), measure_view(rgb, inside), measure_view(rgb, inside2)]
    p = ViewSelectionParams(img_num=1, w_sharpness=0.0)
    q = quality_terms(measures, p)
    assert q.terms["size"][0] > q.terms["size"][1]
    assert q.terms["completeness"][0] < q.terms["completeness"][1] == 1.0
    assert not q.complete[0] and q.complete[1] and q.complete[2]
    centers = np.array([[3.0, 0, 0], [-3.0, 0, 0], [0, 3.0, 0]])
    assert select_views(measures, centers, np.zeros(3), p).indices[0] == 1
    # cut views come only after the complete ones, even when they would add diversity
    p3 = ViewSelectionParams(img_num=3, w_sharpness=0.0)
    assert select_views(measures, centers, np.zeros(3), p3).indices[2] == 0
    # with the hard filter off (max_cut_fraction = 1) only the completeness term penalises it
    q_off = quality_terms(measures, ViewSelectionParams(max_cut_fraction=1.0))
    assert q_off.complete.all() and q_off.quality[0] < q_off.quality[1] + 0.5


def test_size_filter_drops_small_and_empty_masks():
    rgb = noise_rgb(H, W, seed=9)
    big = disc(H, W, 32, 24, 12)
    small = disc(H, W, 32, 24, 3)
    empty = np.zeros((H, W), bool)
    measures = [measure_view(rgb, m) for m in (small, big, empty)]
    q = quality_terms(measures, ViewSelectionParams(min_area_fraction=0.2))
    assert q.candidate.tolist() == [False, True, False]
    assert q.reasons[0].startswith("mask area") and q.reasons[2] == "empty mask"
    sel = select_views(measures, np.eye(3) * 3, np.zeros(3), ViewSelectionParams(img_num=3))
    assert sel.indices == [1]  # fewer picks than asked rather than a tiny crop
    with pytest.raises(ValueError, match="empty in every view"):
        select_views([measures[2]], np.zeros((1, 3)) + 3, np.zeros(3), ViewSelectionParams())


# ---------------------------------------------------------------------------------------------
# (e) determinism, triangulation, crops
# ---------------------------------------------------------------------------------------------
def test_selection_is_deterministic_and_ties_go_to_the_lowest_index():
    rng = np.random.default_rng(10)
    target = np.array([0.1, 0.0, 0.2])
    cams = circle_cameras(10, target)
    rgb = noise_rgb(H, W, seed=11)
    measures = [measure_view(rgb, disc(H, W, *project(c, target), rng.uniform(5, 12))) for c in cams]
    centers = np.stack([c.center for c in cams])
    params = ViewSelectionParams(img_num=4)
    a = select_views(measures, centers, target, params)
    b = select_views(measures, centers, target, params)
    assert a.indices == b.indices and np.array_equal(a.pairwise_angles, b.pairwise_angles)
    assert len(set(a.indices)) == 4
    # identical views: the first pick is index 0, whatever the float noise
    same = [measure_view(rgb, disc(H, W, W / 2, H / 2, 8.0))] * 5
    dirs = np.tile([[1.0, 0.0, 0.0]], (5, 1))
    assert [p.index for p in greedy_select(quality_terms(same, params).quality, dirs, np.ones(5, bool), 3, 1.0)] == [0, 1, 2]


def test_triangulation_known_answer_outlier_and_parallel_rays():
    rng = np.random.default_rng(12)
    x = np.array([0.4, -0.3, 1.2])
    origins = rng.normal(size=(8, 3)) * 3
    dirs = x - origins + rng.normal(scale=0.002, size=(8, 3))
    est, ok = triangulate_rays(origins, dirs)
    assert ok and np.linalg.norm(est - x) < 0.02
    bad = dirs.copy()
    bad[0] = np.array([1.0, 1.0, 0.0])  # one ray through a wrong mask centroid
    plain = np.linalg.norm(triangulate_rays(origins, bad, iterations=0)[0] - x)
    robust = np.linalg.norm(triangulate_rays(origins, bad)[0] - x)
    assert robust < 0.5 * plain and robust < 0.05
    par, ok = triangulate_rays(origins[:3], np.tile([[0.0, 0.0, 1.0]], (3, 1)))
    assert not ok and np.isfinite(par).all()


def test_crop_contains_the_mask_with_margin_and_upscales_tiny_crops():
    rgb = noise_rgb(H, W, seed=13)
    mask = np.zeros((H, W), bool)
    mask[20:30, 2:12] = True  # near the left border: the margin is clipped there
    c = crop_rgba(rgb, mask, margin=0.5, min_crop_pixels=0)
    assert c.box == (0, 15, 17, 35) and c.upscale == 1
    assert np.array_equal(c.rgba[..., :3], rgb[15:35, 0:17])
    assert np.array_equal(c.rgba[..., 3] == 255, mask[15:35, 0:17])
    big = crop_rgba(rgb, mask, margin=0.5, min_crop_pixels=10000)
    h, w = big.rgba.shape[:2]
    assert big.upscale == 8 and (w, h) == (17 * 8, 20 * 8) and w * h >= 10000
    assert big.rgba.dtype == np.uint8 and set(np.unique(big.rgba[..., 3])) <= {0, 255}
    assert np.array_equal(big.rgba[::8, ::8, 3] == 255, mask[15:35, 0:17])
    assert int((big.rgba[..., 3] == 255).sum()) == int(mask.sum()) * 64


# ---------------------------------------------------------------------------------------------
# end to end on a generated demo scene
# ---------------------------------------------------------------------------------------------
def run(*args, check=True):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def write_masked_rgba(D) -> None:
    """Stage 1's output from the generator's GT masks: RGB = frame, alpha = mask."""
    for prompt in sorted(os.listdir(D / "masks")):
        for f in sorted(os.listdir(D / "masks" / prompt)):
            m = np.asarray(Image.open(D / "masks" / prompt / f))
            im = np.asarray(Image.open(D / "images" / f).convert("RGB"))
            out = D / "masked_image_rgba" / prompt / f
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.dstack([im, m]).astype(np.uint8), "RGBA").save(out)


def make_model_dir(M, D) -> None:
    M.mkdir(parents=True)
    (M / "cfg_args").write_text(format_cfg_args({
        "sh_degree": 3, "source_path": str(D), "model_path": str(M), "images": "images", "resolution": -1,
        "white_background": False, "data_device": "", "eval": True, "split_yml_name": "split.yml",
    }))


def tree(path) -> dict:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory):
    D = tmp_path_factory.mktemp("vs") / "D"
    t = time.time()
    run("scripts/make_demo_scene.py", D, "--num_views", "24", "--width", "96", "--height", "72",
        "--num_points", "2000", "--supersample", "1", "--no-progress")
    write_masked_rgba(D)
    print(f"\n[demo] scene generated in {time.time() - t:.1f}s")
    return D


def test_view_selection_end_to_end(demo_scene, tmp_path):
    D = demo_scene
    M = tmp_path / "M"
    make_model_dir(M, D)
    t = time.time()
    proc = run("view_selection.py", "-s", D, "-m", M, "-r", "1", "--eval", "--split_yml_name", "split.yml")
    print(f"\n[demo] view_selection.py ran in {time.time() - t:.1f}s")
    desc = yaml.safe_load((D / "description.yml").read_text())
    split = yaml.safe_load((D / "split.yml").read_text())
    prompts = [p.strip() for p in desc["prompts"].split(",")]
    k = int(desc["img_num"])
    meta = {o["name"]: o for o in json.loads((D / "scene_meta.json").read_text())["objects"]}
    out = M / "masked_image_rgba_selected"
    sel = json.loads((out / "selection.json").read_text())
    rec = json.loads((M / "view_selection.json").read_text())
    assert rec["stage"] == "view_selection" and rec["view_selection"]["img_num"] == k
    assert rec["model"]["split_yml_name"] == "split.yml" and rec["model"]["resolution"] == 1
    assert set(sel["objects"]) == set(prompts)
    train = sorted(str(s) for s in split["train"])
    for prompt in prompts:
        o = sel["objects"][prompt]
        assert prompt in proc.stdout
        assert sorted(os.listdir(out / prompt)) == [f"img_{i}.png" for i in range(1, k + 1)]
        assert len(o["selected"]) == k == len(set(o["selected"])) and set(o["selected"]) <= set(train)
        assert [v["stem"] for v in o["views"]] == train  # every training view scored, sorted
        by_stem = {v["stem"]: v for v in o["views"]}
        for i, stem in enumerate(o["selected"], start=1):
            v = by_stem[stem]
            assert v["candidate"] and v["pick"]["order"] == i
            for name in ("sharpness", "size", "completeness", "solidity"):
                assert 0.0 <= v["terms"][name] <= 1.0
        # the crops: RGBA uint8, alpha in {0, 255}, the whole mask inside the box, original pixels
        for i, (stem, box) in enumerate(zip(o["selected"], o["crops"]), start=1):
            im = Image.open(out / prompt / f"img_{i}.png")
            assert im.mode == "RGBA"
            crop = np.asarray(im)
            assert crop.dtype == np.uint8 and set(np.unique(crop[..., 3])) <= {0, 255}
            src = np.asarray(Image.open(D / "masked_image_rgba" / prompt / f"{stem}.png"))
            mask = src[..., 3] > 127
            x0, y0, x1, y1 = box["box_xyxy"]
            f = box["upscale"]
            assert mask[y0:y1, x0:x1].sum() == mask.sum() > 0  # the crop contains the mask
            assert crop.shape[:2] == ((y1 - y0) * f, (x1 - x0) * f) and crop.shape[0] * crop.shape[1] >= 10000
            assert np.array_equal(crop[::f, ::f, 3] == 255, mask[y0:y1, x0:x1])
            if f == 1:
                assert np.array_equal(crop[..., :3], src[y0:y1, x0:x1, :3])
        # geometry: the triangulated centre, the pairwise angles, the acceptance bar
        centre = np.array(o["centre"])
        assert np.linalg.norm(centre - np.array(meta[prompt]["centre"])) < 0.03, (centre, meta[prompt]["centre"])
        dirs = np.array([by_stem[s]["direction"] for s in o["selected"]])
        ang = angles_deg(dirs, dirs)
        assert np.allclose(ang, np.array(o["pairwise_angles_deg"]), atol=1e-6)
        smallest = ang[np.triu_indices(k, 1)].min()
        assert smallest == pytest.approx(o["min_pairwise_angle_deg"])
        print(f"[demo] {prompt}: picks {o['selected']}, smallest angle between picks {smallest:.1f} deg")
        assert smallest >= 20.0

    # determinism, options from cfg_args (no -s), stale crops removed, other files kept
    first = {p: (out / p / "img_1.png").read_bytes() for p in prompts}
    (out / prompts[0] / "img_9.png").write_bytes(b"stale")
    (out / prompts[0] / "notes.txt").write_text("keep me")
    run("view_selection.py", "-m", M, "--quiet")
    again = json.loads((out / "selection.json").read_text())
    assert all(again["objects"][p]["selected"] == sel["objects"][p]["selected"] for p in prompts)
    assert all((out / p / "img_1.png").read_bytes() == first[p] for p in prompts)
    assert not (out / prompts[0] / "img_9.png").exists() and (out / prompts[0] / "notes.txt").exists()
    run("view_selection.py", "-m", M, "--img_num", "2", "--quiet")
    assert sorted(os.listdir(out / prompts[1])) == ["img_1.png", "img_2.png"]
    two = json.loads((out / "selection.json").read_text())
    assert all(two["objects"][p]["selected"] == sel["objects"][p]["selected"][:2] for p in prompts)

    # with M/gs_seg/<prompt>.ply the centre is the median of its Gaussian centres
    rng = np.random.default_rng(0)
    xyz = (np.array(meta[prompts[0]]["centre"]) + rng.normal(scale=0.02, size=(301, 3))).astype(np.float32)
    n = len(xyz)
    write_gaussian_ply(M / "gs_seg" / f"{prompts[0]}.ply", GaussianArrays(
        xyz=xyz, f_dc=np.zeros((n, 3), np.float32), f_rest=np.zeros((n, 0), np.float32),
        opacity=np.zeros(n, np.float32), scale=np.full((n, 3), -4.0, np.float32),
        rot=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))))
    run("view_selection.py", "-m", M, "--quiet")
    seg = json.loads((out / "selection.json").read_text())["objects"]
    assert np.allclose(seg[prompts[0]]["centre"], np.median(xyz.astype(np.float64), axis=0), atol=1e-6)
    assert "gs_seg" in seg[prompts[0]]["centre_source"] and "triangulated" in seg[prompts[1]]["centre_source"]


def _bad_scene(demo_scene, tmp_path, breaker):
    D = tmp_path / "D"
    shutil.copytree(demo_scene, D, ignore=shutil.ignore_patterns("gt", "depths_cam", "masks"))
    detail = breaker(D)
    M = tmp_path / "M"
    make_model_dir(M, D)
    return D, M, detail


def _remove_frames(D):
    split = yaml.safe_load((D / "split.yml").read_text())
    stems = sorted(str(s) for s in split["train"])[:2]
    for s in stems:
        (D / "masked_image_rgba" / "blue mug" / f"{s}.png").unlink()
    return stems


def _empty_masks(D):
    folder = D / "masked_image_rgba" / "green ball"
    for f in folder.iterdir():
        a = np.asarray(Image.open(f)).copy()
        a[..., 3] = 0
        Image.fromarray(a, "RGBA").save(f)
    return ["green ball", "empty"]


def _no_alpha(D):
    split = yaml.safe_load((D / "split.yml").read_text())
    f = D / "masked_image_rgba" / "red box" / f"{sorted(split['train'])[3]}.png"
    Image.open(f).convert("RGB").save(f)
    return [f.name, "alpha"]


@pytest.mark.parametrize("breaker", [
    _remove_frames,
    _empty_masks,
    _no_alpha,
    lambda D: (shutil.rmtree(D / "masked_image_rgba"), ["masked_image_rgba", "not found"])[1],
    lambda D: (shutil.rmtree(D / "masked_image_rgba" / "red box"), ["red box", "not found"])[1],
], ids=["missing_frames", "empty_masks", "no_alpha", "no_mask_folder", "no_prompt_folder"])
def test_bad_input_one_line_exit_2_nothing_written(demo_scene, tmp_path, breaker):
    D, M, fragments = _bad_scene(demo_scene, tmp_path, breaker)
    before_d, before_m = tree(D), tree(M)
    proc = run("view_selection.py", "-s", D, "-m", M, "-r", "1", "--eval", "--split_yml_name", "split.yml", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert tree(D) == before_d and tree(M) == before_m
