"""The meta step's train/eval modes as the hu19 official code runs them (issue: hu19 fidelity).

The official functional copy (`MagicModule`) is always in training mode. Images: per-example
SGD steps on an eval-mode deepcopy, dev loss at theta' with BatchNorm batch statistics of each
(shuffled, train-batch-sized) dev batch, the copy's buffers deep-copied. Text: per-example
gradients and the dev pass both with dropout. Each reference below is that loop, written out.
"""
import copy

import torch
from torch import nn
from torch.func import functional_call

from common.meta.lookahead import PassModes, lookahead_meta_gradient, trainable_params
from common.train.batches import ArrayData, Batch
from papers.hu19.weighting import MetaStepConfig, WeightingConfig, WeightingMethod


def bn_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def official_image_loop(model, opt, x, y, dev_x, dev_y, w, dev_order, dev_batch):
    """weighting/image_classifier.py `_get_weights`, as a reference: eval-mode per-example steps
    on a deepcopy (real SGD steps, momentum and weight decay included), theta' = theta + sum w_i
    Delta_i, dev loss over dev batches in train mode on copied buffers."""
    params = trainable_params(model)
    deltas = []
    for i in range(len(x)):
        twin = copy.deepcopy(model).eval()
        twin_opt = torch.optim.SGD(twin.parameters(), lr=opt.defaults["lr"], momentum=opt.defaults["momentum"],
                                   weight_decay=opt.defaults["weight_decay"])
        twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        twin_opt.zero_grad()
        nn.functional.cross_entropy(twin(x[i:i + 1]), y[i:i + 1]).backward()
        twin_opt.step()
        deltas.append({n: p.detach() - params[n] for n, p in twin.named_parameters()})
    w = w.detach().clone().requires_grad_(True)
    ahead = {n: params[n] + sum(w[i] * deltas[i][n] for i in range(len(x))) for n in params}
    magic = copy.deepcopy(model).train()               # always training; its buffers are copies
    buffers = {n: b.clone() for n, b in magic.named_buffers()}
    loss = 0.0
    for b in dev_order.split(dev_batch):
        logits = functional_call(magic, (ahead, buffers), (dev_x[b],))
        loss = loss + nn.functional.cross_entropy(logits, dev_y[b]) * len(b) / len(dev_y)
    return torch.autograd.grad(loss, w)[0]


def trained_sgd(x, y):
    torch.manual_seed(1)
    model = bn_net().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_image_modes_match_the_official_loop():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    dev_x, dev_y = torch.randn(12, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (12,))
    model, opt = trained_sgd(x, y)
    running = model[1].running_mean.clone()
    w = torch.rand(6, dtype=torch.float64)
    modes = PassModes(per_example="eval", dev="train", dev_batch_size=4)
    gen = torch.Generator().manual_seed(3)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    got = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w, modes=modes, dev_generator=gen)
    want = official_image_loop(model, opt, x, y, dev_x, dev_y, w, order, 4)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
    # the eval-mode dev pass (the earlier reading) is a different quantity on a BatchNorm network
    eval_dev = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    assert (eval_dev - want).abs().max() > 1e-3 * want.abs().max()
    # the model's running statistics and mode are untouched by the train-mode dev pass
    torch.testing.assert_close(model[1].running_mean, running, rtol=0, atol=0)
    assert model.training


class DropoutNet(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(5, 16), nn.Dropout(p), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


def official_text_loop(model, opt, x, y, dev_x, dev_y, w):
    """weighting/classifier.py `_get_weights`: per-example gradients in train mode (each example
    its own forward, hence its own dropout masks), Adam deltas from the current state, dev pass at
    theta' in train mode (dropout)."""
    params = trainable_params(model)
    group = opt.param_groups[0]
    b1, b2 = group["betas"]
    deltas = []
    model.train()
    for i in range(len(x)):
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        loss = nn.functional.cross_entropy(functional_call(model, leaves, (x[i:i + 1],)), y[i:i + 1])
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        delta = {}
        for n, p in model.named_parameters():
            st = opt.state[p]
            g = grads[n] + group["weight_decay"] * params[n]
            m = b1 * st["exp_avg"] + (1 - b1) * g
            v = b2 * st["exp_avg_sq"] + (1 - b2) * g * g
            t = int(st["step"]) + 1
            delta[n] = -group["lr"] / (1 - b1 ** t) * m / ((v / (1 - b2 ** t)).sqrt() + group["eps"])
        deltas.append(delta)
    w = w.detach().clone().requires_grad_(True)
    ahead = {n: params[n] + sum(w[i] * deltas[i][n] for i in range(len(x))) for n in params}
    loss = nn.functional.cross_entropy(functional_call(model, ahead, (dev_x,)), dev_y)
    return torch.autograd.grad(loss, w)[0]


def trained_adam(x, y, p=0.5):
    torch.manual_seed(1)
    model = DropoutNet(p).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def text_problem():
    torch.manual_seed(0)
    return (torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,)),
            torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,)))


