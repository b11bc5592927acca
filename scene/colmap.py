"""COLMAP sparse models: reading and writing, text and binary, with numpy only.

A COLMAP model is a folder holding ``cameras``, ``images`` and ``points3D`` files, either all
``.bin`` or all ``.txt`` (COLMAP >= 3.12 may add ``rigs`` and ``frames`` files, which we neither
need nor write; COLMAP reads models without them). Conventions are COLMAP's, which are also ours
(see :mod:`scene.cameras`):

* ``ColmapImage.qvec``/``tvec`` are the world-to-camera rotation (quaternion w, x, y, z) and
  translation: ``x_cam = R(qvec) @ x_world + tvec``, OpenCV camera axes.
* Intrinsics are in pixels; the centre of the top-left pixel is (0.5, 0.5).
* ``point3D_ids`` of 2D points is -1 where the point has no 3D point.

Binary layout (little endian), as written by COLMAP:

* cameras.bin: ``u64 n``; per camera ``u32 id, i32 model_id, u64 width, u64 height, f64 params[k]``
  where k is fixed by the model.
* images.bin: ``u64 n``; per image ``u32 id, f64 qvec[4], f64 tvec[3], u32 camera_id,
  name (NUL-terminated UTF-8), u64 m``, then m times ``f64 x, f64 y, i64 point3D_id``.
* points3D.bin: ``u64 n``; per point ``u64 id, f64 xyz[3], u8 rgb[3], f64 error, u64 L``, then L
  times ``u32 image_id, u32 point2D_idx``.

Every problem with a file raises :class:`utils.errors.InputError` with one line naming the file
and what is wrong (truncation, absurd counts, unknown models, malformed text lines), never a
bare ``struct.error``/``ValueError``. Counts read from binary headers are checked against the
bytes that remain before anything is allocated.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from utils.errors import InputError
from utils.io import atomic_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

MODEL_FILES = ("cameras", "images", "points3D")
"""Base names of the three files of a COLMAP model."""


# ---------------------------------------------------------------------------------------------
# Camera models
# ---------------------------------------------------------------------------------------------
class CameraModel(NamedTuple):
    """A COLMAP camera model: its id in binary files, its name and its number of parameters."""

    model_id: int
    name: str
    num_params: int


CAMERA_MODELS: tuple[CameraModel, ...] = (
    CameraModel(0, "SIMPLE_PINHOLE", 3),  # f, cx, cy
    CameraModel(1, "PINHOLE", 4),  # fx, fy, cx, cy
    CameraModel(2, "SIMPLE_RADIAL", 4),  # f, cx, cy, k
    CameraModel(3, "RADIAL", 5),  # f, cx, cy, k1, k2
    CameraModel(4, "OPENCV", 8),  # fx, fy, cx, cy, k1, k2, p1, p2
    CameraModel(5, "OPENCV_FISHEYE", 8),  # fx, fy, cx, cy, k1, k2, k3, k4
    CameraModel(6, "FULL_OPENCV", 12),  # fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6
    CameraModel(7, "FOV", 5),  # fx, fy, cx, cy, omega
    CameraModel(8, "SIMPLE_RADIAL_FISHEYE", 4),  # f, cx, cy, k
    CameraModel(9, "RADIAL_FISHEYE", 5),  # f, cx, cy, k1, k2
    CameraModel(10, "THIN_PRISM_FISHEYE", 12),  # fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1
    CameraModel(11, "RAD_TAN_THIN_PRISM_FISHEYE", 16),  # fx, fy, cx, cy, k0..k5, p0, p1, s0..s3
    CameraModel(12, "SIMPLE_DIVISION", 4),  # f, cx, cy, k
    CameraModel(13, "DIVISION", 5),  # fx, fy, cx, cy, k
    CameraModel(14, "SIMPLE_FISHEYE", 3),  # f, cx, cy
    CameraModel(15, "FISHEYE", 4),  # fx, fy, cx, cy
    CameraModel(16, "EUCM", 6),  # fx, fy, cx, cy, alpha, beta
    CameraModel(17, "EQUIRECTANGULAR", 2),  # w, h
)
CAMERA_MODEL_BY_ID: dict[int, CameraModel] = {m.model_id: m for m in CAMERA_MODELS}
CAMERA_MODEL_BY_NAME: dict[str, CameraModel] = {m.name: m for m in CAMERA_MODELS}

PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")
"""The camera models the rest of the pipeline reads (undistorted images)."""


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
def _fields_equal(a: object, b: object) -> bool:
    """Field-by-field equality of two dataclass records, numpy arrays compared exactly."""
    if type(a) is not type(b):
        return NotImplemented  # type: ignore[return-value]
    for name in a.__dataclass_fields__:  # type: ignore[attr-defined]
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


@dataclass(eq=False)
class ColmapCamera:
    """One COLMAP camera.

    Attributes:
        id: camera id.
        model: model name, a key of :data:`CAMERA_MODEL_BY_NAME` (e.g. ``"PINHOLE"``).
        width, height: image size in pixels.
        params: [k] float64 model parameters in COLMAP's order (PINHOLE: fx, fy, cx, cy).
    """

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    def __post_init__(self) -> None:
        self.params = np.asarray(self.params, dtype=np.float64).reshape(-1)

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)


@dataclass(eq=False)
class ColmapImage:
    """One registered COLMAP image (a posed view).

    Attributes:
        id: image id.
        qvec: [4] float64 world-to-camera rotation quaternion (w, x, y, z).
        tvec: [3] float64 world-to-camera translation.
        camera_id: id of its :class:`ColmapCamera`.
        name: file name relative to the images folder (e.g. ``"frame_0001.jpg"``).
        xys: [M, 2] float64 pixel coordinates of its 2D keypoints.
        point3D_ids: [M] int64 id of the 3D point of each keypoint, -1 where none.
    """

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.float64))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __post_init__(self) -> None:
        self.qvec = np.asarray(self.qvec, dtype=np.float64).reshape(4)
        self.tvec = np.asarray(self.tvec, dtype=np.float64).reshape(3)
        self.xys = np.asarray(self.xys, dtype=np.float64).reshape(-1, 2)
        self.point3D_ids = np.asarray(self.point3D_ids, dtype=np.int64).reshape(-1)
        if len(self.xys) != len(self.point3D_ids):
            raise ValueError(
                f"image {self.id}: xys has {len(self.xys)} rows but point3D_ids has {len(self.point3D_ids)}"
            )

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)

    @property
    def stem(self) -> str:
        """The image stem: the file name without folders and without its last extension."""
        return os.path.splitext(os.path.basename(self.name))[0]

    def rotmat(self) -> np.ndarray:
        """[3, 3] world-to-camera rotation matrix."""
        return qvec_to_rotmat(self.qvec)


@dataclass(eq=False)
class ColmapPoint3D:
    """One COLMAP 3D point.

    Attributes:
        id: point id.
        xyz: [3] float64 world position.
        rgb: [3] uint8 colour.
        error: mean reprojection error in pixels (-1 when unknown).
        image_ids: [L] int64 ids of the images observing the point.
        point2D_idxs: [L] int64 index of the observing keypoint in each of those images.
    """

    id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    point2D_idxs: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __post_init__(self) -> None:
        self.xyz = np.asarray(self.xyz, dtype=np.float64).reshape(3)
        self.rgb = np.asarray(self.rgb, dtype=np.uint8).reshape(3)
        self.error = float(self.error)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        self.point2D_idxs = np.asarray(self.point2D_idxs, dtype=np.int64).reshape(-1)
        if len(self.image_ids) != len(self.point2D_idxs):
            raise ValueError(
                f"point {self.id}: image_ids has {len(self.image_ids)} entries "
                f"but point2D_idxs has {len(self.point2D_idxs)}"
            )

    def __eq__(self, other: object) -> bool:
        return _fields_equal(self, other)


Cameras = dict[int, ColmapCamera]
Images = dict[int, ColmapImage]
Points3D = dict[int, ColmapPoint3D]


# ---------------------------------------------------------------------------------------------
# Rotations
# ---------------------------------------------------------------------------------------------
def qvec_to_rotmat(qvec: np.ndarray) -> np.ndarray:
    """Rotation matrices of quaternions (w, x, y, z).

    Args:
        qvec: [..., 4] quaternions, any non-zero norm (normalised here).

    Returns:
        [..., 3, 3] float64 rotation matrices.

    Raises:
        ValueError: on a wrong shape or a zero / non-finite quaternion.
    """
    q = np.asarray(qvec, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f"qvec must have shape [..., 4], got {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(norm)) or np.any(norm < 1e-12):
        raise ValueError("qvec must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )  # fmt: skip
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z), w >= 0, of rotation matrices.

    Robust to noise: for a unit quaternion q, ``4 q q^T`` is a 4x4 matrix whose entries are linear
    in R (e.g. ``4 w^2 = 1 + trace R``, ``4 w x = R21 - R12``); we build that matrix from R and take
    its dominant eigenvector, which for a slightly non-orthogonal R is the least-squares answer and
    never divides by a small number.

    Args:
        R: [..., 3, 3] rotation matrices.

    Returns:
        [..., 4] float64 unit quaternions with non-negative w.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {R.shape}")
    if not np.all(np.isfinite(R)):
        raise ValueError("R must be finite")
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    M = np.stack(
        [
            1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01,
            r21 - r12, 1 + r00 - r11 - r22, r01 + r10, r02 + r20,
            r02 - r20, r01 + r10, 1 - r00 + r11 - r22, r12 + r21,
            r10 - r01, r02 + r20, r12 + r21, 1 - r00 - r11 + r22,
        ],
        axis=-1,
    ).reshape(R.shape[:-2] + (4, 4))  # fmt: skip
    _, vecs = np.linalg.eigh(M)
    q = vecs[..., :, -1]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


# ---------------------------------------------------------------------------------------------
# Intrinsics and folders
# ---------------------------------------------------------------------------------------------
def pinhole_intrinsics(cam: ColmapCamera, path: Optional[PathLike] = None) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of a PINHOLE or SIMPLE_PINHOLE camera.

    Args:
        cam: the camera.
        path: the cameras file it came from, named in the error message.

    Raises:
        InputError: for any other camera model (the images must be undistorted first).
    """
    p = cam.params
    if cam.model == "PINHOLE" and len(p) == 4:
        return float(p[0]), float(p[1]), float(p[2]), float(p[3])
    if cam.model == "SIMPLE_PINHOLE" and len(p) == 3:
        return float(p[0]), float(p[0]), float(p[1]), float(p[2])
    if cam.model in PINHOLE_MODELS:
        raise InputError(path, f"camera {cam.id} has model {cam.model} with {len(p)} parameters")
    raise InputError(
        path,
        f"camera {cam.id} has model {cam.model}; only PINHOLE and SIMPLE_PINHOLE are supported: "
        "run convert.py to undistort the images",
    )


