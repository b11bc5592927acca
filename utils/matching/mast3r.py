"""MASt3R dense matching (naver/mast3r, git only, CC BY-NC-SA) with a local checkpoint.

Install: ``git clone --recursive https://github.com/naver/mast3r`` and put the clone on
``PYTHONPATH`` (its ``mast3r.utils.path_to_dust3r`` adds the ``dust3r`` submodule); weights:
``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth`` from
https://download.europe.naverlabs.com/ComputerVision/MASt3R/ (or a Hugging Face folder / cached hub id).

API used (naver/mast3r, dust3r submodule):

* ``mast3r.model.AsymmetricMASt3R.from_pretrained(path_or_id)`` -> the network (a file goes through
  ``load_model``; anything else through ``huggingface_hub.PyTorchModelHubMixin``, here with
  ``local_files_only=True`` so that nothing is downloaded);
* ``dust3r.inference.inference([(view1, view2)], model, device, batch_size=1, verbose=False)`` ->
  ``{"view1", "view2", "pred1", "pred2", ...}`` with ``pred{1,2}["desc"]`` ``[1, H, W, D]`` (unit
  descriptors) and ``pred{1,2}["desc_conf"]`` ``[1, H, W]`` (``1 + exp(.)`` >= 1);
* ``mast3r.fast_nn.fast_reciprocal_NNs(desc1, desc2, subsample_or_initxy1=S, device=..., dist="dot",
  block_size=2**13)`` -> ``(xy1, xy2)``: ``[N, 2]`` integer ``(x, y)`` network pixels of converged
  reciprocal nearest neighbours seeded on an S-pixel grid of image 1.

Preprocessing (:func:`prepare`) repeats ``dust3r.utils.image.load_images`` on in-memory arrays
(our crops are not files): resize the long side to ``size`` (``int(round(side * size / long))`` per
side; PIL LANCZOS when shrinking, BICUBIC otherwise), centre-crop each side to a multiple of 16
(half-sizes ``((2 * (side // 2)) // 16) * 8`` around ``side // 2``), and, unless ``square_ok``, crop
a square image's height to 3/4 of its width; ``size == 224`` resizes the short side to 224 and
crops a centred square instead. The view dict is ``img`` ``[1, 3, H, W]`` in [-1, 1],
``true_shape`` ``int32 [[H, W]]``, ``idx`` and ``instance`` (``str(idx)``).

Coordinates are mapped back to the ORIGINAL image through both the crop offset and the per-axis
resize scale: network pixel ``(x, y)`` -> ``((x + 0.5 + x0) * W / W_r, (y + 0.5 + y0) * H / H_r)``
(renderer convention, centres at +0.5). The authors multiplied by size ratios only, ignoring the
crop offset and the 3/4 crop of square images ([bug] in original_behaviour.md §8.4.3).

Scores: the descriptor confidences, ``min(conf1, conf2)`` of a pair (as mast3r's
``extract_correspondences_nonsym`` does), mapped to [0, 1) by ``1 - 1 / conf``. Matches within
``mast3r_border`` network pixels of either image border, or outside a mask, are dropped; the best
``max_matches`` are kept (the authors kept 16 evenly spaced ones in raster order).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from utils.arguments import device_from
from utils.matching import Matcher, Matches, MatchingParams, check_image, inside_mask

log = logging.getLogger(__name__)

INSTALL_HINT = ("git clone --recursive https://github.com/naver/mast3r and add the clone to PYTHONPATH "
                "(pip install -r mast3r/requirements.txt -r mast3r/dust3r/requirements.txt)")
WEIGHTS_HINT = ("download MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth from "
                "https://download.europe.naverlabs.com/ComputerVision/MASt3R/ and pass it as --mast3r_checkpoint")
#: The ViT's patch size: network sides are multiples of it (load_images' patch_size default).
PATCH_SIZE = 16
#: load_images' special size, which resizes the short side and crops a centred square.
SQUARE_SIZE = 224
#: Block size of fast_reciprocal_NNs' brute-force search (the value of mast3r's README and demos).
FAST_NN_BLOCK_SIZE = 2 ** 13
#: Files that make a folder a Hugging Face checkpoint of PyTorchModelHubMixin.
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class NetworkImage:
    """One image as the network sees it, and the way back to the original pixels.

    view: the dust3r view dict (``img`` [1, 3, H, W] in [-1, 1], ``true_shape`` int32 [[H, W]],
    ``idx``, ``instance``); shape: (H, W) of the network image; resized: (H_r, W_r) after the resize,
    before the crop; offset: (x0, y0) of the crop in the resized image; original: (H, W) of the input.
    """

    view: dict
    shape: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    original: tuple[int, int]

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """[N, 2] integer network pixels (x, y) -> [N, 2] float positions in the original image (centres at +0.5)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        scale = np.array([self.original[1] / self.resized[1], self.original[0] / self.resized[0]])
        return (xy + 0.5 + np.asarray(self.offset, dtype=np.float64)) * scale

    def away_from_border(self, xy: np.ndarray, border: int) -> np.ndarray:
        """[N] bool: network pixels at least ``border`` pixels inside the network image."""
        h, w = self.shape
        x, y = xy[:, 0], xy[:, 1]
        return (x >= border) & (x < w - border) & (y >= border) & (y < h - border)


