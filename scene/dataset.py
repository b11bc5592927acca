"""Scene folders: D/images + D/sparse (COLMAP, W2C) + split file + description.yml.

Layout of a scene folder D::

    D/
      images/            RGB frames (any of png/jpg/...; the stem names the view)
      sparse/ or sparse/0/   COLMAP model, text or binary, PINHOLE or SIMPLE_PINHOLE cameras
      split.yml          (--split_yml_name) keys `train`, `test`: lists of image stems
      description.yml    SCORP keys: prompts, detect_conf, ext, first_image_name, iteration, ...
      depths_cam/<stem>.png   optional sensor depth, uint16 millimetres
      depths_est/<stem>.png   optional estimated depth
      masked_image_rgba/<prompt>/<stem>.png   written by segmentation_2d.py

Everything is validated before any stage writes: problems raise :class:`utils.errors.InputError`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import yaml

from scene.cameras import Camera, resolution_for
from utils.errors import InputError
from utils.images import find_image, image_size
from utils.io import image_stem

log = logging.getLogger(__name__)

DEFAULT_LLFF_HOLD = 8


@dataclass
class SceneData:
    """A loaded scene.

    Attributes:
        source_path: D.
        train_cameras, test_cameras: cameras sorted by image stem, at the ``-r`` resolution.
        points_xyz: [P, 3] COLMAP points. points_rgb: [P, 3] their colours in [0, 1].
        extent: 1.1 x the largest distance of a training camera centre from their mean (3DGS).
        center: [3] mean of the training camera centres.
    """

    source_path: str
    train_cameras: list[Camera]
    test_cameras: list[Camera]
    points_xyz: np.ndarray
    points_rgb: np.ndarray
    extent: float
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))

    @property
    def all_cameras(self) -> list[Camera]:
        return sorted(self.train_cameras + self.test_cameras, key=lambda c: c.image_name)


def camera_extent(cameras: list[Camera]) -> tuple[float, np.ndarray]:
    """3DGS's ``cameras_extent``: 1.1 x max distance of the centres from their mean, and the mean."""
    centers = np.stack([c.center for c in cameras])
    mean = centers.mean(0)
    radius = float(np.linalg.norm(centers - mean, axis=1).max()) * 1.1
    return (radius if radius > 0 else 1.0), mean


def load_cameras(
    source_path: str,
    images: str = "images",
    resolution: int = -1,
    max_width: int = 1600,
) -> tuple[list[Camera], np.ndarray, np.ndarray]:
    """All registered cameras of D (sorted by stem) and the COLMAP points.

    Returns:
        (cameras, points_xyz [P, 3], points_rgb [P, 3] in [0, 1]).
    """
    from scene.colmap import find_sparse_dir, pinhole_intrinsics, qvec_to_rotmat, read_model

    if not os.path.isdir(source_path):
        raise InputError(source_path, "scene folder not found")
    sparse = find_sparse_dir(source_path)
    cams, imgs, pts = read_model(sparse)
    image_dir = images if os.path.isabs(images) else os.path.join(source_path, images)
    if not os.path.isdir(image_dir):
        raise InputError(image_dir, "image folder not found")
    cam_file = os.path.join(sparse, "cameras.bin" if os.path.isfile(os.path.join(sparse, "cameras.bin")) else "cameras.txt")
    cameras: list[Camera] = []
    seen: dict[str, str] = {}
    for image_id in sorted(imgs):
        im = imgs[image_id]
        if im.camera_id not in cams:
            raise InputError(sparse, f"image {im.name!r} refers to unknown camera id {im.camera_id}")
        cc = cams[im.camera_id]
        fx, fy, cx, cy = pinhole_intrinsics(cc, cam_file)
        path = find_image(image_dir, im.name)
        if path is None:
            raise InputError(os.path.join(image_dir, os.path.basename(im.name)), "image registered in the COLMAP model is missing")
        stem = image_stem(im.name)
        if stem in seen:
            raise InputError(sparse, f"two images share the stem {stem!r} ({seen[stem]!r}, {im.name!r})")
        seen[stem] = im.name
        w, h = image_size(path)
        cam = Camera(qvec_to_rotmat(im.qvec), im.tvec, fx, fy, cx, cy, cc.width, cc.height, image_name=stem, image_path=path)
        if (w, h) != (cc.width, cc.height):
            cam = cam.resized(w, h)  # images were resized after SfM: intrinsics follow
        rw, rh = resolution_for(w, h, resolution, max_width)
        if (rw, rh) != (w, h):
            cam = cam.resized(rw, rh)
        cameras.append(cam)
    if not cameras:
        raise InputError(sparse, "the COLMAP model has no registered images")
    cameras.sort(key=lambda c: c.image_name)
    for i, c in enumerate(cameras):
        c.uid = i
    if pts:
        xyz = np.stack([p.xyz for p in pts.values()]).astype(np.float64)
        rgb = np.stack([p.rgb for p in pts.values()]).astype(np.float64) / 255.0
    else:
        xyz = np.zeros((0, 3))
        rgb = np.zeros((0, 3))
    return cameras, xyz, rgb


