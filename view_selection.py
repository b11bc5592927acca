#!/usr/bin/env python
"""Stage 4: per object, choose a few sharp, complete, diverse training views and crop them.

    python view_selection.py -s D -m M [-r 1] [--eval --split_yml_name split.yml] [--img_num K] [...]

Options not given on the command line come from the training run's M/cfg_args; ``--img_num``
defaults to ``img_num`` of D/description.yml (else 3). The scoring is :mod:`utils.views`.

Reads:  D/description.yml (prompts, img_num), the training cameras (D/sparse + the split file),
        D/masked_image_rgba/<prompt>/<stem>.png (RGBA: RGB = full frame, alpha = object mask),
        M/gs_seg/<prompt>.ply when it exists (object centre = median of its Gaussian centres).
Writes: M/masked_image_rgba_selected/<prompt>/img_<i>.png   RGBA crops, i from 1 in selection order
        M/masked_image_rgba_selected/selection.json         picks, every view's terms, centre, boxes, angles
        M/view_selection.json                               the resolved options
Stale img_<i>.png files of a processed prompt that this run does not rewrite are removed; no
other file is touched. Every input is checked before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time

import numpy as np

from utils.arguments import ModelParams, add_group, extract, read_cfg_args, stage_record
from utils.cli import run_main, setup_logging
from utils.errors import InputError
from utils.views import ViewSelectionParams

log = logging.getLogger("view_selection")

MASK_DIR = "masked_image_rgba"
OUT_DIR = "masked_image_rgba_selected"
MAX_LISTED_MISSING = 5
"""How many missing frames an error message names before it only gives the count."""
CROP_NAME = re.compile(r"img_(\d+)\.png")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_group(p, ModelParams, "model", sentinel=True)
    add_group(p, ViewSelectionParams, "view selection", sentinel=True)
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def read_masked_frame(path: str) -> tuple[np.ndarray, np.ndarray]:
    """[H, W, 3] uint8 RGB and [H, W] bool mask (alpha > 127) of a stage-1 RGBA file."""
    import torch

    from utils.images import load_rgba

    rgb, alpha = load_rgba(path)
    if alpha is None:
        raise InputError(path, "has no alpha channel (the object mask); expected an RGBA PNG written by segmentation_2d.py")
    rgb8 = rgb.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(rgb8), alpha[0].numpy() > 0.5


def check_inputs(root: str, prompts: list[str], stems: list[str]) -> dict[str, str]:
    """{prompt: folder}; raises InputError on a missing folder or frame."""
    if not os.path.isdir(root):
        raise InputError(root, "mask folder not found (run segmentation_2d.py first)")
    folders = {}
    for prompt in prompts:
        folder = os.path.join(root, prompt)
        if not os.path.isdir(folder):
            raise InputError(folder, f"mask folder of object {prompt!r} not found")
        missing = [s for s in stems if not os.path.isfile(os.path.join(folder, f"{s}.png"))]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED_MISSING])
            more = f" (+{len(missing) - MAX_LISTED_MISSING} more)" if len(missing) > MAX_LISTED_MISSING else ""
            raise InputError(folder, f"{len(missing)} of {len(stems)} training frames missing: {listed}{more}")
        folders[prompt] = folder
    return folders


def object_centre(model_path: str, prompt: str, mode: str, cameras, measures, candidate) -> tuple[np.ndarray, str]:
    """The object centre and a note of where it came from (see ``--centre``)."""
    from scene.gaussian_model import read_gaussian_ply
    from utils.views import triangulate_mask_centroids

    ply = os.path.join(model_path, "gs_seg", f"{prompt}.ply")
    if mode == "gs_seg" or (mode == "auto" and os.path.isfile(ply)):
        if not os.path.isfile(ply):
            raise InputError(ply, "segmented object not found (needed by --centre gs_seg; run segmentation_3dgs.py)")
        xyz = read_gaussian_ply(ply).xyz
        finite = xyz[np.isfinite(xyz).all(axis=1)]
        if len(finite):
            return np.median(finite.astype(np.float64), axis=0), f"median of {len(finite)} Gaussian centres of {ply}"
        if mode == "gs_seg":
            raise InputError(ply, "has no Gaussians")
        log.warning("%s has no Gaussians: triangulating the mask centroids instead", ply)
    use = candidate if candidate.sum() >= 2 else None
    centre, ok = triangulate_mask_centroids(cameras, measures, use)
    n = int(sum(1 for i, m in enumerate(measures) if m.centroid is not None and (use is None or use[i])))
    note = f"triangulated mask centroids of {n} views" + ("" if ok else " (rays nearly parallel: approximate)")
    return centre, note


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from PIL import Image

    from scene.dataset import load_description, load_scene
    from utils.io import atomic_path, write_json
    from utils.views import crop_rgba, measure_view, quality_terms, select_views, TERM_NAMES

    t0 = time.time()
    if not args.model_path:
        raise InputError(None, "-m/--model_path is required")
    mp = extract(args, ModelParams, base=read_cfg_args(args.model_path))
    if not mp.source_path:
        raise InputError(os.path.join(args.model_path, "cfg_args"), "no source_path: give -s/--source_path")
    desc = load_description(mp.source_path)
    vp = extract(args, ViewSelectionParams, base={"img_num": desc.img_num})
    try:
        vp.validate()
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    cameras = sorted(scene.train_cameras, key=lambda c: c.image_name)
    if not cameras:
        raise InputError(os.path.join(mp.source_path, mp.split_yml_name or "sparse"), "no training views")
    stems = [c.image_name for c in cameras]
    folders = check_inputs(os.path.join(mp.source_path, MASK_DIR), desc.prompts, stems)
    centers = np.stack([c.center for c in cameras])

    # 1. measure every training view of every object (all inputs are read before anything is written)
    results = {}
    for prompt, folder in folders.items():
        measures = []
        for stem in stems:
            rgb, mask = read_masked_frame(os.path.join(folder, f"{stem}.png"))
            measures.append(measure_view(rgb, mask, vp.sharpness_erode_px))
        if not any(m.area > 0 for m in measures):
            raise InputError(folder, f"the mask of {prompt!r} is empty in every one of the {len(stems)} training views")
        candidate = quality_terms(measures, vp).candidate
        centre, centre_note = object_centre(mp.model_path, prompt, vp.centre, cameras, measures, candidate)
        sel = select_views(measures, centers, centre, vp)
        if len(sel.picks) < vp.img_num:
            log.warning("%s: only %d candidate view(s) for %d requested", prompt, len(sel.picks), vp.img_num)
        crops = []
        for p in sel.picks:
            rgb, mask = read_masked_frame(os.path.join(folder, f"{stems[p.index]}.png"))
            crops.append(crop_rgba(rgb, mask, vp.crop_margin, vp.min_crop_pixels))
        results[prompt] = (measures, centre, centre_note, sel, crops)

    # 2. write
    out_root = os.path.join(mp.model_path, OUT_DIR)
    summary = {}
    for prompt, (measures, centre, centre_note, sel, crops) in results.items():
        out_dir = os.path.join(out_root, prompt)
        names = [f"img_{i}.png" for i in range(1, len(crops) + 1)]
        if os.path.isdir(out_dir):
            for f in sorted(os.listdir(out_dir)):
                if CROP_NAME.fullmatch(f) and f not in names and os.path.isfile(os.path.join(out_dir, f)):
                    os.remove(os.path.join(out_dir, f))
                    log.info("removed stale %s", os.path.join(out_dir, f))
        for name, crop in zip(names, crops):
            with atomic_path(os.path.join(out_dir, name)) as tmp:
                Image.fromarray(crop.rgba, "RGBA").save(tmp, format="PNG")
        q = sel.quality
        pick_of = {p.index: (n, p) for n, p in enumerate(sel.picks, start=1)}
        views = []
        for i, (stem, m) in enumerate(zip(stems, measures)):
            rec = {
                "stem": stem,
                "area": m.area,
                "area_fraction": m.area_fraction,
                "sharpness_raw": m.sharpness,
                "cut_fraction": m.cut_fraction,
                "terms": {k: float(q.terms[k][i]) for k in TERM_NAMES},
                "quality": float(q.quality[i]),
                "candidate": bool(q.candidate[i]),
                "complete": bool(q.complete[i]),
                "excluded_because": q.reasons[i] or None,
                "direction": sel.directions[i].tolist(),
            }
            if i in pick_of:
                n, p = pick_of[i]
                rec["pick"] = {"order": n, "diversity": p.diversity, "score": p.score}
            views.append(rec)
        summary[prompt] = {
            "selected": [stems[i] for i in sel.indices],
            "files": names,
            "centre": centre.tolist(),
            "centre_source": centre_note,
            "crops": [
                {"stem": stems[p.index], "file": n, "box_xyxy": list(c.box), "upscale": c.upscale,
                 "size_wh": [int(c.rgba.shape[1]), int(c.rgba.shape[0])]}
                for n, p, c in zip(names, sel.picks, crops)
            ],
            "pairwise_angles_deg": sel.pairwise_angles.tolist(),
            "min_pairwise_angle_deg": sel.min_angle,
            "min_area_px": q.min_area,
            "views": views,
        }
        angle = "n/a" if sel.min_angle is None else f"{sel.min_angle:.1f} deg"
        print(f"{prompt}: {', '.join(summary[prompt]['selected'])} (smallest angle between picks {angle}) -> {out_dir}")
    write_json(os.path.join(out_root, "selection.json"), {
        "schema": 1,
        "img_num": vp.img_num,
        "split": "train",
        "weights": {"sharpness": vp.w_sharpness, "size": vp.w_size, "completeness": vp.w_completeness,
                    "solidity": vp.w_solidity, "diversity": vp.diversity_weight},
        "objects": summary,
    })
    write_json(os.path.join(mp.model_path, "view_selection.json"), stage_record(
        "view_selection", model=mp, view_selection=vp,
        inputs={"masks": os.path.join(mp.source_path, MASK_DIR), "train_views": len(stems), "prompts": desc.prompts},
        seconds=round(time.time() - t0, 3),
    ))


if __name__ == "__main__":
    run_main(main)
