#!/usr/bin/env python
"""Stage 5: a proxy of 3D Gaussians for each object, in the generator's canonical frame.

    python trellis_img2gs.py -m M [--backend trellis] [--save_type gs|mesh|both] [--object_name NAME] [--seed 0]
    python trellis_img2gs.py -m M --backend file --proxy PATH
    python trellis_img2gs.py -m M --backend hull [-s D] [--eval --split_yml_name split.yml] [-r 1]

Objects are the prompt folders of M/masked_image_rgba_selected/ (sorted), or --object_name (the
hull backend falls back on the prompts of D/description.yml when that folder does not exist).

Backends:
  trellis  (default, as the authors' script) the official TRELLIS image-to-3D pipeline
        (github.com/microsoft/TRELLIS, git only; run with the python of TRELLIS's own environment,
        a CUDA GPU and its weights, --trellis_model). The views M/masked_image_rgba_selected/
        <prompt>/img_<i>.png, in increasing i, condition TrellisImageTo3DPipeline.run (one view) or
        run_multi_image (several, --multi_image_mode), with the same --seed and sampler settings.
        --save_type gs writes TRELLIS's Gaussians; mesh writes <prompt>.glb and a PLY sampled from
        that mesh (rotated from the GLB's Y-up frame into the Gaussians' frame); both writes the
        Gaussians and the GLB. See utils/trellis.py for the axes.
  file  import another generator's output. --proxy is one file (one object only) or a folder
        holding <prompt>.ply|.glb|.obj (looked for in that order). A Gaussian PLY (3DGS
        properties) is taken as is; a mesh (.glb/.obj or a mesh .ply) is sampled into thin
        SH-0 surface Gaussians (area-weighted, seeded) coloured from its texture or its
        vertex/face colours (grey otherwise). Mesh axes are kept as stored in the file.
  hull  no weights: the visual hull carved on a voxel grid over the object's box (from
        M/gs_seg/<prompt>.ply) from its masks D/masked_image_rgba/<prompt>/<stem>.png in the
        training views, made of flat Gaussians on its surface coloured from the views where they
        are visible. Output keeps the world axes. See utils/hull.py for every step.

Canonical frame (TRELLIS): the object is centred on its bounding-box centre and scaled
uniformly so that its largest side spans [-0.5, 0.5]; a Gaussian PLY that already fits in
that box is left untouched. --no-canonical keeps the input coordinates.

Writes M/generated/<prompt>.ply (SH-0 for meshes and hulls), M/generated/<prompt>.json (backend,
inputs with sha256, Gaussian count, the applied normalisation as a 4x4 input->canonical matrix,
seed, options; the hull's input frame is the world), M/generated/<prompt>.glb (trellis,
--save_type mesh|both) and the stage record M/trellis_img2gs.json. Every input is checked (and
every object generated) before anything is written.

This script and the modules it imports need only numpy, Pillow and plyfile at import time
(trimesh to read meshes, scipy and PyYAML for the hull, torch and TRELLIS for the trellis
backend, each imported when used), so it can run with the python of a generator environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from utils.arguments import add_group, extract, stage_record
from utils.cli import run_main, setup_logging
from utils.generation import ProxyParams, run_file_backend
from utils.hull import HullParams, HullSceneParams, resolve_scene, run_hull_backend
from utils.io import write_json
from utils.trellis import TrellisParams, run_trellis_backend

log = logging.getLogger("trellis_img2gs")
BACKENDS = ("trellis", "file", "hull")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="model folder M")
    p.add_argument("--backend", choices=BACKENDS, default="trellis",
                   help="trellis: TRELLIS image-to-3D (GPU, weights); file: import a generator's output (--proxy); "
                        "hull: visual hull from the masks, no weights (default: trellis)")
    p.add_argument("--object_name", default=None, help="process only this prompt (default: every folder of "
                                                       "M/masked_image_rgba_selected)")
    add_group(p, ProxyParams, "proxy Gaussians (all backends)")
    f = p.add_argument_group("file backend")
    f.add_argument("--proxy", default=None, help="a proxy file (one object) or a folder of <prompt>.ply|.glb|.obj")
    add_group(p, TrellisParams, "trellis backend")
    add_group(p, HullParams, "hull backend")
    add_group(p, HullSceneParams, "hull backend: scene (values not given come from M/cfg_args)", sentinel=True)
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    t0 = time.time()
    proxy = extract(args, ProxyParams)
    groups: dict = {"proxy_params": proxy}
    if args.backend == "file":
        prompts = run_file_backend(args.model_path, args.proxy, args.object_name, proxy.gaussians_per_mesh, proxy.seed,
                                   proxy.normal_scale_ratio, proxy.opacity, proxy.canonical)
        groups["file"] = {"proxy": os.path.abspath(args.proxy)}
    elif args.backend == "trellis":
        trellis = extract(args, TrellisParams)
        prompts = run_trellis_backend(args.model_path, args.object_name, proxy, trellis)
        groups["trellis"] = trellis
    else:
        hull = extract(args, HullParams)
        scene = resolve_scene(args.model_path, {k: getattr(args, k) for k in HullSceneParams.__dataclass_fields__})
        prompts = run_hull_backend(args.model_path, args.object_name, proxy, hull, scene)
        groups.update(hull=hull, scene=scene)
    write_json(os.path.join(args.model_path, "trellis_img2gs.json"), stage_record(
        "trellis_img2gs", backend=args.backend, objects=prompts, **groups, seconds=round(time.time() - t0, 3)))
    for prompt in prompts:
        log.info("%s: wrote %s/generated/%s.ply", prompt, args.model_path, prompt)


if __name__ == "__main__":
    run_main(main)
