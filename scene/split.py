"""Train/test split files.

A split file is YAML with two keys, ``train`` and ``test``, each a list of image stems (the file
name without its last extension, see SPEC section 3)::

    train:
    - frame_0001
    - frame_0002
    test:
    - frame_0000

:func:`make_split` builds such a split from the image stems of a scene (an LLFF-style hold-out
``every:N`` or held-out arcs of the capture path ``arcs:F[:K]``); :func:`write_split` writes it and
:func:`load_split` reads and checks it against the images of the scene.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable, Union

import yaml

from utils.errors import InputError
from utils.io import atomic_path

logger = logging.getLogger(__name__)

SplitSpec = Union[tuple[str, int], tuple[str, float, int]]

DEFAULT_NUM_ARCS = 2
"""Number of held-out arcs of ``arcs:F`` when K is not given."""

MAX_LISTED_UNKNOWN = 5
"""How many unknown stems an error message lists before it only gives the count."""


class _StringScalarLoader(yaml.SafeLoader):
    """A safe YAML loader that keeps number-like (and boolean-like) scalars as strings.

    Frame stems are often numbers: YAML 1.1 would read ``00010`` as the octal integer 8 and
    ``1e3`` as a float, losing the real name. Quoted and unquoted names read the same here.
    Booleans go too (a frame may be named ``on`` or ``no``). Only the int, float and bool resolvers
    are removed; everything else is ``yaml.SafeLoader``.
    """


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
_StringScalarLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def _resolve_entry(entry: object, known: set[str]) -> str | None:
    """The stem an entry of a split list names (None when it is not a name at all).

    Ints are names (``12`` -> ``"12"``). An entry that is not itself a known stem but whose last
    extension can be stripped to give one (``"frame.png"`` -> ``"frame"``) names that stem;
    otherwise the entry is returned unchanged (and later reported as unknown).
    """
    if isinstance(entry, bool) or not isinstance(entry, (str, int)):
        return None
    s = str(entry).strip()
    if not s:
        return None
    if s in known:
        return s
    root, ext = os.path.splitext(s)
    if ext and root in known:
        return root
    return s


def _stem_list(path: str, data: dict, key: str, known: set[str]) -> list[str]:
    """The checked, de-duplicated, sorted list of stems under ``key`` of a split mapping."""
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise InputError(path, f"'{key}' must be a list of image names, got {type(value).__name__}")
    stems: list[str] = []
    for i, entry in enumerate(value):
        stem = _resolve_entry(entry, known)
        if stem is None:
            raise InputError(path, f"entry {i} of '{key}' is not an image name: {entry!r}")
        stems.append(stem)
    unique = sorted(set(stems))
    if len(unique) < len(stems):
        logger.warning("%s: '%s' lists %d names more than once", path, key, len(stems) - len(unique))
    unknown = [s for s in unique if s not in known]
    if unknown:
        shown = ", ".join(unknown[:MAX_LISTED_UNKNOWN]) + (", ..." if len(unknown) > MAX_LISTED_UNKNOWN else "")
        raise InputError(path, f"'{key}' names {len(unknown)} images that are not in the scene: {shown}")
    return unique


def load_split(path: str | os.PathLike, known_stems: Iterable[str]) -> dict[str, list[str]]:
    """Read and check a split file.

    Args:
        path: the YAML split file.
        known_stems: stems of the scene's images (registered frames).

    Returns:
        ``{"train": [...], "test": [...]}``, sorted stems, ``test`` possibly empty.

    Raises:
        InputError: naming the split file when it is missing, not YAML, not a mapping, lacks
            ``train``, names images unknown to the scene, puts a stem in both lists or has an
            empty ``train``.
    """
    path = os.fspath(path)
    known = {str(s) for s in known_stems}
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StringScalarLoader)  # a SafeLoader: builds plain data only
    except FileNotFoundError:
        raise InputError(path, "missing split file") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise InputError(path, f"not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise InputError(path, f"expected a mapping with keys 'train' and 'test', got {got}")
    if "train" not in data:
        raise InputError(path, f"no 'train' key (keys: {', '.join(map(str, data)) or 'none'})")
    extra = sorted(str(k) for k in data if k not in ("train", "test"))
    if extra:
        logger.info("%s: ignoring keys %s", path, ", ".join(extra))
    train = _stem_list(path, data, "train", known)
    test = _stem_list(path, data, "test", known)
    if not train:
        raise InputError(path, "'train' is empty")
    both = sorted(set(train) & set(test))
    if both:
        shown = ", ".join(both[:MAX_LISTED_UNKNOWN]) + (", ..." if len(both) > MAX_LISTED_UNKNOWN else "")
        raise InputError(path, f"{len(both)} images are in both 'train' and 'test': {shown}")
    if not test:
        logger.warning("%s: no test images ('test' is %s)", path, "missing" if "test" not in data else "empty")
    return {"train": train, "test": test}


# ---------------------------------------------------------------------------------------------
# Making
# ---------------------------------------------------------------------------------------------
_EVERY_RE = re.compile(r"^every:(\d+)$")
_ARCS_RE = re.compile(r"^arcs:([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)(?::(\d+))?$")


def parse_split_spec(spec: str) -> SplitSpec:
    """Parse ``every:N`` (N >= 2) or ``arcs:F`` / ``arcs:F:K`` (0 < F < 1, K >= 1).

    Returns:
        ``("every", N)`` or ``("arcs", F, K)``.

    Raises:
        ValueError: naming the spec and the accepted forms.
    """
    s = str(spec).strip()
    m = _EVERY_RE.match(s)
    if m:
        n = int(m.group(1))
        if n < 2:
            raise ValueError(f"split spec {spec!r}: N of every:N must be >= 2 (every:1 leaves no training view)")
        return ("every", n)
    m = _ARCS_RE.match(s)
    if m:
        frac = float(m.group(1))
        k = int(m.group(2)) if m.group(2) is not None else DEFAULT_NUM_ARCS
        if not 0.0 < frac < 1.0:
            raise ValueError(f"split spec {spec!r}: the held-out fraction F of arcs:F must be in (0, 1)")
        if k < 1:
            raise ValueError(f"split spec {spec!r}: the number of arcs K of arcs:F:K must be >= 1")
        return ("arcs", frac, k)
    raise ValueError(
        f"split spec {spec!r} not understood: use every:N (every Nth view is a test view, e.g. every:8) "
        "or arcs:F[:K] (K contiguous arcs holding a fraction F of the views out, e.g. arcs:0.66)"
    )


def _arc_test_indices(n: int, frac: float, k: int) -> list[int]:
    """Indices of K contiguous held-out arcs in 0..n-1, one centred in each of K equal segments.

    The number of test views is ``round(frac * n)`` clamped to [K, n - 1]; each arc gets a share
    proportional to its segment's length and stays inside its segment, so arcs never touch
    across segments unless a segment is entirely held out.
    """
    n_test = min(max(int(round(frac * n)), k), n - 1)
    bounds = [(i * n) // k for i in range(k + 1)]
    lengths = [bounds[i + 1] - bounds[i] for i in range(k)]
    # Largest-remainder apportionment of n_test over the segments, never above a segment's length.
    exact = [n_test * length / n for length in lengths]
    sizes = [min(int(e), length) for e, length in zip(exact, lengths)]
    order = sorted(range(k), key=lambda i: (-(exact[i] - int(exact[i])), i))
    short = n_test - sum(sizes)
    while short > 0:
        progressed = False
        for i in order:
            if short and sizes[i] < lengths[i]:
                sizes[i] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    test: list[int] = []
    for i in range(k):
        start = bounds[i] + (lengths[i] - sizes[i]) // 2
        test.extend(range(start, start + sizes[i]))
    return test


def make_split(stems: list[str], spec: str) -> dict[str, list[str]]:
    """Split image stems into train and test views.

    Args:
        stems: the scene's image stems (any order; duplicates ignored). Sorted by name here.
        spec: ``every:N``: views 0, N, 2N, ... of the sorted order are test views (the 3DGS LLFF
            hold-out). ``arcs:F`` or ``arcs:F:K``: K contiguous runs of the sorted order (default
            K = 2), one centred in each of K equal segments of the path, together about a
            fraction F of the views, are test views.

    Returns:
        ``{"train": [...], "test": [...]}``, both sorted and non-empty.

    Raises:
        ValueError: for a malformed spec, or too few views to give both lists a view.
    """
    parsed = parse_split_spec(spec)
    ordered = sorted({str(s) for s in stems})
    n = len(ordered)
    if parsed[0] == "every":
        test_idx = set(range(0, n, parsed[1]))
    else:
        _, frac, k = parsed
        if n < k + 1:
            raise ValueError(f"split spec {spec!r} needs at least {k + 1} images, got {n}")
        test_idx = set(_arc_test_indices(n, frac, k))
    if n < 2:
        raise ValueError(f"split spec {spec!r} needs at least 2 images to give train and test one each, got {n}")
    test = [s for i, s in enumerate(ordered) if i in test_idx]
    train = [s for i, s in enumerate(ordered) if i not in test_idx]
    return {"train": train, "test": test}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_split(path: str | os.PathLike, split: dict[str, list[str]]) -> None:
    """Write a split file atomically: YAML with ``train`` then ``test`` as block lists of stems."""
    path = os.fspath(path)
    for key in ("train", "test"):
        if key not in split:
            raise ValueError(f"split must have key {key!r}, got keys {sorted(split)}")
    data = {"train": [str(s) for s in split["train"]], "test": [str(s) for s in split["test"]]}
    text = yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
