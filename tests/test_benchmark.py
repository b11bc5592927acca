"""scripts/benchmark.py and utils/benchmark.py on the CPU: scene preparation, gsplat's frame
conversion against a known similarity, the report, and the script end to end with our trainer."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from utils import benchmark as bm
from utils.errors import InputError
from utils.geometry import gaussian_covariances, random_rotation, transform_gaussians

from tests.script_runner import run
from tests.test_scripts import make_first_camera_opencv


@pytest.fixture(scope="module")
def prepared(tiny_scene, tmp_path_factory):
    dst = tmp_path_factory.mktemp("prep") / "S"
    info = bm.prepare_scene(str(tiny_scene), str(dst), resolution=2)
    return dst, info


def test_prepare_matches_our_loader_at_r2(tiny_scene, prepared):
    """The copy at -r 1 is what our loader makes of the source at -r 2: same cameras, same pixels."""
    from scene.dataset import load_scene
    from utils.images import load_rgba

    dst, info = prepared
    assert (info["views"], info["width"], info["height"]) == (12, 32, 24)
    assert os.path.isfile(dst / "sparse" / "0" / "cameras.bin") and os.path.isfile(dst / "sparse" / "0" / "points3D.bin")
    a = load_scene(str(tiny_scene), "images", 2, False)
    b = load_scene(str(dst), "images", 1, False)
    assert [c.image_name for c in a.train_cameras] == [c.image_name for c in b.train_cameras]
    for ca, cb in zip(a.train_cameras, b.train_cameras):
        assert np.allclose(ca.K(), cb.K()) and np.allclose(ca.w2c(), cb.w2c()) and (ca.width, ca.height) == (cb.width, cb.height)
    for cam in a.train_cameras[:3]:
        ra, _ = load_rgba(cam.image_path, (cam.width, cam.height))
        rb, _ = load_rgba(str(dst / "images" / os.path.basename(cam.image_path)))
        assert float((ra - rb).abs().max()) <= 0.5 / 255  # bicubic like the loader, then 8 bits
    assert np.allclose(a.points_xyz, b.points_xyz)


def test_prepare_split_is_every_eighth_by_name(prepared):
    import yaml

    dst, info = prepared
    split = yaml.safe_load(open(dst / "split.yml"))
    stems = sorted(split["train"] + split["test"])
    assert split["test"] == [stems[i] for i in range(0, len(stems), 8)]
    assert (info["train"], info["test"]) == (10, 2)


def test_prepare_refuses_distorted_cameras_and_existing_output(tiny_scene, tmp_path):
    import shutil

    D = tmp_path / "D"
    shutil.copytree(tiny_scene, D)
    make_first_camera_opencv(D)
    with pytest.raises(InputError, match="OPENCV"):
        bm.prepare_scene(str(D), str(tmp_path / "out"), 2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match="overwrite"):
        bm.prepare_scene(str(tiny_scene), str(tmp_path / "full"), 2)
    # a bad source does not cost an existing copy, even with overwrite
    E = tmp_path / "E"
    shutil.copytree(tiny_scene, E)
    os.remove(E / "images" / sorted(os.listdir(E / "images"))[3])
    with pytest.raises(InputError, match="missing"):
        bm.prepare_scene(str(E), str(tmp_path / "full"), 2, overwrite=True)
    assert os.listdir(tmp_path / "full") == ["x"]
    # ... nor does an image whose header reads but whose pixels do not (found while writing)
    F = tmp_path / "F"
    shutil.copytree(tiny_scene, F)
    bad = F / "images" / sorted(os.listdir(F / "images"))[5]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a readable image"):
        bm.prepare_scene(str(F), str(tmp_path / "full"), 2, overwrite=True)
    assert os.listdir(tmp_path / "full") == ["x"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".full.")]  # no temporary copy left behind


def _random_params(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": torch.randn(n, 3, generator=g, dtype=torch.float64),
        "scales": torch.randn(n, 3, generator=g, dtype=torch.float64) * 0.3 - 2.5,
        "quats": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "opacities": torch.randn(n, generator=g, dtype=torch.float64),
        "sh0": torch.randn(n, 1, 3, generator=g, dtype=torch.float64),
        "shN": torch.randn(n, 15, 3, generator=g, dtype=torch.float64) * 0.3,
    }


def _similarity(seed: int = 1, s: float = 0.37) -> np.ndarray:
    R = random_rotation(generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = [0.4, -1.2, 2.0]
    return T


def test_gsplat_to_colmap_recovers_a_known_similarity():
    from utils.sh import eval_sh

    p = _random_params(200)
    T = _similarity()
    in_gsplat = transform_gaussians(p, T[:3, :3], T[:3, 3])  # what simple_trainer would have trained
    back = {k: v.double() for k, v in bm.gsplat_to_colmap(in_gsplat, T).items()}
    assert torch.allclose(back["means"], p["means"], atol=1e-5)
    assert torch.allclose(gaussian_covariances(back), gaussian_covariances(p), rtol=1e-4, atol=1e-8)
    assert torch.allclose(back["opacities"], p["opacities"], atol=1e-6)
    dirs = torch.randn(200, 3, dtype=torch.float64)
    sh = lambda q: torch.cat([q["sh0"], q["shN"]], 1)  # noqa: E731
    assert torch.allclose(eval_sh(3, sh(back), dirs), eval_sh(3, sh(p), dirs), atol=1e-4)


def test_gsplat_frame_render_equals_colmap_frame_render():
    """Rendering the gsplat-frame model with the gsplat-frame camera equals rendering the
    converted model with the COLMAP camera (colour and alpha)."""
    from gaussian_renderer import render
    from scene.cameras import Camera
    from scene.gaussian_model import GaussianModel

    p = {k: v.float() for k, v in _random_params(300, seed=3).items()}
    p["means"] = p["means"] * 0.5
    p["scales"] = p["scales"] - 0.5
    T = _similarity(seed=4, s=2.5)
    s = 2.5
    W_o = np.eye(4)
    W_o[:3, 3] = [0.0, 0.0, 4.0]
    W_g = np.diag([s, s, s, 1.0]) @ W_o @ np.linalg.inv(T)
    g_model = GaussianModel(3, transform_gaussians(p, T[:3, :3], T[:3, 3]))
    c_model = GaussianModel(3, bm.gsplat_to_colmap(g_model.params, T))
    cam = lambda W: Camera(W[:3, :3], W[:3, 3], 40.0, 40.0, 24.0, 16.0, 48, 32, image_name="v")  # noqa: E731
    with torch.no_grad():
        a = render(cam(W_g), g_model, backend="torch", near_plane=0.01 * s)
        b = render(cam(W_o), c_model, backend="torch")
    assert float(a.alpha.max()) > 0.3
    assert float((a.image - b.image).abs().max()) < 2e-3 and float((a.alpha - b.alpha).abs().max()) < 2e-3


def test_gsplat_checkpoint_to_ply(tmp_path):
    from scene.gaussian_model import GaussianModel

    p = {k: v.float() for k, v in _random_params(50).items()}
    T = _similarity()
    ck = tmp_path / "ckpt_9_rank0.pt"
    torch.save({"step": 9, "splats": transform_gaussians(p, T[:3, :3], T[:3, 3])}, ck)
    n = bm.gsplat_checkpoint_to_ply(str(ck), T, str(tmp_path / "pc.ply"))
    m = GaussianModel.from_ply(str(tmp_path / "pc.ply"))
    assert n == len(m) == 50 and m.max_sh_degree == 3
    assert torch.allclose(m.params["means"].detach(), p["means"], atol=1e-4)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="gsplat checkpoint"):
        bm.gsplat_checkpoint_to_ply(str(tmp_path / "bad.pt"), T, str(tmp_path / "x.ply"))


def test_gsplat_world_transform_runs_the_examples_parser(tmp_path):
    """The transform comes from the examples' own Parser (a stand-in here), imported in isolation
    from any other package named ``datasets``."""
    ex = tmp_path / "examples"
    (ex / "datasets").mkdir(parents=True)
    (ex / "datasets" / "__init__.py").write_text("")
    (ex / "datasets" / "colmap.py").write_text(
        "import numpy as np\n"
        "class Parser:\n"
        "    def __init__(self, data_dir, factor, normalize, test_every):\n"
        "        assert factor == 1 and normalize and test_every == 8\n"
        "        self.transform = np.diag([2.0, 2.0, 2.0, 1.0])\n"
        "        self.transform[:3, 3] = [1, 2, 3]\n")
    before = sys.modules.get("datasets")
    T = bm.gsplat_world_transform(str(ex), str(tmp_path), 8)
    assert np.allclose(T[:3, 3], [1, 2, 3]) and T[0, 0] == 2.0
    assert sys.modules.get("datasets") is before
    with pytest.raises(InputError, match="examples"):
        bm.gsplat_world_transform(str(tmp_path / "nowhere"), str(tmp_path), 8)


def _record(trainer: str, train_s: float, psnr: float) -> bm.TrainerRecord:
    return bm.TrainerRecord(trainer=trainer, scene="S", iterations=30000, command=["x"], wall_s=train_s + 10, train_s=train_s,
                            peak_gpu_mib_polled=1000, peak_gpu_mib_own=700.0, num_gaussians=123456, ply="p.ply",
                            eval={"psnr": psnr, "ssim": 0.9, "lpips": None, "views": 7}, machine="M", scene_info={"width": 8})


def test_report_table_and_document_sections(tmp_path):
    recs = [_record("ours", 200.0, 30.9), _record("gsplat", 300.0, 30.6)]
    table = bm.markdown_table(recs)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "1.50×" in rows["ours"] and "1.00×" in rows["gsplat"] and "123,456" in rows["ours"] and "30.90" in rows["ours"]
    assert "150.0" in rows["ours"]  # it/s = 30000 / 200 s
    doc = "# Perf\n\nintro\n"
    doc = bm.replace_section(doc, "fox", "first")
    doc = bm.replace_section(doc + "\n## after\n", "fox", "second")
    assert doc.count("benchmark:fox:begin") == 1 and "second" in doc and "first" not in doc and doc.rstrip().endswith("## after")
    with pytest.raises(ValueError, match="unbalanced"):
        bm.replace_section("<!-- benchmark:fox:begin -->", "fox", "x")
    rec_path = tmp_path / "r.json"
    recs[0].save(str(rec_path))
    assert bm.TrainerRecord.load(str(rec_path)) == recs[0]
    rec_path.write_text(json.dumps({"trainer": "ours"}))
    with pytest.raises(InputError, match="benchmark record"):
        bm.TrainerRecord.load(str(rec_path))


def test_script_end_to_end_with_our_trainer(tiny_scene, tmp_path):
    S, out, doc = tmp_path / "S", tmp_path / "out", tmp_path / "perf.md"
    run("scripts/benchmark.py", "prepare", "--source", str(tiny_scene), "-r", "2", "--scene", str(S))
    run("scripts/benchmark.py", "train", "--scene", str(S), "--out", str(out), "--trainers", "ours", "--iterations", "30", "--repeats", "2")
    for k in (1, 2):
        rec = json.load(open(out / "ours" / f"run{k}" / "benchmark_record.json"))
        assert rec["iterations"] == 30 and rec["train_s"] > 0 and rec["num_gaussians"] > 0 and rec["eval"]["views"] == 2
        assert 5 < rec["eval"]["psnr"] < 60 and 0 < rec["eval"]["ssim"] <= 1
        assert np.mean([v["psnr"] for v in rec["eval"]["per_view"]]) == pytest.approx(rec["eval"]["psnr"])
    doc.write_text("# Performance\n\nhand-written text\n")
    run("scripts/benchmark.py", "report", "--records", str(out), "--key", "tiny", "--doc", str(doc), "--command", "CMD")
    text = doc.read_text()
    assert "hand-written text" in text and "| ours | 2 | 30 |" in text and "CMD" in text and "Each run" in text
    # profile: the windows' tables and traces
    run("scripts/benchmark.py", "profile", "--scene", str(S), "--out", str(tmp_path / "prof"), "--windows", "2", "--active", "2")
    assert (tmp_path / "prof" / "profile_step2.txt").read_text().startswith("steps 2..3:")
    assert os.path.getsize(tmp_path / "prof" / "trace_step2.json.gz") > 0


def test_script_bad_input(tiny_scene, tmp_path):
    p = run("scripts/benchmark.py", "train", "--scene", str(tiny_scene), "--out", str(tmp_path / "o"), "--trainers", "ours,foo", check=False)
    assert p.returncode != 0 and "ours, gsplat, inria" in p.stderr
    p = run("scripts/benchmark.py", "train", "--scene", str(tiny_scene), "--out", str(tmp_path / "o"), "--repeats", "0", check=False)
    assert p.returncode != 0 and "--repeats" in p.stderr
    p = run("scripts/benchmark.py", "train", "--scene", str(tiny_scene), "--out", str(tmp_path / "o"), "--trainers", "ours", check=False)
    assert p.returncode != 0 and "prepare" in p.stderr.strip().splitlines()[-1]
    p = run("scripts/benchmark.py", "report", "--records", str(tmp_path / "none"), "--key", "k", "--doc", str(tmp_path / "d.md"), check=False)
    assert p.returncode != 0 and "none" in p.stderr and not (tmp_path / "d.md").exists()


def test_report_aggregates_repeated_runs(tmp_path):
    """Several runs of a trainer: mean ± sample std, ratio of mean loop times, every run listed."""
    recs = [_record("ours", 200.0, 30.0), _record("ours", 220.0, 31.0), _record("gsplat", 300.0, 30.6)]
    recs[0].eval["per_view"] = [{"name": "a.png", "psnr": 28.0, "ssim": 0.8, "lpips": None},
                                {"name": "b.png", "psnr": 32.0, "ssim": 0.9, "lpips": None}]
    rows = {line.split("|")[1].strip(): line for line in bm.markdown_table(recs).splitlines()[2:]}
    cells = [c.strip() for c in rows["ours"].split("|")[1:-1]]
    assert cells[1] == "2" and cells[3] == "210.0 ± 14.1" and cells[10] == "30.50 ± 0.71"
    assert cells[6] == f"{300 / 210:.2f}×"
    assert [c.strip() for c in rows["gsplat"].split("|")[1:-1]][3] == "300.0"  # one run: no ±
    runs = bm.runs_table(recs).splitlines()[2:]
    assert len(runs) == 3 and "a.png (28.00)" in runs[0] and runs[1].rstrip().endswith("– |")
    section = bm.report_section(recs, {"width": 8}, "cmd", "M")
    assert "Each run" in section and "| ours | 2 |" in section
    assert "Each run" not in bm.report_section([recs[0], recs[2]], {"width": 8}, "cmd", "M")


def test_find_records_orders_runs(tmp_path):
    from scripts.benchmark import find_records

    for d in ["ours/run1", "ours/run2", "ours/run10", "gsplat"]:
        (tmp_path / d).mkdir(parents=True)
        _record(d.split("/")[0], 1.0, 1.0).save(str(tmp_path / d / bm.RECORD_NAME))
    found = [os.path.relpath(p, tmp_path) for p in find_records([str(tmp_path)])]
    assert found == ["gsplat/" + bm.RECORD_NAME] + [f"ours/run{k}/{bm.RECORD_NAME}" for k in (1, 2, 10)]


def test_speed_ratio_never_sets_a_loop_time_against_a_wall_time():
    ours, inria = _record("ours", 200.0, 30.0), _record("inria", 400.0, 30.0)
    inria.train_s = None  # INRIA's train.py has no loop timer: wall 410 s
    assert bm.speed_ratio([inria], [ours]) == pytest.approx(410.0 / 210.0)  # walls, not 410 / 200
    assert bm.speed_ratio([ours], [_record("ours", 100.0, 30.0)]) == pytest.approx(2.0)  # loops when both have them
    section = bm.report_section([ours, inria], {"width": 8}, "cmd", "M", baseline="inria")
    assert "wall times" in section and f"{410 / 210:.2f}×" in section
