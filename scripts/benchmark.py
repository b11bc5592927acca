#!/usr/bin/env python
"""Train one scene with our train_3dgs.py, gsplat's simple_trainer.py and INRIA's train.py, side by
side, and score every result with one evaluation (utils/benchmark.py explains the method).

    # everything: prepare the scene, train with each trainer, update docs/performance.md
    python scripts/benchmark.py all --source fox -r 2 --out bench/fox --key fox \\
        --gsplat_examples ~/gsplat/examples --inria_dir ~/gaussian-splatting

    # or step by step (e.g. one trainer per job on a machine with a time limit)
    python scripts/benchmark.py prepare --source fox -r 2 --scene bench/fox/scene
    python scripts/benchmark.py train --scene bench/fox/scene --out bench/fox --trainers gsplat --gsplat_examples DIR
    python scripts/benchmark.py train --scene bench/fox/scene --out bench/fox --trainers ours
    python scripts/benchmark.py report --records bench/fox --key fox --doc docs/performance.md

The reference trainers are not part of this repository: point --gsplat_examples at the
``examples/`` folder of a gsplat checkout (with its requirements installed) and --inria_dir at a
built graphdeco-inria/gaussian-splatting checkout. Each trainer writes
OUT/<trainer>/benchmark_record.json; ``report`` turns the records into a table in the document
(between ``<!-- benchmark:KEY:begin/end -->`` markers; the rest of the document is kept).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.cli import run_main, setup_logging  # noqa: E402
from utils.errors import InputError  # noqa: E402


def add_prepare_args(p: argparse.ArgumentParser, scene_flag: bool = True) -> None:
    p.add_argument("--source", required=True, help="converted COLMAP scene folder (undistorted cameras, images/, sparse/)")
    p.add_argument("-r", "--resolution", type=int, default=1, choices=[1, 2, 4, 8], help="downscale factor of the benchmark copy")
    p.add_argument("--images", default="images", help="image folder of --source")
    p.add_argument("--test_every", type=int, default=8, help="every N-th view (name order) is a test view, as gsplat's test_every and INRIA's --eval")
    p.add_argument("--jpeg_quality", type=int, default=95, help="quality of resampled JPEG images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared scene")
    if scene_flag:
        p.add_argument("--scene", required=True, help="folder to write the prepared scene to")


def add_train_args(p: argparse.ArgumentParser, scene_flag: bool = True) -> None:
    if scene_flag:
        p.add_argument("--scene", required=True, help="a scene written by `prepare`")
    p.add_argument("--out", required=True, help="results folder (one sub-folder per trainer)")
    p.add_argument("--trainers", default="ours,gsplat,inria", help="comma-separated subset of ours,gsplat,inria")
    p.add_argument("--iterations", type=int, default=30_000, help="training iterations of every trainer")
    p.add_argument("--gsplat_examples", default="", help="gsplat's examples/ folder (simple_trainer.py)")
    p.add_argument("--inria_dir", default="", help="graphdeco-inria/gaussian-splatting checkout (train.py)")
    p.add_argument("--ours_args", default="", help="extra options for train_3dgs.py (one shell-quoted string)")
    p.add_argument("--gsplat_args", default="", help="extra options for simple_trainer.py")
    p.add_argument("--inria_args", default="", help="extra options for INRIA's train.py")
    p.add_argument("--lpips_net", default="vgg", choices=["vgg", "alex"], help="LPIPS backbone of the shared evaluation (skipped without its weights)")
    p.add_argument("--gpu", type=int, default=0, help="GPU index every trainer runs on")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each trainer (interleaved: ours, gsplat, inria, ours, ...); with more than one, run k "
                        "writes OUT/<trainer>/run<k>/ and the report gives mean ± std")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quiet", action="store_true", help="warnings only")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_prepare_args(sub.add_parser("prepare", help="write the benchmark copy of a scene"))
    add_train_args(sub.add_parser("train", help="train and evaluate with some trainers"))
    r = sub.add_parser("report", help="write the records as a table into the document")
    add_report_args(r)
    pr = sub.add_parser("profile", help="profile our training loop (torch profiler) over chosen step windows")
    pr.add_argument("--scene", required=True, help="a scene written by `prepare` (or any scene with split.yml)")
    pr.add_argument("--out", required=True, help="folder for the tables and traces")
    pr.add_argument("--windows", type=int, nargs="+", default=[1000, 20000], help="first step of each profiled window")
    pr.add_argument("--active", type=int, default=50, help="steps profiled per window")
    pr.add_argument("--ours_args", default="", help="extra options for train_3dgs.py (one shell-quoted string)")
    pr.add_argument("--row_limit", type=int, default=40, help="operators listed per table")
    a = sub.add_parser("all", help="prepare, train every trainer, report")
    add_prepare_args(a, scene_flag=False)
    add_train_args(a, scene_flag=False)
    a.add_argument("--key", required=True, help="name of the table in the document (e.g. fox)")
    a.add_argument("--doc", default=os.path.join(ROOT, "docs", "performance.md"), help="document to update")
    a.add_argument("--baseline", default="gsplat", help="trainer the speed ratios are relative to")
    return p


def add_report_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--records", nargs="+", required=True, help="results folders (or record files) of `train`")
    r.add_argument("--key", required=True, help="name of the table in the document (e.g. fox)")
    r.add_argument("--doc", default=os.path.join(ROOT, "docs", "performance.md"), help="document to update")
    r.add_argument("--command", default="", help="the command line shown above the table (default: this benchmark's)")
    r.add_argument("--baseline", default="gsplat", help="trainer the speed ratios are relative to")


def parse_trainers(text: str) -> list[str]:
    from utils.benchmark import TRAINERS

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRAINERS]
    if bad or not names:
        raise SystemExit(f"error: --trainers must name some of {', '.join(TRAINERS)}, got {text!r}")
    return names


def run_dir(out: str, name: str, run: int, repeats: int) -> str:
    """Results folder of one run: OUT/<trainer> for a single run, OUT/<trainer>/run<k> for repeats."""
    return os.path.join(out, name) if repeats == 1 else os.path.join(out, name, f"run{run}")


def train_one(name: str, args, scene_info: dict, out: str) -> None:
    """Run one trainer on args.scene, evaluate its result, write its record into ``out``."""
    import torch

    from utils import benchmark as bm
    from utils.io import read_json

    out = os.path.abspath(out)
    os.makedirs(out, exist_ok=True)
    scene = os.path.abspath(args.scene)
    n = args.iterations
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(args.gpu), "PYTHONUNBUFFERED": "1"}
    if name != "ours":  # their own `utils`, `scene`, ... packages must not meet ours on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                            if p and os.path.realpath(p) != os.path.realpath(ROOT))
    logp = os.path.join(out, "train.log")
    own_eval, notes, own_mem, train_s = {}, "", None, None
    if name == "ours":
        cmd = bm.ours_command(scene, os.path.join(out, "model"), n, shlex.split(args.ours_args))
        run = bm.run_command(cmd, logp, cwd=ROOT, env=env, gpu=args.gpu)
        s = read_json(os.path.join(out, "model", "train_summary.json"))
        train_s = s["seconds"]
        own_mem = s["peak_gpu_memory_bytes"] / 2**20 if s.get("peak_gpu_memory_bytes") else None
        ply = os.path.join(out, "model", "point_cloud", f"iteration_{n}", "point_cloud.ply")
    elif name == "gsplat":
        if not args.gsplat_examples:
            raise SystemExit("error: --gsplat_examples is required for the gsplat trainer")
        ex = os.path.abspath(args.gsplat_examples)
        if not os.path.isfile(os.path.join(ex, "simple_trainer.py")):
            raise InputError(ex, "simple_trainer.py not found (give gsplat's examples/ folder)")
        res = os.path.join(out, "result")
        cmd = bm.gsplat_command(ex, scene, res, n, scene_info.get("test_every", 8), shlex.split(args.gsplat_args))
        run = bm.run_command(cmd, logp, cwd=ex, env=env, gpu=args.gpu)
        st = read_json(os.path.join(res, "stats", f"train_step{n - 1:04d}_rank0.json"))
        train_s, own_mem = st["ellipse_time"], st["mem"] * 1024
        val = os.path.join(res, "stats", f"val_step{n - 1:04d}.json")
        if os.path.isfile(val):
            own_eval = {k: v for k, v in read_json(val).items() if k in ("psnr", "ssim", "lpips")}
        ply = os.path.join(out, "point_cloud.ply")
        T = bm.gsplat_world_transform(ex, scene, scene_info.get("test_every", 8))
        bm.gsplat_checkpoint_to_ply(os.path.join(res, "ckpts", f"ckpt_{n - 1}_rank0.pt"), T, ply)
        notes = "training-loop time = simple_trainer's own ellipse_time at the last step (excludes its final evaluation)"
    else:
        if not args.inria_dir:
            raise SystemExit("error: --inria_dir is required for the inria trainer")
        d = os.path.abspath(args.inria_dir)
        if not os.path.isfile(os.path.join(d, "train.py")):
            raise InputError(d, "train.py not found (give a gaussian-splatting checkout)")
        cmd = bm.inria_command(d, scene, os.path.join(out, "model"), n, shlex.split(args.inria_args))
        run = bm.run_command(cmd, logp, cwd=d, env=env, gpu=args.gpu)
        ply = os.path.join(out, "model", "point_cloud", f"iteration_{n}", "point_cloud.ply")
        with open(logp, errors="replace") as f:
            m = re.findall(r"\[ITER (\d+)\] Evaluating test: L1 ([0-9.eE+-]+) PSNR ([0-9.eE+-]+)", f.read())
        if m:
            own_eval = {"psnr": float(m[-1][2]), "l1": float(m[-1][1])}
        notes = "no training-loop timer of its own: wall time of the command (includes loading and its one test evaluation)"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ev = bm.evaluate_ply(ply, scene, device, lpips_net=args.lpips_net)
    num_gaussians = ev.pop("gaussians")
    rec = bm.TrainerRecord(
        trainer=name, scene=scene, iterations=n, command=cmd, wall_s=round(run["wall_s"], 2),
        train_s=None if train_s is None else round(float(train_s), 2), peak_gpu_mib_polled=run["peak_gpu_mib_polled"],
        peak_gpu_mib_own=own_mem, num_gaussians=num_gaussians, ply=ply, eval=ev, own_eval=own_eval,
        machine=bm.machine_description(), scene_info=scene_info, notes=notes,
    )
    rec.save(os.path.join(out, bm.RECORD_NAME))
    print(f"{name}: {rec.train_s or rec.wall_s:.1f} s ({rec.it_per_s:.1f} it/s), {rec.num_gaussians:,} Gaussians, "
          f"test PSNR {ev['psnr']:.2f} SSIM {ev['ssim']:.4f} over {ev['views']} views")


def cmd_train(args) -> None:
    import torch

    from utils import benchmark as bm
    from utils.io import read_json

    names = parse_trainers(args.trainers)
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats must be at least 1, got {args.repeats}")
    info_path = os.path.join(args.scene, "benchmark_scene.json")
    if not os.path.isfile(info_path):
        raise InputError(args.scene, "not a prepared benchmark scene (benchmark_scene.json missing): run `prepare` first")
    scene_info = read_json(info_path)
    if torch.cuda.is_available():
        print(f"gsplat kernels ready in {bm.warm_up_gsplat(torch.device('cuda', 0)):.1f} s (built before any trainer is timed)")
    for run in range(1, args.repeats + 1):
        for name in names:
            train_one(name, args, scene_info, run_dir(args.out, name, run, args.repeats))


def cmd_profile(args) -> None:
    """Train with train_3dgs.py's options up to the last window and profile each window's steps
    (CPU + CUDA activity): OUT/profile_step<k>.txt (operators by device time) and
    OUT/trace_step<k>.json.gz (chrome://tracing / Perfetto)."""
    import gzip
    import shutil
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    import train_3dgs
    from scene.dataset import load_scene
    from utils.arguments import ModelParams, OptimizationParams, PipelineParams, device_from, extract
    from utils.cli import default_cuda_allocator
    from utils.training import load_scene_views, train

    default_cuda_allocator()  # as train_3dgs.py does
    windows = sorted(set(args.windows))
    if not windows or windows[0] < 1 or args.active < 1:
        raise SystemExit("error: --windows must be positive steps and --active >= 1")
    last = windows[-1] + args.active
    os.makedirs(args.out, exist_ok=True)
    targs = train_3dgs.build_parser().parse_args(
        ["-s", args.scene, "-m", os.path.join(args.out, "model"), "-r", "1", "--eval", "--split_yml_name", "split.yml",
         "--iterations", str(last), "--test_iterations", "-1", "--save_iterations", str(last), "--quiet", *shlex.split(args.ours_args)])
    mp, op, pp = extract(targs, ModelParams), extract(targs, OptimizationParams), extract(targs, PipelineParams)
    device = device_from(mp.device)
    scene = load_scene(mp.source_path, mp.images, mp.resolution, mp.eval, mp.split_yml_name)
    views = load_scene_views(scene, mp, op, device, True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    state = {"prof": None, "t0": 0.0}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def callback(step: int) -> None:
        if step + 1 in windows:  # the next step opens a window
            sync()
            state["prof"] = profile(activities=acts, record_shapes=False)
            state["prof"].start()
            state["t0"] = time.perf_counter()
        elif state["prof"] is not None and step + 1 - args.active in windows:
            sync()
            ms = (time.perf_counter() - state["t0"]) / args.active * 1000
            prof, state["prof"] = state["prof"], None
            prof.stop()
            first = step + 1 - args.active
            key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=key, row_limit=args.row_limit)
            with open(os.path.join(args.out, f"profile_step{first}.txt"), "w") as f:
                f.write(f"steps {first}..{step}: {ms:.2f} ms/step under the profiler\n{table}\n")
            trace = os.path.join(args.out, f"trace_step{first}.json")
            prof.export_chrome_trace(trace)
            with open(trace, "rb") as fi, gzip.open(trace + ".gz", "wb") as fo:
                shutil.copyfileobj(fi, fo)
            os.remove(trace)
            print(f"profiled steps {first}..{step}: {ms:.2f} ms/step -> {args.out}/profile_step{first}.txt")

    result = train(scene, mp.model_path, mp, op, pp, device, [], [last], views=views, quiet=True, step_callback=callback)
    print(f"trained {last} steps in {result.seconds:.1f} s, {len(result.model):,} Gaussians")


def cmd_prepare(args) -> dict:
    from utils.benchmark import prepare_scene
    from utils.io import write_json

    info = prepare_scene(args.source, args.scene, args.resolution, args.images, args.test_every, args.jpeg_quality, args.overwrite)
    write_json(os.path.join(args.scene, "benchmark_scene.json"), info)
    print(f"prepared {args.scene}: {info['views']} views at {info['width']}x{info['height']}, {info['train']} train / {info['test']} test")
    return info


def find_records(paths: list[str]) -> list[str]:
    from utils.benchmark import RECORD_NAME

    found = []
    for p in paths:
        if os.path.isfile(p):
            found.append(p)
        elif os.path.isdir(p):
            found += sorted(glob.glob(os.path.join(p, "*", RECORD_NAME)) + glob.glob(os.path.join(p, "*", "run*", RECORD_NAME)),
                            key=run_order)
        else:
            raise InputError(p, "no such file or folder")
    if not found:
        raise InputError(paths[0], f"no {RECORD_NAME} found")
    return found


def run_order(path: str) -> tuple:
    """Sort key of a record path: trainer folder, then run number (run10 after run9)."""
    m = re.search(r"run(\d+)$", os.path.dirname(path))
    trainer_dir = os.path.dirname(os.path.dirname(path)) if m else os.path.dirname(path)
    return (trainer_dir, int(m.group(1)) if m else 0)


def cmd_report(args) -> None:
    from utils import benchmark as bm
    from utils.io import atomic_path

    records = [bm.TrainerRecord.load(p) for p in find_records(args.records)]
    scenes = {json_key(r.scene_info) for r in records}
    if len(scenes) > 1:
        raise SystemExit("error: the records come from different scenes; report one scene per table")
    iters = {r.iterations for r in records}
    if len(iters) > 1:
        raise SystemExit(f"error: the records have different iteration counts {sorted(iters)}")
    command = args.command or default_command(records[0])
    machine = "; ".join(sorted({r.machine for r in records}))
    doc = "# Performance\n"
    if os.path.isfile(args.doc):
        with open(args.doc) as f:
            doc = f.read()
    doc = bm.replace_section(doc, args.key, bm.report_section(records, records[0].scene_info, command, machine, args.baseline))
    with atomic_path(args.doc) as tmp, open(tmp, "w") as f:
        f.write(doc)
    print(bm.markdown_table(records, args.baseline))
    print(f"table {args.key!r} written to {args.doc}")


def json_key(d: dict) -> str:
    import json

    return json.dumps({k: d.get(k) for k in ("source", "resolution", "views", "test_every")}, sort_keys=True)


def default_command(rec) -> str:
    info = rec.scene_info
    return (f"python scripts/benchmark.py all --source {info.get('source', 'SCENE')} -r {info.get('resolution', 1)} "
            f"--iterations {rec.iterations} --out OUT --key KEY --gsplat_examples GSPLAT/examples --inria_dir GAUSSIAN_SPLATTING")


def main() -> None:
    args = build_parser().parse_args()
    setup_logging(args.quiet)
    if args.cmd == "prepare":
        cmd_prepare(args)
    elif args.cmd == "train":
        cmd_train(args)
    elif args.cmd == "report":
        cmd_report(args)
    elif args.cmd == "profile":
        cmd_profile(args)
    else:
        args.scene = os.path.join(args.out, "scene")
        cmd_prepare(args)
        cmd_train(args)
        args.records, args.command = [args.out], " ".join(shlex.quote(a) for a in ["python", "scripts/benchmark.py", *sys.argv[1:]])
        cmd_report(args)


if __name__ == "__main__":
    run_main(main)