def _model_files_in(folder: str) -> list[str]:
    """Names of the COLMAP model files (``cameras.bin``, ...) present in ``folder``."""
    return [
        f"{base}{ext}"
        for base in MODEL_FILES
        for ext in (".bin", ".txt")
        if os.path.isfile(os.path.join(folder, f"{base}{ext}"))
    ]


def find_sparse_dir(source_path: PathLike) -> str:
    """The folder of the COLMAP model of a scene folder D: ``D/sparse`` or ``D/sparse/0``.

    ``D/sparse`` wins when it holds model files itself; otherwise ``D/sparse/0`` is used.

    Raises:
        InputError: naming ``D/sparse`` when it is missing or holds no model in either place.
    """
    sparse = os.path.join(os.fspath(source_path), "sparse")
    if not os.path.isdir(sparse):
        raise InputError(sparse, "missing: expected a COLMAP model in sparse/ or sparse/0/")
    for candidate in (sparse, os.path.join(sparse, "0")):
        if os.path.isdir(candidate) and _model_files_in(candidate):
            return candidate
    raise InputError(
        sparse, "no COLMAP model: expected cameras, images and points3D (.bin or .txt) in sparse/ or sparse/0/"
    )


# ---------------------------------------------------------------------------------------------
# Low-level file helpers
# ---------------------------------------------------------------------------------------------
def _read_bytes(path: PathLike) -> bytes:
    """The content of a file, with InputError for a missing or unreadable one."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(path, "missing") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def _read_lines(path: PathLike) -> list[str]:
    """The lines of a UTF-8 text file (without line ends)."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text (byte {e.start}); is it a binary model named .txt?") from None
    return text.splitlines()


