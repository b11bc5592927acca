#!/usr/bin/env python
"""Make the synthetic SCORP demo scene: a textured table with three objects in a room.

Rendered by ray casting textured triangle meshes (trimesh + embree; no Gaussian renderer, no
downloads) in seconds on a CPU. See :mod:`utils.synthetic` for the scene and its conventions.

Writes the scene folder D::

    OUT/images/frame_00000.png ...       RGB 8-bit frames in orbit order
    OUT/sparse/{cameras,images,points3D}.bin
                                         COLMAP model: one PINHOLE camera per image, points with tracks
    OUT/description.yml                  SCORP keys (prompts "red box,blue mug,green ball", ...)
    OUT/split.yml                        train / test stems (test = contiguous arcs of the orbit)
    OUT/masks/<prompt>/<stem>.png        uint8 {0, 255} ground-truth object masks (first hit), all frames
    OUT/depths_cam/<stem>.png            uint16 depth along the camera z axis in mm, 0 = none (--depths)
    OUT/gt/meshes/<prompt>.ply           object meshes in world coordinates with vertex colours
    OUT/gt/proxies/<prompt>.ply          stand-in generator output (degree-0 Gaussians in [-0.5, 0.5]^3)
    OUT/gt/proxies/<prompt>_transform.json
                                         the TRUE proxy -> world transform (see its "convention")
    OUT/scene_meta.json                  seed, sizes, objects, cameras, timings

Usage::

    python scripts/make_demo_scene.py data/demo --seed 0
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import yaml
from PIL import Image

from scene.colmap import write_model
from scene.gaussian_model import write_gaussian_ply
from utils.cli import run_main, setup_logging
from utils.errors import InputError
from utils.io import atomic_path, write_json
from utils.synthetic import (
    GeneratedScene,
    ProxyConfig,
    SceneConfig,
    colmap_model,
    generate_scene,
    object_trimesh,
    transform_json,
)

logger = logging.getLogger("make_demo_scene")

GENERATED_ENTRIES = ("images", "sparse", "masks", "depths_cam", "gt", "description.yml", "split.yml", "scene_meta.json")
"""What this script writes in OUT; ``--overwrite`` removes exactly these first."""


def build_parser() -> argparse.ArgumentParser:
    defaults = SceneConfig()
    pdef = ProxyConfig()
    p = argparse.ArgumentParser(
        description="Make the synthetic SCORP demo scene (ray-cast textured meshes; CPU; no downloads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out", metavar="OUT", help="scene folder to create (must be empty or absent unless --overwrite)")
    g = p.add_argument_group("scene")
    g.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random choice")
    g.add_argument("--num_views", type=int, default=defaults.num_views, help="frames along the orbit")
    g.add_argument("--width", type=int, default=defaults.width, help="image width in pixels")
    g.add_argument("--height", type=int, default=defaults.height, help="image height in pixels")
    g.add_argument("--supersample", type=int, default=defaults.supersample, help="rays per pixel per axis (anti-aliasing)")
    g.add_argument("--num_points", type=int, default=defaults.num_points, help="target number of COLMAP 3D points")
    g.add_argument("--point_noise", type=float, default=defaults.point_noise, help="std of the 3D point noise, metres")
    g = p.add_argument_group("split and description.yml")
    g.add_argument("--test_fraction", type=float, default=defaults.test_fraction, help="fraction of frames held out as test")
    g.add_argument("--num_arcs", type=int, default=defaults.num_arcs, help="number of contiguous held-out arcs")
    g.add_argument("--iteration", type=int, default=3000, help="'iteration' of description.yml (training iterations)")
    g = p.add_argument_group("proxies (stand-in generator output)")
    g.add_argument("--proxy_gaussians", type=int, default=pdef.num_surface_gaussians, help="surface Gaussians per proxy")
    g.add_argument("--proxy_junk_fraction", type=float, default=pdef.junk_fraction, help="fraction of low-opacity junk")
    g.add_argument(
        "--proxy_random_scale_frame",
        action=argparse.BooleanOptionalAction,
        default=pdef.random_scale_frame,
        help="distort the proxy along a random frame instead of its own axes",
    )
    g = p.add_argument_group("output")
    g.add_argument("--depths", action=argparse.BooleanOptionalAction, default=True, help="write depths_cam/ (uint16 mm)")
    g.add_argument("--overwrite", action="store_true", help="replace what this script wrote in a non-empty OUT before")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> SceneConfig:
    proxy = ProxyConfig(
        num_surface_gaussians=args.proxy_gaussians,
        junk_fraction=args.proxy_junk_fraction,
        random_scale_frame=args.proxy_random_scale_frame,
    )
    return SceneConfig(
        seed=args.seed,
        num_views=args.num_views,
        width=args.width,
        height=args.height,
        supersample=args.supersample,
        num_points=args.num_points,
        point_noise=args.point_noise,
        test_fraction=args.test_fraction,
        num_arcs=args.num_arcs,
        proxy=proxy,
    )


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT unless ``overwrite``; then remove only what this script writes.

    Raises:
        InputError: OUT is a file, or a non-empty folder without ``overwrite``.
    """
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "not empty; pass --overwrite to replace a scene made by this script")
        for name in GENERATED_ENTRIES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        others = sorted(p.name for p in out.iterdir())
        if others:
            logger.warning("%s also holds %s (kept; may be stale)", out, ", ".join(others))
    out.mkdir(parents=True, exist_ok=True)


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _save_yaml(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            yaml.safe_dump(obj, f, sort_keys=False, default_flow_style=None)


def write_scene(out: Path, g: GeneratedScene, iteration: int, depths: bool) -> None:
    """Write every file of the scene folder (each atomically)."""
    names = [c.image_name for c in g.cameras]
    for v, stem in enumerate(names):
        _save_png(out / "images" / f"{stem}.png", g.images[v])
        for k, prompt in enumerate(g.scene.object_names):
            _save_png(out / "masks" / prompt / f"{stem}.png", (g.masks[v, k] * 255).astype(np.uint8))
        if depths and g.depths is not None:
            mm = np.clip(np.round(g.depths[v] * 1000.0), 0, 65535).astype(np.uint16)
            _save_png(out / "depths_cam" / f"{stem}.png", mm)
    cameras, images, points = colmap_model(g.cameras, g.sparse)
    write_model(cameras, images, points, out / "sparse", ext=".bin")
    for k, prompt in enumerate(g.scene.object_names, start=1):
        mesh = object_trimesh(g.scene, k)
        with atomic_path(out / "gt" / "meshes" / f"{prompt}.ply") as tmp:
            mesh.export(tmp, file_type="ply", encoding="binary")
        gaussians, transform = g.proxies[prompt]
        write_gaussian_ply(out / "gt" / "proxies" / f"{prompt}.ply", gaussians)
        write_json(out / "gt" / "proxies" / f"{prompt}_transform.json", transform_json(transform, prompt))
    _save_yaml(out / "description.yml", g.description(iteration))
    _save_yaml(out / "split.yml", g.split())


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        config.check()
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    prepare_output(out, args.overwrite)

    t0 = time.perf_counter()
    progress = None
    if args.progress:
        from tqdm import tqdm

        progress = lambda it: tqdm(it, desc="ray casting views", unit="view")  # noqa: E731
    g = generate_scene(config, depths=args.depths, progress=progress)
    t1 = time.perf_counter()
    write_scene(out, g, args.iteration, args.depths)
    g.timings["write"] = time.perf_counter() - t1
    g.timings["total"] = time.perf_counter() - t0
    meta = g.meta()
    meta["iteration"] = args.iteration
    meta["depths"] = bool(args.depths)
    write_json(out / "scene_meta.json", meta)
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in g.timings.items() if k != "total")
    print(
        f"demo scene written to {out}: {len(g.cameras)} views {config.width}x{config.height}, "
        f"{len(g.sparse.xyz)} points, key frame {meta['first_image_name']}; "
        f"{g.timings['total']:.1f}s ({parts})"
    )
    return 0


if __name__ == "__main__":
    run_main(main)
