"""Side-by-side training benchmarks (the core of ``scripts/benchmark.py``).

Three trainers are run on one prepared scene, each as its own process:

* ``ours``: ``train_3dgs.py`` of this repository;
* ``gsplat``: ``examples/simple_trainer.py`` of gsplat (its ``default`` strategy), from a checkout
  of the gsplat repository given by the user (never copied into this repository);
* ``inria``: ``train.py`` of graphdeco-inria/gaussian-splatting, from a checkout given by the user.

Every trainer reads the same files: :func:`prepare_scene` writes a copy of a COLMAP scene at
the benchmark resolution (so every trainer runs at its ``-r 1`` / ``--data_factor 1``, reading
identical pixels), a binary ``sparse/0`` model (the only layout all three read) and a
``split.yml`` with every ``test_every``-th view of the name-sorted list as a test view (the hold-out
that gsplat's ``test_every`` and INRIA's ``--eval`` make themselves).

Each trainer's final Gaussians are brought into the COLMAP frame (gsplat trains in a normalised
frame: :func:`gsplat_to_colmap`) and scored by ONE evaluation (:func:`evaluate_ply`): our renderer
draws every test view and PSNR / SSIM (and LPIPS when its weights are available) are computed
against the same decoded images. Times: the wall time of the whole command, and the training-loop
time each trainer reports itself where it has one. Peak GPU memory: sampled from ``nvidia-smi``
for every trainer alike (device-wide, minus the value before start; includes the CUDA context and
the caching allocator's reserve), plus each trainer's own ``max_memory_allocated`` where it has one.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from scene.colmap import read_model, write_model, find_sparse_dir
from scene.split import make_split, write_split
from utils.errors import InputError
from utils.images import find_image, image_size, open_image, resample_rgba
from utils.io import _umask

log = logging.getLogger(__name__)

TRAINERS = ("ours", "gsplat", "inria")
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
RECORD_NAME = "benchmark_record.json"


# -- scene preparation --------------------------------------------------------------------------
def prepare_scene(source: str, dst: str, resolution: int = 1, images: str = "images", test_every: int = 8,
                  jpeg_quality: int = 95, overwrite: bool = False) -> dict:
    """Write ``dst`` = ``source`` at ``1/resolution`` of its size, readable by all three trainers.

    Images are resampled like our loader's ``-r`` (PIL bicubic as :func:`utils.images.load_rgba`,
    sizes by the 3DGS rounding rule) and written in their own format (JPEG at ``jpeg_quality``,
    else PNG); at ``resolution`` 1 they are copied byte for byte. Intrinsics are scaled per axis.
    Only undistorted cameras (PINHOLE, SIMPLE_PINHOLE) are accepted: the other trainers ignore
    distortion. Returns a summary (views, size, split counts).
    """
    from scene.cameras import resolution_for

    if resolution not in (1, 2, 4, 8):
        raise ValueError(f"resolution must be 1, 2, 4 or 8, got {resolution}")
    if os.path.exists(dst) and os.listdir(dst) and not overwrite:
        raise InputError(dst, "output folder exists and is not empty (pass --overwrite to replace it)")
    sparse = find_sparse_dir(source)
    cams, imgs, pts = read_model(sparse)
    for cid, c in cams.items():
        if c.model not in PINHOLE_MODELS:
            raise InputError(sparse, f"camera {cid} is {c.model}; the benchmark needs undistorted cameras "
                                     f"({', '.join(PINHOLE_MODELS)}): run convert.py first")
    image_dir = os.path.join(source, images)
    sizes, orig_sizes = {}, {}
    for cid, c in cams.items():
        orig_sizes[cid] = (c.width, c.height)
        w, h = resolution_for(c.width, c.height, resolution)
        sizes[cid] = (w, h)
        sx, sy = w / c.width, h / c.height
        if c.model == "SIMPLE_PINHOLE":
            if abs(sx - sy) > 1e-3:
                raise InputError(sparse, f"camera {cid}: SIMPLE_PINHOLE cannot be resized anisotropically to {w}x{h}")
            c.params = np.asarray(c.params, dtype=np.float64) * np.array([sx, sx, sy])
        else:
            c.params = np.asarray(c.params, dtype=np.float64) * np.array([sx, sy, sx, sy])
        c.width, c.height = w, h
    ordered = sorted(imgs.values(), key=lambda i: i.name)
    sources = {}
    for im in ordered:  # every input is checked before anything is written (or an old copy removed)
        src = find_image(image_dir, im.name)
        if src is None:
            raise InputError(os.path.join(image_dir, im.name), "image registered in the COLMAP model is missing")
        if image_size(src) != orig_sizes[im.camera_id]:
            w, h = orig_sizes[im.camera_id]
            raise InputError(src, f"image is {image_size(src)[0]}x{image_size(src)[1]}, its COLMAP camera {w}x{h}")
        sources[im.name] = src
    names = [os.path.basename(im.name) for im in ordered]
    stems = [os.path.splitext(n)[0] for n in names]
    if sorted(stems) != [os.path.splitext(n)[0] for n in sorted(names)]:
        raise InputError(image_dir, "sorting the image names and their stems gives different orders; "
                                    "the trainers' every-N hold-outs would differ")
    split = make_split(stems, f"every:{test_every}")
    # the copy is built next to dst and replaces it only when complete: an image that fails to
    # decode half-way leaves an existing dst as it was
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(dst))}.", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the permissions makedirs would
        os.makedirs(os.path.join(tmp, "images"))
        for im, name in zip(ordered, names):
            src = sources[im.name]
            out = os.path.join(tmp, "images", name)
            if resolution == 1:
                shutil.copyfile(src, out)
            else:
                pil, _ = resample_rgba(open_image(src), sizes[im.camera_id])
                if name.lower().endswith((".jpg", ".jpeg")):
                    pil.convert("RGB").save(out, quality=jpeg_quality)
                else:
                    pil.save(out)
            im.name = name
        os.makedirs(os.path.join(tmp, "sparse", "0"))
        write_model(cams, imgs, pts, os.path.join(tmp, "sparse", "0"), ext=".bin")
        write_split(os.path.join(tmp, "split.yml"), split)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    w, h = next(iter(sizes.values()))
    return {"views": len(names), "train": len(split["train"]), "test": len(split["test"]), "width": w, "height": h,
            "points": len(pts), "test_every": test_every, "source": os.path.abspath(source), "resolution": resolution}


# -- running a trainer ---------------------------------------------------------------------------
class GpuMemoryPoller:
    """Peak ``memory.used`` (MiB) of one GPU sampled by ``nvidia-smi`` while the context is open,
    minus the value at entry. Inactive (``peak_mib`` None) where ``nvidia-smi`` is missing."""

    def __init__(self, gpu: int = 0, interval_s: float = 0.2):
        self.gpu, self.interval_s = gpu, interval_s
        self.base: Optional[int] = None
        self.peak: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _used(self) -> Optional[int]:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(self.gpu)],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0 or not out.stdout.strip():
            return None
        return int(out.stdout.strip().splitlines()[0])

    def __enter__(self) -> "GpuMemoryPoller":
        self.base = self._used()
        if self.base is not None:
            self.peak = self.base
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            used = self._used()
            if used is not None:
                self.peak = max(self.peak, used)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_mib(self) -> Optional[int]:
        return None if self.base is None else self.peak - self.base


def run_command(cmd: Sequence[str], log_path: str, cwd: Optional[str] = None, env: Optional[dict] = None, gpu: int = 0) -> dict:
    """Run ``cmd`` with its output in ``log_path``; returns wall time and polled GPU memory.
    Raises RuntimeError naming the log when the command fails."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "w") as logf, GpuMemoryPoller(gpu) as mem:
        t0 = time.perf_counter()
        proc = subprocess.run(list(cmd), stdout=logf, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} exited {proc.returncode}; see {log_path}")
    return {"wall_s": wall, "peak_gpu_mib_polled": mem.peak_mib}


