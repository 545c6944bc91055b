"""GLUE CoLA, RTE, MRPC, STS-B: mirror files, counts, the MRPC dev draw, clear errors, official metrics."""
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from common.data import glue
from common.data.glue_metrics import accuracy, f1, glue_metrics, glue_score, mcc, pearson, spearman
from common.errors import DataError
from common.io import sha256_file


def load_dataset(name, mirror):
    """The GLUE loaders as the registry calls them (name, mirror)."""
    return glue.GLUE_LOADERS[name](mirror)


# glue/PROVENANCE.md counts: per class (0, 1) for the classification files, rows otherwise.
EXPECTED = {
    "cola": {"train": [2528, 6023], "dev": [322, 721], "test_unlabeled": 1063},
    "rte": {"train": [1249, 1241], "dev": [146, 131], "test_unlabeled": 3000},
    "mrpc": {"train_msr": [1323, 2753], "test": [578, 1147]},
    "stsb": {"train": 5749, "dev": 1500, "test": 1379},
}
STSB_MEANS = {"train": 2.701, "dev": 2.364, "test": 2.608}      # PROVENANCE.md, 3 decimals


@pytest.fixture(scope="module")
def mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "glue").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with glue/{cola,rte,mrpc,stsb} is needed (CI sets it)")
    return path


