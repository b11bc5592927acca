#!/usr/bin/env python
"""Evaluate stage 3 (segmentation_3dgs.py) against a generated demo scene's ground truth.

    python scripts/eval_segmentation.py -s D -m M [-r 1] [--on_object_distance 0.01]

Prints and writes M/gs_seg/eval.json: per object, the mean IoU over the training views of the
object's Gaussians rendered alone (alpha > 0.5) against D/masks/<prompt>/<stem>.png, and the share
of the Gaussians lying on the GT objects (centre within --on_object_distance of a GT mesh in
D/gt/meshes, nearer to it than to the table top) that were left in remained.ply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gaussian_renderer import render  # noqa: E402
from scene.dataset import load_description, load_scene  # noqa: E402
from scene.gaussian_model import GaussianModel  # noqa: E402
from utils.arguments import device_from, read_cfg_args  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.meshes import points_to_mesh_distance, read_mesh_triangles  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--source_path", required=True, help="demo scene folder D (with masks/ and gt/)")
    p.add_argument("-m", "--model_path", required=True, help="model folder M with gs_seg/")
    p.add_argument("-r", "--resolution", type=int, default=1, help="render resolution rule, as the stages")
    p.add_argument("--on_object_distance", type=float, default=0.01, help="metres from a GT mesh that count as on the object")
    p.add_argument("--device", default="", help="torch device (default: cuda if available)")
    args = p.parse_args()
    D, M = args.source_path, args.model_path
    device = device_from(args.device)
    cfg = read_cfg_args(M)
    prompts = load_description(D).prompts
    scene = load_scene(D, resolution=args.resolution, eval=True, split_yml_name=cfg.get("split_yml_name", "split.yml"))
    parts = {n: GaussianModel.from_ply(os.path.join(M, "gs_seg", f"{n}.ply")).to(device) for n in prompts + ["remained"]}
    result: dict = {"objects": {}}
    for prompt in prompts:
        ious = []
        for cam in scene.train_cameras:
            gt_im = Image.open(os.path.join(D, "masks", prompt, f"{cam.image_name}.png")).resize((cam.width, cam.height), Image.NEAREST)
            gt = np.asarray(gt_im) > 127
            if not gt.any():
                continue
            with torch.no_grad():
                a = render(cam, parts[prompt]).alpha[0].cpu().numpy() > 0.5
            ious.append(float((a & gt).sum() / (a | gt).sum()))
        result["objects"][prompt] = {"mean_iou": float(np.mean(ious)), "views": len(ious), "gaussians": len(parts[prompt])}
        print(f"{prompt}: mean IoU {np.mean(ious):.3f} over {len(ious)} views, {len(parts[prompt])} Gaussians", flush=True)
    top = json.load(open(os.path.join(D, "scene_meta.json")))["config"]["table_height"]
    on = {}
    for name, m in parts.items():
        xyz = m.means.detach().cpu().numpy().astype(np.float64)
        best = np.full(len(xyz), np.inf)
        for prompt in prompts:
            tri = read_mesh_triangles(os.path.join(D, "gt", "meshes", f"{prompt}.ply"))
            best = np.minimum(best, points_to_mesh_distance(xyz, tri, margin=2 * args.on_object_distance))
        on[name] = int(((best <= args.on_object_distance) & (best < np.abs(xyz[:, 2] - top))).sum())
    total_on = sum(on.values())
    result["on_object_gaussians"] = total_on
    result["on_object_left_in_remained"] = on["remained"]
    result["remained_share_of_on_object"] = on["remained"] / max(total_on, 1)
    write_json(os.path.join(M, "gs_seg", "eval.json"), result)
    print(f"remained keeps {on['remained']}/{total_on} = {result['remained_share_of_on_object']:.2%} of the on-object Gaussians")


if __name__ == "__main__":
    main()
