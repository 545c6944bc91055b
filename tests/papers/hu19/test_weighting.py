"""hu19 weighting steps: the Eq.-12 variant's phi update against finite differences."""
import pytest
import torch

from common.meta.data_weights import normalize
from common.train.batches import ArrayData, Batch
from papers.hu19.weighting import WeightingConfig, WeightingMethod
from tests.common.meta.test_lookahead import lookahead_dev_loss, trained


@pytest.mark.parametrize("norm,temp", [("linear", 1.0), ("softmax", 2.0)])
def test_eq12_phi_update_uses_the_gradient_through_the_normalised_lookahead(norm, temp):
    """phi <- phi / decay - dL_dev(theta + sum_i w_hat_i(phi) Delta_i)/dphi, the derivative taken by
    central differences over real optimizer steps (SGD with momentum, float64)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    dev_x, dev_y = torch.randn(5, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,))
    model, opt = trained(torch.optim.SGD, x, y, lr=0.1, momentum=0.9, weight_decay=0.01)
    cfg = WeightingConfig(norm, temp, 1.0, 2.0)
    step = WeightingMethod("ours_weight_eq12", model, opt, ArrayData(x, y), ArrayData(dev_x, dev_y), 3, cfg)
    step.phi.values = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.8, 1.2])      # float32, as in training
    phi = step.phi.values.double()
    w_hat = step.batch_weights(Batch(x, y, torch.arange(6)))

    def dev_loss(p):
        return lookahead_dev_loss(model, opt, x, y, dev_x, dev_y, normalize(p, norm, temp))

    h = 1e-6
    fd = torch.stack([(dev_loss(phi + h * e) - dev_loss(phi - h * e)) / (2 * h) for e in torch.eye(6).double()])
    assert fd.abs().max() > 1e-6
    expected = (phi / 2.0 - fd).clamp(min=1e-5)
    torch.testing.assert_close(step.phi.values.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w_hat.double(), normalize(expected, norm, temp), rtol=1e-4, atol=1e-6)