@pytest.fixture(scope="module")
def loaded(mirror):
    cache = {}

    def load(name, **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = load_dataset(name, mirror) if not kwargs else glue.load_mrpc(mirror, **kwargs)
        return cache[key]

    return load


# ---------- real files ----------

def test_recorded_checksums_equal_provenance_and_the_files(mirror):
    text = (Path(mirror) / "glue" / "PROVENANCE.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"^\| `([^`]+)` \| \d+ \| `([0-9a-f]{64})` \|", text, flags=re.MULTILINE))
    assert recorded == glue.GLUE_SHA256
    for name, sha in glue.GLUE_SHA256.items():
        assert sha256_file(Path(mirror) / "glue" / name) == sha, name


def test_loaders_have_the_registry_signature():
    assert set(glue.GLUE_LOADERS) == {"cola", "rte", "mrpc", "stsb"} == set(glue.TASKS)


@pytest.mark.parametrize("name", ["cola", "rte", "stsb"])
def test_counts_equal_provenance(loaded, name):
    splits = loaded(name)
    assert list(splits) == list(EXPECTED[name])
    for split, expected in EXPECTED[name].items():
        x, y = splits[split]
        assert len(x) == len(y)
        if isinstance(expected, int) or split == "test_unlabeled":
            assert len(y) == expected
        else:
            assert np.bincount(y).tolist() == expected


def test_mrpc_counts_equal_provenance(loaded):
    whole = loaded("mrpc", dev_size=0)
    assert list(whole) == ["train", "test"]
    assert np.bincount(whole["train"][1]).tolist() == EXPECTED["mrpc"]["train_msr"]
    assert np.bincount(whole["test"][1]).tolist() == EXPECTED["mrpc"]["test"]
    splits = loaded("mrpc")
    assert [len(splits[s][0]) for s in ("train", "dev", "test")] == [3668, 408, 1725]


def test_pairs_single_sentences_and_label_types(loaded):
    cola = loaded("cola")
    assert all(isinstance(s, str) and s for s in cola["train"][0])
    for name in ("rte", "mrpc", "stsb"):
        for split, (x, y) in loaded(name).items():
            assert all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in x)
    for name in ("cola", "rte", "mrpc"):
        for split, (_, y) in loaded(name).items():
            assert y.dtype == np.int64
            assert set(y.tolist()) <= ({-1} if split == "test_unlabeled" else {0, 1})
    for split, (_, y) in loaded("stsb").items():
        assert y.dtype == np.float64 and y.min() == 0.0 and y.max() == 5.0
        assert round(float(y.mean()), 3) == STSB_MEANS[split]


def test_cola_rte_tests_are_only_exposed_unlabeled(loaded):
    for name in ("cola", "rte"):
        splits = loaded(name)
        assert "test" not in splits
        assert (splits["test_unlabeled"][1] == glue.UNLABELED).all()
        with pytest.raises(ValueError, match="unlabelled test set"):
            glue_metrics(name, splits["test_unlabeled"][1], np.zeros(len(splits["test_unlabeled"][1])))


def test_mrpc_dev_draw_is_deterministic_disjoint_and_stratified(loaded, mirror):
    whole_x, whole_y = loaded("mrpc", dev_size=0)["train"]
    splits = loaded("mrpc")
    again = glue.load_mrpc(mirror)
    assert splits["dev"][0] == again["dev"][0] and splits["train"][0] == again["train"][0]
    train, dev = set(splits["train"][0]), set(splits["dev"][0])
    assert not train & dev and train | dev == set(whole_x) and len(dev) == glue.MRPC_DEV_SIZE
    assert not dev & set(splits["test"][0])
    # stratified: largest remainder of 408 * (1323, 2753) / 4076 = (132.4, 275.6)
    assert np.bincount(splits["dev"][1]).tolist() == [132, 276]
    assert np.bincount(splits["train"][1]).tolist() == [1323 - 132, 2753 - 276]
    # pinned draw (Python's random.Random(2021) shuffles): a change of the rule or of the RNG shows here
    mask = glue.mrpc_dev_mask(whole_y)
    assert np.flatnonzero(mask)[:8].tolist() == [1, 6, 9, 10, 14, 27, 28, 29]
    assert (mask == glue.mrpc_dev_mask(whole_y, seed=glue.MRPC_DEV_SEED)).all()
    assert not (mask == glue.mrpc_dev_mask(whole_y, seed=glue.MRPC_DEV_SEED + 1)).all()
    # order kept: dev rows appear in file order
    assert splits["dev"][0] == [p for p, m in zip(whole_x, mask) if m]


def test_stratified_counts_largest_remainder():
    assert glue.stratified_counts(np.array([0] * 1323 + [1] * 2753), 408) == [132, 276]
    assert glue.stratified_counts(np.array([0, 0, 1, 1]), 3) == [2, 1]         # tie -> lower class
    assert glue.stratified_counts(np.array([0, 1, 1, 1]), 0) == [0, 0]
    with pytest.raises(DataError, match="outside 0..4"):
        glue.stratified_counts(np.array([0, 1, 1, 1]), 5)


# ---------- bad input ----------

def _copy_task(mirror: str, tmp_path: Path, folder: str) -> Path:
    shutil.copytree(Path(mirror) / "glue" / folder, tmp_path / "glue" / folder)
    return tmp_path


def _corrupt_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[number - 1] = new + "\n"
    path.write_text("".join(lines), encoding="utf-8")


BAD_RECORDS = {
    # id: (task, file, line 3 replaced by, expected message fragment)
    "missing-sentence2": ("rte", "train.jsonl", '{"sentence1": "a", "label": 0, "idx": 2}',
                          r"line 3: field 'sentence2' missing"),
    "missing-label": ("cola", "dev.jsonl", '{"sentence": "a", "source": "gj04"}', r"line 3: field 'label' missing"),
    "label-string": ("cola", "train.jsonl", '{"sentence": "a", "label": "1"}',
                     r"line 3: field 'label': expected int 0 or 1, got str '1'"),
    "label-bool": ("mrpc", "train.jsonl", '{"sentence1": "a", "sentence2": "b", "label": true}',
                   r"line 3: field 'label': expected int 0 or 1, got bool True"),
    "label-out-of-range": ("mrpc", "test.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 2}',
                           r"line 3: field 'label': expected 0 or 1, got 2"),
    "score-string": ("stsb", "train.jsonl", '{"sentence1": "a", "sentence2": "b", "label": "4.2"}',
                     r"line 3: field 'label': expected a number from 0 to 5 \(similarity score\), got str '4.2'"),
    "score-out-of-range": ("stsb", "dev.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 7.5}',
                           r"line 3: field 'label': expected a score from 0 to 5, got 7.5"),
    "unlabeled-with-label": ("rte", "test_unlabeled.jsonl", '{"sentence1": "a", "sentence2": "b", "label": 1}',
                             r"line 3: field 'label': expected -1 \(unlabelled test\), got 1"),
    "sentence-not-str": ("cola", "train.jsonl", '{"sentence": 5, "label": 1}',
                         r"line 3: field 'sentence': expected str, got int 5"),
    "not-json": ("stsb", "test.jsonl", '{"sentence1": "a", ', r"line 3 is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_RECORDS), ids=list(BAD_RECORDS))
def test_bad_record_names_file_line_and_field(mirror, tmp_path, monkeypatch, case):
    task, name, line, message = BAD_RECORDS[case]
    root = _copy_task(mirror, tmp_path, task)
    path = root / "glue" / task / name
    _corrupt_line(path, 3, line)
    monkeypatch.setitem(glue.GLUE_SHA256, f"{task}/{name}", sha256_file(path))   # past the checksum
    with pytest.raises(DataError, match=re.escape(str(path)) + ": " + message):
        load_dataset(task, str(root))


def test_checksum_mismatch_is_a_data_error(mirror, tmp_path):
    root = _copy_task(mirror, tmp_path, "mrpc")
    path = root / "glue" / "mrpc" / "train.jsonl"
    _corrupt_line(path, 3, '{"sentence1": "a", "sentence2": "b", "label": 1}')
    with pytest.raises(DataError, match=re.escape(str(path)) + ": checksum mismatch .*expected d3f0cbe7"):
        load_dataset("mrpc", str(root))


def test_count_mismatch_is_a_data_error(mirror, tmp_path, monkeypatch):
    root = _copy_task(mirror, tmp_path, "rte")
    path = root / "glue" / "rte" / "dev.jsonl"
    path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:-1]), encoding="utf-8")
    monkeypatch.setitem(glue.GLUE_SHA256, "rte/dev.jsonl", sha256_file(path))
    with pytest.raises(DataError, match=re.escape(str(path)) + r": expected 277 examples \(per class \[146, 131\]\)"):
        load_dataset("rte", str(root))


def test_no_mirror_or_no_glue_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="CoLA: REPRO_DATA_MIRROR is not set and GLUE has no download fallback"):
        load_dataset("cola", None)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "glue" / "stsb")) + ": no glue/stsb folder"):
        load_dataset("stsb", str(tmp_path))


# ---------- metrics ----------

def test_metrics_equal_hand_computed_values():
    # confusion matrix tp=3, fn=2, fp=1, tn=2
    y_true = [1, 1, 1, 1, 1, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 0, 1, 0, 0]
    assert mcc(y_true, y_pred) == pytest.approx((3 * 2 - 1 * 2) / math.sqrt((3 + 1) * (3 + 2) * (2 + 1) * (2 + 2)))
    assert accuracy(y_true, y_pred) == pytest.approx(5 / 8)
    assert f1(y_true, y_pred) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # deviations (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5): r = 4 / 5; the same ranks for Spearman
    assert pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0) and pearson(x, x ** 3) < 0.95
    assert glue_metrics("mrpc", y_true, y_pred) == {"accuracy": pytest.approx(5 / 8), "f1": pytest.approx(2 / 3)}
    assert glue_score("mrpc", {"accuracy": 0.5, "f1": 0.7}) == pytest.approx(0.6)
    assert glue_score("cola", {"mcc": 0.3}) == pytest.approx(0.3)


def test_degenerate_inputs_return_zero_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # no library warning leaks either
        assert mcc([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0       # constant predictions
        assert mcc([1, 1, 1], [1, 1, 1]) == 0.0             # one class on both sides
        assert f1([0, 0, 0], [0, 0, 0]) == 0.0              # no positive label or prediction
        assert f1([0, 1, 1], [0, 0, 0]) == 0.0              # no positive prediction
        assert pearson([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0.0
        assert spearman([1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == 0.0
        assert pearson([3.0, 3.0], [1.0, 2.0]) == 0.0
        assert glue_metrics("stsb", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == {"pearson": 0.0, "spearman": 0.0}


@pytest.mark.parametrize("task, y_true, y_pred, message", [
    ("cola", [0, 1], [0], "equal length"),
    ("rte", [], [], "non-empty"),
    ("mrpc", [0, 2], [0, 1], "labels: expected classes 0 and 1 only, got 2"),
    ("cola", [0, 1], [0, 0.5], "predictions: expected classes 0 and 1 only"),
    ("stsb", [1.0, 2.0], [1.0, float("nan")], "predictions: expected finite scores"),
    ("stsb", [1.0], [1.0], "at least 2 examples"),
    ("sst2", [0], [0], "unknown GLUE task 'sst2'"),
])
def test_bad_metric_inputs_are_refused(task, y_true, y_pred, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        glue_metrics(task, y_true, y_pred)


def test_majority_baseline_on_the_real_mrpc_test(loaded):
    y = loaded("mrpc")["test"][1]
    scores = glue_metrics("mrpc", y, np.ones_like(y))
    assert scores["accuracy"] == pytest.approx(1147 / 1725)
    assert scores["f1"] == pytest.approx(2 * 1147 / (2 * 1147 + 578))
    assert glue_metrics("cola", loaded("cola")["dev"][1], np.ones(1043, dtype=np.int64)) == {"mcc": 0.0}
