"""Stage 5, ``trellis`` backend: the official TRELLIS image-to-3D pipeline (microsoft/TRELLIS).

TRELLIS is git only (https://github.com/microsoft/TRELLIS, installed with its ``setup.sh`` in an
environment of its own; the PyPI package ``trellis-3d-python`` is a different project). It is
imported here, lazily, inside :func:`run_trellis_backend`; ``ATTN_BACKEND`` and ``SPCONV_ALGO``
are set (``os.environ.setdefault``: a value already in the environment wins) BEFORE that import,
because TRELLIS reads them when its modules are imported.

The calls follow TRELLIS's ``example.py`` / ``example_multi_image.py`` and
``trellis/pipelines/trellis_image_to_3d.py``::

    pipeline = TrellisImageTo3DPipeline.from_pretrained(path_or_hub_id); pipeline.to(device)
    outputs = pipeline.run(image, seed=s, sparse_structure_sampler_params={"steps", "cfg_strength"},
                           slat_sampler_params={...}, formats=[...])                  # one view
    outputs = pipeline.run_multi_image(images, seed=s, ..., formats=[...], mode=m)     # several views
    outputs["gaussian"][0].save_ply(path)
    glb = postprocessing_utils.to_glb(outputs["gaussian"][0], outputs["mesh"][0], simplify=, texture_size=)
    glb.export(path)

The inputs are ``M/masked_image_rgba_selected/<prompt>/img_<i>.png`` in increasing ``i`` (the
multi-image sampler conditions step ``k`` on image ``k mod n``, so the order matters); both paths
use the same seed and sampler settings. Only the formats needed are decoded: ``gaussian`` always
(``to_glb`` bakes its texture from the Gaussians), ``mesh`` for ``--save_type mesh|both``.

Axes (read from TRELLIS's source): TRELLIS generates in its own frame, Z up (its renderers look at
the origin with up = +Z). ``Gaussian.save_ply`` applies ``T = [[1,0,0],[0,0,-1],[0,1,0]]``:
``x_ply = T x``; ``to_glb`` rotates "from z-up to y-up" as glTF wants: ``x_glb = T^T x``. The
proxy frame of this backend is the frame of ``save_ply`` (the one the authors' pipeline used),
so a mesh proxy is brought into it with ``x_ply = T T x_glb = diag(1, -1, -1) x_glb``
(:data:`GLB_TO_PLY`: undo ``to_glb``'s rotation, then apply ``save_ply``'s) before it is sampled:
``--save_type gs`` and ``mesh`` give proxies in the same frame. Note that in that frame TRELLIS's
up axis is -Y (the 3DGS viewers' Y-down convention), whatever the SPEC's "Z up" suggests.

Outputs per object: ``--save_type gs``: ``<prompt>.ply`` from ``save_ply`` (read back with our
reader, checked, kept as is when it fits the canonical box, else normalised, and rewritten in our
layout); ``mesh``: ``<prompt>.glb`` (one per object) and ``<prompt>.ply`` sampled from that GLB with
the file backend's mesh importer; ``both``: the PLY from the Gaussians and the GLB.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from utils.arguments import opt
from utils.errors import InputError
from utils.generation import (
    GENERATED,
    SELECTED,
    ObjectOutput,
    ProxyParams,
    fits_canonical,
    input_record,
    list_objects,
    load_mesh_parts,
    mesh_to_gaussians,
    normalise_gaussians,
    write_outputs,
)

log = logging.getLogger(__name__)

TRELLIS_AXIS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""TRELLIS's default ``transform`` of ``Gaussian.save_ply``: x_ply = TRELLIS_AXIS @ x_trellis
(``to_glb`` writes x_glb = TRELLIS_AXIS.T @ x_trellis)."""
GLB_TO_PLY = TRELLIS_AXIS @ TRELLIS_AXIS
"""x_ply = GLB_TO_PLY @ x_glb (= diag(1, -1, -1), a rotation by 180 degrees about X)."""

