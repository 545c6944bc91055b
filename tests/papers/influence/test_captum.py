"""Cross-check of the last-layer influences (Sec. 3.4, `LastLayerInfluence`) against Captum's peer
implementation, `captum.influence.NaiveInfluenceFunction` restricted to the top layer (`layers=["fc"]`).

Captum's score of a training point z on a test point t is grad l(t)^T (H_sum + hessian_reg I)^-1 grad l(z) with
H_sum = sum_i grad^2 l(z_i) (its per-batch losses are summed) and no minus sign. Ours is
I_up,loss(z, t) = -grad l(t)^T (H + damping I)^-1 grad l(z) with H the mean Hessian (Eq. 13-14), so with
hessian_reg = N * damping and every eigenpair kept (projection_dim = P, a tolerance below N * damping):
captum score = -I_up,loss / N, the predicted change of the loss of t when z is removed (Eq. 10)."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from papers.influence.influence import DTYPE, LastLayerInfluence

captum_influence = pytest.importorskip(
    "captum.influence",
    reason="captum is not installed (pip install -e '.[test]' installs it; it needs no other torch)")

N, D, H, C, DAMPING = 60, 5, 8, 3, 0.01


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, H), nn.Tanh())
        self.fc = nn.Linear(H, C)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    x, y = torch.randn(N, D, dtype=DTYPE), torch.randint(0, C, (N,))
    vx, vy = torch.randn(6, D, dtype=DTYPE), torch.randint(0, C, (6,))
    model = Net().to(DTYPE)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("captum") / "model.pt"
    torch.save(model.state_dict(), path)
    return model, str(path), x, y, vx, vy


def _captum(model, checkpoint, train, hessian=None):
    return captum_influence.NaiveInfluenceFunction(
        model, train, checkpoint, layers=["fc"], loss_fn=nn.CrossEntropyLoss(reduction="none"), batch_size=N,
        hessian_dataset=hessian, projection_dim=C * (H + 1), hessian_reg=N * DAMPING, hessian_inverse_tol=1e-12)


def _ours(model, x):
    with torch.no_grad():
        feats = model.body(x)
    return LastLayerInfluence(model.fc.weight, model.fc.bias, feats, damping=DAMPING), feats


def test_last_layer_up_loss_equals_captum_per_test_point_and_for_the_validation_mean(trained):
    model, checkpoint, x, y, vx, vy = trained
    scores = _captum(model, checkpoint, TensorDataset(x, y)).influence((vx, vy))        # [n_val, N]
    inf, feats = _ours(model, x)
    with torch.no_grad():
        vfeats = model.body(vx)
    per_point = torch.stack([inf.up_loss(feats, y, inf.s_val(vfeats[j:j + 1], vy[j:j + 1])) for j in range(len(vx))])
    torch.testing.assert_close(scores * N, -per_point, rtol=1e-6, atol=1e-6 * float(per_point.abs().max()))
    # the paper's z^val: s_val of the mean validation loss (Sec. 3.4) = Captum's scores averaged over the test rows
    val = inf.up_loss(feats, y, inf.s_val(vfeats, vy))
    torch.testing.assert_close(scores.mean(0) * N, -val, rtol=1e-6, atol=1e-6 * float(val.abs().max()))


def test_last_layer_i_aug_equals_the_difference_of_captum_scores(trained):
    """I_aug(z, z~) = I_up,loss(z~) - I_up,loss(z) (Eq. 19) with the Hessian of the originals: Captum's scores of
    the augmented points (hessian_dataset = the originals) minus those of the originals."""
    model, checkpoint, x, y, vx, vy = trained
    x_aug = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    orig = _captum(model, checkpoint, TensorDataset(x, y)).influence((vx, vy)).mean(0)
    aug = _captum(model, checkpoint, TensorDataset(x_aug, y), TensorDataset(x, y)).influence((vx, vy)).mean(0)
    inf, feats = _ours(model, x)
    with torch.no_grad():
        s_val = inf.s_val(model.body(vx), vy)
        i_aug = inf.aug_loss(feats, model.body(x_aug), y, s_val)
    torch.testing.assert_close((aug - orig) * N, -i_aug, rtol=1e-6, atol=1e-6 * float(i_aug.abs().max()))
