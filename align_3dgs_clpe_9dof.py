#!/usr/bin/env python
"""Stage 7: align each proxy to its object in the scene (scale, rotation, translation, per-axis shape).

    python align_3dgs_clpe_9dof.py -s D -m M [--eval --split_yml_name split.yml] [-r -1]
        [--name NAME] [--matcher auto|mast3r|lightglue|sift] [--num_iterations N] [...]

Coarse start from robust extents and a multi-start ICP scored in both directions, then closed-loop
rounds: render the proxy at a subset of the training cameras, match the real masked crop against
the proxy render, lift both sides to 3D with rendered depth (per-camera intrinsics, crop offsets),
solve a RANSAC similarity or, in `opt_shape_iterations`, a robust anisotropic fit, and apply it
exactly to the Gaussians. The method and every option: utils/clpe.py.

Reads:
    D/description.yml (prompts; num_iterations, opt_shape_iterations, cam_list_interval when given),
    D/sparse + the split file (training cameras, sorted by name; -r as in 3DGS, default -1),
    D/masked_image_rgba/<prompt>/<stem>.png (RGB = frame, alpha = mask) of every training view,
    M/gs_seg/<prompt>.ply (the segmented object), M/generated/<prompt>.ply (the truncated proxy),
    M/masked_image_rgba_selected/<prompt>/ (stage 4 must have run for the object).
Writes (atomically; per object):
    M/generated_aligned/<prompt>_<i>.ply   the proxy after round i
    M/generated_aligned/<prompt>.ply       the final aligned proxy
    M/generated_aligned/<prompt>_transform.json
                                           the total 4x4 proxy -> world map (x_w = A x_p + t) with its
                                           rotation / per-axis scale / scale frame / translation, the
                                           coarse start and every round's matches, inliers, change
    M/visual_match/<prompt>/<i>_<stem>.png real crop | proxy render with the matches (inliers coloured)
    M/align_3dgs_clpe_9dof.json            the resolved options
Stale <prompt>_<i>.ply and match pictures of an earlier run that this run does not rewrite are
removed; nothing else is touched. Every input is checked before anything is written.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import time

from utils.arguments import ModelParams, PipelineParams, add_group, extract, read_cfg_args, stage_record
from utils.cli import check_stage_options, parse_model_stage, run_main
from utils.clpe import AlignmentParams
from utils.errors import InputError
from utils.matching import MatchingParams

log = logging.getLogger("align_3dgs_clpe_9dof")

MASK_DIR = "masked_image_rgba"
SELECTED_DIR = "masked_image_rgba_selected"
OUT_DIR = "generated_aligned"
MATCH_DIR = "visual_match"
MIN_PROXY_GAUSSIANS = 10
"""A proxy needs at least this many Gaussians above --min_opacity to be aligned."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, PipelineParams, "pipeline")
    add_group(p, AlignmentParams, "alignment")
    add_group(p, MatchingParams, "matching")
    p.add_argument("--name", default=None, help="align only this prompt ('None' or absent: every prompt of description.yml)")
    p.add_argument("--rotations_dir", default=None, help="accepted for the authors' command line and ignored: the start "
                                                         "rotations are made in code (--num_rotations)")
    p.add_argument("--no-visual_match", dest="visual_match", action="store_false", help="do not write the match pictures")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    return p


def _check_inputs(mp: ModelParams, ap: AlignmentParams, prompts: list[str], cams) -> dict:
    """Every file the run needs, checked before anything is written. Returns per-prompt paths."""
    import numpy as np

    from scene.gaussian_ply import read_gaussian_ply
    from utils.masks import mask_paths

    selected = os.path.join(mp.model_path, SELECTED_DIR)
    if not os.path.isdir(selected):
        raise InputError(selected, "folder of the selected views not found (run view_selection.py first)")
    masks = mask_paths(mp.source_path, prompts, [c.image_name for c in cams])
    out = {}
    for prompt in prompts:
        sel = os.path.join(selected, prompt)
        if not os.path.isdir(sel) or not glob.glob(os.path.join(sel, "img_*.png")):
            raise InputError(sel, f"no selected views of object {prompt!r} (run view_selection.py first)")
        seg = os.path.join(mp.model_path, "gs_seg", f"{prompt}.ply")
        if not os.path.isfile(seg):
            raise InputError(seg, f"segmented object {prompt!r} not found (run segmentation_3dgs.py first)")
        proxy = os.path.join(mp.model_path, "generated", f"{prompt}.ply")
        if not os.path.isfile(proxy):
            raise InputError(proxy, f"proxy of object {prompt!r} not found (run trellis_img2gs.py and truncation_opacity.py first)")
        g = read_gaussian_ply(proxy)
        if len(g.xyz) == 0:
            raise InputError(proxy, "the proxy has no Gaussians (all truncated? re-run truncation_opacity.py with a lower --threshold)")
        n_ok = int(np.count_nonzero(1.0 / (1.0 + np.exp(-g.opacity.reshape(-1).astype(np.float64))) >= ap.min_opacity))
        if n_ok < MIN_PROXY_GAUSSIANS:
            raise InputError(proxy, f"only {n_ok} Gaussians with opacity >= --min_opacity {ap.min_opacity}: a degenerate proxy")
        if len(read_gaussian_ply(seg).xyz) < 4:
            raise InputError(seg, "the segmented object has fewer than 4 Gaussians; nothing to align to")
        out[prompt] = {"object": seg, "proxy": proxy, "masks": masks[prompt]}
    return out


