"""Split files: making (every:N, arcs:F[:K]), writing and loading with checks."""

from __future__ import annotations

import logging

import pytest
import yaml

from scene.split import load_split, make_split, parse_split_spec, write_split
from utils.errors import InputError

STEMS = [f"frame_{i:04d}" for i in range(100)]


def runs(indices: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive integers."""
    out: list[list[int]] = []
    for i in sorted(indices):
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# ---------------------------------------------------------------------------------------------
# make_split
# ---------------------------------------------------------------------------------------------
def test_every_8_is_the_llff_hold_out():
    shuffled = STEMS[::-1][50:] + STEMS[::-1][:50]
    split = make_split(shuffled, "every:8")
    assert split["test"] == [STEMS[i] for i in range(0, 100, 8)]
    assert split["train"] == [s for i, s in enumerate(STEMS) if i % 8]
    assert split == make_split(STEMS, "every:8")
    assert split["train"] == sorted(split["train"]) and split["test"] == sorted(split["test"])


@pytest.mark.parametrize("n", [10, 37, 100, 101])
@pytest.mark.parametrize("frac,k", [(0.66, 2), (0.5, 3), (0.2, 1), (0.3, 4)])
def test_arcs_fraction_and_contiguity(n, frac, k):
    stems = STEMS[:n] if n <= 100 else STEMS + ["frame_9999"]
    spec = f"arcs:{frac}" if k == 2 else f"arcs:{frac}:{k}"
    split = make_split(list(reversed(stems)), spec)
    ordered = sorted(stems)
    assert sorted(split["train"] + split["test"]) == ordered
    assert not set(split["train"]) & set(split["test"])
    n_test = len(split["test"])
    assert abs(n_test - frac * n) <= 1.0
    test_idx = [ordered.index(s) for s in split["test"]]
    arcs = runs(test_idx)
    assert len(arcs) == k, arcs
    sizes = [len(a) for a in arcs]
    assert max(sizes) - min(sizes) <= 2
    # One arc per equal segment of the path, centred in it.
    for j, arc in enumerate(arcs):
        lo, hi = j * n // k, (j + 1) * n // k
        assert lo <= arc[0] and arc[-1] < hi
        assert abs((arc[0] + arc[-1]) / 2 - (lo + hi - 1) / 2) <= 1.0
    assert split == make_split(stems, spec)


def test_arcs_default_is_two_arcs():
    assert make_split(STEMS, "arcs:0.66") == make_split(STEMS, "arcs:0.66:2")


def test_small_inputs():
    split = make_split(["b", "a", "c"], "every:8")
    assert split == {"train": ["b", "c"], "test": ["a"]}
    split = make_split([f"{i}" for i in range(5)], "arcs:0.9")
    assert len(split["train"]) >= 1 and len(split["test"]) >= 2
    with pytest.raises(ValueError, match="at least 2"):
        make_split(["a"], "every:8")
    with pytest.raises(ValueError, match="at least 3"):
        make_split(["a", "b"], "arcs:0.5")


BAD_SPECS = ["every:1", "every:0", "every:x", "every", "arcs:1.5", "arcs:0", "arcs:1", "arcs:0.5:0", "arcs:-0.5"]


@pytest.mark.parametrize("spec", BAD_SPECS + ["foo", "arcs:0.5:2:1", ""])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="split spec"):
        make_split(STEMS, spec)


def test_parse_split_spec():
    assert parse_split_spec("every:8") == ("every", 8)
    assert parse_split_spec("arcs:0.66") == ("arcs", 0.66, 2)
    assert parse_split_spec("arcs:.5:3") == ("arcs", 0.5, 3)


# ---------------------------------------------------------------------------------------------
# write_split / load_split
# ---------------------------------------------------------------------------------------------
def test_write_then_load(tmp_path):
    stems = ["00010", "00011", "1e3", "no", "frame.001"]
    split = make_split(stems, "every:2")
    path = tmp_path / "split.yml"
    write_split(path, split)
    text = path.read_text()
    assert text.startswith("train:\n- ") and "\ntest:\n- " in text
    assert yaml.safe_load(text) == split
    assert load_split(path, stems) == split
    assert not [p for p in tmp_path.iterdir() if p.name != "split.yml"]


def test_load_accepts_ints_extensions_and_unquoted_numbers(tmp_path):
    path = tmp_path / "split.yml"
    # 00010 would be octal 8 for a YAML 1.1 reader; 12 is an int; a.png carries an extension;
    # frame.001 is a known stem whose "extension" must not be stripped.
    path.write_text("train: [00010, 12, a.png, frame.001]\ntest:\n  - b.jpg\n")
    known = ["00010", "12", "a", "b", "frame.001", "frame"]
    assert load_split(path, known) == {"train": ["00010", "12", "a", "frame.001"], "test": ["b"]}


def test_load_missing_or_empty_test_warns(tmp_path, caplog):
    path = tmp_path / "split.yml"
    path.write_text("train: [a, b]\n")
    with caplog.at_level(logging.WARNING, logger="scene.split"):
        assert load_split(path, ["a", "b"]) == {"train": ["a", "b"], "test": []}
    assert "no test images" in caplog.text
    path.write_text("train: [a, b]\ntest: []\n")
    assert load_split(path, ["a", "b"])["test"] == []


@pytest.mark.parametrize(
    "content,expected",
    [
        (None, "missing split file"),
        ("", "expected a mapping"),
        ("- a\n- b\n", "expected a mapping"),
        ("just text\n", "expected a mapping"),
        ("test: [a]\n", "no 'train' key"),
        ("train: []\ntest: [a]\n", "'train' is empty"),
        ("train:\ntest: [a]\n", "'train' is empty"),
        ("train: {a: 1}\n", "'train' must be a list"),
        ("train: [a, [b]]\n", "entry 1 of 'train' is not an image name"),
        ("train: [a, b]\ntest: [b, c]\n", "1 images are in both 'train' and 'test': b"),
        (
            "train: [a, x1, x2, x3, x4, x5, x6]\n",
            "'train' names 6 images that are not in the scene: x1, x2, x3, x4, x5, ...",
        ),
        ("train: [a]\ntest: [zz.png]\n", "'test' names 1 images that are not in the scene: zz.png"),
        ("train: [a\n", "not valid YAML at line"),
    ],
)
def test_load_errors(tmp_path, content, expected):
    path = tmp_path / "split.yml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as e:
        load_split(path, ["a", "b", "c"])
    msg = str(e.value)
    assert msg.startswith(str(path) + ": ") and "\n" not in msg
    assert expected in msg, msg
