#!/usr/bin/env python
"""Evaluate stage 7 (align_3dgs_clpe_9dof.py) against a generated demo scene's ground truth.

    python scripts/eval_alignment.py -s D -m M [--min_opacity 0.1] [--samples 20000]

For every M/generated_aligned/<prompt>_transform.json whose object has a true transform
(D/gt/proxies/<prompt>_transform.json, made by scripts/make_demo_scene.py):

* the true proxy -> world map of M/generated/<prompt>.ply is the scene's transform of the stand-in
  generator output composed with the inverse of stage 5's normalisation (M/generated/<prompt>.json);
* errors of the estimate (utils.clpe.transform_errors): rotation (deg), per-axis scale (relative,
  principal axes of A_true^-1 A_est), translation of the proxy centre relative to the object size;
  for the coarse start and the final result;
* the Chamfer distance (utils.meshes.chamfer_to_mesh) between the aligned proxy's centres (opacity
  >= --min_opacity) and the GT surface D/gt/meshes/<prompt>.ply, in scene units and relative to the
  object size.

Prints one line per object and writes M/generated_aligned/eval.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scene.gaussian_ply import read_gaussian_ply  # noqa: E402
from utils.alignment import apply_matrix  # noqa: E402
from utils.clpe import transform_errors  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.meshes import chamfer_to_mesh, read_mesh_triangles  # noqa: E402


def true_matrix(source_path: str, model_path: str, prompt: str) -> np.ndarray | None:
    """The true 4x4 map from M/generated/<prompt>.ply to the world, or None without ground truth."""
    gt = os.path.join(source_path, "gt", "proxies", f"{prompt}_transform.json")
    if not os.path.isfile(gt):
        return None
    with open(gt) as f:
        T = np.asarray(json.load(f)["matrix"], dtype=np.float64)
    gen = os.path.join(model_path, "generated", f"{prompt}.json")
    N = np.eye(4)
    if os.path.isfile(gen):
        with open(gen) as f:
            N = np.asarray(json.load(f).get("normalisation", {}).get("matrix", np.eye(4)), dtype=np.float64)
    return T @ np.linalg.inv(N)


def evaluate(source_path: str, model_path: str, min_opacity: float = 0.1, samples: int = 20000) -> dict:
    out_dir = os.path.join(model_path, "generated_aligned")
    results = {}
    prompts = sorted(f[: -len("_transform.json")] for f in os.listdir(out_dir) if f.endswith("_transform.json"))
    for prompt in prompts:
        M_true = true_matrix(source_path, model_path, prompt)
        if M_true is None:
            continue
        with open(os.path.join(out_dir, f"{prompt}_transform.json")) as f:
            rec = json.load(f)
        g = read_gaussian_ply(os.path.join(model_path, "generated", f"{prompt}.ply"))
        keep = 1.0 / (1.0 + np.exp(-g.opacity.reshape(-1))) >= min_opacity
        pts = g.xyz[keep].astype(np.float64)
        final = transform_errors(np.asarray(rec["matrix"]), M_true, pts)
        coarse = transform_errors(np.asarray(rec["coarse"]["matrix"]), M_true, pts)
        res = {"final": final, "coarse": coarse, "matcher": rec.get("matcher"), "seconds": rec.get("seconds"),
               "rounds_solved": rec.get("rounds_solved")}
        mesh = os.path.join(source_path, "gt", "meshes", f"{prompt}.ply")
        if os.path.isfile(mesh):
            tri = read_mesh_triangles(mesh)
            ch = chamfer_to_mesh(apply_matrix(np.asarray(rec["matrix"]), pts), tri, samples)
            ch_true = chamfer_to_mesh(apply_matrix(M_true, pts), tri, samples)
            res["chamfer"] = {**ch, "relative": ch["chamfer"] / final["object_size"],
                              "with_true_transform": ch_true["chamfer"]}
        results[prompt] = res
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-s", "--source_path", required=True, help="demo scene folder D (with gt/proxies and gt/meshes)")
    p.add_argument("-m", "--model_path", required=True, help="model folder M with generated_aligned/")
    p.add_argument("--min_opacity", type=float, default=0.1, help="proxy Gaussians below this opacity are left out")
    p.add_argument("--samples", type=int, default=20000, help="GT surface samples of the completeness direction")
    args = p.parse_args()
    results = evaluate(args.source_path, args.model_path, args.min_opacity, args.samples)
    if not results:
        sys.exit(f"error: {args.model_path}/generated_aligned: no aligned object with a true transform in {args.source_path}/gt/proxies")
    for prompt, r in results.items():
        f, c = r["final"], r["coarse"]
        line = (f"{prompt}: rotation {f['rotation_deg']:.2f} deg, scale error {100 * f['max_scale_error']:.2f}% "
                f"(per axis {np.round(100 * np.asarray(f['scale_errors']), 2).tolist()}), translation {100 * f['translation_rel']:.2f}% "
                f"of the size [coarse: {c['rotation_deg']:.1f} deg, {100 * c['max_scale_error']:.1f}%, {100 * c['translation_rel']:.1f}%]")
        if "chamfer" in r:
            ch = r["chamfer"]
            line += f"; Chamfer {100 * ch['chamfer']:.3f} cm ({100 * ch['relative']:.2f}% of the size; true pose {100 * ch['with_true_transform']:.3f} cm)"
        print(line)
    write_json(os.path.join(args.model_path, "generated_aligned", "eval.json"), results)


if __name__ == "__main__":
    main()
