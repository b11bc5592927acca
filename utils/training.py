"""3DGS optimisation of a scene (the core of ``train_3dgs.py``).

The loop is the 3DGS one: one random training view per step (a shuffled stack), loss
(1 − λ)·L1 + λ·(1 − SSIM), optional depth losses, Adam with per-parameter learning rates (the
centres' rate decays log-linearly and is multiplied by the scene extent), SH degree raised every
``sh_increase_interval`` steps, adaptive density control (:mod:`utils.densification`).
Training images are decoded once and kept on the training device.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from gaussian_renderer import render
from scene.cameras import Camera
from scene.dataset import SceneData
from scene.gaussian_model import GaussianModel
from utils.arguments import ModelParams, OptimizationParams, PipelineParams
from utils.densification import DensifyConfig, Densifier, collects_stats
from utils.errors import InputError
from utils.images import load_depth, load_rgba
from utils.io import atomic_path, read_json, write_json
from utils.losses import l1_loss, ssim
from utils.metrics import psnr

log = logging.getLogger(__name__)


def expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int, delay_steps: int = 0, delay_mult: float = 1.0) -> float:
    """Log-linear decay from lr_init to lr_final over max_steps (3DGS ``get_expon_lr_func``)."""
    if step < 0 or (lr_init == 0.0 and lr_final == 0.0):
        return 0.0
    if delay_steps > 0:
        delay = delay_mult + (1 - delay_mult) * math.sin(0.5 * math.pi * min(max(step / delay_steps, 0.0), 1.0))
    else:
        delay = 1.0
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return delay * math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def make_optimizer(model: GaussianModel, op: OptimizationParams, extent: float) -> torch.optim.Adam:
    """Adam (eps 1e-15) with one named param group per raw parameter."""
    lrs = {
        "means": op.position_lr_init * extent,
        "sh0": op.feature_lr,
        "shN": op.feature_lr / 20.0,
        "opacities": op.opacity_lr,
        "scales": op.scaling_lr,
        "quats": op.rotation_lr,
    }
    groups = [{"params": [model.params[name]], "lr": lr, "name": name} for name, lr in lrs.items()]
    # the fused CUDA kernel updates all parameters in one launch
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=model.device.type == "cuda")


@dataclass
class TrainView:
    """A camera with its ground truth on the training device."""

    camera: Camera
    image: torch.Tensor  # [3, H, W]
    alpha: Optional[torch.Tensor]  # [1, H, W] or None
    depth: Optional[torch.Tensor] = None  # [1, H, W] metres (sensor), 0 = invalid
    depth_est: Optional[torch.Tensor] = None  # [1, H, W] estimated depth (any affine scale)

    def target(self, background: torch.Tensor) -> torch.Tensor:
        """[3, H, W] ground truth on ``background``'s device, composited over it where alpha < 1."""
        img = self.image.to(background.device, non_blocking=True)
        if self.alpha is None:
            return img
        return img + (1 - self.alpha.to(background.device)) * background[:, None, None]


def load_views(
    cameras: list[Camera],
    device: torch.device,
    depth_dir: str = "",
    depth_est_dir: str = "",
    depth_scale: float = 0.001,
    desc: str = "loading images",
    quiet: bool = False,
) -> list[TrainView]:
    """Decode every camera's image (and depths) once, at the camera resolution, onto ``device``."""
    views = []
    for cam in tqdm(cameras, desc=desc, leave=False, disable=quiet or len(cameras) < 20):
        if cam.image_path is None:
            raise InputError(None, f"camera {cam.image_name!r} has no image")
        rgb, alpha = load_rgba(cam.image_path, (cam.width, cam.height))
        if alpha is not None:  # composite on black like 3DGS (premultiplied)
            rgb = rgb * alpha
        depth = depth_est = None
        if depth_dir:
            p = os.path.join(depth_dir, cam.image_name + ".png")
            if not os.path.isfile(p):
                raise InputError(p, "depth map missing for this view (every view needs one when depths are used)")
            depth = load_depth(p, (cam.width, cam.height), depth_scale).to(device)
        if depth_est_dir:
            p = os.path.join(depth_est_dir, cam.image_name + ".png")
            if not os.path.isfile(p):
                raise InputError(p, "estimated depth map missing for this view")
            depth_est = load_depth(p, (cam.width, cam.height), 1.0).to(device)
        views.append(TrainView(cam, rgb.to(device), None if alpha is None else alpha.to(device), depth, depth_est))
    return views


