"""papers.metaaugment.metaaugment: the meta-gradient of Eq. 2-3 against central finite differences
(float64, tiny network), both meta-gradient modes, every policy variant; Eq. 4 with the updated policy."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common.augment.image_ops import sample_magnitudes, transformation_embedding
from common.models.cifar_resnet import CifarResNet
from common.models.wide_resnet import wide_resnet
from papers.metaaugment.metaaugment import (
    MetaAugmentUpdate,
    MetaLearner,
    TangentGraph,
    TaskNetwork,
    meta_gradients,
    policy_optimizer,
)
from papers.metaaugment.policy import PolicyNetwork, normalise_weights


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool features (4) and a linear head: the smallest network with BatchNorm."""

    def __init__(self, classes=3, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def features(self, x):
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


def setup(use_embedding=True, own=False, seed=0, n=6, n_val=5):
    torch.manual_seed(seed)
    model = TaskNetwork(TinyNet(), [100.0] * 3, [50.0] * 3).double()
    extractor = TaskNetwork(TinyNet(), [100.0] * 3, [50.0] * 3).double() if own else None
    learner = MetaLearner(PolicyNetwork(4, use_embedding, hidden=5), 0.3, extractor).double()
    x = torch.rand(n, 3, 6, 6, dtype=torch.float64) * 255
    y = torch.randint(0, 3, (n,))
    j, k = torch.randint(0, 14, (n,)), torch.randint(0, 14, (n,))
    e = transformation_embedding(j, k, sample_magnitudes(n), sample_magnitudes(n)).double() if use_embedding else None
    x_val = torch.rand(n_val, 3, 6, 6, dtype=torch.float64) * 255
    y_val = torch.randint(0, 3, (n_val,))
    return model, learner, (x, y, e, x_val, y_val)


def reference_val_loss(model, learner, x, y, e, x_val, y_val):
    """L_val(w_hat(theta, alpha)) written out directly: Eq. 2 with the per-sample gradients grad L_i(w)
    one by one (P a function of theta only, features at w)."""
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = dict(model.named_parameters())
    logits, feats = functional_call(model, (params, buffers), (x,), {"with_features": True})
    losses = F.cross_entropy(logits, y, reduction="none")
    weights = normalise_weights(learner.outputs(feats, x, e))
    per_sample = [torch.autograd.grad(losses[i], list(params.values()), retain_graph=True) for i in range(len(y))]
    w_hat = {n: params[n].detach() - learner.alpha * sum(weights[i] * per_sample[i][t] for i in range(len(y)))
             for t, n in enumerate(params)}
    val = F.cross_entropy(functional_call(model, (w_hat, {n: b.clone() for n, b in model.named_buffers()}),
                                          (x_val,)), y_val)
    return val


@pytest.mark.parametrize("mode", ["jvp", "double_backward"])
@pytest.mark.parametrize("use_embedding,own", [(True, False), (False, False), (True, True)],
                         ids=["wTE-shareFE", "oTE-shareFE", "wTE-ownFE"])
def test_meta_gradient_matches_central_finite_differences(mode, use_embedding, own):
    model, learner, batch = setup(use_embedding, own)
    grads, val_loss = meta_gradients(model, learner, *batch, mode=mode)
    assert torch.allclose(val_loss, reference_val_loss(model, learner, *batch).detach(), atol=1e-12)
    names = [n for n, _ in learner.named_parameters()]
    assert set(grads) == set(names)
    h = 1e-6
    gen = torch.Generator().manual_seed(1)
    directions = [{n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in learner.named_parameters()}
                  for _ in range(3)]
    directions.append({n: (torch.ones_like(p) if n == "log_alpha" else torch.zeros_like(p))
                       for n, p in learner.named_parameters()})            # alpha alone
    base = {n: p.detach().clone() for n, p in learner.named_parameters()}
    for v in directions:
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for n, p in learner.named_parameters():
                    p.copy_(base[n] + sign * h * v[n])
            values.append(float(reference_val_loss(model, learner, *batch)))
        with torch.no_grad():
            for n, p in learner.named_parameters():
                p.copy_(base[n])
        fd = (values[0] - values[1]) / (2 * h)
        analytic = float(sum((grads[n] * v[n]).sum() for n in names))
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)
    assert float(grads["log_alpha"]) != 0.0


def test_both_modes_agree_and_nothing_is_mutated():
    model, learner, batch = setup(True, False)
    before = copy.deepcopy(model.state_dict()), copy.deepcopy(learner.state_dict())
    a, va = meta_gradients(model, learner, *batch, mode="jvp")
    b, vb = meta_gradients(model, learner, *batch, mode="double_backward")
    assert torch.equal(va, vb)
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-13), n
    for saved, now in zip(before, (model.state_dict(), learner.state_dict())):
        assert all(torch.equal(saved[k], now[k]) for k in saved)     # BN running stats included
    with pytest.raises(ValueError, match="meta_gradient: expected one of"):
        meta_gradients(model, learner, *batch, mode="finite")


