"""MMEL textual augmentation (Yi et al. 2021, Alg. 2): greedy MLM views against slow references."""
import copy
import json
import math

import pytest
import torch

from common.errors import ConfigError, DataError
from common.text.backbones import load_tokenizer
from common.text.mlm import CLS_ID, FIRST_WORDPIECE_ID, MASK_ID, PAD_ID, SEP_ID, load_mlm_model
from papers.mmel.text_views import (
    _augment_texts,
    augment_task,
    augment_texts,
    greedy_mlm_views,
    read_views,
    write_views,
)

TEXTS = ["a gorgeous , witty , seductive movie .",
         "the film is strictly routine .",
         "it 's a charming and often affecting journey that never quite finds its footing .",
         "bad",
         "an utterly incompetent conclusion to a trilogy that began with such promise and wit , sadly .",
         "one of the greatest family-oriented , fantasy-adventure movies ever , with a cast to match .",
         "yes",
         "the story is familiar but the performances are worth watching for the actors alone ."]
FORCED = list(range(5000, 5006))      # ids the biased model always prefers (absent from TEXTS)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-random-bert")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return load_mlm_model("tiny-random-bert")


@pytest.fixture(scope="module")
def forcing_model(model):
    """Its logits forbid the original token: FORCED[0] > FORCED[1] > ... dominate every prediction."""
    biased = copy.deepcopy(model)
    with torch.no_grad():
        biased.cls.predictions.decoder.bias[FORCED] += torch.linspace(1e3, 9e2, len(FORCED))
    return biased


@pytest.fixture(scope="module")
def batch(tokenizer):
    enc = tokenizer(TEXTS + [""], padding=True, return_tensors="pt")
    ids, att = enc["input_ids"], enc["attention_mask"]
    assert not torch.isin(ids, torch.tensor(FORCED)).any()
    blank = torch.zeros(1, ids.shape[1], dtype=torch.long)           # a row that is all padding
    return torch.cat([ids, blank]), torch.cat([att, blank])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _real(ids, att):
    return (att != 0) & (ids != CLS_ID) & (ids != SEP_ID) & (ids != PAD_ID)


def _k(n_real, ratio):
    return 0 if n_real == 0 else min(max(1, math.floor(n_real * ratio + 0.5)), n_real)


def _positions(ids, att, ratio, seed):
    """Documented draw: p_1, p_2, ... = real tokens in increasing order of torch.rand((N, L))."""
    scores = torch.rand(tuple(ids.shape), generator=_gen(seed))
    out = []
    for row in range(len(ids)):
        real = torch.nonzero(_real(ids, att)[row]).flatten().tolist()
        real.sort(key=lambda p: scores[row, p].item())
        out.append(real[:_k(len(real), ratio)])
    return out


def _restricted(logits):
    logits = logits.clone()
    logits[..., :FIRST_WORDPIECE_ID] = float("-inf")
    return logits


def test_shapes_specials_and_mode(model, batch):
    ids, att = batch
    model.train()
    views = greedy_mlm_views(model, ids, att, num_views=5, mask_ratio=0.4, generator=_gen())
    assert model.training                                          # mode restored
    model.eval()
    assert views.shape == (len(ids), 4, ids.shape[1]) and views.dtype == ids.dtype
    keep = ~_real(ids, att)[:, None, :].expand_as(views)
    assert torch.equal(views[keep], ids[:, None, :].expand_as(views)[keep])   # specials and padding
    changed = views != ids[:, None, :]
    assert (views[changed] >= FIRST_WORDPIECE_ID).all()           # never a special / [unused] id
    assert torch.equal(views[-2:], ids[-2:, None, :].expand(2, 4, -1))   # rows without real tokens


def test_masked_positions_and_changed_fraction(model, forcing_model, batch):
    ids, att = batch
    ratio = 0.4
    forced = greedy_mlm_views(forcing_model, ids, att, 5, ratio, _gen(3))
    views = greedy_mlm_views(model, ids, att, 5, ratio, _gen(3))
    positions = _positions(ids, att, ratio, 3)
    fractions, bounds = [], []
    for row in range(len(ids)):
        n_real = int(_real(ids, att)[row].sum())
        k = _k(n_real, ratio)
        expected = torch.zeros(ids.shape[1], dtype=torch.bool)
        expected[positions[row]] = True
        for v in range(4):
            forced_changed = forced[row, v] != ids[row]
            assert torch.equal(forced_changed, expected) and int(forced_changed.sum()) == k   # exactly k
            changed = views[row, v] != ids[row]
            assert not (changed & ~expected).any()                # only the k masked positions
            assert int(changed.sum()) <= k
            if n_real:
                fractions.append(int(changed.sum()) / n_real)
                bounds.append(k / n_real)
        if n_real * ratio >= 0.5:
            assert abs(k / n_real - ratio) <= 0.5 / n_real + 1e-12    # round half up
    assert sum(bounds) / len(bounds) - 0.05 < sum(fractions) / len(fractions) <= sum(bounds) / len(bounds)
    long_rows = [f for f, b in zip(fractions, bounds) if b < 0.5]   # not the 1-token rows (k clamped to 1)
    assert abs(sum(long_rows) / len(long_rows) - ratio) < 0.05
    everything = greedy_mlm_views(forcing_model, ids, att, 3, 1.0, _gen(3))
    assert torch.equal(everything != ids[:, None, :], _real(ids, att)[:, None, :].expand_as(everything))