@dataclass
class TrainerRecord:
    """What one trainer did on one scene (written as ``<out>/<trainer>/benchmark_record.json``)."""

    trainer: str
    scene: str
    iterations: int
    command: list[str]
    wall_s: float
    train_s: Optional[float]  # the trainer's own training-loop time (None: it has none)
    peak_gpu_mib_polled: Optional[int]
    peak_gpu_mib_own: Optional[float]  # torch.cuda.max_memory_allocated as the trainer reports it
    num_gaussians: int
    ply: str
    eval: dict = field(default_factory=dict)  # shared evaluation: psnr, ssim, lpips (or None), views
    own_eval: dict = field(default_factory=dict)  # the trainer's own test figures, where it writes them
    machine: str = ""
    scene_info: dict = field(default_factory=dict)
    notes: str = ""

    @property
    def it_per_s(self) -> float:
        t = self.train_s if self.train_s else self.wall_s
        return self.iterations / t if t > 0 else float("nan")

    def save(self, path: str) -> None:
        from utils.io import write_json

        write_json(path, {**asdict(self), "it_per_s": self.it_per_s})

    @classmethod
    def load(cls, path: str) -> "TrainerRecord":
        from utils.io import read_json

        d = read_json(path)
        d.pop("it_per_s", None)
        try:
            return cls(**d)
        except TypeError as exc:
            raise InputError(path, f"not a benchmark record ({exc})") from None


