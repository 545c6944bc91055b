"""hu19 augmentation meta step (Eq. 8 through Eq. 10): exactness of the differentiable Adam lookahead
and the second-order meta-gradient against finite differences, on a tiny BERT in float64."""
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from common.augment.cbert import LabelConditionalMLM, augmentation_positions
from common.text.backbones import TINY_CONFIG, build_encoder
from common.text.classifier import TextClassifier
from common.text.soft_tokens import SoftTokens
from common.train.batches import Batch
from common.train.optimizers import adamw_param_groups
from papers.hu19.augmentation import AugmentationStep, lookahead_dev_loss

VOCAB = 60


def tiny_classifier(num_labels=3, dtype=torch.float64):
    torch.manual_seed(0)
    clf = TextClassifier(build_encoder("tiny-random-bert", vocab_size=VOCAB), num_labels, max_seq_len=16)
    return clf.to(dtype).eval()


def ids_batch(n=4, length=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (n, length), generator=g)
    ids[:, 0] = 2                      # a stand-in [CLS]
    ids[1, 6:] = 0                     # padding in one row
    return ids


def warmed_adam(clf, x, y, steps=2):
    """An Adam with non-trivial moments (two real steps), weight decay off for biases/LayerNorm."""
    opt = torch.optim.Adam(adamw_param_groups(clf, 0.01), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(x), y).backward()
        opt.step()
    return opt


def meta_problem():
    """(classifier, batch x, y, warmed Adam, dev x, dev y) of the meta-gradient tests."""
    clf = tiny_classifier()
    x, y = ids_batch(), torch.tensor([0, 1, 2, 1])
    return clf, x, y, warmed_adam(clf, x, y), ids_batch(seed=7), torch.tensor([2, 0, 1, 0])


def test_differentiable_adam_step_equals_torch_adam():
    clf = tiny_classifier()
    x, y = ids_batch(), torch.tensor([0, 1, 2, 1])
    opt = warmed_adam(clf, x, y)
    probs = F.one_hot(x, VOCAB).to(torch.float64)
    soft = SoftTokens(x, torch.ones_like(x, dtype=torch.bool) & (x != 0), probs[x != 0])
    dev_x, dev_y = ids_batch(seed=7), torch.tensor([2, 0, 1, 0])
    # lookahead through the soft path with one-hot rows == a real Adam step on the same batch
    ahead_loss = lookahead_dev_loss(clf, opt, soft, y, dev_x, dev_y)
    opt.zero_grad()
    F.cross_entropy(clf(x), y).backward()
    opt.step()
    with torch.no_grad():
        real_loss = F.cross_entropy(clf(dev_x), dev_y)
    assert float(ahead_loss.detach()) == pytest.approx(float(real_loss), rel=1e-9, abs=1e-12)


def test_meta_gradient_matches_central_finite_differences():
    clf, x, y, opt, dev_x, dev_y = meta_problem()
    positions = torch.zeros_like(x, dtype=torch.bool)
    positions[:, 2] = True
    positions[:, 4] = True
    g = torch.Generator().manual_seed(3)
    psi = torch.randn(int(positions.sum()), VOCAB, generator=g, dtype=torch.float64, requires_grad=True)

    def loss_of(logits):
        return lookahead_dev_loss(clf, opt, SoftTokens(x, positions, torch.softmax(logits, -1)), y, dev_x, dev_y)

    loss_of(psi).backward()
    direction = torch.randn(psi.shape, generator=g, dtype=torch.float64)
    eps = 1e-5
    with torch.enable_grad():
        plus = float(loss_of((psi + eps * direction).detach()))
        minus = float(loss_of((psi - eps * direction).detach()))
    numeric = (plus - minus) / (2 * eps)
    analytic = float((psi.grad * direction).sum())
    assert abs(analytic) > 1e-8, "the meta-gradient is not trivially zero"
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-10)


def test_ours_aug_step_updates_augmenter_and_classifier():
    torch.manual_seed(0)
    clf = tiny_classifier(dtype=torch.float32).train()
    mlm = BertForMaskedLM(BertConfig(vocab_size=VOCAB, attn_implementation="eager", **TINY_CONFIG))
    augmenter = LabelConditionalMLM(mlm, 3)
    opt = torch.optim.Adam(adamw_param_groups(clf, 0.01), lr=1e-3)
    aug_opt = torch.optim.Adam(adamw_param_groups(augmenter, 0.01), lr=1e-3)
    x, y = ids_batch(), torch.tensor([0, 1, 2, 1])
    dev = (ids_batch(seed=7), torch.tensor([2, 0, 1, 0]))
    warm = Batch(x, y, torch.arange(4))
    step = AugmentationStep("ours_aug", clf, opt, generator=torch.Generator().manual_seed(0), augmenter=augmenter,
                            augmenter_optimizer=aug_opt, dev=dev, n_aug_meta=2)
    before_aug = {n: p.detach().clone() for n, p in augmenter.named_parameters()}
    before_clf = {n: p.detach().clone() for n, p in clf.named_parameters()}
    loss = step(warm)
    assert torch.isfinite(torch.tensor(loss)) and step.last_meta_dev_loss is not None
    assert any(not torch.equal(before_aug[n], p) for n, p in augmenter.named_parameters())
    assert any(not torch.equal(before_clf[n], p) for n, p in clf.named_parameters())
    # the real step saw 2B rows: originals + one augmented copy each
    positions = augmentation_positions(x, torch.Generator().manual_seed(0))
    assert positions.any(dim=1).all()


def test_row_restricted_lookahead_equals_the_full_one():
    """Stepping only the word-embedding rows the dev batch reads gives the same dev loss and the
    same meta-gradient as stepping the whole table (float64)."""
    clf, x, y, opt, dev_x, dev_y = meta_problem()
    positions = torch.zeros_like(x, dtype=torch.bool)
    positions[:, 3] = True
    psi = torch.randn(int(positions.sum()), VOCAB, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for sparse in (True, False):
        leaf = psi.clone().requires_grad_(True)
        soft = SoftTokens(x, positions, torch.softmax(leaf, -1))
        loss = lookahead_dev_loss(clf, opt, soft, y, dev_x, dev_y, sparse_embedding=sparse)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    (l_sparse, g_sparse), (l_dense, g_dense) = results
    torch.testing.assert_close(l_sparse, l_dense, rtol=1e-12, atol=1e-14)
    assert g_dense.abs().max() > 1e-8
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-9, atol=1e-12)
