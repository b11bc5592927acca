"""Command-line parameter groups, declared once as dataclasses.

The groups and flag names are those of 3DGS (``ModelParams``, ``PipelineParams``,
``OptimizationParams``) so that every script accepts the flags researchers know; each field
carries its help text, booleans can be turned off (``--no-flag``), and the resolved values are
written next to the outputs. ``cfg_args`` (3DGS's ``Namespace(...)`` text) is written for tool
compatibility and read back with :func:`ast.literal_eval` on each value — never ``eval``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import subprocess
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional, Type, TypeVar, get_type_hints

from utils.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

T = TypeVar("T")


def opt(default: Any, help: str, short: Optional[str] = None, **extra) -> Any:
    """A dataclass field with the metadata the argparse projection needs."""
    meta = {"help": help, "short": short, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelParams:
    """Loading parameters (3DGS ``ModelParams``)."""

    sh_degree: int = opt(3, "maximum spherical-harmonics degree of the model")
    source_path: str = opt("", "scene folder D (images/, sparse/, split file, description.yml)", short="s")
    model_path: str = opt("", "model folder M where outputs are written", short="m")
    images: str = opt("images", "image folder, relative to D or absolute", short="i")
    depths: str = opt("", "depth folder for the sensor-depth loss (relative to D, e.g. depths_cam); empty = none")
    depths_est: str = opt("", "folder of estimated (relative) depths for the ranking-free depth loss (e.g. depths_est); empty = none")
    resolution: int = opt(-1, "1/2/4/8 divide the images; -1 caps the width at 1600 px; any other value is a target width", short="r")
    white_background: bool = opt(False, "white instead of black background", short="w")
    data_device: str = opt("", "device that holds the training images (default: the training device)")
    eval: bool = opt(False, "hold out test views (from --split_yml_name, else every 8th view)")
    split_yml_name: str = opt("", "split file inside D with `train` and `test` lists of image stems (e.g. split.yml)")
    renderer: str = opt("auto", "rasterizer backend: auto (gsplat on CUDA, torch otherwise), gsplat or torch", choices=["auto", "gsplat", "torch"])
    device: str = opt("", "torch device (default: cuda if available, else cpu)")


@dataclass
class PipelineParams:
    """Rendering options (3DGS ``PipelineParams``)."""

    eps2d: float = opt(0.3, "low-pass filter added to every projected 2D covariance (pixels^2)")
    near_plane: float = opt(0.01, "Gaussians closer to the camera than this are not rendered")
    far_plane: float = opt(1e10, "Gaussians farther than this are not rendered")
    debug: bool = opt(False, "check tensors for NaNs after each step")


@dataclass
class OptimizationParams:
    """Training schedule and learning rates (3DGS ``OptimizationParams`` defaults)."""

    iterations: int = opt(30_000, "number of optimisation steps")
    position_lr_init: float = opt(0.00016, "initial learning rate of the centres (times the scene extent)")
    position_lr_final: float = opt(0.0000016, "final learning rate of the centres (times the scene extent)")
    position_lr_delay_mult: float = opt(0.01, "learning-rate delay multiplier of the centres")
    position_lr_max_steps: int = opt(30_000, "steps over which the centre learning rate decays")
    feature_lr: float = opt(0.0025, "learning rate of the DC colour (higher SH use feature_lr/20)")
    opacity_lr: float = opt(0.025, "learning rate of the opacity logits")
    scaling_lr: float = opt(0.005, "learning rate of the log-scales")
    rotation_lr: float = opt(0.001, "learning rate of the quaternions")
    percent_dense: float = opt(0.01, "Gaussians larger than this fraction of the scene extent are split, smaller cloned")
    lambda_dssim: float = opt(0.2, "weight of the D-SSIM term (1 - SSIM) against L1")
    densification_interval: int = opt(100, "densify every this many steps")
    opacity_reset_interval: int = opt(3000, "reset opacities every this many steps")
    densify_from_iter: int = opt(500, "first step of densification")
    densify_until_iter: int = opt(15_000, "last step of densification")
    densify_grad_threshold: float = opt(0.0002, "mean screen-space (NDC) gradient above which a Gaussian is densified")
    opacity_cull: float = opt(0.005, "Gaussians with opacity below this are pruned (SCORP's authors used 0.6)")
    opacity_reset_value: float = opt(0.01, "opacity reset sets opacities to min(opacity, this)")
    max_screen_size: float = opt(0.0, "prune Gaussians whose screen radius exceeded this many pixels after the first opacity reset; 0 disables (in 3DGS this test never fired)")
    max_world_size: float = opt(0.1, "prune Gaussians larger than this fraction of the scene extent (after the first opacity reset)")
    split_count: int = opt(2, "number of Gaussians a large Gaussian is split into")
    split_scale_divisor: float = opt(1.6, "scales of split Gaussians are divided by this (3DGS: 0.8 x split_count = 1.6)")
    random_background: bool = opt(False, "random background colour each step (an opacity regulariser)")
    sh_increase_interval: int = opt(1000, "raise the active SH degree every this many steps")
    depth_l1_weight_init: float = opt(1.0, "initial weight of the depth loss (when depths are given)")
    depth_l1_weight_final: float = opt(0.01, "final weight of the depth loss (log-linear decay over the iterations)")
    depth_from_iter: int = opt(0, "first step of the depth loss")
    depth_min: float = opt(0.3, "sensor depths below this (metres) are ignored")
    depth_max: float = opt(7.0, "sensor depths above this (metres) are ignored")
    depth_scale: float = opt(0.001, "depth PNG units to metres (uint16 millimetres: 0.001)")
    depth_alpha_min: float = opt(0.5, "pixels whose rendered opacity is at most this are left out of the depth losses")
    depth_est_min_pixels: int = opt(10, "the estimated-depth loss fits its scale and shift only with more valid pixels than this")
    init_opacity: float = opt(0.1, "opacity of the initial Gaussians")
    seed: int = opt(0, "random seed (training-view order, initialisation)")


def check_options(options: Any, checks: list[tuple[str, bool, str]]) -> None:
    """Raise ValueError naming the first failed check ``(option name, ok, what it must be)``."""
    for name, ok, want in checks:
        if not ok:
            raise ValueError(f"--{name} must be {want}, got {getattr(options, name)}")


def add_group(parser: argparse.ArgumentParser, cls: Type, title: Optional[str] = None, sentinel: bool = False) -> argparse._ArgumentGroup:
    """Add the fields of dataclass ``cls`` as flags of a new argument group.

    ``sentinel`` makes every default ``None`` so that a caller can tell which flags were given.
    """
    group = parser.add_argument_group(title or cls.__name__, (cls.__doc__ or "").strip())
    hints = get_type_hints(cls)
    for f in fields(cls):
        meta = f.metadata
        names = [f"--{f.name}"]
        if meta.get("short"):
            names.append(f"-{meta['short']}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"help": f"{meta.get('help', '')} (default: {default})", "dest": f.name}
        if sentinel:
            kwargs["default"] = None
        else:
            kwargs["default"] = default
        typ = hints[f.name]
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typ in (list[int], list[float], list[str]):
            kwargs["type"] = typ.__args__[0]
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = typ
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        group.add_argument(*names, **kwargs)
    return group


def extract(ns: argparse.Namespace, cls: Type[T], base: Optional[dict] = None) -> T:
    """Build ``cls`` from a namespace; values that are None (not given) fall back to ``base``,
    then to the field default."""
    base = base or {}
    values = {}
    for f in fields(cls):
        v = getattr(ns, f.name, None)
        if v is None:
            v = base.get(f.name)
        if v is None:
            continue
        values[f.name] = v
    return cls(**values)


def device_from(name: str) -> "torch.device":
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# -- cfg_args ---------------------------------------------------------------------------------
def format_cfg_args(values: dict[str, Any]) -> str:
    """3DGS's ``cfg_args`` text: ``Namespace(key=repr(value), ...)``."""
    return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")"


def parse_cfg_args(text: str, path: str = "cfg_args") -> dict[str, Any]:
    """Parse ``Namespace(k=v, ...)`` safely (values must be Python literals)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(path, f"not a Namespace(...) text ({exc.msg})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"):
        raise InputError(path, "not a Namespace(...) text")
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            raise InputError(path, f"value of {kw.arg!r} is not a literal") from None
    return out


def read_cfg_args(model_path: str) -> dict[str, Any]:
    """The values training stored in ``M/cfg_args`` ({} when the file does not exist)."""
    path = os.path.join(model_path, "cfg_args")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return parse_cfg_args(f.read(), path)


def git_revision() -> str:
    """The git revision of this checkout, or "unknown"."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stage_record(stage: str, **groups: Any) -> dict[str, Any]:
    """The JSON record of a stage's resolved options, written next to its outputs."""
    rec: dict[str, Any] = {"schema": 1, "stage": stage, "git": git_revision()}
    for name, g in groups.items():
        rec[name] = dataclasses.asdict(g) if dataclasses.is_dataclass(g) else g
    return rec
