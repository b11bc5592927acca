"""Stage 9 metrics (utils/evaluation.py) and render_3dgs.py's object evaluation end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from utils.evaluation import (EvaluationParams, emd, geometry_metrics, mean_metrics, object_view_metrics, union_box,
                              visible_object_renders)


def _square(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_object_view_metrics_on_known_images():
    params = EvaluationParams(box_margin=0.0)
    h, w = 64, 80
    gt_mask = _square(h, w, 10, 40, 20, 50)
    gt = torch.ones(3, h, w)
    gt[:, gt_mask] = torch.tensor([0.8, 0.2, 0.1])[:, None]
    # a perfect render
    rec = object_view_metrics(gt.clone(), gt_mask[None].float(), gt, gt_mask, params)
    assert rec["iou"] == 1.0 and rec["psnr"] > 100 and rec["ssim"] == pytest.approx(1.0, abs=1e-6)
    # the render shifted by 10 px: IoU 20/40 of the columns, and the box covers both squares
    shifted = _square(h, w, 10, 40, 30, 60)
    img = torch.ones(3, h, w)
    img[:, shifted] = torch.tensor([0.8, 0.2, 0.1])[:, None]
    rec = object_view_metrics(img, shifted[None].float(), gt, gt_mask, params)
    assert rec["iou"] == pytest.approx(600 / 1200)
    # box = rows 10..40, cols 20..60 (1200 px): 600 differing pixels, each with squared error (0.04 + 0.64 + 0.81) / 3
    mse = 600 * (0.2**2 + 0.8**2 + 0.9**2) / 3 / 1200
    assert rec["psnr"] == pytest.approx(10 * np.log10(1 / mse), rel=1e-5)
    # the empty white rest of the frame does not count: a larger frame gives the same PSNR
    big = torch.ones(3, 2 * h, 2 * w)
    big[:, :h, :w] = img
    gt_big = torch.ones(3, 2 * h, 2 * w)
    gt_big[:, :h, :w] = gt
    mask_big = torch.zeros(2 * h, 2 * w, dtype=torch.bool)
    mask_big[:h, :w] = gt_mask
    sil_big = torch.zeros(1, 2 * h, 2 * w)
    sil_big[0, :h, :w] = shifted.float()
    assert object_view_metrics(big, sil_big, gt_big, mask_big, params)["psnr"] == pytest.approx(rec["psnr"], rel=1e-6)
    assert object_view_metrics(torch.ones(3, h, w), torch.zeros(1, h, w), torch.ones(3, h, w), torch.zeros(h, w, dtype=torch.bool),
                               params) == {"empty": True}
    assert mean_metrics([rec, {"empty": True}])["views"] == 1


def test_visible_object_renders_hide_what_is_behind():
    """Four flat objects (two render passes of weights) side by side, and an opaque occluder in front of the
    left half of object 0: each object's visible render equals its plain render over white except where the
    occluder hides it, and there its weight is ~0."""
    from gaussian_renderer import render
    from scene.cameras import Camera
    from scene.gaussian_model import GaussianModel, rgb_to_sh0

    def disc_grid(x0, z, color, n=6, spacing=0.05, sigma=0.03, y0=-0.15):
        ij = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2).float()
        xy = ij * spacing + torch.tensor([x0, y0])
        m = len(xy)
        return GaussianModel(1, {
            # depths differ slightly: equal depths would composite in an arbitrary order
            "means": torch.cat([xy, z + 1e-3 * torch.arange(m, dtype=torch.float32)[:, None]], 1), "sh0": rgb_to_sh0(torch.tensor(color).repeat(m, 1)).reshape(m, 1, 3),
            "shN": torch.zeros(m, 3, 3), "opacities": torch.logit(torch.full((m,), 0.95)),
            "scales": torch.log(torch.tensor([sigma, sigma, sigma * 0.1])).repeat(m, 1),
            "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(m, 1)})

    objects = [disc_grid(-0.8 + 0.46 * i, 0.0, [0.2 + 0.2 * i, 0.5, 0.8 - 0.15 * i]) for i in range(4)]
    # in front of the lower left of object 0 (the camera is at z = -2, looking along +z)
    occluder = disc_grid(-0.6, -0.5, [0.1, 0.9, 0.1], n=4, spacing=0.04, y0=-0.11)
    cam = Camera(np.eye(3), np.array([0.0, 0.0, 2.0]), 120.0, 120.0, 80.0, 40.0, 160, 80, image_name="v")
    whole = GaussianModel.concatenate([occluder, *objects])
    labels = torch.cat([torch.full((len(occluder),), -1)] + [torch.full((len(o),), i) for i, o in enumerate(objects)])
    kw = dict(backend="torch")
    with torch.no_grad():
        seen = visible_object_renders(cam, whole, labels, 4, kw)
    hidden = render(cam, occluder, torch.zeros(3), **kw).alpha[0] > 0.9
    assert int(hidden.sum()) > 50
    free = ~(render(cam, occluder, torch.zeros(3), **kw).alpha[0] > 1e-4)
    for i, (image, weight) in enumerate(seen):
        with torch.no_grad():
            alone = render(cam, objects[i], torch.ones(3), **kw)
        assert torch.allclose(image[:, free], alone.image[:, free], atol=1e-4), i
        assert torch.allclose(weight[0][free], alone.alpha[0][free], atol=1e-4), i
        if i == 0:
            assert float(alone.alpha[0][hidden].mean()) > 0.5 and float(weight[0][hidden].max()) < 0.1
            assert torch.allclose(image[:, hidden], torch.ones_like(image[:, hidden]), atol=0.1)  # white where hidden
        else:
            assert torch.allclose(weight, alone.alpha, atol=1e-4)


def test_union_box_margin_and_clip():
    m = _square(50, 60, 10, 20, 5, 25)
    assert union_box([m], 0.0) == (10, 20, 5, 25)
    assert union_box([m], 0.5) == (5, 25, 0, 35)
    assert union_box([torch.zeros(4, 4, dtype=torch.bool)], 0.1) is None


def _cube_triangles(half=0.5):
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    faces = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1), (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4),
             (1, 5, 7), (1, 7, 3)]
    return v[np.array(faces)]


def test_geometry_metrics_on_a_cube():
    from utils.meshes import sample_triangles

    tri = _cube_triangles()
    rng = np.random.default_rng(1)
    on = sample_triangles(tri, 20000, rng)
    params = EvaluationParams(fscore_threshold=0.04, surface_samples=5000, emd_points=300)
    g = geometry_metrics(on, tri, params)
    assert g["accuracy_cm"] < 1e-6 and g["completeness_cm"] < 1.5 and g["fscore"] > 0.999 and g["emd_cm"] < 20.0  # EMD of subsamples: ~ their spacing
    # a cube 10 % larger: every point at least 5 cm off the surface (more near edges and corners); half the cube missing: recall halves
    g2 = geometry_metrics(on * 1.1, tri, params)
    assert 5.0 - 1e-9 <= g2["accuracy_cm"] < 6.0 and g2["precision"] < 0.1 and g2["emd_cm"] > g["emd_cm"]
    half = on[on[:, 2] > 0]
    g3 = geometry_metrics(half, tri, params)
    assert g3["precision"] == 1.0 and 0.35 < g3["recall"] < 0.65 and g3["completeness_cm"] > g["completeness_cm"]
    # units: the same cube in centimetres with --metres_per_unit 0.01 gives the same cm figures
    g4 = geometry_metrics(on * 110, tri * 100, EvaluationParams(fscore_threshold=0.04, surface_samples=5000, emd_points=300,
                                                                 metres_per_unit=0.01))
    assert g4["accuracy_cm"] == pytest.approx(g2["accuracy_cm"], rel=1e-6)


def test_emd_is_the_optimal_assignment():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 3))
    assert emd(a, a[rng.permutation(50)]) == pytest.approx(0.0, abs=1e-12)
    assert emd(a, a + [0.3, 0.0, 0.4]) == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError):
        emd(a, a[:10])


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def objects_case(tmp_path_factory):
    """A tiny demo scene whose "refined" objects are the GT surfaces and whose baselines are one side (x > median) of them."""
    from scene.gaussian_model import GaussianModel
    from tests.test_align_script import surface_object_ply
    from tests.test_refine import write_table_top

    base = tmp_path_factory.mktemp("eval")
    D, M = base / "scene", base / "model"
    run("scripts/make_demo_scene.py", str(D), "--num_views", "9", "--width", "160", "--height", "120", "--no-progress",
        "--iteration", "1")
    run("segmentation_2d.py", "-s", str(D), "--backend", "masks", "--quiet")
    (M / "gs_seg").mkdir(parents=True)
    (M / "refined_aligned").mkdir()
    refined = []
    for prompt in ("red box", "blue mug", "green ball"):
        full = M / "refined_aligned" / f"{prompt}.ply"
        surface_object_ply(str(D / "gt" / "meshes" / f"{prompt}.ply"), str(full), n=4000)
        g = GaussianModel.from_ply(str(full))
        refined.append(g)
        x = g.means[:, 0]
        g.subset(torch.nonzero(x > x.median()).flatten()).save_ply(str(M / "gs_seg" / f"{prompt}.ply"))
    GaussianModel.concatenate(refined).save_ply(str(M / "refined_aligned" / "refined_800.ply"))
    write_table_top(str(M / "gs_seg" / "remained.ply"))
    return D, M


def test_render_evaluates_refined_against_baseline(objects_case):
    D, M = objects_case
    args = ["render_3dgs.py", "-s", str(D), "-m", str(M), "-r", "1", "--iter", "800", "--eval", "--split_yml_name", "split.yml",
            "--skip_scene", "--emd_points", "200", "--surface_samples", "3000", "--quiet"]
    proc = run(*args)
    res = json.loads((M / "metrics.json").read_text())
    stems = res["test_views"]
    assert stems and all((M / d / f"{s}.png").is_file() for d in ("rendered_refined", "rendered_baseline") for s in stems)
    assert not (M / "rendered_scene").exists()  # no scene_refined.ply
    for prompt in ("red box", "blue mug", "green ball"):
        obj, geo = res["objects"][prompt], res["geometry"][prompt]
        # the full object beats its half on every measure
        assert obj["refined"]["iou"] > obj["baseline"]["iou"] and obj["refined"]["psnr"] > obj["baseline"]["psnr"]
        assert geo["refined"]["chamfer_cm"] < geo["baseline"]["chamfer_cm"] and geo["refined"]["fscore"] > geo["baseline"]["fscore"]
        assert prompt in proc.stdout
    assert res["mean"]["refined"]["iou"] > 0.5
    # re-running gives the same metrics
    run(*args)
    again = json.loads((M / "metrics.json").read_text())
    assert again["objects"] == res["objects"]
    # the objects hide each other in some test views: measured alone, the complete (GT-surface) objects
    # lose where the GT mask shows only their visible part (their colours are not the GT's: IoU only)
    run(*args, "--occlusion", "none")
    alone = json.loads((M / "metrics.json").read_text())
    assert "alone" in alone["convention"] and "inside its scene" in res["convention"]
    # (per view: the fixture's table top, a plane of Gaussians rather than the GT table, also trims a
    # little of the box's lower edge in the scene, so the mean moves less than the hidden views do)
    gain = [res["per_view"]["refined"][p][s]["iou"] - alone["per_view"]["refined"][p][s]["iou"]
            for p in res["per_view"]["refined"] for s in stems]
    assert max(gain) > 0.03, gain


def test_render_draws_refined_objects_in_their_mode(objects_case, tmp_path):
    """The refined objects are drawn in the mode post_refine_gs.py recorded (no record: its default,
    antialiased); the baseline always classic. Surface objects of sub-pixel Gaussians drawn classic
    come out fatter than their GT masks: lower IoU than antialiased, more rendered than GT pixels."""
    import shutil

    D, M = objects_case
    M2 = tmp_path / "m"
    shutil.copytree(M, M2)
    args = ["render_3dgs.py", "-s", str(D), "-m", str(M2), "--iter", "800", "--eval", "--split_yml_name", "split.yml",
            "--skip_scene", "--quiet", "--emd_points", "50", "--surface_samples", "500"]

    def measure(*extra):
        proc = run(*args, *extra, check=False)
        assert proc.returncode == 0, proc.stderr
        res = json.loads((M2 / "metrics.json").read_text())
        pixels = [(r["rendered_pixels"], r["gt_pixels"]) for v in res["per_view"]["refined"].values() for r in v.values() if "iou" in r]
        return res, proc, sum(a for a, _ in pixels) / sum(b for _, b in pixels)

    aa, proc, aa_ratio = measure()
    assert aa["rasterize_modes"] == {"refined": "antialiased", "baseline": "classic"}
    assert "post_refine_gs.json not found" in proc.stderr
    (M2 / "post_refine_gs.json").write_text(json.dumps({"stage": "post_refine_gs", "refine": {"proxy_rasterize_mode": "classic"}}))
    classic, _, classic_ratio = measure()
    assert classic["rasterize_modes"]["refined"] == "classic"
    assert classic["mean"]["refined"]["iou"] < aa["mean"]["refined"]["iou"] and classic_ratio > aa_ratio + 0.03, (classic_ratio, aa_ratio)
    assert classic["mean"]["baseline"] == aa["mean"]["baseline"]
    forced, _, _ = measure("--proxy_rasterize_mode", "antialiased")  # the option wins over the record
    assert forced["mean"]["refined"] == aa["mean"]["refined"]
    (M2 / "post_refine_gs.json").write_text("{not json")
    proc = run(*args, check=False)
    assert proc.returncode == 2 and "unreadable stage record" in proc.stderr and "Traceback" not in proc.stderr


def test_render_bad_input(objects_case, tmp_path):
    import shutil

    D, M = objects_case
    M2 = tmp_path / "m"
    shutil.copytree(M, M2)
    os.remove(M2 / "refined_aligned" / "blue mug.ply")
    common = ["render_3dgs.py", "-s", str(D), "-m", str(M2), "--eval", "--split_yml_name", "split.yml", "--skip_scene", "--quiet"]
    base = [*common, "--iter", "800"]
    proc = run(*base, check=False)
    assert proc.returncode == 2 and "refined object 'blue mug' not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(*common, "--iter", "5", check=False)
    assert proc.returncode == 2 and "refined iterations present: [800]" in proc.stderr
    proc = run(*base, "--gt_meshes", str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run(*base, "--box_margin", "-1", check=False)  # usage errors: status 2, the option named
    assert proc.returncode == 2 and "box_margin" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("render_3dgs.py", "-m", str(M2), "--quiet", check=False)  # no -s and no cfg_args
    assert proc.returncode == 2 and "-s/--source_path is required" in proc.stderr
    proc = run("render_3dgs.py", "-s", str(D), "-m", str(tmp_path / "nowhere"), "--quiet", check=False)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr
    shutil.copy(M / "refined_aligned" / "blue mug.ply", M2 / "refined_aligned" / "blue mug.ply")
    os.remove(M2 / "gs_seg" / "remained.ply")
    proc = run(*base, check=False)
    assert proc.returncode == 2 and "remained.ply: not found" in proc.stderr and "--occlusion none" in proc.stderr