def _atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


class _BinaryReader:
    """Sequential little-endian reader over a file's bytes that raises InputError on short reads."""

    def __init__(self, path: PathLike, data: bytes):
        self.path = os.fspath(path)
        self.data = data
        self.off = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.off

    def _need(self, n: int, what: str) -> None:
        if n > self.remaining:
            raise InputError(
                self.path, f"truncated: expected {n} bytes for {what} at offset {self.off}, got {self.remaining}"
            )

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        self._need(st.size, what)
        out = st.unpack_from(self.data, self.off)
        self.off += st.size
        return out

    def count(self, what: str, min_record_size: int) -> int:
        """Read a u64 record count and check that the file can hold that many records."""
        (n,) = self.unpack(_U64, f"the number of {what}")
        if n * min_record_size > self.remaining:
            raise InputError(
                self.path,
                f"corrupt or truncated: header says {n} {what} (at least {n * min_record_size} bytes) "
                f"but only {self.remaining} bytes follow",
            )
        return n

    def array(self, dtype: np.dtype, n: int, what: str) -> np.ndarray:
        nbytes = n * np.dtype(dtype).itemsize
        self._need(nbytes, what)
        out = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.off).copy()
        self.off += nbytes
        return out

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\0", self.off)
        if end < 0:
            raise InputError(self.path, f"truncated: {what} has no terminating NUL byte (offset {self.off})")
        raw = self.data[self.off : end]
        self.off = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(self.path, f"corrupt: {what} is not valid UTF-8 (offset {self.off})") from None

    def finish(self, what: str) -> None:
        if self.remaining:
            raise InputError(self.path, f"corrupt: {self.remaining} unexpected bytes after the last of the {what}")


