"""Text datasets (SST-5, SST-2, SST-2 phrases, TREC-6, IMDB): counts, checksums, clear errors, PTB parser."""
import gzip
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from common.data import DATASETS, load_dataset, text
from common.data.subsample import SplitSpec, make_split
from common.errors import DataError
from common.io import sha256_file

# PROVENANCE.md per-class counts of the mirror.
EXPECTED = {
    "sst5": {"train": [1092, 2218, 1624, 2322, 1288], "dev": [139, 289, 229, 279, 165],
             "test": [279, 633, 389, 510, 399]},
    "sst2": {"train": [3310, 3610], "dev": [428, 444], "test": [912, 909]},
    "trec": {"train": [86, 1250, 1162, 1223, 835, 896], "test": [9, 94, 138, 65, 81, 113]},
    "imdb": {"train": [12500, 12500], "test": [12500, 12500]},
}


@pytest.fixture(scope="module")
def text_mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "sst5").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with sst5/ (and sst2/, trec/, imdb/) is needed (CI sets it)")
    return path


@pytest.fixture(scope="module")
def loaded(text_mirror):
    """load(name): each dataset is read from the mirror at most once per test session."""
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = load_dataset(name, text_mirror)
        return cache[name]

    return load


# ---------- PTB tree parser ----------

def test_parse_ptb_tree_all_nodes_root_first():
    assert text.parse_ptb_tree("(3 (2 It) (4 (4 rocks) (2 .)))") == [
        ("It rocks .", 3), ("It", 2), ("rocks .", 4), ("rocks", 4), (".", 2)]


def test_parse_ptb_tree_unescapes_like_the_mirror_text():
    tree = "(1 (2 -LRB-) (0 (0 writer\\/director) (2 \\*)) (2 2\xa01\\/2) (2 -RRB-))"
    assert text.parse_ptb_tree(tree)[0] == ("( writer/director * 2\xa01/2 )", 1)


