"""Stage 6: opacity truncation and its .bak rules."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

from scene.gaussian_model import GaussianModel
from tests.conftest import ROOT


def proxy(n=100, seed=0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    opac = torch.linspace(0.01, 0.99, n)
    params = {"means": torch.rand(n, 3, generator=g) - 0.5, "sh0": torch.rand(n, 1, 3, generator=g), "shN": torch.zeros(n, 0, 3),
              "opacities": torch.logit(opac), "scales": torch.full((n, 3), -4.0), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)}
    return GaussianModel(0, params)


def run(*args):
    return subprocess.run([sys.executable, "truncation_opacity.py", *args], cwd=ROOT, capture_output=True, text=True)


def test_truncation_keeps_backup_and_restarts_from_it(tmp_path):
    gen = tmp_path / "generated"
    gen.mkdir()
    proxy().save_ply(gen / "red box.ply")
    original = (gen / "red box.ply").read_bytes()
    assert run("-m", str(tmp_path), "--threshold", "0.5").returncode == 0
    out = GaussianModel.from_ply(gen / "red box.ply")
    assert len(out) == int((torch.linspace(0.01, 0.99, 100) >= 0.5).sum()) and float(out.opacities.min()) >= 0.5 - 1e-6
    assert (gen / "red box.ply.bak").read_bytes() == original
    # a re-run with a lower threshold starts from the untouched output, never overwriting the .bak
    assert run("-m", str(tmp_path), "--threshold", "0.1").returncode == 0
    assert len(GaussianModel.from_ply(gen / "red box.ply")) == int((torch.linspace(0.01, 0.99, 100) >= 0.1).sum())
    assert (gen / "red box.ply.bak").read_bytes() == original
    rec = json.loads((gen / "truncation.json").read_text())
    assert rec["threshold"] == 0.1 and rec["objects"]["red box"]["before"] == 100
    # stage 5 regenerates the proxy: the new output becomes the .bak
    proxy(n=50, seed=1).save_ply(gen / "red box.ply")
    new = (gen / "red box.ply").read_bytes()
    assert run("-m", str(tmp_path)).returncode == 0
    assert (gen / "red box.ply.bak").read_bytes() == new
    assert not any(p.name.startswith(".") for p in gen.iterdir()), "temporary files left behind"


def test_truncation_without_record_never_replaces_backup(tmp_path):
    gen = tmp_path / "generated"
    gen.mkdir()
    proxy().save_ply(gen / "a.ply")
    original = (gen / "a.ply").read_bytes()
    assert run("-m", str(tmp_path), "--threshold", "0.5").returncode == 0
    (gen / "truncation.json").unlink()
    assert run("-m", str(tmp_path), "--threshold", "0.2").returncode == 0
    assert (gen / "a.ply.bak").read_bytes() == original
    assert len(GaussianModel.from_ply(gen / "a.ply")) == int((torch.linspace(0.01, 0.99, 100) >= 0.2).sum())


def test_bad_input(tmp_path):
    r = run("-m", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "generated" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    gen = tmp_path / "generated"
    gen.mkdir()
    proxy().save_ply(gen / "a.ply")
    proxy(seed=2).save_ply(gen / "b.ply")
    before = {p.name: p.read_bytes() for p in gen.iterdir()}
    # every Gaussian would go: nothing written for any object
    r = run("-m", str(tmp_path), "--threshold", "0.999")
    assert r.returncode == 2 and "nothing would remain" in r.stderr and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in gen.iterdir()} == before
    r = run("-m", str(tmp_path), "--object_name", "c")
    assert r.returncode == 2 and "c.ply" in r.stderr
    (gen / "b.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n")
    r = run("-m", str(tmp_path))
    assert r.returncode == 2 and "b.ply" in r.stderr
    assert np.array_equal(np.frombuffer((gen / "a.ply").read_bytes(), np.uint8), np.frombuffer(before["a.ply"], np.uint8))
