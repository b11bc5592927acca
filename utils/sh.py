"""Real spherical harmonics (SH) of degree 0..4 in the 3DGS / gsplat convention.

Convention (the one every 3DGS file and renderer uses):

* Coefficient ``k = l*l + l + m`` (``m = -l..l``) multiplies the real SH ``Y_lm``; DC first.
* ``Y_lm`` are the orthonormal real harmonics WITH the Condon-Shortley phase, written as
  polynomials of the unit direction (x, y, z), e.g. ``Y_1 = (-C1*y, C1*z, -C1*x)``. In terms of
  the complex harmonics ``Y_l^m`` (Condon-Shortley phase included):
  ``Y_lm = sqrt(2) Im Y_l^|m|`` for m < 0, ``Y_l^0`` for m = 0, ``sqrt(2) Re Y_l^m`` for m > 0.
* A colour field is ``f(d) = sum_k sh[k] * Y_k(d / |d|)``, per RGB channel. :func:`eval_sh`
  returns that raw sum; the renderer adds 0.5 and clamps at 0 as 3DGS does.
* Directions are world-space vectors from the camera centre to the Gaussian (3DGS), and need not
  be normalised.

Tensor layout: ``sh`` is ``[..., K, 3]`` with ``K = (d+1)^2`` (coefficient-major), as
``GaussianModel.sh`` returns.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

MAX_SH_DEGREE = 4

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
C4 = (
    2.5033429417967046,
    -1.7701307697799304,
    0.9461746957575601,
    -0.6690465435572892,
    0.10578554691520431,
    -0.6690465435572892,
    0.47308734787878004,
    -1.7701307697799304,
    0.6258357354491761,
)

#: Number of directions used to fit the per-degree rotation matrices (well above 2(2l+1) = 18).
_ROTATION_FIT_DIRECTIONS = 64
#: Largest |R^T R - I| entry accepted by :func:`rotate_sh` (R is then projected onto O(3)).
ORTHOGONALITY_TOL = 1e-3


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2."""
    return (int(degree) + 1) ** 2


def _check_degree(degree: int) -> int:
    if not isinstance(degree, (int, np.integer)) or isinstance(degree, bool) or not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be an integer in 0..{MAX_SH_DEGREE}, got {degree!r}")
    return int(degree)


def _degree_of(k: int, what: str) -> int:
    d = int(round(math.sqrt(k))) - 1
    if k < 1 or (d + 1) ** 2 != k or d > MAX_SH_DEGREE:
        raise ValueError(f"{what}: {k} SH coefficients is not (d+1)^2 for a degree d in 0..{MAX_SH_DEGREE}")
    return d


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The real SH basis at directions.

    Args:
        degree: maximum degree d in 0..4.
        dirs: [..., 3] directions (normalised inside; a zero vector gives only the DC term).

    Returns:
        [..., (d+1)^2] basis values ``Y_k(dirs / |dirs|)`` in the 3DGS order and signs; same
        dtype/device as ``dirs``; differentiable.
    """
    degree = _check_degree(degree)
    if dirs.shape[-1:] != (3,):
        raise ValueError(f"dirs must have shape [..., 3], got {tuple(dirs.shape)}")
    d = torch.nn.functional.normalize(dirs, dim=-1)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    if degree >= 4:
        out += [
            C4[0] * xy * (xx - yy),
            C4[1] * yz * (3.0 * xx - yy),
            C4[2] * xy * (7.0 * zz - 1.0),
            C4[3] * yz * (7.0 * zz - 3.0),
            C4[4] * (zz * (35.0 * zz - 30.0) + 3.0),
            C4[5] * xz * (7.0 * zz - 3.0),
            C4[6] * (xx - yy) * (7.0 * zz - 1.0),
            C4[7] * xz * (xx - 3.0 * yy),
            C4[8] * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, sh: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH colour fields (raw sum, WITHOUT the +0.5 offset of 3DGS).

    Args:
        degree: degree d to use (0..4); the first (d+1)^2 coefficients of ``sh`` are used.
        sh: [..., K, 3] coefficients with K >= (d+1)^2.
        dirs: [..., 3] view directions (need not be normalised); leading dims broadcast with ``sh``'s.

    Returns:
        [..., 3] ``sum_k sh[..., k, :] * Y_k(dirs)``; differentiable in ``sh`` and ``dirs``.
    """
    degree = _check_degree(degree)
    k = num_sh_bases(degree)
    if sh.dim() < 2 or sh.shape[-1] != 3:
        raise ValueError(f"sh must have shape [..., K, 3], got {tuple(sh.shape)}")
    if sh.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, sh has {sh.shape[-2]}")
    basis = sh_basis(degree, dirs.to(sh.dtype))  # [..., k]
    return (basis.unsqueeze(-1) * sh[..., :k, :]).sum(dim=-2)