_U64 = struct.Struct("<Q")
_CAMERA_HEAD = struct.Struct("<IiQQ")  # id, model_id, width, height
_IMAGE_HEAD = struct.Struct("<I4d3dI")  # id, qvec, tvec, camera_id
_POINT_HEAD = struct.Struct("<Q3d3Bd")  # id, xyz, rgb, error
_POINT2D_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
_TRACK_DTYPE = np.dtype([("image_id", "<u4"), ("point2D_idx", "<u4")])


def _check_qvec(path: PathLike, qvec: Sequence[float], what: str) -> None:
    n = math.sqrt(sum(float(v) * float(v) for v in qvec))
    if not math.isfinite(n) or n < 1e-12:
        raise InputError(path, f"{what} has an invalid rotation quaternion {list(map(float, qvec))}")


def _check_size(path: PathLike, width: int, height: int, what: str) -> None:
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise InputError(path, f"{what} has an invalid image size {width}x{height}")


# ---------------------------------------------------------------------------------------------
# Binary readers
# ---------------------------------------------------------------------------------------------
def read_cameras_binary(path: PathLike) -> Cameras:
    """Read ``cameras.bin`` into {camera_id: ColmapCamera}."""
    r = _BinaryReader(path, _read_bytes(path))
    cameras: Cameras = {}
    for i in range(r.count("cameras", _CAMERA_HEAD.size)):
        cam_id, model_id, width, height = r.unpack(_CAMERA_HEAD, f"camera #{i}")
        model = CAMERA_MODEL_BY_ID.get(model_id)
        if model is None:
            raise InputError(path, f"corrupt: camera {cam_id} has unknown model id {model_id}")
        _check_size(path, width, height, f"corrupt: camera {cam_id}")
        params = r.array(np.dtype("<f8"), model.num_params, f"the {model.num_params} parameters of camera {cam_id}")
        if cam_id in cameras:
            raise InputError(path, f"corrupt: camera id {cam_id} appears twice")
        cameras[cam_id] = ColmapCamera(cam_id, model.name, int(width), int(height), params.astype(np.float64))
    r.finish("cameras")
    return cameras


