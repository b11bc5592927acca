"""Structure from motion with pycolmap: a folder of plain images -> a SCORP scene folder.

The pipeline behind ``convert.py`` (the 3DGS ``convert.py`` without the colmap binary)::

    D/input/<name>.jpg ...          the original frames (D/images/ is renamed to D/input/ when
                                    there is no D/input/, so the originals are kept)
    D/distorted/database.db         features and matches
    D/distorted/sparse/<k>/         COLMAP models of the original (distorted) images, binary
    D/images/<name>.jpg ...         undistorted frames (PINHOLE)
    D/sparse/{cameras,images,points3D}.bin   the undistorted model of the largest reconstruction
    D/<split_yml_name>              optional train/test split of the registered frames

Everything is computed in a temporary folder inside D and moved into place only when all steps
succeeded, so a failure leaves D as it was. pycolmap is imported inside :func:`run_colmap` only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional

from scene.colmap import CAMERA_MODEL_BY_NAME, read_model
from scene.split import make_split, parse_split_spec, write_split
from utils.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""File name endings (case-insensitive) taken as input images."""

MATCHERS = ("exhaustive", "sequential")


@dataclass
class ColmapSfmConfig:
    """Options of :func:`run_colmap` (``convert.py`` flags of the same names)."""

    camera: str = "OPENCV"
    """COLMAP camera model fitted to the original images; undistortion always gives PINHOLE."""
    single_camera: bool = True
    """All images share one camera (one set of intrinsics); off: COLMAP decides per image."""
    max_image_size: int = 1600
    """Longest image side used for SIFT extraction (images are downscaled for features only)."""
    max_num_features: int = 8192
    """Most SIFT features per image."""
    matcher: str = "exhaustive"
    """``exhaustive`` (all pairs; small sets) or ``sequential`` (neighbours in name order; videos)."""
    sequential_overlap: int = 10
    """Number of following images each image is matched with by the sequential matcher."""
    split: Optional[str] = None
    """Split spec (``every:N`` or ``arcs:F[:K]``, see :func:`scene.split.make_split`); None: no split file."""
    split_yml_name: str = "split.yml"
    """File name of the split written in the scene folder."""
    skip_matching: bool = False
    """Reuse ``D/distorted/`` from an earlier run: only undistort (and write the split)."""
    min_registered: int = 2
    """Fewest registered images accepted; fewer is an error."""
    seed: int = 0
    """Random seed of COLMAP's RANSAC and mapper."""
    num_threads: int = -1
    """CPU threads for COLMAP (-1: all). COLMAP's multi-threaded results vary slightly from run to
    run; 1 makes them repeatable for a fixed seed."""
    use_gpu: bool = True
    """Let COLMAP use CUDA for SIFT when pycolmap was built with it."""
    colmap_verbose: bool = False
    """Show COLMAP's own INFO log lines (otherwise warnings and errors only)."""


@dataclass
class ColmapSfmResult:
    """What :func:`run_colmap` produced."""

    num_images: int
    """Input images."""
    num_registered: int
    """Images registered in the chosen (largest) reconstruction."""
    num_points3D: int
    """3D points of that reconstruction."""
    sparse_dir: str
    """``D/sparse``."""
    images_dir: str
    """``D/images`` (undistorted)."""
    split_path: Optional[str]
    """The split file written, if any."""


def list_images(folder: str) -> list[str]:
    """Sorted file names of the images directly in ``folder`` (by :data:`IMAGE_EXTENSIONS`)."""
    return sorted(
        f
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") and os.path.isfile(os.path.join(folder, f))
    )


def _import_pycolmap():
    try:
        import pycolmap  # noqa: PLC0415 (heavy optional dependency, imported where needed)
    except ImportError as e:
        raise ImportError(
            f"convert.py needs pycolmap (COLMAP's Python bindings): install it with `pip install pycolmap` ({e})"
        ) from e
    return pycolmap


def _check_config(cfg: ColmapSfmConfig) -> None:
    if cfg.camera not in CAMERA_MODEL_BY_NAME:
        raise ValueError(f"camera model must be one of {', '.join(CAMERA_MODEL_BY_NAME)}, got {cfg.camera!r}")
    if cfg.matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {cfg.matcher!r}")
    if cfg.max_image_size <= 0:
        raise ValueError(f"max_image_size must be positive, got {cfg.max_image_size}")
    if cfg.min_registered < 2:
        raise ValueError(f"min_registered must be >= 2, got {cfg.min_registered}")
    if cfg.split is not None:
        parse_split_spec(cfg.split)
    if not cfg.split_yml_name or os.path.basename(cfg.split_yml_name) != cfg.split_yml_name:
        raise ValueError(f"split_yml_name must be a plain file name, got {cfg.split_yml_name!r}")


