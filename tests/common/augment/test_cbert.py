"""common.augment.cbert: the label-conditional BERT augmenter, its gumbel-softmax soft samples, the gradient
path from the classifier into the augmenter, MLM fitting, and the soft-token classifier input."""
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from common.augment.cbert import (
    FIGURE2_SENTENCE,
    FIGURE2_WORDS,
    LabelConditionalMLM,
    augmentation_positions,
    fit_cbert,
    gumbel_noise,
    soft_samples,
    top_k_substitutions,
)
from common.errors import ConfigError
from common.text.backbones import TINY_CONFIG, build_encoder, load_tokenizer
from common.text.classifier import TextClassifier
from common.text.soft_tokens import SoftTokens

VOCAB = 1100            # > 1000: mask_tokens draws random replacements from ids >= 1000
CLS, SEP, MASK = 101, 102, 103

torch.set_num_threads(1)


def tiny_mlm(vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=vocab, attn_implementation="eager", **TINY_CONFIG))


def tiny_classifier(num_labels=3, seed=1):
    torch.manual_seed(seed)
    return TextClassifier(build_encoder("tiny-random-bert", vocab_size=VOCAB), num_labels, max_seq_len=32).eval()


def sentences(lengths, width, seed=0):
    """[CLS] random tokens [SEP], real lengths `lengths` (incl. [CLS]/[SEP]), right-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, VOCAB, (n,), generator=g)
        ids[row, 0], ids[row, n - 1] = CLS, SEP
    return ids


def test_label_embedding_replaced_unless_two_labels():
    mlm = tiny_mlm()
    pretrained = mlm.bert.embeddings.token_type_embeddings
    model = LabelConditionalMLM(mlm, 5).eval()
    table = mlm.bert.embeddings.token_type_embeddings
    assert table is not pretrained and table.weight.shape == (5, 32) and mlm.config.type_vocab_size == 5
    # N(0, 0.02)
    assert 0.01 < float(table.weight.detach().std()) < 0.03 and abs(float(table.weight.detach().mean())) < 0.01
    assert any(p is table.weight for p in model.parameters())
    # two labels: the pretrained segment table is kept as the label embedding
    mlm2 = tiny_mlm()
    kept = mlm2.bert.embeddings.token_type_embeddings
    before = kept.weight.detach().clone()
    LabelConditionalMLM(mlm2, 2)
    assert mlm2.bert.embeddings.token_type_embeddings is kept and torch.equal(kept.weight, before)
    # every position gets token_type_id = the sentence's label, and the logits depend on it
    ids = sentences([6, 9], 9)
    labels = torch.tensor([3, 1])
    with torch.no_grad():
        logits = model(ids, labels)
        expected = mlm(input_ids=ids, attention_mask=(ids != 0).long(),
                       token_type_ids=labels[:, None].expand_as(ids)).logits
        other = model(ids, torch.tensor([0, 4]))
    assert logits.shape == (2, 9, VOCAB)
    torch.testing.assert_close(logits, expected)
    assert (logits - other).abs().amax(dim=(1, 2)).min() > 1e-3
    positions = augmentation_positions(ids, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.masked_logits(ids, labels, positions), logits[positions])


def test_augmentation_positions_rule():
    lengths = [3, 4, 13, 14, 20, 21, 30, 64, 2, 0]
    ids = sentences([max(n, 1) for n in lengths], 64)
    ids[-1] = 0                                                  # an all-padding row
    positions = augmentation_positions(ids, torch.Generator().manual_seed(0))
    assert positions.dtype == torch.bool and positions.shape == ids.shape
    assert positions.sum(dim=1).tolist() == [1, 2, 2, 2, 2, 3, 4, 9, 0, 0]   # max(n // 7, 2); n < 4: one
    assert positions[0, 1]                                       # n = 3: position 1
    chosen = ids[positions]
    assert not bool(((chosen == CLS) | (chosen == SEP) | (chosen == 0)).any())
    real = torch.tensor(lengths)[:, None]
    cols = torch.arange(64)[None, :]
    assert not bool((positions & ((cols == 0) | (cols >= real - 1))).any())
    # deterministic given the generator, different across draws
    again = augmentation_positions(ids, torch.Generator().manual_seed(0))
    assert torch.equal(positions, again)
    assert not torch.equal(positions, augmentation_positions(ids, torch.Generator().manual_seed(1)))
    # uniform among 1..n-2: n = 30 picks 4 of 28 candidates, each with probability 1/7
    many = augmentation_positions(sentences([30], 32).repeat(4000, 1), torch.Generator().manual_seed(2))
    freq = many.double().mean(dim=0)
    assert torch.allclose(freq[1:29], torch.full((28,), 4 / 28, dtype=torch.float64), atol=0.03)
    assert freq[0] == 0 and freq[29:].sum() == 0


def test_soft_samples_are_distributions_at_the_positions():
    model = LabelConditionalMLM(tiny_mlm(), 3).eval()
    ids, labels = sentences([10, 16, 7], 16), torch.tensor([0, 2, 1])
    positions = augmentation_positions(ids, torch.Generator().manual_seed(0))
    m = int(positions.sum())
    soft = soft_samples(model, ids, labels, positions, 2, torch.Generator().manual_seed(5))
    assert soft.probs.shape == (2 * m, VOCAB) and len(soft) == 6
    assert torch.equal(soft.input_ids, ids.repeat(2, 1)) and torch.equal(soft.positions, positions.repeat(2, 1))
    assert (soft.probs >= 0).all()
    torch.testing.assert_close(soft.probs.sum(-1), torch.ones(2 * m))
    dense = soft.dense()
    assert dense.shape == (6, 16, VOCAB)
    assert torch.equal(dense[~soft.positions], F.one_hot(soft.input_ids[~soft.positions], VOCAB).float())
    assert torch.equal(dense[soft.positions], soft.probs)
    # layout: rows [a*M, (a+1)*M) are augmentation a = softmax(MLM logits of the masked input + gumbel_a)
    with torch.no_grad():
        logits = model.masked_logits(ids.masked_fill(positions, MASK), labels, positions)
    noise = gumbel_noise((2, m, VOCAB), torch.Generator().manual_seed(5), torch.float32, "cpu")
    torch.testing.assert_close(soft.probs, torch.softmax(logits + noise, -1).reshape(2 * m, VOCAB))
    assert soft.probs.grad_fn is not None                        # differentiable by default
    # deterministic for a seeded generator; different draws differ (across augmentations and calls)
    with torch.no_grad():
        again = soft_samples(model, ids, labels, positions, 2, torch.Generator().manual_seed(5))
        other = soft_samples(model, ids, labels, positions, 2, torch.Generator().manual_seed(6))
    assert again.probs.grad_fn is None                           # frozen-augmenter samples
    assert torch.equal(again.probs, soft.probs.detach())
    assert not torch.allclose(other.probs, again.probs, atol=1e-3)
    assert not torch.allclose(again.probs[:m], again.probs[m:], atol=1e-3)
    # the mask token, not the original, is what the augmenter sees at the positions
    with torch.no_grad():
        unmasked = model.masked_logits(ids, labels, positions)
    assert not torch.allclose(unmasked, logits, atol=1e-3)


def test_forward_soft_tokens_one_hot_equals_forward():
    clf = tiny_classifier()
    ids = sentences([12, 5, 9, 3], 12, seed=3)
    positions = augmentation_positions(ids, torch.Generator().manual_seed(0))
    one_hot = SoftTokens(ids, positions, F.one_hot(ids[positions], VOCAB).float())
    torch.testing.assert_close(clf.forward_soft_tokens(one_hot), clf(ids), rtol=0, atol=1e-6)
    everywhere = ids != 0
    full = SoftTokens(ids, everywhere, F.one_hot(ids[everywhere], VOCAB).float())
    torch.testing.assert_close(clf.forward_soft_tokens(full), clf(ids), rtol=0, atol=1e-6)
    # a genuinely soft input agrees with the dense soft path, and changes the logits
    probs = torch.softmax(torch.randn(int(positions.sum()), VOCAB, generator=torch.Generator().manual_seed(1)) * 3, -1)
    soft = SoftTokens(ids, positions, probs)
    torch.testing.assert_close(clf.forward_soft_tokens(soft), clf.forward_soft(soft.dense(), (ids != 0).long()))
    assert not torch.allclose(clf.forward_soft_tokens(soft), clf(ids), atol=1e-4)
    # helpers: repeat keeps the a*B + b layout, concat stacks rows
    twice = SoftTokens.concat([soft, one_hot])
    torch.testing.assert_close(clf.forward_soft_tokens(twice),
                               torch.cat([clf.forward_soft_tokens(soft), clf(ids)]), rtol=0, atol=1e-6)
    torch.testing.assert_close(clf.forward_soft_tokens(soft.repeat(2)), clf.forward_soft_tokens(soft).repeat(2, 1))


def test_classifier_gradient_reaches_augmenter_and_matches_finite_differences():
    augmenter = LabelConditionalMLM(tiny_mlm(), 3).double().eval()
    clf = tiny_classifier().double()
    ids, y = sentences([10, 14, 8], 14, seed=4), torch.tensor([2, 0, 1])
    positions = augmentation_positions(ids, torch.Generator().manual_seed(0))

    def loss() -> torch.Tensor:               # fixed gumbel noise: the same seed every call
        soft = soft_samples(augmenter, ids, y, positions, 2, torch.Generator().manual_seed(7))
        return F.cross_entropy(clf.forward_soft_tokens(soft), y.repeat(2))

    loss().backward()
    label_table = augmenter.mlm.bert.embeddings.token_type_embeddings.weight
    assert label_table.grad is not None and label_table.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in augmenter.parameters())
    param = label_table                       # the finite difference along a random direction of it
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    analytic = float((param.grad * direction).sum())
    eps = 1e-5
    with torch.no_grad():
        param += eps * direction
        plus = float(loss())
        param -= 2 * eps * direction
        minus = float(loss())
        param += eps * direction
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10)


def toy_corpus(n, seed):
    """Label c's sentences repeat token 1000 + c: [MASK]ed tokens are predictable from the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    lengths = torch.randint(5, 12, (n,), generator=g)
    ids = torch.zeros(n, 12, dtype=torch.long)
    for row in range(n):
        ids[row, :lengths[row]] = 1000 + labels[row]
        ids[row, 0], ids[row, lengths[row] - 1] = CLS, SEP
    return ids, labels