@pytest.mark.parametrize("own", [False, True], ids=["shareFE", "ownFE"])
def test_update_is_eq3_then_eq4_with_the_updated_policy(own):
    model, learner, (x, y, e, x_val, y_val) = setup(True, own)
    ref_model, ref_learner = copy.deepcopy(model), copy.deepcopy(learner)
    task_opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pol_opt = policy_optimizer(learner, 0.01, 0.0, False, 0.0)
    grads, _ = meta_gradients(ref_model, ref_learner, x, y, e, x_val, y_val)
    stats = MetaAugmentUpdate(model, learner, task_opt, pol_opt)(x, y, e, x_val, y_val)
    # Eq. 3: plain SGD on (theta, log alpha)
    for n, p in ref_learner.named_parameters():
        assert torch.allclose(dict(learner.named_parameters())[n], p - 0.01 * grads[n], atol=1e-12), n
    assert stats.alpha == pytest.approx(float(learner.alpha))
    # Eq. 4: the task gradient is sum_i P~_i(theta_new) grad L_i(w), weights held fixed
    with torch.no_grad():
        ref_model.train()
        buffers = {n: b.clone() for n, b in ref_model.named_buffers()}
    params = dict(ref_model.named_parameters())
    logits, feats = functional_call(ref_model, (params, buffers), (x,), {"with_features": True})
    losses = F.cross_entropy(logits, y, reduction="none")
    with torch.no_grad():
        new_weights = normalise_weights(learner.outputs(feats, x, e))
    g = torch.autograd.grad((new_weights * losses).sum(), list(params.values()))
    for (n, p), gi in zip(params.items(), g):
        assert torch.allclose(dict(model.named_parameters())[n], p - 0.05 * gi, atol=1e-12), n
    assert torch.allclose(stats.weights, new_weights) and torch.allclose(stats.weights.sum(), torch.tensor(1.0,
                                                                                                         dtype=torch.float64))
    # the running statistics moved once (the real training forward), not in the lookahead passes
    once = copy.deepcopy(ref_model.net.bn).train()
    with torch.no_grad():
        once(ref_model.net.conv((x - ref_model.mean) / ref_model.std))
    assert torch.allclose(model.net.bn.running_mean, once.running_mean, atol=1e-12)


def test_alpha_stays_positive_and_learner_checks():
    with pytest.raises(ValueError, match="alpha_init must be > 0"):
        MetaLearner(PolicyNetwork(4), 0.0)
    learner = MetaLearner(PolicyNetwork(4), 0.1)
    with torch.no_grad():
        learner.log_alpha -= 50.0
    assert float(learner.alpha) > 0
    assert learner.features == "share" and len(learner.theta()) == len(list(learner.parameters())) - 1


def _resnet_setup(net, n=6, seed=0):
    torch.manual_seed(seed)
    model = TaskNetwork(net, [100.0] * 3, [50.0] * 3).double()
    learner = MetaLearner(PolicyNetwork(model.feature_dim, True, hidden=5), 0.3).double()
    e = transformation_embedding(torch.randint(0, 14, (n,)), torch.randint(0, 14, (n,)), sample_magnitudes(n),
                                 sample_magnitudes(n)).double()
    batch = (torch.rand(n, 3, 8, 8, dtype=torch.float64) * 255, torch.randint(0, 10, (n,)), e,
             torch.rand(5, 3, 8, 8, dtype=torch.float64) * 255, torch.randint(0, 10, (5,)))
    return model, learner, batch


@pytest.mark.parametrize("arch", ["resnet8-A", "resnet8-B", "wrn10-1", "wrn10-1-dropout"])
def test_tangent_program_equals_torch_func_jvp(arch):
    """The stored-primal tangent program (TangentGraph) gives torch.func.jvp's meta-gradient on the real
    backbones (option A / B shortcuts, WRN); a graph it has no rule for (dropout) falls back to jvp."""
    net = {"resnet8-A": lambda: CifarResNet(8, 10), "resnet8-B": lambda: CifarResNet(8, 10, shortcut="B"),
           "wrn10-1": lambda: wide_resnet(10, 1, 10), "wrn10-1-dropout": lambda: wide_resnet(10, 1, 10, dropout=0.3)}
    model, learner, batch = _resnet_setup(net[arch]())
    assert (TangentGraph.of(model) is None) == (arch == "wrn10-1-dropout")
    if arch == "wrn10-1-dropout":
        model.eval()                                   # deterministic forward for the comparison
    a, va = meta_gradients(model, learner, *batch, tangent_graph=True)
    b, vb = meta_gradients(model, learner, *batch, tangent_graph=False)
    assert torch.allclose(va, vb, atol=1e-12)
    for n in b:
        assert torch.allclose(a[n], b[n], rtol=1e-10, atol=1e-13), n


def test_graph_forward_is_the_module_forward():
    """The fx training forward gives the module's logits, features and BatchNorm running statistics."""
    model, _, (x, *_rest) = _resnet_setup(CifarResNet(8, 10))
    ref = copy.deepcopy(model)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    logits, feats, _ = TangentGraph.of(model).forward(params, buffers, x)
    ref_logits, ref_feats = ref(x, with_features=True)
    assert torch.equal(logits, ref_logits) and torch.equal(feats, ref_feats)
    for (n, b), (_, rb) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(b, rb), n