def read_images_binary(path: PathLike) -> Images:
    """Read ``images.bin`` into {image_id: ColmapImage}."""
    r = _BinaryReader(path, _read_bytes(path))
    images: Images = {}
    min_size = _IMAGE_HEAD.size + 1 + _U64.size
    for i in range(r.count("images", min_size)):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.unpack(_IMAGE_HEAD, f"image #{i}")
        name = r.cstring(f"the name of image {image_id}")
        (m,) = r.unpack(_U64, f"the number of 2D points of image {image_id}")
        if m * _POINT2D_DTYPE.itemsize > r.remaining:
            raise InputError(
                path,
                f"truncated: expected {m * _POINT2D_DTYPE.itemsize} bytes for the {m} 2D points of image "
                f"{image_id}, got {r.remaining}",
            )
        pts = r.array(_POINT2D_DTYPE, m, f"the 2D points of image {image_id}")
        _check_qvec(path, (qw, qx, qy, qz), f"corrupt: image {image_id}")
        if image_id in images:
            raise InputError(path, f"corrupt: image id {image_id} appears twice")
        images[image_id] = ColmapImage(
            id=image_id,
            qvec=np.array([qw, qx, qy, qz]),
            tvec=np.array([tx, ty, tz]),
            camera_id=cam_id,
            name=name,
            xys=np.stack([pts["x"], pts["y"]], axis=-1),
            point3D_ids=pts["id"].astype(np.int64),
        )
    r.finish("images")
    return images


def read_points3D_binary(path: PathLike) -> Points3D:
    """Read ``points3D.bin`` into {point3D_id: ColmapPoint3D}."""
    r = _BinaryReader(path, _read_bytes(path))
    points: Points3D = {}
    for i in range(r.count("points", _POINT_HEAD.size + _U64.size)):
        pid, x, y, z, cr, cg, cb, err = r.unpack(_POINT_HEAD, f"3D point #{i}")
        (n,) = r.unpack(_U64, f"the track length of 3D point {pid}")
        if n * _TRACK_DTYPE.itemsize > r.remaining:
            raise InputError(
                path,
                f"truncated: expected {n * _TRACK_DTYPE.itemsize} bytes for the track of 3D point {pid}, "
                f"got {r.remaining}",
            )
        track = r.array(_TRACK_DTYPE, n, f"the track of 3D point {pid}")
        if pid in points:
            raise InputError(path, f"corrupt: 3D point id {pid} appears twice")
        points[pid] = ColmapPoint3D(
            id=pid,
            xyz=np.array([x, y, z]),
            rgb=np.array([cr, cg, cb], dtype=np.uint8),
            error=err,
            image_ids=track["image_id"].astype(np.int64),
            point2D_idxs=track["point2D_idx"].astype(np.int64),
        )
    r.finish("3D points")
    return points


