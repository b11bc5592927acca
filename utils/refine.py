"""Stage 8: tune the aligned proxies against the masked training views (the core of ``post_refine_gs.py``).

The pose found by stage 7 is kept. What is tuned, per Gaussian of every proxy:

* always the colour: the DC coefficient ``f_dc`` (and the higher SH bands when the proxies are given
  a degree > 0; they start at zero);
* with ``tune_opacity`` the opacity logits;
* with ``tune_geometry`` small, bounded geometry updates: each centre moves by at most
  ``max_offset`` x its object's size (projected back onto that ball after every step), each
  log-scale changes by at most ``max_scale_change`` (clamped), the rotation is free; an anchor term
  keeps centres and log-scales near the aligned proxy.

All proxies are ONE joint model (concatenated in object order; :class:`ProxySet` remembers the
per-object counts to slice them back), rendered together with the rest of the scene
(``M/gs_seg/remained.ply``, :class:`FrozenScene`: no gradient, never changed), so that scene content
in front of an object occludes it as in the real views and mask pixels the proxy does not cover show
the scene rather than the background.

Loss of one training view (all images [C, h, w] cropped to the view's loss window, see below)::

    L1    = Σ_p m(p) Σ_c |I(p) − I*(p)| / (C · Σ_p m(p))          (normalised by the mask area)
    L     = (1 − λ) · L1 + λ · (1 − SSIM(I·m, I*·m)) + w_anchor · anchor

with I the render of proxies + scene over a fixed background, I* the real frame (not
premultiplied), m the union mask of all objects (the alpha of ``D/masked_image_rgba/masked``), λ =
``lambda_dssim``. The window is the box of the union mask enlarged by ``box_margin`` of its
width/height on each side (clipped to the image), and the camera renders only that window
(:meth:`scene.cameras.Camera.cropped`), so the black area far outside the mask neither dilutes SSIM
nor costs render time. One random training view per step (a seeded shuffled stack, refilled when
empty), Adam (eps 1e-15, as 3DGS). For a fixed seed the view order is fixed and a CPU run is bitwise
repeatable (gsplat's CUDA backward accumulates with atomics: GPU runs agree to float round-off).

Tensors: images [3, h, w] float in [0, 1], masks [1, h, w] float in {0, 1}; Gaussians as in
:mod:`scene.gaussian_model` (raw parameters; quaternions w, x, y, z); cameras W2C, OpenCV axes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from gaussian_renderer import RASTERIZE_MODES, RenderOutput, rasterize
from scene.cameras import Camera
from scene.gaussian_model import GaussianModel, num_sh_bases
from utils.arguments import OptimizationParams, check_options, opt
from utils.losses import ssim
from utils.masks import robust_diagonal
from utils.views import crop_box, mask_bbox

log = logging.getLogger(__name__)

_OPT_DEFAULTS = {f.name: f.default for f in fields(OptimizationParams)}
"""3DGS's optimisation defaults: the shared options below start from them (no second copy of the numbers)."""

SH_REST_LR_DIVISOR = 20.0
"""Higher SH bands learn at ``feature_lr`` / this, as in 3DGS (``utils.training.make_optimizer``)."""

ADAM_EPS = 1e-15
"""Adam's epsilon, as 3DGS (colour gradients are tiny; a larger eps would damp them)."""

SIZE_PERCENTILES = (5.0, 95.0)
"""An object's size is the diagonal of the box spanned by these percentiles of its proxy's centres
(:func:`utils.masks.robust_diagonal`): stray Gaussians do not inflate it."""

