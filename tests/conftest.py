"""Shared fixtures. Tests run on the CPU by default; CUDA tests carry ``@pytest.mark.cuda``
and skip cleanly without a GPU."""

from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory):
    """A 12-view 64x48 demo scene (generated once per session; tests copy it before changing it)."""
    from tests.script_runner import run

    out = tmp_path_factory.mktemp("scene") / "D"
    run("scripts/make_demo_scene.py", str(out), "--num_views", "12", "--width", "64", "--height", "48",
        "--num_points", "1500", "--supersample", "1", "--no-progress")
    return out
