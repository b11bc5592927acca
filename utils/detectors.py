"""Stage 1 backends: GroundingDINO + SAM 2 video (Hugging Face transformers), and mask import.

transformers is imported lazily, inside the functions that need it, so the rest of the project
(and the ``masks`` backend) works without it. Models are given as a local folder (e.g. under
``checkpoints/``) or a hub id; a model that cannot be loaded becomes an :class:`InputError` that
says how to get the weights.

The pure parts (grounding rule, box choice, mask clean-up) are in :mod:`utils.segmentation`.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from utils.errors import InputError
from utils.segmentation import Detection, clean_mask, detections_from_logits, pack_mask, token_segments

log = logging.getLogger(__name__)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECKPOINTS = os.path.join(REPO_ROOT, "checkpoints")

#: Errors that ``from_pretrained`` raises for a missing, incomplete or unreachable model
#: (huggingface_hub's errors derive from OSError or ValueError).
_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)

Packed = tuple[np.ndarray, tuple[int, int]]


def require_transformers(*names: str) -> Any:
    """Import transformers (and check that it has ``names``), or raise an actionable ImportError."""
    try:
        import transformers
    except ImportError:
        raise ImportError("the gdino_sam2 backend needs Hugging Face transformers: pip install transformers "
                          "(or use --backend masks to import existing masks)") from None
    missing = [n for n in names if not hasattr(transformers, n)]
    if missing:
        raise ImportError(f"transformers {transformers.__version__} lacks {', '.join(missing)}: "
                          "pip install -U transformers (SAM 2 video needs >= 4.56)")
    return transformers


def resolve_model_source(name: str, checkpoints_dir: str = "") -> str:
    """Where to load ``name`` from: an existing folder; else a folder of the same last name under
    ``checkpoints_dir`` (``IDEA-Research/grounding-dino-base`` -> ``checkpoints/grounding-dino-base``);
    else the hub id itself. A name that is clearly a path (absolute, ``./``, ``../``, a trailing
    slash, or more than one ``/``) but is not a folder is an error, so it never reaches the network."""
    if not name:
        raise InputError(None, "empty model name")
    if os.path.isdir(name):
        return name
    ckpt = checkpoints_dir or DEFAULT_CHECKPOINTS
    local = os.path.join(ckpt, os.path.basename(name.rstrip("/")))
    if os.path.isdir(local):
        return local
    looks_like_path = (os.path.isabs(name) or name.startswith(("./", "../", "~")) or name.endswith("/")
                       or name.count("/") != 1 or os.sep != "/" and os.sep in name)
    if looks_like_path:
        raise InputError(name, f"model folder not found (nor {local}); download the weights there or give a Hugging Face hub id")
    return name


def hub_load_kwargs(source: str, connect_timeout: float = 5.0) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for ``source``, checked so that an unreachable hub fails
    at once instead of after minutes of retries.

    A local folder needs none. A hub id already in the local Hugging Face cache is loaded from it
    (``local_files_only``). Otherwise the hub must be reachable: offline mode (``HF_HUB_OFFLINE``)
    or a failed connection to the endpoint is an :class:`InputError` saying how to get the weights.
    Behind an HTTP(S) proxy the connection is not probed (the download itself will tell).
    """
    if os.path.isdir(source):
        return {}
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return {"local_files_only": True}
    hint = (f"download it on a machine with network access (`huggingface-cli download {source} --local-dir "
            f"checkpoints/{os.path.basename(source)}`) and copy that folder here")
    if constants.HF_HUB_OFFLINE:
        raise InputError(source, f"model not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {hint}")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return {}
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=connect_timeout).close()
    except OSError as exc:
        raise InputError(source, f"model not in the local Hugging Face cache and {url.hostname} cannot be reached ({exc}); {hint}") from None
    return {}


def _load_error(kind: str, source: str, default_dir: str, exc: BaseException) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = ("a local folder" if os.path.isdir(source) else "a hub id, which needs network access (or a cache)")
    return InputError(source, f"cannot load the {kind} model from {where} ({first[:200]}); get the weights with "
                              f"`huggingface-cli download {default_dir} --local-dir checkpoints/{os.path.basename(default_dir)}` "
                              "on a machine with network access, and pass that folder")


