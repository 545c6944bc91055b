"""common.text.mlm: BERT masking, MLM training on the tiny model (learns, atomic, no overwrite), loading,
tied decoder, the train-pool-only corpus, and `repro mlm`."""
import json
import os
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from common.text.backbones import load_tokenizer, minilm_dir
from common.text.mlm import (
    PROBE_SENTENCES,
    load_mlm_model,
    mask_tokens,
    mlm_corpus,
    top_k_fills,
    train_mlm,
)
from common.train.optimizers import adamw_param_groups

SENTENCE = "the cat sat on the mat ."


pytestmark = pytest.mark.usefixtures("one_thread")


def bert_batch(n_rows: int, max_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] wordpieces [SEP] [PAD]..., lengths 0..max_len-2 real tokens (some rows with none)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n_rows, max_len, dtype=torch.long)
    for row in range(n_rows):
        n = int(torch.randint(0, max_len - 1, (1,), generator=g))
        ids[row, 0], ids[row, n + 1] = 101, 102
        ids[row, 1:n + 1] = torch.randint(1000, 30522, (n,), generator=g)
    return ids, (ids != 0).long()


def test_mask_tokens_bert_rates_and_invariants():
    ids, attention = bert_batch(3000, 48, seed=0)
    masked, labels = mask_tokens(ids, attention, torch.Generator().manual_seed(1))
    real = (attention == 1) & (ids != 101) & (ids != 102)
    chosen = labels != -100
    assert not (chosen & ~real).any()                                      # never [CLS]/[SEP]/[PAD]
    assert torch.equal(masked[~chosen], ids[~chosen]) and torch.equal(labels[chosen], ids[chosen])
    n_real = real.sum(1)
    expected = torch.floor(n_real * 0.15 + 0.5).long().clamp(1, 20).minimum(n_real)
    assert torch.equal(chosen.sum(1), expected)                            # >= 1 per sentence, <= 20
    assert (chosen.sum(1)[n_real > 0] >= 1).all() and (chosen.sum(1) <= 20).all()
    assert ((n_real > 140) | (chosen.sum(1) < 20)).any()                   # the cap is reached in long rows
    as_mask = (masked[chosen] == 103).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    replaced = masked[chosen & (masked != 103) & (masked != ids)]
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.015     # ~ 80 / 10 / 10 %
    assert abs(len(replaced) / chosen.sum().item() - 0.1) < 0.015
    assert replaced.min() >= 1000 and replaced.max() < 30522              # random wordpieces, no specials
    # positions are uniform over the real tokens: the first and the last real token are chosen equally often
    first = chosen[:, 1][n_real >= 10].float().mean()
    last = chosen[torch.arange(len(ids)), n_real][n_real >= 10].float().mean()
    assert abs(first - last) < 0.04
    again = mask_tokens(ids, attention, torch.Generator().manual_seed(1))
    other = mask_tokens(ids, attention, torch.Generator().manual_seed(2))
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    assert not torch.equal(other[1], labels)


def test_mask_tokens_short_rows():
    ids = torch.tensor([[101, 2000, 102, 0], [101, 102, 0, 0]])
    masked, labels = mask_tokens(ids, (ids != 0).long(), torch.Generator().manual_seed(0))
    assert labels.tolist() == [[-100, 2000, -100, -100], [-100] * 4]   # the one real token; none in an empty row


def tiny_run(out_dir: Path, steps: int = 30, **kwargs) -> dict:
    texts = [SENTENCE] * 40 + ["the mat sat on the cat ."]
    return train_mlm("tiny-random-bert", texts, [SENTENCE] * 4, out_dir, steps=steps, batch_size=8, lr=1e-2,
                     log_every=10, **kwargs)


