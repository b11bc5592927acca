"""Stage 1 core (``segmentation_2d.py``): box choice, mask clean-up and RGBA composition.

Pure functions of arrays and small dataclasses: no model, no argparse. The model backends live in
:mod:`utils.detectors`; the stage script wires both to files.

Conventions:

* Images are ``[H, W, 3]`` uint8 RGB arrays; masks are ``[H, W]`` bool arrays.
* Boxes are ``(x0, y0, x1, y1)`` in pixels of the key frame (top-left corner of the top-left
  pixel is (0, 0)), as GroundingDINO's post-processing and SAM 2's box prompts use them.
* Output files are 8-bit RGBA PNGs: RGB = the full unmasked frame, alpha in {0, 255} = the mask.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from utils.arguments import opt
from utils.io import atomic_path

#: Fallback thresholds of GroundingDINO's ``predict`` (used only when neither description.yml nor
#: the command line gives one).
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
#: Name of the union folder under ``masked_image_rgba/`` (a prompt may not be called this).
UNION_FOLDER = "masked"
OUTPUT_FOLDER = "masked_image_rgba"
RECORD_NAME = "segmentation_2d.json"


@dataclass
class SegmentationParams:
    """Options of segmentation_2d.py (stage 1)."""

    source_path: str = opt("", "scene folder D (images/, sparse/, description.yml); outputs go to D/masked_image_rgba/", short="s")
    images: str = opt("images", "image folder, relative to D or absolute", short="i")
    backend: str = opt("gdino_sam2", "gdino_sam2: GroundingDINO on the key frame + SAM 2 video tracking; masks: import existing masks from --masks_dir",
                       choices=["gdino_sam2", "masks"])
    detector: str = opt("IDEA-Research/grounding-dino-base", "GroundingDINO weights: a local folder, a folder of that name under --checkpoints_dir, or a Hugging Face hub id (needs network)")
    tracker: str = opt("facebook/sam2.1-hiera-large", "SAM 2 video weights: a local folder, a folder of that name under --checkpoints_dir, or a Hugging Face hub id (needs network)")
    checkpoints_dir: str = opt("", "folder searched for local copies of --detector/--tracker by their last name component (empty: checkpoints/ of this repository)")
    masks_dir: str = opt("", "masks backend: folder with <prompt>/<stem>.png masks (8-bit, or RGBA alpha; > 127 is inside); empty: D/masks")
    device: str = opt("", "torch device of the models (default: cuda if available, else cpu)")
    box_threshold: float = opt(DEFAULT_BOX_THRESHOLD, "GroundingDINO box threshold; given here it overrides description.yml (detect_conf, else box_threshold), else this default is used")
    text_threshold: float = opt(DEFAULT_TEXT_THRESHOLD, "GroundingDINO text threshold; given here it overrides description.yml (detect_conf, else text_threshold), else this default is used")
    combine_prompt: bool = opt(True, "one detection call with all prompts (\"p1. p2.\") or one call per prompt; given here it overrides description.yml's combine_prompt")
    mask_logit_threshold: float = opt(0.0, "a pixel is inside the object where the SAM 2 mask logit is above this")
    morph_kernel: int = opt(5, "diameter (px) of the elliptical structuring element of the mask clean-up (opening, then closing); 0 or 1 disables it")
    max_frames_on_device: int = opt(256, "with more frames than this, the preprocessed video and SAM 2's per-frame state are kept "
                                         "in CPU memory and moved to the device frame by frame (slower, bounded accelerator memory)")
    quiet: bool = opt(False, "warnings only, no progress bars")


@dataclass(frozen=True)
class Detection:
    """One GroundingDINO detection on the key frame.

    Attributes:
        phrase: the caption words grounded by this box (tokens above the text threshold in the
            prompt segment of its best token), as decoded by the tokenizer.
        score: the box's best token probability.
        box: (x0, y0, x1, y1) in pixels.
    """

    phrase: str
    score: float
    box: tuple[float, float, float, float]


# -- prompts and captions --------------------------------------------------------------------------
def normalize_phrase(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed: ``" Red-Box. "`` -> ``"red box"``."""
    text = re.sub(r"[^\w\s]|_", " ", text.lower())
    return " ".join(text.split())


