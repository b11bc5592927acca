#!/usr/bin/env python
"""Stage 1: segment the prompted objects in every registered frame of a scene folder.

    python segmentation_2d.py -s D [--backend gdino_sam2|masks] [--detector ID_OR_DIR] [--tracker ID_OR_DIR]
                              [--masks_dir DIR] [--device cuda] [--box_threshold T --text_threshold T]

gdino_sam2 (default): GroundingDINO finds one box per prompt of D/description.yml on the key frame
(`first_image_name`): the best-scoring detection whose phrase is the prompt (case-insensitive);
SAM 2 video tracks the boxes forward and backward from the key frame over all registered frames in
name order; mask = logit > 0, then an elliptical opening and closing. masks: import
DIR/<prompt>/<stem>.png (default D/masks) for every registered frame.

Writes D/masked_image_rgba/<prompt>/<stem>.png and D/masked_image_rgba/masked/<stem>.png (8-bit RGBA:
RGB = the full frame, alpha in {0, 255} = the mask, or the union of all masks in masked/), one per
registered frame (train and test), and D/masked_image_rgba/segmentation_2d.json (the resolved
options, models, detections and per-frame mask areas). Inputs are validated and a prompt that is not
detected stops the stage before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from utils.arguments import add_group, extract, stage_record
from utils.cli import run_main, setup_logging
from utils.errors import InputError
from utils.segmentation import SegmentationParams

log = logging.getLogger("segmentation_2d")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # sentinel: tell which flags were given (thresholds and combine_prompt override description.yml)
    add_group(p, SegmentationParams, "segmentation", sentinel=True)
    return p


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    sp = extract(args, SegmentationParams)
    setup_logging(sp.quiet)
    if not sp.source_path:
        raise SystemExit("error: -s/--source_path is required")

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from scene.dataset import load_cameras, load_description
    from utils.io import write_json
    from utils.segmentation import (
        OUTPUT_FOLDER, RECORD_NAME, build_captions, choose_boxes, compose_rgba, describe_detections,
        normalize_phrase, output_paths, resolve_thresholds, save_rgba, union_masks, unpack_mask,
    )

    D = sp.source_path
    if not os.path.isdir(D):
        raise InputError(D, "scene folder not found")
    desc = load_description(D)
    cameras, _, _ = load_cameras(D, sp.images, resolution=1)  # sorted by stem = video order
    stems = [c.image_name for c in cameras]
    paths = [c.image_path for c in cameras]
    sizes = [(c.width, c.height) for c in cameras]
    prompts = desc.prompts
    desc_path = os.path.join(D, "description.yml")
    norm = [normalize_phrase(p) for p in prompts]
    if len(set(norm)) != len(norm):
        raise InputError(desc_path, f"prompts {prompts} are not distinct once case and punctuation are ignored")
    record: dict = {"backend": sp.backend, "prompts": prompts, "frames": stems}

    def read_rgb(path: str) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise InputError(path, f"not a readable image ({exc})") from None

    if sp.backend == "masks":
        from utils.detectors import load_mask_folder

        masks_dir = sp.masks_dir or os.path.join(D, "masks")
        masks = load_mask_folder(masks_dir, prompts, stems, sizes)
        record["masks_dir"] = os.path.abspath(masks_dir)
    else:
        from utils.detectors import GroundingDinoDetector, Sam2VideoTracker, hub_load_kwargs, require_transformers, resolve_model_source

        if not desc.first_image_name:
            raise InputError(desc_path, "key 'first_image_name' (the key frame's stem) is missing")
        if desc.first_image_name not in stems:
            raise InputError(desc_path, f"first_image_name {desc.first_image_name!r} is not a registered frame "
                                        f"({len(stems)} frames, e.g. {', '.join(stems[:5])})")
        key = stems.index(desc.first_image_name)
        if len(set(sizes)) != 1:
            odd = next(s for s, z in zip(stems, sizes) if z != sizes[0])
            raise InputError(paths[stems.index(odd)], f"frame size {sizes[stems.index(odd)]} differs from {sizes[0]} of {stems[0]}; SAM 2 video needs one size")
        detector_src = resolve_model_source(sp.detector, sp.checkpoints_dir)
        tracker_src = resolve_model_source(sp.tracker, sp.checkpoints_dir)
        require_transformers("GroundingDinoForObjectDetection", "Sam2VideoModel")
        for src in (detector_src, tracker_src):  # fail now, not after detection, when weights cannot be had
            hub_load_kwargs(src)
        box_thr, text_thr, thr_source = resolve_thresholds(desc.detect_conf, desc.box_threshold, desc.text_threshold,
                                                           args.box_threshold, args.text_threshold)
        combine = args.combine_prompt if args.combine_prompt is not None else desc.combine_prompt
        sp.box_threshold, sp.text_threshold, sp.combine_prompt = box_thr, text_thr, combine  # the values used
        captions = build_captions(prompts, combine)
        frames = [read_rgb(p) for p in paths]

        if sp.quiet:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        detector = GroundingDinoDetector(detector_src, sp.device)
        detections = detector.detect(frames[key], captions, box_thr, text_thr)
        detector.close()
        chosen, missing = choose_boxes(prompts, detections)
        if missing:
            names = ", ".join(repr(p) for p in missing)
            raise InputError(paths[key], f"prompt{'s' if len(missing) > 1 else ''} {names} not detected on {stems[key]} "
                                         f"(box_threshold {box_thr:g}, text_threshold {text_thr:g}); detections: {describe_detections(detections)}")
        for p in prompts:
            d = chosen[p]
            log.info("%s: box (%.1f, %.1f, %.1f, %.1f), score %.3f", p, *d.box, d.score)

        tracker = Sam2VideoTracker(tracker_src, sp.device)
        with tqdm(total=len(frames), desc="tracking", disable=sp.quiet) as bar:
            masks, offloaded = tracker.track(frames, key, [chosen[p].box for p in prompts], sp.morph_kernel,
                                             sp.mask_logit_threshold, sp.max_frames_on_device, progress=bar.update)
        del frames
        record.update({
            "key_frame": stems[key], "key_frame_index": key, "detector": detector_src, "tracker": tracker_src,
            "device": str(tracker.device), "video_offloaded_to_cpu": offloaded,
            "box_threshold": box_thr, "text_threshold": text_thr, "threshold_source": thr_source,
            "combine_prompt": combine, "captions": captions,
            "boxes": {p: {"box_xyxy": list(chosen[p].box), "score": chosen[p].score, "phrase": chosen[p].phrase} for p in prompts},
            "detections": [{"phrase": d.phrase, "score": d.score, "box_xyxy": list(d.box)} for d in detections[:100]],
        })

    # -- write: every frame, every prompt, and the union ------------------------------------------
    areas: dict[str, dict[str, int]] = {p: {} for p in prompts}
    for i, (stem, path) in enumerate(tqdm(list(zip(stems, paths)), desc="writing masks", disable=sp.quiet)):
        rgb = read_rgb(path)
        per_prompt, union_path = output_paths(D, prompts, stem)
        ms = [unpack_mask(masks[k][i]) for k in range(len(prompts))]
        for p, m in zip(prompts, ms):
            save_rgba(per_prompt[p], compose_rgba(rgb, m))
            areas[p][stem] = int(m.sum())
        save_rgba(union_path, compose_rgba(rgb, union_masks(ms, rgb.shape[:2])))
    for p in prompts:
        empty = sum(1 for a in areas[p].values() if a == 0)
        if empty:
            log.warning("prompt %r: empty mask on %d of %d frames", p, empty, len(stems))
    record["mask_area_px"] = areas
    out = os.path.join(D, OUTPUT_FOLDER)
    write_json(os.path.join(out, RECORD_NAME), stage_record("segmentation_2d", options=sp, result=record))
    print(f"{sp.backend}: masks of {len(prompts)} prompt(s) on {len(stems)} frames -> {out}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
