"""Length groups of token batches: optimal partition (brute force), and identical losses/gradients."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from common.meta.lookahead import (
    dev_loss_grad,
    model_buffers,
    per_example_losses,
    trainable_params,
)
from common.text.backbones import build_encoder
from common.text.classifier import TextClassifier
from common.train import batches as token_batches
from common.train.batches import (
    GROUP_OVERHEAD_TOKENS,
    Batch,
    length_groups,
    logits_by_length,
    trim_padding,
)
from common.train.steps import weighted_step


def padded(lengths, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths) + 3
    ids = torch.randint(1, 60, (len(lengths), width), generator=g)
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    return ids


def brute_force_cost(lengths, max_groups):
    """The cheapest partition of the rows into <= max_groups arbitrary groups."""
    best = float("inf")
    for labels in itertools.product(range(max_groups), repeat=len(lengths)):
        groups = [[lengths[i] for i in range(len(lengths)) if labels[i] == k] for k in range(max_groups)]
        best = min(best, sum(len(g) * max(g) + GROUP_OVERHEAD_TOKENS for g in groups if g))
    return best


@pytest.mark.parametrize("lengths", [[5, 40, 6, 7, 39, 8, 5], [3, 3, 3], [50, 4, 4, 4, 4, 4, 49, 12], [9]])
def test_length_groups_partition_rows_at_the_brute_force_optimum(lengths):
    ids = padded(lengths)
    groups = length_groups(ids, max_groups=3)
    assert sorted(torch.cat(groups).tolist()) == list(range(len(lengths)))
    cost = sum(len(g) * max(lengths[i] for i in g.tolist()) + GROUP_OVERHEAD_TOKENS for g in groups)
    assert cost == brute_force_cost(lengths, 3)


def tiny_classifier():
    torch.manual_seed(0)
    return TextClassifier(build_encoder("tiny-random-bert", vocab_size=60), 3, max_seq_len=64).to(torch.float64)


def test_grouped_forward_losses_and_gradients_equal_the_padded_batch():
    model = tiny_classifier().eval()
    ids = padded([4, 30, 5, 6, 29, 7, 4, 5], width=40)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    assert len(length_groups(ids)) > 1
    torch.testing.assert_close(logits_by_length(model, ids), model(ids), rtol=1e-10, atol=1e-12)
    params, buffers = trainable_params(model), model_buffers(model)
    torch.testing.assert_close(per_example_losses(model, params, buffers, ids, y, by_length=True),
                               per_example_losses(model, params, buffers, ids, y), rtol=1e-10, atol=1e-12)
    loss, grads = dev_loss_grad(model, params, buffers, ids, y)
    plain = F.cross_entropy(model(ids), y)
    reference = torch.autograd.grad(plain, list(model.parameters()))
    assert float(loss) == pytest.approx(float(plain), rel=1e-12)
    for (name, g), r in zip(grads.items(), reference):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12, msg=name)


def test_weighted_step_in_length_groups_takes_the_same_step(monkeypatch):
    ids = padded([4, 30, 5, 6, 29, 7, 4, 5], width=40)
    batch, w = Batch(ids, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.arange(8)), torch.full((8,), 1 / 8)
    after = []
    for grouped in (True, False):
        model = tiny_classifier()
        for module in model.modules():   # no dropout, so both forwards are deterministic
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if not grouped:
            monkeypatch.setattr(token_batches, "length_groups", lambda ids, max_groups=4: [torch.arange(len(ids))])
        weighted_step(model, torch.optim.SGD(model.parameters(), lr=0.1), batch, w)
        after.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(after[0], after[1], rtol=1e-9, atol=1e-12)


def test_trim_padding_keeps_the_longest_row():
    ids = padded([3, 7, 2], width=12)
    assert trim_padding(ids).shape == (3, 7)
