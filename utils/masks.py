"""Lifting 2D object masks to 3D Gaussians (the core of ``segmentation_3dgs.py``).

Method (SPEC §4.3), in five pure steps on tensors and arrays:

1. **Votes per view.** A render with ``weight_masks = [K+1, H, W]`` (the K object masks and an
   all-ones mask) gives, for every Gaussian i, ``w_in[k, i] = Σ_p w_i(p) M_k(p)`` and
   ``w_all[i] = Σ_p w_i(p)``, where ``w_i(p) = α_i(p) T_i(p)`` is its compositing weight at pixel
   p. The out-of-mask weight is ``w_all - w_in``.
2. **Normalisation per view** (:class:`VoteAccumulator`). Each view casts, per Gaussian, the
   fraction of its weight that falls inside each mask, ``f_k = w_in[k] / w_all`` ∈ [0, 1], with a
   confidence ``c = min(1, w_all / vote_saturation)``. So a view counts once whatever the size of
   the Gaussian's footprint in it (a close-up view does not out-vote ten distant ones), while a
   view in which the Gaussian is only faintly visible (mostly occluded, tiny) counts little.
   The score of object k is the confidence-weighted mean of the fractions over the views::

       score_k(i) = Σ_v c_v(i) f_k,v(i) / Σ_v c_v(i)      (0 where Σ_v c_v(i) = 0)

   i.e. the share of the Gaussian's (normalised) visible weight that lands inside mask k; for
   disjoint masks the scores of one Gaussian sum to at most 1.
3. **Assignment** (:func:`assign_objects`). Gaussian i goes to ``k* = argmax_k score_k(i)`` iff
   ``score_k* >= min_in_fraction``, ``score_k* - score_second >= margin`` and its total
   confidence ``Σ_v c_v(i) >= min_votes``; otherwise it stays in ``remained`` (label -1). Every
   Gaussian gets at most one object. Gaussians never visible stay in ``remained`` (unless step 4
   takes them).
4. **Growth** (:func:`grow_labels`, hysteresis in 3D): an unassigned Gaussian joins object k when
   at least ``grow_share`` of its nearest 3D neighbours carry label k and its own evidence points
   to k with ``score_k >= grow_fraction`` (rim Gaussians straddling the silhouette), or when it has
   no reliable evidence at all (occluded, e.g. inside the object) and a strict majority of its
   neighbours carry k. Background next to an object has mostly background neighbours: it stays.
5. **Floater removal** (:func:`remove_floaters`), per object: keep the large connected
   components of the radius graph of its centres (radius relative to the object's robust extent
   and to its point spacing), then drop statistical outliers (mean distance to the k nearest
   neighbours far above the object's average). Removed Gaussians go back to ``remained``.

Mask files are ``D/masked_image_rgba/<prompt>/<stem>.png`` (RGBA, alpha = mask; SPEC §2), read
at each camera's render resolution with a nearest-neighbour resize.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from utils.arguments import opt
from utils.errors import InputError
from utils.images import load_mask

log = logging.getLogger(__name__)

MASK_FOLDER = "masked_image_rgba"
"""Folder of D holding one sub-folder of RGBA masks per prompt (written by segmentation_2d.py)."""
UNASSIGNED = -1
"""Label of Gaussians that belong to no object (``remained``)."""


@dataclass
class SegmentationParams:
    """3D segmentation options (votes, assignment, growth, floater removal; see utils/masks.py)."""

    margin: float = opt(0.2, "the best object's score must exceed the runner-up's by this much (scores are in-mask fractions in [0, 1])")
    min_in_fraction: float = opt(0.5, "the best object's score (share of the Gaussian's visible weight inside that mask) must reach this")
    min_votes: float = opt(0.5, "minimum total vote confidence (about: number of views in which the Gaussian is clearly visible)")
    vote_saturation: float = opt(0.5, "a view's vote confidence is min(1, weight / this); weight = Σ_p α T of the Gaussian in that view, in pixels")
    seen_weight: float = opt(0.05, "a Gaussian is 'seen' by a view when its weight Σ_p α T there exceeds this many pixels (coverage report)")
    mask_threshold: int = opt(127, "a mask pixel is on when the PNG alpha exceeds this (0..254)")
    grow_fraction: float = opt(0.35, "growth: an unassigned Gaussian whose best score reaches this joins that object when at least --grow_share of its nearest neighbours belong to it (>= 1 disables)")
    grow_neighbors: int = opt(8, "growth: nearest neighbours (in 3D) that vote (0 disables growth)")
    grow_share: float = opt(0.5, "growth: share of those neighbours that must carry the object's label (Gaussians without evidence need a strict majority)")
    grow_rounds: int = opt(2, "growth: rounds of growth (each round can extend the previous one)")
    fill_unseen: bool = opt(True, "growth: Gaussians without reliable 2D evidence (confidence < --min_votes, e.g. occluded inside an object) take their neighbours' majority label")
    cluster_radius: float = opt(0.2, "floater removal: link Gaussians closer than this fraction of the object's robust box diagonal (5-95 percentiles; <= 0 disables)")
    cluster_nn_factor: float = opt(4.0, "floater removal: the link radius is at least this multiple of the median nearest-neighbour spacing")
    cluster_keep_fraction: float = opt(0.2, "floater removal: keep every connected component with at least this fraction of the largest one's Gaussians")
    sor_neighbors: int = opt(8, "statistical outlier removal: neighbours per Gaussian (0 disables)")
    sor_std: float = opt(4.0, "statistical outlier removal: drop Gaussians whose mean neighbour distance exceeds mean + this x std")

    def check(self) -> None:
        """Raise ValueError naming the first option out of range."""
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"--margin must be in [0, 1), got {self.margin}")
        if not 0.0 < self.min_in_fraction <= 1.0:
            raise ValueError(f"--min_in_fraction must be in (0, 1], got {self.min_in_fraction}")
        if self.min_votes < 0 or self.vote_saturation <= 0 or self.seen_weight < 0:
            raise ValueError("--min_votes and --seen_weight must be >= 0 and --vote_saturation > 0")
        if not 0 <= self.mask_threshold < 255:
            raise ValueError(f"--mask_threshold must be in 0..254, got {self.mask_threshold}")
        if self.cluster_nn_factor < 0 or not 0.0 <= self.cluster_keep_fraction <= 1.0:
            raise ValueError("--cluster_nn_factor must be >= 0 and --cluster_keep_fraction in [0, 1]")
        if self.grow_neighbors < 0 or self.grow_rounds < 0 or self.grow_fraction < 0 or not 0.0 < self.grow_share <= 1.0:
            raise ValueError("--grow_neighbors, --grow_rounds and --grow_fraction must be >= 0 and --grow_share in (0, 1]")
        if self.sor_neighbors < 0 or self.sor_std <= 0:
            raise ValueError("--sor_neighbors must be >= 0 and --sor_std > 0")


# ---------------------------------------------------------------------------------------------
# Mask files
# ---------------------------------------------------------------------------------------------
def mask_paths(source_path: str, prompts: list[str], stems: list[str]) -> dict[str, list[str]]:
    """``{prompt: [D/masked_image_rgba/<prompt>/<stem>.png for stem in stems]}``, checked to exist.

    Raises:
        InputError: a prompt folder is missing, or files are missing (the message lists the stems).
    """
    root = os.path.join(source_path, MASK_FOLDER)
    out: dict[str, list[str]] = {}
    for prompt in prompts:
        folder = os.path.join(root, prompt)
        if not os.path.isdir(folder):
            raise InputError(folder, f"mask folder of object {prompt!r} not found (run segmentation_2d.py first)")
        paths = [os.path.join(folder, f"{s}.png") for s in stems]
        missing = [s for s, p in zip(stems, paths) if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
            raise InputError(folder, f"no mask <stem>.png for {len(missing)} training view(s): {shown}")
        out[prompt] = paths
    return out


def load_view_masks(paths: list[str], width: int, height: int, threshold: int = 127) -> Tensor:
    """[K, H, W] bool masks of one view (alpha > ``threshold``), nearest-resized to ``width`` x ``height``."""
    if not paths:
        return torch.zeros(0, height, width, dtype=torch.bool)
    return torch.cat([load_mask(p, (width, height), threshold) for p in paths], dim=0)


def with_all_ones(masks: Tensor) -> Tensor:
    """[K, H, W] masks -> [K+1, H, W] float32 weight masks, the last one all ones."""
    k, h, w = masks.shape
    out = torch.ones(k + 1, h, w, dtype=torch.float32, device=masks.device)
    out[:k] = masks.to(torch.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Votes
# ---------------------------------------------------------------------------------------------
class VoteAccumulator:
    """Per-view normalised votes of N Gaussians for K objects (see the module docstring).

    Attributes:
        in_votes: [K, N] float64 Σ_v c_v(i) f_k,v(i).
        confidence: [N] float64 Σ_v c_v(i).
        seen_count: [N] int64 number of views with w_all > ``seen_weight``.
        num_views: views added so far.
    """

    def __init__(self, num_objects: int, num_gaussians: int, vote_saturation: float = 0.5, seen_weight: float = 0.05,
                 device: torch.device | str = "cpu"):
        if vote_saturation <= 0:
            raise ValueError(f"vote_saturation must be > 0, got {vote_saturation}")
        self.vote_saturation = float(vote_saturation)
        self.seen_weight = float(seen_weight)
        self.in_votes = torch.zeros(num_objects, num_gaussians, dtype=torch.float64, device=device)
        self.confidence = torch.zeros(num_gaussians, dtype=torch.float64, device=device)
        self.seen_count = torch.zeros(num_gaussians, dtype=torch.int64, device=device)
        self.num_views = 0

    def add_view(self, w_in: Tensor, w_all: Tensor) -> None:
        """Add one view.

        Args:
            w_in: [K, N] Σ_p w_i(p) M_k(p). w_all: [N] Σ_p w_i(p) (same view).
        """
        k, n = self.in_votes.shape
        if tuple(w_in.shape) != (k, n) or tuple(w_all.shape) != (n,):
            raise ValueError(f"expected w_in [{k}, {n}] and w_all [{n}], got {tuple(w_in.shape)} and {tuple(w_all.shape)}")
        w_in = w_in.to(self.in_votes)
        w_all = w_all.to(self.in_votes).clamp_min(0.0)
        conf = (w_all / self.vote_saturation).clamp(max=1.0)
        frac = (w_in / w_all.clamp_min(1e-12)).clamp(0.0, 1.0)
        self.in_votes += conf[None] * frac
        self.confidence += conf
        self.seen_count += (w_all > self.seen_weight).to(torch.int64)
        self.num_views += 1

    def scores(self) -> Tensor:
        """[K, N] in-mask fractions score_k(i) ∈ [0, 1] (0 for Gaussians never visible)."""
        return self.in_votes / self.confidence.clamp_min(1e-12)[None]


def assign_objects(scores: Tensor, confidence: Tensor, margin: float = 0.2, min_in_fraction: float = 0.5,
                   min_votes: float = 0.5) -> Tensor:
    """Arg-max assignment with a margin.

    Args:
        scores: [K, N] per-object scores. confidence: [N] total vote confidence.
        margin: best - runner-up must be >= this (with K = 1 the runner-up is 0).
        min_in_fraction: best must be >= this. min_votes: confidence must be >= this (and > 0).

    Returns:
        [N] int64 labels: object index in 0..K-1, or :data:`UNASSIGNED`.
    """
    k, n = scores.shape
    if tuple(confidence.shape) != (n,):
        raise ValueError(f"confidence must be [{n}], got {tuple(confidence.shape)}")
    labels = torch.full((n,), UNASSIGNED, dtype=torch.int64, device=scores.device)
    if k == 0 or n == 0:
        return labels
    if k == 1:
        best, arg = scores[0], torch.zeros(n, dtype=torch.int64, device=scores.device)
        second = torch.zeros_like(best)
    else:
        top = torch.topk(scores, 2, dim=0)
        best, second, arg = top.values[0], top.values[1], top.indices[0]
    ok = (best >= min_in_fraction) & (best - second >= margin) & (confidence >= min_votes) & (confidence > 0)
    labels[ok] = arg[ok]
    return labels


def grow_labels(xyz: np.ndarray, labels: np.ndarray, scores: np.ndarray, confidence: np.ndarray,
                params: SegmentationParams) -> np.ndarray:
    """Hysteresis growth of the assignment in 3D.

    The margin test leaves ambiguous Gaussians unassigned: those straddling a silhouette (their
    footprint is half inside the mask in the views that see them at the rim) and those that no view
    sees clearly (occluded, inside the object). In 3D they sit among the object's Gaussians. An
    unassigned Gaussian i joins object k when a strict majority of its ``grow_neighbors`` nearest
    Gaussians (all Gaussians, any label) carry label k, AND either its own evidence points to k
    (k is its arg-max and ``score_k(i) >= grow_fraction``) or it has no reliable evidence
    (``confidence < min_votes`` and ``fill_unseen``). Gaussians of the background next to an object
    (table around its base) have mostly background neighbours and stay unassigned.

    Args:
        xyz: [N, 3] centres. labels: [N] labels (-1 = unassigned). scores: [K, N]. confidence: [N].

    Returns:
        [N] new labels (assigned Gaussians keep theirs).
    """
    labels = np.asarray(labels).copy()
    k_obj, n = scores.shape
    nb = params.grow_neighbors
    if k_obj == 0 or nb <= 0 or params.grow_rounds <= 0 or n <= nb or not (labels >= 0).any():
        return labels
    from scipy.spatial import cKDTree

    best = scores.argmax(0)
    weak = (confidence >= params.min_votes) & (scores.max(0) >= params.grow_fraction) & (params.grow_fraction < 1.0)
    unseen = (confidence < params.min_votes) & bool(params.fill_unseen)
    cand = np.flatnonzero((labels == UNASSIGNED) & (weak | unseen))
    if len(cand) == 0:
        return labels
    _, nbr = cKDTree(xyz).query(xyz[cand], k=nb + 1)
    nbr = nbr[:, 1:]  # drop the point itself
    for _ in range(params.grow_rounds):
        todo = labels[cand] == UNASSIGNED
        if not todo.any():
            break
        nl = labels[nbr[todo]]  # [C, nb]
        counts = np.stack([(nl == k).sum(1) for k in range(k_obj)], 1)  # [C, K]
        major = counts.argmax(1)
        c = cand[todo]
        top = counts.max(1)
        ok = np.where(unseen[c], top * 2 > nb, (best[c] == major) & (top >= params.grow_share * nb))
        if not ok.any():
            break
        labels[c[ok]] = major[ok]
    return labels


# ---------------------------------------------------------------------------------------------
# Floaters
# ---------------------------------------------------------------------------------------------
def robust_diagonal(xyz: np.ndarray, lo: float = 5.0, hi: float = 95.0) -> float:
    """Diagonal of the box spanned by the ``lo``..``hi`` percentiles of [M, 3] points (0 if M < 2)."""
    if len(xyz) < 2:
        return 0.0
    a, b = np.percentile(xyz, [lo, hi], axis=0)
    return float(np.linalg.norm(b - a))


def cluster_keep_mask(xyz: np.ndarray, radius_fraction: float = 0.2, nn_factor: float = 4.0,
                      keep_fraction: float = 0.2) -> np.ndarray:
    """Connected components of the radius graph of [M, 3] centres; [M] bool, True = kept.

    The link radius is ``max(radius_fraction * robust_diagonal, nn_factor * median 1-NN spacing)``.
    The largest component is kept, and every other one with at least ``keep_fraction`` of its
    size (an object seen in two clear parts keeps both; small clumps are floaters).
    """
    m = len(xyz)
    if m < 3 or radius_fraction <= 0:
        return np.ones(m, dtype=bool)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    tree = cKDTree(xyz)
    nn = tree.query(xyz, k=2)[0][:, 1]
    radius = max(radius_fraction * robust_diagonal(xyz), nn_factor * float(np.median(nn)))
    if radius <= 0:
        return np.ones(m, dtype=bool)
    pairs = tree.query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    keep_comp = sizes >= max(1.0, keep_fraction * sizes.max())
    keep_comp[np.argmax(sizes)] = True
    return keep_comp[comp]


def statistical_inliers(xyz: np.ndarray, neighbors: int = 8, std_ratio: float = 4.0) -> np.ndarray:
    """[M] bool, False for points whose mean distance to their ``neighbors`` nearest neighbours
    exceeds the mean of that quantity over the set by more than ``std_ratio`` standard deviations."""
    m = len(xyz)
    if neighbors <= 0 or m <= neighbors + 1:
        return np.ones(m, dtype=bool)
    from scipy.spatial import cKDTree

    d = cKDTree(xyz).query(xyz, k=neighbors + 1)[0][:, 1:].mean(1)
    return d <= d.mean() + std_ratio * d.std()


def remove_floaters(xyz: np.ndarray, labels: np.ndarray, num_objects: int, params: SegmentationParams) -> tuple[np.ndarray, dict]:
    """Per object, send floaters back to :data:`UNASSIGNED`.

    Args:
        xyz: [N, 3] centres. labels: [N] int labels from :func:`assign_objects`.

    Returns:
        (new [N] labels, {object index: {"cluster": removed, "outliers": removed}}).
    """
    labels = np.asarray(labels).copy()
    removed: dict[int, dict[str, int]] = {}
    for k in range(num_objects):
        idx = np.flatnonzero(labels == k)
        keep = cluster_keep_mask(xyz[idx], params.cluster_radius, params.cluster_nn_factor, params.cluster_keep_fraction)
        n_cluster = int((~keep).sum())
        idx_kept = idx[keep]
        inl = statistical_inliers(xyz[idx_kept], params.sor_neighbors, params.sor_std)
        labels[idx[~keep]] = UNASSIGNED
        labels[idx_kept[~inl]] = UNASSIGNED
        removed[k] = {"cluster": n_cluster, "outliers": int((~inl).sum())}
    return labels, removed


# ---------------------------------------------------------------------------------------------
# The render loop
# ---------------------------------------------------------------------------------------------
@dataclass
class LiftResult:
    """What :func:`lift_masks` returns.

    Attributes:
        votes: the accumulated votes.
        mask_area: [V, K] mask pixels per view and object (at the render resolution).
        view_names: the V image stems, in order.
    """

    votes: VoteAccumulator
    mask_area: np.ndarray
    view_names: list[str]


def lift_masks(
    render_weights: Callable[[object, Tensor], Tensor],
    views: Iterable[tuple[object, Callable[[], Tensor]]],
    num_objects: int,
    num_gaussians: int,
    params: SegmentationParams,
    device: torch.device | str = "cpu",
) -> LiftResult:
    """Accumulate the votes of every view.

    Args:
        render_weights: ``(camera, weight_masks [K+1, H, W]) -> [K+1, N]`` per-Gaussian weights
            (e.g. ``render(camera, model, weight_masks=...).weights``).
        views: (camera, loader) pairs; ``loader()`` returns the view's [K, H, W] bool masks.
    """
    acc = VoteAccumulator(num_objects, num_gaussians, params.vote_saturation, params.seen_weight, device)
    areas, names = [], []
    for cam, loader in views:
        masks = loader().to(device)
        if masks.shape[0] != num_objects:
            raise ValueError(f"view {getattr(cam, 'image_name', '?')}: {masks.shape[0]} masks for {num_objects} objects")
        with torch.no_grad():
            w = render_weights(cam, with_all_ones(masks))
        acc.add_view(w[:num_objects], w[num_objects])
        areas.append(masks.reshape(num_objects, -1).sum(1).cpu().numpy())
        names.append(getattr(cam, "image_name", str(len(names))))
    mask_area = np.stack(areas) if areas else np.zeros((0, num_objects), dtype=np.int64)
    return LiftResult(acc, mask_area, names)


def segment(xyz: np.ndarray, votes: VoteAccumulator, params: SegmentationParams) -> tuple[np.ndarray, dict]:
    """Assignment, growth, floater removal: ([N] int64 labels, statistics per object index)."""
    scores = votes.scores()
    conf = votes.confidence
    strong = assign_objects(scores, conf, params.margin, params.min_in_fraction, params.min_votes).cpu().numpy()
    grown = grow_labels(xyz, strong, scores.cpu().numpy(), conf.cpu().numpy(), params)
    labels, removed = remove_floaters(xyz, grown, scores.shape[0], params)
    stats = {k: {"assigned": int((strong == k).sum()), "grown": int(((grown == k) & (strong != k)).sum()), **removed[k],
                 "final": int((labels == k).sum())} for k in range(scores.shape[0])}
    return labels, stats


__all__ = [
    "MASK_FOLDER", "UNASSIGNED", "LiftResult", "SegmentationParams", "VoteAccumulator", "assign_objects",
    "cluster_keep_mask", "grow_labels", "lift_masks", "load_view_masks", "mask_paths", "remove_floaters", "robust_diagonal", "segment",
    "statistical_inliers", "with_all_ones",
]