def _device(name: str):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- GroundingDINO --------------------------------------------------------------------------------
class GroundingDinoDetector:
    """GroundingDINO (``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``) on one image.

    The raw outputs are grounded with :func:`utils.segmentation.detections_from_logits` (the
    original's rule: a phrase is taken from the caption segment of the box's best token), not with
    transformers' post-processing, whose phrase is every token above the text threshold anywhere in
    the caption (so with several prompts it can merge them).
    """

    def __init__(self, source: str, device: str = "", default_id: str = "IDEA-Research/grounding-dino-base"):
        tf = require_transformers("GroundingDinoForObjectDetection", "GroundingDinoProcessor")
        self.device = _device(device)
        self.source = source
        kwargs = hub_load_kwargs(source)
        try:
            self.processor = tf.GroundingDinoProcessor.from_pretrained(source, **kwargs)
            self.model = tf.GroundingDinoForObjectDetection.from_pretrained(source, **kwargs).to(self.device).eval()
        except _LOAD_ERRORS as exc:
            raise _load_error("GroundingDINO", source, default_id, exc) from None
        tok = self.processor.tokenizer
        self._separators = set(tok.all_special_ids)
        dot = tok.get_vocab().get(".")
        if dot is not None:
            self._separators.add(dot)

    def detect(self, image: np.ndarray, captions: Sequence[str], box_threshold: float, text_threshold: float) -> list[Detection]:
        """Detections of every caption on ``image`` ([H, W, 3] uint8), highest score first."""
        import torch
        from PIL import Image

        h, w = image.shape[:2]
        pil = Image.fromarray(image, "RGB")
        tok = self.processor.tokenizer
        out: list[Detection] = []
        for caption in captions:
            inputs = self.processor(images=pil, text=caption, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                res = self.model(**inputs)
            ids = inputs["input_ids"][0].tolist()
            t = min(len(ids), res.logits.shape[-1])
            probs = res.logits[0, :, :t].float().sigmoid().cpu().numpy()
            boxes = res.pred_boxes[0].float().cpu().numpy()
            segs = token_segments(ids[:t], self._separators)

            def decode(positions: list[int], ids=ids) -> str:
                return tok.decode([ids[i] for i in positions], skip_special_tokens=True)

            out += detections_from_logits(probs, boxes, segs, box_threshold, text_threshold, (w, h), decode)
        out.sort(key=lambda d: -d.score)
        return out

    def close(self) -> None:
        """Free the model (before the tracker is loaded on the same device)."""
        import torch

        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# -- SAM 2 video ----------------------------------------------------------------------------------
class Sam2VideoTracker:
    """SAM 2 video (``Sam2VideoModel`` + ``Sam2VideoProcessor``): box prompts on one frame,
    propagated forward and backward from it over the whole frame list."""

    def __init__(self, source: str, device: str = "", default_id: str = "facebook/sam2.1-hiera-large"):
        tf = require_transformers("Sam2VideoModel", "Sam2VideoProcessor")
        self.device = _device(device)
        self.source = source
        kwargs = hub_load_kwargs(source)
        try:
            self.processor = tf.Sam2VideoProcessor.from_pretrained(source, **kwargs)
            self.model = tf.Sam2VideoModel.from_pretrained(source, **kwargs).to(self.device).eval()
        except _LOAD_ERRORS as exc:
            raise _load_error("SAM 2 video", source, default_id, exc) from None

    def track(
        self,
        frames: Sequence[np.ndarray],
        key: int,
        boxes: Sequence[Sequence[float]],
        morph_kernel: int = 5,
        logit_threshold: float = 0.0,
        max_frames_on_device: int = 256,
        progress: Optional[Callable[[int], None]] = None,
    ) -> tuple[list[list[Packed]], bool]:
        """Masks of every object on every frame.

        Args:
            frames: N frames [H, W, 3] uint8 of one size, in video order.
            key: index of the frame the boxes were found on.
            boxes: K boxes (x0, y0, x1, y1) in pixels; object k gets SAM 2 object id k + 1.
            morph_kernel, logit_threshold: mask clean-up (:func:`utils.segmentation.clean_mask`).
            max_frames_on_device: above this many frames the preprocessed video and the per-frame
                state stay in CPU memory (only the current frame's work is on the device).
            progress: called with the number of newly finished frames.

        Returns:
            (masks[k][i] packed, whether the video was kept off the device).
        """
        import torch

        n, k = len(frames), len(boxes)
        h, w = frames[0].shape[:2]
        offload = self.device.type != "cpu" and n > max_frames_on_device
        storage = torch.device("cpu") if offload else self.device
        if offload:
            log.info("%d frames > --max_frames_on_device %d: video and tracking state kept in CPU memory", n, max_frames_on_device)
        session = self.processor.init_video_session(
            video=list(frames), inference_device=self.device, inference_state_device=storage,
            processing_device=storage, video_storage_device=storage,
        )
        obj_ids = list(range(1, k + 1))
        self.processor.add_inputs_to_inference_session(
            session, frame_idx=key, obj_ids=obj_ids, input_boxes=[[list(map(float, b)) for b in boxes]])
        masks: list[list[Optional[Packed]]] = [[None] * n for _ in range(k)]
        with torch.inference_mode():
            # Forward from the key frame (inclusive) to the last frame, then backward from the key
            # frame to frame 0: every frame gets a mask wherever the key frame is.
            for reverse in (False, True):
                for out in self.model.propagate_in_video_iterator(session, start_frame_idx=key, reverse=reverse):
                    i = int(out.frame_idx)
                    logits = self.processor.post_process_masks([out.pred_masks], original_sizes=[[h, w]], binarize=False)[0]
                    logits = logits.float().cpu().numpy()  # [K, 1, H, W]
                    ids = list(out.object_ids) if out.object_ids is not None else obj_ids
                    new = masks[0][i] is None
                    for j, oid in enumerate(ids):
                        masks[oid - 1][i] = pack_mask(clean_mask(logits[j, 0], morph_kernel, logit_threshold))
                    if new and progress is not None:
                        progress(1)
        lost = [i for i in range(n) if any(masks[o][i] is None for o in range(k))]
        if lost:
            raise RuntimeError(f"SAM 2 propagation returned no mask for frames {lost[:5]}")
        return masks, offload  # type: ignore[return-value]


# -- imported masks -------------------------------------------------------------------------------
def load_mask_folder(masks_dir: str, prompts: Sequence[str], stems: Sequence[str], sizes: Sequence[tuple[int, int]]) -> list[list[Packed]]:
    """Masks ``masks_dir/<prompt>/<stem>.png`` of every prompt and frame, validated in full.

    Any 8-bit mask or the alpha of an RGBA image; > 127 is inside. Every file is checked (present,
    readable, the frame's size) before this returns, so a caller can validate before writing.

    Args:
        sizes: (width, height) of each frame.

    Returns:
        masks[k][i] packed.
    """
    from utils.images import find_image, load_mask

    if not os.path.isdir(masks_dir):
        raise InputError(masks_dir, "mask folder not found (expected <prompt>/<stem>.png inside)")
    paths: list[list[str]] = []
    for p in prompts:
        folder = os.path.join(masks_dir, p)
        if not os.path.isdir(folder):
            raise InputError(folder, f"no mask folder for prompt {p!r}")
        found = [find_image(folder, f"{s}.png") for s in stems]
        missing = [s for s, f in zip(stems, found) if f is None]
        if missing:
            more = f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
            raise InputError(folder, f"{len(missing)} of {len(stems)} registered frames have no mask: {', '.join(missing[:5])}{more}")
        paths.append(found)  # type: ignore[arg-type]
    out: list[list[Packed]] = []
    for p, files in zip(prompts, paths):
        row = []
        for path, (w, h) in zip(files, sizes):
            m = load_mask(path)[0].numpy()
            if m.shape != (h, w):
                raise InputError(path, f"mask is {m.shape[1]}x{m.shape[0]} but its frame is {w}x{h}")
            row.append(pack_mask(m))
        out.append(row)
    return out
