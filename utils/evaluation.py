"""Stage 9 metrics: objects at the held-out views, and geometry completion against GT meshes.

Image metrics of one object at one test view (:func:`object_view_metrics`) compare the object's
render over white with the ground truth ``D/masked_image_rgba/<prompt>/<stem>.png`` composited
over white by its own alpha (the segmentation mask). The GT mask covers only the part of the object
that is visible in the frame, so by default (``occlusion="scene"``) the object is rendered inside
its scene (``gs_seg/remained.ply`` plus every object of the same kind) and only its own visible
contribution is kept (:func:`visible_object_renders`): where another object or the scene hides it
in the real frame, it is hidden in the render too. ``occlusion="none"`` renders it alone (a
complete object then counts as wrong where the GT shows an occluder):

* the region measured is the box of the union of the GT mask and the rendered silhouette
  (alpha > ``alpha_threshold``), enlarged by ``box_margin`` of its size on each side, so that a
  missing part (object pixels the render leaves white) and an extra part (render where the GT
  is white) both count, and the empty rest of the frame does not inflate the scores;
* PSNR and SSIM on that crop (both images over white), LPIPS on it when its weights exist;
* mask IoU between the rendered silhouette and the GT mask (whole frame).

Geometry metrics (:func:`geometry_metrics`) compare an object's Gaussian centres (opacity above a
threshold) with area-uniform samples of its GT mesh: accuracy (mean exact distance of the centres
to the surface), completeness (mean distance of the surface samples to the nearest centre),
Chamfer = their mean, F-score at ``threshold`` (precision = share of centres within it of the
surface, recall = share of surface samples within it of a centre), and the earth mover's distance
between equal-size random subsamples (exact assignment, :func:`scipy.optimize.linear_sum_assignment`).
All distances are in scene units; the script converts them to cm with ``--metres_per_unit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from utils.arguments import check_options, opt

OCCLUSION_MODES = ("scene", "none")


@dataclass
class EvaluationParams:
    """Stage 9 metric options."""

    alpha_threshold: float = opt(0.5, "a rendered pixel belongs to the object's silhouette above this alpha (mask IoU, box)")
    box_margin: float = opt(0.1, "PSNR/SSIM/LPIPS are measured on the box of the GT mask and the rendered silhouette, "
                                 "enlarged by this fraction of its size on each side")
    mask_threshold: int = opt(127, "alpha value above which a pixel of D/masked_image_rgba belongs to the object")
    min_opacity: float = opt(0.1, "geometry metrics: Gaussians below this opacity are left out")
    fscore_threshold: float = opt(0.01, "geometry metrics: F-score distance threshold, in metres (converted with --metres_per_unit)")
    surface_samples: int = opt(20000, "geometry metrics: area-uniform samples of each GT mesh")
    emd_points: int = opt(1024, "geometry metrics: size of the random subsamples of both sides for the EMD (exact assignment)")
    metres_per_unit: float = opt(1.0, "length of one scene unit in metres (distances are reported in cm; 1 for the demo scene)")
    seed: int = opt(0, "seed of the surface samples and EMD subsamples")
    occlusion: str = opt("scene", "image metrics: 'scene' renders each object inside its scene (gs_seg/remained.ply and all "
                                  "objects of the same kind) and measures only its visible part, as the GT masks show only "
                                  "the visible part; 'none' renders it alone", choices=list(OCCLUSION_MODES))

    def check(self) -> None:
        check_options(self, [
            ("alpha_threshold", 0 < self.alpha_threshold < 1, "in (0, 1)"),
            ("box_margin", self.box_margin >= 0, ">= 0"),
            ("mask_threshold", 0 <= self.mask_threshold < 255, "in [0, 255)"),
            ("min_opacity", 0 <= self.min_opacity < 1, "in [0, 1)"),
            ("fscore_threshold", self.fscore_threshold > 0, "> 0"),
            ("surface_samples", self.surface_samples >= 100, ">= 100"),
            ("emd_points", self.emd_points >= 10, ">= 10"),
            ("metres_per_unit", self.metres_per_unit > 0, "> 0"),
            ("occlusion", self.occlusion in OCCLUSION_MODES, f"one of {OCCLUSION_MODES}"),
        ])


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def union_box(masks: list[torch.Tensor], margin: float) -> Optional[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the union of [H, W] bool masks, enlarged by ``margin`` x its size per side
    and clipped to the image; None when every mask is empty."""
    union = masks[0].clone()
    for m in masks[1:]:
        union |= m
    if not bool(union.any()):
        return None
    h, w = union.shape
    ys = torch.nonzero(union.any(1)).flatten()
    xs = torch.nonzero(union.any(0)).flatten()
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    my, mx = int(round(margin * (y1 - y0))), int(round(margin * (x1 - x0)))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def object_view_metrics(render_rgb: torch.Tensor, render_alpha: torch.Tensor, gt_rgb: torch.Tensor, gt_mask: torch.Tensor,
                        params: EvaluationParams,
                        lpips_fn: Optional[Callable[[torch.Tensor, torch.Tensor], float]] = None) -> dict:
    """Metrics of one object at one view (see the module docstring).

    Args:
        render_rgb: [3, H, W] the object rendered alone over WHITE, in [0, 1].
        render_alpha: [1, H, W] its accumulated alpha.
        gt_rgb: [3, H, W] the ground truth over WHITE (composited by its mask), in [0, 1].
        gt_mask: [H, W] bool, the GT object mask.
        lpips_fn: optional LPIPS function of two [3, h, w] images.

    Returns:
        dict with psnr, ssim, iou (and lpips), plus ``gt_pixels`` and ``rendered_pixels``; an empty GT
        mask and an empty render give ``{"empty": True}``.
    """
    from utils.metrics import psnr, ssim_metric

    sil = render_alpha[0] > params.alpha_threshold
    box = union_box([gt_mask, sil], params.box_margin)
    if box is None:
        return {"empty": True}
    y0, y1, x0, x1 = box
    a = render_rgb[:, y0:y1, x0:x1].clamp(0, 1)
    b = gt_rgb[:, y0:y1, x0:x1].clamp(0, 1)
    inter = int((sil & gt_mask).sum())
    union = int((sil | gt_mask).sum())
    rec = {"psnr": psnr(a, b), "ssim": ssim_metric(a, b) if min(a.shape[1:]) >= 11 else float("nan"),
           "iou": inter / union, "gt_pixels": int(gt_mask.sum()), "rendered_pixels": int(sil.sum())}
    if lpips_fn is not None and min(a.shape[1:]) >= 32:
        rec["lpips"] = lpips_fn(a, b)
    return rec


