"""Split dev sources (train tail, per-class tail, official dev split) and the class draw order."""
import random

import numpy as np
import pytest

from common.data.subsample import SplitSpec, make_split, split_record
from common.errors import ConfigError, DataError

LABELS = np.array([0, 1, 2] * 40)                 # 120 train rows, classes interleaved
SORTED = np.sort(LABELS)                          # label-sorted file (as the IMDB mirror)
TEST = np.array([0, 1, 2, 2, 1])


def spec(**kw):
    base = dict(dataset="toy", classes=(0, 1, 2), train_counts=(5, 5, 5), dev_per_class=2, dev_pool_size=12)
    return SplitSpec(**{**base, **kw})


def test_train_tail_keeps_dev_out_of_the_train_pool():
    split = make_split(LABELS, TEST, spec(), 7)
    assert all(i < 108 for i in split["train"]) and all(i >= 108 for i in split["dev"])
    assert len(split["train"]) == 15 and len(split["dev"]) == 6


def test_per_class_tail_on_a_label_sorted_file():
    with pytest.raises(DataError):   # the plain tail of a sorted file holds one class only
        make_split(SORTED, TEST, spec(dev_pool_size=12), 7)
    split = make_split(SORTED, TEST, spec(dev_source="train_tail_per_class", dev_pool_size=4), 7)
    for cls in (0, 1, 2):
        tail = set(np.flatnonzero(SORTED == cls)[-4:].tolist())
        assert not tail & set(split["train"])
        assert (sum(1 for i in split["dev"] if SORTED[i] == cls) == 2
                and {i for i in split["dev"] if SORTED[i] == cls} <= tail)


def test_dev_split_indexes_the_dev_array():
    dev_labels = np.array([2, 2, 1, 0, 1, 0, 0, 2])
    split = make_split(LABELS, TEST, spec(dev_source="dev_split", dev_pool_size=0), 7, dev_labels=dev_labels)
    assert sorted(dev_labels[split["dev"]].tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(split["train"]) == 15                       # the whole train array is the pool
    with pytest.raises(DataError, match="no dev split"):
        make_split(LABELS, TEST, spec(dev_source="dev_split"), 7)


def test_class_order_is_the_official_draw_order():
    order = (1, 2, 0)
    split = make_split(LABELS, TEST, spec(class_order=order), 159)
    rng = random.Random(159)                               # the official procedure, written out
    expected = []
    for cls in order:
        members = [i for i in range(108) if LABELS[i] == cls]
        rng.shuffle(members)
        expected += members[:5]
    assert split["train"] == expected
    assert make_split(LABELS, TEST, spec(class_order=(0, 1, 2)), 159) == make_split(LABELS, TEST, spec(), 159)


def test_bad_dev_source_or_class_order_is_a_clear_error():
    with pytest.raises(ConfigError, match="dev_source"):
        spec(dev_source="dev_tail")
    with pytest.raises(ConfigError, match="class_order"):
        spec(class_order=(0, 1))


def test_default_specs_keep_the_record_format_of_existing_split_files():
    record = split_record(spec(), 1, make_split(LABELS, TEST, spec(), 1))
    assert "dev_source" not in record["spec"] and "class_order" not in record["spec"]
    record = split_record(spec(dev_source="dev_split"), 1, {"train": [], "dev": [], "test": []})
    assert record["spec"]["dev_source"] == "dev_split"


def test_test_sample_is_a_fixed_stratified_subset_leaving_train_and_dev_alone():
    test_labels = np.sort(np.array([0] * 600 + [1] * 300 + [2] * 100))   # label-sorted, as IMDB's test file
    full = make_split(LABELS, test_labels, spec(), 7)
    sampled = make_split(LABELS, test_labels, spec(test_sample=101), 7)
    assert sampled["train"] == full["train"] and sampled["dev"] == full["dev"]
    assert (len(sampled["test"]) == 101 and len(set(sampled["test"])) == 101
            and sampled["test"] == sorted(sampled["test"]))
    counts = np.bincount(test_labels[sampled["test"]], minlength=3).tolist()
    assert counts == [61, 30, 10]                 # quotas 60.6 / 30.3 / 10.1: the largest remainder gets the spare
    assert make_split(LABELS, test_labels, spec(test_sample=101), 7)["test"] == sampled["test"]
    assert make_split(LABELS, test_labels, spec(test_sample=101), 8)["test"] != sampled["test"]
    with pytest.raises(ConfigError, match="test_sample 2000 exceeds the 1000 test examples"):
        make_split(LABELS, test_labels, spec(test_sample=2000), 7)
    assert "test_sample" not in split_record(spec(), 7, full)["spec"]
