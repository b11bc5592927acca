"""Proxy (generated object) bookkeeping shared by stages 5-7.

Stage 6 truncation keeps the untouched generator output as ``M/generated/<prompt>.ply.bak``:
re-running starts again from the ``.bak`` and never overwrites it. If stage 5 writes a new
``<prompt>.ply`` after a truncation, the file no longer matches the checksum that truncation
recorded in ``M/generated/truncation.json``; it is then a new generator output and becomes the
new ``.bak``.
"""

from __future__ import annotations

import os

import torch

from utils.generation import GENERATED  # noqa: F401  (part of this module's API)
from utils.io import file_sha256  # noqa: F401  (part of this module's API)

BACKUP_SUFFIX = ".bak"
TRUNCATION_RECORD = "truncation.json"


def opacity_keep_mask(opacity_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """[N] bool: Gaussians whose activated opacity sigmoid(logit) is at least ``threshold``."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"opacity threshold must be in [0, 1), got {threshold}")
    return torch.sigmoid(opacity_logits) >= threshold


def list_proxies(generated_dir: str) -> list[str]:
    """Sorted prompts with a ``<prompt>.ply`` in ``generated_dir``."""
    return sorted(f[: -len(".ply")] for f in os.listdir(generated_dir) if f.endswith(".ply") and not f.startswith("."))
