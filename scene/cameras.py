"""Pinhole cameras.

Conventions (used everywhere in this project):

* Extrinsics are world-to-camera (W2C), as in COLMAP: ``x_cam = R @ x_world + t``.
* Camera axes are OpenCV's: x right, y down, z forward (into the scene).
* The camera centre is ``C = -R.T @ t``; the viewing direction in world coordinates is
  the third ROW of ``R`` (``R[2]``).
* Intrinsics are per camera, in pixels, at the camera's ``width`` x ``height``:
  ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` where pixel centres sit at
  half-integers (the centre of the top-left pixel is (0.5, 0.5)), as COLMAP and gsplat.
* Quaternions are (w, x, y, z).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class Camera:
    """One posed pinhole camera.

    Attributes:
        R: [3, 3] world-to-camera rotation (float64).
        t: [3] world-to-camera translation (float64).
        fx, fy, cx, cy: intrinsics in pixels at ``width`` x ``height``.
        width, height: image size in pixels.
        image_name: the image stem (file name without its last extension).
        image_path: path of the RGB(A) image on disk, if any.
        uid: index of the camera in its list.
    """

    R: np.ndarray
    t: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image_name: str = ""
    image_path: Optional[str] = None
    uid: int = 0
    extra: dict = field(default_factory=dict, repr=False)
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.width = int(self.width)
        self.height = int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.image_name!r}: image size must be positive, got {self.width}x{self.height}")

    # -- geometry ---------------------------------------------------------------------------
    @property
    def center(self) -> np.ndarray:
        """[3] camera centre in world coordinates, ``-R^T t``."""
        return -self.R.T @ self.t

    @property
    def viewdir(self) -> np.ndarray:
        """[3] unit viewing direction (camera +z axis) in world coordinates: the third row of R."""
        return self.R[2] / np.linalg.norm(self.R[2])

    @property
    def fovx(self) -> float:
        return 2.0 * math.atan(self.width / (2.0 * self.fx))

    @property
    def fovy(self) -> float:
        return 2.0 * math.atan(self.height / (2.0 * self.fy))

    def w2c(self) -> np.ndarray:
        """[4, 4] world-to-camera matrix (float64)."""
        m = np.eye(4)
        m[:3, :3] = self.R
        m[:3, 3] = self.t
        return m

    def c2w(self) -> np.ndarray:
        """[4, 4] camera-to-world matrix (float64)."""
        return np.linalg.inv(self.w2c())

    def K(self) -> np.ndarray:
        """[3, 3] intrinsic matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def _cached(self, name: str, make, device) -> torch.Tensor:
        # cameras are never mutated (derived cameras are new objects), so the tensors can be kept
        key = (name, str(device))
        if key not in self._tensors:
            import torch  # lazy: the camera geometry itself is numpy (stage 5 runs without torch)

            self._tensors[key] = torch.as_tensor(make(), dtype=torch.float32, device=device)
        return self._tensors[key]

    def viewmat_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[4, 4] float32 world-to-camera matrix on ``device`` (cached per device)."""
        return self._cached("viewmat", self.w2c, device)

    def K_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[3, 3] float32 intrinsics on ``device`` (cached per device)."""
        return self._cached("K", self.K, device)

    # -- derived cameras --------------------------------------------------------------------
    def resized(self, width: int, height: int) -> "Camera":
        """The same camera rendering ``width`` x ``height`` pixels (intrinsics scaled per axis)."""
        sx = width / self.width
        sy = height / self.height
        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=int(width),
            height=int(height),
            extra=dict(self.extra),
            _tensors={},
        )

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Camera":
        """The camera of the pixel window [x0, x0+width) x [y0, y0+height) of this image."""
        return replace(
            self, cx=self.cx - x0, cy=self.cy - y0, width=int(width), height=int(height), extra=dict(self.extra), _tensors={}
        )

    def with_pose(self, R: np.ndarray, t: np.ndarray) -> "Camera":
        """The same intrinsics with another world-to-camera pose."""
        return replace(self, R=np.asarray(R, dtype=np.float64), t=np.asarray(t, dtype=np.float64), extra=dict(self.extra), _tensors={})

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project [N, 3] world points; returns ([N, 2] pixel coordinates, [N] depths)."""
        pc = points @ self.R.T + self.t
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * pc[:, 0] / z + self.cx, self.fy * pc[:, 1] / z + self.cy], axis=-1)
        return uv, z

    def to_json(self) -> dict:
        """The stock 3DGS ``cameras.json`` entry (position = centre, rotation = camera-to-world rows)."""
        return {
            "id": self.uid,
            "img_name": self.image_name,
            "width": self.width,
            "height": self.height,
            "position": self.center.tolist(),
            "rotation": self.R.T.tolist(),
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
        }


def resolution_for(width: int, height: int, resolution: int, max_width: int = 1600) -> tuple[int, int]:
    """The 3DGS ``-r/--resolution`` rule.

    * 1, 2, 4, 8: divide both sides (rounded).
    * -1: native, unless wider than ``max_width``, then scaled to that width.
    * any other positive value: the target width (aspect kept).
    """
    if resolution in (1, 2, 4, 8):
        return max(1, round(width / resolution)), max(1, round(height / resolution))
    if resolution == -1:
        if width <= max_width:
            return width, height
        target = max_width
    elif resolution > 0:
        target = resolution
    else:
        raise ValueError(f"--resolution must be 1, 2, 4, 8, -1 or a positive target width, got {resolution}")
    scale = target / width
    return int(target), max(1, int(round(height * scale)))


def look_at(center: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> tuple[np.ndarray, np.ndarray]:
    """W2C (R, t) of a camera at ``center`` looking at ``target`` with world ``up`` (OpenCV axes)."""
    center = np.asarray(center, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - center
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z], axis=0)
    return R, -R @ center