def main() -> None:
    parser = build_parser()
    args = parse_model_stage(parser)
    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    mp.resolution = args.resolution if args.resolution is not None else -1  # the authors' README gives no -r: 3DGS's -1
    pp = extract(args, PipelineParams)
    ap = extract(args, AlignmentParams)
    mt = extract(args, MatchingParams)
    check_stage_options(parser, mp, ap, mt)

    import numpy as np
    import torch
    from tqdm import tqdm

    from gaussian_renderer import render
    from scene.dataset import load_description, load_scene
    from scene.gaussian_model import GaussianModel
    from utils.arguments import device_from
    from utils.clpe import RealView, align, draw_matches, resolve_schedule, sharpen_opacities, transform_record
    from utils.geometry import apply_affine
    from utils.images import load_rgba_and_mask
    from utils.io import atomic_path, file_sha256, write_json
    from utils.matching import make_matcher

    t_start = time.perf_counter()
    desc = load_description(mp.source_path)
    prompts = desc.prompts
    if args.name not in (None, "None"):
        if args.name not in prompts:
            raise InputError(os.path.join(mp.source_path, "description.yml"), f"--name {args.name!r} is not one of the prompts {prompts}")
        prompts = [args.name]
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    cams = sorted(scene.train_cameras, key=lambda c: c.image_name)
    if not cams:
        raise InputError(os.path.join(mp.source_path, mp.split_yml_name or ""), "no training views")
    paths = _check_inputs(mp, ap, prompts, cams)
    device = device_from(mp.device)
    matcher = make_matcher(mt, device)
    schedule = resolve_schedule(ap, desc, len(cams))
    log.info("aligning %d object(s) with %s over %d training views at %dx%d: %d rounds (shape rounds %s), every %d-th camera",
             len(prompts), matcher.name, len(cams), cams[0].width, cams[0].height, schedule.num_iterations,
             schedule.opt_shape_iterations, schedule.cam_list_interval)
    black = torch.zeros(3, device=device)

    depth_models: dict[int, tuple] = {}  # id(model) -> (model, its copy with sharpened opacities)

    def depth_model(model):
        """The copy of ``model`` whose opacities are 1 - (1 - o)^power (utils.clpe.sharpen_opacities): its
        expected depth is the depth of the first surface. Kept for the object and the current proxy only."""
        entry = depth_models.get(id(model))
        if entry is None or entry[0] is not model:
            if len(depth_models) >= 2:
                depth_models.clear()
            params = dict(model.raw())
            params["opacities"] = sharpen_opacities(params["opacities"].detach(), ap.depth_opacity_power)
            entry = depth_models[id(model)] = (model, GaussianModel(model.max_sh_degree, params))
        return entry[1]

    def render_np(camera, model, role):
        """(rgb, alpha, first-surface depth) as numpy; the proxy in --proxy_rasterize_mode, the object as trained."""
        mode = ap.proxy_rasterize_mode if role == "proxy" else "classic"
        kw = dict(backend=mp.renderer, near_plane=pp.near_plane, far_plane=pp.far_plane, eps2d=pp.eps2d, rasterize_mode=mode)
        with torch.no_grad():
            out = render(camera, model, black, **kw)
            depth = out.depth if ap.depth_opacity_power == 1 else render(camera, depth_model(model), black, **kw).depth
        return (out.image.permute(1, 2, 0).cpu().numpy().astype(np.float64), out.alpha[0].cpu().numpy().astype(np.float64),
                depth[0].cpu().numpy().astype(np.float64))

    out_dir = os.path.join(mp.model_path, OUT_DIR)
    summary = {}
    for prompt in prompts:
        t0 = time.perf_counter()
        obj = GaussianModel.from_ply(paths[prompt]["object"]).to(device)
        proxy = GaussianModel.from_ply(paths[prompt]["proxy"]).to(device)
        with torch.no_grad():
            keep = proxy.opacities >= ap.min_opacity
        proxy_xyz = proxy.means.detach()[keep.reshape(-1)].cpu().numpy().astype(np.float64)
        obj_xyz = obj.means.detach().cpu().numpy().astype(np.float64)
        views = []
        for cam, mpath in zip(cams, paths[prompt]["masks"]):
            rgb, _, mask = load_rgba_and_mask(mpath, (cam.width, cam.height), ap.mask_threshold)
            mask = mask[0].numpy()
            views.append(RealView(cam, (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8), mask))
        log.info("%s: %d object Gaussians, %d proxy Gaussians (%d above opacity %.2f)", prompt, len(obj), len(proxy),
                 len(proxy_xyz), ap.min_opacity)

        def make_proxy(M):
            return apply_affine(proxy, M[:3, :3], M[:3, 3])

        written: list[str] = []
        match_dir = os.path.join(mp.model_path, MATCH_DIR, prompt)

        def on_round(it, M, rec, pairs):
            path = os.path.join(out_dir, f"{prompt}_{it}.ply")
            make_proxy(M).save_ply(path)
            written.append(path)
            if not args.visual_match:
                return
            from PIL import Image

            for p, inl in pairs:
                if p.note:
                    continue
                pic = draw_matches(p.image_real, p.image_proxy, p.xy_real, p.xy_proxy, inl if len(inl) else None)
                pic_path = os.path.join(match_dir, f"{it}_{p.name}.png")
                with atomic_path(pic_path) as tmp:
                    Image.fromarray(pic, "RGB").save(tmp, format="PNG", compress_level=1)  # diagnostics: fast, not small
                written.append(pic_path)
            log.info("%s round %d (%s): %d pairs from %d cameras, %d inliers%s", prompt, it, rec.kind, rec.pairs, len(pairs),
                     rec.inliers, f", SKIPPED: {rec.skipped}" if rec.skipped else "")

        def progress(views_it, it):
            return tqdm(views_it, desc=f"{prompt}: round {it}", unit="view", disable=args.quiet, leave=False)

        result = align(obj_xyz, proxy_xyz, views, obj, make_proxy, render_np, matcher, schedule, ap, on_round, progress)
        final = os.path.join(out_dir, f"{prompt}.ply")
        make_proxy(result.matrix).save_ply(final)
        solved = [r for r in result.rounds if not r.skipped]
        if not solved:
            log.warning("%s: no round found enough matches; the result is the coarse (ICP) alignment only", prompt)
        record = {
            "schema": 1,
            "object": prompt,
            "convention": "x_world = matrix @ [x_proxy, 1]; x_proxy in the frame of M/generated/<prompt>.ply; "
                          "matrix[:3,:3] = rotation @ scale_frame.T @ diag(scale) @ scale_frame",
            **transform_record(result.matrix),
            "proxy": os.path.abspath(paths[prompt]["proxy"]),
            "proxy_sha256": file_sha256(paths[prompt]["proxy"]),
            "object_gaussians": os.path.abspath(paths[prompt]["object"]),
            "matcher": matcher.name,
            "object_size": result.object_size,
            "coarse": {**result.coarse, "matrix": result.coarse_matrix.tolist()},
            "schedule": {"num_iterations": schedule.num_iterations, "opt_shape_iterations": schedule.opt_shape_iterations,
                         "cam_list_interval": schedule.cam_list_interval, "sources": schedule.sources},
            "rounds": [vars(r) for r in result.rounds],
            "rounds_solved": len(solved),
            "stopped_early": result.stopped_early,
            "seconds": time.perf_counter() - t0,
        }
        write_json(os.path.join(out_dir, f"{prompt}_transform.json"), record)
        _remove_stale(out_dir, match_dir, prompt, set(written + [final]))
        summary[prompt] = {"rounds_solved": len(solved), "rounds": len(result.rounds), "seconds": round(record["seconds"], 2),
                           "scale": record["scale"], "matcher": matcher.name}
        print(f"{prompt}: {len(solved)}/{len(result.rounds)} rounds solved, scale {np.round(record['scale'], 4).tolist()}, "
              f"{record['seconds']:.1f} s -> {final}")

    write_json(os.path.join(mp.model_path, "align_3dgs_clpe_9dof.json"),
               stage_record("align_3dgs_clpe_9dof", model=mp, pipeline=pp, alignment=ap, matching=mt,
                            other={"prompts": prompts, "matcher": matcher.name, "summary": summary,
                                   "seconds": round(time.perf_counter() - t_start, 2)}))


def _remove_stale(out_dir: str, match_dir: str, prompt: str, keep: set) -> None:
    """Remove this object's per-round PLYs and match pictures of earlier runs that this run did not write."""
    pat = re.compile(re.escape(prompt) + r"_(\d+)\.ply")
    stale = [os.path.join(out_dir, f) for f in os.listdir(out_dir) if pat.fullmatch(f)] if os.path.isdir(out_dir) else []
    if os.path.isdir(match_dir):
        stale += [os.path.join(match_dir, f) for f in os.listdir(match_dir) if re.fullmatch(r"\d+_.+\.png", f)]
    for path in stale:
        if path not in keep:
            os.remove(path)


if __name__ == "__main__":
    run_main(main)
