"""Image losses. Images are [C, H, W] or [B, C, H, W] floats in [0, 1]."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


@functools.lru_cache(maxsize=8)
def _gauss_1d(size: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with zero padding (as the 3DGS SSIM), [B, C, H, W]."""
    c = x.shape[1]
    g = _gauss_1d(size, sigma, str(x.device), x.dtype)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(c, 1, 1, size), padding=(0, size // 2), groups=c)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(c, 1, size, 1), padding=(size // 2, 0), groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel SSIM (Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03²), shape of the input."""
    squeeze = a.dim() == 3
    if squeeze:
        a, b = a[None], b[None]
    mu_a, mu_b = _blur(a, window, sigma), _blur(b, window, sigma)
    saa = _blur(a * a, window, sigma) - mu_a**2
    sbb = _blur(b * b, window, sigma) - mu_b**2
    sab = _blur(a * b, window, sigma) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + SSIM_C1) * (2 * sab + SSIM_C2)) / ((mu_a**2 + mu_b**2 + SSIM_C1) * (saa + sbb + SSIM_C2))
    return m[0] if squeeze else m


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM."""
    return ssim_map(a, b).mean()
