"""papers.metaaugment.policy: Eq. 5's sampler by hand, the policy network's weights and gradients."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from common.augment.image_ops import NUM_OPS, transformation_embedding
from papers.metaaugment.policy import PolicyNetwork, TransformationSampler, normalise_weights, weighted_loss


def test_eq5_on_a_hand_computed_example():
    f64 = {"dtype": torch.float64}
    s = TransformationSampler(eps=0.2, r=2, s=1, num_ops=2)
    assert torch.allclose(s.probabilities, torch.full((2, 2), 0.25, dtype=torch.float64))
    # iteration 1: v = [[(0.2 + 0.4) / 2, 0.6], [0.9, unseen -> 1.0]], sum 2.8
    assert s.record(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 0]), torch.tensor([0.2, 0.4, 0.6, 0.9], **f64))
    # p = 0.8 * v / 2.8 + 0.2 / 4
    want = torch.tensor([[0.1357142857142857, 0.2214285714285714],
                         [0.3071428571428571, 0.3357142857142857]], dtype=torch.float64)
    assert torch.allclose(s.probabilities, want, atol=1e-12)
    v, c = s.mean_outputs()
    assert c.tolist() == [[2, 1], [1, 0]] and torch.allclose(v, torch.tensor([[0.3, 0.6], [0.9, 1.0]],
                                                                             dtype=torch.float64))
    s.record(torch.tensor([1]), torch.tensor([1]), torch.tensor([0.5], **f64))     # v11 = 0.5, sum 2.3
    assert abs(s.probabilities[1, 1].item() - (0.8 * 0.5 / 2.3 + 0.05)) < 1e-12
    # iteration 3: r = 2 drops iteration 1 -> v = [[0.1, 1], [1, 0.5]], sum 2.6
    s.record(torch.tensor([0]), torch.tensor([0]), torch.tensor([0.1], **f64))
    want = 0.8 * torch.tensor([[0.1, 1.0], [1.0, 0.5]], dtype=torch.float64) / 2.6 + 0.05
    assert torch.allclose(s.probabilities, want, atol=1e-12)


def test_probabilities_sum_to_one_and_update_every_s_iterations():
    g = torch.Generator().manual_seed(0)
    s = TransformationSampler(eps=0.1, r=5, s=3)
    uniform = s.probabilities
    flags = []
    for _ in range(7):
        j, k, m1, m2 = s.sample(64, g)
        assert m1.abs().max() <= 10 and m2.abs().max() <= 10 and bool((m1 < 0).any())
        flags.append(s.record(j, k, torch.rand(64, generator=g)))
        p = s.probabilities
        assert abs(p.sum().item() - 1) < 1e-12 and bool((p >= 0.1 / NUM_OPS ** 2 - 1e-15).all())
        if len(flags) < 3:
            assert torch.equal(p, uniform)
    assert flags == [False, False, True, False, False, True, False]


def test_eps_one_is_uniform_and_bad_eps_is_rejected():
    s = TransformationSampler(eps=1.0, r=3, s=1)
    s.record(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3]), torch.tensor([0.9, 0.01, 0.5]))
    assert torch.allclose(s.probabilities, torch.full((NUM_OPS, NUM_OPS), 1 / NUM_OPS ** 2, dtype=torch.float64))
    for bad in (-0.1, 1.5, float("nan"), "0.1", None):
        with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1\]"):
            TransformationSampler(eps=bad, r=3, s=1)
    with pytest.raises(ValueError, match="r must be an integer >= 1"):
        TransformationSampler(eps=0.1, r=0, s=1)
    with pytest.raises(ValueError, match="op indices must lie in"):
        TransformationSampler(eps=0.1, r=1, s=1, num_ops=2).record(torch.tensor([2]), torch.tensor([0]),
                                                                   torch.tensor([0.5]))


def test_sampling_follows_p_is_deterministic_and_state_round_trips():
    s = TransformationSampler(eps=0.0, r=1, s=1, num_ops=2, signed=False)
    s.record(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    j, k, m1, _ = s.sample(20000, torch.Generator().manual_seed(0))
    freq = torch.bincount(j * 2 + k, minlength=4).double() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.015)
    assert bool((m1 >= 0).all())
    a = s.sample(8, torch.Generator().manual_seed(4))
    b = s.sample(8, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    twin = TransformationSampler(eps=0.0, r=1, s=1, num_ops=2, signed=False)
    twin.load_state_dict(s.state_dict())
    for sampler in (s, twin):
        sampler.record(torch.tensor([1]), torch.tensor([0]), torch.tensor([0.7]))
    assert torch.equal(s.probabilities, twin.probabilities) and twin.iteration == 2
    with pytest.raises(ValueError, match="settings"):
        TransformationSampler(eps=0.5, r=1, s=1, num_ops=2).load_state_dict(s.state_dict())


def batch(n=6, feature_dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    j, k = torch.randint(0, NUM_OPS, (n,), generator=g), torch.randint(0, NUM_OPS, (n,), generator=g)
    m1, m2 = torch.rand(n, generator=g) * 10, torch.rand(n, generator=g) * 10
    return torch.randn(n, feature_dim, generator=g), transformation_embedding(j, k, m1, m2)


def test_policy_weights_are_positive_and_sum_to_one_per_batch():
    torch.manual_seed(0)
    net = PolicyNetwork(feature_dim=5)
    feats, emb = batch()
    p = net(feats, emb)
    assert p.shape == (6,) and bool(((p > 0) & (p < 1)).all())
    w = net.weights(feats, emb)
    assert bool((w > 0).all()) and abs(w.sum().item() - 1) < 1e-6
    assert torch.allclose(w, p / p.sum())
    with pytest.raises(ValueError, match="embedding: expected"):
        net(feats)


def test_embedding_branch_is_ignored_when_disabled():
    torch.manual_seed(0)
    net = PolicyNetwork(feature_dim=5, use_embedding=False)
    assert net.embedding_branch is None and net.head.in_features == 100
    assert not any("embedding" in name for name, _ in net.named_parameters())
    feats, emb = batch()
    _, other = batch(seed=1)
    assert torch.equal(net(feats, emb), net(feats, other)) and torch.equal(net(feats, emb), net(feats))
    with_te = PolicyNetwork(feature_dim=5)
    assert with_te.head.in_features == 200 and not torch.equal(with_te(feats, emb), with_te(feats, other))


def test_policy_is_differentiable_through_the_normalised_weighted_loss():
    torch.manual_seed(0)
    task = nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x, y = torch.randn(6, 7, dtype=torch.float64), torch.randint(0, 3, (6,))
    feats = task[:2](x).detach()                       # shared extractor; no d P / d w (Eq. 2)
    losses = nn.functional.cross_entropy(task(x), y, reduction="none").detach()
    _, emb = batch()
    net = PolicyNetwork(feature_dim=5, hidden=8).double()   # few parameters: gradcheck stays fast
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in net.parameters())

    def loss_of(*theta):
        outputs = functional_call(net, dict(zip(names, theta)), (feats, emb.double()))
        return weighted_loss(losses, normalise_weights(outputs))
    assert torch.autograd.gradcheck(loss_of, params, eps=1e-6, atol=1e-7)
    grads = torch.autograd.grad(loss_of(*params), params)
    assert all(bool(g.abs().sum() > 0) for g in grads)