def machine_description() -> str:
    """GPU name, driver, CPU count, torch / CUDA / gsplat versions of this process's machine."""
    parts = []
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
        try:
            drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            if drv:
                parts.append(f"driver {drv}")
        except (OSError, subprocess.TimeoutExpired):
            pass
    else:
        parts.append("CPU only")
    parts.append(f"{os.cpu_count()} CPU cores")
    parts.append(f"Python {sys.version.split()[0]}, torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""))
    try:
        import gsplat

        parts.append(f"gsplat {gsplat.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def warm_up_gsplat(device: torch.device) -> float:
    """Render a few Gaussians forward and backward through gsplat so that its JIT-compiled kernels
    are built (and cached on disk) before any trainer is timed; returns the seconds it took."""
    from gaussian_renderer import rasterize

    t0 = time.perf_counter()
    g = torch.Generator(device="cpu").manual_seed(0)
    n = 64
    means = (torch.randn(n, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])).to(device).requires_grad_(True)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1).to(device)
    scales = torch.full((n, 3), 0.05, device=device)
    opac = torch.full((n,), 0.5, device=device)
    sh = torch.rand(n, 16, 3, generator=g).to(device)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]], device=device)
    for mode in ("classic", "antialiased"):
        out = rasterize(means, quats, scales, opac, sh, torch.eye(4, device=device), K, 64, 64, sh_degree=3,
                        backend="gsplat", rasterize_mode=mode)
        out.image.sum().backward()
    torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ours_command(scene: str, model: str, iterations: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, os.path.join(repo_root(), "train_3dgs.py"), "-s", scene, "-m", model, "-r", "1", "--eval",
            "--split_yml_name", "split.yml", "--iterations", str(iterations), "--test_iterations", "-1",
            "--save_iterations", str(iterations), "--quiet", *extra]


def gsplat_command(examples: str, scene: str, result: str, iterations: int, test_every: int, extra: Sequence[str] = ()) -> list[str]:
    """simple_trainer's default strategy; only the final step is evaluated and saved, no viewer,
    no trajectory video (so its training-loop time holds training only)."""
    return [sys.executable, os.path.join(examples, "simple_trainer.py"), "default", "--disable_viewer", "--disable_video",
            "--data_dir", scene, "--data_factor", "1", "--test_every", str(test_every), "--max_steps", str(iterations),
            "--eval_steps", str(iterations), "--save_steps", str(iterations), "--result_dir", result, *extra]