def visible_object_renders(camera, model, labels: torch.Tensor, n_objects: int, render_kw: dict,
                           antialiased_mask: Optional[torch.Tensor] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each object as it is seen inside the whole model: its own contribution to the composite.

    Args:
        camera: the test camera. model: a GaussianModel of the whole scene (objects and the rest).
        labels: [N] long, the object index of each Gaussian in 0..n_objects-1, or -1 (the rest).
        render_kw: keyword arguments of :func:`gaussian_renderer.render` (backend, planes, eps2d).
        antialiased_mask: optional [N] bool, the Gaussians drawn in antialiased mode (the rest classic).
    Returns:
        per object (image [3, H, W] over white, weight [1, H, W]): weight = sum of alpha_i T_i over
        the object's Gaussians (its visible opacity, the rest of the scene in front of it included),
        image = its premultiplied colour + (1 - weight) x white. Alone in front, this is its plain
        render over white.
    """
    from gaussian_renderer import render
    from utils.sh import eval_sh

    device = model.device
    degree = model.active_sh_degree
    render_kw = {**render_kw, "antialiased_mask": antialiased_mask}
    campos = torch.as_tensor(camera.center, dtype=model.means.dtype, device=device)
    rgb = torch.zeros_like(model.means)
    obj = labels >= 0  # only the objects' colours are ever used
    rgb[obj] = torch.clamp_min(eval_sh(degree, model.sh[obj, : (degree + 1) ** 2], model.means[obj] - campos) + 0.5, 0.0)
    black = torch.zeros(3, device=device)
    weights: list[torch.Tensor] = []
    for first in range(0, n_objects, 3):  # three objects' weights per render, one per channel
        ids = torch.arange(first, first + 3, device=device)
        onehot = (labels[:, None] == ids[None]).to(rgb.dtype)
        out = render(camera, model, black, override_color=onehot, **render_kw)
        weights += [out.image[j : j + 1] for j in range(min(3, n_objects - first))]
    result = []
    for k in range(n_objects):
        image = 1.0 - weights[k].expand(3, -1, -1).clone()
        seen = torch.nonzero(weights[k][0] > 0)
        if len(seen):  # its colour, rendered in the window where it has any weight (zero elsewhere)
            (y0, x0), (y1, x1) = seen.min(0).values.tolist(), (seen.max(0).values + 1).tolist()
            colour = rgb * (labels == k)[:, None].to(rgb.dtype)
            out = render(camera.cropped(x0, y0, x1 - x0, y1 - y0), model, black, override_color=colour, **render_kw)
            image[:, y0:y1, x0:x1] += out.image
        result.append((image, weights[k]))
    return result


def mean_metrics(records: list[dict]) -> dict:
    """Mean of every numeric metric over the non-empty records (NaNs left out), and their count."""
    keys = ("psnr", "ssim", "lpips", "iou")
    out = {"views": sum(1 for r in records if not r.get("empty"))}
    for k in keys:
        vals = [r[k] for r in records if k in r and np.isfinite(r[k])]
        if vals:
            out[k] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
def emd(a: np.ndarray, b: np.ndarray) -> float:
    """Earth mover's distance between two equal-size point sets: the mean distance of the optimal
    one-to-one assignment (exact, Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(a) != len(b):
        raise ValueError(f"EMD needs equal sizes, got {len(a)} and {len(b)}")
    cost = cdist(a, b)
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].mean())


def geometry_metrics(points: np.ndarray, triangles: np.ndarray, params: EvaluationParams) -> dict:
    """Completion metrics of [N, 3] object points against a GT mesh [T, 3, 3] (scene units in, cm out).

    Returns a dict: accuracy_cm, completeness_cm, chamfer_cm, fscore, precision, recall (at
    ``fscore_threshold`` metres), emd_cm, points (N used).
    """
    from utils.meshes import surface_distances

    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        raise ValueError("no points to evaluate")
    rng = np.random.default_rng(params.seed)
    cm = 100.0 * params.metres_per_unit
    thr = params.fscore_threshold / params.metres_per_unit
    d_pm, d_mp, surf = surface_distances(pts, triangles, params.surface_samples, rng)
    precision = float((d_pm < thr).mean())
    recall = float((d_mp < thr).mean())
    k = min(params.emd_points, len(pts))
    sub_p = pts[rng.choice(len(pts), k, replace=False)]
    sub_s = surf[rng.choice(len(surf), k, replace=False)]
    return {
        "accuracy_cm": float(d_pm.mean()) * cm,
        "completeness_cm": float(d_mp.mean()) * cm,
        "chamfer_cm": 0.5 * float(d_pm.mean() + d_mp.mean()) * cm,
        "precision": precision,
        "recall": recall,
        "fscore": 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall),
        "fscore_threshold_cm": params.fscore_threshold * 100.0,
        "emd_cm": emd(sub_p, sub_s) * cm,
        "points": int(len(pts)),
    }
