"""Text classification data of the hu19 text tables: SST-5, SST-2, TREC-6, IMDB.

Reads `$REPRO_DATA_MIRROR/{sst5,sst2,trec,imdb}/` (JSONL `{"text", "label"}`; IMDB gzipped) after
sha256 verification against the values below (from each folder's PROVENANCE.md). Without a mirror
the Hugging Face hub copies are tried through the optional `datasets` library (imported lazily, no
checksums there: the per-class counts are checked instead). Every loader returns
`{split: (texts: list[str], labels: int64 array)}`, the same shape as the cifar10 loader.

Splits: SST-5 and SST-2 have official train/dev/test. TREC-6 and IMDB have no official dev split
and return only train and test: the hu19 protocol draws its dev examples from the train pool
(`common.data.subsample`, the last `dev_pool_size` train examples). Caution for IMDB: the mirror
rows are sorted by (label, id), so any tail of train is positive only; use a dev pool larger than
12,500 or shuffle before taking a tail.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.mirror import verify_file
from common.errors import DataError

Splits = dict[str, tuple[list[str], np.ndarray]]

# sha256 of the mirror files (paths relative to the dataset folder), from the PROVENANCE.md files.
SST5_SHA256 = {
    "train.jsonl": "acf67e1cf26e77e436d685b65003418ed54dbb4bbf9689720de2e0fd2d6006aa",
    "dev.jsonl": "2ac1934cf0a7fd7b4660ea5c456e13923356bce1faaf3021901b1c699d874663",
    "test.jsonl": "c4a21252b43af225e5a4133cd53a5ff2fea4146c94555019b219124e1868cd90",
    "kim_preprocessed/train.jsonl": "ccb5379325158e11f096dfd11f4972ee014e1f60b12d1724e2d89911a9e0fe22",
    "kim_preprocessed/dev.jsonl": "40f2ec76b11543c2f59c3d709a62bd21c8be0adeec796c1979307d5c1475b1bc",
    "kim_preprocessed/test.jsonl": "60cd00b41a9a651f951a3f0edd59927725deef408105fb9aeb1fceeb7407aa7f",
    "ptb_trees/train.txt": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
    "ptb_trees/dev.txt": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    "ptb_trees/test.txt": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
}
SST2_SHA256 = {
    "train.jsonl": "50f9e9956a55dc1e7a8b9c115964ed78cd38a8dd16c7ae4d25fda02b6fe922bc",
    "dev.jsonl": "e4bcfea2dbeebaa8e1a9cfd302b5ec0c30b10bf560a9d0262259f8f15345759e",
    "test.jsonl": "0f9ef5ae67d9b6e47b6a8cab8c9a5c7616e305a2d0e5b6a9634184df02428790",
    "kim_preprocessed/train.jsonl": "3d5ed8f8284fdd11205aea35a2938c19267fa5b486c851424cff0021b51e2b84",
    "kim_preprocessed/dev.jsonl": "e11def849db6c3a0babcc174ca3622d76efa93a63adb3727c7c67d63db0ed819",
    "kim_preprocessed/test.jsonl": "b9c097a7053163466cbb9a8913ce91bda14594a373aefc421d1f896f9ae8691b",
}
TREC_SHA256 = {
    "train.jsonl": "2c35b9343c88e8f2db541058fb245ad4730ade48df36105c2a8cbe00592ae604",
    "test.jsonl": "af619289baee9d1255e13707aae673d318239c96e6746716ea7b3512b4773ebd",
}
IMDB_SHA256 = {
    "train.jsonl.gz": "7711f58ebda159c3117f23e0aea0000be32b373a39710e78c863178aec465f25",
    "test.jsonl.gz": "c39de12544ff3e72d8a6fc827f9f2a1d74d219b761433912655d667631a92d01",
}

SST5_CLASSES = ("very negative", "negative", "neutral", "positive", "very positive")
SST2_CLASSES = ("negative", "positive")
TREC_CLASSES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")
IMDB_CLASSES = ("neg", "pos")


@dataclass(frozen=True)
class TextDataset:
    """One dataset: mirror folder, files and checksums, expected per-class counts, hub fallback."""

    name: str                                  # as written in messages, e.g. "SST-5"
    folder: str                                # sub-folder of the mirror
    sha256: dict[str, str]                     # file (relative to folder) -> sha256
    class_counts: dict[str, tuple[int, ...]]   # split -> examples per class (PROVENANCE.md)
    file_suffix: str                           # split file = f"{split}{file_suffix}"
    hub_id: str                                # Hugging Face hub dataset used without a mirror
    hub_splits: dict[str, str]                 # our split -> hub split
    hub_label_field: str = "label"


SST5 = TextDataset("SST-5", "sst5", SST5_SHA256,
                   {"train": (1092, 2218, 1624, 2322, 1288), "dev": (139, 289, 229, 279, 165),
                    "test": (279, 633, 389, 510, 399)},
                   ".jsonl", "SetFit/sst5", {"train": "train", "dev": "validation", "test": "test"})
SST2 = TextDataset("SST-2", "sst2", SST2_SHA256,
                   {"train": (3310, 3610), "dev": (428, 444), "test": (912, 909)},
                   ".jsonl", "SetFit/sst2", {"train": "train", "dev": "validation", "test": "test"})
TREC = TextDataset("TREC-6", "trec", TREC_SHA256,
                   {"train": (86, 1250, 1162, 1223, 835, 896), "test": (9, 94, 138, 65, 81, 113)},
                   ".jsonl", "CogComp/trec", {"train": "train", "test": "test"}, hub_label_field="coarse_label")
IMDB = TextDataset("IMDB", "imdb", IMDB_SHA256,
                   {"train": (12500, 12500), "test": (12500, 12500)},
                   ".jsonl.gz", "stanfordnlp/imdb", {"train": "train", "test": "test"})
SST_TREES = ("stanfordnlp/sst", "ptb")         # hub copy of the PTB trees (config "ptb", field ptb_tree)

# Distinct labelled (non-neutral) phrases in the 8544 SST train trees, measured on the mirror.
N_SST2_TRAIN_PHRASES = 77_616


def read_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    """Texts and int64 labels of a JSONL (or .jsonl.gz) file of {"text": str, "label": int} objects."""
    texts, labels = [], []
    opener = gzip.open if path.suffix == ".gz" else open
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {number} is not valid JSON ({exc.msg}); expected one "
                                    'object {"text": str, "label": int} per line (corrupt or truncated file?)')
                if (not isinstance(record, dict) or not isinstance(record.get("text"), str)
                        or type(record.get("label")) is not int):
                    raise DataError(f'{path}: line {number}: expected an object {{"text": str, "label": int}}, '
                                    f"got {line[:80].strip()!r}")
                texts.append(record["text"])
                labels.append(record["label"])
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # unreadable, truncated gzip, bad encoding
        raise DataError(f"{path}: cannot read past line {number} ({type(exc).__name__}: {exc})") from exc
    return texts, np.asarray(labels, dtype=np.int64)


def _check_counts(where: str, labels: np.ndarray, expected: tuple[int, ...]) -> None:
    n_classes = len(expected)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels must lie in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    got = np.bincount(labels, minlength=n_classes).tolist()
    if len(labels) != sum(expected) or got != list(expected):
        raise DataError(f"{where}: expected {sum(expected)} examples (per class {list(expected)}), "
                        f"got {len(labels)} (per class {got})")


def _dataset_folder(dataset: TextDataset, mirror: str) -> Path:
    folder = Path(mirror) / dataset.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: no {dataset.folder} folder in the data mirror REPRO_DATA_MIRROR={mirror}")
    return folder


def _download_failed(name: str, source: str, exc: Exception) -> DataError:
    return DataError(f"REPRO_DATA_MIRROR is not set and downloading {name} from {source} failed: "
                     f"{type(exc).__name__}: {exc}; set REPRO_DATA_MIRROR to a folder holding the mirror")


def _hub_load(name: str, hub_id: str, config: str | None = None):
    """`datasets.load_dataset(hub_id, config)`; any failure (including no `datasets`) is a DataError."""
    source = f"the Hugging Face hub ({hub_id})"
    try:
        import datasets
    except ImportError as exc:
        raise _download_failed(name, source, ImportError("the optional `datasets` library is not installed")) from exc
    try:
        return datasets.load_dataset(hub_id, config)
    except Exception as exc:
        raise _download_failed(name, source, exc) from exc


def _load(dataset: TextDataset, mirror: str | None, kim_preprocessed: bool = False) -> Splits:
    """Verified mirror files if a mirror is given, else the hub copy; per-class counts checked either way."""
    splits: Splits = {}
    if mirror:
        folder = _dataset_folder(dataset, mirror)
        prefix = "kim_preprocessed/" if kim_preprocessed else ""
        for split in dataset.class_counts:
            name = f"{prefix}{split}{dataset.file_suffix}"
            splits[split] = read_jsonl(verify_file(folder / name, dataset.sha256[name]))
            _check_counts(str(folder / name), splits[split][1], dataset.class_counts[split])
        return splits
    if kim_preprocessed:
        raise DataError(f"{dataset.name}: the kim_preprocessed variant exists only in the data mirror; "
                        "set REPRO_DATA_MIRROR")
    hub = _hub_load(dataset.name, dataset.hub_id)
    for split, hub_split in dataset.hub_splits.items():
        rows = hub[hub_split]
        splits[split] = (list(rows["text"]), np.asarray(rows[dataset.hub_label_field], dtype=np.int64))
        _check_counts(f"{dataset.name} {split} ({dataset.hub_id})", splits[split][1], dataset.class_counts[split])
    return splits


def load_sst5(mirror: str | None, *, kim_preprocessed: bool = False) -> Splits:
    """SST-5 sentences: train 8544 / dev 1101 / test 2210, labels 0 (very negative)..4 (very positive).

    Default texts keep the original casing and PTB tokens; `kim_preprocessed=True` reads Kim's
    lower-cased, cleaned copy (same sentences and labels, different order; mirror only).
    """
    return _load(SST5, mirror, kim_preprocessed)


def load_sst2(mirror: str | None, *, kim_preprocessed: bool = False) -> Splits:
    """SST-2 sentences (neutral dropped): train 6920 / dev 872 / test 1821, 0 negative, 1 positive."""
    return _load(SST2, mirror, kim_preprocessed)


def load_trec(mirror: str | None) -> Splits:
    """TREC-6 questions: train 5452 / test 500 (no dev), labels ABBR,ENTY,DESC,HUM,LOC,NUM = 0..5."""
    return _load(TREC, mirror)


def load_imdb(mirror: str | None) -> Splits:
    """IMDB reviews: train 25000 / test 25000 (no dev), 0 neg, 1 pos, sorted negatives first."""
    return _load(IMDB, mirror)


# Tokens are separated by ASCII whitespace only: a few SST words contain a no-break space ("2\xa01/2").
_PTB_TOKEN = re.compile(r"\(|\)|[^ \t\n\r\f\v()]+")
_PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")"}


def _unescape_ptb(token: str) -> str:
    """The mirror's text normalisation: -LRB-/-RRB- -> ( ), and \\/ \\* -> / *."""
    return _PTB_BRACKETS.get(token, token).replace("\\/", "/").replace("\\*", "*")