def _largest_model(models_dir: str, pycolmap) -> tuple[Optional[str], int]:
    """(folder, number of registered images) of the model with the most registered images."""
    best: tuple[Optional[str], int] = (None, 0)
    if not os.path.isdir(models_dir):
        return best
    for name in sorted(os.listdir(models_dir), key=lambda s: (len(s), s)):
        folder = os.path.join(models_dir, name)
        if not os.path.isdir(folder):
            continue
        try:
            rec = pycolmap.Reconstruction(folder)
        except Exception as e:  # pycolmap raises plain RuntimeError/ValueError on unreadable models
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(folder, f"unreadable COLMAP model: {first_line}") from None
        n = rec.num_reg_images()
        logger.info("model %s: %d registered images, %d points", folder, n, rec.num_points3D())
        if n > best[1]:
            best = (folder, n)
    return best


def _sfm(db_path: str, image_dir: str, names: list[str], models_dir: str, cfg: ColmapSfmConfig, pycolmap) -> None:
    """Feature extraction, matching and incremental mapping into ``models_dir/<k>/``."""
    device = pycolmap.Device.auto if cfg.use_gpu else pycolmap.Device.cpu
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = cfg.max_image_size
    extraction.num_threads = cfg.num_threads
    extraction.sift.max_num_features = cfg.max_num_features
    camera_mode = pycolmap.CameraMode.SINGLE if cfg.single_camera else pycolmap.CameraMode.AUTO
    logger.info("extracting SIFT features of %d images", len(names))
    pycolmap.extract_features(
        db_path,
        image_dir,
        image_names=names,
        camera_mode=camera_mode,
        reader_options=reader,
        extraction_options=extraction,
        device=device,
    )
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    logger.info("matching features (%s)", cfg.matcher)
    if cfg.matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=matching, device=device)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pycolmap.match_sequential(db_path, matching_options=matching, pairing_options=pairing, device=device)
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.random_seed = cfg.seed
    mapping.num_threads = cfg.num_threads
    # Keep small captures: COLMAP drops sub-models below min_model_size images.
    mapping.min_model_size = min(mapping.min_model_size, max(cfg.min_registered, 3))
    os.makedirs(models_dir, exist_ok=True)
    logger.info("incremental mapping")
    recs = pycolmap.incremental_mapping(db_path, image_dir, models_dir, options=mapping)
    # pycolmap writes each model to models_dir/<k>/; make sure they are all there.
    for k, rec in recs.items():
        folder = os.path.join(models_dir, str(k))
        if not os.path.isfile(os.path.join(folder, "images.bin")):
            os.makedirs(folder, exist_ok=True)
            rec.write(folder)


def _swap_in(new: str, dest: str, trash: str) -> None:
    """Move ``new`` to ``dest``; an existing ``dest`` is first moved into ``trash``."""
    if os.path.lexists(dest):
        logger.info("replacing %s", dest)
        os.replace(dest, os.path.join(trash, os.path.basename(dest) + ".old"))
    os.replace(new, dest)