DEFAULT_MODEL = "checkpoints/TRELLIS/TRELLIS-image-large"
HUB_MODEL = "microsoft/TRELLIS-image-large"
INSTALL_HINT = ("install TRELLIS from https://github.com/microsoft/TRELLIS (git clone, then its setup.sh, in an environment "
                "of its own) and run this script with that environment's python, with --trellis_path <checkout> or the "
                "checkout on PYTHONPATH; the PyPI package trellis-3d-python is NOT TRELLIS")
SELECTED_NAME = re.compile(r"img_(\d+)\.png")
ATTN_BACKENDS = ("xformers", "flash_attn", "sdpa", "naive")  # TRELLIS's trellis/modules/attention (sparse: first two)
SPCONV_ALGOS = ("native", "auto")
MULTI_IMAGE_MODES = ("stochastic", "multidiffusion")
SAVE_TYPES = ("gs", "mesh", "both")


@dataclass
class TrellisParams:
    """Options of the ``trellis`` backend (TRELLIS image-to-3D)."""

    trellis_model: str = opt(DEFAULT_MODEL, f"TRELLIS checkpoint: a local folder holding pipeline.json, or a hub id such as {HUB_MODEL}")
    trellis_path: str = opt("", "a TRELLIS git checkout to put on sys.path; empty: TRELLIS must already be importable (e.g. on PYTHONPATH)")
    device: str = opt("", "torch device of the pipeline, cuda or cuda:<i>; empty: cuda (TRELLIS needs a CUDA GPU)")
    attn_backend: str = opt("xformers", "ATTN_BACKEND for TRELLIS, set before it is imported (an ATTN_BACKEND already in the environment wins; TRELLIS's sparse attention knows only xformers and flash_attn)", choices=list(ATTN_BACKENDS))
    spconv_algo: str = opt("native", "SPCONV_ALGO for TRELLIS, set before it is imported (native: no start-up benchmark; an SPCONV_ALGO already in the environment wins)", choices=list(SPCONV_ALGOS))
    ss_steps: int = opt(12, "sampling steps of the sparse-structure flow (stage 1 of TRELLIS)")
    ss_cfg_strength: float = opt(7.5, "classifier-free guidance strength of the sparse-structure flow")
    slat_steps: int = opt(12, "sampling steps of the structured-latent flow (stage 2 of TRELLIS)")
    slat_cfg_strength: float = opt(3.0, "classifier-free guidance strength of the structured-latent flow")
    multi_image_mode: str = opt("stochastic", "how several views condition the flows: stochastic (step k uses view k mod n) or multidiffusion (all views averaged each step)", choices=list(MULTI_IMAGE_MODES))
    save_type: str = opt("gs", "gs: <prompt>.ply from TRELLIS's Gaussians; mesh: <prompt>.glb and a <prompt>.ply sampled from it; both: the Gaussian PLY and the GLB", choices=list(SAVE_TYPES))
    glb_simplify: float = opt(0.95, "to_glb: fraction of the mesh's triangles removed by simplification, in [0, 1)")
    glb_texture_size: int = opt(1024, "to_glb: side of the baked texture in pixels")

    def validate(self) -> None:
        """Raise InputError naming the first option that is out of range."""
        checks = [
            ("ss_steps", self.ss_steps >= 1, ">= 1"),
            ("slat_steps", self.slat_steps >= 1, ">= 1"),
            ("ss_cfg_strength", self.ss_cfg_strength >= 0.0, ">= 0"),
            ("slat_cfg_strength", self.slat_cfg_strength >= 0.0, ">= 0"),
            ("glb_simplify", 0.0 <= self.glb_simplify < 1.0, "in [0, 1)"),
            ("glb_texture_size", self.glb_texture_size >= 1, ">= 1"),
            ("attn_backend", self.attn_backend in ATTN_BACKENDS, f"one of {', '.join(ATTN_BACKENDS)}"),
            ("spconv_algo", self.spconv_algo in SPCONV_ALGOS, f"one of {', '.join(SPCONV_ALGOS)}"),
            ("multi_image_mode", self.multi_image_mode in MULTI_IMAGE_MODES, f"one of {', '.join(MULTI_IMAGE_MODES)}"),
            ("save_type", self.save_type in SAVE_TYPES, f"one of {', '.join(SAVE_TYPES)}"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise InputError(None, f"--{name} must be {want}, got {getattr(self, name)!r}")

    def sampler_params(self) -> tuple[dict, dict]:
        """(sparse_structure_sampler_params, slat_sampler_params) as TRELLIS takes them."""
        return ({"steps": self.ss_steps, "cfg_strength": self.ss_cfg_strength},
                {"steps": self.slat_steps, "cfg_strength": self.slat_cfg_strength})

    def formats(self) -> list[str]:
        """The TRELLIS output formats to decode (to_glb needs the Gaussians as well as the mesh)."""
        return ["gaussian"] if self.save_type == "gs" else ["gaussian", "mesh"]


# ---------------------------------------------------------------------------------------------
# Checks (before anything is imported, run or written)
# ---------------------------------------------------------------------------------------------
def selected_images(model_path: str, prompt: str) -> list[str]:
    """M/masked_image_rgba_selected/<prompt>/img_<i>.png sorted by i (as numbers: img_10 after img_9)."""
    folder = os.path.join(model_path, SELECTED, prompt)
    if not os.path.isdir(folder):
        raise InputError(folder, f"selected views of {prompt!r} not found (run view_selection.py first)")
    found = []
    for f in os.listdir(folder):
        m = SELECTED_NAME.fullmatch(f)
        if m and os.path.isfile(os.path.join(folder, f)):
            found.append((int(m.group(1)), f))
    if not found:
        raise InputError(folder, "no img_<i>.png in it (run view_selection.py first)")
    return [os.path.join(folder, f) for _, f in sorted(found)]


def open_image(path: str):
    """The PIL image of a selected view (read fully, file closed)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(path, f"not a readable image ({exc})") from None
    if image.mode != "RGBA":
        log.warning("%s has no alpha (mode %s): TRELLIS will remove its background with rembg", path, image.mode)
    return image


def resolve_checkpoint(model: str) -> tuple[str, str]:
    """("local", absolute folder) or ("hub", id). A local folder must hold TRELLIS's pipeline.json;
    a name that is not a path on disk is taken as a hub id only when it looks like one (owner/name)
    and its first part is not a local folder."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "pipeline.json")):
            raise InputError(model, "not a TRELLIS checkpoint folder: pipeline.json is missing")
        return "local", os.path.abspath(model)
    if os.path.exists(model):
        raise InputError(model, "a TRELLIS checkpoint must be a folder (holding pipeline.json) or a hub id")
    parts = model.split("/")
    looks_like_hub = len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts)
    if looks_like_hub and not os.path.isdir(parts[0]):
        return "hub", model
    raise InputError(model, f"TRELLIS checkpoint folder not found (download {HUB_MODEL} into it, or pass "
                            f"--trellis_model {HUB_MODEL} to load it from the hub)")


def set_environment(params: TrellisParams) -> dict[str, str]:
    """Set ATTN_BACKEND and SPCONV_ALGO (unless already set); returns the values in effect."""
    os.environ.setdefault("ATTN_BACKEND", params.attn_backend)
    os.environ.setdefault("SPCONV_ALGO", params.spconv_algo)
    env = {k: os.environ[k] for k in ("ATTN_BACKEND", "SPCONV_ALGO")}
    for key, wanted in (("ATTN_BACKEND", params.attn_backend), ("SPCONV_ALGO", params.spconv_algo)):
        if env[key] != wanted:
            log.warning("%s=%s from the environment is used (the option says %s)", key, env[key], wanted)
    return env


def import_trellis(params: TrellisParams) -> tuple[Any, Any]:
    """(TrellisImageTo3DPipeline, postprocessing_utils or None); ImportError with the install hint."""
    if params.trellis_path:
        if not os.path.isdir(os.path.join(params.trellis_path, "trellis")):
            raise InputError(params.trellis_path, "--trellis_path is not a TRELLIS checkout (no trellis/ package folder in it)")
        path = os.path.abspath(params.trellis_path)
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        from trellis.pipelines import TrellisImageTo3DPipeline

        post = None
        if params.save_type != "gs":
            from trellis.utils import postprocessing_utils as post
    except ImportError as exc:
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ImportError(f"the trellis backend cannot import TRELLIS ({why}): {INSTALL_HINT}") from None
    except (OSError, RuntimeError) as exc:  # broken CUDA extensions (spconv, xformers) fail at import with these
        why = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ImportError(f"TRELLIS failed to import ({why}); check its CUDA packages: {INSTALL_HINT}") from None
    return TrellisImageTo3DPipeline, post


def resolve_device(name: str) -> Any:
    """The torch device for TRELLIS: CUDA only (its Gaussian decoder and renderers call .cuda())."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"the trellis backend needs torch (TRELLIS's environment has it): {INSTALL_HINT}") from None
    name = name or "cuda"
    if not name.startswith("cuda"):
        raise InputError(None, f"--device {name}: TRELLIS runs on CUDA GPUs only (give cuda or cuda:<i>)")
    if not torch.cuda.is_available():
        raise InputError(None, "the trellis backend needs a CUDA GPU, and torch.cuda.is_available() is False "
                               "(no GPU, no driver or a CPU-only torch); use --backend hull or --backend file without one")
    index = int(name.split(":", 1)[1]) if ":" in name and name.split(":", 1)[1].isdigit() else 0
    if index >= torch.cuda.device_count():
        raise InputError(None, f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def run_pipeline(pipeline: Any, images: list, params: TrellisParams, seed: int) -> tuple[dict, str]:
    """TRELLIS on one object's views: ``run`` for one image, ``run_multi_image`` for several,
    with the same seed, sampler settings and formats. Returns (outputs, the method called)."""
    ss, slat = params.sampler_params()
    if len(images) == 1:
        out = pipeline.run(images[0], seed=seed, sparse_structure_sampler_params=ss, slat_sampler_params=slat,
                           formats=params.formats())
        method = "run"
    else:
        out = pipeline.run_multi_image(images, seed=seed, sparse_structure_sampler_params=ss, slat_sampler_params=slat,
                                       formats=params.formats(), mode=params.multi_image_mode)
        method = "run_multi_image"
    for key in params.formats():
        if not isinstance(out, dict) or not out.get(key):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise RuntimeError(f"TRELLIS {method} returned no {key!r} output (got {got})")
    return out, method


def gaussians_from_trellis(gaussian: Any, tmp_dir: str, prompt: str, canonical: bool):
    """``gaussian.save_ply`` into ``tmp_dir``, read back with our reader and checked."""
    from scene.gaussian_ply import read_gaussian_ply

    path = os.path.join(tmp_dir, f"{prompt}.ply")
    gaussian.save_ply(path)
    g = read_gaussian_ply(path)
    if len(g) == 0 or not (np.isfinite(g.xyz).all() and np.isfinite(g.scale).all()):
        raise RuntimeError(f"TRELLIS produced {'no' if len(g) == 0 else 'non-finite'} Gaussians for {prompt!r}")
    if not fits_canonical(g.xyz):
        log.warning("%s: TRELLIS's Gaussians reach %.4f, outside the canonical box [-0.5, 0.5]^3: normalised", prompt,
                    float(np.abs(g.xyz).max()))
    return normalise_gaussians(g, canonical, path)


def gaussians_from_glb(glb_path: str, proxy: ProxyParams):
    """The file backend's mesh importer on TRELLIS's GLB, with the mesh first rotated from the GLB
    frame (Y up) into the save_ply frame (:data:`GLB_TO_PLY`)."""
    parts = load_mesh_parts(glb_path)
    for p in parts:
        p.triangles = p.triangles @ GLB_TO_PLY.T
    g, _, kinds = mesh_to_gaussians(parts, proxy.gaussians_per_mesh, proxy.seed, proxy.normal_scale_ratio, proxy.opacity,
                                    canonical=False)
    g, norm = normalise_gaussians(g, proxy.canonical, glb_path)
    return g, norm, kinds


def run_trellis_backend(model_path: str, object_name: Optional[str], proxy: ProxyParams, params: TrellisParams) -> list[str]:
    """TRELLIS for every object; every input is checked and every object generated before anything
    is written. Returns the prompts."""
    proxy.validate()
    params.validate()
    prompts = list_objects(model_path, object_name, None)
    inputs = {p: selected_images(model_path, p) for p in prompts}
    images = {p: [open_image(f) for f in files] for p, files in inputs.items()}
    kind, model = resolve_checkpoint(params.trellis_model)
    env = set_environment(params)
    pipeline_cls, post = import_trellis(params)
    device = resolve_device(params.device)
    try:
        pipeline = pipeline_cls.from_pretrained(model)
    except Exception as exc:  # TRELLIS and huggingface_hub raise many types for a bad checkpoint
        raise InputError(model, f"cannot load the TRELLIS pipeline ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    pipeline.to(device)
    ss, slat = params.sampler_params()
    options = {**asdict(params), "environment": env, "checkpoint": {"kind": kind, "path": model}, "device": str(device),
               "sparse_structure_sampler_params": ss, "slat_sampler_params": slat, "formats": params.formats(),
               "gaussians_per_mesh": proxy.gaussians_per_mesh, "normal_scale_ratio": proxy.normal_scale_ratio,
               "opacity": proxy.opacity, "canonical": proxy.canonical}
    with tempfile.TemporaryDirectory(prefix="scorp_trellis_") as tmp:
        results = []
        for prompt in prompts:
            log.info("%s: TRELLIS on %d view(s)", prompt, len(images[prompt]))
            outputs, method = run_pipeline(pipeline, images[prompt], params, proxy.seed)
            gaussian = outputs["gaussian"][0]
            record: dict = {"object": prompt, "backend": "trellis", "inputs": [input_record(f) for f in inputs[prompt]],
                            "method": method, "seed": proxy.seed}
            glb_path = None
            if params.save_type != "gs":
                glb = post.to_glb(gaussian, outputs["mesh"][0], simplify=params.glb_simplify,
                                  texture_size=params.glb_texture_size)
                glb_path = os.path.join(tmp, f"{prompt}.glb")
                glb.export(glb_path)
            if params.save_type in ("gs", "both"):
                g, norm = gaussians_from_trellis(gaussian, tmp, prompt, proxy.canonical)
                record["input_kind"] = "trellis_gaussians"
                frame = "TRELLIS save_ply frame (x_ply = T x_trellis, T = [[1,0,0],[0,0,-1],[0,1,0]])"
            else:
                g, norm, kinds = gaussians_from_glb(glb_path, proxy)
                record["input_kind"] = "trellis_mesh"
                record["colour_source"] = kinds
                frame = "TRELLIS save_ply frame, from the GLB by x_ply = glb_to_ply @ x_glb"
            record.update({
                "normalisation": norm.record(), "frame": frame, "glb_to_ply": GLB_TO_PLY.tolist(),
                "glb": os.path.join(os.path.abspath(model_path), GENERATED, f"{prompt}.glb") if glb_path else None,
                "num_gaussians": len(g), "sh_degree": g.sh_degree, "options": options,
            })
            results.append(ObjectOutput(prompt, g, record, glb_path))
        write_outputs(model_path, results)
    return prompts
