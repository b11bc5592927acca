"""Rotations and exact Gaussian transforms (utils/geometry.py), tested by synthetic round trips."""

from __future__ import annotations

import math

import pytest
import torch

from scene.gaussian_model import GaussianModel
from utils.geometry import (
    anisotropic_scale_transform,
    apply_affine,
    apply_anisotropic_scale,
    apply_similarity,
    axis_angle_to_rotmat,
    covariance_to_scales_quats,
    decompose_similarity,
    gaussian_covariances,
    polar_rotation,
    quat_multiply,
    quat_to_rotmat,
    random_rotation,
    rotation_angle_deg,
    rotmat_to_quat,
    scales_quats_to_covariance,
    similarity_matrix,
    transform_gaussians,
)
from utils.sh import eval_sh, rotate_sh


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(n: int, seed: int, kind: str = "aniso", degree: int = 3, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random raw Gaussian parameters; ``kind`` = aniso | iso | two_equal | mixed."""
    g = _gen(seed)
    k = (degree + 1) ** 2
    log_s = torch.rand(n, 3, generator=g, dtype=torch.float64) * 4.0 - 4.0
    if kind == "iso":
        log_s = log_s[:, :1].repeat(1, 3)
    elif kind == "two_equal":
        log_s[:, 2] = log_s[:, 0]
    elif kind == "mixed":
        log_s[0::3, 1:] = log_s[0::3, :1]
        log_s[1::3, 2] = log_s[1::3, 1]
    return {
        "means": (torch.randn(n, 3, generator=g, dtype=torch.float64) * 2.0).to(dtype),
        "sh0": torch.randn(n, 1, 3, generator=g, dtype=torch.float64).to(dtype),
        "shN": torch.randn(n, k - 1, 3, generator=g, dtype=torch.float64).to(dtype),
        "opacities": torch.randn(n, generator=g, dtype=torch.float64).to(dtype),
        "scales": log_s.to(dtype),
        # unnormalised, about half with w < 0
        "quats": (torch.randn(n, 4, generator=g, dtype=torch.float64) * 1.7).to(dtype),
    }


def _general_A(seed: int, distortion: float = 0.3, global_scale: float = 1.7) -> torch.Tensor:
    """rotation @ per-axis scale (factors in 1 +- distortion) in a random frame, times a global scale; float64."""
    g = _gen(seed)
    R = random_rotation(g, dtype=torch.float64)
    frame = random_rotation(g, dtype=torch.float64)
    f = 1.0 + distortion * (2.0 * torch.rand(3, generator=g, dtype=torch.float64) - 1.0)
    return global_scale * R @ frame.T @ torch.diag(f) @ frame


def _rel_cov_err(params_out: dict, params_in: dict, A: torch.Tensor) -> torch.Tensor:
    """Per-Gaussian ||Sigma_out - A Sigma_in A^T||_F / ||A Sigma_in A^T||_F (float64)."""
    A = A.to(torch.float64)
    target = A @ gaussian_covariances(params_in) @ A.T
    got = gaussian_covariances(params_out)
    return torch.linalg.matrix_norm(got - target) / torch.linalg.matrix_norm(target)


def _quat_close(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Max distance between unit quaternions up to sign."""
    a = torch.nn.functional.normalize(q1.double(), dim=-1)
    b = torch.nn.functional.normalize(q2.double(), dim=-1)
    return torch.minimum((a - b).norm(dim=-1), (a + b).norm(dim=-1)).max()


# --------------------------------------------------------------------------------------------
# Quaternions and rotations
# --------------------------------------------------------------------------------------------
def test_quat_to_rotmat_known_rotation_and_orthogonality():
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=torch.float64)  # 90 deg about z
    R = quat_to_rotmat(q * 3.0)  # unnormalised input
    torch.testing.assert_close(R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    qs = torch.randn(2, 50, 4, generator=_gen(0), dtype=torch.float64)
    Rs = quat_to_rotmat(qs)
    assert Rs.shape == (2, 50, 3, 3)
    torch.testing.assert_close(Rs @ Rs.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(2, 50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(Rs), torch.ones(2, 50, dtype=torch.float64))
    # q and -q are the same rotation
    torch.testing.assert_close(quat_to_rotmat(-qs), Rs)


def test_quat_multiply_composes_rotations():
    g = _gen(1)
    q1 = torch.randn(100, 4, generator=g, dtype=torch.float64)
    q2 = torch.randn(100, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(q1, q2)), quat_to_rotmat(q1) @ quat_to_rotmat(q2))
    torch.testing.assert_close(quat_multiply(q1, q2).norm(dim=-1), q1.norm(dim=-1) * q2.norm(dim=-1))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_rotmat_to_quat_round_trip_random_including_negative_w(dtype, tol):
    q = torch.randn(2000, 4, generator=_gen(2), dtype=torch.float64)
    assert (q[:, 0] < 0).sum() > 500
    qn = torch.nn.functional.normalize(q, dim=-1)
    expected = torch.where(qn[:, :1] < 0, -qn, qn)
    got = rotmat_to_quat(quat_to_rotmat(q).to(dtype))
    assert got.dtype == dtype
    assert (got[:, 0] >= 0).all()
    assert float((got.double() - expected).abs().max()) < tol


def test_rotmat_to_quat_near_180_degrees():
    g = _gen(3)
    axes = torch.cat(
        [torch.eye(3, dtype=torch.float64), torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 1e-3, -1.0]], dtype=torch.float64),
         torch.randn(20, 3, generator=g, dtype=torch.float64)]
    )
    axes = torch.nn.functional.normalize(axes, dim=-1)
    for angle in (math.pi, math.pi - 1e-7, math.pi - 1e-4, math.pi - 1e-2):
        R = axis_angle_to_rotmat(axes, torch.full((len(axes),), angle, dtype=torch.float64))
        q = rotmat_to_quat(R)
        assert (q[:, 0] >= 0).all()
        torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q), dtype=torch.float64))
        torch.testing.assert_close(quat_to_rotmat(q), R, rtol=0, atol=1e-12)
        # the axis is recovered (up to sign at exactly 180 degrees)
        cos_axis = torch.nn.functional.cosine_similarity(q[:, 1:], axes, dim=-1).abs()
        torch.testing.assert_close(cos_axis, torch.ones_like(cos_axis))
        q32 = rotmat_to_quat(R.float())
        assert float((quat_to_rotmat(q32).double() - R).abs().max()) < 1e-6