def test_first_position_is_ith_most_likely(model, batch):
    ids, att = batch
    views = greedy_mlm_views(model, ids, att, 6, 0.4, _gen(1))
    positions = _positions(ids, att, 0.4, 1)
    x_mask = ids.clone()
    for row, pos in enumerate(positions):
        x_mask[row, pos] = MASK_ID
    with torch.no_grad():
        logits = _restricted(model(input_ids=x_mask, attention_mask=att).logits)
    for row, pos in enumerate(positions):
        if pos:
            top = logits[row, pos[0]].topk(5).indices
            assert torch.equal(views[row, :, pos[0]], top)


def test_later_positions_match_slow_reference(model, batch):
    ids, att = batch
    num_views, ratio = 4, 0.5
    views = greedy_mlm_views(model, ids, att, num_views, ratio, _gen(2))
    for row, pos in enumerate(_positions(ids, att, ratio, 2)):
        length = int(att[row].sum())
        for i in range(num_views - 1):
            z = ids[row, :length].clone()
            z[pos] = MASK_ID
            for j, p in enumerate(pos):                           # one row, one position at a time
                with torch.no_grad():
                    logits = _restricted(model(input_ids=z[None]).logits[0, p])
                z[p] = logits.topk(num_views - 1).indices[i] if j == 0 else logits.argmax()
            assert torch.equal(views[row, i, :length], z), (row, i)


def test_augment_texts_deterministic_and_batch_size_free(model, tokenizer):
    texts = TEXTS + TEXTS[:3] + ["", "short one ."]
    kw = {"num_views": 4, "mask_ratio": 0.4, "seed": 7, "max_seq_len": 16}
    by_batch = [augment_texts(model, tokenizer, texts, batch_size=b, **kw) for b in (1, 3, 64)]
    assert by_batch[0] == by_batch[1] == by_batch[2] == augment_texts(model, tokenizer, texts, **kw)
    views = by_batch[0]
    assert len(views) == len(texts) and all(len(row) == 3 and all(isinstance(v, str) for v in row) for row in views)
    assert views[len(TEXTS)] != views[0]                         # a duplicate text gets its own positions
    assert views[len(TEXTS) + 3] == ["", "", ""]
    assert "[MASK]" not in json.dumps(views) and "[SEP]" not in json.dumps(views)
    other = augment_texts(model, tokenizer, texts, **{**kw, "seed": 8})
    assert sum(a != b for a, b in zip(views, other)) >= len(TEXTS) - 2


def test_pairs_are_augmented_separately(model, tokenizer):
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[2]), (TEXTS[4], "yes")]
    kw = {"num_views": 3, "mask_ratio": 0.4, "seed": 1, "max_seq_len": 32}
    views = augment_task(pairs, model, tokenizer, **kw)
    assert len(views) == 3 and all(len(row) == 2 and all(isinstance(v, tuple) and len(v) == 2 for v in row)
                                   for row in views)
    side = [_augment_texts(model, tokenizer, [p[s] for p in pairs], batch_size=64, stream=s + 1, **kw) for s in (0, 1)]
    assert views == [list(zip(a, b)) for a, b in zip(*side)]
    assert [v[0] for v in views[1]] != [v[1] for v in views[1]]   # same sentence, distinct seeds per side
    changed = augment_task([(a, "something else entirely .") for a, _ in pairs], model, tokenizer, **kw)
    assert [[v[0] for v in row] for row in changed] == [[v[0] for v in row] for row in views]
    assert augment_task(TEXTS, model, tokenizer, **kw) == augment_texts(model, tokenizer, TEXTS, **kw)
    with pytest.raises(ConfigError, match="pairs"):
        augment_task(["a", ("b", "c")], model, tokenizer, **kw)


def test_views_file_round_trip_and_errors(tmp_path):
    meta = {"mlm_weights_sha256": "ab" * 32, "seed": 0, "num_views": 3, "mask_ratio": 0.4, "n": 2}
    singles = [["a b", "c d"], ["e", "f"]]
    pairs = [[("a", "b"), ("c", "d")], [("e", "f"), ("g", "h")]]
    for views in (singles, pairs):
        write_views(tmp_path / "v.json", views, meta)
        assert read_views(tmp_path / "v.json", dict(meta)) == views
    with pytest.raises(DataError, match=r"v\.json.*'seed'"):
        read_views(tmp_path / "v.json", {**meta, "seed": 1})
    with pytest.raises(DataError, match="'extra'"):
        read_views(tmp_path / "v.json", {**meta, "extra": 1})
    payload = json.loads((tmp_path / "v.json").read_text())
    for bad, match in (({"meta": {**meta, "n": 3}}, "2 rows"), ({"views": [["a", "b"], ["c"]]}, "row 1 has 1")):
        (tmp_path / "bad.json").write_text(json.dumps({**payload, **bad}))
        with pytest.raises(DataError, match=match):
            read_views(tmp_path / "bad.json", bad.get("meta", meta))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        read_views(tmp_path / "bad.json", meta)
    with pytest.raises(ConfigError, match="missing.json"):
        read_views(tmp_path / "missing.json", meta)
    with pytest.raises(ConfigError, match="n = 3"):
        write_views(tmp_path / "w.json", singles, {**meta, "n": 3})


@pytest.mark.parametrize("num_views, mask_ratio", [(1, 0.4), (0, 0.4), (2.0, 0.4), (True, 0.4), (3, 0.0),
                                                   (3, -0.1), (3, 1.01), (3, float("nan")), (3, "0.4")])
def test_bad_inputs(model, tokenizer, batch, num_views, mask_ratio):
    with pytest.raises(ConfigError):
        greedy_mlm_views(model, *batch, num_views=num_views, mask_ratio=mask_ratio, generator=_gen())
    with pytest.raises(ConfigError):
        augment_texts(model, tokenizer, ["a b"], num_views=num_views, mask_ratio=mask_ratio, seed=0, max_seq_len=8)
