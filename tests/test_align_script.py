"""align_3dgs_clpe_9dof.py end to end on the demo scene, and its bad-input contract.

The scene is the generated demo (256x192, 24 views); the segmented object is made from the GT
mesh (surface Gaussians) instead of a trained model, so the test exercises stage 7 alone: the
stand-in generator output (``trellis_img2gs.py --backend file``), truncation, then alignment with
sift, evaluated against the true transform by scripts/eval_alignment.py.
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
    run("scripts/make_demo_scene.py", str(D), "--num_views", "24", "--no-progress", "--iteration", "1")
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


@pytest.mark.slow
def test_demo_alignment_runs_and_reports_its_error(case):
    """The whole stage on the demo: every output, the schedule from description.yml, and the error against the
    true transform printed. The issue's accuracy bars (3 deg / 3 % / 3 %) are NOT met yet on this 256x192 scene
    (issue #4 stays open; figures in docs/benchmarks.md), so they are not asserted here."""
    D, M = case
    proc = run("align_3dgs_clpe_9dof.py", "-s", str(D), "-m", str(M), "--name", PROMPT, "--num_iterations", "2", *ALIGN_ARGS)
    assert PROMPT in proc.stdout
    out = M / "generated_aligned"
    rec = json.loads((out / f"{PROMPT}_transform.json").read_text())
    n_rounds = len(rec["rounds"])
    assert (out / f"{PROMPT}.ply").is_file() and all((out / f"{PROMPT}_{i}.ply").is_file() for i in range(n_rounds))
    assert rec["schedule"]["sources"]["cam_list_interval"] == "description.yml"
    assert rec["schedule"]["sources"]["num_iterations"] == "option" and n_rounds <= 2
    A = np.asarray(rec["matrix"])[:3, :3]
    assert np.allclose(np.asarray(rec["rotation"]) @ np.asarray(rec["scale_frame"]).T @ np.diag(rec["scale"])
                       @ np.asarray(rec["scale_frame"]), A, atol=1e-8)
    assert any(f.endswith(".png") for f in os.listdir(M / "visual_match" / PROMPT))
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from eval_alignment import evaluate

    res = evaluate(str(D), str(M))[PROMPT]
    f = res["final"]
    print(f"\n{PROMPT}: rotation {f['rotation_deg']:.2f} deg, scale errors {np.round(100 * np.asarray(f['scale_errors']), 2)} %, "
          f"translation {100 * f['translation_rel']:.2f} % of the size, Chamfer {100 * res['chamfer']['chamfer']:.3f} cm "
          f"(true pose {100 * res['chamfer']['with_true_transform']:.3f} cm); {rec['seconds']:.1f} s")
    assert np.isfinite(f["rotation_deg"]) and res["chamfer"]["with_true_transform"] < 0.002  # the evaluation itself is sound


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