def test_rotmat_to_quat_identity_and_small_angles():
    q = rotmat_to_quat(torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=0)
    R = axis_angle_to_rotmat(torch.tensor([1e-9, -2e-9, 3e-9], dtype=torch.float64))
    torch.testing.assert_close(rotmat_to_quat(R), torch.tensor([1.0, 0.5e-9, -1e-9, 1.5e-9], dtype=torch.float64), rtol=1e-6, atol=1e-18)


def test_axis_angle_matches_matrix_exponential_and_is_smooth_at_zero():
    g = _gen(4)
    v = torch.randn(50, 3, generator=g, dtype=torch.float64) * 2.0
    K = torch.zeros(50, 3, 3, dtype=torch.float64)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    K = K - K.transpose(-1, -2)
    torch.testing.assert_close(axis_angle_to_rotmat(v), torch.linalg.matrix_exp(K))
    # axis + angle form
    theta = v.norm(dim=-1)
    torch.testing.assert_close(axis_angle_to_rotmat(v * 5.0, theta), axis_angle_to_rotmat(v))
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R0 = axis_angle_to_rotmat(zero)
    torch.testing.assert_close(R0, torch.eye(3, dtype=torch.float64), rtol=0, atol=0)
    (R0 * torch.randn(3, 3, generator=g, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_random_rotation_is_proper_reproducible_and_uniform():
    R = random_rotation(_gen(5), batch_shape=(4000,), dtype=torch.float64)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(4000, 3, 3))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(4000, dtype=torch.float64))
    torch.testing.assert_close(random_rotation(_gen(5), batch_shape=(4000,), dtype=torch.float64), R, rtol=0, atol=0)
    # Haar measure: E[R] = 0 and E[trace] = 0 (std of a mean entry ~ 1/sqrt(3 * 4000) ~ 0.009)
    assert float(R.mean(0).abs().max()) < 0.05
    assert random_rotation().shape == (3, 3) and random_rotation().dtype == torch.float32


