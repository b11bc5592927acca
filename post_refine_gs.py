#!/usr/bin/env python
"""Stage 8: tune the aligned proxies against the masked training views, with the pose fixed.

    python post_refine_gs.py -s D -m M -r 1 --images D/masked_image_rgba/masked --sh_degree 0 \\
        --iterations 800 --eval --split_yml_name split.yml
        [--tune_opacity] [--tune_geometry --max_offset 0.02] [--background black|white] [--no_scene_occlusion]

Colours are always tuned; opacities with --tune_opacity; small bounded geometry updates (centres within
--max_offset of the object's size, log-scales within --max_scale_change, an anchor term) with
--tune_geometry. All proxies form one model rendered together with the rest of the scene
(M/gs_seg/remained.ply, frozen), so that scene content occludes them as in the views; the loss is the
mask-area-normalised L1 plus D-SSIM on the union-mask box, over a fixed background. The method and
every option: utils/refine.py.

Reads:
    M/generated/*.ply                 the object names (sorted; the .bak files of stage 6 are not objects)
    M/generated_aligned/<name>.ply    the aligned proxy of each object (stage 7)
    M/gs_seg/remained.ply             the rest of the scene (stage 3; not needed with --no_scene_occlusion)
    D/sparse + the split file         the training cameras (-r as in 3DGS, default -1)
    --images (default masked_image_rgba/masked; relative to D, or absolute, or relative to the working
                                      folder as in the seed README's D/masked_image_rgba/masked)
                                      RGBA frames: RGB = the full frame, alpha = the union mask of the objects
    <images>/../<name>/<stem>.png     per-object masks, when present: the per-object L1 of the report
Writes (each file atomically, after every input was checked and the refinement ran):
    M/refined_aligned/<name>.ply              each refined proxy (SH degree --sh_degree)
    M/refined_aligned/refined_<iterations>.ply all refined proxies together
    M/refined_aligned/scene_refined.ply       M/gs_seg/remained.ply + the refined proxies (when remained exists)
    M/post_refine_gs.json                     the resolved options, inputs, per-object loss before/after, timings
Other files in M/refined_aligned/ (e.g. refined_<n>.ply of runs with another --iterations) are left alone.

--sh_degree: the proxies are degree 0 (generator output). 0 (the README's value, and the default of this
stage: it does not inherit the training's degree from cfg_args) tunes the base colour only; 1..4 add
view-dependent bands that start at zero and are tuned at feature_lr / 20, and the outputs carry that degree.
-w/--white_background is the same as --background white (the training's cfg_args value is not inherited).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import time

from utils.arguments import ModelParams, PipelineParams, add_group, extract, read_cfg_args, stage_record
from utils.cli import check_stage_options, default_cuda_allocator, parse_model_stage, run_main
from utils.errors import InputError
from utils.refine import RefineParams

log = logging.getLogger("post_refine_gs")

GENERATED_DIR = "generated"
ALIGNED_DIR = "generated_aligned"
OUT_DIR = "refined_aligned"
DEFAULT_IMAGES = os.path.join("masked_image_rgba", "masked")
"""The RGBA union masks of stage 1 (relative to D): the only ground truth this stage fits."""
SCENE_FILE = "scene_refined.ply"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, PipelineParams, "pipeline")
    add_group(p, RefineParams, "refinement")
    p.add_argument("--no_scene_occlusion", "--no-scene_occlusion", dest="scene_occlusion", action="store_false",
                   help="refine the proxies alone, without M/gs_seg/remained.ply in front of or behind them "
                        "(otherwise a missing remained.ply is an error)")
    p.add_argument("--detect_anomaly", action="store_true", help="enable torch.autograd anomaly detection")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def resolve_images(source_path: str, images: str) -> str:
    """The RGBA folder: ``images`` if absolute, else under D, else (the seed README's
    ``D/masked_image_rgba/masked`` with a relative D) relative to the working folder."""
    if os.path.isabs(images):
        return images
    under_d = os.path.join(source_path, images)
    if os.path.isdir(under_d):
        return os.path.abspath(under_d)
    if os.path.isdir(images):
        return os.path.abspath(images)
    return under_d


def object_names(model_path: str) -> list[str]:
    """The sorted stems of M/generated/*.ply (``<name>.ply.bak`` is not a ``.ply``)."""
    gen = os.path.join(model_path, GENERATED_DIR)
    if not os.path.isdir(gen):
        raise InputError(gen, "folder of the generated proxies not found (run trellis_img2gs.py first)")
    names = sorted(os.path.basename(f)[: -len(".ply")] for f in glob.glob(os.path.join(gen, "*.ply")))
    if not names:
        raise InputError(gen, "no proxy (<name>.ply) found (run trellis_img2gs.py first)")
    return names


def _check_inputs(model_path: str, names: list[str], scene_occlusion: bool, sh_degree: int) -> tuple[dict, dict]:
    """Every model-side file, checked and read once, before anything else.

    Returns (paths: {"aligned": {name: path}, "remained": path or None}, models: {"aligned": {name:
    GaussianModel at ``sh_degree``}, "remained": GaussianModel or None}), on the CPU.
    """
    from scene.gaussian_model import GaussianModel

    paths: dict = {"aligned": {}, "remained": None}
    models: dict = {"aligned": {}, "remained": None}
    for name in names:
        path = os.path.join(model_path, ALIGNED_DIR, f"{name}.ply")
        if not os.path.isfile(path):
            raise InputError(path, f"aligned proxy of object {name!r} not found (run align_3dgs_clpe_9dof.py first)")
        model = GaussianModel.from_ply(path, sh_degree)
        if len(model) < 2:
            raise InputError(path, f"the aligned proxy of object {name!r} has fewer than 2 Gaussians")
        paths["aligned"][name], models["aligned"][name] = path, model
    remained = os.path.join(model_path, "gs_seg", "remained.ply")
    if os.path.isfile(remained):
        paths["remained"], models["remained"] = remained, GaussianModel.from_ply(remained)  # a corrupt file fails here
    elif scene_occlusion:
        raise InputError(remained, "the rest of the scene not found (run segmentation_3dgs.py first, or pass "
                                   "--no_scene_occlusion to refine the proxies without scene occlusion)")
    return paths, models


def main() -> None:
    default_cuda_allocator()
    parser = build_parser()
    args = parse_model_stage(parser)
    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    # not inherited from training's cfg_args: the proxies are degree 0, the ground truth is the RGBA masks
    mp.sh_degree = args.sh_degree if args.sh_degree is not None else 0
    mp.images = args.images if args.images is not None else DEFAULT_IMAGES
    mp.resolution = args.resolution if args.resolution is not None else -1  # 3DGS's default, as stage 7
    pp = extract(args, PipelineParams)
    rp = extract(args, RefineParams)
    if args.white_background:  # only when given on the command line (sentinel): the model group's -w = --background white
        rp.background = "white"
    check_stage_options(parser, mp, rp)
    if not 0 <= mp.sh_degree <= 4:
        parser.error(f"--sh_degree must be in 0..4, got {mp.sh_degree}")

    import torch

    from scene.dataset import load_scene
    from scene.gaussian_model import GaussianModel
    from utils.arguments import device_from
    from utils.images import load_mask, load_rgba_and_mask
    from utils.io import file_sha256, write_json
    from utils.refine import FrozenScene, ProxySet, RenderSettings, make_view, refine

    t_start = time.perf_counter()
    names = object_names(mp.model_path)
    paths, loaded = _check_inputs(mp.model_path, names, args.scene_occlusion, mp.sh_degree)
    if not os.path.isdir(mp.source_path):
        raise InputError(mp.source_path, "scene folder not found")
    images_dir = resolve_images(mp.source_path, mp.images)
    if not os.path.isdir(images_dir):
        raise InputError(images_dir, "image folder not found (this stage fits the RGBA union masks of segmentation_2d.py: "
                                     "--images masked_image_rgba/masked)")
    scene = load_scene(mp.source_path, images_dir, mp.resolution, mp.eval, mp.split_yml_name)
    cams = sorted(scene.train_cameras, key=lambda c: c.image_name)
    if not cams:
        raise InputError(os.path.join(mp.source_path, mp.split_yml_name or ""), "no training views")
    device = device_from(mp.device)
    torch.autograd.set_detect_anomaly(args.detect_anomaly)

    # per-object masks (reporting only): siblings of the union folder, used when every object has one for every view
    mask_root = os.path.dirname(os.path.normpath(images_dir))
    with_masks = [n for n in names if all(os.path.isfile(os.path.join(mask_root, n, f"{c.image_name}.png")) for c in cams)]
    if len(with_masks) < len(names):
        log.info("no per-object masks under %s for %s: their per-object L1 is not reported", mask_root,
                 sorted(set(names) - set(with_masks)))

    views, skipped = [], []
    for cam in cams:
        rgb, alpha, mask = load_rgba_and_mask(cam.image_path, (cam.width, cam.height), rp.mask_threshold)
        if alpha is None:
            raise InputError(cam.image_path, "has no alpha channel: --images must be the RGBA union masks of segmentation_2d.py "
                                             "(D/masked_image_rgba/masked)")
        obj = None
        if len(with_masks) == len(names):
            obj = torch.cat([load_mask(os.path.join(mask_root, n, f"{cam.image_name}.png"), (cam.width, cam.height),
                                       rp.mask_threshold) for n in names]).float()
        view = make_view(cam, rgb, mask, rp.box_margin, rp.min_mask_pixels, obj, device)
        if view is None:
            skipped.append(cam.image_name)
        else:
            views.append(view)
    if not views:
        raise InputError(images_dir, f"the union mask has fewer than --min_mask_pixels {rp.min_mask_pixels} pixels in every "
                                     f"training view ({len(cams)} views): nothing to refine against")
    if skipped:
        log.warning("%d training view(s) without the objects in view are not used: %s", len(skipped), skipped)

    proxies = ProxySet.from_models(names, [loaded["aligned"][n] for n in names], mp.sh_degree)
    proxies.model.to(device)
    remained = loaded["remained"].to(device) if loaded["remained"] is not None else None
    frozen = FrozenScene.from_model(remained) if (remained is not None and args.scene_occlusion) else None
    tuned = ["colour"] + (["opacity"] if rp.tune_opacity else []) + (["geometry"] if rp.tune_geometry else [])
    log.info("refining %d object(s) (%s; %d Gaussians) over %d training views at %dx%d%s; tuning %s", len(names),
             ", ".join(f"{n}: {c}" for n, c in zip(names, proxies.counts)), sum(proxies.counts), len(views), cams[0].width,
             cams[0].height, f", with {len(frozen)} scene Gaussians" if frozen is not None else ", without the scene",
             " + ".join(tuned))

    settings = RenderSettings(mp.renderer, pp.near_plane, pp.far_plane, pp.eps2d, rp.proxy_rasterize_mode)
    result = refine(proxies, views, rp, settings, frozen, args.quiet)
    refined = proxies.split(result.model)

    out_dir = os.path.join(mp.model_path, OUT_DIR)
    outputs = {}
    for name in names:
        outputs[name] = os.path.join(out_dir, f"{name}.ply")
        refined[name].save_ply(outputs[name])
    joint_path = os.path.join(out_dir, f"refined_{rp.iterations}.ply")
    result.model.save_ply(joint_path)
    scene_path = None
    if remained is not None:
        scene_path = os.path.join(out_dir, SCENE_FILE)
        GaussianModel.concatenate([remained, result.model.to(device)]).save_ply(scene_path)

    objects = {}
    for k, name in enumerate(names):
        b, a = result.before["objects"].get(name, {}), result.after["objects"].get(name, {})
        objects[name] = {"gaussians": proxies.counts[k], "size": proxies.sizes[k], "l1_before": b.get("l1"),
                         "l1_after": a.get("l1"), "views": a.get("views", 0), "aligned": os.path.abspath(paths["aligned"][name]),
                         "aligned_sha256": file_sha256(paths["aligned"][name]), "output": os.path.abspath(outputs[name])}
        l1b, l1a = b.get("l1"), a.get("l1")
        change = f"masked L1 {l1b:.4f} -> {l1a:.4f}" if (l1b is not None and l1a is not None) else "no per-object masks"
        print(f"{name}: {proxies.counts[k]} Gaussians, {change} -> {outputs[name]}")
    seconds = time.perf_counter() - t_start
    write_json(os.path.join(mp.model_path, "post_refine_gs.json"), stage_record(
        "post_refine_gs", model={**vars(mp), "images": images_dir}, pipeline=pp, refine=rp,
        other={
            "objects": objects,
            "tuned": tuned,
            "scene_occlusion": frozen is not None,
            "remained": os.path.abspath(paths["remained"]) if paths["remained"] else None,
            "remained_gaussians": len(remained) if remained is not None else 0,
            "device": str(device),
            "train_views": [v.name for v in views],
            "skipped_views": skipped,
            "loss_before": {k: result.before[k] for k in ("loss", "l1", "views")},
            "loss_after": {k: result.after[k] for k in ("loss", "l1", "views")},
            "loss_curve": result.loss_curve(),
            "max_offset_fraction": result.max_offset_fraction,
            "max_log_scale_change": result.max_log_scale_change,
            "outputs": {"objects": {n: os.path.abspath(p) for n, p in outputs.items()}, "joint": os.path.abspath(joint_path),
                        "scene": os.path.abspath(scene_path) if scene_path else None},
            "refine_seconds": round(result.seconds, 2),
            "seconds": round(seconds, 2),
        }))
    print(f"refined {len(names)} object(s) in {rp.iterations} steps "
          f"({result.seconds:.1f} s): union masked L1 {result.before['l1']:.4f} -> {result.after['l1']:.4f}, loss "
          f"{result.before['loss']:.4f} -> {result.after['loss']:.4f} -> {out_dir}")


if __name__ == "__main__":
    run_main(main)