def test_binary_phrases_drop_neutral_map_and_deduplicate():
    trees = ["(3 (2 It) (4 (4 rocks) (2 .)))", "(0 (1 (2 It) (1 sucks)) (2 .))", "(4 (4 rocks) (2 !))"]
    phrases, labels = text.binary_phrases(trees)
    assert phrases == ["It rocks .", "rocks .", "rocks", "It sucks .", "It sucks", "sucks", "rocks !"]
    assert labels.dtype == np.int64 and labels.tolist() == [1, 1, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("tree, message", [
    ("(3 (2 It) (4 rocks", "unbalanced brackets"),
    ("(3 (2 It) (4 rocks)) (2 .)", "4 tokens after the root node"),
    ("(3 (2 It) (x rocks))", "expected '\\(<label>' at token 6, got '\\( x'"),
    ("(3 (2 It) (4))", "node with label 4 has neither a word nor child nodes"),
    ("(3 (2 It) (4 rocks hard))", "expected '\\)' closing the node at token 9, got 'hard'"),
])
def test_malformed_tree_names_line(tree, message):
    with pytest.raises(DataError, match=f"trees.txt: line 2: malformed PTB tree: {message}"):
        text.binary_phrases(["(2 fine)", tree], "trees.txt")


def test_tree_label_outside_sentiment_range():
    with pytest.raises(DataError, match="line 1: sentiment label 7 outside 0..4"):
        text.binary_phrases(["(7 odd)"])


# ---------- JSONL reader and fake mirrors ----------

def write_jsonl(path: Path, records, corrupt_line: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    if corrupt_line is not None:
        lines.insert(2, corrupt_line)        # becomes line 3
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_jsonl_reads_texts_and_labels(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    texts, labels = text.read_jsonl(path)
    assert texts == ["good", "bad"] and labels.dtype == np.int64 and labels.tolist() == [1, 0]


def test_corrupt_jsonl_line_is_reported_with_line_number(tmp_path):
    records = [{"text": f"q{i}", "label": 0} for i in range(4)]
    path = write_jsonl(tmp_path / "a.jsonl", records, corrupt_line='{"text": "trunc')
    with pytest.raises(DataError, match=r"a.jsonl: line 3 is not valid JSON"):
        text.read_jsonl(path)
    bad_shape = write_jsonl(tmp_path / "b.jsonl", records, corrupt_line='{"text": "x", "label": "NUM"}')
    with pytest.raises(DataError, match=r"b.jsonl: line 3: expected an object"):
        text.read_jsonl(bad_shape)


def test_truncated_gzip_is_reported(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for i in range(2000):
            handle.write(json.dumps({"text": f"review {i} " * 20, "label": i % 2}) + "\n")
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"train.jsonl.gz: cannot read past line \d+ \(EOFError"):
        text.read_jsonl(path)


def fake_trec(tmp_path, n_train=3, corrupt_line=None) -> Path:
    folder = tmp_path / "mirror" / "trec"
    write_jsonl(folder / "train.jsonl", [{"text": f"q{i} ?", "label": 1} for i in range(n_train)], corrupt_line)
    write_jsonl(folder / "test.jsonl", [{"text": "t ?", "label": 5}])
    return tmp_path / "mirror"


def matching_checksums(monkeypatch, mirror: Path):
    for name in ("train.jsonl", "test.jsonl"):
        monkeypatch.setitem(text.TREC_SHA256, name, sha256_file(mirror / "trec" / name))


def test_checksum_mismatch_names_file(tmp_path):
    with pytest.raises(DataError, match=r"trec/train.jsonl: checksum mismatch .*expected 2c35b934"):
        text.load_trec(str(fake_trec(tmp_path)))


def test_corrupt_line_through_the_loader(tmp_path, monkeypatch):
    mirror = fake_trec(tmp_path, n_train=5, corrupt_line="{not json")
    matching_checksums(monkeypatch, mirror)
    with pytest.raises(DataError, match=r"trec/train.jsonl: line 3 is not valid JSON"):
        text.load_trec(str(mirror))


def test_wrong_count_names_file_and_expected(tmp_path, monkeypatch):
    mirror = fake_trec(tmp_path)
    matching_checksums(monkeypatch, mirror)
    with pytest.raises(DataError, match=r"trec/train.jsonl: expected 5452 examples \(per class "
                                        r"\[86, 1250, 1162, 1223, 835, 896\]\), got 3 \(per class \[0, 3, 0"):
        text.load_trec(str(mirror))


def test_missing_mirror_folder(tmp_path):
    for loader, folder in ((text.load_sst5, "sst5"), (text.load_imdb, "imdb"), (text.load_sst2_phrases, "sst5")):
        with pytest.raises(DataError, match=f"{folder}: no {folder} folder in the data mirror"):
            loader(str(tmp_path))


def test_missing_file_in_mirror(tmp_path):
    (tmp_path / "trec").mkdir()
    with pytest.raises(DataError, match="trec/train.jsonl: file missing from the data mirror"):
        text.load_trec(str(tmp_path))


# ---------- without a mirror ----------

def test_no_mirror_and_no_datasets_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"REPRO_DATA_MIRROR is not set and downloading SST-5 from the Hugging "
                                        r"Face hub \(SetFit/sst5\) failed: ImportError.*; set REPRO_DATA_MIRROR"):
        text.load_sst5(None)


def test_no_mirror_and_no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match=r"downloading IMDB from the Hugging Face hub \(stanfordnlp/imdb\) failed: "
                                        "ConnectionError: network is unreachable"):
        text.load_imdb(None)
    with pytest.raises(DataError, match=r"downloading SST PTB trees from .*stanfordnlp/sst"):
        text.load_sst2_phrases(None)


def test_hub_copy_is_count_checked(monkeypatch):
    def split(counts):
        labels = np.repeat(np.arange(6), counts)
        return {"text": [f"q{i}" for i in range(len(labels))], "coarse_label": labels.tolist()}

    hub = {"train": split(EXPECTED["trec"]["train"]), "test": split(EXPECTED["trec"]["test"])}
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a: hub))
    data = text.load_trec(None)
    assert len(data["train"][0]) == 5452 and np.bincount(data["test"][1]).tolist() == EXPECTED["trec"]["test"]
    hub["test"] = split([9, 94, 138, 65, 81, 112])
    with pytest.raises(DataError, match=r"TREC-6 test \(CogComp/trec\): expected 500 examples"):
        text.load_trec(None)


