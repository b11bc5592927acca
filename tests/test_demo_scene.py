"""The synthetic demo scene (scripts/make_demo_scene.py + utils/synthetic.py) on a tiny setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from scene.colmap import pinhole_intrinsics, qvec_to_rotmat, read_model
from scene.gaussian_model import read_gaussian_ply
from utils.errors import InputError
from utils.synthetic import OBJECT_PROMPTS

ROOT = Path(__file__).resolve().parents[1]
NUM_VIEWS, WIDTH, HEIGHT = 8, 64, 48
SMALL_ARGS = [
    "--num_views", str(NUM_VIEWS), "--width", str(WIDTH), "--height", str(HEIGHT),
    "--num_points", "1500", "--proxy_gaussians", "1500", "--no-progress",
]  # fmt: skip


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_scene", ROOT / "scripts" / "make_demo_scene.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def scene_dir(script, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "scene"
    assert script.main([str(out), "--seed", "3", *SMALL_ARGS]) == 0
    return out


STEMS = [f"frame_{i:05d}" for i in range(NUM_VIEWS)]


def test_files_names_sizes_dtypes(scene_dir: Path):
    assert sorted(p.name for p in (scene_dir / "images").iterdir()) == [f"{s}.png" for s in STEMS]
    for stem in STEMS:
        im = Image.open(scene_dir / "images" / f"{stem}.png")
        assert im.mode == "RGB" and im.size == (WIDTH, HEIGHT)
        depth = np.array(Image.open(scene_dir / "depths_cam" / f"{stem}.png"))
        assert depth.dtype == np.uint16 and depth.shape == (HEIGHT, WIDTH)
        assert depth.min() > 300 and depth.max() < 10000  # closed room: every pixel hits, 0.3..10 m
        for prompt in OBJECT_PROMPTS:
            m = np.array(Image.open(scene_dir / "masks" / prompt / f"{stem}.png"))
            assert m.dtype == np.uint8 and m.shape == (HEIGHT, WIDTH)
            assert set(np.unique(m).tolist()) <= {0, 255}
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (scene_dir / "sparse" / name).is_file()
    for prompt in OBJECT_PROMPTS:
        assert (scene_dir / "gt" / "meshes" / f"{prompt}.ply").is_file()
        assert (scene_dir / "gt" / "proxies" / f"{prompt}.ply").is_file()
        assert (scene_dir / "gt" / "proxies" / f"{prompt}_transform.json").is_file()
    meta = json.loads((scene_dir / "scene_meta.json").read_text())
    assert meta["seed"] == 3 and meta["num_cameras"] == NUM_VIEWS
    assert [o["name"] for o in meta["objects"]] == list(OBJECT_PROMPTS)
    assert "total" in meta["timings_s"]


def test_description_split_and_key_frame(scene_dir: Path):
    desc = yaml.safe_load((scene_dir / "description.yml").read_text())
    assert desc["prompts"] == "red box,blue mug,green ball"
    assert desc["detect_conf"] == 0.3 and desc["ext"] == "png" and desc["iteration"] == 3000
    assert desc["img_num"] == 3 and desc["num_iterations"] == 4
    assert desc["opt_shape_iterations"] == [2] and desc["cam_list_interval"] == 2
    split = yaml.safe_load((scene_dir / "split.yml").read_text())
    train, test = split["train"], split["test"]
    assert sorted(train + test) == STEMS and not set(train) & set(test) and test
    assert desc["first_image_name"] in train
    for prompt in OBJECT_PROMPTS:
        m = np.array(Image.open(scene_dir / "masks" / prompt / f"{desc['first_image_name']}.png"))
        assert (m > 0).sum() > 0, prompt


def test_colmap_tracks_project_onto_their_keypoints(scene_dir: Path):
    cameras, images, points = read_model(scene_dir / "sparse")
    assert len(cameras) == len(images) == NUM_VIEWS
    assert sorted(im.name for im in images.values()) == [f"{s}.png" for s in STEMS]
    intr = []
    for im in images.values():
        cam = cameras[im.camera_id]
        assert cam.model == "PINHOLE" and (cam.width, cam.height) == (WIDTH, HEIGHT)
        fx, fy, cx, cy = pinhole_intrinsics(cam)
        assert abs(cx - WIDTH / 2) > 0.1 and abs(cy - HEIGHT / 2) > 0.1  # principal point off centre
        intr.append((fx, cx))
    assert len(set(intr)) == NUM_VIEWS  # per-camera intrinsics
    assert len(points) > 100
    for pid, p in points.items():
        assert len(p.image_ids) >= 2
        for image_id, idx in zip(p.image_ids.tolist(), p.point2D_idxs.tolist()):
            im = images[image_id]
            assert im.point3D_ids[idx] == pid
            fx, fy, cx, cy = pinhole_intrinsics(cameras[im.camera_id])
            pc = qvec_to_rotmat(im.qvec) @ p.xyz + im.tvec
            assert pc[2] > 0
            uv = np.array([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy])
            assert np.linalg.norm(uv - im.xys[idx]) < 0.5


def _closest_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """[N, 3] closest points of triangles (a, b, c) [N, 3] to points p [N, 3] (Ericson, RTCD 5.1.5)."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = np.einsum("nc,nc->n", ab, ap), np.einsum("nc,nc->n", ac, ap)
    bp = p - b
    d3, d4 = np.einsum("nc,nc->n", ab, bp), np.einsum("nc,nc->n", ac, bp)
    cp = p - c
    d5, d6 = np.einsum("nc,nc->n", ab, cp), np.einsum("nc,nc->n", ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        out = a + ab * (vb * denom)[:, None] + ac * (vc * denom)[:, None]  # interior
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    cases = [
        (d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (d6 >= 0) & (d5 <= d6),
        (vc <= 0) & (d1 >= 0) & (d3 <= 0), (vb <= 0) & (d2 >= 0) & (d6 <= 0),
        (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0),
    ]  # fmt: skip
    values = [a, b, c, a + ab * t_ab[:, None], a + ac * t_ac[:, None], b + (c - b) * t_bc[:, None]]
    done = np.zeros(len(p), bool)
    for case, value in zip(cases, values):
        sel = case & ~done
        out[sel] = value[sel]
        done |= sel
    return out


def _distance_to_mesh(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray, k: int = 48):
    """(distance [N], face [N]) to the nearest of the k triangles with the nearest centroids (an
    upper bound of the true distance, exact when a nearest triangle is among them)."""
    from scipy.spatial import cKDTree

    tri = vertices[faces]
    k = min(k, len(faces))
    _, cand = cKDTree(tri.mean(1)).query(points, k=k)
    cand = cand.reshape(len(points), k)
    rep = np.repeat(points, k, axis=0)
    q = _closest_on_triangles(rep, *(tri[cand.reshape(-1), i] for i in range(3)))
    d = np.linalg.norm(q - rep, axis=1).reshape(len(points), k)
    best = d.argmin(1)
    return d[np.arange(len(points)), best], cand[np.arange(len(points)), best]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("prompt", OBJECT_PROMPTS)
def test_proxy_canonical_frame_and_true_transform(scene_dir: Path, prompt: str):
    import trimesh
    from plyfile import PlyData

    ply = PlyData.read(str(scene_dir / "gt" / "proxies" / f"{prompt}.ply"))
    assert len(ply["vertex"].data.dtype.names) == 17
    g = read_gaussian_ply(scene_dir / "gt" / "proxies" / f"{prompt}.ply")
    assert g.sh_degree == 0
    assert np.all(np.abs(g.xyz) <= 0.5)
    opacity = _sigmoid(g.opacity)
    junk = opacity < 0.05
    assert 0.05 < junk.mean() < 0.15  # ~10% junk for truncation to remove
    assert np.all(opacity[~junk] > 0.5)

    tr = json.loads((scene_dir / "gt" / "proxies" / f"{prompt}_transform.json").read_text())
    M = np.array(tr["matrix"])
    R, F, s, t = (np.array(tr[k]) for k in ("rotation", "scale_frame", "scale", "translation"))
    np.testing.assert_allclose(M[:3, :3], R @ F.T @ np.diag(s) @ F @ np.eye(3), atol=1e-12)
    np.testing.assert_allclose(M[:3, 3], t, atol=1e-12)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(np.linalg.inv(M), np.array(tr["world_to_proxy"]), atol=1e-9)

    mesh = trimesh.load(scene_dir / "gt" / "meshes" / f"{prompt}.ply", process=False)
    size = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    surf = ~junk
    xyz_w = g.xyz[surf].astype(np.float64) @ M[:3, :3].T + M[:3, 3]
    dist, face = _distance_to_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), xyz_w)
    assert dist.mean() < 0.01 * size

    # exact covariance transform: in the world, each surface Gaussian's thin axis is the surface normal
    from scene.colmap import qvec_to_rotmat as quat_to_R

    Rg = quat_to_R(g.rot[surf].astype(np.float64))
    S2 = np.exp(2.0 * g.scale[surf].astype(np.float64))
    cov_p = np.einsum("nij,nj,nkj->nik", Rg, S2, Rg)
    A = M[:3, :3]
    cov_w = np.einsum("ij,njk,lk->nil", A, cov_p, A)
    evals, evecs = np.linalg.eigh(cov_w)
    thin = evecs[:, :, 0]
    align = np.abs(np.einsum("nc,nc->n", thin, mesh.face_normals[face]))
    assert np.median(align) > 0.95
    assert np.median(evals[:, 0] / evals[:, 1]) < 0.1  # flat


def test_deterministic_and_refuses_non_empty(script, scene_dir: Path, tmp_path: Path):
    again = tmp_path / "again"
    assert script.main([str(again), "--seed", "3", *SMALL_ARGS, "--no-depths"]) == 0
    for stem in STEMS:
        a = np.array(Image.open(scene_dir / "images" / f"{stem}.png"))
        b = np.array(Image.open(again / "images" / f"{stem}.png"))
        np.testing.assert_array_equal(a, b)
    assert (scene_dir / "sparse" / "points3D.bin").read_bytes() == (again / "sparse" / "points3D.bin").read_bytes()
    for prompt in OBJECT_PROMPTS:
        p = Path("gt") / "proxies" / f"{prompt}.ply"
        assert (scene_dir / p).read_bytes() == (again / p).read_bytes()
    assert not (again / "depths_cam").exists()
    with pytest.raises(InputError, match="not empty"):
        script.main([str(again), *SMALL_ARGS])
    assert script.main([str(again), "--seed", "4", *SMALL_ARGS, "--overwrite"]) == 0
    assert (again / "depths_cam").is_dir()