def depth_losses(out_depth: torch.Tensor, out_alpha: torch.Tensor, view: TrainView, op: OptimizationParams) -> torch.Tensor:
    """Depth terms of the training loss, for one rendered view.

    ``out_depth`` / ``out_alpha``: rendered expected depth and opacity, ``[1, H, W]``. Pixels count
    where the rendered opacity exceeds ``op.depth_alpha_min``. Two terms, each present when the view
    has the map:

    * sensor depth ``view.depth`` (metres, valid in ``(depth_min, depth_max)``): mean L1 between the
      rendered and the sensor inverse depth;
    * estimated depth ``view.depth_est`` (any affine scale, > 0 where valid): the rendered depth is
      fitted by ``a·est + b`` (least squares, detached), and the mean L1 residual is divided by the
      mean rendered depth; skipped unless more than ``op.depth_est_min_pixels`` pixels are valid.

    Written with masks and sums instead of boolean indexing, ``.any()`` and ``lstsq``: nothing here
    waits for the GPU (the loss is the same; a term without valid pixels contributes exactly 0).
    """
    loss = out_depth.new_zeros(())
    covered = out_alpha.detach() > op.depth_alpha_min
    if view.depth is not None:
        valid = (view.depth > op.depth_min) & (view.depth < op.depth_max) & covered
        count = valid.sum()
        inv_r = 1.0 / out_depth.clamp(min=1e-6)
        inv_d = 1.0 / view.depth.clamp(min=1e-6)
        residual = torch.where(valid, inv_r - inv_d, torch.zeros_like(inv_r)).abs()
        loss = loss + residual.sum() / count.clamp(min=1)
    if view.depth_est is not None:
        valid = (view.depth_est > 0) & covered
        w = valid.to(out_depth.dtype)
        count = w.sum()
        n = count.clamp(min=1)
        r = out_depth * w  # zero outside the valid pixels
        e = view.depth_est * w
        rd = r.detach()
        r_mean = rd.sum() / n
        e_mean = e.sum() / n
        ec = (e - e_mean) * w  # centred estimate: the 2x2 normal equations decouple
        scale = (ec * rd).sum() / (ec * ec).sum().clamp(min=1e-12)
        fit = scale * ec + r_mean * w
        term = (r - fit).abs().sum() / n / r_mean.clamp(min=1e-6)
        loss = loss + torch.where(count > op.depth_est_min_pixels, term, torch.zeros_like(term))
    return loss


@torch.no_grad()
def evaluate(model: GaussianModel, views: list[TrainView], background: torch.Tensor, pp: PipelineParams, backend: str) -> dict:
    """Mean PSNR and L1 of the model over ``views``."""
    psnrs, l1s = [], []
    for v in views:
        out = render(v.camera, model, background, backend=backend, near_plane=pp.near_plane, far_plane=pp.far_plane, eps2d=pp.eps2d)
        img = out.image.clamp(0, 1)
        gt = v.target(background)
        psnrs.append(psnr(img, gt))
        l1s.append(float(l1_loss(img, gt)))
    return {"psnr": float(np.mean(psnrs)) if psnrs else float("nan"), "l1": float(np.mean(l1s)) if l1s else float("nan"), "views": len(views)}


