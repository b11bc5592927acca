#!/usr/bin/env python
"""Stage 9: render the test views and evaluate the refined objects against the 3DGS baseline.

    python render_3dgs.py -s D -m M -r 1 --iter 800 --eval --split_yml_name split.yml [--gt_meshes DIR]

1. The trained scene (always): M/test/ours_<N>/renders/<stem>.png, gt/<stem>.png, metrics.json
   (mean PSNR, SSIM, LPIPS when its weights are available) and per_view.json — the 3DGS layout
   (``--iteration`` picks the trained iteration, ``--train`` adds the training views).
2. The objects, once post_refine_gs.py has run (M/refined_aligned/refined_<iter>.ply; ``--iter``
   -1 = the latest): at every test view
   M/rendered_refined/<stem>.png   the refined objects together over white (RGBA, alpha = render alpha)
   M/rendered_baseline/<stem>.png  the segmented objects M/gs_seg/<prompt>.ply together over white
   M/rendered_scene/<stem>.png     the completed scene M/refined_aligned/scene_refined.ply
   M/metrics.json                  per object and mean, refined vs baseline: object-masked PSNR, SSIM,
                                   LPIPS (when available) and mask IoU against D/masked_image_rgba/<prompt>/
                                   (utils.evaluation), each object seen inside its scene (M/gs_seg/remained.ply
                                   and the other objects occlude it as in the frame; --occlusion none: alone),
                                   and with --gt_meshes the geometry completion metrics (Chamfer both ways in
                                   cm, F-score, EMD)
Options not given on the command line come from the training run's M/cfg_args.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Optional

from utils.arguments import ModelParams, PipelineParams, add_group, device_from, extract, read_cfg_args
from utils.evaluation import EvaluationParams
from utils.cli import check_stage_options, parse_model_stage, run_main

log = logging.getLogger("render_3dgs")

REFINED_DIR = "refined_aligned"
OUT_DIRS = {"baseline": "rendered_baseline", "scene": "rendered_scene"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, PipelineParams, "pipeline")
    add_group(p, EvaluationParams, "evaluation")
    p.add_argument("--iteration", type=int, default=-1, help="trained iteration to render (-1: the latest saved)")
    p.add_argument("--iter", type=int, default=-1, help="refinement iterations of M/refined_aligned/refined_<iter>.ply to evaluate "
                                                        "(-1: the latest present)")
    p.add_argument("--gt_meshes", default="", help="folder with one GT mesh per object (<prompt>.ply): adds geometry completion "
                                                   "metrics (default: D/gt/meshes when it exists)")
    p.add_argument("--not_render_proposed", action="store_true", help="skip the refined objects")
    p.add_argument("--not_render_baseline", action="store_true", help="skip the baseline objects")
    p.add_argument("--render_refined_dir_name", default="rendered_refined", help="folder (in M) of the refined renders")
    p.add_argument("--skip_scene", action="store_true", help="do not render and evaluate the trained scene (part 1)")
    p.add_argument("--train", action="store_true", help="also render the training views")
    p.add_argument("--skip_test", action="store_true", help="do not render the test views")
    p.add_argument("--proxy_rasterize_mode", default="auto", choices=["auto", "antialiased", "classic"],
                   help="how the refined objects are drawn (the trained scene and the baseline objects: classic, as trained); "
                        "auto = the mode post_refine_gs.py refined them in (M/post_refine_gs.json)")
    p.add_argument("--lpips_net", default="vgg", choices=["vgg", "alex"], help="LPIPS backbone (computed only when its weights are available)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def main() -> None:
    parser = build_parser()
    args = parse_model_stage(parser)
    import torch

    from scene.dataset import load_scene
    from scene.gaussian_model import GaussianModel
    from utils.metrics import load_lpips
    from utils.model_io import resolve_iteration

    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    pp = extract(args, PipelineParams)
    ep = extract(args, EvaluationParams)
    check_stage_options(parser, mp, ep)
    device = device_from(mp.device)
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    bg = torch.tensor([1.0, 1.0, 1.0] if mp.white_background else [0.0, 0.0, 0.0], device=device)
    trained = None
    if not args.skip_scene:  # read every input before the (slow, chatty) LPIPS set-up
        n, ply = resolve_iteration(mp.model_path, args.iteration)
        trained = (n, GaussianModel.from_ply(ply).to(device))
    refined = _refined_file(mp.model_path, args.iter)
    # the refined objects' mode, from stage 8's record: a bad record stops here, before anything is written
    refined_mode = _refined_mode(mp.model_path, args.proxy_rasterize_mode) if refined is not None else None
    lpips_fn = load_lpips(args.lpips_net, device)
    if trained is not None:
        _render_scene(args, mp, pp, scene, trained, bg, device, lpips_fn)
    if refined is None:
        log.info("no refined objects in %s yet (run post_refine_gs.py): the object evaluation is skipped",
                 os.path.join(mp.model_path, REFINED_DIR))
        return
    _evaluate_objects(args, mp, pp, ep, scene, refined, refined_mode, bg, device, lpips_fn)


def _render_scene(args, mp, pp, scene, trained, bg, device, lpips_fn) -> None:
    """Part 1: the trained scene ``(iteration, model)`` at the test (and training) views, in the 3DGS layout."""
    import torch
    from tqdm import tqdm

    from gaussian_renderer import render
    from utils.images import save_image
    from utils.io import write_json
    from utils.metrics import psnr, ssim_metric
    from utils.training import load_views

    n, model = trained

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



def _refined_file(model_path: str, iteration: int) -> Optional[tuple[int, str]]:
    """(n, path) of M/refined_aligned/refined_<n>.ply (``iteration`` or the latest), None when there is none."""
    from utils.errors import InputError

    d = os.path.join(model_path, REFINED_DIR)
    if not os.path.isdir(d):
        return None
    its = sorted(int(m.group(1)) for f in os.listdir(d) if (m := re.fullmatch(r"refined_(\d+)\.ply", f)))
    if not its:
        return None
    if iteration < 0:
        n = its[-1]
    elif iteration in its:
        n = iteration
    else:
        raise InputError(os.path.join(d, f"refined_{iteration}.ply"), f"not found; refined iterations present: {its}")
    return n, os.path.join(d, f"refined_{n}.ply")


def _evaluate_objects(args, mp, pp, ep, scene, refined, refined_mode, bg, device, lpips_fn) -> None:
    """Part 2: refined vs baseline objects at the test views (see the module docstring)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from gaussian_renderer import render
    from scene.dataset import load_description
    from scene.gaussian_model import GaussianModel
    from utils.errors import InputError
    from utils.evaluation import geometry_metrics, mean_metrics, object_view_metrics, visible_object_renders
    from utils.images import load_rgba_and_mask, save_image
    from utils.io import write_json
    from utils.meshes import read_mesh_triangles

    n, joint_path = refined
    prompts = load_description(mp.source_path).prompts
    cams = sorted(scene.test_cameras, key=lambda c: c.image_name)
    if not cams:
        raise InputError(os.path.join(mp.source_path, mp.split_yml_name or ""),
                         "no test views: the objects are evaluated at held-out views (run with --eval --split_yml_name)")
    kinds = [k for k, skip in (("refined", args.not_render_proposed), ("baseline", args.not_render_baseline)) if not skip]
    files = {"refined": lambda p: os.path.join(mp.model_path, REFINED_DIR, f"{p}.ply"),
             "baseline": lambda p: os.path.join(mp.model_path, "gs_seg", f"{p}.ply")}
    hints = {"refined": "run post_refine_gs.py first", "baseline": "run segmentation_3dgs.py first"}
    for k in kinds:
        for p in prompts:
            if not os.path.isfile(files[k](p)):
                raise InputError(files[k](p), f"{k} object {p!r} not found ({hints[k]})")
    remained_ply = os.path.join(mp.model_path, "gs_seg", "remained.ply")
    if ep.occlusion == "scene" and not os.path.isfile(remained_ply):
        raise InputError(remained_ply, "not found: the objects are measured inside their scene (run segmentation_3dgs.py, "
                                       "or --occlusion none to measure them alone)")
    gt_dir = os.path.join(mp.source_path, "masked_image_rgba")
    for p in prompts:
        missing = [c.image_name for c in cams if not os.path.isfile(os.path.join(gt_dir, p, f"{c.image_name}.png"))]
        if missing:
            raise InputError(os.path.join(gt_dir, p), f"no mask of object {p!r} for test views {missing[:5]} (run segmentation_2d.py)")

    models = {k: {p: GaussianModel.from_ply(files[k](p)).to(device) for p in prompts} for k in kinds}
    joint = {}
    if "refined" in kinds:
        joint["refined"] = GaussianModel.from_ply(joint_path).to(device)
    if "baseline" in kinds:
        joint["baseline"] = GaussianModel.concatenate(list(models["baseline"].values()))
    # the mode each kind of object is drawn in (the trained scene and baseline objects: classic, as trained)
    mode = {"refined": refined_mode, "baseline": "classic"}
    whole = {}  # kind -> (the object inside its scene: remained + all objects of the kind, object index per Gaussian)
    if ep.occlusion == "scene":
        remained = GaussianModel.from_ply(remained_ply).to(device)
        for k in kinds:
            parts = [remained] + [models[k][p] for p in prompts]
            labels = torch.cat([torch.full((len(m),), i - 1, dtype=torch.long) for i, m in enumerate(parts)]).to(device)
            whole[k] = (GaussianModel.concatenate(parts), labels)
    scene_ply = os.path.join(mp.model_path, REFINED_DIR, "scene_refined.ply")
    scene_model = GaussianModel.from_ply(scene_ply).to(device) if os.path.isfile(scene_ply) else None
    scene_aa = None  # scene_refined.ply = remained.ply + the refined objects (post_refine_gs.py): the latter in their mode
    if scene_model is not None and refined_mode == "antialiased":
        n_obj = sum(len(m) for m in models["refined"].values()) if "refined" in kinds else len(GaussianModel.from_ply(joint_path))
        if n_obj > len(scene_model):
            raise InputError(scene_ply, f"{len(scene_model)} Gaussians, fewer than the {n_obj} of the refined objects it must end with")
        scene_aa = torch.arange(len(scene_model), device=device) >= len(scene_model) - n_obj
    out_dirs = {"refined": os.path.join(mp.model_path, args.render_refined_dir_name),
                **{k: os.path.join(mp.model_path, v) for k, v in OUT_DIRS.items()}}
    white = torch.ones(3, device=device)
    kw = dict(backend=mp.renderer, near_plane=pp.near_plane, far_plane=pp.far_plane, eps2d=pp.eps2d)
    per_view = {k: {p: {} for p in prompts} for k in kinds}
    written = {k: set() for k in out_dirs}
    with torch.no_grad():
        for cam in tqdm(cams, desc="evaluating objects", disable=args.quiet):
            stem, size = cam.image_name, (cam.width, cam.height)
            for k, model in joint.items():
                out = render(cam, model, white, rasterize_mode=mode[k], **kw)
                save_image(os.path.join(out_dirs[k], f"{stem}.png"), out.image.clamp(0, 1), out.alpha.clamp(0, 1))
                written[k].add(f"{stem}.png")
            if scene_model is not None:
                out = render(cam, scene_model, bg, antialiased_mask=scene_aa, **kw)
                save_image(os.path.join(out_dirs["scene"], f"{stem}.png"), out.image.clamp(0, 1))
                written["scene"].add(f"{stem}.png")
            gts = {}
            for p in prompts:
                path = os.path.join(gt_dir, p, f"{stem}.png")
                rgb, alpha, mask = load_rgba_and_mask(path, size, ep.mask_threshold)
                mask = mask[0].to(device)
                a = (alpha if alpha is not None else mask[None].float().cpu()).to(device)
                gt = rgb.to(device) * a + (1.0 - a)
                gts[p] = (gt, mask)
            for k in kinds:
                if ep.occlusion == "scene":
                    model, labels = whole[k]
                    seen = visible_object_renders(cam, model, labels, len(prompts), kw,
                                                  antialiased_mask=(labels >= 0) if mode[k] == "antialiased" else None)
                else:
                    seen = [(o.image, o.alpha) for o in (render(cam, models[k][p], white, rasterize_mode=mode[k], **kw) for p in prompts)]
                for p, (image, weight) in zip(prompts, seen):
                    per_view[k][p][stem] = object_view_metrics(image, weight, *gts[p], ep, lpips_fn)
    for k, d in out_dirs.items():  # renders of views that are no longer test views
        if os.path.isdir(d) and written[k]:
            for f in os.listdir(d):
                if f.endswith(".png") and f not in written[k]:
                    os.remove(os.path.join(d, f))

    objects = {p: {k: mean_metrics(list(per_view[k][p].values())) for k in kinds} for p in prompts}
    mean = {k: {m: float(np.mean([objects[p][k][m] for p in prompts if m in objects[p][k]]))
                for m in ("psnr", "ssim", "lpips", "iou") if any(m in objects[p][k] for p in prompts)} for k in kinds}
    result = {"schema": 1, "refined_iteration": n, "test_views": [c.image_name for c in cams], "objects": objects, "mean": mean,
              "per_view": per_view, "lpips_available": lpips_fn is not None, "rasterize_modes": {k: mode[k] for k in kinds},
              "convention": ("object's visible part inside its scene (remained.ply + all objects of its kind)" if ep.occlusion == "scene"
                             else "object rendered alone") + " over white vs D/masked_image_rgba/<prompt>/<stem>.png over white; "
                            "PSNR/SSIM/LPIPS on the box of GT mask and rendered silhouette (+box_margin); IoU of silhouette "
                            "(alpha > alpha_threshold) and GT mask", "options": vars(ep)}
    mesh_dir = args.gt_meshes or os.path.join(mp.source_path, "gt", "meshes")
    if args.gt_meshes and not os.path.isdir(mesh_dir):
        raise InputError(mesh_dir, "--gt_meshes folder not found")
    if os.path.isdir(mesh_dir):
        geo = {}
        for p in prompts:
            mesh = os.path.join(mesh_dir, f"{p}.ply")
            if not os.path.isfile(mesh):
                log.warning("no GT mesh %s: no geometry metrics for %r", mesh, p)
                continue
            tri = read_mesh_triangles(mesh)
            geo[p] = {}
            for k in kinds:
                m = models[k][p]
                keep = (m.opacities.reshape(-1) >= ep.min_opacity).cpu().numpy()
                geo[p][k] = geometry_metrics(m.means.detach().cpu().numpy()[keep], tri, ep)
        result["geometry"] = geo
        result["geometry_meshes"] = os.path.abspath(mesh_dir)
    write_json(os.path.join(mp.model_path, "metrics.json"), result)
    _print_summary(result, prompts, kinds)