def test_train_mlm_learns_and_writes_atomically(tmp_path):
    logged = []
    report = tiny_run(tmp_path / "mlm", on_log=logged.append)
    assert report["dev_loss_best"] < report["dev_loss_before"] - 5        # 10.3 (uniform) -> ~1.8: learnt
    assert [h["step"] for h in report["history"]] == [0, 10, 20, 30] and logged == report["history"]
    assert report["dev_loss_best"] == min(h["dev_loss"] for h in report["history"])
    assert report["step_best"] in (10, 20, 30) and report["n_train_texts"] == 41 and report["n_dev_texts"] == 4
    assert list(report["fills"]) == list(PROBE_SENTENCES)
    assert report["fills"]["a [MASK] movie with great acting ."][0] in SENTENCE.split()
    files = {p.name for p in (tmp_path / "mlm").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mlm_report.json"} <= files
    assert json.loads((tmp_path / "mlm/mlm_report.json").read_text()) == report
    assert report["environment"]["torch"] and report["environment"]["cpu_capability"]   # traced builds, CPU
    assert [p.name for p in tmp_path.iterdir()] == ["mlm"]                # no temp folder left behind


def test_train_mlm_is_bit_reproducible_on_one_machine(tmp_path):
    """Same texts, seed and threads in one process: the same weights (their sha256, the MLM's identity
    that views and results record); another seed: other weights."""
    first, again = tiny_run(tmp_path / "a", steps=6), tiny_run(tmp_path / "b", steps=6)
    assert first["weights_sha256"] == again["weights_sha256"]
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert tiny_run(tmp_path / "c", steps=6, seed=1)["weights_sha256"] != first["weights_sha256"]


def test_train_mlm_refuses_to_overwrite(tmp_path):
    out = tmp_path / "mlm"
    tiny_run(out, steps=0)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="exists and is not empty.*repro mlm --overwrite"):
        tiny_run(out, steps=0, seed=1)
    assert (out / "model.safetensors").read_bytes() == before
    report = tiny_run(out, steps=0, seed=1, overwrite=True)
    assert report["seed"] == 1 and (out / "model.safetensors").read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["mlm"]


def test_dev_loss_is_comparable_across_batch_sizes(tmp_path):
    dev = [SENTENCE, "a cat .", "what is the mat on the moon made of ?"] * 15
    losses = {train_mlm("tiny-random-bert", [], dev, tmp_path / str(size), steps=0, batch_size=size)["dev_loss_before"]
              for size in (4, 32)}
    assert len(losses) == 1                                  # fixed dev masks, whatever the batch size