def test_rotation_angle_deg_known_angles():
    g = _gen(6)
    axis = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
    base = random_rotation(g, dtype=torch.float64)
    for deg in (0.0, 1e-6, 0.5, 37.0, 90.0, 179.9999, 180.0):
        Rd = axis_angle_to_rotmat(axis, torch.tensor(math.radians(deg), dtype=torch.float64))
        got = float(rotation_angle_deg(base, base @ Rd))
        assert got == pytest.approx(deg, abs=1e-9), deg
        assert float(rotation_angle_deg(base @ Rd, base)) == pytest.approx(deg, abs=1e-9)
    batch = random_rotation(g, batch_shape=(7,), dtype=torch.float64)
    assert rotation_angle_deg(batch, batch).abs().max() < 1e-9


def test_polar_rotation():
    A = _general_A(7) @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    U = polar_rotation(A)
    P = U.T @ A
    torch.testing.assert_close(U.T @ U, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(P, P.T)
    assert (torch.linalg.eigvalsh(P) > 0).all()
    assert float(torch.linalg.det(U)) == pytest.approx(-1.0)


# --------------------------------------------------------------------------------------------
# Covariances
# --------------------------------------------------------------------------------------------
def test_scales_quats_to_covariance_definition():
    g = _gen(8)
    s = torch.rand(20, 3, generator=g, dtype=torch.float64) + 0.1
    q = torch.randn(20, 4, generator=g, dtype=torch.float64)
    R = quat_to_rotmat(q)
    expected = torch.stack([R[i] @ torch.diag(s[i] ** 2) @ R[i].T for i in range(20)])
    torch.testing.assert_close(scales_quats_to_covariance(s, q), expected)


@pytest.mark.parametrize("kind", ["aniso", "iso", "two_equal"])
def test_covariance_to_scales_quats_round_trip(kind):
    p = _params(300, 9, kind, dtype=torch.float64)
    cov = gaussian_covariances(p)
    s, q = covariance_to_scales_quats(cov)
    assert (q[:, 0] >= 0).all()
    assert (torch.linalg.det(quat_to_rotmat(q)) > 0).all()
    torch.testing.assert_close(scales_quats_to_covariance(s, q), cov, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(s.sort(-1).values, torch.exp(p["scales"]).sort(-1).values, rtol=1e-8, atol=0)
    # float32 input keeps its dtype
    s32, q32 = covariance_to_scales_quats(cov.float())
    assert s32.dtype == torch.float32 and q32.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Similarity matrices
# --------------------------------------------------------------------------------------------
def test_similarity_matrix_round_trip_and_errors():
    g = _gen(10)
    R = random_rotation(g, dtype=torch.float64)
    t = torch.randn(3, generator=g, dtype=torch.float64)
    M = similarity_matrix(R, t, 2.5)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    xh = torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close((xh @ M.T)[:, :3], 2.5 * x @ R.T + t)
    R2, t2, s2 = decompose_similarity(M)
    torch.testing.assert_close(R2, R)
    torch.testing.assert_close(t2, t)
    assert s2 == pytest.approx(2.5, rel=1e-12)
    R3, t3, s3 = decompose_similarity(M[:3].float())
    assert R3.dtype == torch.float32 and s3 == pytest.approx(2.5, rel=1e-6)
    with pytest.raises(ValueError, match="det"):
        decompose_similarity(similarity_matrix(-R, t, 1.0))
    sheared = M.clone()
    sheared[0, 1] += 0.1
    with pytest.raises(ValueError, match="not a similarity"):
        decompose_similarity(sheared)
    bad_row = M.clone()
    bad_row[3, 0] = 1.0
    with pytest.raises(ValueError, match="bottom row"):
        decompose_similarity(bad_row)
    with pytest.raises(ValueError, match="shape"):
        similarity_matrix(torch.eye(4), t, 1.0)


# --------------------------------------------------------------------------------------------
# Gaussian transforms
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["aniso", "iso", "two_equal", "mixed"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_general_transform_covariance_is_exact(kind, seed):
    p = _params(500, 20 + seed, kind)
    A = _general_A(30 + seed)
    t = torch.tensor([0.3, -1.2, 4.0])
    out = transform_gaussians(p, A, t)
    for name in p:
        assert out[name].dtype == p[name].dtype and out[name].shape == p[name].shape
    assert float(_rel_cov_err(out, p, A).max()) < 1e-5
    expected_means = p["means"].double() @ A.T + t.double()
    torch.testing.assert_close(out["means"], expected_means.float())
    torch.testing.assert_close(out["opacities"], p["opacities"], rtol=0, atol=0)
    torch.testing.assert_close(out["sh0"], p["sh0"], rtol=0, atol=0)
    # SH follow the rotation of the polar decomposition
    sh = rotate_sh(torch.cat([p["sh0"], p["shN"]], 1), polar_rotation(A))
    torch.testing.assert_close(out["shN"], sh[:, 1:], rtol=0, atol=1e-6)
    # quaternion norms (raw, unnormalised) are kept
    torch.testing.assert_close(out["quats"].norm(dim=-1), p["quats"].norm(dim=-1))


def test_general_transform_handles_reflections_and_extreme_anisotropy():
    p = _params(300, 40, "aniso")
    p["scales"][:100, 2] = -14.0  # nearly flat Gaussians
    A = _general_A(41) @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    out = transform_gaussians(p, A, torch.zeros(3))
    assert float(_rel_cov_err(out, p, A).max()) < 1e-5
    # the flat axis stays flat: the smallest new scale matches the smallest singular value of A R S
    M = A @ quat_to_rotmat(p["quats"].double()) * torch.exp(p["scales"].double()).unsqueeze(-2)
    sv = torch.linalg.svdvals(M)
    torch.testing.assert_close(out["scales"].double().sort(-1).values, torch.log(sv).sort(-1).values, rtol=0, atol=1e-5)


def test_similarity_fast_path_equals_eigen_path():
    p = _params(400, 50, "aniso")
    g = _gen(51)
    R = random_rotation(g, dtype=torch.float64)
    A = 0.37 * R
    t = torch.randn(3, generator=g)
    fast = transform_gaussians(p, A, t, path="similarity")
    slow = transform_gaussians(p, A, t, path="general")
    auto = transform_gaussians(p, A, t)
    for name in p:
        torch.testing.assert_close(auto[name], fast[name], rtol=0, atol=0)
    assert float(_rel_cov_err(fast, p, A).max()) < 1e-5
    assert float(_rel_cov_err(slow, p, A).max()) < 1e-5
    torch.testing.assert_close(fast["means"], slow["means"], rtol=0, atol=0)
    torch.testing.assert_close(fast["shN"], slow["shN"], rtol=0, atol=1e-6)
    # the general path keeps each Gaussian's own axes, so even the raw parameters agree
    torch.testing.assert_close(fast["scales"], slow["scales"], rtol=0, atol=1e-5)
    assert float(_quat_close(fast["quats"], slow["quats"])) < 1e-5
    # the fast path is the closed form: log-scale + log s, q' = q_R (x) q
    torch.testing.assert_close(fast["scales"], p["scales"] + math.log(0.37))
    expected_q = quat_multiply(rotmat_to_quat(R), p["quats"].double()).float()
    torch.testing.assert_close(fast["quats"], expected_q)
    # and it only applies to similarities
    with pytest.raises(ValueError, match="not a similarity"):
        transform_gaussians(p, _general_A(52), t, path="similarity")
    general = transform_gaussians(p, _general_A(52), t)
    forced = transform_gaussians(p, _general_A(52), t, path="general")
    for name in p:
        torch.testing.assert_close(general[name], forced[name], rtol=0, atol=0)


def test_similarity_with_reflection_is_exact():
    p = _params(200, 53, "aniso")
    A = 2.0 * torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)) @ random_rotation(_gen(54), dtype=torch.float64)
    fast = transform_gaussians(p, A, torch.zeros(3), path="similarity")
    assert float(_rel_cov_err(fast, p, A).max()) < 1e-5
    # colour: transformed field at A d / |A d| equals the original at d
    d = torch.randn(200, 3, generator=_gen(55))
    before = eval_sh(3, torch.cat([p["sh0"], p["shN"]], 1), d)
    after = eval_sh(3, torch.cat([fast["sh0"], fast["shN"]], 1), d @ A.float().T)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_transformed_colour_field_follows_the_rotation():
    p = _params(300, 56, "aniso")
    g = _gen(57)
    R = random_rotation(g, dtype=torch.float64)
    out = transform_gaussians(p, 3.0 * R, torch.randn(3, generator=g))
    d = torch.randn(300, 3, generator=g)
    before = eval_sh(3, torch.cat([p["sh0"], p["shN"]], 1), d)
    after = eval_sh(3, torch.cat([out["sh0"], out["shN"]], 1), d @ R.float().T)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    kept = transform_gaussians(p, 3.0 * R, torch.zeros(3), rotate_sh=False)
    torch.testing.assert_close(kept["shN"], p["shN"], rtol=0, atol=0)


def test_inverse_similarity_restores_parameters():
    p = _params(300, 58, "aniso")
    g = _gen(59)
    R = random_rotation(g, dtype=torch.float64)
    s, t = 4.2, torch.randn(3, generator=g, dtype=torch.float64)
    out = transform_gaussians(p, s * R, t)
    back = transform_gaussians(out, R.T / s, -(R.T @ t) / s)
    torch.testing.assert_close(back["means"], p["means"], rtol=0, atol=2e-6)
    torch.testing.assert_close(back["scales"], p["scales"], rtol=0, atol=2e-6)
    assert float(_quat_close(back["quats"], p["quats"])) < 1e-6
    torch.testing.assert_close(back["quats"].norm(dim=-1), p["quats"].norm(dim=-1))
    torch.testing.assert_close(back["shN"], p["shN"], rtol=0, atol=1e-5)
    torch.testing.assert_close(back["opacities"], p["opacities"], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["aniso", "mixed"])
def test_inverse_general_transform_restores_the_gaussians(kind):
    p = _params(300, 60, kind)
    A = _general_A(61)
    t = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    out = transform_gaussians(p, A, t)
    Ainv = torch.linalg.inv(A)
    back = transform_gaussians(out, Ainv, -Ainv @ t)
    torch.testing.assert_close(back["means"], p["means"], rtol=0, atol=5e-6)
    assert float(_rel_cov_err(back, p, torch.eye(3)).max()) < 2e-5
    torch.testing.assert_close(back["scales"].sort(-1).values, p["scales"].sort(-1).values, rtol=0, atol=1e-5)
    # polar rotation of A^-1 is the inverse of A's, so colours come back too
    torch.testing.assert_close(back["shN"], p["shN"], rtol=0, atol=1e-5)
    if kind == "aniso":  # distinct scales: axes are matched through both transforms
        torch.testing.assert_close(back["scales"], p["scales"], rtol=0, atol=1e-5)
        assert float(_quat_close(back["quats"], p["quats"])) < 1e-4


def test_transform_keeps_float64_and_handles_empty_and_degree0():
    p = _params(50, 62, "aniso", degree=2, dtype=torch.float64)
    A = _general_A(63)
    out = transform_gaussians(p, A, torch.zeros(3))
    assert all(out[k].dtype == torch.float64 for k in p)
    assert float(_rel_cov_err(out, p, A).max()) < 1e-12
    empty = {k: v[:0] for k, v in _params(5, 64).items()}
    out0 = transform_gaussians(empty, A, torch.zeros(3))
    assert all(out0[k].shape[0] == 0 for k in empty)
    d0 = _params(20, 65, "aniso", degree=0)
    out_d0 = transform_gaussians(d0, A, torch.zeros(3))
    assert out_d0["shN"].shape == (20, 0, 3)
    torch.testing.assert_close(out_d0["sh0"], d0["sh0"], rtol=0, atol=0)


def test_transform_rejects_bad_input():
    p = _params(10, 66)
    with pytest.raises(ValueError, match="singular"):
        transform_gaussians(p, torch.diag(torch.tensor([1.0, 1.0, 0.0])), torch.zeros(3))
    with pytest.raises(ValueError, match="missing quats"):
        transform_gaussians({k: v for k, v in p.items() if k != "quats"}, torch.eye(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"A must have shape \[3, 3\]"):
        transform_gaussians(p, torch.eye(4), torch.zeros(3))
    with pytest.raises(ValueError, match="t must be finite"):
        transform_gaussians(p, torch.eye(3), torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="path"):
        transform_gaussians(p, torch.eye(3), torch.zeros(3), path="fast")


# --------------------------------------------------------------------------------------------
# GaussianModel wrappers and PLY
# --------------------------------------------------------------------------------------------
def test_apply_similarity_and_affine_wrappers():
    model = GaussianModel(3, _params(100, 70))
    before = model.raw()
    before = {k: v.clone() for k, v in before.items()}
    g = _gen(71)
    R = random_rotation(g, dtype=torch.float64)
    t = torch.randn(3, generator=g, dtype=torch.float64)
    new = apply_similarity(model, R, t, 1.5)
    assert new is not model and isinstance(new, GaussianModel)
    for k in before:  # the input model is untouched
        torch.testing.assert_close(model.params[k].detach(), before[k], rtol=0, atol=0)
    expected = transform_gaussians(before, 1.5 * R, t)
    for k in before:
        torch.testing.assert_close(new.params[k].detach(), expected[k], rtol=0, atol=0)
    A = _general_A(72)
    same = apply_affine(model, A, t.numpy(), inplace=True)
    assert same is model
    assert float(_rel_cov_err(model.raw(), before, A).max()) < 1e-5
    with pytest.raises(ValueError, match="positive"):
        apply_similarity(model, R, t, -1.0)


def test_apply_anisotropic_scale_fixes_the_centre_and_scales_along_the_frame():
    g = _gen(73)
    frame = random_rotation(g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    scale = torch.tensor([0.7, 1.3, 1.1], dtype=torch.float64)
    A, t = anisotropic_scale_transform(scale, frame, c)
    torch.testing.assert_close(A @ c + t, c)
    for k in range(3):  # row k of the frame is scaled by scale[k]
        torch.testing.assert_close(A @ (c + frame[k]) + t, c + scale[k] * frame[k])
    A0, t0 = anisotropic_scale_transform([2.0, 3.0, 4.0])
    torch.testing.assert_close(A0, torch.diag(torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)))
    torch.testing.assert_close(t0, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        anisotropic_scale_transform([1.0, 0.0, 1.0])

    p = _params(200, 74, "mixed")
    model = GaussianModel(3, p)
    out = apply_anisotropic_scale(model, scale, frame, c)
    assert float(_rel_cov_err(out.raw(), p, A).max()) < 1e-5
    torch.testing.assert_close(out.means.detach(), (p["means"].double() @ A.T + t).float())


@pytest.mark.parametrize("degree", [0, 3])
def test_ply_round_trip_after_transform(tmp_path, degree):
    pytest.importorskip("plyfile")
    model = GaussianModel(degree, _params(64, 75, "mixed", degree=degree))
    A = _general_A(76)
    out = apply_affine(model, A, [0.1, 0.2, 0.3])
    path = tmp_path / "transformed.ply"
    out.save_ply(path)
    loaded = GaussianModel.from_ply(path)
    assert loaded.max_sh_degree == degree
    for k in out.params:
        torch.testing.assert_close(loaded.params[k].detach(), out.params[k].detach(), rtol=0, atol=0)
    assert float(_rel_cov_err(loaded.raw(), model.raw(), A).max()) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transform_on_cuda_matches_cpu():
    p = _params(1000, 77, "mixed")
    A = _general_A(78)
    t = torch.tensor([0.5, 0.0, -0.5])
    cpu = transform_gaussians(p, A, t)
    gpu = transform_gaussians({k: v.cuda() for k, v in p.items()}, A, t)
    assert gpu["means"].device.type == "cuda"
    assert float(_rel_cov_err({k: v.cpu() for k, v in gpu.items()}, p, A).max()) < 1e-5
    torch.testing.assert_close(gpu["means"].cpu(), cpu["means"])
    torch.testing.assert_close(gpu["shN"].cpu(), cpu["shN"], rtol=1e-5, atol=1e-5)
