"""Finding trained models in a model folder M."""

from __future__ import annotations

import os
import re
from typing import Optional

from utils.errors import InputError


def saved_iterations(model_path: str) -> list[int]:
    """Sorted iterations n with M/point_cloud/iteration_<n>/point_cloud.ply."""
    root = os.path.join(model_path, "point_cloud")
    if not os.path.isdir(root):
        return []
    its = []
    for name in os.listdir(root):
        m = re.fullmatch(r"iteration_(\d+)", name)
        if m and os.path.isfile(os.path.join(root, name, "point_cloud.ply")):
            its.append(int(m.group(1)))
    return sorted(its)


def resolve_iteration(model_path: str, iteration: Optional[int]) -> tuple[int, str]:
    """(n, path of its point_cloud.ply): ``iteration`` when given and >= 0, else the latest."""
    its = saved_iterations(model_path)
    if not its:
        raise InputError(os.path.join(model_path, "point_cloud"), "no trained model found (run train_3dgs.py first)")
    if iteration is None or iteration < 0:
        n = its[-1]
    elif iteration in its:
        n = iteration
    else:
        raise InputError(os.path.join(model_path, "point_cloud", f"iteration_{iteration}"), f"not saved; saved iterations: {its}")
    return n, os.path.join(model_path, "point_cloud", f"iteration_{n}", "point_cloud.ply")