def parse_ptb_tree(line: str, where: str = "PTB tree") -> list[tuple[str, int]]:
    """All (phrase text, label) pairs of one bracketed tree, root first (pre-order), leaves included.

    A node is `(label word)` or `(label node node ...)`; a phrase's text is its leaves joined by
    single spaces. Raises DataError naming `where` for a malformed tree.
    """
    tokens = _PTB_TOKEN.findall(line)
    phrases: list = []

    def parse_node(pos: int) -> tuple[list[str], int]:
        if tokens[pos] != "(" or not tokens[pos + 1].isdigit():
            raise ValueError(f"expected '(<label>' at token {pos}, got {' '.join(tokens[pos:pos + 2])!r}")
        slot = len(phrases)
        phrases.append(None)                      # filled once the node's leaves are known
        label, pos = int(tokens[pos + 1]), pos + 2
        if tokens[pos] not in "()":               # pre-terminal: (label word)
            leaves, pos = [_unescape_ptb(tokens[pos])], pos + 1
        else:
            leaves = []
            while tokens[pos] == "(":
                child_leaves, pos = parse_node(pos)
                leaves.extend(child_leaves)
        if not leaves:
            raise ValueError(f"node with label {label} has neither a word nor child nodes (token {pos})")
        if tokens[pos] != ")":
            raise ValueError(f"expected ')' closing the node at token {pos}, got {tokens[pos]!r}")
        phrases[slot] = (" ".join(leaves), label)
        return leaves, pos + 1

    try:
        _, end = parse_node(0)
        if end != len(tokens):
            raise ValueError(f"{len(tokens) - end} tokens after the root node")
    except IndexError:
        raise DataError(f"{where}: malformed PTB tree: unbalanced brackets (truncated?)") from None
    except ValueError as exc:
        raise DataError(f"{where}: malformed PTB tree: {exc}") from None
    return phrases


