"""MNIST loader: checksummed mirror files, clear errors naming the file."""
import os
from pathlib import Path

import numpy as np
import pytest

from common.data import mnist
from common.errors import DataError


@pytest.fixture
def mnist_mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "mnist").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with mnist/ is needed")
    return path


def write_mirror(root: Path, train=None, test=None) -> Path:
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name, (x, y) in (("train", train), ("test", test)):
        np.savez_compressed(folder / f"{name}.npz", x=x, y=y)
    return root


def small():
    return np.zeros((5, 28, 28, 1), np.uint8), np.arange(5, dtype=np.int64)


def test_real_mnist_from_mirror(mnist_mirror):
    data = mnist.load_mnist(mnist_mirror)
    (x, y), (tx, ty) = data["train"], data["test"]
    assert x.shape == (60_000, 28, 28, 1) and x.dtype == np.uint8 and tx.shape == (10_000, 28, 28, 1)
    assert list(y[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4] and list(ty[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert list(np.bincount(ty)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert abs(x.mean() / 255 - 0.1307) < 1e-3               # PROVENANCE.md's canonical mean


def test_checksum_mismatch_names_the_file(tmp_path):
    root = write_mirror(tmp_path, small(), small())
    with pytest.raises(DataError, match=r"mnist/train.npz: checksum mismatch"):
        mnist.load_mnist(str(root))


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="no mnist folder in the data mirror"):
        mnist.load_mnist(str(tmp_path))
    root = write_mirror(tmp_path / "m", small(), small())
    (root / "mnist" / "train.npz").unlink()
    with pytest.raises(DataError, match=r"mnist/train.npz: file missing from the data mirror"):
        mnist.load_mnist(str(root))


def test_bad_contents_past_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "verify_file", lambda path, digest: path)
    root = write_mirror(tmp_path / "a", (np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.int64)), small())
    with pytest.raises(DataError, match=r"train.npz: expected x uint8 \(N, 28, 28, 1\)"):
        mnist.load_mnist(str(root))
    root = write_mirror(tmp_path / "b", small(), (np.zeros((5, 28, 28, 1), np.uint8), np.full(5, 12)))
    with pytest.raises(DataError, match=r"test.npz: labels outside 0..9"):
        mnist.load_mnist(str(root))
    (tmp_path / "c" / "mnist").mkdir(parents=True)
    (tmp_path / "c" / "mnist" / "train.npz").write_bytes(b"not a zip")
    (tmp_path / "c" / "mnist" / "test.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"train.npz: cannot read \(expected an npz with keys x, y\)"):
        mnist.load_mnist(str(tmp_path / "c"))
    root = write_mirror(tmp_path / "d", small(), small())
    with pytest.raises(DataError, match="MNIST train: expected 60000 images, got 5"):
        mnist.load_mnist(str(root))


def test_no_mirror_and_no_network_is_a_data_error(monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match=r"MNIST: REPRO_DATA_MIRROR is not set and downloading the official files "
                                        r"failed \(OSError: network unreachable\); set REPRO_DATA_MIRROR"):
        mnist.load_mnist(None)
