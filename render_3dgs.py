#!/usr/bin/env python
"""Stage 9 (scene part): render a trained 3DGS model at the test (and train) views and evaluate.

    python render_3dgs.py -s D -m M [-r 1] [--iteration N] [--train] [--eval --split_yml_name split.yml]

Writes M/<split>/ours_<N>/renders/<stem>.png, gt/<stem>.png, metrics.json (mean PSNR, SSIM and
LPIPS when its weights are available) and per_view.json — the 3DGS layout. Options not given on
the command line come from the training run's M/cfg_args.
"""

from __future__ import annotations

import argparse
import logging
import os

from utils.arguments import ModelParams, PipelineParams, add_group, device_from, extract, read_cfg_args
from utils.cli import run_main, setup_logging

log = logging.getLogger("render_3dgs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, PipelineParams, "pipeline")
    p.add_argument("--iteration", type=int, default=-1, help="trained iteration to render (-1: the latest saved)")
    p.add_argument("--train", action="store_true", help="also render the training views")
    p.add_argument("--skip_test", action="store_true", help="do not render the test views")
    p.add_argument("--lpips_net", default="vgg", choices=["vgg", "alex"], help="LPIPS backbone (computed only when its weights are available)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def main() -> None:
    args = build_parser().parse_args()
    setup_logging(args.quiet)
    import torch
    from tqdm import tqdm

    from gaussian_renderer import render
    from scene.dataset import load_scene
    from scene.gaussian_model import GaussianModel
    from utils.images import save_image
    from utils.io import write_json
    from utils.metrics import load_lpips, psnr, ssim_metric
    from utils.model_io import resolve_iteration
    from utils.training import load_views

    if not args.model_path:
        raise SystemExit("error: -m/--model_path is required")
    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    pp = extract(args, PipelineParams)
    if not mp.source_path:
        raise SystemExit("error: -s/--source_path is required (no cfg_args in the model folder)")
    device = device_from(mp.device)
    n, ply = resolve_iteration(mp.model_path, args.iteration)
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    model = GaussianModel.from_ply(ply).to(device)
    bg = torch.tensor([1.0, 1.0, 1.0] if mp.white_background else [0.0, 0.0, 0.0], device=device)
    lpips_fn = load_lpips(args.lpips_net, device)

    sets = []
    if not args.skip_test:
        sets.append(("test", scene.test_cameras))
    if args.train:
        sets.append(("train", scene.train_cameras))
    for name, cams in sets:
        if not cams:
            log.warning("no %s views to render%s", name, " (train with --eval and a split to get test views)" if name == "test" else "")
            continue
        views = load_views(cams, device, desc=f"loading {name} images", quiet=args.quiet)
        out_dir = os.path.join(mp.model_path, name, f"ours_{n}")
        per_view = {}
        with torch.no_grad():
            for v in tqdm(views, desc=f"rendering {name}", disable=args.quiet):
                out = render(v.camera, model, bg, backend=mp.renderer, near_plane=pp.near_plane, far_plane=pp.far_plane, eps2d=pp.eps2d)
                img = out.image.clamp(0, 1)
                gt = v.target(bg)
                save_image(os.path.join(out_dir, "renders", f"{v.camera.image_name}.png"), img)
                save_image(os.path.join(out_dir, "gt", f"{v.camera.image_name}.png"), gt)
                rec = {"psnr": psnr(img, gt), "ssim": ssim_metric(img, gt)}
                if lpips_fn is not None:
                    rec["lpips"] = lpips_fn(img, gt)
                per_view[v.camera.image_name] = rec
        keys = list(next(iter(per_view.values())).keys())
        mean = {k: sum(r[k] for r in per_view.values()) / len(per_view) for k in keys}
        metrics = {"iteration": n, "views": len(per_view), **mean, "lpips_available": lpips_fn is not None}
        write_json(os.path.join(out_dir, "metrics.json"), metrics)
        write_json(os.path.join(out_dir, "per_view.json"), per_view)
        print(f"{name} @ {n}: PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.4f}" + (f", LPIPS {mean['lpips']:.4f}" if "lpips" in mean else ", LPIPS n/a") + f" over {len(per_view)} views -> {out_dir}")


if __name__ == "__main__":
    run_main(main)
