"""Weight rules and normalisations (hu19 Eq. 11-12, Ren et al. 2018)."""
import pytest
import torch

from common.meta.data_weights import (
    WEIGHT_FLOOR,
    PersistentWeights,
    l2rw_weights,
    linear_normalize,
    normalize,
    normalize_vjp,
    proportion_weights,
    softmax_normalize,
)


def test_linear_normalize_clamps_and_sums_to_one():
    w = linear_normalize(torch.tensor([2.0, -1.0, 1.0, 1.0]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.0, 0.25, 0.25]))


def test_linear_normalize_all_nonpositive_stays_zero():
    torch.testing.assert_close(linear_normalize(torch.tensor([-1.0, 0.0])), torch.zeros(2))


def test_softmax_temperature():
    w = torch.tensor([0.0, 10.0])
    torch.testing.assert_close(softmax_normalize(w, 10.0), torch.softmax(torch.tensor([0.0, 1.0]), 0))
    assert softmax_normalize(w, 1.0)[1] > softmax_normalize(w, 10.0)[1]
    with pytest.raises(ValueError, match="unknown kind 'max'"):
        normalize(w, "max")


def test_l2rw_weights_are_negative_gradient_normalised():
    torch.testing.assert_close(l2rw_weights(torch.tensor([-3.0, 1.0, -1.0])), torch.tensor([0.75, 0.0, 0.25]))


def test_proportion_weights_inverse_class_frequency():
    counts = torch.tensor([20, 1000])
    w = proportion_weights(torch.tensor([0, 1, 1]), counts)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(50.0)


def test_persistent_weights_rule_and_floor():
    phi = PersistentWeights(4, init=1.0, decay=2.0)
    ids = torch.tensor([1, 3])
    new = phi.update(ids, torch.tensor([0.2, 5.0]))
    # w <- w / decay - grad, clamped at 1e-5
    torch.testing.assert_close(new, torch.tensor([0.3, WEIGHT_FLOOR]))
    torch.testing.assert_close(phi.values, torch.tensor([1.0, 0.3, 1.0, WEIGHT_FLOOR]))
    again = phi.update(torch.tensor([1]), torch.tensor([-0.1]))
    torch.testing.assert_close(again, torch.tensor([0.25]))  # persists across steps
    state = phi.state_dict()
    other = PersistentWeights(4, 0.0, 1.0)
    other.load_state_dict(state)
    torch.testing.assert_close(other.values, phi.values)
    with pytest.raises(ValueError, match="w_decay"):
        PersistentWeights(2, 1.0, 0.0)


@pytest.mark.parametrize("kind,temp", [("linear", 1.0), ("softmax", 1.0), ("softmax", 10.0)])
def test_normalize_vjp_is_the_chain_rule_through_the_normalisation(kind, temp):
    torch.manual_seed(0)
    phi = (torch.rand(5, dtype=torch.float64) + 0.1).requires_grad_(True)
    grad_w = torch.randn(5, dtype=torch.float64)
    (normalize(phi, kind, temp) * grad_w).sum().backward()
    torch.testing.assert_close(normalize_vjp(phi.detach(), grad_w, kind, temp), phi.grad)
