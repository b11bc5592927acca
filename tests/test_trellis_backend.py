"""Stage 5, `trellis` backend, against a FAKE TRELLIS that follows the real API.

The fake (written to a temporary folder and given with --trellis_path, as a real checkout would be)
has the real module layout and signatures: ``trellis.pipelines.TrellisImageTo3DPipeline`` with
``from_pretrained`` / ``to`` / ``run`` / ``run_multi_image`` (keyword names of
trellis/pipelines/trellis_image_to_3d.py), outputs ``{"gaussian": [...], "mesh": [...]}`` holding only
the formats asked for, a Gaussian whose ``save_ply(path, transform=[[1,0,0],[0,0,-1],[0,1,0]])``
writes TRELLIS's 17-property degree-0 PLY with that axis swap, and
``trellis.utils.postprocessing_utils.to_glb(app_rep, mesh, simplify=, ..., texture_size=)`` returning a
trimesh rotated to Y up as the real one does. Every call is logged (JSON lines) so the tests can
check the inputs' order, the method, the seed, the sampler settings and the environment seen at
import. A stand-in ``torch`` (``cuda.is_available``, ``cuda.device_count``, ``device``: all the
backend uses of it) makes the machine look like it has a GPU (or not) without importing torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # TRELLIS's save_ply transform
# the fake's object, in TRELLIS's own (Z-up) frame: an axis-aligned box
BOX_CENTRE = np.array([0.0, 0.05, -0.02])
BOX_HALF = np.array([0.3, 0.15, 0.45])
COLOUR = (200, 60, 30)

FAKE_TRELLIS = {
    "trellis/__init__.py": '''
        import json, os
        IMPORT_ENV = {k: os.environ.get(k) for k in ("ATTN_BACKEND", "SPCONV_ALGO")}
        with open(os.environ["FAKE_TRELLIS_LOG"], "a") as f:
            f.write(json.dumps({"call": "import", "env": IMPORT_ENV}) + "\\n")
    ''',
    "trellis/pipelines/__init__.py": '''
        from .trellis_image_to_3d import TrellisImageTo3DPipeline
    ''',
    "trellis/pipelines/trellis_image_to_3d.py": '''
        import json, os
        from typing import List, Literal
        import numpy as np
        from ..representations import Gaussian, MeshExtractResult, object_box

        def log(**rec):
            with open(os.environ["FAKE_TRELLIS_LOG"], "a") as f:
                f.write(json.dumps(rec) + "\\n")

        def image_ids(images):
            return [int(im.getpixel((0, 0))[0]) for im in images]  # the tests paint img_<i> with red = i

        class TrellisImageTo3DPipeline:
            def __init__(self, models=None, sparse_structure_sampler=None, slat_sampler=None, slat_normalization=None,
                         image_cond_model=None):
                self.device = None

            @staticmethod
            def from_pretrained(path: str) -> "TrellisImageTo3DPipeline":
                is_local = os.path.exists(f"{path}/pipeline.json")
                log(call="from_pretrained", path=path, is_local=is_local)
                if is_local:
                    with open(f"{path}/pipeline.json") as f:
                        json.load(f)["args"]  # as TRELLIS's Pipeline.from_pretrained reads it
                return TrellisImageTo3DPipeline()

            def to(self, device) -> None:
                self.device = str(device)
                log(call="to", device=str(device))

            def cuda(self) -> None:
                self.to("cuda")

            def _decode(self, formats):
                xyz, faces = object_box()
                out = {}
                if "gaussian" in formats:
                    out["gaussian"] = [Gaussian(xyz)]
                if "mesh" in formats:
                    out["mesh"] = [MeshExtractResult(faces)]
                if "radiance_field" in formats:
                    out["radiance_field"] = [None]
                return out

            def run(self, image, num_samples: int = 1, seed: int = 42, sparse_structure_sampler_params: dict = {},
                    slat_sampler_params: dict = {}, formats: List[str] = ['mesh', 'gaussian', 'radiance_field'],
                    preprocess_image: bool = True) -> dict:
                log(call="run", images=image_ids([image]), mode=image.mode, seed=seed, num_samples=num_samples,
                    ss=sparse_structure_sampler_params, slat=slat_sampler_params, formats=formats,
                    preprocess_image=preprocess_image, device=self.device)
                return self._decode(formats)

            def run_multi_image(self, images, num_samples: int = 1, seed: int = 42, sparse_structure_sampler_params: dict = {},
                                slat_sampler_params: dict = {}, formats: List[str] = ['mesh', 'gaussian', 'radiance_field'],
                                preprocess_image: bool = True, mode: Literal['stochastic', 'multidiffusion'] = 'stochastic') -> dict:
                log(call="run_multi_image", images=image_ids(images), seed=seed, num_samples=num_samples,
                    ss=sparse_structure_sampler_params, slat=slat_sampler_params, formats=formats,
                    preprocess_image=preprocess_image, mode=mode, device=self.device)
                return self._decode(formats)
    ''',
    "trellis/representations.py": '''
        import numpy as np
        from plyfile import PlyData, PlyElement

        CENTRE = np.array(%(centre)s)
        HALF = np.array(%(half)s)
        C0 = 0.28209479177387814
        COLOUR = np.array(%(colour)s) / 255.0

        def object_box():
            """Surface points and the triangles of an axis-aligned box, TRELLIS frame (Z up)."""
            import trimesh
            box = trimesh.creation.box(extents=2 * HALF)
            box.apply_translation(CENTRE)
            g = np.linspace(-1, 1, 9)
            a, b = np.meshgrid(g, g)
            pts = []
            for axis in range(3):
                for sign in (-1, 1):
                    p = np.zeros((a.size, 3))
                    others = [k for k in range(3) if k != axis]
                    p[:, axis] = sign
                    p[:, others[0]], p[:, others[1]] = a.ravel(), b.ravel()
                    pts.append(p)
            return CENTRE + np.concatenate(pts) * HALF, box

        def matrix_to_quaternion(m):  # proper rotations, w > 0 branch suffices for the fake's use
            w = np.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
            return np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)])

        class Gaussian:
            def __init__(self, xyz):
                self.xyz = xyz

            def construct_list_of_attributes(self):
                return ['x', 'y', 'z', 'nx', 'ny', 'nz', 'f_dc_0', 'f_dc_1', 'f_dc_2', 'opacity',
                        'scale_0', 'scale_1', 'scale_2', 'rot_0', 'rot_1', 'rot_2', 'rot_3']

            def save_ply(self, path, transform=[[1, 0, 0], [0, 0, -1], [0, 1, 0]]):
                xyz = self.xyz
                rotation = np.tile([1.0, 0, 0, 0], (len(xyz), 1))
                if transform is not None:
                    transform = np.array(transform)
                    xyz = np.matmul(xyz, transform.T)
                    rotation = np.tile(matrix_to_quaternion(transform @ np.eye(3)), (len(xyz), 1))
                n = len(xyz)
                f_dc = np.tile((COLOUR - 0.5) / C0, (n, 1))
                attributes = np.concatenate([xyz, np.zeros((n, 3)), f_dc, np.full((n, 1), 2.0), np.full((n, 3), -4.0), rotation], 1)
                elements = np.empty(n, dtype=[(a, 'f4') for a in self.construct_list_of_attributes()])
                elements[:] = list(map(tuple, attributes))
                PlyData([PlyElement.describe(elements, 'vertex')]).write(path)

        class MeshExtractResult:
            def __init__(self, mesh):
                self.vertices = np.asarray(mesh.vertices, np.float32)
                self.faces = np.asarray(mesh.faces, np.int64)
    ''' % {"centre": BOX_CENTRE.tolist(), "half": BOX_HALF.tolist(), "colour": list(COLOUR)},
    "trellis/utils/__init__.py": "",
    "trellis/utils/postprocessing_utils.py": '''
        import json, os
        import numpy as np
        import trimesh
        from PIL import Image

        def to_glb(app_rep, mesh, simplify: float = 0.95, fill_holes: bool = True, fill_holes_max_size: float = 0.04,
                   texture_size: int = 1024, debug: bool = False, verbose: bool = True) -> trimesh.Trimesh:
            with open(os.environ["FAKE_TRELLIS_LOG"], "a") as f:
                f.write(json.dumps({"call": "to_glb", "simplify": simplify, "texture_size": texture_size,
                                    "app_rep": type(app_rep).__name__, "mesh": type(mesh).__name__}) + "\\n")
            vertices, faces = mesh.vertices, mesh.faces
            uvs = np.full((len(vertices), 2), 0.5)
            colour = np.array(%(colour)s, np.uint8)
            texture = Image.fromarray(np.broadcast_to(colour, (texture_size, texture_size, 3)).copy())
            # rotate mesh (from z-up to y-up), as TRELLIS does
            vertices = vertices @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
            material = trimesh.visual.material.PBRMaterial(roughnessFactor=1.0, baseColorTexture=texture,
                                                           baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8))
            return trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uvs, material=material))
    ''' % {"colour": list(COLOUR)},
}

FAKE_TORCH = '''
    import os

    class _Cuda:
        @staticmethod
        def is_available():
            return os.environ.get("FAKE_CUDA", "1") == "1"

        @staticmethod
        def device_count():
            return 1 if _Cuda.is_available() else 0

    cuda = _Cuda()

    class device:
        def __init__(self, name):
            self.name = str(name)
            self.type = self.name.split(":")[0]

        def __str__(self):
            return self.name
'''


@pytest.fixture
def fake(tmp_path):
    """(trellis checkout, env for the subprocess, log path)."""
    repo = tmp_path / "TRELLIS"
    for rel, text in FAKE_TRELLIS.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(textwrap.dedent(text))
    torch_dir = tmp_path / "fake_torch" / "torch"
    torch_dir.mkdir(parents=True)
    (torch_dir / "__init__.py").write_text(textwrap.dedent(FAKE_TORCH))
    log = tmp_path / "calls.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("ATTN_BACKEND", "SPCONV_ALGO", "PYTHONPATH")}
    env.update(FAKE_TRELLIS_LOG=str(log), PYTHONPATH=str(tmp_path / "fake_torch"))
    return repo, env, log


def calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make_model(tmp_path, views):
    """M with M/masked_image_rgba_selected/<prompt>/img_<i>.png (red channel = i, so the fake can say
    which image it got) and a checkpoint folder with pipeline.json."""
    m = tmp_path / "M"
    for prompt, ids in views.items():
        folder = m / "masked_image_rgba_selected" / prompt
        folder.mkdir(parents=True)
        for i in ids:
            a = np.zeros((24, 32, 4), np.uint8)
            a[..., 0] = i
            a[4:20, 6:26, 3] = 255
            Image.fromarray(a, "RGBA").save(folder / f"img_{i}.png")
        (folder / "notes.txt").write_text("not a view")
    (m / "masked_image_rgba_selected" / "selection.json").write_text("{}")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "pipeline.json").write_text(json.dumps({"name": "TrellisImageTo3DPipeline", "args": {}}))
    return m, ckpt


def run(env, *args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "trellis_img2gs.py"), *args, "--quiet"], cwd=cwd,
                          capture_output=True, text=True, env=env)


def read(path):
    d = PlyData.read(str(path))["vertex"].data
    return d, np.stack([d["x"], d["y"], d["z"]], 1).astype(np.float64)


def test_gaussians_single_and_multi_image(fake, tmp_path):
    repo, env, log = fake
    m, ckpt = make_model(tmp_path, {"a": [2, 10, 1], "b": [3]})
    r = run(env, "-m", str(m), "--trellis_model", str(ckpt), "--trellis_path", str(repo), "--seed", "7", "--ss_steps", "5",
            "--slat_cfg_strength", "2.5", "--multi_image_mode", "multidiffusion")
    assert r.returncode == 0, r.stderr
    c = calls(log)
    assert [x["call"] for x in c] == ["import", "from_pretrained", "to", "run_multi_image", "run"]
    assert c[0]["env"] == {"ATTN_BACKEND": "xformers", "SPCONV_ALGO": "native"}  # set before the import
    assert c[1] == {"call": "from_pretrained", "path": str(ckpt), "is_local": True}
    assert c[2]["device"] == "cuda"
    multi, single = c[3], c[4]
    assert multi["images"] == [1, 2, 10]  # img_<i> sorted by i as a number
    assert single["images"] == [3] and single["mode"] == "RGBA"
    for call in (multi, single):  # the same seed and sampler settings on both paths
        assert call["seed"] == 7 and call["num_samples"] == 1 and call["preprocess_image"] is True
        assert call["ss"] == {"steps": 5, "cfg_strength": 7.5} and call["slat"] == {"steps": 12, "cfg_strength": 2.5}
        assert call["formats"] == ["gaussian"] and call["device"] == "cuda"
    assert multi["mode"] == "multidiffusion"
    internal = fake_box_points(repo)
    for prompt in ("a", "b"):
        d, xyz = read(m / "generated" / f"{prompt}.ply")
        assert len(d.dtype.names) == 17
        assert np.allclose(xyz, internal @ T.T, atol=1e-6)  # save_ply's frame, untouched (it fits the box)
        q = np.stack([d[f"rot_{i}"] for i in range(4)], 1)
        assert np.allclose(q, [np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-6)  # T: +90 degrees about x
        rgb = np.stack([d[f"f_dc_{i}"] for i in range(3)], 1) * 0.28209479177387814 + 0.5
        assert np.allclose(rgb, np.array(COLOUR) / 255, atol=1e-5)
        rec = json.loads((m / "generated" / f"{prompt}.json").read_text())
        assert rec["backend"] == "trellis" and rec["input_kind"] == "trellis_gaussians" and rec["seed"] == 7
        assert rec["normalisation"]["applied"] is False and np.allclose(rec["normalisation"]["matrix"], np.eye(4))
        assert rec["num_gaussians"] == len(d) and rec["glb"] is None
        assert rec["options"]["environment"] == {"ATTN_BACKEND": "xformers", "SPCONV_ALGO": "native"}
        assert rec["options"]["checkpoint"] == {"kind": "local", "path": str(ckpt)}
        assert all(len(i["sha256"]) == 64 for i in rec["inputs"])
    rec = json.loads((m / "generated" / "a.json").read_text())
    assert rec["method"] == "run_multi_image"
    assert [os.path.basename(i["path"]) for i in rec["inputs"]] == ["img_1.png", "img_2.png", "img_10.png"]
    assert json.loads((m / "generated" / "b.json").read_text())["method"] == "run"
    assert not list((m / "generated").glob("*.glb"))
    stage = json.loads((m / "trellis_img2gs.json").read_text())
    assert stage["backend"] == "trellis" and stage["trellis"]["ss_steps"] == 5 and stage["objects"] == ["a", "b"]


def fake_box_points(repo):
    """The fake's Gaussian centres (TRELLIS frame), from the fake's own ``object_box`` (one source of truth)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_trellis_representations", repo / "trellis" / "representations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.object_box()[0]