def test_fit_cbert_lowers_dev_loss_and_restores_best_state():
    model = LabelConditionalMLM(tiny_mlm(), 3)
    train_ids, train_y = toy_corpus(24, seed=0)
    dev_ids, dev_y = toy_corpus(6, seed=1)
    states = {}
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit_cbert(model, train_ids, train_y, dev_ids, dev_y, epochs=6, batch_size=8, lr=1e-2,
                        generator=torch.Generator().manual_seed(0),
                        on_epoch=lambda row: states.__setitem__(row["epoch"], {k: v.clone() for k, v in
                                                                                model.state_dict().items()}))
    dev = [row["dev_loss"] for row in history["epochs"]]
    assert [row["epoch"] for row in history["epochs"]] == list(range(1, 7)) and set(states) == set(range(1, 7))
    assert history["initial_dev_loss"] > 6.0                      # ~ log(1100) at random init
    assert history["best_dev_loss"] == min(dev) < 0.5 * history["initial_dev_loss"]
    assert history["best_epoch"] == 1 + dev.index(min(dev))
    best = states[history["best_epoch"]]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    # a diverging continuation (absurd lr) never beats the start: the state before it is restored
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worse = fit_cbert(model, train_ids, train_y, dev_ids, dev_y, epochs=2, batch_size=8, lr=5.0,
                      generator=torch.Generator().manual_seed(1))
    assert worse["best_epoch"] == 0 and min(r["dev_loss"] for r in worse["epochs"]) > worse["initial_dev_loss"]
    assert worse["initial_dev_loss"] == pytest.approx(history["best_dev_loss"], rel=1e-5)   # fixed dev masks
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, initial[k]) for k, v in before.items())