def _resize(image: np.ndarray, long_edge: int) -> np.ndarray:
    """dust3r's ``_resize_pil_image`` on an array: long side to ``long_edge`` (LANCZOS shrinking, BICUBIC otherwise)."""
    from PIL import Image

    h, w = image.shape[:2]
    s = max(w, h)
    resampling = getattr(Image, "Resampling", Image)
    interp = resampling.LANCZOS if s > long_edge else resampling.BICUBIC
    new_size = tuple(int(round(x * long_edge / s)) for x in (w, h))
    return np.asarray(Image.fromarray(image).resize(new_size, interp))


def crop_box(width: int, height: int, size: int, square_ok: bool = False, patch: int = PATCH_SIZE) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of load_images' centre crop of a resized ``width`` x ``height`` image."""
    cx, cy = width // 2, height // 2
    if size == SQUARE_SIZE:
        half_w = half_h = min(cx, cy)
    else:
        half_w = ((2 * cx) // patch) * patch / 2
        half_h = ((2 * cy) // patch) * patch / 2
        if not square_ok and width == height:
            half_h = 3 * half_w / 4
    # half sizes are whole (multiples of patch/2, and 3/4 of one), so PIL's rounding of the box is exact
    box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
    return tuple(int(round(v)) for v in box)


def prepare(image: np.ndarray, size: int, idx: int, square_ok: bool = False) -> NetworkImage:
    """``dust3r.utils.image.load_images`` on one [H, W, 3] uint8 array (see the module docstring)."""
    import torch

    h, w = image.shape[:2]
    if size == SQUARE_SIZE:
        resized = _resize(image, int(round(size * max(w / h, h / w))))
    else:
        resized = _resize(image, size)
    hr, wr = resized.shape[:2]
    x0, y0, x1, y1 = crop_box(wr, hr, size, square_ok)
    crop = np.array(resized[y0:y1, x0:x1])  # a writable copy for torch
    if crop.shape[0] < 1 or crop.shape[1] < 1:
        raise ValueError(f"image{idx}: {w}x{h} leaves nothing after MASt3R's resize to {size} and crop to multiples "
                         f"of {PATCH_SIZE}")
    img = torch.from_numpy(crop).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)[None]
    view = dict(img=img, true_shape=np.int32([crop.shape[:2]]), idx=idx, instance=str(idx))
    return NetworkImage(view=view, shape=crop.shape[:2], resized=(hr, wr), offset=(x0, y0), original=(h, w))


def checkpoint_available(path: str) -> tuple[bool, str]:
    """(usable, reason) for ``--mast3r_checkpoint``: a file, a Hugging Face folder, or a hub id in the local cache."""
    if not path:
        return False, f"no MASt3R checkpoint given ({WEIGHTS_HINT})"
    if os.path.isfile(path):
        return True, f"MASt3R checkpoint {path}"
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, HF_CONFIG)) and any(os.path.isfile(os.path.join(path, f)) for f in HF_WEIGHTS):
            return True, f"MASt3R checkpoint folder {path}"
        return False, f"folder {path} holds no {HF_CONFIG} with {' or '.join(HF_WEIGHTS)} ({WEIGHTS_HINT})"
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False, f"{path} is not a file, and huggingface_hub is not installed to look it up as a hub id"
        cached = try_to_load_from_cache(path, HF_CONFIG)
        if isinstance(cached, str) and any(isinstance(try_to_load_from_cache(path, f), str) for f in HF_WEIGHTS):
            return True, f"MASt3R hub checkpoint {path} (cached)"
        return False, f"hub id {path} is not in the local Hugging Face cache ({WEIGHTS_HINT})"
    return False, f"MASt3R checkpoint {path} not found ({WEIGHTS_HINT})"