def load_scene_views(scene: SceneData, mp: ModelParams, op: OptimizationParams, device: torch.device, quiet: bool = False):
    """(train views with their depths, test views), decoded onto the data device; validates every
    image and depth file, so call it before writing anything."""
    if len(scene.points_xyz) == 0:
        raise InputError(os.path.join(scene.source_path, "sparse"), "the COLMAP model has no 3D points to initialise from")
    data_device = torch.device(mp.data_device) if mp.data_device else device

    def folder(name: str) -> str:
        return name if (not name or os.path.isabs(name)) else os.path.join(scene.source_path, name)

    for name in (mp.depths, mp.depths_est):
        if name and not os.path.isdir(folder(name)):
            raise InputError(folder(name), "depth folder not found")
    train_views = load_views(scene.train_cameras, data_device, folder(mp.depths), folder(mp.depths_est), op.depth_scale, "loading train images", quiet)
    test_views = load_views(scene.test_cameras, data_device, desc="loading test images", quiet=quiet)
    return train_views, test_views


@dataclass
class TrainResult:
    model: GaussianModel
    iterations: int
    seconds: float
    test_metrics: list[dict] = field(default_factory=list)
    peak_memory_bytes: Optional[int] = None


def save_point_cloud(model: GaussianModel, model_path: str, iteration: int) -> str:
    path = os.path.join(model_path, "point_cloud", f"iteration_{iteration}", "point_cloud.ply")
    model.save_ply(path)
    return path


def append_test_metrics(model_path: str, record: dict) -> None:
    path = os.path.join(model_path, "test_metrics.json")
    records = read_json(path) if os.path.isfile(path) else []
    records.append(record)
    write_json(path, records)