def test_top_k_substitutions_of_figure2_words():
    try:
        tokenizer = load_tokenizer("tiny-random-bert")
    except ConfigError as exc:
        pytest.skip(f"MiniLM package missing: {exc}")
    model = LabelConditionalMLM(tiny_mlm(vocab=30522), 5).train()
    assert all(len(tokenizer.tokenize(w)) == 1 for w in FIGURE2_WORDS)
    fills = top_k_substitutions(model, tokenizer, FIGURE2_SENTENCE, 1, FIGURE2_WORDS, k=5)
    assert list(fills) == list(FIGURE2_WORDS) and model.training
    assert all(len(v) == 5 and all(isinstance(t, str) for t in v) for v in fills.values())
    # the ranking is the MLM's: boost two tokens in the output bias, a special token is never returned
    bias = model.mlm.cls.predictions.bias
    with torch.no_grad():
        bias[tokenizer.convert_tokens_to_ids("charming")] += 100.0
        bias[tokenizer.convert_tokens_to_ids("bland")] += 90.0
        bias[tokenizer.sep_token_id] += 200.0
    fills = top_k_substitutions(model, tokenizer, FIGURE2_SENTENCE, 1, FIGURE2_WORDS, k=5)
    assert all(v[:2] == ["charming", "bland"] and "[SEP]" not in v for v in fills.values())
    with pytest.raises(ValueError, match="do not occur"):
        top_k_substitutions(model, tokenizer, FIGURE2_SENTENCE, 1, ["stunning"])