def inria_command(inria_dir: str, scene: str, model: str, iterations: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, os.path.join(inria_dir, "train.py"), "-s", scene, "-m", model, "-r", "1", "--eval",
            "--iterations", str(iterations), "--save_iterations", str(iterations), "--test_iterations", str(iterations),
            "--disable_viewer", *extra]


# -- gsplat's normalised world -------------------------------------------------------------------
def gsplat_world_transform(examples: str, data_dir: str, test_every: int = 8) -> np.ndarray:
    """The 4x4 similarity ``x_gsplat = T x_colmap`` that simple_trainer's data parser applies
    (``normalize=True``, its default). simple_trainer keeps T in memory only, so it is recomputed by
    the examples' own ``datasets.colmap.Parser`` on the same folder."""
    if not os.path.isfile(os.path.join(examples, "datasets", "colmap.py")):
        raise InputError(examples, "not gsplat's examples folder (datasets/colmap.py missing)")
    # the examples' package is called ``datasets``, like Hugging Face's: import it in isolation
    is_ds = lambda name: name == "datasets" or name.startswith("datasets.")  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if is_ds(k)}
    sys.path.insert(0, os.path.abspath(examples))
    try:
        from datasets.colmap import Parser  # gsplat's examples, run beside ours

        T = np.asarray(Parser(data_dir=data_dir, factor=1, normalize=True, test_every=test_every).transform, dtype=np.float64)
    finally:
        sys.path.remove(os.path.abspath(examples))
        for k in [k for k in sys.modules if is_ds(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    if T.shape != (4, 4):
        raise ValueError(f"gsplat's Parser gave a transform of shape {T.shape}, expected (4, 4)")
    return T


def gsplat_to_colmap(splats: dict[str, torch.Tensor], T: np.ndarray) -> dict[str, torch.Tensor]:
    """Raw Gaussian parameters of a simple_trainer checkpoint (``means, scales`` (log), ``quats``
    (wxyz, raw), ``opacities`` (logit), ``sh0 [N,1,3]``, ``shN [N,K-1,3]``: the names and
    activations of :class:`scene.gaussian_model.GaussianModel`) mapped from gsplat's frame
    ``x_g = T x`` back to the COLMAP frame (centres, covariances and SH colours)."""
    from utils.geometry import transform_gaussians

    T = np.asarray(T, dtype=np.float64)
    Ti = np.linalg.inv(T)
    params = {k: splats[k].detach().float().cpu() for k in ("means", "scales", "quats", "opacities", "sh0", "shN")}
    with torch.no_grad():
        return transform_gaussians(params, Ti[:3, :3], Ti[:3, 3], rotate_sh=True, path="similarity")


def gsplat_checkpoint_to_ply(ckpt_path: str, T: np.ndarray, ply_path: str) -> int:
    """Convert a simple_trainer checkpoint to a 3DGS PLY in the COLMAP frame; returns the count."""
    from scene.gaussian_model import GaussianModel, sh_degree_from_bases

    try:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        splats = ck["splats"]
    except Exception as exc:
        raise InputError(ckpt_path, f"not a readable gsplat checkpoint ({type(exc).__name__}: {exc})") from None
    params = gsplat_to_colmap(splats, T)
    model = GaussianModel(sh_degree_from_bases(params["shN"].shape[1] + 1), params)
    model.save_ply(ply_path)
    return len(model)


# -- one evaluation for every trainer -----------------------------------------------------------
def evaluate_ply(ply: str, scene_dir: str, device: torch.device, split: str = "split.yml", lpips_net: str = "vgg",
                 backend: str = "auto") -> dict:
    """PSNR / SSIM / LPIPS (None without its weights) of the Gaussians in ``ply`` over the test
    views of ``scene_dir`` (black background, the classic rasterizer all three trainers use): the
    means, each view's figures (``per_view``: name, psnr, ssim, lpips) and the number of Gaussians
    (``gaussians``)."""
    from gaussian_renderer import render
    from scene.dataset import load_scene
    from scene.gaussian_model import GaussianModel
    from utils.metrics import load_lpips, psnr, ssim_metric
    from utils.training import load_views

    scene = load_scene(scene_dir, "images", 1, True, split)
    model = GaussianModel.from_ply(ply).to(device)
    views = load_views(scene.test_cameras, device, quiet=True)
    bg = torch.zeros(3, device=device)
    lp = load_lpips(lpips_net, device)
    rows = []
    with torch.no_grad():
        for v in views:
            img = render(v.camera, model, bg, backend=backend).image.clamp(0, 1)
            gt = v.target(bg)
            rows.append({"name": v.camera.image_name, "psnr": psnr(img, gt), "ssim": ssim_metric(img, gt), "lpips": lp(img, gt) if lp else None})
    mean = lambda k: None if any(r[k] is None for r in rows) else float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {"views": len(rows), "gaussians": len(model), "psnr": mean("psnr"), "ssim": mean("ssim"), "lpips": mean("lpips"),
            "lpips_net": lpips_net if lp else None, "per_view": rows}


# -- the report --------------------------------------------------------------------------------
def _fmt(x, spec: str, none: str = "–") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _mean_std(values: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) != len(values) or not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _fmt_ms(values: Sequence[Optional[float]], spec: str) -> str:
    """``mean`` for one run, ``mean ± sample std`` for several (– when any value is missing)."""
    m, sd = _mean_std(values)
    return _fmt(m, spec) + ("" if sd is None else " ± " + _fmt(sd, spec))


def group_runs(records: Sequence[TrainerRecord]) -> dict[str, list[TrainerRecord]]:
    """Records by trainer, in the order the trainers first appear."""
    groups: dict[str, list[TrainerRecord]] = {}
    for r in records:
        groups.setdefault(r.trainer, []).append(r)
    return groups


def speed_ratio(base: Sequence[TrainerRecord], runs: Sequence[TrainerRecord]) -> Optional[float]:
    """Mean time of ``base`` over mean time of ``runs``: training-loop times when every run has one,
    otherwise wall times for both sides (a loop time is never set against a wall time)."""
    key = "train_s" if all(r.train_s for r in (*base, *runs)) else "wall_s"
    tb, tr = (float(np.mean([getattr(r, key) for r in rs])) for rs in (base, runs))
    return tb / tr if tr > 0 else None


def markdown_table(records: Sequence[TrainerRecord], baseline: str = "gsplat") -> str:
    """One row per trainer; several runs of a trainer (``train --repeats``) give ``mean ± std``
    (sample standard deviation) of the timings and metrics, the largest memory peak and the mean
    Gaussian count. Speed ratios are of mean times relative to ``baseline`` (:func:`speed_ratio`)."""
    groups = group_runs(records)
    head = ("| trainer | runs | iterations | training loop (s) | wall (s) | it/s | speed vs " + baseline + " | peak GPU MiB (nvidia-smi) "
            "| peak GPU MiB (allocated) | Gaussians | test PSNR | test SSIM | test LPIPS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for t, rs in groups.items():
        ratio = speed_ratio(groups[baseline], rs) if baseline in groups else None
        polled = [r.peak_gpu_mib_polled for r in rs if r.peak_gpu_mib_polled is not None]
        own = [r.peak_gpu_mib_own for r in rs if r.peak_gpu_mib_own is not None]
        lines.append("| " + " | ".join([
            t, str(len(rs)), "/".join(sorted({str(r.iterations) for r in rs})), _fmt_ms([r.train_s for r in rs], ".1f"),
            _fmt_ms([r.wall_s for r in rs], ".1f"), _fmt_ms([r.it_per_s for r in rs], ".1f"),
            _fmt(ratio, ".2f") + ("×" if ratio is not None else ""), _fmt(max(polled) if polled else None, "d"),
            _fmt(max(own) if own else None, ".0f"), f"{round(float(np.mean([r.num_gaussians for r in rs]))):,}",
            _fmt_ms([r.eval.get("psnr") for r in rs], ".2f"), _fmt_ms([r.eval.get("ssim") for r in rs], ".4f"),
            _fmt_ms([r.eval.get("lpips") for r in rs], ".4f"),
        ]) + " |")
    return "\n".join(lines)


def runs_table(records: Sequence[TrainerRecord]) -> str:
    """Every run on its own row (with the test view it scored worst on), for the spread behind
    :func:`markdown_table`'s means."""
    head = "| trainer | run | training loop (s) | it/s | Gaussians | test PSNR | test SSIM | worst test view (PSNR) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for t, rs in group_runs(records).items():
        for i, r in enumerate(rs, 1):
            views = r.eval.get("per_view") or []
            worst = min(views, key=lambda v: v["psnr"]) if views else None
            lines.append("| " + " | ".join([
                t, str(i), _fmt(r.train_s or r.wall_s, ".1f"), _fmt(r.it_per_s, ".1f"), f"{r.num_gaussians:,}",
                _fmt(r.eval.get("psnr"), ".2f"), _fmt(r.eval.get("ssim"), ".4f"),
                f"{worst['name']} ({worst['psnr']:.2f})" if worst else "–",
            ]) + " |")
    return "\n".join(lines)


def replace_section(doc: str, key: str, body: str) -> str:
    """Put ``body`` between ``<!-- benchmark:key:begin -->`` and ``<!-- benchmark:key:end -->``
    (appended at the end when the markers are absent); the rest of ``doc`` is kept."""
    begin, end = f"<!-- benchmark:{key}:begin -->", f"<!-- benchmark:{key}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    i, j = doc.find(begin), doc.find(end)
    if i >= 0 and j > i:
        return doc[:i] + block + doc[j + len(end):]
    if i >= 0 or j >= 0:
        raise ValueError(f"unbalanced benchmark markers for {key!r}")
    return doc.rstrip() + "\n\n" + block + "\n"


def report_section(records: Sequence[TrainerRecord], scene_info: dict, command: str, machine: str, baseline: str = "gsplat") -> str:
    order = {t: i for i, t in enumerate(TRAINERS)}
    records = sorted(records, key=lambda r: order.get(r.trainer, len(order)))
    info = ", ".join(f"{k} {v}" for k, v in scene_info.items() if k in ("width", "height", "train", "test", "points"))
    notes = list(dict.fromkeys(f"- {r.trainer}: {r.notes}" for r in records if r.notes))  # once per trainer
    own = [f"- {r.trainer} own test figures: " + ", ".join(f"{k} {_fmt(v, '.4f') if isinstance(v, float) else v}" for k, v in r.own_eval.items())
           for r in records if r.own_eval]
    groups = group_runs(records)
    if baseline in groups and any(not r.train_s for r in records):
        notes.insert(0, f"- speed vs {baseline}: wall times (not every trainer has a training-loop timer)")
    parts = [f"Scene: {info}. Machine: {machine}.", "", "```bash", command, "```", "", markdown_table(records, baseline)]
    if any(len(rs) > 1 for rs in groups.values()):
        parts += ["", "Each run (same command, same seed: the spread is the GPU's nondeterminism, e.g. the order of "
                  "the rasterizers' atomic gradient sums, carried through densification):", "", runs_table(records)]
    if notes or own:
        parts += [""] + notes + own
    return "\n".join(parts)


__all__ = [
    "TRAINERS", "GpuMemoryPoller", "TrainerRecord", "prepare_scene", "run_command", "ours_command", "gsplat_command",
    "inria_command", "gsplat_world_transform", "gsplat_to_colmap", "gsplat_checkpoint_to_ply", "evaluate_ply",
    "group_runs", "speed_ratio", "markdown_table", "runs_table", "replace_section", "report_section",
]