def train(
    scene: SceneData,
    model_path: str,
    mp: ModelParams,
    op: OptimizationParams,
    pp: PipelineParams,
    device: torch.device,
    test_iterations: list[int],
    save_iterations: list[int],
    checkpoint_iterations: list[int] = (),
    start_checkpoint: Optional[str] = None,
    quiet: bool = False,
    views: Optional[tuple[list[TrainView], list[TrainView]]] = None,
    step_callback: Optional[Callable[[int], None]] = None,
) -> TrainResult:
    """Optimise a Gaussian model of ``scene``; writes point clouds, checkpoints and test metrics
    under ``model_path``. ``views`` = (train, test) from :func:`load_scene_views` when the caller
    already decoded them; ``step_callback(step)`` runs after every step (e.g. a profiler's
    ``step``). Returns the trained model and timings."""
    torch.manual_seed(op.seed)
    rng = np.random.default_rng(op.seed)
    gen = torch.Generator(device=device).manual_seed(op.seed)
    train_views, test_views = views if views is not None else load_scene_views(scene, mp, op, device, quiet)

    model = GaussianModel.from_points(scene.points_xyz, scene.points_rgb, mp.sh_degree, op.init_opacity).to(device)
    model.active_sh_degree = 0
    optimizer = make_optimizer(model, op, scene.extent)
    dcfg = DensifyConfig(
        **{k: getattr(op, k) for k in DensifyConfig.__dataclass_fields__ if hasattr(op, k)}, white_background=mp.white_background
    )
    densifier = Densifier(dcfg, scene.extent, len(model), device)
    first_iter = 0
    if start_checkpoint:
        first_iter = load_checkpoint(start_checkpoint, model, optimizer, densifier, device)

    background = torch.tensor([1.0, 1.0, 1.0] if mp.white_background else [0.0, 0.0, 0.0], device=device)
    test_iterations = sorted(set(i for i in test_iterations if 0 < i <= op.iterations))
    save_iterations = sorted(set(i for i in save_iterations if 0 < i <= op.iterations))
    results: list[dict] = []
    stack: list[int] = []
    ema_loss = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    bar = tqdm(range(first_iter + 1, op.iterations + 1), desc="training", disable=quiet, initial=first_iter, total=op.iterations)
    for step in bar:
        lr = expon_lr(step, op.position_lr_init * scene.extent, op.position_lr_final * scene.extent, op.position_lr_max_steps, 0, op.position_lr_delay_mult)
        optimizer.param_groups[0]["lr"] = lr
        if op.sh_increase_interval > 0 and step % op.sh_increase_interval == 0:
            model.active_sh_degree = min(model.active_sh_degree + 1, model.max_sh_degree)
        if not stack:
            stack = list(rng.permutation(len(train_views)))
        view = train_views[stack.pop()]
        bg = torch.rand(3, device=device, generator=gen) if op.random_background else background
        use_depth = (view.depth is not None or view.depth_est is not None) and step >= op.depth_from_iter
        out = render(view.camera, model, bg, backend=mp.renderer, near_plane=pp.near_plane, far_plane=pp.far_plane, eps2d=pp.eps2d,
                     with_depth=use_depth)
        gt = view.target(bg)
        l1 = l1_loss(out.image, gt)
        loss = (1.0 - op.lambda_dssim) * l1 + op.lambda_dssim * (1.0 - ssim(out.image, gt))
        if use_depth:
            w = expon_lr(step, op.depth_l1_weight_init, op.depth_l1_weight_final, op.iterations)
            loss = loss + w * depth_losses(out.depth, out.alpha, view, op)
        loss.backward()
        if pp.debug and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        with torch.no_grad():
            if collects_stats(step, op.densify_until_iter):
                densifier.update_stats(out.screen_grad(), out.radii, view.camera.width, view.camera.height)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            densifier.step(step, model, optimizer, gen)

        if step % 10 == 0 or step == op.iterations:
            lv = loss.item()
            ema_loss = lv if ema_loss is None else 0.6 * ema_loss + 0.4 * lv
            bar.set_postfix(loss=f"{ema_loss:.4f}", n=len(model))
        if step in test_iterations and test_views:
            m = evaluate(model, test_views, background, pp, mp.renderer)
            m.update(iteration=step, num_gaussians=len(model), elapsed_s=round(time.perf_counter() - t0, 2))
            tqdm.write(f"[iter {step}] test: PSNR {m['psnr']:.2f} dB, L1 {m['l1']:.4f} over {m['views']} views ({len(model)} Gaussians)")
            append_test_metrics(model_path, m)
            results.append(m)
        if step in save_iterations:
            save_point_cloud(model, model_path, step)
        if step in checkpoint_iterations:
            save_checkpoint(os.path.join(model_path, f"chkpnt{step}.pth"), step, model, optimizer, densifier)
        if step_callback is not None:
            step_callback(step)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainResult(model, op.iterations, seconds, results, peak)


def save_checkpoint(path: str, step: int, model: GaussianModel, optimizer, densifier: Densifier) -> None:
    state = {
        "iteration": step,
        "sh_degree": model.max_sh_degree,
        "active_sh_degree": model.active_sh_degree,
        "params": {k: v.detach().cpu() for k, v in model.params.items()},
        "optimizer": optimizer.state_dict(),
        "densifier": {k: v.cpu() for k, v in densifier.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str, model: GaussianModel, optimizer, densifier: Densifier, device: torch.device) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its iteration."""
    if not os.path.isfile(path):
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if state.get("sh_degree") != model.max_sh_degree:
        raise InputError(path, f"checkpoint has SH degree {state.get('sh_degree')}, the model {model.max_sh_degree}")
    model.replace_params({k: torch.nn.Parameter(v.to(device)) for k, v in state["params"].items()})
    model.active_sh_degree = state["active_sh_degree"]
    for group in optimizer.param_groups:
        group["params"] = [model.params[group["name"]]]
    optimizer.load_state_dict(state["optimizer"])
    densifier.load_state_dict({k: v.to(device) for k, v in state["densifier"].items()})
    return int(state["iteration"])
