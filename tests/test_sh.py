"""Spherical harmonics: basis convention, evaluation and rotation (utils/sh.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from utils.geometry import random_rotation
from utils.sh import C0, C1, C2, C3, C4, eval_sh, num_sh_bases, rotate_sh, sh_basis, sh_rotation_matrices


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _real_sh_scipy(l: int, m: int, dirs: np.ndarray) -> np.ndarray:
    """Real SH with the Condon-Shortley phase from scipy's complex harmonics (float64)."""
    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    theta = np.arccos(np.clip(d[:, 2], -1.0, 1.0))
    phi = np.arctan2(d[:, 1], d[:, 0])
    y = sph_harm_y(l, abs(m), theta, phi)
    if m < 0:
        return math.sqrt(2.0) * y.imag
    if m > 0:
        return math.sqrt(2.0) * y.real
    return y.real


def _eval_sh_3dgs_float64(deg: int, sh: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """The 3DGS formula written term by term, float64. sh: [N, K, 3], dirs: [N, 3] unit."""
    x, y, z = (dirs[:, i : i + 1] for i in range(3))
    res = C0 * sh[:, 0]
    if deg > 0:
        res = res - C1 * y * sh[:, 1] + C1 * z * sh[:, 2] - C1 * x * sh[:, 3]
        if deg > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            res = (
                res
                + C2[0] * xy * sh[:, 4]
                + C2[1] * yz * sh[:, 5]
                + C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
                + C2[3] * xz * sh[:, 7]
                + C2[4] * (xx - yy) * sh[:, 8]
            )
            if deg > 2:
                res = (
                    res
                    + C3[0] * y * (3 * xx - yy) * sh[:, 9]
                    + C3[1] * xy * z * sh[:, 10]
                    + C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                    + C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                    + C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                    + C3[5] * z * (xx - yy) * sh[:, 14]
                    + C3[6] * x * (xx - 3 * yy) * sh[:, 15]
                )
    return res


def test_constants_are_the_normalisation_factors():
    pi = math.pi
    assert C0 == pytest.approx(0.5 * math.sqrt(1 / pi), abs=1e-15)
    assert C1 == pytest.approx(math.sqrt(3 / (4 * pi)), abs=1e-15)
    assert C2[0] == pytest.approx(0.5 * math.sqrt(15 / pi), abs=1e-15)
    assert C2[2] == pytest.approx(0.25 * math.sqrt(5 / pi), abs=1e-15)
    assert C2[4] == pytest.approx(0.25 * math.sqrt(15 / pi), abs=1e-15)
    assert C3[0] == pytest.approx(-0.25 * math.sqrt(35 / (2 * pi)), abs=1e-15)
    assert C4[0] == pytest.approx(0.75 * math.sqrt(35 / pi), abs=1e-15)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_basis_matches_scipy_condon_shortley_real_harmonics(degree):
    dirs = torch.randn(300, 3, generator=_gen(1), dtype=torch.float64) * 3.0  # unnormalised
    ours = sh_basis(degree, dirs).numpy()
    assert ours.shape == (300, num_sh_bases(degree))
    ref = np.stack(
        [_real_sh_scipy(l, m, dirs.numpy()) for l in range(degree + 1) for m in range(-l, l + 1)], axis=1
    )
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_basis_is_orthonormal_on_the_sphere():
    # Gauss-Legendre in z times uniform azimuth: exact for the degree-8 products of degree-4 harmonics.
    z, wz = np.polynomial.legendre.leggauss(12)
    nphi = 24
    phi = 2 * np.pi * np.arange(nphi) / nphi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz**2)
    dirs = np.stack([r * np.cos(pp), r * np.sin(pp), zz], -1).reshape(-1, 3)
    w = np.repeat(wz, nphi) * (2 * np.pi / nphi)
    Y = sh_basis(4, torch.from_numpy(dirs)).numpy()
    gram = (Y * w[:, None]).T @ Y
    np.testing.assert_allclose(gram, np.eye(25), atol=1e-12)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_eval_sh_matches_3dgs_formula(degree):
    g = _gen(2 + degree)
    n = 500
    sh = torch.randn(n, 16, 3, generator=g)
    dirs = torch.randn(n, 3, generator=g) * 5.0
    ours = eval_sh(degree, sh, dirs)
    assert ours.dtype == torch.float32 and ours.shape == (n, 3)
    d64 = dirs.double().numpy()
    d64 = d64 / np.linalg.norm(d64, axis=-1, keepdims=True)
    ref = _eval_sh_3dgs_float64(degree, sh.double().numpy(), d64)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-5, rtol=1e-5)


def test_eval_sh_uses_only_the_leading_coefficients_and_broadcasts():
    g = _gen(7)
    sh = torch.randn(4, 25, 3, generator=g, dtype=torch.float64)
    dirs = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    full = eval_sh(2, sh, dirs)  # sh [4,25,3] broadcast against dirs [6,4,3]
    assert full.shape == (6, 4, 3)
    trimmed = sh.clone()
    trimmed[:, 9:] = 1e3  # coefficients above degree 2 must not matter
    torch.testing.assert_close(eval_sh(2, trimmed, dirs), full)
    # degree 0 is the constant C0 * sh0
    torch.testing.assert_close(eval_sh(0, sh, dirs), (C0 * sh[:, 0]).expand(6, 4, 3))


