"""convert.py end to end on synthetic frames, and its refusals of bad input.

The frames are ray-cast views of the inside corner of a box (three textured orthogonal planes),
so the scene is truly 3D and SIFT finds plenty of features in the multi-scale noise texture.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np

from scene.cameras import look_at
from scene.colmap import pinhole_intrinsics, read_model
from scene.split import load_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEIGHT = 320, 240
FOCAL = 1.2 * WIDTH  # COLMAP's default prior for images without EXIF
BOX = 4.0  # the planes x=0, y=0, z=0 span [0, BOX]^2


def noise_texture(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """[size, size, 3] uint8 multi-scale value noise with one random tint."""
    t = np.zeros((size, size), np.float32)
    for res, weight in ((8, 1.0), (32, 1.0), (128, 0.7), (512, 0.3)):
        t += weight * cv2.resize(rng.random((res, res)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    t = (t - t.min()) / (t.max() - t.min())
    tint = (0.5 + 0.5 * rng.random(3)).astype(np.float32)
    return (255 * t[..., None] * tint).astype(np.uint8)


def render_box_corner(R: np.ndarray, t: np.ndarray, textures: list[np.ndarray]) -> np.ndarray:
    """[H, W, 3] uint8 view of the planes x=0, y=0, z=0 (each textured over [0, BOX]^2), W2C pose."""
    C = -R.T @ t
    u, v = np.meshgrid(np.arange(WIDTH) + 0.5, np.arange(HEIGHT) + 0.5)
    rays = np.stack([(u - WIDTH / 2) / FOCAL, (v - HEIGHT / 2) / FOCAL, np.ones_like(u)], -1) @ R  # R^T d
    depth = np.full((HEIGHT, WIDTH), np.inf)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for axis, tex in enumerate(textures):
        a, b = [k for k in range(3) if k != axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = -C[axis] / rays[..., axis]
        P = C + np.nan_to_num(s)[..., None] * rays
        hit = (s > 0) & (s < depth) & (P[..., a] >= 0) & (P[..., a] <= BOX) & (P[..., b] >= 0) & (P[..., b] <= BOX)
        scale = (tex.shape[0] - 1) / BOX
        mx = np.nan_to_num(P[..., a] * scale).astype(np.float32)
        my = np.nan_to_num(P[..., b] * scale).astype(np.float32)
        sampled = cv2.remap(tex, mx, my, cv2.INTER_LINEAR)
        image[hit] = sampled[hit]
        depth[hit] = s[hit]
    return image


def make_scene(folder: str, n: int = 8, seed: int = 0) -> np.ndarray:
    """Write n frames ``frame_000.jpg``... into ``folder``; returns the [n, 3] true camera centres."""
    rng = np.random.default_rng(seed)
    textures = [noise_texture(rng) for _ in range(3)]
    os.makedirs(folder, exist_ok=True)
    centres = []
    for i in range(n):
        theta = np.deg2rad(25 + 40 * i / (n - 1))
        C = np.array([1.0 + 2.6 * np.cos(theta), 1.0 + 2.6 * np.sin(theta), 2.0 + 0.2 * np.sin(i)])
        R, t = look_at(C, np.array([0.6, 0.6, 0.6]))
        image = render_box_corner(R, t, textures)
        cv2.imwrite(os.path.join(folder, f"frame_{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        centres.append(C)
    return np.array(centres)


def similarity_residual(src: np.ndarray, dst: np.ndarray) -> float:
    """RMS of dst - (s R src + t) after the least-squares similarity (closed form via SVD)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(xd.T @ xs)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = np.trace(np.diag(S) @ D) / (xs**2).sum()
    return float(np.sqrt(((xd - s * xs @ R.T) ** 2).sum(1).mean()))


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "convert.py"), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def tree(folder) -> dict[str, str]:
    """{relative path: sha1} of every file under folder (and '' entries for folders)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder) + "/"] = ""
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------
def test_convert_synthetic_scene(tmp_path):
    D = tmp_path / "scene"
    centres = make_scene(str(D / "images"))
    originals = tree(D / "images")

    res = run_convert("-s", str(D), "--split", "every:4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "registered" in res.stdout

    # Originals kept in input/, untouched; the 3DGS layout is there; no temporary leftovers.
    assert tree(D / "input") == originals
    assert sorted(os.listdir(D)) == ["distorted", "images", "input", "sparse", "split.yml"]
    assert os.path.isfile(D / "sparse" / "cameras.bin") and os.path.isfile(D / "sparse" / "images.bin")
    assert os.path.isfile(D / "distorted" / "database.db")

    cameras, images, points3D = read_model(D / "sparse")
    assert len(images) >= 6, f"only {len(images)} images registered"
    assert f"registered {len(images)} of 8 images" in res.stdout
    assert len(points3D) > 100
    for cam in cameras.values():
        assert cam.model == "PINHOLE"
        fx, fy, cx, cy = pinhole_intrinsics(cam)
        assert abs(fx / FOCAL - 1) < 0.05 and abs(fy / FOCAL - 1) < 0.05
    for im in images.values():
        assert os.path.isfile(D / "images" / im.name)
        assert cv2.imread(str(D / "images" / im.name)) is not None

    # Poses agree with the truth up to a similarity.
    order = sorted(images.values(), key=lambda im: im.name)
    est = np.array([-im.rotmat().T @ im.tvec for im in order])
    true = centres[[int(im.stem.split("_")[1]) for im in order]]
    assert similarity_residual(est, true) < 0.02 * np.linalg.norm(true - true.mean(0), axis=1).mean()

    stems = [im.stem for im in images.values()]
    split = load_split(D / "split.yml", stems)
    assert split["test"] == sorted(stems)[::4]
    assert sorted(split["train"] + split["test"]) == sorted(stems)

    # Re-running from D/distorted only undistorts again and rewrites the split; input/ stays.
    res = run_convert("-s", str(D), "--skip_matching", "--split", "arcs:0.5", "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree(D / "input") == originals
    assert len(load_split(D / "split.yml", stems)["test"]) == round(0.5 * len(stems))
    assert sorted(os.listdir(D)) == ["distorted", "images", "input", "sparse", "split.yml"]


def assert_refused(res: subprocess.CompletedProcess, *must_contain: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for text in must_contain:
        assert text in lines[0], lines[0]


def test_convert_without_images_writes_nothing(tmp_path):
    D = tmp_path / "scene"
    (D / "images").mkdir(parents=True)
    (D / "images" / "notes.txt").write_text("not an image")
    before = tree(D)
    res = run_convert("-s", str(D))
    assert_refused(res, str(D / "images"), "no images")
    assert tree(D) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(run_convert("-s", str(empty)), str(empty), "no input/ or images/")
    assert os.listdir(empty) == []
    assert_refused(run_convert("-s", str(tmp_path / "absent")), "missing scene folder")
    assert not os.path.exists(tmp_path / "absent")


def test_convert_refuses_a_converted_scene_without_input(tmp_path):
    D = tmp_path / "scene"
    make_scene(str(D / "images"), n=2)
    (D / "sparse").mkdir()
    before = tree(D)
    assert_refused(run_convert("-s", str(D)), str(D / "sparse"), "converted scene")
    assert tree(D) == before


def test_convert_unrelated_images_register_too_few(tmp_path):
    D = tmp_path / "scene"
    (D / "input").mkdir(parents=True)
    for i in range(3):  # three different textures seen head-on: nothing to match
        tex = noise_texture(np.random.default_rng(100 + i), size=256)
        cv2.imwrite(str(D / "input" / f"{i}.png"), tex)
    before = tree(D)
    res = run_convert("-s", str(D), "--split", "every:2")
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(D / "input") in last and "registered 0 of 3 images" in last, res.stderr
    assert tree(D) == before


def test_convert_rejects_bad_split_spec(tmp_path):
    D = tmp_path / "scene"
    (D / "input").mkdir(parents=True)
    res = run_convert("-s", str(D), "--split", "every:1")
    assert res.returncode == 2 and "every:N must be >= 2" in res.stderr
    assert os.listdir(D) == ["input"]
