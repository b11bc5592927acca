"""Rotations and exact transforms of 3D Gaussians.

Conventions (stated once, used by every function here):

* Quaternions are (w, x, y, z), Hamilton product, and rotate column vectors: ``x' = R(q) x``.
  Inputs need not be unit quaternions (they are normalised); outputs of :func:`rotmat_to_quat`
  are unit with ``w >= 0``.
* Points are column vectors and a map is ``x' = A x + t`` (A: [3, 3], t: [3]); batched points are
  rows, so the code computes ``X @ A.T + t``. A 4x4 matrix holds ``[[A, t], [0, 1]]``.
* A Gaussian has covariance ``Sigma = R S S^T R^T`` with ``R = R(q)`` and ``S = diag(sigma)``; the
  raw parameters of :mod:`scene.gaussian_model` store ``log(sigma)`` and an unnormalised ``q``.
* Everything works on the device of the inputs; decompositions run in float64 and results are
  returned in the dtype of the corresponding input.

:func:`transform_gaussians` applies ``x' = A x + t`` exactly to raw Gaussian parameters: means
``A mu + t``, covariances ``A Sigma A^T`` (re-decomposed into log-scales and a quaternion), SH
colours rotated by the rotation part of A, opacities unchanged.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from utils.sh import rotate_sh as _rotate_sh

if TYPE_CHECKING:  # pragma: no cover
    from scene.gaussian_model import GaussianModel

PARAM_NAMES = ("means", "sh0", "shN", "opacities", "scales", "quats")

#: Default tolerance (max entry of |Q^T Q - I| with Q = A / |det A|^(1/3)) under which a linear map is
#: treated as a similarity by :func:`transform_gaussians` (float32 round-off of a composed sR is ~1e-7).
SIMILARITY_TOL = 1e-6
#: |det A| below this fraction of ||A||_F^3 counts as singular.
SINGULAR_TOL = 1e-12

ArrayLike = Tensor | np.ndarray | Sequence[float] | float


def _as_tensor(x: ArrayLike, shape: tuple[int, ...], name: str, dtype=None, device=None) -> Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real number array, got dtype {t.dtype}")
    t = t.to(dtype=dtype if dtype is not None else (t.dtype if t.is_floating_point() else torch.float32), device=device)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


# --------------------------------------------------------------------------------------------
# Quaternions and rotation matrices
# --------------------------------------------------------------------------------------------
def quat_multiply(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product ``q1 ⊗ q2`` of [..., 4] (w, x, y, z) quaternions (broadcasting).

    ``R(q1 ⊗ q2) = R(q1) R(q2)`` for unit quaternions; norms multiply.
    """
    w1, x1, y1, z1 = q1.unbind(-1)
    w2, x2, y2, z2 = q2.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def quat_to_rotmat(q: Tensor) -> Tensor:
    """[..., 4] quaternions (w, x, y, z; normalised here) -> [..., 3, 3] rotation matrices."""
    if q.shape[-1:] != (4,):
        raise ValueError(f"quaternions must have shape [..., 4], got {tuple(q.shape)}")
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z) with w >= 0.

    Shepperd's method, vectorised: four candidate (unnormalised) quaternions are formed, each
    equal to ``4 q_i q`` for one component i, and the one with the largest ``|q_i|`` is kept, so the
    division is always by a number >= 1 (well conditioned at 180 degrees too). For a matrix
    that is only approximately orthogonal the result is the quaternion of a nearby rotation.
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape [..., 3, 3], got {tuple(R.shape)}")
    m = R.unbind(-1)
    r00, r10, r20 = m[0].unbind(-1)
    r01, r11, r21 = m[1].unbind(-1)
    r02, r12, r22 = m[2].unbind(-1)
    t = torch.stack(
        [1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], dim=-1
    )  # 4 q_i^2
    cands = torch.stack(
        [
            torch.stack([t[..., 0], r21 - r12, r02 - r20, r10 - r01], dim=-1),
            torch.stack([r21 - r12, t[..., 1], r10 + r01, r02 + r20], dim=-1),
            torch.stack([r02 - r20, r10 + r01, t[..., 2], r21 + r12], dim=-1),
            torch.stack([r10 - r01, r02 + r20, r21 + r12, t[..., 3]], dim=-1),
        ],
        dim=-2,
    )  # [..., 4 candidates, 4]
    best = t.argmax(dim=-1, keepdim=True)  # [..., 1]
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape, 4)).squeeze(-2)
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def axis_angle_to_rotmat(axis_angle: Tensor, angle: Optional[Tensor | float] = None) -> Tensor:
    """Rodrigues' rotation.

    Args:
        axis_angle: [..., 3] rotation vector (axis * angle in radians) when ``angle`` is None;
            otherwise an axis (normalised here).
        angle: optional [...] angles in radians (broadcast with the axis).

    Returns:
        [..., 3, 3] rotation matrices (identity for a zero rotation vector; smooth there).
    """
    v = torch.as_tensor(axis_angle)
    if not v.is_floating_point():
        v = v.float()
    if v.shape[-1:] != (3,):
        raise ValueError(f"axis_angle must have shape [..., 3], got {tuple(v.shape)}")
    if angle is not None:
        a = torch.as_tensor(angle, dtype=v.dtype, device=v.device)
        v = torch.nn.functional.normalize(v, dim=-1) * a.unsqueeze(-1)
    theta = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    # sin(theta/2)/theta = 0.5 * sinc(theta / (2 pi)) with torch's normalised sinc: smooth at 0.
    q = torch.cat([torch.cos(theta / 2), v * 0.5 * torch.sinc(theta / (2 * math.pi))], dim=-1)
    return quat_to_rotmat(q)