def test_train_mlm_failure_leaves_no_out_dir(tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def fail(self, folder, *args, **kwargs):
        (Path(folder) / "half-written").write_text("x")
        raise OSError("disk full")
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        tiny_run(tmp_path / "mlm", steps=2)
    assert list(tmp_path.iterdir()) == []


def test_load_mlm_model_round_trips(tmp_path):
    tiny_run(tmp_path / "untrained", steps=0)
    torch.manual_seed(0)                                     # train_mlm's seed: the same random tiny model
    reference = load_mlm_model("tiny-random-bert").eval()
    loaded = load_mlm_model("tiny-random-bert", tmp_path / "untrained")
    ids = torch.tensor([[101, 1037, 103, 3185, 102, 0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)
    report = tiny_run(tmp_path / "trained")
    trained = load_mlm_model("tiny-random-bert", str(tmp_path / "trained"))
    assert top_k_fills(trained, load_tokenizer("tiny-random-bert"), PROBE_SENTENCES) == report["fills"]
    assert trained.cls.predictions.decoder.weight is trained.bert.embeddings.word_embeddings.weight
    with pytest.raises(ConfigError, match="MLM model of 'tiny-random-bert', not of 'all-MiniLM-L6-v2'"):
        load_mlm_model("all-MiniLM-L6-v2", tmp_path / "trained")


def test_minilm_needs_a_trained_head_dir(tmp_path):
    with pytest.raises(ConfigError,
                       match=r"artifacts/mlm/all-MiniLM-L6-v2.*`repro mlm --profile cpu`.*dvc stage mlm\)"):
        load_mlm_model("all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'nowhere'}: no trained MLM model.*repro mlm"):
        load_mlm_model("all-MiniLM-L6-v2", tmp_path / "nowhere")
    try:
        package = minilm_dir()
    except ConfigError:
        pytest.skip("MiniLM package missing")
    with pytest.raises(ConfigError, match="not a trained MLM model.*missing.*cls.predictions"):
        load_mlm_model("all-MiniLM-L6-v2", package)        # the encoder alone: its head would be random


def test_decoder_tied_and_each_parameter_stepped_once():
    torch.manual_seed(0)
    model = load_mlm_model("tiny-random-bert")
    decoder, embeddings = model.cls.predictions.decoder, model.bert.embeddings.word_embeddings
    assert decoder.weight is embeddings.weight and decoder.bias is model.cls.predictions.bias
    groups = adamw_param_groups(model, 0.01)
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)) and set(listed) == {id(p) for p in model.parameters()}
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    ids = torch.tensor([[101, 1037, 103, 3185, 102]])
    model(input_ids=ids, labels=torch.tensor([[-100, -100, 2204, -100, -100]])).loss.backward()
    before = embeddings.weight.detach().clone()
    optimizer.step()
    assert decoder.weight is embeddings.weight
    # Adam's first step moves a parameter by ~lr: a parameter listed twice would move by ~2 lr
    assert (embeddings.weight - before).abs().max() < 1.1e-3


@pytest.fixture(scope="module")
def text_mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not all((Path(path) / name).is_dir() for name in ("sst5", "sst2", "trec", "imdb")):
        pytest.skip("REPRO_DATA_MIRROR with sst5/, sst2/, trec/, imdb/ is needed (CI sets it)")
    return path


HU19_POOLS = {"trec": [("train_tail", 500)], "imdb": [("train_tail_per_class", 500)]}


def test_mlm_corpus_uses_train_pools_only(text_mirror):
    from common.data import load_dataset
    train, dev = mlm_corpus(text_mirror, held_out_pools=HU19_POOLS, imdb_limit=None)
    corpus = set(train) | set(dev)
    assert len(corpus) == len(train) + len(dev) and not set(train) & set(dev)
    assert abs(len(dev) / len(corpus) - 0.02) < 0.001 and not any("<br />" in t for t in corpus)
    clean = lambda text: " ".join(text.replace("<br />", " ").split())
    forbidden = {}
    for name in ("sst5", "sst2"):
        splits = load_dataset(name, text_mirror)
        forbidden[name] = {clean(t) for split in ("dev", "test") for t in splits[split][0]}
    trec = load_dataset("trec", text_mirror)
    forbidden["trec"] = {clean(t) for t in trec["train"][0][-500:] + trec["test"][0]}
    imdb = load_dataset("imdb", text_mirror)
    texts, labels = imdb["train"]
    tails = [i for label in (0, 1) for i in (labels == label).nonzero()[0][-500:]]
    forbidden["imdb"] = {clean(texts[i]) for i in tails} | {clean(t) for t in imdb["test"][0]}
    for name, texts_out in forbidden.items():
        assert not corpus & texts_out, name
    kept_trec = {clean(t) for t in trec["train"][0][:-500]} - forbidden["trec"]
    assert kept_trec <= corpus and len(kept_trec) > 4000       # the rest of the TREC pool is used
    sst5_train = {clean(t) for t in load_dataset("sst5", text_mirror)["train"][0]}
    assert len(sst5_train & corpus) > 8500                      # nearly all SST-5 train sentences
    assert len(corpus) > 8500 + 4000 + 20000                    # + IMDB reviews (imdb_limit=None)


def test_mlm_corpus_is_seeded(text_mirror):
    first = mlm_corpus(text_mirror, datasets=("trec", "imdb"), held_out_pools=HU19_POOLS, imdb_limit=50, seed=0)
    assert mlm_corpus(text_mirror, datasets=("trec", "imdb"), held_out_pools=HU19_POOLS, imdb_limit=50, seed=0) == first
    other = mlm_corpus(text_mirror, datasets=("trec", "imdb"), held_out_pools=HU19_POOLS, imdb_limit=50, seed=1)
    assert other[1] != first[1] and sum(len(part) for part in first) < 4952 + 50


def test_a_run_whose_dev_pool_the_mlm_saw_is_refused(tmp_path):
    from common.text.mlm import REPORT_NAME, check_dev_pool_held_out
    (tmp_path / REPORT_NAME).write_text(json.dumps({"datasets": ["trec", "sst5"],
                                                    "held_out_pools": {"trec": [["train_tail", 500]]}}))
    check_dev_pool_held_out(tmp_path, "trec", "train_tail", 500)
    check_dev_pool_held_out(tmp_path, "sst5", "dev_split", 0)          # an official dev split: always held out
    check_dev_pool_held_out(tmp_path, "imdb", "train_tail_per_class", 500)   # not in the corpus
    with pytest.raises(ConfigError, match=r"without holding out the dev pool \(train_tail, 800\).*repro mlm"):
        check_dev_pool_held_out(tmp_path, "trec", "train_tail", 800)