def load_scene(
    source_path: str,
    images: str = "images",
    resolution: int = -1,
    eval: bool = False,
    split_yml_name: str = "",
    max_width: int = 1600,
    llffhold: int = DEFAULT_LLFF_HOLD,
) -> SceneData:
    """Load D with its train/test split.

    With ``eval`` the split comes from ``D/<split_yml_name>`` (when given), else every
    ``llffhold``-th view (sorted by stem) is a test view. Without ``eval`` all views train.
    """
    cameras, xyz, rgb = load_cameras(source_path, images, resolution, max_width)
    stems = [c.image_name for c in cameras]
    if eval and split_yml_name:
        from scene.split import load_split

        split = load_split(os.path.join(source_path, split_yml_name), stems)
        train_set, test_set = set(split["train"]), set(split.get("test", []))
        train = [c for c in cameras if c.image_name in train_set]
        test = [c for c in cameras if c.image_name in test_set]
    elif eval:
        log.info("no split file given: every %d-th view is a test view", llffhold)
        train = [c for i, c in enumerate(cameras) if i % llffhold != 0]
        test = [c for i, c in enumerate(cameras) if i % llffhold == 0]
    else:
        train, test = list(cameras), []
    extent, center = camera_extent(train)
    return SceneData(source_path, train, test, xyz, rgb, extent, center)


# -- description.yml ------------------------------------------------------------------------------
@dataclass
class Description:
    """The keys of ``D/description.yml`` (SCORP), with their defaults.

    Attributes:
        prompts: object prompts, in order (also folder and file names).
        detect_conf: GroundingDINO box and text threshold (None: use box/text_threshold).
        box_threshold, text_threshold: used when detect_conf is absent.
        combine_prompt: one detection call with all prompts (True) or one per prompt.
        ext: extension of the frames (used to name the key frame file).
        first_image_name: stem of the key frame.
        iteration: training iteration that later stages load (None: the latest).
        img_num: views selected per object. num_iterations: closed-loop alignment rounds.
        opt_shape_iterations: rounds that use the anisotropic solver.
        cam_list_interval: use every n-th training camera per alignment round.
    """

    prompts: list[str]
    detect_conf: Optional[float] = None
    box_threshold: Optional[float] = None
    text_threshold: Optional[float] = None
    combine_prompt: bool = True
    ext: str = "png"
    first_image_name: str = ""
    iteration: Optional[int] = None
    img_num: int = 3
    num_iterations: int = 6
    opt_shape_iterations: list[int] = field(default_factory=lambda: [3, 4])
    cam_list_interval: int = 10
    extra: dict[str, Any] = field(default_factory=dict)
    given: frozenset = frozenset()
    """The keys the file really contains (a default is not an instruction, e.g. cam_list_interval)."""


def load_description(source_path: str, name: str = "description.yml") -> Description:
    """Read and validate ``D/description.yml``."""
    path = os.path.join(source_path, name)
    if not os.path.isfile(path):
        raise InputError(path, "description file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise InputError(path, f"invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(path, "must be a YAML mapping of keys to values")
    prompts_raw = data.get("prompts")
    if isinstance(prompts_raw, list):
        prompts = [str(p).strip() for p in prompts_raw]
    elif isinstance(prompts_raw, str):
        prompts = [p.strip() for p in prompts_raw.split(",")]
    else:
        raise InputError(path, "key 'prompts' is missing (a comma-separated string of object prompts)")
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError(path, "key 'prompts' names no object")
    if len(set(prompts)) != len(prompts):
        raise InputError(path, f"duplicate prompts in {prompts}")
    for p in prompts:
        if p == "masked" or "/" in p or p.startswith("."):
            raise InputError(path, f"prompt {p!r} cannot be used as a folder name")
    known = {f for f in Description.__dataclass_fields__ if f not in ("prompts", "extra")}
    kwargs: dict[str, Any] = {}
    casts = {
        "detect_conf": float, "box_threshold": float, "text_threshold": float, "combine_prompt": bool,
        "ext": str, "first_image_name": str, "iteration": int, "img_num": int, "num_iterations": int,
        "cam_list_interval": int,
    }
    for key, cast in casts.items():
        if key in data and data[key] is not None:
            try:
                kwargs[key] = cast(data[key])
            except (TypeError, ValueError):
                raise InputError(path, f"key {key!r} must be {cast.__name__}, got {data[key]!r}") from None
    if "opt_shape_iterations" in data and data["opt_shape_iterations"] is not None:
        v = data["opt_shape_iterations"]
        if not isinstance(v, list) or not all(isinstance(i, int) for i in v):
            raise InputError(path, f"key 'opt_shape_iterations' must be a list of integers, got {v!r}")
        kwargs["opt_shape_iterations"] = v
    for key in ("img_num", "num_iterations", "cam_list_interval"):
        if key in kwargs and kwargs[key] < 1:
            raise InputError(path, f"key {key!r} must be >= 1, got {kwargs[key]}")
    extra = {k: v for k, v in data.items() if k not in known and k != "prompts"}
    given = frozenset(k for k, v in data.items() if v is not None)
    return Description(prompts=prompts, extra=extra, given=given, **kwargs)