def test_kim_variant_needs_mirror():
    with pytest.raises(DataError, match="kim_preprocessed variant exists only in the data mirror"):
        text.load_sst2(None, kim_preprocessed=True)


def test_registered_names():
    assert {"cifar10", "sst5", "sst2", "sst2_phrases", "trec", "imdb"} <= set(DATASETS)


# ---------- the real mirror ----------

@pytest.mark.parametrize("name", ["sst5", "sst2", "trec", "imdb"])
def test_real_counts_labels_and_types(loaded, name):
    data = loaded(name)
    assert sorted(data) == sorted(EXPECTED[name])
    for split, counts in EXPECTED[name].items():
        texts, labels = data[split]
        assert len(texts) == len(labels) == sum(counts)
        assert labels.dtype == np.int64 and labels.min() == 0 and labels.max() == len(counts) - 1
        assert np.bincount(labels).tolist() == counts
        assert all(isinstance(t, str) and t for t in texts)


def test_real_known_first_examples(loaded):
    sst5, sst2, trec, imdb = (loaded(n) for n in ("sst5", "sst2", "trec", "imdb"))
    assert sst5["train"][0][0].startswith("The Rock is destined to be the 21st Century 's new `` Conan ''")
    assert sst5["train"][1][0] == 3 and sst2["train"][1][0] == 1
    assert sst5["dev"][0][0] == "It 's a lovely film with lovely performances by Buy and Accorsi ."
    assert sst5["test"][0][0] == "Effective but too-tepid biopic" and sst5["test"][1][0] == 2
    assert (trec["train"][0][0], trec["train"][1][0]) == ("How did serfdom develop in and then leave Russia ?", 2)
    assert (trec["test"][0][0], text.TREC_CLASSES[trec["test"][1][0]]) == ("How far is it from Denver to Aspen ?",
                                                                            "NUM")
    # rows sorted by (label, id): negatives first; pos id 0 of each split is the PROVENANCE spot check
    assert imdb["train"][1][:12500].max() == 0 and imdb["train"][1][12500:].min() == 1
    assert imdb["train"][0][12500].startswith("Bromwell High is a cartoon comedy.")
    assert imdb["test"][0][12500].startswith("I went and saw this movie last night after being coaxed")


def test_real_kim_variant(text_mirror):
    kim = text.load_sst5(text_mirror, kim_preprocessed=True)
    assert np.bincount(kim["train"][1]).tolist() == EXPECTED["sst5"]["train"]
    assert all(t == t.lower() for t in kim["dev"][0][:50])


def test_real_sst2_phrases(loaded):
    data, sst2 = loaded("sst2_phrases"), loaded("sst2")
    phrases, labels = data["train"]
    assert len(phrases) == text.N_SST2_TRAIN_PHRASES == 77_616 and len(set(phrases)) == len(phrases)
    assert np.bincount(labels).tolist() == [34_944, 42_672]
    label_of = dict(zip(phrases, labels.tolist()))
    # every sentence-level SST-2 train sentence is a (root) phrase of the pool, with the same label
    assert all(label_of[s] == y for s, y in zip(sst2["train"][0], sst2["train"][1].tolist()))
    # phrases of the first train tree: (3 splash), (1 (2 Arnold) (2 Schwarzenegger)), (2 The) dropped
    assert label_of["splash"] == 1 and label_of["Arnold Schwarzenegger"] == 0 and "The" not in label_of
    for split in ("dev", "test"):
        assert data[split][0] == sst2[split][0] and np.array_equal(data[split][1], sst2[split][1])


def test_real_subsampling_of_text_labels(loaded):
    (_, train_y), (_, test_y) = loaded("trec")["train"], loaded("trec")["test"]
    spec = SplitSpec("trec", tuple(range(6)), (5,) * 6, dev_per_class=2, dev_pool_size=1000)
    split = make_split(train_y, test_y, spec, data_seed=159)
    assert np.bincount(train_y[split["train"]]).tolist() == [5] * 6 and min(split["dev"]) >= 4452
    assert len(split["test"]) == 500