LOSS_CURVE_POINTS = 100
"""The recorded loss curve holds at most this many points (means over equal runs of steps)."""


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------
@dataclass
class RefineParams:
    """Stage 8 options (what is tuned, learning rates, bounds, loss)."""

    iterations: int = opt(800, "refinement steps, one training view each (800 as in the seed README)")
    feature_lr: float = opt(_OPT_DEFAULTS["feature_lr"], "learning rate of the DC colour f_dc (with --sh_degree > 0 the higher "
                                                         f"bands learn at feature_lr / {SH_REST_LR_DIVISOR:g}, as in 3DGS)")
    tune_opacity: bool = opt(False, "also tune the opacities (logits)")
    opacity_lr: float = opt(_OPT_DEFAULTS["opacity_lr"], "learning rate of the opacity logits (with --tune_opacity)")
    tune_geometry: bool = opt(False, "also tune centres, scales and rotations, within --max_offset / --max_scale_change of the "
                                     "aligned proxy")
    position_lr: float = opt(0.0005, "learning rate of the centres, as a fraction of the object's size per step (with --tune_geometry)")
    scaling_lr: float = opt(_OPT_DEFAULTS["scaling_lr"], "learning rate of the log-scales (with --tune_geometry)")
    rotation_lr: float = opt(_OPT_DEFAULTS["rotation_lr"], "learning rate of the quaternions (with --tune_geometry)")
    max_offset: float = opt(0.02, "a centre moves at most this fraction of its object's size (robust box diagonal) from where "
                                  "stage 7 put it; enforced after every step by projection onto that ball")
    max_scale_change: float = opt(0.2, "a log-scale changes by at most this from the aligned proxy (0.2: sigma within x0.82..x1.22); "
                                       "enforced after every step by clamping")
    anchor_weight: float = opt(0.01, "weight of the anchor term mean(|offset|^2)/max_offset^2 + mean(dlog_sigma^2)/max_scale_change^2 "
                                     "that keeps centres and scales near the aligned proxy (with --tune_geometry)")
    lambda_dssim: float = opt(_OPT_DEFAULTS["lambda_dssim"], "weight of the D-SSIM term (1 - SSIM on the mask-box crop) against the "
                                                             "mask-normalised L1")
    box_margin: float = opt(0.1, "the loss window is the box of the union mask enlarged by this fraction of its width/height on "
                                 "each side (clipped to the image)")
    min_mask_pixels: int = opt(16, "training views whose union mask has fewer pixels are not used (the objects are out of view)")
    mask_threshold: int = opt(127, "alpha value of the RGBA masks above which a pixel belongs to the objects")
    background: str = opt("black", "fixed colour behind proxies and scene (never random: a random background leaks into the "
                                   "colours of mask pixels the proxy does not cover)", choices=["black", "white"])
    seed: int = opt(_OPT_DEFAULTS["seed"], "seed of the training-view order")
    proxy_rasterize_mode: str = opt("antialiased", "how the proxies are drawn (the scene stays classic, as it was trained): "
                                                   "antialiased = Mip-Splatting's 2D filter, the mode TRELLIS renders its Gaussians "
                                                   "in (the --eps2d filter does not enlarge small Gaussians; in classic mode a "
                                                   "proxy of sub-pixel Gaussians is drawn about a pixel fatter along its "
                                                   "silhouette); render_3dgs.py draws the refined objects in the same mode",
                                    choices=list(RASTERIZE_MODES))

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        check_options(self, [
            ("iterations", self.iterations >= 0, ">= 0"),
            ("feature_lr", self.feature_lr >= 0, ">= 0"),
            ("opacity_lr", self.opacity_lr >= 0, ">= 0"),
            ("position_lr", self.position_lr >= 0, ">= 0"),
            ("scaling_lr", self.scaling_lr >= 0, ">= 0"),
            ("rotation_lr", self.rotation_lr >= 0, ">= 0"),
            ("max_offset", self.max_offset >= 0, ">= 0"),
            ("max_scale_change", self.max_scale_change >= 0, ">= 0"),
            ("anchor_weight", self.anchor_weight >= 0, ">= 0"),
            ("lambda_dssim", 0 <= self.lambda_dssim <= 1, "in [0, 1]"),
            ("box_margin", self.box_margin >= 0, ">= 0"),
            ("min_mask_pixels", self.min_mask_pixels >= 1, ">= 1"),
            ("mask_threshold", 0 <= self.mask_threshold < 255, "in [0, 255)"),
            ("background", self.background in ("black", "white"), "black or white"),
            ("proxy_rasterize_mode", self.proxy_rasterize_mode in RASTERIZE_MODES, " or ".join(RASTERIZE_MODES)),
        ])

    def background_tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """[3] the background colour."""
        return torch.full((3,), 1.0 if self.background == "white" else 0.0, device=device)