def random_rotation(
    generator: Optional[torch.Generator] = None,
    batch_shape: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device | str] = None,
) -> Tensor:
    """Uniformly distributed (Haar) random rotations, [*batch_shape, 3, 3].

    Drawn as normalised Gaussian 4-vectors on the generator's device, then moved to ``device``.
    """
    gdev = generator.device if generator is not None else torch.device("cpu")
    q = torch.randn(*batch_shape, 4, generator=generator, dtype=torch.float64, device=gdev)
    return quat_to_rotmat(q).to(dtype=dtype, device=device if device is not None else gdev)


def rotation_angle_deg(R1: Tensor, R2: Tensor) -> Tensor:
    """Geodesic angle in degrees between rotations [..., 3, 3] (broadcasting), in [0, 180].

    Uses ``atan2(|vee(R - R^T)| / 2, (tr R - 1) / 2)`` on ``R = R1^T R2``, accurate near 0 and 180.
    """
    R = R1.transpose(-1, -2) @ R2
    cos = (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1) / 2
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = torch.linalg.vector_norm(vee, dim=-1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def polar_rotation(A: Tensor) -> Tensor:
    """The orthogonal factor U of the polar decomposition ``A = U P`` (P symmetric positive).

    [..., 3, 3] -> [..., 3, 3]: the orthogonal matrix nearest to A (Frobenius); ``det U = sign det A``.
    Computed in float64, returned in A's dtype.
    """
    W, _, Vh = torch.linalg.svd(A.to(torch.float64))
    return (W @ Vh).to(A.dtype)


# --------------------------------------------------------------------------------------------
# Covariances
# --------------------------------------------------------------------------------------------
def scales_quats_to_covariance(scales: Tensor, quats: Tensor) -> Tensor:
    """Covariances ``R S S^T R^T``.

    Args:
        scales: [..., 3] standard deviations sigma (ACTIVATED, not log).
        quats: [..., 4] quaternions (w, x, y, z), normalised here.

    Returns:
        [..., 3, 3] covariances.
    """
    M = quat_to_rotmat(quats) * scales.unsqueeze(-2)  # R diag(sigma)
    return M @ M.transpose(-1, -2)


def covariance_to_scales_quats(cov: Tensor) -> tuple[Tensor, Tensor]:
    """Decompose covariances into standard deviations and rotations.

    Symmetric eigendecomposition in float64 (the input is symmetrised first); the eigenvector
    basis is made a proper rotation (det +1). Negative eigenvalues (round-off of a PSD matrix)
    are clamped to 0. Coinciding eigenvalues are fine: any basis of the eigenspace rebuilds the
    same covariance.

    Args:
        cov: [..., 3, 3] symmetric positive semi-definite matrices.

    Returns:
        (scales [..., 3] sigma in ascending order, quats [..., 4] unit, w >= 0), in cov's dtype.
    """
    if cov.shape[-2:] != (3, 3):
        raise ValueError(f"covariances must have shape [..., 3, 3], got {tuple(cov.shape)}")
    c = cov.to(torch.float64)
    c = (c + c.transpose(-1, -2)) / 2
    evals, V = torch.linalg.eigh(c)
    det = torch.linalg.det(V)
    V = torch.cat([V[..., :2], V[..., 2:] * torch.sign(det)[..., None, None]], dim=-1)
    scales = torch.sqrt(evals.clamp_min(0.0))
    return scales.to(cov.dtype), rotmat_to_quat(V).to(cov.dtype)


# --------------------------------------------------------------------------------------------
# Similarities and affine maps
# --------------------------------------------------------------------------------------------
def similarity_matrix(R: ArrayLike, t: ArrayLike, s: ArrayLike = 1.0) -> Tensor:
    """[4, 4] matrix of ``x' = s R x + t`` (dtype/device of R; float32 for non-tensors)."""
    Rt = _as_tensor(R, (3, 3), "R")
    tt = _as_tensor(t, (3,), "t", Rt.dtype, Rt.device)
    st = _as_tensor(s, (), "s", Rt.dtype, Rt.device)
    M = torch.eye(4, dtype=Rt.dtype, device=Rt.device)
    M[:3, :3] = st * Rt
    M[:3, 3] = tt
    return M


def decompose_similarity(M: ArrayLike, tol: float = 1e-5) -> tuple[Tensor, Tensor, float]:
    """Split a [4, 4] (or [3, 4]) similarity ``[[s R, t], [0, 1]]`` into (R [3, 3], t [3], s).

    ``s = det(A)^(1/3)`` and R is the rotation of A's polar decomposition, so a slightly noisy
    matrix gives the nearest similarity.

    Raises:
        ValueError: if ``det A <= 0`` (reflection or singular), if ``|A - s R| / s > tol`` (not a
            similarity), or if a 4x4 bottom row differs from (0, 0, 0, 1) by more than ``tol``.
    """
    Mt = torch.as_tensor(M)
    if not Mt.is_floating_point():
        Mt = Mt.float()
    if tuple(Mt.shape) not in ((4, 4), (3, 4)):
        raise ValueError(f"similarity matrix must have shape [4, 4] or [3, 4], got {list(Mt.shape)}")
    M64 = Mt.to(torch.float64)
    if Mt.shape[0] == 4:
        err = (M64[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64, device=M64.device)).abs().max()
        if err > tol:
            raise ValueError(f"similarity matrix bottom row must be (0, 0, 0, 1), got {Mt[3].tolist()}")
    A = M64[:3, :3]
    det = float(torch.linalg.det(A))
    if not det > 0:
        raise ValueError(f"similarity matrix must have det(A) > 0 (no reflection, not singular), got {det:.6g}")
    s = det ** (1.0 / 3.0)
    R = polar_rotation(A)
    resid = float((A - s * R).abs().max()) / s
    if resid > tol:
        raise ValueError(f"matrix is not a similarity: max |A - sR| / s = {resid:.3g} > tol {tol:g}")
    return R.to(Mt.dtype), M64[:3, 3].to(Mt.dtype), s


def anisotropic_scale_transform(
    scale: ArrayLike, frame: Optional[ArrayLike] = None, center: Optional[ArrayLike] = None
) -> tuple[Tensor, Tensor]:
    """(A, t) of ``x' = c + R_o^T diag(scale) R_o (x - c)``: per-axis scaling along the rows of ``R_o``.

    Args:
        scale: [3] positive factors along the axes of the frame.
        frame: [3, 3] rotation R_o whose ROWS are the scaling axes in world coordinates (identity if None).
        center: [3] fixed point c (the origin if None).

    Returns:
        (A [3, 3], t [3]) in float64 (on the device of ``scale`` when it is a tensor).
    """
    st = _as_tensor(scale, (3,), "scale", torch.float64)
    if not (st > 0).all():
        raise ValueError(f"scale factors must be positive, got {st.tolist()}")
    Ro = torch.eye(3, dtype=torch.float64, device=st.device) if frame is None else _as_tensor(frame, (3, 3), "frame", torch.float64, st.device)
    c = torch.zeros(3, dtype=torch.float64, device=st.device) if center is None else _as_tensor(center, (3,), "center", torch.float64, st.device)
    A = Ro.T @ torch.diag(st) @ Ro
    return A, c - A @ c


# --------------------------------------------------------------------------------------------
# Gaussians
# --------------------------------------------------------------------------------------------
_PERMS3 = tuple(itertools.permutations(range(3)))


def _match_axes(U: Tensor, s: Tensor, V: Tensor) -> tuple[Tensor, Tensor]:
    """Order and sign the SVD ``M = U diag(s) V^T`` of ``M = A R diag(sigma)`` so that output axis j
    comes from the Gaussian's own axis j wherever that is well defined (V close to a signed
    permutation), and U is a proper rotation. Only U's columns and s are reordered/re-signed, so
    ``U diag(s)^2 U^T`` is unchanged.

    U, V: [N, 3, 3]; s: [N, 3]. Returns (U' [N, 3, 3] with det +1, s' [N, 3]).
    """
    perms = torch.tensor(_PERMS3, device=U.device)  # [6, 3]: perms[p, j] = component for axis j
    Vabs = V.abs()
    score = Vabs[:, torch.arange(3, device=U.device).unsqueeze(0), perms].sum(-1)  # [N, 6]
    P = perms[score.argmax(-1)]  # [N, 3]
    s2 = torch.gather(s, 1, P)
    U2 = torch.gather(U, 2, P.unsqueeze(1).expand(-1, 3, -1))
    vsel = torch.gather(V, 2, P.unsqueeze(-1)).squeeze(-1)  # [N, 3] = V[j, P[j]]
    sign = torch.where(vsel < 0, -1.0, 1.0).to(U.dtype)
    U2 = U2 * sign.unsqueeze(1)
    # det(U2) = -1 happens for reflections (det A < 0) or when V is far from a permutation:
    # flip the least well matched column.
    flip = torch.linalg.det(U2) < 0
    weakest = vsel.abs().argmin(-1)
    col = torch.nn.functional.one_hot(weakest, 3).to(torch.bool) & flip.unsqueeze(-1)
    U2 = torch.where(col.unsqueeze(1), -U2, U2)
    return U2, s2


def _similarity_factor(A: Tensor) -> tuple[float, Tensor, float]:
    """(s, Q, err): ``A = s Q`` with ``s = |det A|^(1/3)`` and err = max |Q^T Q - I| (float64)."""
    s = abs(float(torch.linalg.det(A))) ** (1.0 / 3.0)
    Q = A / s
    err = float((Q.T @ Q - torch.eye(3, dtype=A.dtype, device=A.device)).abs().max())
    return s, Q, err


def transform_gaussians(
    params: dict[str, Tensor],
    A: ArrayLike,
    t: ArrayLike,
    rotate_sh: bool = True,
    *,
    path: Literal["auto", "similarity", "general"] = "auto",
    similarity_tol: float = SIMILARITY_TOL,
) -> dict[str, Tensor]:
    """Apply ``x' = A x + t`` exactly to raw Gaussian parameters.

    * means: ``A mu + t`` (computed in float64).
    * covariances: ``A Sigma A^T``, re-decomposed into log-scales and a quaternion.
      - Similarity path (A = s Q, Q orthogonal): ``log sigma + log s`` and ``q_Q ⊗ q`` (for a
        reflection Q, ``-Q`` is the proper rotation with the same action on covariances).
      - General path: SVD of ``A R(q) diag(sigma) = U diag(sigma') V^T`` in float64, so that
        ``A Sigma A^T = U diag(sigma')^2 U^T`` (the eigendecomposition of the new covariance, computed
        from its square-root factor, which keeps tiny scales accurate); U is made a proper rotation
        and its axes are ordered to follow the Gaussian's own axes where V allows. Exact also when
        scales coincide (isotropic Gaussians): any eigenbasis rebuilds the same covariance.
      The quaternion keeps the norm of the input quaternion (raw quaternions are unnormalised).
    * SH: rotated by the rotation part of A: Q for a similarity, the orthogonal factor U of the
      polar decomposition ``A = U P`` otherwise. View-dependent colour under a non-rigid map is
      thereby APPROXIMATED (a stretched field is not an SH field of the same degree); degree 0 is exact.
    * opacities: unchanged.

    Args:
        params: raw tensors keyed by ``means [N,3], sh0 [N,1,3], shN [N,K-1,3], opacities [N],
            scales [N,3] (log sigma), quats [N,4] (w,x,y,z)``; other keys are passed through.
        A: [3, 3] non-singular linear part. t: [3] translation.
        rotate_sh: rotate the SH coefficients (False leaves colours as they are).
        path: "auto" (similarity path when ``A / |det A|^(1/3)`` is orthogonal within
            ``similarity_tol``), or force "similarity" (raises if A is not one) or "general".
        similarity_tol: tolerance of the similarity test.

    Returns:
        A new dict of tensors, each in the dtype/device of its input. Differentiable with respect
        to the Gaussian parameters (not A) through the similarity path; the general path's SVD has
        no gradient at coinciding scales, so use it under ``torch.no_grad()`` (as the wrappers do).
    """
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params is missing {', '.join(missing)} (expected keys {', '.join(PARAM_NAMES)})")
    if path not in ("auto", "similarity", "general"):
        raise ValueError(f"path must be 'auto', 'similarity' or 'general', got {path!r}")
    means = params["means"]
    dev = means.device
    A64 = _as_tensor(A, (3, 3), "A", torch.float64, dev)
    t64 = _as_tensor(t, (3,), "t", torch.float64, dev)
    det = float(torch.linalg.det(A64))
    if abs(det) <= SINGULAR_TOL * float(torch.linalg.matrix_norm(A64)) ** 3:
        raise ValueError(f"A is singular (det = {det:.3g}); a Gaussian transform needs an invertible A")

    n = means.shape[0]
    if means.shape != (n, 3) or params["scales"].shape != (n, 3) or params["quats"].shape != (n, 4):
        raise ValueError(
            "params must hold means [N,3], scales [N,3], quats [N,4]; got "
            f"{list(means.shape)}, {list(params['scales'].shape)}, {list(params['quats'].shape)}"
        )

    s, Q, err = _similarity_factor(A64)
    if path == "similarity" and err > similarity_tol:
        raise ValueError(f"A is not a similarity: max |Q^T Q - I| = {err:.3g} > {similarity_tol:g} for Q = A/|det A|^(1/3)")
    use_similarity = path == "similarity" or (path == "auto" and err <= similarity_tol)

    out = dict(params)
    out["means"] = (means.to(torch.float64) @ A64.T + t64).to(means.dtype)
    log_scales = params["scales"].to(torch.float64)
    quats = params["quats"].to(torch.float64)
    qnorm = torch.linalg.vector_norm(quats, dim=-1, keepdim=True)
    if use_similarity:
        Q = polar_rotation(Q)  # remove round-off before taking the quaternion
        rot_sh = Q
        Qp = Q if torch.linalg.det(Q) > 0 else -Q
        qR = rotmat_to_quat(Qp)
        new_log_scales = log_scales + math.log(s)
        new_quats = quat_multiply(qR, quats)
    else:
        rot_sh = polar_rotation(A64)
        M = (A64 @ quat_to_rotmat(quats)) * torch.exp(log_scales).unsqueeze(-2)  # [N, 3, 3]
        U, sv, Vh = torch.linalg.svd(M)
        U, sv = _match_axes(U, sv, Vh.transpose(-1, -2))
        new_log_scales = torch.log(sv.clamp_min(torch.finfo(torch.float64).tiny))
        new_quats = rotmat_to_quat(U) * qnorm
    out["scales"] = new_log_scales.to(params["scales"].dtype)
    out["quats"] = new_quats.to(params["quats"].dtype)

    sh0, shN = params["sh0"], params["shN"]
    if rotate_sh and shN.shape[-2] > 0:
        sh = _rotate_sh(torch.cat([sh0, shN.to(sh0.dtype)], dim=-2), rot_sh)
        out["sh0"], out["shN"] = sh0.clone(), sh[:, 1:].to(shN.dtype)
    else:
        out["sh0"], out["shN"] = sh0.clone(), shN.clone()
    out["opacities"] = params["opacities"].clone()
    return out


def gaussian_covariances(params: dict[str, Tensor]) -> Tensor:
    """[N, 3, 3] covariances of raw parameters (``scales`` = log sigma), computed in float64."""
    return scales_quats_to_covariance(torch.exp(params["scales"].to(torch.float64)), params["quats"].to(torch.float64))


# --------------------------------------------------------------------------------------------
# GaussianModel wrappers
# --------------------------------------------------------------------------------------------
def apply_affine(
    model: "GaussianModel", A: ArrayLike, t: ArrayLike, rotate_sh: bool = True, inplace: bool = False
) -> "GaussianModel":
    """Apply ``x' = A x + t`` to a model (see :func:`transform_gaussians`).

    With ``inplace`` the model's Parameters are replaced (optimizers holding the old ones must be
    rebuilt) and the model is returned; otherwise a new model is returned and ``model`` is untouched.
    """
    with torch.no_grad():
        new = transform_gaussians(model.raw(), A, t, rotate_sh)
    if inplace:
        model.replace_params(new)
        return model
    out = type(model)(model.max_sh_degree, new)
    out.active_sh_degree = model.active_sh_degree
    return out.to(model.device)


def apply_similarity(
    model: "GaussianModel", R: ArrayLike, t: ArrayLike, s: ArrayLike = 1.0, rotate_sh: bool = True, inplace: bool = False
) -> "GaussianModel":
    """Apply ``x' = s R x + t`` (R a rotation, s > 0) to a model; see :func:`apply_affine`."""
    Rt = _as_tensor(R, (3, 3), "R", torch.float64)
    st = _as_tensor(s, (), "s", torch.float64, Rt.device)
    if not st > 0:
        raise ValueError(f"similarity scale s must be positive, got {float(st)}")
    return apply_affine(model, st * Rt, t, rotate_sh, inplace)


def apply_anisotropic_scale(
    model: "GaussianModel",
    scale: ArrayLike,
    frame: Optional[ArrayLike] = None,
    center: Optional[ArrayLike] = None,
    rotate_sh: bool = True,
    inplace: bool = False,
) -> "GaussianModel":
    """Apply ``x' = c + R_o^T diag(scale) R_o (x - c)`` to a model (see :func:`anisotropic_scale_transform`)."""
    A, t = anisotropic_scale_transform(scale, frame, center)
    return apply_affine(model, A, t, rotate_sh, inplace)
