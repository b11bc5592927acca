#!/usr/bin/env python
"""Stage 2: optimise a 3D Gaussian Splatting model of a scene folder.

    python train_3dgs.py -s D -m M --eval --split_yml_name split.yml [--test_iterations -1]

Writes M/cfg_args, M/cameras.json, M/input.ply, M/point_cloud/iteration_<n>/point_cloud.ply,
M/test_metrics.json (with --test_iterations) and M/train_args.json (the resolved options).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import uuid

from utils.arguments import ModelParams, OptimizationParams, PipelineParams, add_group, device_from, extract, format_cfg_args, stage_record
from utils.cli import default_cuda_allocator, run_main, setup_logging
from utils.errors import InputError

log = logging.getLogger("train_3dgs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model")
    add_group(p, OptimizationParams, "optimisation")
    add_group(p, PipelineParams, "pipeline")
    p.add_argument("--test_iterations", type=int, nargs="+", default=[7_000, 30_000], help="evaluate mean PSNR/L1 on the test views at these steps (-1: never)")
    p.add_argument("--save_iterations", type=int, nargs="+", default=[7_000, 30_000], help="save the Gaussians at these steps (the last step is always saved)")
    p.add_argument("--checkpoint_iterations", type=int, nargs="+", default=[], help="save a resumable checkpoint (M/chkpnt<n>.pth) at these steps")
    p.add_argument("--start_checkpoint", type=str, default=None, help="resume from this checkpoint")
    p.add_argument("--detect_anomaly", action="store_true", help="enable torch.autograd anomaly detection")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main() -> None:
    default_cuda_allocator()
    args = build_parser().parse_args()
    setup_logging(args.quiet)
    import torch

    from scene.dataset import load_scene
    from utils.io import write_json
    from utils.training import load_scene_views, train

    mp = extract(args, ModelParams)
    op = extract(args, OptimizationParams)
    pp = extract(args, PipelineParams)
    if not mp.source_path:
        raise SystemExit("error: -s/--source_path is required")
    if not mp.model_path:
        mp.model_path = os.path.join("output", uuid.uuid4().hex[:10])
    device = device_from(mp.device)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)

    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    log.info("%d train / %d test views at %dx%d, %d points, extent %.3f", len(scene.train_cameras), len(scene.test_cameras),
             scene.train_cameras[0].width, scene.train_cameras[0].height, len(scene.points_xyz), scene.extent)

    if args.start_checkpoint and not os.path.isfile(args.start_checkpoint):
        raise InputError(args.start_checkpoint, "checkpoint not found")
    views = load_scene_views(scene, mp, op, device, args.quiet)  # validates every image before anything is written

    os.makedirs(mp.model_path, exist_ok=True)
    cfg = {**dataclasses.asdict(mp), "source_path": os.path.abspath(mp.source_path), "model_path": mp.model_path}
    from utils.io import atomic_path

    with atomic_path(os.path.join(mp.model_path, "cfg_args")) as tmp, open(tmp, "w") as f:
        f.write(format_cfg_args(cfg))
    write_json(os.path.join(mp.model_path, "cameras.json"), [c.to_json() for c in scene.test_cameras + scene.train_cameras])
    write_point_ply(os.path.join(mp.model_path, "input.ply"), scene.points_xyz, scene.points_rgb)
    extra = {k: getattr(args, k) for k in ("test_iterations", "save_iterations", "checkpoint_iterations", "start_checkpoint")}
    write_json(os.path.join(mp.model_path, "train_args.json"), stage_record("train_3dgs", model=mp, optimisation=op, pipeline=pp, other=extra))

    save_iterations = sorted(set(args.save_iterations + [op.iterations]))
    result = train(scene, mp.model_path, mp, op, pp, device, args.test_iterations, save_iterations, args.checkpoint_iterations, args.start_checkpoint, args.quiet, views)
    summary = {
        "iterations": result.iterations,
        "seconds": round(result.seconds, 2),
        "num_gaussians": len(result.model),
        "peak_gpu_memory_bytes": result.peak_memory_bytes,
        "device": str(device),
        "test": result.test_metrics,
    }
    write_json(os.path.join(mp.model_path, "train_summary.json"), summary)
    print(f"trained {result.iterations} steps in {result.seconds:.1f} s: {len(result.model)} Gaussians -> {mp.model_path}")


def write_point_ply(path: str, xyz, rgb) -> None:
    """The SfM points as a PLY (x y z nx ny nz red green blue), like 3DGS's input.ply."""
    import numpy as np
    from plyfile import PlyData, PlyElement

    from utils.io import atomic_path

    n = len(xyz)
    dtype = [(k, "f4") for k in ("x", "y", "z", "nx", "ny", "nz")] + [(k, "u1") for k in ("red", "green", "blue")]
    rec = np.zeros(n, dtype=dtype)
    rec["x"], rec["y"], rec["z"] = np.asarray(xyz, dtype=np.float32).T
    cols = np.clip(np.round(np.asarray(rgb) * 255), 0, 255).astype(np.uint8)
    rec["red"], rec["green"], rec["blue"] = cols.T
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(rec, "vertex")]).write(tmp)


if __name__ == "__main__":
    run_main(main)