@dataclass(frozen=True)
class RenderSettings:
    """How every view is rasterised (from ``--renderer`` and PipelineParams)."""

    backend: str = "auto"
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    proxy_rasterize_mode: str = "antialiased"
    """How the proxies are drawn; the frozen scene is always drawn "classic"."""


# --------------------------------------------------------------------------------------------
# Views and the loss
# --------------------------------------------------------------------------------------------
@dataclass
class RefineView:
    """One training view cropped to its loss window.

    Attributes:
        camera: the camera of the window (``Camera.cropped``: intrinsics shifted, size h x w).
        image: [3, h, w] the real frame in the window (not premultiplied), on the training device.
        mask: [1, h, w] float {0, 1} union mask of the objects in the window.
        box: (x0, y0, x1, y1) of the window in the full frame, exclusive ends.
        object_masks: optional [K, h, w] float per-object masks in the proxies' order (reporting only).
    """

    camera: Camera
    image: Tensor
    mask: Tensor
    box: tuple[int, int, int, int]
    object_masks: Optional[Tensor] = None

    @property
    def name(self) -> str:
        return self.camera.image_name

    @property
    def mask_pixels(self) -> int:
        return int(self.mask.sum().item())


def make_view(
    camera: Camera,
    image: Tensor,
    mask: Tensor,
    box_margin: float,
    min_mask_pixels: int = 1,
    object_masks: Optional[Tensor] = None,
    device: torch.device | str = "cpu",
) -> Optional[RefineView]:
    """Crop a full training view to the box of its mask enlarged by ``box_margin``.

    Args:
        camera: the full-frame camera (W x H).
        image: [3, H, W] frame in [0, 1] (not premultiplied).
        mask: [1, H, W] or [H, W] union mask (bool or {0, 1}).
        box_margin: fraction of the box width/height added on each side (:func:`utils.views.crop_box`).
        min_mask_pixels: fewer mask pixels than this gives None (view not used).
        object_masks: optional [K, H, W] per-object masks.
    Returns:
        the cropped view on ``device``, or None when the mask is (nearly) empty.
    """
    H, W = camera.height, camera.width
    if tuple(image.shape) != (3, H, W):
        raise ValueError(f"image of view {camera.image_name!r} must be [3, {H}, {W}], got {list(image.shape)}")
    m = mask.reshape(mask.shape[-2:]) if mask.dim() == 3 else mask
    if tuple(m.shape) != (H, W):
        raise ValueError(f"mask of view {camera.image_name!r} must be [1, {H}, {W}], got {list(mask.shape)}")
    if object_masks is not None and tuple(object_masks.shape[-2:]) != (H, W):
        raise ValueError(f"object masks of view {camera.image_name!r} must be [K, {H}, {W}], got {list(object_masks.shape)}")
    m_np = m.detach().cpu().numpy().astype(bool)
    if int(m_np.sum()) < min_mask_pixels:
        return None
    x0, y0, x1, y1 = crop_box(mask_bbox(m_np), (W, H), box_margin)
    cam = camera.cropped(x0, y0, x1 - x0, y1 - y0)
    obj = None
    if object_masks is not None:
        obj = object_masks[:, y0:y1, x0:x1].float().contiguous().to(device)
    return RefineView(
        camera=cam,
        image=image[:, y0:y1, x0:x1].float().contiguous().to(device),
        mask=m[None, y0:y1, x0:x1].float().contiguous().to(device),
        box=(x0, y0, x1, y1),
        object_masks=obj,
    )