def _refined_mode(model_path: str, requested: str) -> str:
    """The rasterize mode of the refined objects: ``requested``, or with "auto" the mode recorded by
    post_refine_gs.py (``refine.proxy_rasterize_mode`` in M/post_refine_gs.json; "classic" in records
    written before the option existed; its default without a record)."""
    import json

    from gaussian_renderer import RASTERIZE_MODES
    from utils.errors import InputError
    from utils.refine import RefineParams

    if requested != "auto":
        return requested
    path = os.path.join(model_path, "post_refine_gs.json")
    if not os.path.isfile(path):
        mode = RefineParams().proxy_rasterize_mode
        log.warning("%s not found: the refined objects are drawn in post_refine_gs.py's default mode, %s "
                    "(--proxy_rasterize_mode names it)", path, mode)
        return mode
    try:
        with open(path) as f:
            mode = json.load(f)["refine"].get("proxy_rasterize_mode", "classic")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"unreadable stage record ({type(e).__name__}: {e}); name the refined objects' mode with "
                               "--proxy_rasterize_mode antialiased|classic") from e
    if mode not in RASTERIZE_MODES:
        raise InputError(path, f"refine.proxy_rasterize_mode is {mode!r}, expected one of {RASTERIZE_MODES}")
    return mode


def _print_summary(result: dict, prompts: list, kinds: list) -> None:
    """A table: one row per object and kind (PSNR, SSIM, LPIPS, IoU, Chamfer, F-score)."""
    head = f"{'object':<16}{'kind':<10}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}{'IoU':>8}{'Chamfer cm':>12}{'F-score':>9}"
    print(f"objects at {len(result['test_views'])} test views (refined_{result['refined_iteration']}):")
    print(head)
    for p in prompts + ["mean"]:
        for k in kinds:
            m = result["mean"][k] if p == "mean" else result["objects"][p][k]
            g = result.get("geometry", {}).get(p, {}).get(k, {})
            cells = [f"{m[x]:8.3f}" if x in m else f"{'n/a':>8}" for x in ("psnr", "ssim", "lpips", "iou")]
            ch = f"{g['chamfer_cm']:12.3f}" if g else f"{'':>12}"
            fs = f"{g['fscore']:9.3f}" if g else f"{'':>9}"
            print(f"{p:<16}{k:<10}{''.join(cells)}{ch}{fs}")


if __name__ == "__main__":
    run_main(main)