def run_colmap(source_path: str | os.PathLike, cfg: Optional[ColmapSfmConfig] = None) -> ColmapSfmResult:
    """Run SfM on the images of a scene folder and lay it out for SCORP (see the module docstring).

    Args:
        source_path: the scene folder D, holding ``input/`` (or ``images/``) with the frames.
        cfg: the options (defaults: OPENCV, one camera, exhaustive matching, no split).

    Returns:
        A :class:`ColmapSfmResult`.

    Raises:
        InputError: missing folder, no images, duplicate stems, too few registered images, or a
            scene that is already converted but has no ``input/``. Nothing in D changes then.
        ValueError: bad options.
        ImportError: pycolmap missing.
    """
    cfg = cfg or ColmapSfmConfig()
    _check_config(cfg)
    src = os.path.abspath(os.fspath(source_path))
    if not os.path.isdir(src):
        raise InputError(src, "missing scene folder")
    input_dir = os.path.join(src, "input")
    images_dir = os.path.join(src, "images")
    sparse_dir = os.path.join(src, "sparse")
    distorted_dir = os.path.join(src, "distorted")
    rename_images = not os.path.isdir(input_dir)
    source_images = images_dir if rename_images else input_dir
    if not os.path.isdir(source_images):
        raise InputError(src, "no input/ or images/ folder with the frames to convert")
    names = list_images(source_images)
    if not names:
        raise InputError(source_images, f"no images ({', '.join(IMAGE_EXTENSIONS)})")
    stems: dict[str, str] = {}
    for name in names:
        stem = os.path.splitext(name)[0]
        if stem in stems:
            raise InputError(source_images, f"two images share the stem {stem!r}: {stems[stem]} and {name}")
        stems[stem] = name
    if rename_images and os.path.lexists(sparse_dir):
        raise InputError(
            sparse_dir,
            "exists while there is no input/ folder: this looks like a converted scene; "
            "move images/ to input/ (originals) or remove sparse/ to convert again",
        )
    if rename_images and os.path.lexists(input_dir):
        raise InputError(input_dir, "exists but is not a folder")
    if cfg.skip_matching and not os.path.isdir(os.path.join(distorted_dir, "sparse")):
        raise InputError(os.path.join(distorted_dir, "sparse"), "missing: run convert.py once without --skip_matching")

    pycolmap = _import_pycolmap()
    pycolmap.set_random_seed(cfg.seed)
    previous_log_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 0 if cfg.colmap_verbose else 1

    tmp = tempfile.mkdtemp(dir=src, prefix=".convert_")
    try:
        if cfg.skip_matching:
            models_dir = os.path.join(distorted_dir, "sparse")
        else:
            work = os.path.join(tmp, "distorted")
            os.makedirs(work)
            models_dir = os.path.join(work, "sparse")
            _sfm(os.path.join(work, "database.db"), source_images, names, models_dir, cfg, pycolmap)
        model, num_registered = _largest_model(models_dir, pycolmap)
        if model is None or num_registered < cfg.min_registered:
            raise InputError(
                source_images,
                f"COLMAP registered {num_registered} of {len(names)} images (at least {cfg.min_registered} needed): "
                "the frames may overlap too little or lack texture",
            )
        logger.info("undistorting %d images of %s to PINHOLE", num_registered, model)
        undistorted = os.path.join(tmp, "undistorted")
        pycolmap.undistort_images(undistorted, model, source_images, output_type="COLMAP")

        # Check the result with our own reader before anything in D changes.
        new_sparse = os.path.join(undistorted, "sparse")
        new_images = os.path.join(undistorted, "images")
        cameras, images, points3D = read_model(new_sparse)
        bad = sorted({c.model for c in cameras.values()} - {"PINHOLE", "SIMPLE_PINHOLE"})
        if bad:
            raise RuntimeError(f"COLMAP's undistorter produced {', '.join(bad)} cameras in {new_sparse}")
        missing = [im.name for im in images.values() if not os.path.isfile(os.path.join(new_images, im.name))]
        if missing:
            raise RuntimeError(f"COLMAP's undistorter did not write {len(missing)} images, e.g. {missing[0]}")
        registered_stems = sorted(im.stem for im in images.values())
        split = make_split(registered_stems, cfg.split) if cfg.split is not None else None

        # Commit: every step below is a rename inside D.
        trash = os.path.join(tmp, "trash")
        os.makedirs(trash)
        if rename_images:
            logger.info("moving the original frames %s to %s", images_dir, input_dir)
            os.replace(images_dir, input_dir)
        _swap_in(new_images, images_dir, trash)
        _swap_in(new_sparse, sparse_dir, trash)
        if not cfg.skip_matching:
            _swap_in(os.path.join(tmp, "distorted"), distorted_dir, trash)
        split_path = None
        if split is not None:
            split_path = os.path.join(src, cfg.split_yml_name)
            write_split(split_path, split)
            logger.info("wrote %s: %d train, %d test views", split_path, len(split["train"]), len(split["test"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        pycolmap.logging.minloglevel = previous_log_level
    return ColmapSfmResult(
        num_images=len(names),
        num_registered=len(images),
        num_points3D=len(points3D),
        sparse_dir=sparse_dir,
        images_dir=images_dir,
        split_path=split_path,
    )
