"""Adaptive density control of 3DGS (clone, split, prune, opacity reset), on any device.

The rules are those of the 3DGS paper (and gsplat's ``DefaultStrategy``):

* statistics: for every Gaussian visible in a step, the norm of its screen-space gradient in
  NDC units (pixel gradient x W/2, H/2) is accumulated, and its largest screen radius kept;
* every ``densification_interval`` steps in (densify_from_iter, densify_until_iter):
  Gaussians whose mean gradient ≥ ``densify_grad_threshold`` are cloned when small
  (max scale ≤ percent_dense x extent) or split into ``split_count`` samples of the Gaussian
  with scales / ``split_scale_divisor`` (3DGS: 0.8 x 2) when large; then Gaussians with opacity < ``opacity_cull``
  are pruned, and after the first opacity reset also those larger than
  ``max_world_size`` x extent (and, if enabled, screen radius > ``max_screen_size``);
* every ``opacity_reset_interval`` steps (while densifying) opacities become
  min(opacity, ``opacity_reset_value``).

All parameter surgery goes through :func:`update_params`, which keeps the Adam state of every
parameter in sync with its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from scene.gaussian_model import PARAM_NAMES, GaussianModel
from utils.geometry import quat_to_rotmat


# -- schedule predicates ------------------------------------------------------------------------
def collects_stats(step: int, densify_until_iter: int) -> bool:
    """Screen-space statistics are gathered while densification may still happen."""
    return step < densify_until_iter


def is_densify_step(step: int, densify_from_iter: int, densify_until_iter: int, interval: int) -> bool:
    """Densify at every ``interval``-th step strictly after ``densify_from_iter`` and before the end."""
    return densify_from_iter < step < densify_until_iter and interval > 0 and step % interval == 0


def is_opacity_reset_step(step: int, reset_interval: int, densify_until_iter: int, white_background: bool = False, densify_from_iter: int = 500) -> bool:
    """Reset opacities every ``reset_interval`` steps while densifying (and, with a white
    background, once at ``densify_from_iter``)."""
    if step <= 0 or step >= densify_until_iter:
        return False
    periodic = reset_interval > 0 and (step % reset_interval == 0)
    return periodic or (white_background and step == densify_from_iter)


def prunes_large(step: int, reset_interval: int) -> bool:
    """Size-based pruning starts after the first opacity reset."""
    return step > reset_interval


# -- parameter surgery ------------------------------------------------------------------------------
def update_params(
    model: GaussianModel,
    optimizer: Optional[torch.optim.Optimizer],
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, str, Tensor], Tensor],
) -> None:
    """Replace every parameter by ``param_fn(name, old)`` and each of its optimizer state tensors
    (exp_avg, exp_avg_sq, ...) by ``state_fn(name, key, old_state)``.

    The optimizer must have one param group per parameter, named by ``group["name"]``.
    """
    new_params = {name: nn.Parameter(param_fn(name, model.params[name].detach())) for name in PARAM_NAMES}
    if optimizer is not None:
        for group in optimizer.param_groups:
            name = group["name"]
            old = group["params"][0]
            state = optimizer.state.pop(old, None)
            new = new_params[name]
            if state:
                for key, value in list(state.items()):
                    if key != "step" and isinstance(value, Tensor) and value.dim() > 0:
                        state[key] = state_fn(name, key, value)
                optimizer.state[new] = state
            group["params"] = [new]
    model.replace_params(new_params)


def select_gaussians(model: GaussianModel, optimizer, keep: Tensor) -> None:
    """Keep the rows where ``keep`` is True."""
    update_params(model, optimizer, lambda n, p: p[keep], lambda n, k, s: s[keep])


def append_gaussians(model: GaussianModel, optimizer, new: dict[str, Tensor]) -> None:
    """Append rows (optimizer state of new rows starts at zero)."""
    update_params(
        model,
        optimizer,
        lambda n, p: torch.cat([p, new[n].to(p)], 0),
        lambda n, k, s: torch.cat([s, torch.zeros((new[n].shape[0],) + s.shape[1:], device=s.device, dtype=s.dtype)], 0),
    )


def reset_opacity(model: GaussianModel, optimizer, value: float) -> None:
    """Opacities become min(opacity, value); their optimizer state is zeroed."""
    cap = torch.logit(torch.tensor(value, device=model.device))

    def pf(n, p):
        return torch.minimum(p, cap) if n == "opacities" else p

    def sf(n, k, s):
        return torch.zeros_like(s) if n == "opacities" else s

    update_params(model, optimizer, pf, sf)


# -- the strategy -----------------------------------------------------------------------------------
@dataclass
class DensifyConfig:
    """See :class:`utils.arguments.OptimizationParams` for the meaning of each field."""

    densify_from_iter: int = 500
    densify_until_iter: int = 15_000
    densification_interval: int = 100
    opacity_reset_interval: int = 3000
    densify_grad_threshold: float = 0.0002
    percent_dense: float = 0.01
    opacity_cull: float = 0.005
    opacity_reset_value: float = 0.01
    max_screen_size: float = 0.0
    max_world_size: float = 0.1
    split_count: int = 2
    split_scale_divisor: float = 1.6
    white_background: bool = False


class Densifier:
    """Holds the screen-space statistics and applies the density control of 3DGS.

    Args:
        cfg: thresholds and schedule. extent: scene extent (world units).
    """

    def __init__(self, cfg: DensifyConfig, extent: float, n: int, device: torch.device):
        self.cfg = cfg
        self.extent = float(extent)
        self.grad_accum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "count": self.count, "max_radii": self.max_radii}

    def load_state_dict(self, d: dict) -> None:
        self.grad_accum, self.count, self.max_radii = d["grad_accum"], d["count"], d["max_radii"]

    @torch.no_grad()
    def update_stats(self, screen_grad: Optional[Tensor], radii: Tensor, width: int, height: int) -> None:
        """Accumulate one view's screen-space gradients [N, 2] (pixels) and radii [N]."""
        if screen_grad is None:
            return
        visible = (radii > 0).to(self.count.dtype)  # arithmetic masks: no host-device sync
        g = screen_grad.detach()
        norm = torch.sqrt((g[:, 0] * (width * 0.5)) ** 2 + (g[:, 1] * (height * 0.5)) ** 2)
        self.grad_accum += norm * visible
        self.count += visible
        self.max_radii = torch.maximum(self.max_radii, radii.to(self.max_radii.dtype) * visible)

    @torch.no_grad()
    def step(self, step: int, model: GaussianModel, optimizer, generator: Optional[torch.Generator] = None) -> dict:
        """Apply whatever the schedule says at ``step`` (after the optimizer step)."""
        c = self.cfg
        info = {}
        if is_densify_step(step, c.densify_from_iter, c.densify_until_iter, c.densification_interval):
            info.update(self._densify_and_prune(step, model, optimizer, generator))
        if is_opacity_reset_step(step, c.opacity_reset_interval, c.densify_until_iter, c.white_background, c.densify_from_iter):
            reset_opacity(model, optimizer, c.opacity_reset_value)
            info["opacity_reset"] = True
        return info

    def _densify_and_prune(self, step: int, model: GaussianModel, optimizer, generator) -> dict:
        c = self.cfg
        grads = self.grad_accum / self.count.clamp(min=1)
        grads[~torch.isfinite(grads)] = 0
        high = grads >= c.densify_grad_threshold
        max_scale = model.scales.max(dim=-1).values
        small = max_scale <= c.percent_dense * self.extent
        clone_mask = high & small
        split_mask = high & ~small
        n_before = len(model)

        # clone: copies of small Gaussians with high gradient
        raw = model.raw()
        clones = {k: v[clone_mask] for k, v in raw.items()}
        # split: samples inside large Gaussians, shrunk
        k = c.split_count
        sel = {key: v[split_mask] for key, v in raw.items()}
        stds = torch.exp(sel["scales"]).repeat(k, 1)
        noise = torch.randn(stds.shape, device=stds.device, generator=generator) * stds
        rots = quat_to_rotmat(nn.functional.normalize(sel["quats"], dim=-1)).repeat(k, 1, 1)
        split_new = {
            "means": (rots @ noise[..., None]).squeeze(-1) + sel["means"].repeat(k, 1),
            "scales": (sel["scales"] - math.log(c.split_scale_divisor)).repeat(k, 1),
            "quats": sel["quats"].repeat(k, 1),
            "sh0": sel["sh0"].repeat(k, 1, 1),
            "shN": sel["shN"].repeat(k, 1, 1),
            "opacities": sel["opacities"].repeat(k),
        }
        new = {key: torch.cat([clones[key], split_new[key]], 0) for key in PARAM_NAMES}
        n_new = new["means"].shape[0]
        append_gaussians(model, optimizer, new)
        # stats of new rows start empty; split originals are removed below
        pad = lambda t: torch.cat([t, torch.zeros(n_new, device=t.device, dtype=t.dtype)])  # noqa: E731
        self.grad_accum, self.count, self.max_radii = pad(self.grad_accum), pad(self.count), pad(self.max_radii)

        remove = torch.cat([split_mask, torch.zeros(n_new, dtype=torch.bool, device=split_mask.device)])
        remove |= model.opacities < c.opacity_cull
        n_big = 0
        if prunes_large(step, c.opacity_reset_interval):
            big = model.scales.max(dim=-1).values > c.max_world_size * self.extent
            if c.max_screen_size > 0:
                big |= self.max_radii > c.max_screen_size
            n_big = int((big & ~remove).sum())
            remove |= big
        keep = ~remove
        select_gaussians(model, optimizer, keep)
        n = len(model)
        self.grad_accum = torch.zeros(n, device=model.device)
        self.count = torch.zeros(n, device=model.device)
        self.max_radii = torch.zeros(n, device=model.device)
        return {
            "cloned": int(clone_mask.sum()),
            "split": int(split_mask.sum()),
            "pruned": int(n_before + n_new - n - int(split_mask.sum())),
            "pruned_large": n_big,
            "num_gaussians": n,
        }
