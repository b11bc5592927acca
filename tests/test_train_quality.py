"""Training on the ray-cast demo scene (rendered independently of our rasterizer) must really
fit it: test-view PSNR after a short CPU schedule is compared with a documented bar
(docs/benchmarks.md) and with the untrained initialisation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

# Bar for the small schedule below (24 views of 96x72, 400 steps on CPU). Measured 2026-11-24:
# 14.8 dB for the initial SfM-point model -> 21.8 dB after training (docs/benchmarks.md); the bar
# leaves 1.8 dB for differences between torch builds and CPUs.
PSNR_BAR_DB = 20.0
MIN_GAIN_DB = 5.0


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality") / "D"
    subprocess.run([sys.executable, "scripts/make_demo_scene.py", str(out), "--num_views", "24", "--width", "96",
                    "--height", "72", "--num_points", "4000", "--supersample", "2", "--no-progress"],
                   cwd=ROOT, check=True, capture_output=True)
    return out


def test_training_raises_test_psnr_above_bar(small_scene, tmp_path):
    from scene.dataset import load_scene
    from scene.gaussian_model import GaussianModel
    from utils.arguments import ModelParams, OptimizationParams, PipelineParams
    from utils.training import evaluate, load_views, train

    scene = load_scene(str(small_scene), eval=True, split_yml_name="split.yml")
    mp = ModelParams(source_path=str(small_scene), model_path=str(tmp_path), sh_degree=0, eval=True, split_yml_name="split.yml")
    op = OptimizationParams(iterations=400, densify_from_iter=100, densify_until_iter=300, densification_interval=100,
                            densify_grad_threshold=0.0004, position_lr_max_steps=400)
    pp = PipelineParams()
    dev = torch.device("cpu")
    init = GaussianModel.from_points(scene.points_xyz, scene.points_rgb, 0, op.init_opacity)
    before = evaluate(init, load_views(scene.test_cameras, dev, quiet=True), torch.zeros(3), pp, "torch")["psnr"]
    result = train(scene, str(tmp_path), mp, op, pp, dev, test_iterations=[400], save_iterations=[400], quiet=True)
    after = result.test_metrics[-1]["psnr"]
    print(f"\ntest PSNR: initial {before:.2f} dB -> {after:.2f} dB after 400 steps in {result.seconds:.1f} s "
          f"({len(result.model)} Gaussians)")
    assert after > PSNR_BAR_DB
    assert after > before + MIN_GAIN_DB
    assert (tmp_path / "point_cloud" / "iteration_400" / "point_cloud.ply").is_file()
