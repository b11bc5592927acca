"""Images on disk <-> tensors.

Tensors are float32 in [0, 1], channel-first: RGB [3, H, W], alpha/masks/depth [1, H, W].
Resizing uses PIL's bicubic filter for colour and alpha (as 3DGS) and nearest for depth.

torch is imported inside the functions that make or take tensors: :func:`image_size` and
:func:`find_image` (used by ``scene.dataset``) work without it, so camera loading stays torch-free
(stage 5's hull backend runs with the python of a generator environment).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import InputError
from utils.io import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError(path, "image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None


def _open(path: str) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise InputError(path, "image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None


def open_image(path: str) -> Image.Image:
    """A decoded image; a missing or unreadable file raises :class:`InputError`."""
    return _open(path)


def resample_rgba(im: Image.Image, size: Optional[tuple[int, int]] = None) -> tuple[Image.Image, bool]:
    """``im`` as RGB, or RGBA when it has alpha, resized to ``size`` = (width, height) bicubically
    when given and different: the pixels every loader of this project trains on. Returns
    (image, has_alpha)."""
    has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
    im = im.convert("RGBA" if has_alpha else "RGB")
    if size is not None and tuple(im.size) != tuple(size):
        im = im.resize(tuple(size), Image.BICUBIC)
    return im, has_alpha


def _rgba(im: Image.Image, size: Optional[tuple[int, int]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    import torch

    im, has_alpha = resample_rgba(im, size)
    arr = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).clamp(0, 1)
    if has_alpha:
        return arr[:3].contiguous(), arr[3:4].contiguous()
    return arr, None


def _mask(im: Image.Image, size: Optional[tuple[int, int]], threshold: int) -> torch.Tensor:
    import torch

    if im.mode in ("RGBA", "LA"):
        im = im.getchannel("A")
    else:
        im = im.convert("L")
    if size is not None and tuple(im.size) != tuple(size):
        im = im.resize(tuple(size), Image.NEAREST)
    return torch.from_numpy(np.asarray(im) > threshold)[None]


def load_rgba(path: str, size: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Load an RGB or RGBA image, resized to ``size`` = (width, height) when given (bicubic).

    Returns:
        rgb [3, H, W] (not premultiplied) and alpha [1, H, W] (None for images without alpha).
    """
    return _rgba(_open(path), size)


def load_mask(path: str, size: Optional[tuple[int, int]] = None, threshold: int = 127) -> torch.Tensor:
    """A binary mask [1, H, W] (bool) from an 8-bit mask or the alpha of an RGBA image (> threshold),
    resized to ``size`` with nearest neighbours."""
    return _mask(_open(path), size, threshold)


def load_rgba_and_mask(path: str, size: Optional[tuple[int, int]] = None,
                       threshold: int = 127) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """:func:`load_rgba` and :func:`load_mask` of one file, read once: (rgb, alpha, mask)."""
    im = _open(path)
    rgb, alpha = _rgba(im, size)
    return rgb, alpha, _mask(im, size, threshold)


def load_depth(path: str, size: tuple[int, int], scale: float) -> torch.Tensor:
    """A depth map [1, H, W] in metres from a 16-bit PNG (value x ``scale``), nearest resize."""
    import torch

    im = _open(path)
    arr = np.asarray(im)
    if arr.ndim != 2:
        raise InputError(path, f"depth image must have one channel, got shape {arr.shape}")
    if tuple(im.size) != tuple(size):
        im = Image.fromarray(arr.astype(np.int32)).resize(tuple(size), Image.NEAREST)
        arr = np.asarray(im)
    return torch.from_numpy(arr.astype(np.float32) * scale)[None]


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[C, H, W] float in [0, 1] -> [H, W, C] uint8 (rounded)."""
    import torch

    return (img.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def save_image(path: str, img: torch.Tensor, alpha: Optional[torch.Tensor] = None) -> None:
    """Save [3, H, W] (and optional [1, H, W] alpha) as an 8-bit PNG, atomically."""
    import torch

    if alpha is not None:
        img = torch.cat([img, alpha], dim=0)
    arr = to_uint8(img)
    mode = "RGBA" if arr.shape[2] == 4 else "RGB"
    with atomic_path(path) as tmp:
        Image.fromarray(arr, mode).save(tmp, format="PNG")


def find_image(folder: str, name: str) -> Optional[str]:
    """The file for COLMAP image ``name`` in ``folder``: its basename, else the same stem with
    any known extension (sorted, first match)."""
    base = os.path.basename(name)
    direct = os.path.join(folder, base)
    if os.path.isfile(direct):
        return direct
    stem = os.path.splitext(base)[0]
    for ext in IMAGE_EXTENSIONS:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None
