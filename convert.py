"""Turn a folder of plain images into a SCORP scene folder (COLMAP via pycolmap, undistorted to PINHOLE).

Usage::

    python convert.py -s D [--camera OPENCV] [--no-single_camera] [--max_image_size 1600]
                           [--matcher exhaustive|sequential] [--split every:8|arcs:0.66]
                           [--split_yml_name split.yml] [--skip_matching]

Reads the frames from ``D/input/`` (or from ``D/images/``, which is then renamed to ``D/input/``)
and writes ``D/images/`` (undistorted), ``D/sparse/`` (binary COLMAP model), ``D/distorted/`` and,
with ``--split``, the split file. See :mod:`utils.colmap_sfm` for the layout.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Optional, Sequence

from scene.colmap import CAMERA_MODEL_BY_NAME
from scene.split import parse_split_spec
from utils.cli import EXIT_BAD_INPUT, setup_logging
from utils.colmap_sfm import MATCHERS, ColmapSfmConfig, run_colmap
from utils.errors import InputError

_DEFAULTS = ColmapSfmConfig()


def _split_spec(value: str) -> str:
    try:
        parse_split_spec(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The command line: a projection of :class:`utils.colmap_sfm.ColmapSfmConfig`."""
    p = argparse.ArgumentParser(
        description="COLMAP structure from motion (pycolmap) on D/input (or D/images), undistorted to PINHOLE "
        "into D/images and D/sparse.",
    )
    p.add_argument("-s", "--source_path", required=True, help="scene folder D holding input/ (or images/)")
    g = p.add_argument_group("COLMAP")
    g.add_argument(
        "--camera",
        default=_DEFAULTS.camera,
        choices=list(CAMERA_MODEL_BY_NAME),
        metavar="MODEL",
        help="COLMAP camera model fitted before undistortion, e.g. OPENCV, SIMPLE_RADIAL, PINHOLE "
        "(default %(default)s)",
    )
    g.add_argument(
        "--single_camera",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.single_camera,
        help="all images share one camera (default on)",
    )
    g.add_argument(
        "--max_image_size",
        type=_positive_int,
        default=_DEFAULTS.max_image_size,
        help="longest image side used for SIFT features (default %(default)s)",
    )
    g.add_argument(
        "--max_num_features",
        type=_positive_int,
        default=_DEFAULTS.max_num_features,
        help="most SIFT features per image (default %(default)s)",
    )
    g.add_argument(
        "--matcher", choices=MATCHERS, default=_DEFAULTS.matcher, help="feature matcher (default %(default)s)"
    )
    g.add_argument(
        "--sequential_overlap",
        type=_positive_int,
        default=_DEFAULTS.sequential_overlap,
        help="neighbours matched per image by the sequential matcher (default %(default)s)",
    )
    g.add_argument(
        "--skip_matching",
        action="store_true",
        help="reuse D/distorted from an earlier run: only undistort and write the split",
    )
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="random seed of COLMAP (default %(default)s)")
    g.add_argument(
        "--num_threads",
        type=int,
        default=_DEFAULTS.num_threads,
        help="CPU threads of COLMAP (-1: all; 1 makes results repeatable for a fixed --seed)",
    )
    g.add_argument(
        "--use_gpu",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULTS.use_gpu,
        help="use CUDA for SIFT when pycolmap has it (default on)",
    )
    g.add_argument("--colmap_verbose", action="store_true", help="show COLMAP's INFO log lines")
    s = p.add_argument_group("split")
    s.add_argument(
        "--split",
        type=_split_spec,
        default=None,
        help="write a train/test split of the registered frames: every:N (every Nth frame is a test view) "
        "or arcs:F[:K] (K contiguous arcs, a fraction F of the frames, are test views)",
    )
    s.add_argument(
        "--split_yml_name", default=_DEFAULTS.split_yml_name, help="split file name in D (default %(default)s)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, run the pipeline; bad input prints ``error: <message>`` and returns 2."""
    args = build_parser().parse_args(argv)
    setup_logging(quiet=args.quiet)
    cfg = ColmapSfmConfig(**{f.name: getattr(args, f.name) for f in fields(ColmapSfmConfig) if hasattr(args, f.name)})
    try:
        result = run_colmap(args.source_path, cfg)
    except (InputError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"registered {result.num_registered} of {result.num_images} images, {result.num_points3D} 3D points: "
        f"{result.images_dir}, {result.sparse_dir}" + (f", {result.split_path}" if result.split_path else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