def binary_phrases(trees: list[str], where: str = "PTB trees") -> tuple[list[str], np.ndarray]:
    """Distinct non-neutral phrases of the trees: labels 0,1 -> 0 (negative), 3,4 -> 1 (positive).

    Label 2 (neutral) is dropped. Duplicates (same text) keep their first occurrence in tree order,
    root first (in the SST train trees no phrase text carries two different labels).
    """
    binary_of = {0: 0, 1: 0, 3: 1, 4: 1}
    label_of: dict[str, int] = {}
    for number, line in enumerate(trees, start=1):
        for text, label in parse_ptb_tree(line, f"{where}: line {number}"):
            if label not in (0, 1, 2, 3, 4):
                raise DataError(f"{where}: line {number}: sentiment label {label} outside 0..4")
            if label != 2:
                label_of.setdefault(text, binary_of[label])
    return list(label_of), np.fromiter(label_of.values(), dtype=np.int64, count=len(label_of))


def load_sst2_phrases(mirror: str | None) -> Splits:
    """SST-2 phrase-level train pool (hu19's imbalanced SST-2 table) + sentence-level SST-2 dev/test.

    train: every labelled phrase of the 8544 SST train trees (`sst5/ptb_trees/train.txt`, sentence
    roots and single words included), binary-mapped and deduplicated by `binary_phrases`. Measured:
    318,582 nodes, 98,794 of them non-neutral, 77,616 distinct non-neutral phrases (neg 34,944 /
    pos 42,672). The commonly cited Kim (2014) file stsa.binary.phrases.train has 76,961 lines, so
    ours does NOT match exactly (+655, +0.85%). Kim's file is lower-cased and cleaned (clean_str_sst);
    deduplicating ours case-insensitively gives 77,195 (+234); the remaining gap is not explained here
    (presumably other differences in Kim's preprocessing). We keep the tree-derived pool and do not force the count.
    dev/test: the sentence-level SST-2 splits (872 / 1821) of `load_sst2`.
    """
    if mirror:
        path = verify_file(_dataset_folder(SST5, mirror) / "ptb_trees" / "train.txt",
                           SST5_SHA256["ptb_trees/train.txt"])
        with open(path, encoding="utf-8") as handle:
            trees, where = handle.read().splitlines(), str(path)
    else:
        trees, where = list(_hub_load("SST PTB trees", *SST_TREES)["train"]["ptb_tree"]), SST_TREES[0]
    if len(trees) != sum(SST5.class_counts["train"]):
        raise DataError(f"{where}: expected {sum(SST5.class_counts['train'])} train trees, got {len(trees)}")
    phrases, labels = binary_phrases(trees, where)
    if len(phrases) != N_SST2_TRAIN_PHRASES:
        raise DataError(f"{where}: expected {N_SST2_TRAIN_PHRASES} distinct non-neutral train phrases, "
                        f"got {len(phrases)}")
    sentences = load_sst2(mirror)
    return {"train": (phrases, labels), "dev": sentences["dev"], "test": sentences["test"]}
