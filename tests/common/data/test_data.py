"""Data layer: deterministic subsampling, split files, mirror verification and clear errors."""
import json
import random

import numpy as np
import pytest

from common.data import load_dataset
from common.data.cifar10 import SHA256, load_cifar10
from common.data.subsample import (
    SplitSpec,
    load_or_make_split,
    make_split,
    split_data_seed,
)
from common.errors import ConfigError, DataError

LABELS = np.repeat(np.arange(10), 60)[np.random.default_rng(0).permutation(600)]
TEST_LABELS = np.arange(100) % 10


def spec(**kw):
    base = dict(dataset="toy", classes=tuple(range(10)), train_counts=(4,) * 10, dev_per_class=2, dev_pool_size=100)
    base.update(kw)
    return SplitSpec(**base)


def test_counts_pools_and_determinism():
    s = make_split(LABELS, TEST_LABELS, spec(), data_seed=159)
    assert len(s["train"]) == 40 and len(s["dev"]) == 20 and len(s["test"]) == 100
    assert np.bincount(LABELS[s["train"]], minlength=10).tolist() == [4] * 10
    assert np.bincount(LABELS[s["dev"]], minlength=10).tolist() == [2] * 10
    assert max(s["train"]) < 500 and min(s["dev"]) >= 500  # train pool first n-100, dev pool last 100
    assert not set(s["train"]) & set(s["dev"])
    assert make_split(LABELS, TEST_LABELS, spec(), 159) == s
    assert make_split(LABELS, TEST_LABELS, spec(), 160) != s


def test_matches_official_procedure_shuffling_examples():
    """Official: random.seed(k); per class in order, shuffle that class's examples, keep first k."""
    s = make_split(LABELS, TEST_LABELS, spec(), data_seed=159)
    random.seed(159)
    picked = []
    for pool, k in ((range(500), 4), (range(500, 600), 2)):
        for cls in range(10):
            examples = [("example", i) for i in pool if LABELS[i] == cls]
            random.shuffle(examples)
            picked.append([i for _, i in examples[:k]])
    assert s["train"] == sum(picked[:10], []) and s["dev"] == sum(picked[10:], [])


def test_imbalance_and_test_filter():
    s = make_split(LABELS, TEST_LABELS, spec(classes=(0, 1), train_counts=(2, 40)), 159)
    assert np.bincount(LABELS[s["train"]], minlength=2)[:2].tolist() == [2, 40]
    assert set(TEST_LABELS[s["test"]]) == {0, 1} and len(s["test"]) == 20
    limited = make_split(LABELS, TEST_LABELS, spec(test_limit=7), 159)
    assert len(limited["test"]) == 7


def test_protocols():
    assert split_data_seed("fixed", 159, 7) == 159
    assert split_data_seed("per_seed", 159, 7) == 166
    assert split_data_seed("per_seed", 159, 0) == split_data_seed("fixed", 159, 0)
    with pytest.raises(ConfigError, match="protocol: unknown 'random'"):
        split_data_seed("random", 159, 0)


def test_too_many_requested_is_clear():
    with pytest.raises(DataError, match="asked for 100 examples but the pool has"):
        make_split(LABELS, TEST_LABELS, spec(train_counts=(100,) * 10), 159)


def test_split_file_round_trip_and_mismatch(tmp_path):
    path = tmp_path / "split.json"
    first = load_or_make_split(path, LABELS, TEST_LABELS, spec(), 159)
    assert json.loads(path.read_text()) == first
    assert load_or_make_split(path, LABELS, TEST_LABELS, spec(), 159) == first
    with pytest.raises(DataError, match="prepared split differs"):
        load_or_make_split(path, LABELS, TEST_LABELS, spec(), 160)
    path.write_text("{not json")
    with pytest.raises(DataError, match="corrupt split index file"):
        load_or_make_split(path, LABELS, TEST_LABELS, spec(), 159)


def fake_mirror(tmp_path):
    folder = tmp_path / "mirror" / "cifar10"
    folder.mkdir(parents=True)
    for name in SHA256:
        np.savez(folder / name, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.int64))
    return tmp_path / "mirror"


def test_checksum_mismatch_names_file(tmp_path):
    with pytest.raises(DataError, match=r"cifar10/test.npz: checksum mismatch|train_1.npz: checksum mismatch"):
        load_cifar10(str(fake_mirror(tmp_path)))


def test_missing_mirror_folder(tmp_path):
    with pytest.raises(DataError, match="no cifar10 folder in the data mirror"):
        load_cifar10(str(tmp_path))


def test_missing_file_in_mirror(tmp_path):
    mirror = fake_mirror(tmp_path)
    (mirror / "cifar10" / "train_1.npz").unlink()
    with pytest.raises(DataError, match="train_1.npz: file missing"):
        load_cifar10(str(mirror))


def test_no_mirror_and_no_network(monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="REPRO_DATA_MIRROR is not set and downloading the official archive failed"):
        load_cifar10(None)


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar100'"):
        load_dataset("cifar100", None)


def test_real_cifar10_from_mirror(mirror):
    data = load_cifar10(mirror)
    (x, y), (tx, ty) = data["train"], data["test"]
    assert x.shape == (50000, 32, 32, 3) and tx.shape == (10000, 32, 32, 3)
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official data_batch_1 order
    assert np.bincount(ty).tolist() == [1000] * 10
    s = make_split(y, ty, spec(dataset="cifar10", train_counts=(40,) * 10, dev_pool_size=500), 159)
    assert np.bincount(y[s["train"]]).tolist() == [40] * 10 and min(s["dev"]) >= 49500
    again = load_cifar10(mirror)  # second load comes from the verified cache
    assert np.array_equal(again["train"][0][:5], x[:5])


def test_decoded_cache_never_bypasses_verification(tmp_path, mirror):
    load_cifar10(mirror)                       # fills the decoded-array cache
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar10(str(fake_mirror(tmp_path)))