def test_eval_sh_is_differentiable():
    g = _gen(8)
    sh = torch.randn(3, 25, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dirs = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: eval_sh(4, a, b), (sh, dirs))


def test_eval_sh_rejects_bad_input():
    with pytest.raises(ValueError, match="degree"):
        eval_sh(5, torch.zeros(1, 36, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="needs 16"):
        eval_sh(3, torch.zeros(1, 9, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        sh_basis(1, torch.ones(2, 4))


def _max_field_error(sh: torch.Tensor, R: torch.Tensor, degree: int, seed: int) -> float:
    dirs = torch.randn(sh.shape[0], 3, generator=_gen(seed), dtype=sh.dtype)
    rotated = rotate_sh(sh, R)
    a = eval_sh(degree, rotated, dirs @ R.T.to(sh.dtype))  # at R d
    b = eval_sh(degree, sh, dirs)  # at d
    return float((a - b).abs().max())


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_rotate_sh_rotates_the_field(degree):
    g = _gen(10 + degree)
    k = num_sh_bases(degree)
    for trial in range(3):
        R = random_rotation(g)
        sh32 = torch.randn(400, k, 3, generator=g)
        assert _max_field_error(sh32, R, degree, 100 + trial) < 1e-5
        R64 = random_rotation(g, dtype=torch.float64)  # exactly orthogonal in float64
        assert _max_field_error(sh32.double(), R64, degree, 200 + trial) < 1e-12


def test_rotate_sh_degree0_unchanged_and_identity():
    g = _gen(20)
    sh0 = torch.randn(10, 1, 3, generator=g)
    torch.testing.assert_close(rotate_sh(sh0, random_rotation(g)), sh0, rtol=0, atol=0)
    sh = torch.randn(10, 16, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rotate_sh(sh, torch.eye(3)), sh, rtol=0, atol=1e-14)
    # the DC coefficient never changes
    torch.testing.assert_close(rotate_sh(sh, random_rotation(g))[:, 0], sh[:, 0], rtol=0, atol=1e-14)


def test_rotate_sh_composition_and_inverse():
    g = _gen(21)
    sh = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    R1, R2 = random_rotation(g, dtype=torch.float64), random_rotation(g, dtype=torch.float64)
    torch.testing.assert_close(rotate_sh(rotate_sh(sh, R1), R2), rotate_sh(sh, R2 @ R1), rtol=0, atol=1e-12)
    torch.testing.assert_close(rotate_sh(rotate_sh(sh, R1), R1.T), sh, rtol=0, atol=1e-12)
    # energy per degree is preserved (the per-degree matrices are orthogonal)
    for D in sh_rotation_matrices(R1, 4):
        np.testing.assert_allclose(D @ D.T, np.eye(D.shape[0]), atol=1e-12)


def test_rotate_sh_about_z_by_90_degrees_known_values():
    # A field equal to x (coefficient 3 = -1/C1) becomes y after a +90 degree turn about z.
    Rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    sh = torch.zeros(1, 4, 3, dtype=torch.float64)
    sh[0, 3] = -1.0 / C1
    out = rotate_sh(sh, Rz)
    expected = torch.zeros_like(sh)
    expected[0, 1] = -1.0 / C1  # the y coefficient
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_rotate_sh_handles_reflections():
    g = _gen(22)
    sh = torch.randn(30, 16, 3, generator=g, dtype=torch.float64)
    out = rotate_sh(sh, -torch.eye(3, dtype=torch.float64))
    sign = torch.tensor([(-1.0) ** l for l in range(4) for _ in range(2 * l + 1)], dtype=torch.float64)
    torch.testing.assert_close(out, sh * sign[None, :, None], rtol=0, atol=1e-13)
    mirror = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)) @ random_rotation(g, dtype=torch.float64)
    assert _max_field_error(sh, mirror, 3, 5) < 1e-12


def test_rotate_sh_is_differentiable_in_the_coefficients():
    g = _gen(23)
    sh = torch.randn(5, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    R = random_rotation(g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: rotate_sh(a, R), (sh,))


def test_rotate_sh_rejects_bad_input():
    with pytest.raises(ValueError, match="not \\(d\\+1\\)\\^2"):
        rotate_sh(torch.zeros(2, 5, 3), torch.eye(3))
    with pytest.raises(ValueError, match="orthogonal"):
        rotate_sh(torch.zeros(2, 4, 3), 2 * torch.eye(3))
    with pytest.raises(ValueError, match="shape"):
        rotate_sh(torch.zeros(2, 4, 3), torch.eye(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rotate_and_eval_on_cuda():
    g = _gen(30)
    sh = torch.randn(100, 16, 3, generator=g)
    R = random_rotation(g)
    dirs = torch.randn(100, 3, generator=g)
    out = rotate_sh(sh.cuda(), R.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), rotate_sh(sh, R), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eval_sh(3, sh.cuda(), dirs.cuda()).cpu(), eval_sh(3, sh, dirs), rtol=1e-5, atol=1e-5)
