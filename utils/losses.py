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


class _SSIMMap(torch.autograd.Function):
    """Per-pixel SSIM of [B, C, H, W] images with an analytic backward.

    Forward blurs the five statistics a, b, a², b², ab in one grouped convolution pass; backward
    needs one more pass over three maps: with m = A1·A2 / (B1·B2), A1 = 2μaμb + C1,
    A2 = 2(E[ab] − μaμb) + C2, B1 = μa² + μb² + C1, B2 = E[a²] − μa² + E[b²] − μb² + C2, the chain rule
    through the blur G (self-adjoint: symmetric kernel, zero padding) gives
    ∂L/∂a = G(g·∂m/∂μa) + 2a·G(g·∂m/∂E[a²]) + b·G(g·∂m/∂E[ab]) and the same for b. The autograd
    version (:func:`ssim_map`) records ~40 kernels per call; this one launches about half as many
    and keeps six maps instead of every intermediate.
    """

    @staticmethod
    def forward(ctx, a, b, window: int, sigma: float):
        c = a.shape[1]
        stats = _blur(torch.cat([a, b, a * a, b * b, a * b], 1), window, sigma)
        mu_a, mu_b, e_aa, e_bb, e_ab = stats.split(c, 1)
        mu_ab = mu_a * mu_b
        a1 = 2 * mu_ab + SSIM_C1
        a2 = 2 * (e_ab - mu_ab) + SSIM_C2
        b1 = mu_a * mu_a + mu_b * mu_b + SSIM_C1
        b2 = (e_aa + e_bb) - (b1 - SSIM_C1) + SSIM_C2
        ctx.save_for_backward(a, b, mu_a, mu_b, a1, a2, b1, b2)
        ctx.window, ctx.sigma = window, sigma
        return (a1 * a2) / (b1 * b2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        a, b, mu_a, mu_b, a1, a2, b1, b2 = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        inv = g / (b1 * b2)
        m_g = inv * a1 * a2  # g·m
        dA1, dA2 = inv * a2, inv * a1  # g·∂m/∂A1, g·∂m/∂A2
        dB1, dB2 = m_g / b1, m_g / b2  # −g·∂m/∂B1, −g·∂m/∂B2
        c = a.shape[1]
        maps = []
        # g·∂m/∂μa = 2μb·(dA1 − dA2) − 2μa·(dB1 − dB2); ∂/∂E[a²] = −dB2; ∂/∂E[ab] = 2·dA2
        d_eab = 2 * dA2
        if need_a:
            maps += [2 * (mu_b * (dA1 - dA2) - mu_a * (dB1 - dB2)), -dB2]
        if need_b:
            maps += [2 * (mu_a * (dA1 - dA2) - mu_b * (dB1 - dB2)), -dB2]
        blurred = _blur(torch.cat(maps + [d_eab], 1), ctx.window, ctx.sigma).split(c, 1)
        g_ab = blurred[-1]
        grad_a = grad_b = None
        i = 0
        if need_a:
            grad_a = blurred[i] + 2 * a * blurred[i + 1] + b * g_ab
            i += 2
        if need_b:
            grad_b = blurred[i] + 2 * b * blurred[i + 1] + a * g_ab
        return grad_a, grad_b, None, None


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean SSIM of [C, H, W] or [B, C, H, W] images (the training loss's; same value as
    ``ssim_map(a, b).mean()``, gradients by :class:`_SSIMMap`)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if b.dtype != a.dtype:
        b = b.to(a.dtype)
    return _SSIMMap.apply(a, b, window, sigma).mean()
