"""SIFT matching with OpenCV: no weights, always available.

Keypoints are detected inside the masks, described by SIFT, matched by brute force (L2) with
Lowe's ratio test in both directions (a match must be the mutual best), and filtered by a MAGSAC
fundamental matrix (:func:`utils.matching.geometric_filter`). Scores are ``1 - ratio``.

Stage 7 matches one real view against many renders (the appearance step: each of a few training
views against every virtual view of the proxy), so the features of the last few images are kept,
keyed by a digest of the image and mask bytes: an image seen again is not detected again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Optional

import numpy as np

from utils.matching import Matcher, Matches, MatchingParams, check_image, geometric_filter


def _detect(sift, image: np.ndarray, mask: Optional[np.ndarray]):
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    m = None if mask is None else (mask.astype(np.uint8) * 255)
    kps, desc = sift.detectAndCompute(grey, m)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 2)), None
    # OpenCV puts pixel centres at integers; the renderer at +0.5
    return np.array([k.pt for k in kps], dtype=np.float64) + 0.5, desc


def _ratio_matches(d0: np.ndarray, d1: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (i0, i1) of mutual nearest neighbours passing the ratio test, and their ratios."""
    import cv2

    bf = cv2.BFMatcher(cv2.NORM_L2)
    if len(d0) < 2 or len(d1) < 2:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    fwd = bf.knnMatch(d0, d1, k=2)
    bwd = bf.knnMatch(d1, d0, k=1)
    best_back = np.array([b[0].trainIdx if b else -1 for b in bwd])
    i0, i1, r = [], [], []
    for pair in fwd:
        if len(pair) < 2:
            continue
        a, b = pair
        q = a.distance / max(b.distance, 1e-12)
        if q < ratio and best_back[a.trainIdx] == a.queryIdx:
            i0.append(a.queryIdx)
            i1.append(a.trainIdx)
            r.append(q)
    return np.asarray(i0, int), np.asarray(i1, int), np.asarray(r, float)


class SiftMatcher(Matcher):
    """OpenCV SIFT + mutual ratio test + MAGSAC (see the module docstring)."""

    name = "sift"
    cache_size = 8
    """Images whose features are kept (least recently used dropped first)."""

    def __init__(self, params: MatchingParams):
        import cv2

        self.params = params
        self._sift = cv2.SIFT_create(nfeatures=params.sift_features, contrastThreshold=params.sift_contrast_threshold,
                                     enable_precise_upscale=True)  # unbiased keypoint positions
        self._cache: OrderedDict[bytes, tuple] = OrderedDict()

    def _features(self, image: np.ndarray, mask: Optional[np.ndarray]):
        h = hashlib.blake2b(digest_size=16)
        for a in (image, mask):
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(repr((a.shape, a.dtype.str)).encode())
                h.update(a.view(np.uint8).reshape(-1).data)
            else:
                h.update(b"none")
        key = h.digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        out = _detect(self._sift, image, mask)
        self._cache[key] = out
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def match(self, image0: np.ndarray, image1: np.ndarray, mask0: Optional[np.ndarray] = None,
              mask1: Optional[np.ndarray] = None) -> Matches:
        check_image(image0, mask0, "image0")
        check_image(image1, mask1, "image1")
        xy0, d0 = self._features(image0, mask0)
        xy1, d1 = self._features(image1, mask1)
        if d0 is None or d1 is None:
            return Matches.empty()
        i0, i1, ratio = _ratio_matches(d0, d1, self.params.sift_ratio)
        m = Matches(xy0[i0], xy1[i1], 1.0 - ratio)
        m = geometric_filter(m, self.params.geometric_threshold, self.params.geometric_min_matches)
        return m.best(self.params.max_matches)
