"""Stage 5, `file` backend: importing Gaussian PLYs and meshes as canonical proxy Gaussians.

(The `trellis` backend is tested in tests/test_trellis_backend.py, the `hull` backend in
tests/test_hull.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C0 = 0.28209479177387814
EXTENTS = np.array([2.0, 1.0, 0.5])  # box -> canonical half extents (0.5, 0.25, 0.125)


def run_script(*args, backend="file"):
    return subprocess.run([sys.executable, os.path.join(ROOT, "trellis_img2gs.py"), "--backend", backend, *args, "--quiet"],
                          cwd=ROOT, capture_output=True, text=True)


def read_vertex(path):
    return PlyData.read(path)["vertex"].data


def xyz_of(d):
    return np.stack([d["x"], d["y"], d["z"]], 1).astype(np.float64)


def texture_rgb(u, v):
    return np.stack([u, v, np.full_like(u, 0.2)], 1)


def make_textured_box(folder, ext):
    import trimesh
    from PIL import Image

    mesh = trimesh.creation.box(extents=EXTENTS)
    mesh.unmerge_vertices()
    v = mesh.vertices
    u_, v_ = (v[:, 0] + 1.0) / 2.0, (v[:, 2] + 0.25) / 0.5  # affine in position
    w, h = 128, 64
    cols, rows = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    img = (texture_rgb(cols.ravel(), 1.0 - rows.ravel()).reshape(h, w, 3) * 255).round().astype(np.uint8)
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(img))
    mesh.visual = trimesh.visual.TextureVisuals(uv=np.stack([u_, v_], 1), material=material)
    path = os.path.join(folder, f"box{ext}")
    mesh.export(path)
    return path


def box_surface_distance(p, half):
    return np.abs(np.max(np.abs(p) - half, axis=1))


@pytest.mark.parametrize("ext", [".glb", ".obj"])
def test_textured_mesh(tmp_path, ext):
    src = make_textured_box(str(tmp_path), ext)
    m = tmp_path / "M"
    r = run_script("-m", str(m), "--proxy", src, "--gaussians_per_mesh", "3000", "--seed", "3")
    assert r.returncode == 0, r.stderr
    ply = m / "generated" / "box.ply"
    d = read_vertex(str(ply))
    assert len(d.dtype.names) == 17 and len(d) == 3000
    xyz = xyz_of(d)
    half = EXTENTS / EXTENTS.max() * 0.5
    assert np.all(np.abs(xyz) <= 0.5 + 1e-6)
    assert box_surface_distance(xyz, half).max() < 1e-6
    # samples cover all six faces (area weighted)
    assert np.isclose(xyz.min(0), -half, atol=1e-3).all() and np.isclose(xyz.max(0), half, atol=1e-3).all()
    # colour = texture at the sample's UV, which is affine in the position
    p_world = xyz * EXTENTS.max()  # canonical -> box coordinates (centred)
    expected = texture_rgb((p_world[:, 0] + 1.0) / 2.0, (p_world[:, 2] + 0.25) / 0.5)
    rgb = np.stack([d["f_dc_0"], d["f_dc_1"], d["f_dc_2"]], 1) * C0 + 0.5
    assert np.abs(rgb - expected).max() < 0.03
    # thin along the normal: the smallest scale axis is the face normal (the box axis of the face)
    scales = np.exp(np.stack([d["scale_0"], d["scale_1"], d["scale_2"]], 1))
    assert np.allclose(scales[:, 2] / scales[:, 0], 0.1, rtol=1e-4)
    q = np.stack([d["rot_0"], d["rot_1"], d["rot_2"], d["rot_3"]], 1).astype(np.float64)
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    normal = np.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], 1)  # R[:, 2]
    face_axis = np.argmin(np.abs(np.abs(xyz) - half), axis=1)
    assert np.all(np.abs(normal[np.arange(len(xyz)), face_axis]) > 0.999)
    sig = 1.0 / (1.0 + np.exp(-d["opacity"].astype(np.float64)))
    assert np.allclose(sig, 0.95, atol=1e-5)
    rec = json.loads((m / "generated" / "box.json").read_text())
    assert rec["backend"] == "file" and rec["input_kind"] == "mesh" and rec["colour_source"] == ["texture"]
    assert rec["num_gaussians"] == 3000 and rec["seed"] == 3
    assert rec["input_sha256"] == __import__("hashlib").sha256(open(src, "rb").read()).hexdigest()
    mat = np.array(rec["normalisation"]["matrix"])
    assert np.allclose(mat[:3, :3], np.eye(3) * 0.5) and np.allclose(mat[:3, 3], 0.0)
    # deterministic for the seed; another seed gives other samples
    first = ply.read_bytes()
    assert run_script("-m", str(m), "--proxy", src, "--gaussians_per_mesh", "3000", "--seed", "3").returncode == 0
    assert ply.read_bytes() == first
    assert run_script("-m", str(m), "--proxy", src, "--gaussians_per_mesh", "3000", "--seed", "4").returncode == 0
    assert ply.read_bytes() != first


def test_vertex_coloured_ply_mesh_and_no_canonical(tmp_path):
    import trimesh

    mesh = trimesh.creation.box(extents=EXTENTS)
    mesh.apply_translation([3.0, -1.0, 2.0])
    colours = np.zeros((len(mesh.vertices), 4), np.uint8)
    colours[:, 3] = 255
    colours[:, 0] = np.where(mesh.vertices[:, 0] > 3.0, 255, 0)  # red at +x, black at -x
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colours)
    src = str(tmp_path / "mug.ply")
    mesh.export(src)
    m = tmp_path / "M"
    os.makedirs(m / "masked_image_rgba_selected" / "mug")
    r = run_script("-m", str(m), "--proxy", src, "--gaussians_per_mesh", "4000")
    assert r.returncode == 0, r.stderr
    d = read_vertex(str(m / "generated" / "mug.ply"))
    xyz = xyz_of(d)
    rgb = np.stack([d["f_dc_0"], d["f_dc_1"], d["f_dc_2"]], 1) * C0 + 0.5
    half = EXTENTS / EXTENTS.max() * 0.5
    assert box_surface_distance(xyz, half).max() < 1e-6
    on_px, on_nx = np.isclose(xyz[:, 0], 0.5, atol=1e-6), np.isclose(xyz[:, 0], -0.5, atol=1e-6)
    assert on_px.sum() > 50 and on_nx.sum() > 50
    assert np.allclose(rgb[on_px], [1, 0, 0], atol=1e-3) and np.allclose(rgb[on_nx], [0, 0, 0], atol=1e-3)
    # on the faces spanning x the red channel is linear in x (interpolated vertex colours)
    side = ~(on_px | on_nx)
    assert np.abs(rgb[side, 0] - (xyz[side, 0] + 0.5)).max() < 1e-3
    assert json.loads((m / "generated" / "mug.json").read_text())["colour_source"] == ["vertex"]
    # --no-canonical keeps the input coordinates
    r = run_script("-m", str(m), "--proxy", src, "--gaussians_per_mesh", "500", "--no-canonical")
    assert r.returncode == 0, r.stderr
    xyz = xyz_of(read_vertex(str(m / "generated" / "mug.ply")))
    assert box_surface_distance(xyz - [3.0, -1.0, 2.0], EXTENTS / 2).max() < 1e-5
    rec = json.loads((m / "generated" / "mug.json").read_text())
    assert rec["normalisation"]["applied"] is False and rec["options"]["canonical"] is False


def write_gaussian_ply(path, xyz, scale, sh_degree=0, seed=0):
    rng = np.random.default_rng(seed)
    n = len(xyz)
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    rec = np.empty(n, dtype=[(k, "<f4") for k in names])
    for k in names:
        rec[k] = rng.normal(size=n)
    rec["x"], rec["y"], rec["z"] = xyz.T
    rec["nx"] = rec["ny"] = rec["nz"] = 0
    rec["scale_0"], rec["scale_1"], rec["scale_2"] = scale.T
    PlyData([PlyElement.describe(rec, "vertex")]).write(path)
    return rec


def test_gaussian_ply_untouched_when_canonical(tmp_path):
    rng = np.random.default_rng(1)
    src = str(tmp_path / "cup.ply")
    rec = write_gaussian_ply(src, rng.uniform(-0.45, 0.45, (300, 3)), rng.normal(-4, 0.5, (300, 3)), sh_degree=1)
    m = tmp_path / "M"
    r = run_script("-m", str(m), "--proxy", src, "--object_name", "cup")
    assert r.returncode == 0, r.stderr
    out = read_vertex(str(m / "generated" / "cup.ply"))
    assert len(out.dtype.names) == 17 + 9  # SH degree 1 kept
    for k in out.dtype.names:
        if k not in ("nx", "ny", "nz"):
            assert np.array_equal(out[k], rec[k]), k
    meta = json.loads((m / "generated" / "cup.json").read_text())
    assert meta["input_kind"] == "gaussian_ply" and meta["normalisation"]["applied"] is False
    assert np.allclose(meta["normalisation"]["matrix"], np.eye(4))


def test_gaussian_ply_normalised_when_not_canonical(tmp_path):
    rng = np.random.default_rng(2)
    xyz = rng.uniform([-1, 2, 5], [3, 3, 6], (400, 3))  # x side 4 is the largest
    xyz[0], xyz[1] = [-1, 2, 5], [3, 3, 6]
    src = str(tmp_path / "cup.ply")
    rec = write_gaussian_ply(src, xyz, rng.normal(-3, 0.5, (400, 3)))
    m = tmp_path / "M"
    assert run_script("-m", str(m), "--proxy", src, "--object_name", "cup").returncode == 0
    out = read_vertex(str(m / "generated" / "cup.ply"))
    x_in = xyz_of(rec)
    k = 1.0 / 4.0
    centre = (x_in.min(0) + x_in.max(0)) / 2
    assert np.allclose(xyz_of(out), (x_in - centre) * k, atol=1e-6)
    assert np.abs(xyz_of(out)).max() <= 0.5 + 1e-6 and np.isclose(np.abs(xyz_of(out)[:, 0]).max(), 0.5)
    for i in range(3):
        assert np.allclose(out[f"scale_{i}"], rec[f"scale_{i}"] + np.log(k), atol=1e-5)
    for key in ("opacity", "f_dc_0", "rot_0", "rot_3"):
        assert np.array_equal(out[key], rec[key])
    meta = json.loads((m / "generated" / "cup.json").read_text())
    mat = np.array(meta["normalisation"]["matrix"])
    assert meta["normalisation"]["applied"] is True and np.isclose(meta["normalisation"]["scale"], k)
    assert np.allclose(np.c_[x_in, np.ones(len(x_in))] @ mat.T, np.c_[xyz_of(out), np.ones(len(x_in))], atol=1e-6)


def test_demo_scene_proxies(tmp_path):
    scene = tmp_path / "scene"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_demo_scene.py"), str(scene), "--num_views", "8",
                        "--width", "64", "--height", "48", "--num_points", "800", "--supersample", "1", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    proxies = scene / "gt" / "proxies"
    prompts = sorted(f[:-4] for f in os.listdir(proxies) if f.endswith(".ply"))
    assert len(prompts) == 3
    m = tmp_path / "M"
    for p in prompts:
        os.makedirs(m / "masked_image_rgba_selected" / p)
    r = run_script("-m", str(m), "--proxy", str(proxies))
    assert r.returncode == 0, r.stderr
    for p in prompts:
        src, out = read_vertex(str(proxies / f"{p}.ply")), read_vertex(str(m / "generated" / f"{p}.ply"))
        assert len(out) == len(src) > 0 and len(out.dtype.names) == 17
        assert np.abs(xyz_of(out)).max() <= 0.5
        meta = json.loads((m / "generated" / f"{p}.json").read_text())
        assert meta["object"] == p and meta["num_gaussians"] == len(out)
        if not meta["normalisation"]["applied"]:
            assert np.array_equal(xyz_of(out), xyz_of(src))


def test_import_needs_no_torch():
    code = ("import sys; sys.argv=['x']; import trellis_img2gs, utils.generation, utils.trellis, utils.hull; "
            "bad=[m for m in ('torch','gsplat','transformers','trimesh','trellis','scipy') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cli_documents_every_option():
    sys.path.insert(0, ROOT)
    from trellis_img2gs import build_parser

    parser = build_parser()
    assert parser.parse_args(["-m", "M"]).backend == "trellis"  # the authors' command line
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings
    text = parser.format_help()
    for flag in ("--save_type", "--trellis_model", "--attn_backend", "--spconv_algo", "--multi_image_mode", "--hull_resolution",
                 "--hull_min_fraction", "--hull_box_margin", "--hull_visibility_tolerance", "--split_yml_name", "--proxy"):
        assert flag in text, flag


def expect_bad(m, *args, must_name=None):
    r = run_script("-m", str(m), *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    if must_name is not None:
        assert must_name in lines[0], lines[0]
    assert not (m / "generated").exists()
    return lines[0]


def test_bad_input(tmp_path):
    m = tmp_path / "M"
    proxies = tmp_path / "proxies"
    os.makedirs(proxies)
    good = str(proxies / "a.ply")
    write_gaussian_ply(good, np.zeros((5, 3)), np.full((5, 3), -3.0))
    # no selected views and no --object_name
    expect_bad(m, "--proxy", str(proxies), must_name="masked_image_rgba_selected")
    # no --proxy for the file backend
    expect_bad(m, "--object_name", "a", must_name="--proxy")
    expect_bad(m, "--object_name", "a", "--proxy", good, "--seed", "-1", must_name="--seed")
    # selected views for a and b, but no proxy for b: what was looked for is listed, nothing written for a either
    for p in ("a", "b"):
        os.makedirs(m / "masked_image_rgba_selected" / p)
    line = expect_bad(m, "--proxy", str(proxies))
    assert "b.ply" in line and "b.glb" in line and "b.obj" in line
    # a single proxy file for two objects
    expect_bad(m, "--proxy", good, must_name=good)
    # missing proxy path
    expect_bad(m, "--proxy", str(tmp_path / "nowhere"), must_name="nowhere")
    # unreadable PLY, corrupt GLB, empty mesh (no faces) and empty OBJ
    bad = tmp_path / "bad"
    os.makedirs(bad)
    (bad / "t.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00")
    (bad / "g.glb").write_bytes(b"glTF garbage")
    (bad / "e.obj").write_text("# nothing\n")
    (bad / "p.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                               "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    write_gaussian_ply(str(bad / "one.ply"), np.full((1, 3), 3.0), np.zeros((1, 3)))  # one point outside the box
    for name in ("t.ply", "g.glb", "e.obj", "p.ply", "one.ply"):
        expect_bad(m, "--proxy", str(bad / name), "--object_name", "a", must_name=name)