def masked_l1(image: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the mask pixels: Σ_p m(p) Σ_c |I − I*| / (C Σ_p m(p)).

    Args:
        image, target: [C, h, w]. mask: [1, h, w] weights in [0, 1] (not all zero).
    Returns:
        a scalar that does not depend on how much unmasked area surrounds the mask.
    """
    area = mask.sum()
    if not area > 0:
        raise ValueError("masked_l1 needs a mask with at least one pixel")
    return ((image - target).abs() * mask).sum() / (image.shape[0] * area)


def masked_loss(image: Tensor, target: Tensor, mask: Tensor, lambda_dssim: float) -> tuple[Tensor, Tensor]:
    """The image loss of one view: (1 − λ)·masked L1 + λ·(1 − SSIM(I·m, I*·m)).

    Args:
        image: [3, h, w] render of the loss window. target: [3, h, w] real frame there.
        mask: [1, h, w] union mask there. lambda_dssim: λ in [0, 1].
    Returns:
        (loss, masked L1), scalars.
    """
    l1 = masked_l1(image, target, mask)
    if lambda_dssim == 0:
        return l1, l1
    d_ssim = 1.0 - ssim(image * mask, target * mask)
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * d_ssim, l1


# --------------------------------------------------------------------------------------------
# Proxies: one joint model, sliced back per object
# --------------------------------------------------------------------------------------------
def object_size(xyz: np.ndarray) -> float:
    """The size of an object: the robust box diagonal of its [N, 3] centres (:data:`SIZE_PERCENTILES`),
    or the plain box diagonal when that is 0 (fewer than 2 centres, or all in one point: 0)."""
    size = robust_diagonal(xyz, *SIZE_PERCENTILES)
    if size <= 0 and len(xyz) > 0:
        size = float(np.linalg.norm(xyz.max(0) - xyz.min(0)))
    return size


@dataclass
class ProxySet:
    """All proxies in one model.

    Attributes:
        names: object names (prompts), in the order of the joint model.
        counts: Gaussians per object; object k holds rows sum(counts[:k]) .. sum(counts[:k+1]).
        model: the joint model (SH degree of the refinement).
        sizes: per-object size (:func:`object_size`), the unit of ``max_offset`` and ``position_lr``.
    """

    names: list[str]
    counts: list[int]
    model: GaussianModel
    sizes: list[float]

    @classmethod
    def from_models(cls, names: Sequence[str], models: Sequence[GaussianModel], sh_degree: int) -> "ProxySet":
        """Concatenate ``models`` (one per name) at ``sh_degree`` (higher bands zero-filled or dropped)."""
        if len(names) != len(models) or not names:
            raise ValueError(f"need one model per name and at least one, got {len(names)} names and {len(models)} models")
        if len(set(names)) != len(names):
            raise ValueError(f"object names must be unique, got {list(names)}")
        joint = GaussianModel.concatenate(list(models), sh_degree)
        sizes = [object_size(m.means.detach().cpu().numpy().astype(np.float64)) for m in models]
        return cls(list(names), [len(m) for m in models], joint, sizes)

    def split(self, model: Optional[GaussianModel] = None) -> dict[str, GaussianModel]:
        """{name: that object's Gaussians} sliced out of ``model`` (default the joint model)."""
        model = self.model if model is None else model
        if len(model) != sum(self.counts):
            raise ValueError(f"the model has {len(model)} Gaussians, the proxies {sum(self.counts)}")
        out, start = {}, 0
        for name, n in zip(self.names, self.counts):
            out[name] = model.subset(torch.arange(start, start + n, device=model.device))
            start += n
        return out

    def gaussian_sizes(self, device: torch.device | str = "cpu") -> Tensor:
        """[N] the size of each Gaussian's object."""
        return torch.repeat_interleave(torch.tensor(self.sizes, dtype=torch.float32), torch.tensor(self.counts)).to(device)


def pad_sh(sh: Tensor, degree: int) -> Tensor:
    """[N, K, 3] SH coefficients zero-padded (or cut) to (degree + 1)^2 bands."""
    k = num_sh_bases(degree)
    if sh.shape[1] >= k:
        return sh[:, :k]
    return torch.cat([sh, sh.new_zeros(sh.shape[0], k - sh.shape[1], 3)], dim=1)


@dataclass
class FrozenScene:
    """The rest of the scene, activated once and never optimised.

    Attributes:
        means: [M, 3]; quats: [M, 4] unit (w, x, y, z); scales: [M, 3] standard deviations;
        opacities: [M] in (0, 1); sh: [M, K, 3] SH coefficients; degree: its SH degree.
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor
    degree: int
    _per_camera: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_model(cls, model: GaussianModel) -> "FrozenScene":
        with torch.no_grad():
            return cls(model.means.detach().clone(), model.quats.detach(), model.scales.detach(), model.opacities.detach(),
                       model.sh.detach().clone(), model.max_sh_degree)

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @torch.no_grad()
    def visible_in(self, camera: Camera, near: float, far: float, eps2d: float) -> "FrozenScene":
        """The Gaussians that can touch ``camera``'s image: centre depth in (near, far) and centre
        within the image enlarged by a bound on the splat's screen radius (twice 3.33 sigma of its
        largest scale at its depth, plus the filter). The renderer culls the rest anyway; dropping
        them first saves their projection in every step (a scene has far more Gaussians than a
        window of one object sees)."""
        R = torch.as_tensor(camera.R, dtype=self.means.dtype, device=self.means.device)
        t = torch.as_tensor(camera.t, dtype=self.means.dtype, device=self.means.device)
        pc = self.means @ R.T + t
        z = pc[:, 2]
        ok = (z > near) & (z < far)
        zs = torch.where(ok, z, torch.ones_like(z))
        u = camera.fx * pc[:, 0] / zs + camera.cx
        v = camera.fy * pc[:, 1] / zs + camera.cy
        r = 2.0 * SPLAT_EXTENT * self.scales.amax(1) * max(camera.fx, camera.fy) / zs + SPLAT_EXTENT * math.sqrt(eps2d) + 1.0
        ok &= (u + r > 0) & (u - r < camera.width) & (v + r > 0) & (v - r < camera.height)
        idx = torch.nonzero(ok).flatten()
        return FrozenScene(self.means[idx], self.quats[idx], self.scales[idx], self.opacities[idx], self.sh[idx], self.degree)

    def for_camera(self, camera: Camera, settings: "RenderSettings") -> "FrozenScene":
        """:meth:`visible_in` of ``camera``, computed once per camera (pose, intrinsics and window) and kept."""
        key = (camera.image_name, camera.width, camera.height, camera.fx, camera.fy, camera.cx, camera.cy,
               camera.R.tobytes(), camera.t.tobytes())
        sub = self._per_camera.get(key)
        if sub is None:
            sub = self._per_camera[key] = self.visible_in(camera, settings.near_plane, settings.far_plane, settings.eps2d)
        return sub


SPLAT_EXTENT = 3.33
"""Standard deviations of a splat's screen box (the renderers' cut-off)."""


class ProxyParameters:
    """The trainable state of the joint proxy model.

    Centres are ``base + offset * size`` with ``offset`` [N, 3] in units of the object's size (so one
    learning rate and one bound serve objects of any size); log-scales and quaternions are tuned
    directly; colours are ``f_dc`` (and ``f_rest``). Parameters that are not tuned are plain tensors.

    Args:
        proxies: the joint model and its per-object sizes.
        params: what to tune and the learning rates / bounds.
    """

    def __init__(self, proxies: ProxySet, params: RefineParams):
        raw = proxies.model.raw()
        device = proxies.model.device
        self.params = params
        self.degree = proxies.model.max_sh_degree
        self.base_means = raw["means"].clone()
        self.base_scales = raw["scales"].clone()
        self.sizes = proxies.gaussian_sizes(device)
        geo = params.tune_geometry
        if geo and not all(s > 0 for s in proxies.sizes):
            bad = [n for n, s in zip(proxies.names, proxies.sizes) if not s > 0]
            raise ValueError(f"objects {bad} have zero size: geometry cannot be tuned relative to it")
        self.sh0 = nn.Parameter(raw["sh0"].clone())
        self.shN = nn.Parameter(raw["shN"].clone()) if self.degree > 0 else raw["shN"].clone()
        self.opacity_logits = nn.Parameter(raw["opacities"].clone()) if params.tune_opacity else raw["opacities"].clone()
        self.offsets = nn.Parameter(torch.zeros_like(self.base_means)) if geo else torch.zeros_like(self.base_means)
        self.log_scales = nn.Parameter(raw["scales"].clone()) if geo else raw["scales"].clone()
        self.quats_raw = nn.Parameter(raw["quats"].clone()) if geo else raw["quats"].clone()

    def param_groups(self) -> list[dict]:
        """Adam parameter groups of what is tuned (each with its name and learning rate)."""
        p = self.params
        groups = [("sh0", self.sh0, p.feature_lr)]
        if self.degree > 0:
            groups.append(("shN", self.shN, p.feature_lr / SH_REST_LR_DIVISOR))
        if p.tune_opacity:
            groups.append(("opacities", self.opacity_logits, p.opacity_lr))
        if p.tune_geometry:
            groups += [("offsets", self.offsets, p.position_lr), ("scales", self.log_scales, p.scaling_lr),
                       ("quats", self.quats_raw, p.rotation_lr)]
        return [{"params": [t], "lr": lr, "name": name} for name, t, lr in groups]

    def means(self) -> Tensor:
        """[N, 3] current centres."""
        return self.base_means + self.offsets * self.sizes[:, None]

    def activated(self) -> dict[str, Tensor]:
        """Activated tensors for the rasterizer: means [N, 3], quats [N, 4] unit, scales [N, 3],
        opacities [N], sh [N, K, 3]."""
        return {
            "means": self.means(),
            "quats": nn.functional.normalize(self.quats_raw, dim=-1),
            "scales": torch.exp(self.log_scales),
            "opacities": torch.sigmoid(self.opacity_logits),
            "sh": torch.cat([self.sh0, self.shN], dim=1),
        }

    def anchor(self) -> Tensor:
        """mean |offset|^2 / max_offset^2 + mean (Δ log σ)^2 / max_scale_change^2 (a term whose bound is 0 is
        left out: the projection pins it); 0 without geometry tuning. In [0, 2] while the bounds hold."""
        p = self.params
        out = self.base_means.new_zeros(())
        if not p.tune_geometry:
            return out
        if p.max_offset > 0:
            out = out + (self.offsets**2).sum(-1).mean() / p.max_offset**2
        if p.max_scale_change > 0:
            out = out + ((self.log_scales - self.base_scales) ** 2).mean() / p.max_scale_change**2
        return out

    @torch.no_grad()
    def project_(self) -> None:
        """Enforce the bounds after an optimiser step: offsets onto the ball of radius ``max_offset``,
        log-scales into ``base ± max_scale_change``."""
        if not self.params.tune_geometry:
            return
        norm = self.offsets.norm(dim=-1, keepdim=True)
        self.offsets.mul_(torch.clamp(self.params.max_offset / norm.clamp_min(1e-30), max=1.0))
        d = self.params.max_scale_change
        self.log_scales.copy_(self.base_scales + (self.log_scales - self.base_scales).clamp(-d, d))

    @torch.no_grad()
    def offset_fractions(self) -> Tensor:
        """[N] how far each centre moved, as a fraction of its object's size."""
        return (self.means() - self.base_means).norm(dim=-1) / self.sizes.clamp_min(1e-30)

    def to_model(self) -> GaussianModel:
        """The refined joint proxies as raw parameters (a new model, detached)."""
        with torch.no_grad():
            params = {
                "means": self.means().detach().clone(),
                "sh0": self.sh0.detach().clone(),
                "shN": self.shN.detach().clone(),
                "opacities": self.opacity_logits.detach().clone(),
                "scales": self.log_scales.detach().clone(),
                "quats": self.quats_raw.detach().clone(),
            }
        return GaussianModel(self.degree, params)