# ---------------------------------------------------------------------------------------------
# Text readers
# ---------------------------------------------------------------------------------------------
def _data_lines(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) of the non-empty, non-comment lines."""
    for i, line in enumerate(lines):
        s = line.strip()
        if s and not s.startswith("#"):
            yield i + 1, s


def _parse(path: PathLike, lineno: int, conv: Callable, token: str, what: str):
    """``conv(token)`` with an InputError naming the line and the field on failure."""
    try:
        return conv(token)
    except (ValueError, OverflowError):
        raise InputError(path, f"line {lineno}: {what} is not a valid number: {token!r}") from None


def _uint(token: str) -> int:
    v = int(token)
    if v < 0:
        raise ValueError(token)
    return v


def read_cameras_text(path: PathLike) -> Cameras:
    """Read ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line)."""
    cameras: Cameras = {}
    for lineno, line in _data_lines(_read_lines(path)):
        tok = line.split()
        if len(tok) < 4:
            raise InputError(
                path, f"line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[], got {len(tok)} fields"
            )
        cam_id = _parse(path, lineno, _uint, tok[0], "CAMERA_ID")
        model = CAMERA_MODEL_BY_NAME.get(tok[1])
        if model is None:
            raise InputError(path, f"line {lineno}: camera {cam_id} has unknown model {tok[1]!r}")
        width = _parse(path, lineno, _uint, tok[2], "WIDTH")
        height = _parse(path, lineno, _uint, tok[3], "HEIGHT")
        _check_size(path, width, height, f"line {lineno}: camera {cam_id}")
        if len(tok) - 4 != model.num_params:
            raise InputError(
                path,
                f"line {lineno}: camera {cam_id} model {model.name} needs {model.num_params} parameters, "
                f"got {len(tok) - 4}",
            )
        params = np.array([_parse(path, lineno, float, t, "a camera parameter") for t in tok[4:]], dtype=np.float64)
        if cam_id in cameras:
            raise InputError(path, f"line {lineno}: camera id {cam_id} appears twice")
        cameras[cam_id] = ColmapCamera(cam_id, model.name, width, height, params)
    return cameras


def read_images_text(path: PathLike) -> Images:
    """Read ``images.txt``: two lines per image.

    ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then ``POINTS2D[]`` as ``X Y POINT3D_ID``
    triples (the second line may be empty). Names may contain spaces (the rest of the line).
    """
    lines = _read_lines(path)
    images: Images = {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        lineno = i + 1
        i += 1
        if not line or line.startswith("#"):
            continue
        tok = line.split(maxsplit=9)
        if len(tok) < 10:
            raise InputError(
                path,
                f"line {lineno}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {len(tok)} fields",
            )
        image_id = _parse(path, lineno, _uint, tok[0], "IMAGE_ID")
        vals = [_parse(path, lineno, float, t, f"field {k + 2} of image {image_id}") for k, t in enumerate(tok[1:8])]
        cam_id = _parse(path, lineno, _uint, tok[8], "CAMERA_ID")
        name = tok[9]
        # The points line follows directly (possibly empty); a file may end right after the header.
        pts_line = lines[i] if i < len(lines) else ""
        pts_lineno = i + 1
        i += 1
        ptok = pts_line.split()
        if len(ptok) % 3:
            raise InputError(
                path,
                f"line {pts_lineno}: the 2D points of image {image_id} must be X Y POINT3D_ID triples, "
                f"got {len(ptok)} numbers",
            )
        try:
            xys = np.array(ptok, dtype=np.float64).reshape(-1, 3)[:, :2] if ptok else np.zeros((0, 2))
            ids = np.array(ptok[2::3], dtype=np.int64) if ptok else np.zeros((0,), dtype=np.int64)
        except (ValueError, OverflowError):
            raise InputError(
                path, f"line {pts_lineno}: the 2D points of image {image_id} contain a non-number"
            ) from None
        _check_qvec(path, vals[:4], f"line {lineno}: image {image_id}")
        if image_id in images:
            raise InputError(path, f"line {lineno}: image id {image_id} appears twice")
        images[image_id] = ColmapImage(image_id, np.array(vals[:4]), np.array(vals[4:]), cam_id, name, xys, ids)
    return images


def read_points3D_text(path: PathLike) -> Points3D:
    """Read ``points3D.txt`` (``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line)."""
    points: Points3D = {}
    for lineno, line in _data_lines(_read_lines(path)):
        tok = line.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise InputError(
                path,
                f"line {lineno}: expected POINT3D_ID X Y Z R G B ERROR and (IMAGE_ID, POINT2D_IDX) pairs, "
                f"got {len(tok)} fields",
            )
        pid = _parse(path, lineno, _uint, tok[0], "POINT3D_ID")
        xyz = [_parse(path, lineno, float, t, "a coordinate") for t in tok[1:4]]
        rgb = [_parse(path, lineno, _uint, t, "a colour") for t in tok[4:7]]
        if max(rgb) > 255:
            raise InputError(path, f"line {lineno}: colour {rgb} of point {pid} is out of 0..255")
        err = _parse(path, lineno, float, tok[7], "ERROR")
        try:
            track = np.array(tok[8:], dtype=np.int64).reshape(-1, 2)
        except (ValueError, OverflowError):
            raise InputError(path, f"line {lineno}: the track of point {pid} contains a non-integer") from None
        if pid in points:
            raise InputError(path, f"line {lineno}: 3D point id {pid} appears twice")
        points[pid] = ColmapPoint3D(pid, np.array(xyz), np.array(rgb, dtype=np.uint8), err, track[:, 0], track[:, 1])
    return points


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    """Shortest text that reads back as exactly the same float64."""
    return repr(float(x))


def _cameras_text(cameras: Mapping[int, ColmapCamera]) -> str:
    out = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cameras)}",
    ]
    for cam_id in sorted(cameras):
        c = cameras[cam_id]
        out.append(" ".join([str(c.id), c.model, str(c.width), str(c.height)] + [_fmt(p) for p in c.params]))
    return "\n".join(out) + "\n"


def _images_text(images: Mapping[int, ColmapImage]) -> str:
    n_obs = sum(int(np.count_nonzero(im.point3D_ids >= 0)) for im in images.values())
    mean_obs = n_obs / len(images) if images else 0.0
    out = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(images)}, mean observations per image: {mean_obs}",
    ]
    for image_id in sorted(images):
        im = images[image_id]
        if "\n" in im.name or "\r" in im.name or im.name != im.name.strip() or not im.name:
            raise ValueError(f"image {im.id}: name {im.name!r} cannot be written to a text model")
        head = [str(im.id)] + [_fmt(v) for v in im.qvec] + [_fmt(v) for v in im.tvec] + [str(im.camera_id), im.name]
        out.append(" ".join(head))
        out.append(
            " ".join(f"{_fmt(x)} {_fmt(y)} {int(p)}" for (x, y), p in zip(im.xys.tolist(), im.point3D_ids.tolist()))
        )
    return "\n".join(out) + "\n"


def _points3D_text(points3D: Mapping[int, ColmapPoint3D]) -> str:
    mean_track = sum(len(p.image_ids) for p in points3D.values()) / len(points3D) if points3D else 0.0
    out = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(points3D)}, mean track length: {mean_track}",
    ]
    for pid in sorted(points3D):
        p = points3D[pid]
        fields = [str(p.id)] + [_fmt(v) for v in p.xyz] + [str(int(v)) for v in p.rgb] + [_fmt(p.error)]
        fields += [f"{a} {b}" for a, b in zip(p.image_ids.tolist(), p.point2D_idxs.tolist())]
        out.append(" ".join(fields))
    return "\n".join(out) + "\n"


def _cameras_binary(cameras: Mapping[int, ColmapCamera]) -> bytes:
    parts = [_U64.pack(len(cameras))]
    for cam_id in sorted(cameras):
        c = cameras[cam_id]
        model = CAMERA_MODEL_BY_NAME.get(c.model)
        if model is None:
            raise ValueError(f"camera {c.id}: unknown model {c.model!r}")
        if len(c.params) != model.num_params:
            raise ValueError(f"camera {c.id}: model {c.model} needs {model.num_params} parameters, got {len(c.params)}")
        parts.append(_CAMERA_HEAD.pack(c.id, model.model_id, c.width, c.height))
        parts.append(np.ascontiguousarray(c.params, dtype="<f8").tobytes())
    return b"".join(parts)


def _images_binary(images: Mapping[int, ColmapImage]) -> bytes:
    parts = [_U64.pack(len(images))]
    for image_id in sorted(images):
        im = images[image_id]
        name = im.name.encode("utf-8")
        if b"\0" in name:
            raise ValueError(f"image {im.id}: name {im.name!r} contains a NUL character")
        parts.append(_IMAGE_HEAD.pack(im.id, *im.qvec.tolist(), *im.tvec.tolist(), im.camera_id))
        parts.append(name + b"\0")
        parts.append(_U64.pack(len(im.xys)))
        pts = np.empty(len(im.xys), dtype=_POINT2D_DTYPE)
        pts["x"], pts["y"], pts["id"] = im.xys[:, 0], im.xys[:, 1], im.point3D_ids
        parts.append(pts.tobytes())
    return b"".join(parts)


def _points3D_binary(points3D: Mapping[int, ColmapPoint3D]) -> bytes:
    parts = [_U64.pack(len(points3D))]
    for pid in sorted(points3D):
        p = points3D[pid]
        parts.append(_POINT_HEAD.pack(p.id, *p.xyz.tolist(), *(int(v) for v in p.rgb), p.error))
        parts.append(_U64.pack(len(p.image_ids)))
        track = np.empty(len(p.image_ids), dtype=_TRACK_DTYPE)
        track["image_id"], track["point2D_idx"] = p.image_ids, p.point2D_idxs
        parts.append(track.tobytes())
    return b"".join(parts)


def write_cameras_text(cameras: Mapping[int, ColmapCamera], path: PathLike) -> None:
    """Write ``cameras.txt`` atomically."""
    _atomic_write(path, _cameras_text(cameras).encode("utf-8"))


def write_images_text(images: Mapping[int, ColmapImage], path: PathLike) -> None:
    """Write ``images.txt`` atomically."""
    _atomic_write(path, _images_text(images).encode("utf-8"))


def write_points3D_text(points3D: Mapping[int, ColmapPoint3D], path: PathLike) -> None:
    """Write ``points3D.txt`` atomically."""
    _atomic_write(path, _points3D_text(points3D).encode("utf-8"))


def write_cameras_binary(cameras: Mapping[int, ColmapCamera], path: PathLike) -> None:
    """Write ``cameras.bin`` atomically."""
    _atomic_write(path, _cameras_binary(cameras))


def write_images_binary(images: Mapping[int, ColmapImage], path: PathLike) -> None:
    """Write ``images.bin`` atomically."""
    _atomic_write(path, _images_binary(images))


def write_points3D_binary(points3D: Mapping[int, ColmapPoint3D], path: PathLike) -> None:
    """Write ``points3D.bin`` atomically."""
    _atomic_write(path, _points3D_binary(points3D))


# ---------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------
def detect_model_ext(path: PathLike) -> str:
    """``".bin"`` when the folder holds any binary model file, else ``".txt"`` when it holds text ones.

    Raises:
        InputError: when the folder is missing or holds no model file.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InputError(path, "missing COLMAP model folder")
    present = _model_files_in(path)
    for ext in (".bin", ".txt"):
        if any(f.endswith(ext) for f in present):
            return ext
    raise InputError(path, "no COLMAP model files (cameras, images, points3D as .bin or .txt)")