def test_mesh_and_both(fake, tmp_path):
    import trimesh

    repo, env, log = fake
    m, ckpt = make_model(tmp_path, {"a": [1, 2], "b": [1]})
    env = {**env, "ATTN_BACKEND": "flash_attn"}  # already in the environment: kept
    base = ("-m", str(m), "--trellis_model", str(ckpt), "--trellis_path", str(repo), "--glb_texture_size", "16",
            "--glb_simplify", "0.5", "--gaussians_per_mesh", "3000")
    r = run(env, *base, "--save_type", "mesh")
    assert r.returncode == 0, r.stderr
    c = calls(log)
    assert c[0]["env"] == {"ATTN_BACKEND": "flash_attn", "SPCONV_ALGO": "native"}
    runs = [x for x in c if x["call"].startswith("run")]
    assert all(x["formats"] == ["gaussian", "mesh"] for x in runs)
    glb_calls = [x for x in c if x["call"] == "to_glb"]
    assert glb_calls == [{"call": "to_glb", "simplify": 0.5, "texture_size": 16, "app_rep": "Gaussian", "mesh": "MeshExtractResult"}] * 2
    # one GLB per object, never a shared mesh.glb
    assert sorted(os.listdir(m / "generated")) == ["a.glb", "a.json", "a.ply", "b.glb", "b.json", "b.ply"]
    glb = trimesh.load(m / "generated" / "a.glb", force="mesh")
    assert glb.visual.material.baseColorTexture.size == (16, 16)
    # the GLB is Y up (the box's long TRELLIS z side is its y side) ...
    assert np.allclose(glb.bounds, [BOX_CENTRE @ T - BOX_HALF @ np.abs(T), BOX_CENTRE @ T + BOX_HALF @ np.abs(T)], atol=1e-6)
    # ... and the proxy sampled from it lies in save_ply's frame, like the Gaussian proxy
    ply_lo, ply_hi = T @ BOX_CENTRE - np.abs(T) @ BOX_HALF, T @ BOX_CENTRE + np.abs(T) @ BOX_HALF
    d, xyz = read(m / "generated" / "a.ply")
    assert len(d) == 3000 and len(d.dtype.names) == 17
    assert np.allclose(xyz.min(0), ply_lo, atol=0.02) and np.allclose(xyz.max(0), ply_hi, atol=0.02)
    assert xyz.min(0).min() >= ply_lo.min() - 1e-6 and (xyz.max(0) <= ply_hi + 1e-6).all()
    rgb = np.stack([d[f"f_dc_{i}"] for i in range(3)], 1) * 0.28209479177387814 + 0.5
    assert np.allclose(rgb, np.array(COLOUR) / 255, atol=0.01)
    rec = json.loads((m / "generated" / "a.json").read_text())
    assert rec["input_kind"] == "trellis_mesh" and rec["colour_source"] == ["texture"] and rec["glb"] == str(m / "generated" / "a.glb")
    assert np.allclose(rec["glb_to_ply"], np.diag([1.0, -1.0, -1.0])) and rec["normalisation"]["applied"] is False
    # both: the Gaussian PLY (as --save_type gs would write it) and the GLB
    r = run(env, *base, "--save_type", "both")
    assert r.returncode == 0, r.stderr
    d, xyz = read(m / "generated" / "b.ply")
    internal = fake_box_points(repo)
    assert len(d) == len(internal) and np.allclose(xyz, internal @ T.T, atol=1e-6)
    assert (m / "generated" / "b.glb").is_file()
    assert json.loads((m / "generated" / "b.json").read_text())["input_kind"] == "trellis_gaussians"