# --------------------------------------------------------------------------------------------
# Rendering proxies + scene
# --------------------------------------------------------------------------------------------
def render_composite(
    camera: Camera,
    proxy: dict[str, Tensor],
    proxy_degree: int,
    scene: Optional[FrozenScene],
    background: Tensor,
    settings: RenderSettings,
) -> RenderOutput:
    """Render the proxies (differentiably) together with the frozen scene in one pass.

    Args:
        camera: the (cropped) camera.
        proxy: activated proxy tensors (:meth:`ProxyParameters.activated`; means [N, 3], quats [N, 4],
            scales [N, 3], opacities [N], sh [N, (proxy_degree+1)^2, 3]).
        proxy_degree: SH degree of ``proxy["sh"]``.
        scene: the rest of the scene, or None (proxies alone).
        background: [3] colour behind everything.
    Returns:
        the render (image [3, h, w], alpha [1, h, w], depth [1, h, w], ...); rows 0..N-1 of per-Gaussian
        outputs are the proxies.
    """
    device = proxy["means"].device
    means, quats, scales, opac, sh = proxy["means"], proxy["quats"], proxy["scales"], proxy["opacities"], proxy["sh"]
    n_proxy = means.shape[0]
    degree = proxy_degree
    if scene is not None:
        scene = scene.for_camera(camera, settings)
    if scene is not None and len(scene) > 0:
        degree = max(proxy_degree, scene.degree)
        means = torch.cat([means, scene.means])
        quats = torch.cat([quats, scene.quats])
        scales = torch.cat([scales, scene.scales])
        opac = torch.cat([opac, scene.opacities])
        sh = torch.cat([pad_sh(sh, degree), pad_sh(scene.sh, degree)])
    aa = None
    if settings.proxy_rasterize_mode == "antialiased":
        aa = torch.arange(means.shape[0], device=device) < n_proxy
    return rasterize(
        means, quats, scales, opac, sh, camera.viewmat_tensor(device), camera.K_tensor(device), camera.width, camera.height,
        sh_degree=degree, background=background, near_plane=settings.near_plane, far_plane=settings.far_plane,
        eps2d=settings.eps2d, backend=settings.backend, antialiased_mask=aa,
    )


