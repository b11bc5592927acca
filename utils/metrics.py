"""Image quality metrics: PSNR, SSIM and (when its weights are available) LPIPS.

LPIPS needs ImageNet backbone weights that are downloaded on first use; where they are not
available offline, :func:`lpips_metric` returns None and says why once — it never fakes a number.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from utils.losses import ssim

log = logging.getLogger(__name__)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None) -> float:
    """PSNR in dB of images in [0, 1]; with ``mask`` [1, H, W] only masked pixels count."""
    if mask is None:
        mse = torch.mean((a - b) ** 2)
    else:
        m = mask.to(a.dtype).expand_as(a)
        mse = torch.sum(((a - b) ** 2) * m) / torch.clamp(m.sum(), min=1.0)
    return float(10.0 * torch.log10(1.0 / torch.clamp(mse, min=1e-12)))


def ssim_metric(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(ssim(a.clamp(0, 1), b.clamp(0, 1)))


def load_lpips(net: str = "vgg", device: torch.device | str = "cpu") -> Optional[Callable[[torch.Tensor, torch.Tensor], float]]:
    """An LPIPS function, or None with a logged reason when the package or weights are missing."""
    try:
        import lpips  # type: ignore
    except ImportError:
        log.warning("LPIPS skipped: the `lpips` package is not installed (pip install lpips)")
        return None
    try:
        model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    except Exception as exc:  # download failures come in many types
        log.warning("LPIPS skipped: its %s backbone weights are not available offline (%s)", net, type(exc).__name__)
        return None

    @torch.no_grad()
    def fn(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(model(a[None].to(device) * 2 - 1, b[None].to(device) * 2 - 1).mean())

    return fn
