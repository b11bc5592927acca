"""align_3dgs_clpe_9dof.py end to end on the demo scene, and its bad-input contract.

The scene is the generated demo at 512x384 (24 views; its objects span 70-90 pixels) with stand-in
proxies of 40000 surface Gaussians; the segmented object is made from the GT mesh (surface
Gaussians) instead of a trained model, so the test exercises stage 7 alone: the stand-in generator
output (``trellis_img2gs.py --backend file``), truncation, then alignment with sift and the schedule
of description.yml, evaluated against the true transform by scripts/eval_alignment.py.

At the default 256x192 (objects of 35-45 pixels) with 4000-Gaussian proxies the bars are not met:
there the stand-in's splats are a pixel wide and bias the scale (docs/benchmarks.md, stage 7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

PROMPT = "red box"


def run(*args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def surface_object_ply(mesh_path: str, out: str, n: int = 3000, seed: int = 0) -> None:
    """Write a Gaussian PLY of small opaque Gaussians on a GT mesh (a stand-in for gs_seg/<prompt>.ply)."""
    from scene.gaussian_ply import C0, GaussianArrays, write_gaussian_ply
    from utils.meshes import read_mesh_triangles, sample_triangles

    tri = read_mesh_triangles(mesh_path)
    xyz = sample_triangles(tri, n, np.random.default_rng(seed)).astype(np.float32)
    g = GaussianArrays(
        xyz=xyz,
        f_dc=np.full((n, 3), (0.5 - 0.5) / C0, np.float32),
        f_rest=np.zeros((n, 0), np.float32),
        opacity=np.full((n, 1), 2.0, np.float32),
        scale=np.full((n, 3), np.log(0.002), np.float32),
        rot=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
        normals=np.zeros((n, 3), np.float32),
    )
    write_gaussian_ply(out, g)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    base = tmp_path_factory.mktemp("align")
    D, M = base / "scene", base / "model"
    run("scripts/make_demo_scene.py", str(D), "--num_views", "24", "--no-progress", "--iteration", "1", "--width", "512",
        "--height", "384", "--proxy_gaussians", "40000")
    run("segmentation_2d.py", "-s", str(D), "--backend", "masks", "--quiet")
    for prompt in ("red box", "blue mug", "green ball"):
        os.makedirs(M / "gs_seg", exist_ok=True)
        surface_object_ply(str(D / "gt" / "meshes" / f"{prompt}.ply"), str(M / "gs_seg" / f"{prompt}.ply"))
        sel = M / "masked_image_rgba_selected" / prompt
        sel.mkdir(parents=True, exist_ok=True)
        shutil.copy(D / "masked_image_rgba" / prompt / "frame_00000.png", sel / "img_1.png")
    run("trellis_img2gs.py", "-m", str(M), "--backend", "file", "--proxy", str(D / "gt" / "proxies"), "--quiet")
    run("truncation_opacity.py", "-m", str(M), "--quiet")
    return D, M


ALIGN_ARGS = ["--eval", "--split_yml_name", "split.yml", "--matcher", "sift", "--num_rotations", "24", "--quiet"]


BARS = {"rotation_deg": 3.0, "max_scale_error": 0.03, "translation_rel": 0.03}  # issue #4


@pytest.mark.slow
def test_demo_alignment_meets_the_accuracy_bars(case):
    """The whole stage on the demo, all three objects (a box, a mug, a ball whose rotation only its texture
    gives): every output, the schedule from description.yml, and rotation < 3 deg, every axis scale < 3 %,
    translation < 3 % of the size against the true transform; the Chamfer distance to the GT surface printed."""
    D, M = case
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D), "-m", str(M), *ALIGN_ARGS)
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from eval_alignment import evaluate

    results = evaluate(str(D), str(M))
    assert sorted(results) == ["blue mug", "green ball", "red box"]
    out = M / "generated_aligned"
    for prompt, res in results.items():
        assert prompt in proc.stdout
        rec = json.loads((out / f"{prompt}_transform.json").read_text())
        n_rounds = len(rec["rounds"])
        assert (out / f"{prompt}.ply").is_file() and all((out / f"{prompt}_{i}.ply").is_file() for i in range(n_rounds))
        assert all(rec["schedule"]["sources"][k] == "description.yml" for k in ("num_iterations", "cam_list_interval"))
        A = np.asarray(rec["matrix"])[:3, :3]
        assert np.allclose(np.asarray(rec["rotation"]) @ np.asarray(rec["scale_frame"]).T @ np.diag(rec["scale"])
                           @ np.asarray(rec["scale_frame"]), A, atol=1e-8)
        assert any(f.endswith(".png") for f in os.listdir(M / "visual_match" / prompt))
        f = res["final"]
        print(f"\n{prompt}: rotation {f['rotation_deg']:.2f} deg, scale errors {np.round(100 * np.asarray(f['scale_errors']), 2)} %, "
              f"translation {100 * f['translation_rel']:.2f} % of the size, Chamfer {100 * res['chamfer']['chamfer']:.3f} cm "
              f"(true pose {100 * res['chamfer']['with_true_transform']:.3f} cm); coarse start by {rec['coarse']['chosen_by']}; "
              f"{rec['seconds']:.1f} s")
        assert res["chamfer"]["with_true_transform"] < 0.002  # the evaluation itself is sound
        for key, bar in BARS.items():
            assert f[key] < bar, (prompt, key, f[key])


def test_bad_input_missing_proxy(case, tmp_path):
    D, M = case
    M2 = tmp_path / "m"
    shutil.copytree(M, M2)
    shutil.rmtree(M2 / "generated_aligned", ignore_errors=True)
    os.remove(M2 / "generated" / f"{PROMPT}.ply")
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D), "-m", str(M2), *ALIGN_ARGS, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "proxy of object 'red box' not found" in proc.stderr
    assert not (M2 / "generated_aligned").exists()


def test_bad_input_missing_selected_views_and_masks(case, tmp_path):
    D, M = case
    M2 = tmp_path / "m"
    shutil.copytree(M, M2)
    shutil.rmtree(M2 / "masked_image_rgba_selected")
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D), "-m", str(M2), *ALIGN_ARGS, check=False)
    assert proc.returncode == 2 and "run view_selection.py first" in proc.stderr and "Traceback" not in proc.stderr
    D2 = tmp_path / "d"
    shutil.copytree(D, D2)
    shutil.rmtree(D2 / "masked_image_rgba" / "blue mug")
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D2), "-m", str(M), *ALIGN_ARGS, check=False)
    assert proc.returncode == 2 and "mask folder of object 'blue mug' not found" in proc.stderr


def test_bad_input_all_truncated_proxy(case, tmp_path):
    D, M = case
    M2 = tmp_path / "m"
    shutil.copytree(M, M2)
    shutil.rmtree(M2 / "generated_aligned", ignore_errors=True)
    from scene.gaussian_ply import read_gaussian_ply, write_gaussian_ply

    path = M2 / "generated" / f"{PROMPT}.ply"
    g = read_gaussian_ply(str(path))
    g.opacity[:] = -5.0  # every Gaussian below --min_opacity
    write_gaussian_ply(str(path), g)
    before = path.read_bytes()
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D), "-m", str(M2), "--name", PROMPT, *ALIGN_ARGS, check=False)
    assert proc.returncode == 2 and "degenerate proxy" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == before and not (M2 / "generated_aligned").exists()


def test_cli_accepts_the_authors_command():
    proc = run("align_3dgs_clpe_9dof.py", "--help")
    for flag in ("--name", "--matcher", "--eval", "--split_yml_name", "--num_iterations", "--opt_shape_iterations",
                 "--cam_list_interval", "--reprojection_threshold", "--rotations_dir"):
        assert flag in proc.stdout
