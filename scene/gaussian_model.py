"""Gaussian models and the 3DGS PLY layout.

A model stores RAW (pre-activation) parameters, exactly what the PLY holds:

=============  ==========  ==============================================================
name           shape       meaning (activation)
=============  ==========  ==============================================================
``means``      [N, 3]      centres, world units
``sh0``        [N, 1, 3]   DC spherical-harmonic coefficient, ``f_dc``
``shN``        [N, K-1, 3] higher SH coefficients (K = (d+1)^2), coefficient-major in
                           memory; in the PLY ``f_rest`` is channel-major
``opacities``  [N]         logit (sigmoid)
``scales``     [N, 3]      log standard deviations (exp)
``quats``      [N, 4]      rotation quaternion (w, x, y, z), unnormalised (L2 normalise)
=============  ==========  ==============================================================

Colour from DC: ``rgb = 0.5 + C0 * f_dc`` with ``C0 = 0.28209479177387814``.

PLY: one binary little-endian ``vertex`` element of float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-4) opacity scale_0..2 rot_0..3``. Files of any SH
degree are read (a degree-0 generator file has 17 properties); a model writes its own degree.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from scene.gaussian_ply import (  # noqa: F401  (re-exported: the PLY layout lives in a torch-free module)
    C0,
    GaussianArrays,
    has_gaussian_properties,
    num_sh_bases,
    ply_property_names,
    read_gaussian_ply,
    sh_degree_from_bases,
    write_gaussian_ply,
)

PARAM_NAMES = ("means", "sh0", "shN", "opacities", "scales", "quats")


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] colours in [0, 1] -> DC coefficients."""
    return (rgb - 0.5) / C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """DC coefficients -> [..., 3] colours (not clamped)."""
    return sh0 * C0 + 0.5


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class GaussianModel(nn.Module):
    """A set of 3D Gaussians with raw parameters in ``self.params`` (a ParameterDict).

    Args:
        sh_degree: maximum SH degree d of the model (``shN`` has (d+1)^2 - 1 coefficients).
        params: optional initial raw tensors keyed by :data:`PARAM_NAMES`.
    """

    def __init__(self, sh_degree: int = 3, params: Optional[dict[str, torch.Tensor]] = None):
        super().__init__()
        if sh_degree < 0 or sh_degree > 4:
            raise ValueError(f"sh_degree must be in 0..4, got {sh_degree}")
        self.max_sh_degree = int(sh_degree)
        self.active_sh_degree = int(sh_degree)
        k = num_sh_bases(sh_degree)
        if params is None:
            params = {
                "means": torch.zeros(0, 3),
                "sh0": torch.zeros(0, 1, 3),
                "shN": torch.zeros(0, k - 1, 3),
                "opacities": torch.zeros(0),
                "scales": torch.zeros(0, 3),
                "quats": torch.zeros(0, 4),
            }
        self.params = nn.ParameterDict({name: nn.Parameter(params[name].float().contiguous()) for name in PARAM_NAMES})
        self._check()

    def _check(self) -> None:
        n = self.params["means"].shape[0]
        k = num_sh_bases(self.max_sh_degree)
        expected = {"means": (n, 3), "sh0": (n, 1, 3), "shN": (n, k - 1, 3), "opacities": (n,), "scales": (n, 3), "quats": (n, 4)}
        for name, shape in expected.items():
            if tuple(self.params[name].shape) != shape:
                raise ValueError(f"parameter {name!r} has shape {tuple(self.params[name].shape)}, expected {shape}")

    # -- activated views ---------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def scales(self) -> torch.Tensor:
        """[N, 3] activated standard deviations."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> torch.Tensor:
        """[N, 4] unit quaternions (w, x, y, z)."""
        return nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """[N] activated opacities in (0, 1)."""
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh(self) -> torch.Tensor:
        """[N, K, 3] all SH coefficients (DC first)."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        xyz: np.ndarray | torch.Tensor,
        rgb: np.ndarray | torch.Tensor,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale_neighbours: int = 3,
        min_scale: float = 1e-7,
    ) -> "GaussianModel":
        """Isotropic Gaussians at points, as 3DGS initialises from the SfM cloud.

        Args:
            xyz: [N, 3] positions. rgb: [N, 3] colours in [0, 1].
            init_opacity: initial activated opacity.
            init_scale_neighbours: the scale is sqrt(mean squared distance to this many nearest neighbours).
            min_scale: lower bound of the squared distance (3DGS clamps at 1e-7).
        """
        from scipy.spatial import cKDTree

        xyz = np.asarray(torch.as_tensor(xyz).detach().cpu(), dtype=np.float64)
        rgb = np.asarray(torch.as_tensor(rgb).detach().cpu(), dtype=np.float64)
        n = xyz.shape[0]
        if n == 0:
            raise ValueError("cannot initialise a Gaussian model from an empty point cloud")
        kq = min(init_scale_neighbours + 1, n)
        if kq > 1:
            dist, _ = cKDTree(xyz).query(xyz, k=kq)
            d2 = np.mean(dist[:, 1:] ** 2, axis=1)
        else:
            d2 = np.ones(n)
        d2 = np.maximum(d2, min_scale)
        k = num_sh_bases(sh_degree)
        params = {
            "means": torch.tensor(xyz, dtype=torch.float32),
            "sh0": rgb_to_sh0(torch.tensor(rgb, dtype=torch.float32)).unsqueeze(1),
            "shN": torch.zeros(n, k - 1, 3),
            "opacities": torch.logit(torch.full((n,), float(init_opacity))),
            "scales": torch.log(torch.sqrt(torch.tensor(d2, dtype=torch.float32))).unsqueeze(1).repeat(1, 3),
            "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        }
        return cls(sh_degree, params)

    @classmethod
    def from_arrays(cls, g: GaussianArrays, sh_degree: Optional[int] = None) -> "GaussianModel":
        """A model from PLY arrays; ``sh_degree`` defaults to the file's degree.

        Lower-degree files are zero-filled up to ``sh_degree``; higher-degree files are truncated.
        """
        file_degree = g.sh_degree
        degree = file_degree if sh_degree is None else int(sh_degree)
        n = len(g)
        k_file = num_sh_bases(file_degree)
        # channel-major [N, 3*(K-1)] -> [N, K-1, 3]
        rest = torch.from_numpy(np.ascontiguousarray(g.f_rest)).reshape(n, 3, k_file - 1).transpose(1, 2)
        k = num_sh_bases(degree)
        shN = torch.zeros(n, k - 1, 3)
        m = min(k, k_file) - 1
        shN[:, :m] = rest[:, :m]
        params = {
            "means": torch.from_numpy(g.xyz.copy()),
            "sh0": torch.from_numpy(g.f_dc.copy()).reshape(n, 1, 3),
            "shN": shN,
            "opacities": torch.from_numpy(g.opacity.copy()),
            "scales": torch.from_numpy(g.scale.copy()),
            "quats": torch.from_numpy(g.rot.copy()),
        }
        return cls(degree, params)

    @classmethod
    def from_ply(cls, path: str | os.PathLike, sh_degree: Optional[int] = None) -> "GaussianModel":
        """Load a Gaussian PLY (any SH degree; see :meth:`from_arrays`)."""
        return cls.from_arrays(read_gaussian_ply(path), sh_degree)

    def to_arrays(self) -> GaussianArrays:
        n = len(self)
        p = {k: v.detach().cpu().float() for k, v in self.params.items()}
        k = num_sh_bases(self.max_sh_degree)
        f_rest = p["shN"].transpose(1, 2).reshape(n, 3 * (k - 1))
        return GaussianArrays(
            xyz=p["means"].numpy(),
            f_dc=p["sh0"].reshape(n, 3).numpy(),
            f_rest=f_rest.contiguous().numpy(),
            opacity=p["opacities"].numpy(),
            scale=p["scales"].numpy(),
            rot=p["quats"].numpy(),
        )

    def save_ply(self, path: str | os.PathLike) -> None:
        """Write the model in the 3DGS layout at its own SH degree (atomic)."""
        write_gaussian_ply(path, self.to_arrays())

    # -- set operations ----------------------------------------------------------------------
    def raw(self) -> dict[str, torch.Tensor]:
        """Detached raw tensors."""
        return {k: v.detach() for k, v in self.params.items()}

    def subset(self, index: torch.Tensor) -> "GaussianModel":
        """A new model with the Gaussians selected by a boolean mask or index tensor."""
        index = index.to(self.device)
        m = GaussianModel(self.max_sh_degree, {k: v.detach()[index] for k, v in self.params.items()})
        m.active_sh_degree = self.active_sh_degree
        return m

    @staticmethod
    def concatenate(models: list["GaussianModel"], sh_degree: Optional[int] = None) -> "GaussianModel":
        """One model holding all Gaussians of ``models`` (SH zero-filled/truncated to ``sh_degree``,
        by default the largest degree among them)."""
        if not models:
            raise ValueError("concatenate needs at least one model")
        degree = max(m.max_sh_degree for m in models) if sh_degree is None else sh_degree
        parts = [GaussianModel.from_arrays(m.to_arrays(), degree).to(models[0].device) for m in models]
        params = {k: torch.cat([p.params[k].detach() for p in parts], dim=0) for k in PARAM_NAMES}
        return GaussianModel(degree, params)

    def clone(self) -> "GaussianModel":
        m = GaussianModel(self.max_sh_degree, {k: v.detach().clone() for k, v in self.params.items()})
        m.active_sh_degree = self.active_sh_degree
        return m

    def replace_params(self, params: dict[str, torch.Tensor]) -> None:
        """Replace every raw tensor (new Parameters; used by densification and transforms)."""
        for name in PARAM_NAMES:
            t = params[name]
            self.params[name] = t if isinstance(t, nn.Parameter) else nn.Parameter(t.contiguous())
        self._check()