def test_text_modes_without_dropout_equal_the_loop_exactly():
    x, y, dev_x, dev_y = text_problem()
    model, opt = trained_adam(x, y, p=0.0)
    w = torch.rand(6, dtype=torch.float64)
    got = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w, modes=PassModes("train", "train"))
    torch.testing.assert_close(got, official_text_loop(model, opt, x, y, dev_x, dev_y, w), rtol=1e-7, atol=1e-12)


def test_text_modes_with_dropout_match_the_loop_in_distribution():
    """With dropout the two draw different masks, so compare the mean over many draws: both are
    unbiased estimates of the same expected meta-gradient."""
    x, y, dev_x, dev_y = text_problem()
    model, opt = trained_adam(x, y, p=0.3)
    w = torch.rand(6, dtype=torch.float64)
    torch.manual_seed(5)
    ours = torch.stack([lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w, modes=PassModes("train", "train"))
                        for _ in range(400)])
    loop = torch.stack([official_text_loop(model, opt, x, y, dev_x, dev_y, w) for _ in range(400)])
    se = (ours.var(0) / 400 + loop.var(0) / 400).sqrt()
    assert ours.std(0).min() > 0            # dropout is really on in both passes
    assert ((ours.mean(0) - loop.mean(0)).abs() < 4 * se).all()
    eval_mode = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    assert ((eval_mode - loop.mean(0)).abs() > 4 * se).any()   # eval mode is a different quantity


def test_per_example_dropout_masks_are_independent():
    """Two copies of one example get different gradients in train mode (own masks, as a loop)."""
    x, y, dev_x, dev_y = text_problem()
    model, opt = trained_adam(x, y, p=0.5)
    twin_x, twin_y = x[:1].repeat(4, 1), y[:1].repeat(4)
    torch.manual_seed(0)
    got = lookahead_meta_gradient(model, opt, twin_x, twin_y, dev_x, dev_y, torch.ones(4, dtype=torch.float64),
                                  modes=PassModes("train", "eval"))
    scale = got.abs().max()
    gaps = (got[:, None] - got[None, :]).abs() + torch.eye(4, dtype=got.dtype) * scale
    assert gaps.min() > 1e-6 * scale                 # four masks: four different gradients
    same = lookahead_meta_gradient(model, opt, twin_x, twin_y, dev_x, dev_y, torch.ones(4, dtype=torch.float64))
    # eval mode: one gradient, up to float64 rounding (the batched reductions may round rows differently)
    assert torch.allclose(same, same[:1].expand(4), rtol=1e-12, atol=0)


def test_text_chunks_and_first_step_rule():
    """Weights per sub-batch of `chunk` (each its own lookahead from theta), normalised over the
    batch; uniform weights with phi kept while Adam has no state."""
    x, y, dev_x, dev_y = text_problem()
    model, opt = trained_adam(x, y, p=0.0)
    train, dev = ArrayData(x, y), ArrayData(dev_x, dev_y)
    meta = MetaStepConfig(PassModes("train", "train"), chunk=4, uniform_before_adam_state=True)
    step = WeightingMethod("ren", model, opt, train, dev, 3, WeightingConfig(), meta)
    batch = Batch(x, y, torch.arange(6))
    chunked = step.meta_gradient(batch, torch.zeros(6, dtype=torch.float64))
    parts = [lookahead_meta_gradient(model, opt, x[s], y[s], dev_x, dev_y, torch.zeros(len(range(6)[s]),
                                                                                          dtype=torch.float64),
                                     modes=PassModes("train", "train")) for s in (slice(0, 4), slice(4, 6))]
    torch.testing.assert_close(chunked, torch.cat(parts))
    fresh_model = DropoutNet(0.0).double()
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=0.01)
    first = WeightingMethod("ours_weight", fresh_model, fresh, train, dev, 3, WeightingConfig(), meta)
    weights = first.batch_weights(batch)
    torch.testing.assert_close(weights, torch.full((6,), 1 / 6, dtype=weights.dtype))
    assert torch.equal(first.phi.values, torch.ones(6, dtype=first.phi.values.dtype))