def read_model(path: PathLike, ext: Optional[str] = None) -> tuple[Cameras, Images, Points3D]:
    """Read a COLMAP model folder.

    Args:
        path: folder holding ``cameras``, ``images`` and ``points3D`` files.
        ext: ``".bin"`` or ``".txt"``; by default binary when present, else text.

    Returns:
        (cameras, images, points3D), dicts keyed by id. points3D may be empty.

    Raises:
        InputError: naming the file for a missing, truncated or malformed file, or an image
            whose camera is not in the cameras file.
    """
    path = os.fspath(path)
    if ext is None:
        ext = detect_model_ext(path)
    elif ext not in (".bin", ".txt"):
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
    files = {base: os.path.join(path, base + ext) for base in MODEL_FILES}
    for f in files.values():
        if not os.path.isfile(f):
            raise InputError(f, "missing (the other COLMAP model files are there)")
    if ext == ".bin":
        cameras = read_cameras_binary(files["cameras"])
        images = read_images_binary(files["images"])
        points3D = read_points3D_binary(files["points3D"])
    else:
        cameras = read_cameras_text(files["cameras"])
        images = read_images_text(files["images"])
        points3D = read_points3D_text(files["points3D"])
    for im in images.values():
        if im.camera_id not in cameras:
            raise InputError(
                files["images"],
                f"image {im.id} ({im.name}) uses camera {im.camera_id}, "
                f"which is not in {os.path.basename(files['cameras'])}",
            )
    logger.debug(
        "read COLMAP model %s: %d cameras, %d images, %d points", path, len(cameras), len(images), len(points3D)
    )
    return cameras, images, points3D