@torch.no_grad()
def evaluate(
    state: ProxyParameters,
    views: Sequence[RefineView],
    scene: Optional[FrozenScene],
    background: Tensor,
    settings: RenderSettings,
    lambda_dssim: float,
    names: Sequence[str] = (),
) -> dict:
    """Mean loss and masked L1 over ``views`` (union mask), and each object's masked L1 over the views
    where its own mask has pixels (when the views carry ``object_masks`` in the order of ``names``).

    Returns:
        {"loss", "l1", "views", "objects": {name: {"l1", "views"}}}.
    """
    g = state.activated()
    losses, l1s = [], []
    per_obj: dict[str, list[float]] = {n: [] for n in names}
    for v in views:
        out = render_composite(v.camera, g, state.degree, scene, background, settings)
        loss, l1 = masked_loss(out.image, v.image, v.mask, lambda_dssim)
        losses.append(float(loss))
        l1s.append(float(l1))
        if v.object_masks is not None:
            for k, name in enumerate(names):
                m = v.object_masks[k : k + 1]
                if m.sum() > 0:
                    per_obj[name].append(float(masked_l1(out.image, v.image, m)))
    objects = {n: {"l1": float(np.mean(x)) if x else None, "views": len(x)} for n, x in per_obj.items()}
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "l1": float(np.mean(l1s)) if l1s else float("nan"),
            "views": len(views), "objects": objects}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