def _import_mast3r():
    """(AsymmetricMASt3R, fast_reciprocal_NNs, inference), or ImportError with the install hint."""
    try:
        from mast3r.fast_nn import fast_reciprocal_NNs
        from mast3r.model import AsymmetricMASt3R
        import mast3r.utils.path_to_dust3r  # noqa: F401  (puts the dust3r submodule on sys.path)
        from dust3r.inference import inference
    except ImportError as exc:
        raise ImportError(f"the mast3r matcher needs naver/mast3r ({INSTALL_HINT}): {exc}") from None
    return AsymmetricMASt3R, fast_reciprocal_NNs, inference


def confidence_score(conf: np.ndarray) -> np.ndarray:
    """Descriptor confidence (>= 1 with MASt3R's ``exp`` mode) -> score in [0, 1), increasing."""
    conf = np.asarray(conf, dtype=np.float64)
    return np.clip(1.0 - 1.0 / np.maximum(conf, 1e-12), 0.0, 1.0)


class Mast3rMatcher(Matcher):
    """MASt3R descriptors + fast reciprocal nearest neighbours; the model is loaded once per instance."""

    name = "mast3r"

    def __init__(self, params: MatchingParams, device=None):
        AsymmetricMASt3R, self._fast_nn, self._inference = _import_mast3r()
        import torch

        self.params = params
        self.device = device if isinstance(device, torch.device) else device_from(device or "")
        ok, why = checkpoint_available(params.mast3r_checkpoint)
        if not ok:
            raise FileNotFoundError(why)
        path = params.mast3r_checkpoint
        kwargs: dict[str, Any] = {} if os.path.isfile(path) else {"local_files_only": True}
        self.model = AsymmetricMASt3R.from_pretrained(path, **kwargs).to(self.device).eval()
        log.info("mast3r matcher: %s on %s", path, self.device)

    def match(self, image0: np.ndarray, image1: np.ndarray, mask0: Optional[np.ndarray] = None,
              mask1: Optional[np.ndarray] = None) -> Matches:
        check_image(image0, mask0, "image0")
        check_image(image1, mask1, "image1")
        p = self.params
        net0 = prepare(image0, p.mast3r_size, 0)
        net1 = prepare(image1, p.mast3r_size, 1)
        out = self._inference([(net0.view, net1.view)], self.model, self.device, batch_size=1, verbose=False)
        desc0, desc1 = (out[k]["desc"].squeeze(0).detach() for k in ("pred1", "pred2"))
        conf0, conf1 = (out[k]["desc_conf"].squeeze(0).detach().float().cpu().numpy() for k in ("pred1", "pred2"))
        for net, desc, conf, which in ((net0, desc0, conf0, "pred1"), (net1, desc1, conf1, "pred2")):
            if tuple(desc.shape[:2]) != tuple(net.shape) or tuple(conf.shape) != tuple(net.shape):
                raise RuntimeError(f"MASt3R {which}: descriptors {tuple(desc.shape)} / confidences {conf.shape} do not "
                                   f"cover the {net.shape} network image")
        xy0, xy1 = self._fast_nn(desc0, desc1, subsample_or_initxy1=p.mast3r_subsample, device=self.device,
                                 dist="dot", block_size=FAST_NN_BLOCK_SIZE)
        xy0 = np.asarray(xy0, dtype=np.int64).reshape(-1, 2)
        xy1 = np.asarray(xy1, dtype=np.int64).reshape(-1, 2)
        keep = net0.away_from_border(xy0, p.mast3r_border) & net1.away_from_border(xy1, p.mast3r_border)
        xy0, xy1 = xy0[keep], xy1[keep]
        conf = np.minimum(conf0[xy0[:, 1], xy0[:, 0]], conf1[xy1[:, 1], xy1[:, 0]])
        m = Matches(net0.to_original(xy0), net1.to_original(xy1), confidence_score(conf))
        m = m.subset(inside_mask(m.xy0, mask0) & inside_mask(m.xy1, mask1))
        return m.best(p.max_matches)