def build_captions(prompts: Sequence[str], combine: bool) -> list[str]:
    """GroundingDINO captions: one ``"p1. p2. p3."`` (combine) or one ``"p."`` per prompt.

    Prompts are lower-cased (GroundingDINO's BERT is uncased and the original lower-cases too).
    """
    parts = [normalize_phrase(p) for p in prompts]
    if combine:
        return [". ".join(parts) + "."]
    return [p + "." for p in parts]


def token_segments(input_ids: Sequence[int], separator_ids: set[int]) -> list[int]:
    """Caption segment of each token: 0 for the first prompt, 1 for the next, ...; -1 for
    separators ("." and special tokens such as [CLS], [SEP], [PAD])."""
    segments, seg = [], 0
    for tid in input_ids:
        if tid in separator_ids:
            segments.append(-1)
            if segments[:-1] and segments[-2] >= 0:  # a separator after words closes the segment
                seg += 1
        else:
            segments.append(seg)
    return segments


def detections_from_logits(
    probs: np.ndarray,
    boxes_cxcywh: np.ndarray,
    segments: Sequence[int],
    box_threshold: float,
    text_threshold: float,
    image_size: tuple[int, int],
    decode: Callable[[list[int]], str],
) -> list[Detection]:
    """GroundingDINO's grounding rule on raw outputs of one image.

    Args:
        probs: [Q, T] token probabilities (sigmoid of the logits) of the Q queries over the T caption
            tokens (padding removed).
        boxes_cxcywh: [Q, 4] boxes as (cx, cy, w, h) relative to the image, in [0, 1].
        segments: [T] the caption segment of each token (see :func:`token_segments`).
        box_threshold: a query is kept when its best token probability (its score) is above this.
        text_threshold: its phrase = the tokens above this inside the segment of its best
            non-separator token.
        image_size: (width, height) of the image, to turn boxes into pixels.
        decode: token positions -> text (the tokenizer's decode of the token ids at those positions).

    Returns:
        The kept detections, highest score first.
    """
    probs = np.asarray(probs, dtype=np.float64)
    boxes_cxcywh = np.asarray(boxes_cxcywh, dtype=np.float64)
    seg = np.asarray(segments)
    if probs.ndim != 2 or probs.shape[1] != len(seg):
        raise ValueError(f"probs must be [Q, T] with T = len(segments) = {len(seg)}, got {probs.shape}")
    if boxes_cxcywh.shape != (probs.shape[0], 4):
        raise ValueError(f"boxes must be [Q, 4] with Q = {probs.shape[0]}, got {boxes_cxcywh.shape}")
    words = seg >= 0
    w, h = image_size
    out = []
    for q in range(probs.shape[0]):
        score = float(probs[q].max()) if probs.shape[1] else 0.0
        if not score > box_threshold or not words.any():
            continue
        best = int(np.argmax(np.where(words, probs[q], -np.inf)))
        positions = [int(t) for t in np.nonzero((seg == seg[best]) & (probs[q] > text_threshold))[0]]
        cx, cy, bw, bh = boxes_cxcywh[q]
        box = (
            float(np.clip((cx - bw / 2) * w, 0, w)), float(np.clip((cy - bh / 2) * h, 0, h)),
            float(np.clip((cx + bw / 2) * w, 0, w)), float(np.clip((cy + bh / 2) * h, 0, h)),
        )
        out.append(Detection(decode(positions).strip() if positions else "", score, box))
    out.sort(key=lambda d: -d.score)
    return out


def choose_boxes(prompts: Sequence[str], detections: Sequence[Detection]) -> tuple[dict[str, Detection], list[str]]:
    """One detection per prompt: the best-scoring one whose phrase equals the prompt after
    :func:`normalize_phrase` (so case, punctuation and spacing do not matter).

    Returns:
        ({prompt: detection} for the prompts found, [prompts not found] in prompt order).
    """
    chosen: dict[str, Detection] = {}
    missing: list[str] = []
    for p in prompts:
        key = normalize_phrase(p)
        matches = [d for d in detections if normalize_phrase(d.phrase) == key]
        if matches:
            chosen[p] = max(matches, key=lambda d: d.score)  # max keeps the first of equal scores
        else:
            missing.append(p)
    return chosen, missing


