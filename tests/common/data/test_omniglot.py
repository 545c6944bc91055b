"""Omniglot loader (common/data/omniglot.py): checksum, shape and order checks, resizing, the 15/2/3 split."""
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from common.data import omniglot
from common.data.omniglot import N_IMAGES, load_omniglot, per_class_split, resize
from common.errors import DataError


def fake_mirror(tmp_path, x, monkeypatch, character=None, drawing=None):
    folder = tmp_path / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(x)
    rows = np.arange(n)
    np.savez_compressed(folder / "omniglot.npz", x=x, character=rows // 20 if character is None else character,
             drawing=rows % 20 if drawing is None else drawing)
    digest = hashlib.sha256((folder / "omniglot.npz").read_bytes()).hexdigest()
    monkeypatch.setitem(omniglot.SHA256, "omniglot.npz", digest)   # the fake file "is" the recorded version
    return str(tmp_path)


def test_wrong_shape_names_the_file(tmp_path, monkeypatch):
    mirror = fake_mirror(tmp_path, np.zeros((40, 28, 28), np.uint8), monkeypatch)
    with pytest.raises(DataError, match=r"omniglot/omniglot.npz: expected x uint8 \(32460, 105, 105\).*got x uint8 "
                                        r"\(40, 28, 28\)"):
        load_omniglot(mirror, 28)


def test_rows_out_of_order_are_an_error(tmp_path, monkeypatch):
    x = np.full((N_IMAGES, 105, 105), 255, np.uint8)
    drawing = np.arange(N_IMAGES) % 20
    drawing[:2] = drawing[1::-1]
    mirror = fake_mirror(tmp_path, x, monkeypatch, drawing=drawing)
    with pytest.raises(DataError, match="rows are not in the documented order"):
        load_omniglot(mirror, 28)


def test_checksum_missing_folder_and_no_mirror(tmp_path):
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "omniglot.npz").write_bytes(b"not the file")
    with pytest.raises(DataError, match="omniglot.npz: checksum mismatch"):
        load_omniglot(str(tmp_path), 28)
    with pytest.raises(DataError, match="no omniglot folder in the data mirror"):
        load_omniglot(str(tmp_path / "elsewhere"), 28)
    with pytest.raises(DataError, match="REPRO_DATA_MIRROR is not set and Omniglot has no download fallback"):
        load_omniglot(None, 28)
    with pytest.raises(DataError, match="size must be an int in"):
        load_omniglot(str(tmp_path), 106)


def test_area_resize_averages_blocks():
    ink = np.zeros((1, 4, 4), np.uint8)
    ink[0, :2, :2] = 255
    ink[0, 2:, 2:] = 100
    assert resize(ink, 2).tolist() == [[[255, 0], [0, 100]]]
    assert resize(ink, 4) is ink


def test_split_is_15_2_3_per_character_disjoint_and_seeded():
    labels = np.repeat(np.arange(30), 20)
    split = per_class_split(labels, 0)
    for part, k in (("train", 15), ("dev", 2), ("test", 3)):
        assert np.bincount(labels[split[part]], minlength=30).tolist() == [k] * 30
    rows = split["train"] + split["dev"] + split["test"]
    assert len(set(rows)) == 600
    assert per_class_split(labels, 0) == split and per_class_split(labels, 1) != split
    assert len(per_class_split(labels, 0, characters=4)["train"]) == 60
    with pytest.raises(DataError, match="class 0 has 20 rows, the split needs 21"):
        per_class_split(labels, 0, (16, 2, 3))


def test_the_mirror_file_at_28_pixels():
    root = os.environ.get("REPRO_DATA_MIRROR")
    if not root or not (Path(root) / "omniglot").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with omniglot/ is needed")
    data = load_omniglot(root, 28)
    assert data["x"].shape == (N_IMAGES, 28, 28) and data["x"].dtype == np.uint8
    assert 0.06 < data["x"].mean() / 255 < 0.10           # ~8% ink, now 255
    assert data["y"].tolist()[:21] == [0] * 20 + [1] and data["drawing"][:3].tolist() == [0, 1, 2]
