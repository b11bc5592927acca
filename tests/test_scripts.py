"""Every script end to end on a tiny generated scene, and the bad-input contract.

Bad input must give ONE line on stderr naming the file and the problem, exit status != 0, and
write nothing.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import yaml

from tests.script_runner import run


def tree(path) -> dict:
    """{relative path: (size, mtime_ns)} of every file under path."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return out


def test_train_then_render_end_to_end(tiny_scene, tmp_path):
    M = tmp_path / "M"
    proc = run("train_3dgs.py", "-s", str(tiny_scene), "-m", str(M), "--eval", "--split_yml_name", "split.yml",
               "--iterations", "60", "--test_iterations", "30", "60", "--save_iterations", "30",
               "--densify_from_iter", "10", "--densify_until_iter", "50", "--densification_interval", "20", "--quiet")
    assert "trained 60 steps" in proc.stdout
    for f in ("cfg_args", "cameras.json", "input.ply", "train_args.json", "test_metrics.json",
              "point_cloud/iteration_30/point_cloud.ply", "point_cloud/iteration_60/point_cloud.ply"):
        assert (M / f).is_file(), f
    metrics = json.loads((M / "test_metrics.json").read_text())
    assert [m["iteration"] for m in metrics] == [30, 60]
    assert all(np.isfinite(m["psnr"]) and m["views"] > 0 for m in metrics)
    cfg = (M / "cfg_args").read_text()
    assert cfg.startswith("Namespace(") and "split_yml_name='split.yml'" in cfg
    cams = json.loads((M / "cameras.json").read_text())
    assert len(cams) == 12 and {"cx", "cy", "fx", "fy", "position", "rotation"} <= set(cams[0])

    # render_3dgs takes -s, -r, --eval and the split from cfg_args
    proc = run("render_3dgs.py", "-m", str(M), "--quiet")
    out = M / "test" / "ours_60"
    split = yaml.safe_load((tiny_scene / "split.yml").read_text())
    assert sorted(p[:-4] for p in os.listdir(out / "renders")) == sorted(split["test"])
    assert sorted(os.listdir(out / "gt")) == sorted(os.listdir(out / "renders"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["iteration"] == 60 and m["views"] == len(split["test"]) and np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1
    assert "PSNR" in proc.stdout

    # resume from a checkpoint
    M2 = tmp_path / "M2"
    run("train_3dgs.py", "-s", str(tiny_scene), "-m", str(M2), "--iterations", "20", "--test_iterations", "-1",
        "--checkpoint_iterations", "10", "--densify_from_iter", "100", "--quiet")
    assert (M2 / "chkpnt10.pth").is_file()
    run("train_3dgs.py", "-s", str(tiny_scene), "-m", str(M2), "--iterations", "20", "--test_iterations", "-1",
        "--start_checkpoint", str(M2 / "chkpnt10.pth"), "--densify_from_iter", "100", "--quiet")


def _copy_scene(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("gt", "masks", "depths_cam"))
    return dst


def _expect_bad_input(args, scene, M, fragment):
    before = tree(scene)
    proc = run(*args, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert tree(scene) == before, "the scene folder was modified"
    assert not os.path.exists(M) or not os.listdir(M), "outputs were written"


TRAIN = ["train_3dgs.py", "--iterations", "5", "--test_iterations", "-1", "--quiet"]


def test_no_sparse_folder(tiny_scene, tmp_path):
    D = _copy_scene(tiny_scene, tmp_path / "D")
    shutil.rmtree(D / "sparse")
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M")], D, tmp_path / "M", "sparse")


def test_split_naming_unknown_images(tiny_scene, tmp_path):
    D = _copy_scene(tiny_scene, tmp_path / "D")
    split = yaml.safe_load((D / "split.yml").read_text())
    split["test"].append("frame_99999")
    (D / "bad_split.yml").write_text(yaml.safe_dump(split))
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M"), "--eval", "--split_yml_name", "bad_split.yml"],
                      D, tmp_path / "M", "frame_99999")


def make_first_camera_opencv(D) -> None:
    """Rewrite D's COLMAP model (binary) with its first camera as a distorted OPENCV camera."""
    from scene.colmap import ColmapCamera, read_model, write_model

    cams, imgs, pts = read_model(D / "sparse")
    cid = sorted(cams)[0]
    c = cams[cid]
    cams[cid] = ColmapCamera(c.id, "OPENCV", c.width, c.height, np.concatenate([c.params, np.zeros(4)]))
    for f in os.listdir(D / "sparse"):
        os.remove(D / "sparse" / f)
    write_model(cams, imgs, pts, D / "sparse", ext=".bin")


def test_non_pinhole_camera(tiny_scene, tmp_path):
    D = _copy_scene(tiny_scene, tmp_path / "D")
    make_first_camera_opencv(D)
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M")], D, tmp_path / "M", "convert.py")


def test_truncated_colmap_binary(tiny_scene, tmp_path):
    D = _copy_scene(tiny_scene, tmp_path / "D")
    data = (D / "sparse" / "images.bin").read_bytes()
    (D / "sparse" / "images.bin").write_bytes(data[: len(data) // 2])
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M")], D, tmp_path / "M", "images.bin")


def test_missing_image(tiny_scene, tmp_path):
    D = _copy_scene(tiny_scene, tmp_path / "D")
    os.remove(D / "images" / "frame_00003.png")
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M")], D, tmp_path / "M", "frame_00003")


def test_truncated_ply_for_render(tiny_scene, tmp_path):
    M = tmp_path / "M"
    ply = M / "point_cloud" / "iteration_7" / "point_cloud.ply"
    ply.parent.mkdir(parents=True)
    from scene.gaussian_model import GaussianModel

    GaussianModel.from_points(np.random.rand(50, 3), np.random.rand(50, 3)).save_ply(ply)
    ply.write_bytes(ply.read_bytes()[:-300])
    before = tree(M)
    proc = run("render_3dgs.py", "-s", str(tiny_scene), "-m", str(M), "--quiet", check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "point_cloud.ply" in lines[0] and lines[0].startswith("error: "), proc.stderr
    assert tree(M) == before


def test_depth_supervision_runs(tiny_scene, tmp_path):
    """Sensor depths (uint16 mm) and 'estimated' depths (any affine scale) both feed the loss."""
    M = tmp_path / "M"
    proc = run("train_3dgs.py", "-s", str(tiny_scene), "-m", str(M), "--iterations", "15", "--test_iterations", "-1",
               "--depths", "depths_cam", "--depths_est", "depths_cam", "--densify_from_iter", "100", "--quiet")
    assert "trained 15 steps" in proc.stdout
    # a depth folder missing a view is bad input
    D = _copy_scene(tiny_scene, tmp_path / "D")
    shutil.copytree(tiny_scene / "depths_cam", D / "depths_cam")
    os.remove(D / "depths_cam" / "frame_00002.png")
    _expect_bad_input([*TRAIN, "-s", str(D), "-m", str(tmp_path / "M2"), "--depths", "depths_cam"], D, tmp_path / "M2", "frame_00002")


def test_default_cuda_allocator_respects_the_users_setting():
    from utils.cli import EXPANDABLE_SEGMENTS, default_cuda_allocator

    env = {}
    assert default_cuda_allocator(env) and env == {"PYTORCH_CUDA_ALLOC_CONF": EXPANDABLE_SEGMENTS}
    for var in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        env = {var: "max_split_size_mb:128"}
        assert not default_cuda_allocator(env) and env == {var: "max_split_size_mb:128"}
