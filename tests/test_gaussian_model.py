"""Gaussian PLY I/O and transforms seen through the renderer."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from gaussian_renderer import render
from scene.cameras import Camera, look_at
from scene.gaussian_model import GaussianArrays, GaussianModel, ply_property_names, read_gaussian_ply, write_gaussian_ply
from utils.errors import InputError
from utils.geometry import apply_affine, apply_similarity, random_rotation, scales_quats_to_covariance


def random_model(n=200, degree=3, seed=0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    params = {
        "means": torch.randn(n, 3, generator=g) * 0.3,
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.2,
        "opacities": torch.randn(n, generator=g),
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.05 + 0.01),
        "quats": torch.randn(n, 4, generator=g),
    }
    return GaussianModel(degree, params)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, degree):
    m = random_model(degree=degree)
    p1, p2 = tmp_path / "a.ply", tmp_path / "b.ply"
    m.save_ply(p1)
    m2 = GaussianModel.from_ply(p1)
    assert m2.max_sh_degree == degree and len(m2) == len(m)
    for k in m.params:
        assert torch.equal(m.params[k], m2.params[k]), k
    m2.save_ply(p2)
    assert p1.read_bytes() == p2.read_bytes()
    assert len(ply_property_names(degree)) == 17 + 3 * ((degree + 1) ** 2 - 1)


def test_17_property_generator_file_loads(tmp_path):
    n = 50
    rng = np.random.default_rng(0)
    arrays = GaussianArrays(
        xyz=rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32), f_dc=rng.normal(size=(n, 3)).astype(np.float32),
        f_rest=np.zeros((n, 0), np.float32), opacity=rng.normal(size=n).astype(np.float32),
        scale=np.full((n, 3), -4.0, np.float32), rot=rng.normal(size=(n, 4)).astype(np.float32),
    )
    path = tmp_path / "proxy.ply"
    write_gaussian_ply(path, arrays)
    from plyfile import PlyData

    props = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    assert len(props) == 17 and props[:3] == ["x", "y", "z"]
    m = GaussianModel.from_ply(path)
    assert m.max_sh_degree == 0 and len(m) == n
    m3 = GaussianModel.from_ply(path, sh_degree=3)  # zero-filled up to degree 3
    assert m3.params["shN"].shape == (n, 15, 3) and float(m3.params["shN"].abs().sum()) == 0.0
    assert np.allclose(m3.params["means"].detach().numpy(), arrays.xyz)


def test_broken_ply_files_raise_input_error(tmp_path):
    m = random_model(n=100)
    good = tmp_path / "good.ply"
    m.save_ply(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(data[: len(data) - 500])
    with pytest.raises(InputError, match="truncated.ply"):
        read_gaussian_ply(truncated)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"this is not a ply file\n" * 10)
    with pytest.raises(InputError, match="garbage.ply"):
        read_gaussian_ply(garbage)
    with pytest.raises(InputError, match="not found"):
        read_gaussian_ply(tmp_path / "missing.ply")
    # a point cloud without Gaussian properties
    from plyfile import PlyData, PlyElement

    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "points.ply"))
    with pytest.raises(InputError, match="missing properties"):
        read_gaussian_ply(tmp_path / "points.ply")


def _camera(w=48, h=40) -> Camera:
    R, t = look_at(np.array([0.4, -2.0, 0.9]), np.zeros(3))
    return Camera(R, t, 60.0, 62.0, 23.1, 21.7, w, h)


def test_similarity_transformed_model_matches_inversely_transformed_camera():
    """Render(T(G), cam) == Render(G, cam ∘ T): x_cam = Rc (s R x + t) + tc
    = s (Rc R x + (Rc t + tc) / s), and a uniform scale of camera coordinates leaves the image unchanged."""
    m = random_model(n=150, degree=3, seed=3)
    m.params["opacities"].data = torch.full((150,), 1.0)
    R = random_rotation(torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, -0.2, 0.1])
    s = 1.7
    mt = apply_similarity(m, R, t, s)
    cam = _camera()
    Rn, tn = R.double().numpy(), t.double().numpy()
    cam_inv = cam.with_pose(cam.R @ Rn, (cam.R @ tn + cam.t) / s)
    bg = torch.tensor([0.3, 0.6, 0.9])
    with torch.no_grad():
        a = render(cam, mt, bg)
        b = render(cam_inv, m, bg)
    assert float((a.image - b.image).abs().max()) < 2e-4
    assert float((a.alpha - b.alpha).abs().max()) < 2e-4
    covered = b.alpha > 0.2
    assert torch.allclose(a.depth[covered], s * b.depth[covered], rtol=1e-3)


def test_affine_transform_covariances_are_exact():
    m = random_model(n=100, degree=1, seed=4)
    g = torch.Generator().manual_seed(1)
    F = random_rotation(g).double()
    A = (random_rotation(g).double() @ F.T @ torch.diag(torch.tensor([1.2, 0.8, 1.05], dtype=torch.float64)) @ F)
    t = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    mt = apply_affine(m, A.float(), t.float())
    cov = scales_quats_to_covariance(m.scales.double(), m.quats.double())
    cov_t = scales_quats_to_covariance(mt.scales.double(), mt.quats.double())
    expected = A @ cov @ A.T
    rel = (cov_t - expected).norm(dim=(-2, -1)) / expected.norm(dim=(-2, -1))
    assert float(rel.max()) < 1e-5
    assert torch.allclose(mt.means.double(), m.means.double() @ A.T + t, atol=1e-5)
    assert torch.equal(mt.params["opacities"], m.params["opacities"])


def test_empty_model_round_trip(tmp_path):
    """A stage may legitimately write no Gaussians (e.g. an empty remained.ply)."""
    for degree in (0, 3):
        path = tmp_path / f"empty{degree}.ply"
        GaussianModel(degree).save_ply(path)
        m = GaussianModel.from_ply(path)
        assert len(m) == 0 and m.max_sh_degree == degree