def expect_bad(env, m, *args, must_name, cwd=ROOT):
    r = run(env, "-m", str(m), *args, cwd=cwd)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and must_name in lines[0], r.stderr
    assert not (m / "generated").exists() and not (m / "trellis_img2gs.json").exists()
    return lines[0]


def test_errors_before_anything_is_written(fake, tmp_path):
    repo, env, log = fake
    m, ckpt = make_model(tmp_path, {"a": [1]})
    # the authors' command line parses; here the default checkpoint folder does not exist
    line = expect_bad(env, m, must_name="checkpoints/TRELLIS/TRELLIS-image-large", cwd=tmp_path)
    assert "microsoft/TRELLIS-image-large" in line
    (tmp_path / "empty_ckpt").mkdir()
    expect_bad(env, m, "--trellis_model", str(tmp_path / "empty_ckpt"), must_name="pipeline.json")
    # a checkpoint TRELLIS cannot load (its pipeline.json has no 'args')
    (tmp_path / "bad_ckpt").mkdir()
    (tmp_path / "bad_ckpt" / "pipeline.json").write_text("{}")
    expect_bad(env, m, "--trellis_model", str(tmp_path / "bad_ckpt"), "--trellis_path", str(repo),
               must_name="cannot load the TRELLIS pipeline")
    # TRELLIS not importable: an install hint
    line = expect_bad(env, m, "--trellis_model", str(ckpt), must_name="cannot import TRELLIS")
    assert "github.com/microsoft/TRELLIS" in line and "trellis-3d-python" in line
    expect_bad(env, m, "--trellis_model", str(ckpt), "--trellis_path", str(tmp_path), must_name="--trellis_path")
    # no CUDA; a non-CUDA device
    ok = ("--trellis_model", str(ckpt), "--trellis_path", str(repo))
    expect_bad({**env, "FAKE_CUDA": "0"}, m, *ok, must_name="CUDA GPU")
    expect_bad(env, m, *ok, "--device", "cpu", must_name="--device cpu")
    expect_bad(env, m, *ok, "--device", "cuda:3", must_name="cuda:3")
    # no views for an object; bad option values
    (m / "masked_image_rgba_selected" / "b").mkdir()
    expect_bad(env, m, *ok, must_name=str(m / "masked_image_rgba_selected" / "b"))
    expect_bad(env, m, *ok, "--object_name", "a", "--ss_steps", "0", must_name="--ss_steps")
    expect_bad(env, m, *ok, "--object_name", "a", "--glb_simplify", "1", must_name="--glb_simplify")
    assert [x["call"] for x in calls(log) if x["call"] == "run"] == []  # nothing was generated


def test_hub_id_is_passed_through(fake, tmp_path):
    repo, env, log = fake
    m, _ = make_model(tmp_path, {"a": [1]})
    r = run(env, "-m", str(m), "--trellis_model", "microsoft/TRELLIS-image-large", "--trellis_path", str(repo), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert calls(log)[1] == {"call": "from_pretrained", "path": "microsoft/TRELLIS-image-large", "is_local": False}
    rec = json.loads((m / "generated" / "a.json").read_text())
    assert rec["options"]["checkpoint"] == {"kind": "hub", "path": "microsoft/TRELLIS-image-large"}
