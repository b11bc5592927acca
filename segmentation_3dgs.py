#!/usr/bin/env python
"""Stage 3: lift the per-object 2D masks to the trained 3D Gaussians.

    python segmentation_3dgs.py -s D -m M -r 1 --eval --split_yml_name split.yml [--iteration N] [--margin 0.2]

For every training view the trained model is rendered once with the K object masks and an
all-ones mask as weight masks, which gives each Gaussian's compositing weight inside every mask
and in all; the per-view normalised votes assign each Gaussian to at most one object (arg-max with
a margin), ambiguous rim and occluded Gaussians are grown in from their 3D neighbours, floaters
are removed (see utils/masks.py for the method and every option).

Reads:
    D/description.yml (prompts; `iteration` when --iteration is not given, else the latest saved),
    M/point_cloud/iteration_<n>/point_cloud.ply,
    D/masked_image_rgba/<prompt>/<stem>.png for every training view (alpha = mask; resized with
    nearest-neighbour to the render resolution -r).
Writes (each atomically):
    M/gs_seg/<prompt>.ply per object and M/gs_seg/remained.ply (everything else),
    M/gs_seg/summary.json (counts, options, iteration, timings), M/segmentation_3dgs.json (options),
    M/coverage/<prompt>.json and .png plus a table on stdout (see utils/coverage.py; --no-coverage skips).
Options not given on the command line come from the training run's M/cfg_args.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time

from utils.arguments import ModelParams, PipelineParams, add_group, device_from, extract, read_cfg_args, stage_record
from utils.cli import check_stage_options, parse_model_stage, run_main
from utils.coverage import CoverageParams
from utils.errors import InputError
from utils.masks import MASK_FOLDER, SegmentationParams

log = logging.getLogger("segmentation_3dgs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, PipelineParams, "pipeline")
    add_group(p, SegmentationParams, "segmentation")
    add_group(p, CoverageParams, "coverage report")
    p.add_argument("--iteration", type=int, default=None,
                   help="trained iteration to segment (default: `iteration` of D/description.yml, else the latest saved)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return p


def main() -> None:
    parser = build_parser()
    args = parse_model_stage(parser, 'run train_3dgs.py first')
    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    pp = extract(args, PipelineParams)
    sp = extract(args, SegmentationParams)
    cp = extract(args, CoverageParams)
    check_stage_options(parser, mp, sp, cp)

    import numpy as np
    import torch
    from tqdm import tqdm

    from gaussian_renderer import render
    from scene.dataset import load_description, load_scene
    from scene.gaussian_model import GaussianModel
    from utils.io import write_json
    from utils.masks import lift_masks, load_view_masks, mask_paths, segment
    from utils.model_io import resolve_iteration

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    device = device_from(mp.device)
    desc = load_description(mp.source_path)
    prompts = desc.prompts
    wanted = args.iteration if args.iteration is not None else desc.iteration
    n_iter, ply = resolve_iteration(mp.model_path, wanted)
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    cams = scene.train_cameras
    if not cams:
        raise InputError(os.path.join(mp.source_path, mp.split_yml_name or ""), "no training views")
    paths = mask_paths(mp.source_path, prompts, [c.image_name for c in cams])
    model = GaussianModel.from_ply(ply).to(device)
    if len(model) == 0:
        raise InputError(ply, "the model has no Gaussians")
    timings["load"] = time.perf_counter() - t0
    log.info("segmenting %d Gaussians of iteration %d into %d object(s) from %d training views at %dx%d",
             len(model), n_iter, len(prompts), len(cams), cams[0].width, cams[0].height)

    # -- votes: one render per training view ------------------------------------------------
    t1 = time.perf_counter()

    def loader(cam, i):
        return lambda: load_view_masks([paths[p][i] for p in prompts], cam.width, cam.height, sp.mask_threshold)

    views = [(c, loader(c, i)) for i, c in enumerate(cams)]

    def render_weights(cam, weight_masks):
        out = render(cam, model, None, backend=mp.renderer, near_plane=pp.near_plane, far_plane=pp.far_plane,
                     eps2d=pp.eps2d, weight_masks=weight_masks)
        return out.weights

    bar = tqdm(views, desc="voting over training views", unit="view", disable=args.quiet)
    lifted = lift_masks(render_weights, bar, len(prompts), len(model), sp, device)
    timings["votes"] = time.perf_counter() - t1
    empty = lifted.mask_area == 0  # [V, K]
    for k, prompt in enumerate(prompts):
        if empty[:, k].all():
            raise InputError(os.path.join(mp.source_path, MASK_FOLDER, prompt), "the mask is empty in every training view")
        if empty[:, k].any():
            stems = [lifted.view_names[v] for v in np.flatnonzero(empty[:, k])]
            log.warning("object %r: empty mask in %d of %d training views (%s%s)", prompt, len(stems), len(cams),
                        ", ".join(stems[:5]), ", ..." if len(stems) > 5 else "")

    # -- assignment, growth, floaters ------------------------------------------------------
    t2 = time.perf_counter()
    xyz = model.means.detach().cpu().numpy().astype(np.float64)
    labels, stats = segment(xyz, lifted.votes, sp)
    timings["assign"] = time.perf_counter() - t2

    for k, prompt in enumerate(prompts):
        if not (labels == k).any():
            raise InputError(os.path.join(mp.source_path, MASK_FOLDER, prompt),
                             "no Gaussian was assigned to this object (do the masks match the trained scene?)")

    # -- outputs ---------------------------------------------------------------------------
    t3 = time.perf_counter()
    out_dir = os.path.join(mp.model_path, "gs_seg")
    labels_t = torch.from_numpy(labels)
    objects = {}
    for k, prompt in enumerate(prompts):
        model.subset(labels_t == k).save_ply(os.path.join(out_dir, f"{prompt}.ply"))
        objects[prompt] = {**stats[k], "empty_mask_views": int(empty[:, k].sum())}
    remained = labels_t < 0
    model.subset(remained).save_ply(os.path.join(out_dir, "remained.ply"))
    timings["write"] = time.perf_counter() - t3

    coverage_rows = []
    if cp.coverage:
        t4 = time.perf_counter()
        coverage_rows = write_coverage(mp.model_path, prompts, labels, xyz, lifted, scene, cp, sp)
        timings["coverage"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0

    summary = {
        "schema": 1,
        "iteration": n_iter,
        "iteration_source": "--iteration" if args.iteration is not None else ("description.yml" if desc.iteration is not None else "latest"),
        "point_cloud": os.path.abspath(ply),
        "num_gaussians": len(model),
        "train_views": len(cams),
        "resolution": [cams[0].width, cams[0].height],
        "objects": objects,
        "remained": int(remained.sum()),
        "never_visible": int((lifted.votes.confidence == 0).sum()),
        "options": dataclasses.asdict(sp),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    write_json(os.path.join(out_dir, "summary.json"), summary)
    write_json(os.path.join(mp.model_path, "segmentation_3dgs.json"),
               stage_record("segmentation_3dgs", model=mp, pipeline=pp, segmentation=sp, coverage=cp,
                            other={"iteration": n_iter, "prompts": prompts}))
    counts = ", ".join(f"{p}: {objects[p]['final']}" for p in prompts)
    print(f"segmented {len(model)} Gaussians (iteration {n_iter}, {len(cams)} views) in {timings['total']:.1f} s: "
          f"{counts}, remained: {int(remained.sum())} -> {out_dir}")
    if coverage_rows:
        from utils.coverage import format_table

        print(format_table(coverage_rows))


def write_coverage(model_path, prompts, labels, xyz, lifted, scene, cp: CoverageParams, sp: SegmentationParams) -> list[dict]:
    """M/coverage/<prompt>.json and .png per object; returns the table rows."""
    import numpy as np

    from utils.coverage import coverage_report, draw_coverage_map, estimate_up, in_frustum, view_directions
    from utils.io import atomic_path, write_json

    cams = scene.train_cameras
    if cp.coverage_up:
        up, agreement = np.asarray(cp.coverage_up, dtype=np.float64), 1.0
        up = up / np.linalg.norm(up)
    else:
        up, agreement = estimate_up(np.stack([c.R for c in cams]))
        if agreement < 0.5:
            log.warning("the cameras disagree on the up direction (agreement %.2f); pass --coverage_up for a reliable upper hemisphere", agreement)
    seen = lifted.votes.seen_count.cpu().numpy()
    out_dir = os.path.join(model_path, "coverage")
    rows = []
    for k, prompt in enumerate(prompts):
        sel = labels == k
        if not sel.any():
            rows.append({"prompt": prompt, "gaussians": 0, "covered_sphere": None, "note": "no Gaussians"})
            continue
        centre = np.median(xyz[sel], axis=0)
        valid = [v for v, c in enumerate(cams)
                 if lifted.mask_area[v, k] >= cp.coverage_min_mask_pixels and in_frustum(c.R, c.t, c.K(), c.width, c.height, centre)]
        train_dirs = view_directions(np.stack([cams[v].center for v in valid]), centre) if valid else np.zeros((0, 3))
        tests = [c for c in scene.test_cameras if in_frustum(c.R, c.t, c.K(), c.width, c.height, centre)]
        test_dirs = view_directions(np.stack([c.center for c in tests]), centre) if tests else None
        rep = coverage_report(centre, up, train_dirs, seen[sel], cp, test_dirs)
        rep.update(prompt=prompt, up_source="--coverage_up" if cp.coverage_up else "cameras", up_agreement=round(float(agreement), 4),
                   seen_weight=sp.seen_weight, train_views=[cams[v].image_name for v in valid],
                   test_view_names=[c.image_name for c in tests])
        write_json(os.path.join(out_dir, f"{prompt}.json"), rep)
        uo = rep["under_observed_share"]
        img = draw_coverage_map(
            up, train_dirs, cp.coverage_angle, cp.coverage_map_width, test_dirs,
            title=f"{prompt}: {rep['covered_upper_hemisphere']:.0%} of the upper hemisphere, {rep['covered_sphere']:.0%} of the sphere covered",
            lines=[f"{len(valid)} training views see it; {uo:.0%} of its {rep['gaussians']} Gaussians seen by < {cp.coverage_min_views} views; "
                   f"completion {'advised' if rep['completion_advised'] else 'not needed'}"],
        )
        from PIL import Image

        with atomic_path(os.path.join(out_dir, f"{prompt}.png")) as tmp:
            Image.fromarray(img, "RGB").save(tmp, format="PNG")
        rows.append(rep)
    return rows


if __name__ == "__main__":
    run_main(main)
