"""COLMAP model I/O: round trips, interoperability with pycolmap, and bad input."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from scene.colmap import (
    CAMERA_MODEL_BY_ID,
    CAMERA_MODEL_BY_NAME,
    ColmapCamera,
    ColmapImage,
    ColmapPoint3D,
    find_sparse_dir,
    pinhole_intrinsics,
    qvec_to_rotmat,
    read_cameras_binary,
    read_cameras_text,
    read_images_binary,
    read_images_text,
    read_model,
    read_points3D_binary,
    read_points3D_text,
    rotmat_to_qvec,
    write_model,
)
from utils.errors import InputError


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def random_unit_quats(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def make_model(seed: int = 0) -> tuple[dict, dict, dict]:
    """A small model with several camera models, an image without keypoints, a name with a space,
    a point with an empty track."""
    rng = np.random.default_rng(seed)
    cameras = {
        1: ColmapCamera(1, "PINHOLE", 640, 480, np.array([500.25, 510.5, 320.125, 240.0625])),
        2: ColmapCamera(2, "SIMPLE_PINHOLE", 320, 240, np.array([300.0, 160.5, 120.5])),
        5: ColmapCamera(5, "OPENCV", 800, 600, rng.normal(size=8)),
        7: ColmapCamera(7, "FULL_OPENCV", 100, 50, rng.normal(size=12)),
    }
    images = {}
    names = ["a.jpg", "b.png", "sub/c.jpg", "with space.jpg", "e.JPG"]
    cam_ids = [1, 2, 5, 7, 1]
    for k, (name, cam_id) in enumerate(zip(names, cam_ids)):
        m = 0 if k == 3 else int(rng.integers(1, 20))
        ids = rng.integers(-1, 50, size=m)
        images[10 + k] = ColmapImage(
            id=10 + k,
            qvec=random_unit_quats(rng, 1)[0],
            tvec=rng.normal(size=3) * 3,
            camera_id=cam_id,
            name=name,
            xys=rng.random((m, 2)) * 300,
            point3D_ids=ids,
        )
    points = {}
    for pid in (1, 2, 99, 2**40):
        L = 0 if pid == 99 else int(rng.integers(1, 6))
        points[pid] = ColmapPoint3D(
            id=pid,
            xyz=rng.normal(size=3),
            rgb=rng.integers(0, 256, size=3),
            error=float(rng.random()) if pid != 2 else -1.0,
            image_ids=rng.integers(10, 15, size=L),
            point2D_idxs=rng.integers(0, 20, size=L),
        )
    return cameras, images, points


def assert_models_equal(a: tuple, b: tuple) -> None:
    for da, db in zip(a, b):
        assert sorted(da) == sorted(db)
        for k in da:
            assert da[k] == db[k], (da[k], db[k])


def pycolmap_pose(image) -> tuple[np.ndarray, np.ndarray]:
    """(R [3,3], t [3]) world-to-camera of a pycolmap image (cam_from_world is a method in 4.x)."""
    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw
    return np.asarray(cfw.rotation.matrix()), np.asarray(cfw.translation)


def build_pycolmap_reconstruction(seed: int = 0):
    """A pycolmap Reconstruction with a PINHOLE and a SIMPLE_PINHOLE camera, 4 posed images with
    2D points and 3D points with tracks."""
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    cam1 = pycolmap.Camera.create_from_model_name(1, "PINHOLE", 500.0, 640, 480)
    cam1.params = [500.0, 520.0, 321.5, 239.25]
    cam2 = pycolmap.Camera.create_from_model_name(2, "SIMPLE_PINHOLE", 300.0, 320, 240)
    cam2.params = [300.0, 158.0, 121.0]
    rec.add_camera_with_trivial_rig(cam1)
    rec.add_camera_with_trivial_rig(cam2)
    for image_id in range(1, 5):
        q = random_unit_quats(rng, 1)[0]  # w, x, y, z
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([q[1], q[2], q[3], q[0]])), rng.normal(size=3))
        image = pycolmap.Image(
            name=f"frame_{image_id:03d}.jpg",
            keypoints=rng.random((6, 2)) * 200,
            camera_id=1 if image_id <= 2 else 2,
            image_id=image_id,
        )
        rec.add_image_with_trivial_frame(image, pose)
    for j in range(5):
        track = pycolmap.Track()
        for image_id in (1, 2, 3, 4)[: 2 + j % 3]:
            track.add_element(image_id, j)
        rec.add_point3D(rng.normal(size=3), track, rng.integers(0, 256, size=3).astype(np.uint8))
    return rec


def assert_matches_pycolmap(model: tuple, rec) -> None:
    cameras, images, points3D = model
    assert sorted(cameras) == sorted(rec.cameras.keys())
    for cam_id, cam in cameras.items():
        ref = rec.camera(cam_id)
        assert cam.model == ref.model_name
        assert (cam.width, cam.height) == (ref.width, ref.height)
        np.testing.assert_allclose(cam.params, ref.params, rtol=0, atol=1e-12)
    assert sorted(images) == sorted(rec.images.keys())
    for image_id, im in images.items():
        ref = rec.image(image_id)
        assert im.name == ref.name and im.camera_id == ref.camera_id
        R, t = pycolmap_pose(ref)
        np.testing.assert_allclose(im.rotmat(), R, atol=1e-12)
        np.testing.assert_allclose(im.tvec, t, atol=1e-12)
        q_ref = rotmat_to_qvec(R)
        assert min(np.abs(im.qvec - q_ref).max(), np.abs(im.qvec + q_ref).max()) < 1e-9
        xys = np.array([p.xy for p in ref.points2D]).reshape(-1, 2)
        ids = np.array([p.point3D_id for p in ref.points2D], dtype=np.uint64).astype(np.int64)
        np.testing.assert_allclose(im.xys, xys, atol=1e-12)
        np.testing.assert_array_equal(im.point3D_ids, ids)
    assert sorted(points3D) == sorted(rec.points3D.keys())
    for pid, p in points3D.items():
        ref = rec.point3D(pid)
        np.testing.assert_allclose(p.xyz, ref.xyz, atol=1e-12)
        np.testing.assert_array_equal(p.rgb, ref.color)
        track = sorted((e.image_id, e.point2D_idx) for e in ref.track.elements)
        assert sorted(zip(p.image_ids.tolist(), p.point2D_idxs.tolist())) == track


# ---------------------------------------------------------------------------------------------
# Camera models and rotations
# ---------------------------------------------------------------------------------------------
def test_camera_model_table_matches_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    for name, model in CAMERA_MODEL_BY_NAME.items():
        ref = pycolmap.Camera.create_from_model_name(1, name, 100.0, 100, 100)
        assert int(ref.model) == model.model_id, name
        assert len(ref.params) == model.num_params, name
    assert len(CAMERA_MODEL_BY_ID) == len(CAMERA_MODEL_BY_NAME)


def test_qvec_rotmat_round_trip():
    rng = np.random.default_rng(1)
    q = random_unit_quats(rng, 500)
    q[q[:, 0] < 0] *= -1
    R = qvec_to_rotmat(q)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(rotmat_to_qvec(R), q, atol=1e-12)
    # Special rotations (180 degrees about each axis, identity) where naive formulas divide by ~0.
    for R0 in (np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        np.testing.assert_allclose(qvec_to_rotmat(rotmat_to_qvec(R0)), R0, atol=1e-12)
    # A non-unit quaternion is normalised; noise on R gives the nearby rotation.
    np.testing.assert_allclose(qvec_to_rotmat(3.0 * q[0]), R[0], atol=1e-12)
    noisy = rotmat_to_qvec(R[0] + 1e-6 * rng.normal(size=(3, 3)))
    assert abs(abs(noisy @ q[0]) - 1.0) < 1e-9
    # The convention: w, x, y, z; 90 degrees about z maps x to y.
    Rz = qvec_to_rotmat(np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]))
    np.testing.assert_allclose(Rz @ [1.0, 0, 0], [0, 1.0, 0], atol=1e-12)
    with pytest.raises(ValueError):
        qvec_to_rotmat(np.zeros(4))


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_round_trip(tmp_path, ext):
    model = make_model()
    write_model(*model, tmp_path, ext=ext)
    assert sorted(os.listdir(tmp_path)) == sorted(f"{b}{ext}" for b in ("cameras", "images", "points3D"))
    assert_models_equal(read_model(tmp_path), model)
    assert_models_equal(read_model(tmp_path, ext=ext), model)


def test_text_and_binary_agree(tmp_path):
    model = make_model(3)
    write_model(*model, tmp_path / "t", ext=".txt")
    write_model(*read_model(tmp_path / "t"), tmp_path / "b", ext=".bin")
    assert_models_equal(read_model(tmp_path / "b"), model)


def test_empty_points3D_is_fine(tmp_path):
    cameras, images, _ = make_model()
    for ext in (".bin", ".txt"):
        write_model(cameras, images, {}, tmp_path / ext[1:], ext=ext)
        c, i, p = read_model(tmp_path / ext[1:])
        assert p == {} and len(i) == len(images)


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_read_model_written_by_pycolmap(tmp_path, ext):
    rec = build_pycolmap_reconstruction()
    (rec.write_binary if ext == ".bin" else rec.write_text)(str(tmp_path))
    assert os.path.isfile(tmp_path / f"images{ext}")
    model = read_model(tmp_path)
    assert_matches_pycolmap(model, rec)
    cameras = model[0]
    assert pinhole_intrinsics(cameras[1]) == (500.0, 520.0, 321.5, 239.25)
    assert pinhole_intrinsics(cameras[2]) == (300.0, 300.0, 158.0, 121.0)


@pytest.mark.parametrize("ext", [".bin", ".txt"])
def test_pycolmap_reads_our_model(tmp_path, ext):
    pycolmap = pytest.importorskip("pycolmap")
    rec = build_pycolmap_reconstruction(seed=5)
    (tmp_path / "ref").mkdir()
    rec.write_binary(str(tmp_path / "ref"))
    model = read_model(tmp_path / "ref")
    write_model(*model, tmp_path / "ours", ext=ext)
    ours = pycolmap.Reconstruction(str(tmp_path / "ours"))
    assert ours.num_reg_images() == 4 and ours.num_points3D() == 5
    assert_matches_pycolmap(model, ours)
    assert_matches_pycolmap(read_model(tmp_path / "ours"), rec)


# ---------------------------------------------------------------------------------------------
# Corrupt and truncated files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", ["cameras", "images", "points3D"])
def test_truncated_binary(tmp_path, base):
    model = make_model()
    write_model(*model, tmp_path / "ok", ext=".bin")
    data = (tmp_path / "ok" / f"{base}.bin").read_bytes()
    reader = {"cameras": read_cameras_binary, "images": read_images_binary, "points3D": read_points3D_binary}[base]
    offsets = sorted({0, 3, 8, 12, 20, 40, 70, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1})
    for cut in offsets:
        path = tmp_path / f"{base}_{cut}.bin"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError) as e:
            reader(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg
        assert "truncated" in msg or "corrupt" in msg, msg
    # Extra bytes after the last record are corruption as well.
    path = tmp_path / f"{base}_long.bin"
    path.write_bytes(data + b"\0\0\0")
    with pytest.raises(InputError, match="unexpected bytes"):
        reader(path)


def test_truncated_model_through_read_model(tmp_path):
    write_model(*make_model(), tmp_path, ext=".bin")
    f = tmp_path / "images.bin"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 30])
    with pytest.raises(InputError, match=r"images\.bin: truncated"):
        read_model(tmp_path)


def test_absurd_counts_and_unknown_model(tmp_path):
    huge = struct.pack("<Q", 2**62)
    readers = (("c.bin", read_cameras_binary), ("i.bin", read_images_binary), ("p.bin", read_points3D_binary))
    for name, reader in readers:
        path = tmp_path / name
        path.write_bytes(huge + b"\0" * 100)
        with pytest.raises(InputError, match="header says"):
            reader(path)
    # One image whose 2D point count is absurd.
    path = tmp_path / "i2.bin"
    path.write_bytes(
        struct.pack("<Q", 1) + struct.pack("<I4d3dI", 1, 1, 0, 0, 0, 0, 0, 0, 1) + b"x.jpg\0" + struct.pack("<Q", 2**61)
    )
    with pytest.raises(InputError, match=r"truncated: expected \d+ bytes for the \d+ 2D points of image 1"):
        read_images_binary(path)
    # A camera with an unknown model id.
    path = tmp_path / "c2.bin"
    path.write_bytes(struct.pack("<Q", 1) + struct.pack("<IiQQ", 3, 99, 10, 10) + b"\0" * 64)
    with pytest.raises(InputError, match="camera 3 has unknown model id 99"):
        read_cameras_binary(path)
    # A zero quaternion.
    path = tmp_path / "i3.bin"
    head = struct.pack("<I4d3dI", 4, 0, 0, 0, 0, 0, 0, 0, 1)
    path.write_bytes(struct.pack("<Q", 1) + head + b"x.jpg\0" + struct.pack("<Q", 0))
    with pytest.raises(InputError, match="image 4 has an invalid rotation"):
        read_images_binary(path)


CAMERA_LINES = [
    ("1 PINHOLE 640 480 500 500 320", "needs 4 parameters, got 3"),
    ("1 PINHOLE 640 480 500 500 320 240 1", "needs 4 parameters, got 5"),
    ("1 FANCY 640 480 500 500 320 240", "unknown model 'FANCY'"),
    ("1 PINHOLE 640", "got 3 fields"),
    ("x PINHOLE 640 480 500 500 320 240", "CAMERA_ID is not a valid number"),
    ("1 PINHOLE 640 480 500 abc 320 240", "not a valid number: 'abc'"),
    ("1 PINHOLE 0 480 500 500 320 240", "invalid image size"),
    ("1 PINHOLE 640 480 500 500 320 240\n1 PINHOLE 640 480 500 500 320 240", "appears twice"),
]
IMAGE_LINES = [
    ("1 1 0 0 0 0 0 0 1\n", "got 9 fields"),
    ("1 1 0 0 0 0 0 zero 1 a.jpg\n", "not a valid number: 'zero'"),
    ("1 1 0 0 0 0 0 0 1 a.jpg\n1.0 2.0\n", "X Y POINT3D_ID triples, got 2 numbers"),
    ("1 1 0 0 0 0 0 0 1 a.jpg\n1.0 2.0 nope\n", "contain a non-number"),
    ("1 1 0 0 0 0 0 0 1 a.jpg\n1.0 2.0 1.5\n", "contain a non-number"),
    ("1 0 0 0 0 0 0 0 1 a.jpg\n\n", "invalid rotation"),
    ("-3 1 0 0 0 0 0 0 1 a.jpg\n\n", "IMAGE_ID is not a valid number"),
]
POINT_LINES = [
    ("1 0 0 0 255 255 255 0.5 1", "got 9 fields"),
    ("1 0 0 0 255 255 255", "got 7 fields"),
    ("1 0 0 0 256 0 0 0.5", "out of 0..255"),
    ("1 0 0 a 1 1 1 0.5", "not a valid number: 'a'"),
    ("1 0 0 0 1 1 1 0.5 1 x", "contains a non-integer"),
]


@pytest.mark.parametrize(
    "reader,text,expected",
    [(read_cameras_text, t, e) for t, e in CAMERA_LINES]
    + [(read_images_text, t, e) for t, e in IMAGE_LINES]
    + [(read_points3D_text, t, e) for t, e in POINT_LINES],
)
def test_garbage_text_lines(tmp_path, reader, text, expected):
    path = tmp_path / "model.txt"
    path.write_text("# a comment\n" + text + "\n")
    with pytest.raises(InputError) as e:
        reader(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "line " in msg and expected in msg, msg


def test_binary_file_named_txt(tmp_path):
    write_model(*make_model(), tmp_path, ext=".bin")
    os.rename(tmp_path / "images.bin", tmp_path / "images.txt")
    with pytest.raises(InputError, match=r"images\.txt"):
        read_images_text(tmp_path / "images.txt")


def test_text_image_name_with_spaces_and_empty_points_line(tmp_path):
    path = tmp_path / "images.txt"
    path.write_text("1 1 0 0 0 0 0 0 2 my frame 1.jpg\n\n2 1 0 0 0 1 2 3 2 b.jpg\n1 2 -1 3 4 7\n")
    images = read_images_text(path)
    assert images[1].name == "my frame 1.jpg" and images[1].stem == "my frame 1" and len(images[1].xys) == 0
    np.testing.assert_array_equal(images[2].xys, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(images[2].point3D_ids, [-1, 7])


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match="missing COLMAP model folder"):
        read_model(tmp_path / "nope")
    with pytest.raises(InputError, match="no COLMAP model files"):
        read_model(tmp_path)
    write_model(*make_model(), tmp_path, ext=".bin")
    os.remove(tmp_path / "points3D.bin")
    with pytest.raises(InputError) as e:
        read_model(tmp_path)
    assert str(tmp_path / "points3D.bin") in str(e.value)


def test_image_with_unknown_camera(tmp_path):
    cameras, images, points = make_model()
    del cameras[2]
    write_model(cameras, images, points, tmp_path, ext=".txt")
    with pytest.raises(InputError, match=r"images\.txt: image 11 \(b\.png\) uses camera 2"):
        read_model(tmp_path)


# ---------------------------------------------------------------------------------------------
# Folders and intrinsics
# ---------------------------------------------------------------------------------------------
def test_find_sparse_dir(tmp_path):
    model = make_model()
    d1 = tmp_path / "flat"
    write_model(*model, d1 / "sparse", ext=".bin")
    assert find_sparse_dir(d1) == str(d1 / "sparse")
    d2 = tmp_path / "nested"
    write_model(*model, d2 / "sparse" / "0", ext=".txt")
    assert find_sparse_dir(d2) == str(d2 / "sparse" / "0")
    assert_models_equal(read_model(find_sparse_dir(d2)), model)
    d3 = tmp_path / "none"
    d3.mkdir()
    with pytest.raises(InputError) as e:
        find_sparse_dir(d3)
    assert str(e.value).startswith(str(d3 / "sparse") + ":")
    (d3 / "sparse" / "0").mkdir(parents=True)
    with pytest.raises(InputError, match="no COLMAP model") as e:
        find_sparse_dir(d3)
    assert str(d3 / "sparse") in str(e.value)


def test_pinhole_intrinsics():
    assert pinhole_intrinsics(ColmapCamera(1, "PINHOLE", 10, 10, [1, 2, 3, 4])) == (1, 2, 3, 4)
    assert pinhole_intrinsics(ColmapCamera(1, "SIMPLE_PINHOLE", 10, 10, [5, 3, 4])) == (5, 5, 3, 4)
    cam = ColmapCamera(4, "OPENCV", 10, 10, np.zeros(8))
    with pytest.raises(InputError) as e:
        pinhole_intrinsics(cam, "D/sparse/cameras.bin")
    msg = str(e.value)
    assert msg.startswith("D/sparse/cameras.bin: camera 4 has model OPENCV")
    assert "only PINHOLE and SIMPLE_PINHOLE are supported" in msg and "convert.py" in msg
    with pytest.raises(InputError, match="convert.py"):
        pinhole_intrinsics(ColmapCamera(2, "SIMPLE_RADIAL", 10, 10, np.zeros(4)))