# --------------------------------------------------------------------------------------------
# Rotation
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _fit_directions() -> tuple[np.ndarray, np.ndarray]:
    """Fixed, well-spread unit directions (Fibonacci sphere), float64, and their basis values.

    Returns ([J, 3] directions, [J, 25] basis up to degree 4).
    """
    n = _ROTATION_FIT_DIRECTIONS
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(0.0, 1.0 - z * z))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    basis = sh_basis(MAX_SH_DEGREE, torch.from_numpy(dirs)).numpy()
    return dirs, basis


def _nearest_orthogonal(R: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(R)
    return u @ vt


def sh_rotation_matrices(R: Tensor | np.ndarray, degree: int) -> list[np.ndarray]:
    """Per-degree SH rotation matrices, float64.

    ``D_l`` ([2l+1, 2l+1]) satisfies ``Y_l(R^T d) = D_l @ Y_l(d)`` for every direction d. It is
    fitted by least squares on fixed directions; the fit is exact up to float64 round-off
    because the degree-l harmonics span a space closed under rotation. ``R`` may be any
    orthogonal matrix (reflections included).

    Args:
        R: [3, 3] orthogonal matrix (projected onto O(3) in float64 before use).
        degree: highest degree l (0..4).

    Returns:
        [D_0, ..., D_degree].
    """
    degree = _check_degree(degree)
    if isinstance(R, Tensor):
        R = R.detach().cpu().to(torch.float64).numpy()
    Rn = np.asarray(R, dtype=np.float64)
    if Rn.shape != (3, 3) or not np.all(np.isfinite(Rn)):
        raise ValueError(f"R must be a finite [3, 3] matrix, got shape {Rn.shape}")
    err = np.abs(Rn.T @ Rn - np.eye(3)).max()
    if err > ORTHOGONALITY_TOL:
        raise ValueError(f"R must be orthogonal (max |R^T R - I| = {err:.3g} > {ORTHOGONALITY_TOL})")
    Rn = _nearest_orthogonal(Rn)
    dirs, basis = _fit_directions()
    rotated = sh_basis(degree, torch.from_numpy(dirs @ Rn)).numpy()  # rows: Y(R^T d_j)
    mats = []
    for l in range(degree + 1):
        sl = slice(l * l, (l + 1) * (l + 1))
        # rotated[:, sl] = basis[:, sl] @ D_l^T
        dt, *_ = np.linalg.lstsq(basis[:, sl], rotated[:, sl], rcond=None)
        mats.append(dt.T)
    return mats


def rotate_sh(sh: Tensor, R: Tensor | np.ndarray) -> Tensor:
    """Rotate SH colour fields: ``eval(rotate_sh(sh, R), R @ d) == eval(sh, d)`` for every d.

    Args:
        sh: [..., K, 3] coefficients, K = (d+1)^2 with d in 0..4 (degree 0 is returned unchanged).
        R: [3, 3] orthogonal matrix (a rotation; reflections are handled exactly too).

    Returns:
        [..., K, 3] rotated coefficients in the dtype/device of ``sh`` (differentiable in ``sh``).
    """
    if sh.dim() < 2 or sh.shape[-1] != 3:
        raise ValueError(f"sh must have shape [..., K, 3], got {tuple(sh.shape)}")
    degree = _degree_of(sh.shape[-2], "rotate_sh")
    mats = sh_rotation_matrices(R, degree)  # validates R even for degree 0
    # New coefficients c' = D^T c: then c'^T Y(R d) = c^T D Y(R d) = c^T Y(d).
    full = np.zeros((sh.shape[-2], sh.shape[-2]))
    for l, D in enumerate(mats):
        full[l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] = D.T
    M = torch.as_tensor(full, dtype=sh.dtype, device=sh.device)
    if degree == 0:
        return sh.clone()
    return torch.matmul(M, sh)