def write_model(
    cameras: Mapping[int, ColmapCamera],
    images: Mapping[int, ColmapImage],
    points3D: Mapping[int, ColmapPoint3D],
    path: PathLike,
    ext: str = ".bin",
) -> None:
    """Write a COLMAP model folder (created if needed), each file atomically.

    Args:
        cameras, images, points3D: the model, dicts keyed by id.
        path: the output folder.
        ext: ``".bin"`` (default) or ``".txt"``.
    """
    if ext not in (".bin", ".txt"):
        raise ValueError(f"ext must be '.bin' or '.txt', got {ext!r}")
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    # Serialise everything first so that a bad record leaves no file half-replaced.
    if ext == ".bin":
        blobs = [_cameras_binary(cameras), _images_binary(images), _points3D_binary(points3D)]
    else:
        blobs = [s.encode("utf-8") for s in (_cameras_text(cameras), _images_text(images), _points3D_text(points3D))]
    stale = [
        f
        for f in os.listdir(path)
        if f in {b + e for b in MODEL_FILES + ("rigs", "frames") for e in (".bin", ".txt")}
        and f not in {b + ext for b in MODEL_FILES}
    ]
    if stale:
        logger.warning(
            "%s also holds %s, which may disagree with the model written now", path, ", ".join(sorted(stale))
        )
    for base, blob in zip(MODEL_FILES, blobs):
        _atomic_write(os.path.join(path, base + ext), blob)