@dataclass
class RefineResult:
    """What :func:`refine` returns.

    Attributes:
        model: the refined joint proxies (raw parameters; slice with ``ProxySet.split``).
        before, after: :func:`evaluate` over the training views at the start and the end.
        losses: [iterations] the loss of each step (image loss + anchor term).
        seconds: time of the optimisation loop (evaluations excluded).
        max_offset_fraction: the largest centre move, as a fraction of its object's size.
        max_log_scale_change: the largest |Δ log σ|.
    """

    model: GaussianModel
    before: dict
    after: dict
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    max_offset_fraction: float = 0.0
    max_log_scale_change: float = 0.0

    def loss_curve(self, points: int = LOSS_CURVE_POINTS) -> list[list[float]]:
        """[[last step of the run, mean loss of the run], ...]: at most ``points`` equal runs of steps."""
        n = len(self.losses)
        if n == 0:
            return []
        per = max(1, math.ceil(n / points))
        return [[min(i + per, n), float(np.mean(self.losses[i : i + per]))] for i in range(0, n, per)]


def refine(
    proxies: ProxySet,
    views: Sequence[RefineView],
    params: RefineParams,
    settings: RenderSettings = RenderSettings(),
    scene: Optional[FrozenScene] = None,
    quiet: bool = False,
) -> RefineResult:
    """Tune the proxies against the views (see the module docstring for the loss and the bounds).

    Args:
        proxies: the aligned proxies (their model's device is the training device).
        views: the cropped training views (:func:`make_view`), on that device; at least one.
        params: options. settings: how to rasterise.
        scene: the frozen rest of the scene rendered with the proxies, or None.
        quiet: no progress bar.
    Returns:
        the refined joint model, evaluations before and after, the loss of every step.
    """
    params.check()
    if not views:
        raise ValueError("refine needs at least one training view")
    device = proxies.model.device
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    state = ProxyParameters(proxies, params)
    background = params.background_tensor(device)
    optimizer = torch.optim.Adam(state.param_groups(), lr=0.0, eps=ADAM_EPS)
    before = evaluate(state, views, scene, background, settings, params.lambda_dssim, proxies.names)

    losses: list[Tensor] = []  # kept on the device: no host sync per step
    stack: list[int] = []
    t0 = time.perf_counter()
    bar = tqdm(range(1, params.iterations + 1), desc="refining", disable=quiet)
    for step in bar:
        if not stack:
            stack = list(rng.permutation(len(views)))
        view = views[stack.pop()]
        out = render_composite(view.camera, state.activated(), state.degree, scene, background, settings)
        loss, _ = masked_loss(out.image, view.image, view.mask, params.lambda_dssim)
        if params.tune_geometry and params.anchor_weight > 0:
            loss = loss + params.anchor_weight * state.anchor()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.project_()
        losses.append(loss.detach())
        if step % 10 == 0 or step == params.iterations:
            bar.set_postfix(loss=f"{float(torch.stack(losses[-10:]).mean()):.4f}")
    loss_values = torch.stack(losses).cpu().tolist() if losses else []
    seconds = time.perf_counter() - t0

    after = evaluate(state, views, scene, background, settings, params.lambda_dssim, proxies.names)
    with torch.no_grad():
        max_off = float(state.offset_fractions().max()) if len(state.base_means) else 0.0
        max_ds = float((state.log_scales - state.base_scales).abs().max()) if len(state.base_means) else 0.0
    return RefineResult(state.to_model(), before, after, loss_values, seconds, max_off, max_ds)