def describe_detections(detections: Sequence[Detection], limit: int = 20) -> str:
    """``"'blue mug' 0.41, 'ball' 0.33"`` (highest score first; "none" when empty)."""
    if not detections:
        return "none"
    ds = sorted(detections, key=lambda d: -d.score)
    text = ", ".join(f"{d.phrase!r} {d.score:.2f}" if d.phrase else f"(no phrase) {d.score:.2f}" for d in ds[:limit])
    if len(ds) > limit:
        text += f", and {len(ds) - limit} more"
    return text


def resolve_thresholds(
    detect_conf: Optional[float],
    desc_box: Optional[float],
    desc_text: Optional[float],
    cli_box: Optional[float] = None,
    cli_text: Optional[float] = None,
) -> tuple[float, float, str]:
    """(box_threshold, text_threshold, where they came from).

    Each threshold: the command line when given, else description.yml's ``detect_conf`` (both),
    else its ``box_threshold`` / ``text_threshold``, else the defaults 0.35 / 0.25.
    """
    def pick(cli, specific, default, name):
        if cli is not None:
            return float(cli), f"command line --{name}"
        if detect_conf is not None:
            return float(detect_conf), "description.yml detect_conf"
        if specific is not None:
            return float(specific), f"description.yml {name}"
        return default, "default"

    box, src_box = pick(cli_box, desc_box, DEFAULT_BOX_THRESHOLD, "box_threshold")
    text, src_text = pick(cli_text, desc_text, DEFAULT_TEXT_THRESHOLD, "text_threshold")
    return box, text, src_box if src_box == src_text else f"box: {src_box}; text: {src_text}"


# -- masks ----------------------------------------------------------------------------------------
def clean_mask(scores: np.ndarray, kernel_size: int = 5, threshold: float = 0.0) -> np.ndarray:
    """Binary mask from SAM 2 logits (or any scores): ``scores > threshold``, then a morphological
    opening (removes specks thinner than the kernel) and a closing (fills such holes and gaps), each
    with an elliptical ``kernel_size`` x ``kernel_size`` element (as the original). [H, W] -> bool."""
    import cv2

    mask = np.asarray(scores) > threshold
    if mask.ndim != 2:
        raise ValueError(f"scores must be [H, W], got shape {mask.shape}")
    if kernel_size <= 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_size, kernel_size))
    m = mask.astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    return m.astype(bool)


def union_masks(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise OR of [H, W] bool masks (all False when there are none)."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m.shape != tuple(shape):
            raise ValueError(f"mask shape {m.shape} differs from {tuple(shape)}")
        out |= m
    return out


def compose_rgba(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[H, W, 4] uint8: RGB = the frame unchanged, alpha = 255 inside the mask, 0 outside."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {rgb.shape[:2]}")
    alpha = np.where(mask, np.uint8(255), np.uint8(0))
    return np.concatenate([rgb, alpha[..., None]], axis=2)


def save_rgba(path: str, rgba: np.ndarray) -> None:
    """Write an [H, W, 4] uint8 array as an 8-bit RGBA PNG, atomically."""
    from PIL import Image

    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"rgba must be [H, W, 4] uint8, got {rgba.shape} {rgba.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")


def pack_mask(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A bool [H, W] mask as packed bits (8x smaller, to hold every frame's masks before writing)."""
    return np.packbits(mask, axis=None), tuple(mask.shape)  # type: ignore[return-value]


def unpack_mask(packed: tuple[np.ndarray, tuple[int, int]]) -> np.ndarray:
    bits, shape = packed
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


def output_paths(source_path: str, prompts: Sequence[str], stem: str) -> tuple[dict[str, str], str]:
    """({prompt: D/masked_image_rgba/<prompt>/<stem>.png}, D/masked_image_rgba/masked/<stem>.png)."""
    root = os.path.join(source_path, OUTPUT_FOLDER)
    return {p: os.path.join(root, p, f"{stem}.png") for p in prompts}, os.path.join(root, UNION_FOLDER, f"{stem}.png")
