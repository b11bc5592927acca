#!/usr/bin/env python
"""Stage 5: a proxy of 3D Gaussians for each object, in the generator's canonical frame.

    python trellis_img2gs.py -m M --backend file --proxy PATH [--object_name NAME] [--seed 0]
        [--gaussians_per_mesh 20000] [--normal_scale_ratio 0.1] [--opacity 0.95] [--no-canonical]

Objects are the prompt folders of M/masked_image_rgba_selected/ (sorted), or --object_name.

Backends (only `file` is implemented so far):
  file  import another generator's output. --proxy is one file (one object only) or a folder
        holding <prompt>.ply|.glb|.obj (looked for in that order). A Gaussian PLY (3DGS
        properties) is taken as is; a mesh (.glb/.obj or a mesh .ply) is sampled into thin
        SH-0 surface Gaussians (area-weighted, seeded) coloured from its texture or its
        vertex/face colours (grey otherwise). Mesh axes are kept as stored in the file.

Canonical frame (TRELLIS): the object is centred on its bounding-box centre and scaled
uniformly so that its largest side spans [-0.5, 0.5]; a Gaussian PLY that already fits in
that box is left untouched. --no-canonical keeps the input coordinates.

Writes M/generated/<prompt>.ply and M/generated/<prompt>.json (backend, input path and
sha256, Gaussian count, the applied normalisation as a 4x4 input->canonical matrix, seed,
options). Every input is checked before anything is written.

This script and the modules it imports need only numpy, Pillow and plyfile (trimesh to read
meshes), so it can run with the python of a separate generator environment.
"""

from __future__ import annotations

import argparse
import logging

from utils.cli import run_main, setup_logging
from utils.generation import (
    DEFAULT_GAUSSIANS_PER_MESH,
    DEFAULT_NORMAL_SCALE_RATIO,
    DEFAULT_OPACITY,
    DEFAULT_SEED,
    run_file_backend,
)

log = logging.getLogger("trellis_img2gs")
BACKENDS = ("file",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model_path", required=True, help="model folder M")
    p.add_argument("--backend", choices=BACKENDS, default="file",
                   help="generator backend; only 'file' (import a generator's output) exists so far (default: file)")
    p.add_argument("--object_name", default=None, help="process only this prompt (default: every folder of "
                                                       "M/masked_image_rgba_selected)")
    p.add_argument("--proxy", default=None, help="file backend: a proxy file (one object) or a folder of "
                                                 "<prompt>.ply|.glb|.obj")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"seed of the mesh surface sampling (default: {DEFAULT_SEED})")
    p.add_argument("--gaussians_per_mesh", type=int, default=DEFAULT_GAUSSIANS_PER_MESH,
                   help=f"Gaussians sampled on a mesh proxy (default: {DEFAULT_GAUSSIANS_PER_MESH})")
    p.add_argument("--normal_scale_ratio", type=float, default=DEFAULT_NORMAL_SCALE_RATIO,
                   help="sigma along the face normal / sigma along the surface of mesh-sampled Gaussians "
                        f"(default: {DEFAULT_NORMAL_SCALE_RATIO})")
    p.add_argument("--opacity", type=float, default=DEFAULT_OPACITY,
                   help=f"opacity of mesh-sampled Gaussians, in (0, 1) (default: {DEFAULT_OPACITY})")
    p.add_argument("--canonical", action=argparse.BooleanOptionalAction, default=True,
                   help="normalise into the canonical box [-0.5, 0.5]^3 (default: on)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def main() -> None:
    args = build_parser().parse_args()
    setup_logging(args.quiet)
    prompts = run_file_backend(args.model_path, args.proxy, args.object_name, args.gaussians_per_mesh, args.seed,
                               args.normal_scale_ratio, args.opacity, args.canonical)
    for prompt in prompts:
        log.info("%s: wrote %s/generated/%s.ply", prompt, args.model_path, prompt)


if __name__ == "__main__":
    run_main(main)
