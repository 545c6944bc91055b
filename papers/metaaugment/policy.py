"""MetaAugment's augmentation policy network and transformation sampler (Zhou et al., AAAI 2021).

Policy network (Sec. "Experimental Results", implementation paragraph; P in Eq. 1-4):

    P(f, e; theta) = sigmoid(W_o [relu(W_e e + b_e) ; relu(W_f f + b_f)] + b_o)

with e = e(T_{j,k}^{m1,m2}) the 28-dim transformation embedding
(`common.augment.image_ops.transformation_embedding`), f the augmented image's feature and both
hidden layers of width 100. The sigmoid keeps outputs positive (Sec. "Proposed MetaAugment
Algorithm", after Eq. 5); the weights of a mini-batch are the outputs divided by their sum. The
ablation "o.TE" (Table 5) drops the embedding branch: the output layer then sees the feature branch
only. Features are an input, so the caller picks Table 5's "share FE" (the task network's
penultimate features, detached: the paper takes no derivative of P w.r.t. w in Eq. 2) or "own FE"
(a separate extractor whose parameters are part of theta: pass its features undetached).

Transformation sampler (Eq. 5, Algorithm 1): v_{j,k} is the mean policy output over the samples
transformed by op pair (j, k) in the last min(t + 1, r) iterations, and

    p_{j,k} = (1 - eps) * v_{j,k} / sum_{l,m} v_{l,m} + eps / K^2,                         (5)

recomputed after every s-th iteration, uniform (Algorithm 1, line 1) until then. The paper is
silent on two points:

* A pair with no output in the window has no mean; it counts as `unseen_value` (default 1.0,
  the sigmoid's upper bound: a pair the policy has not judged recently is explored before it is
  judged, instead of being starved by the window).
* v averages the raw sigmoid outputs P_i, not the batch-normalised weights: the normalisation
  divides a batch by one shared sum, which would make v depend on what else was in the batch.

Magnitudes are drawn uniformly from [0, 10] (Algorithm 1, line 4) with a random sign for the
direction (`common.augment.image_ops.sample_magnitudes`; `signed=False` for the paper's literal
unsigned draw). The bilevel updates (Eq. 2-4) live elsewhere; this module only defines P and p.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.augment.image_ops import EMBEDDING_DIM, NUM_OPS, sample_magnitudes

HIDDEN = 100


class PolicyNetwork(nn.Module):
    """P(f, e; theta) -> (0, 1) per sample. `use_embedding=False` is Table 5's o.TE ablation."""

    def __init__(self, feature_dim: int, use_embedding: bool = True, hidden: int = HIDDEN,
                 embedding_dim: int = EMBEDDING_DIM):
        super().__init__()
        if feature_dim < 1 or hidden < 1 or embedding_dim < 1:
            raise ValueError(f"feature_dim, hidden and embedding_dim must be >= 1, got "
                             f"{feature_dim}, {hidden}, {embedding_dim}")
        self.feature_dim, self.embedding_dim, self.use_embedding = feature_dim, embedding_dim, use_embedding
        self.feature_branch = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU())
        self.embedding_branch = (nn.Sequential(nn.Linear(embedding_dim, hidden), nn.ReLU())
                                 if use_embedding else None)
        self.head = nn.Linear(hidden * (2 if use_embedding else 1), 1)

    def forward(self, features: Tensor, embedding: Tensor | None = None) -> Tensor:
        """Sigmoid outputs P_i, shape [N]. `embedding` is ignored (may be None) without the branch."""
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features: expected [N, {self.feature_dim}], got {tuple(features.shape)}")
        h = self.feature_branch(features)
        if self.embedding_branch is not None:
            if embedding is None or embedding.shape != (features.shape[0], self.embedding_dim):
                got = None if embedding is None else tuple(embedding.shape)
                raise ValueError(f"embedding: expected [{features.shape[0]}, {self.embedding_dim}], got {got}")
            h = torch.cat([self.embedding_branch(embedding.to(h.dtype)), h], dim=1)
        return torch.sigmoid(self.head(h)).squeeze(1)

    def weights(self, features: Tensor, embedding: Tensor | None = None) -> Tensor:
        """The mini-batch's normalised weights P_i / sum_i' P_i' (positive, summing to 1)."""
        return normalise_weights(self(features, embedding))


def normalise_weights(outputs: Tensor) -> Tensor:
    """Each output divided by the sum of the mini-batch's outputs (implementation paragraph)."""
    if outputs.ndim != 1 or outputs.numel() == 0:
        raise ValueError(f"expected a non-empty [N] tensor of policy outputs, got {tuple(outputs.shape)}")
    return outputs / outputs.sum()


def weighted_loss(losses: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i L_i with normalised weights: Eq. 2 / Eq. 4's (1/n) sum_i P_i L_i with P_i replaced
    by the batch-normalised weight (which already sums to 1, so no extra 1/n)."""
    if losses.shape != weights.shape:
        raise ValueError(f"losses {tuple(losses.shape)} and weights {tuple(weights.shape)} differ in shape")
    return (weights * losses).sum()


class TransformationSampler:
    """Eq. 5's distribution over ordered op pairs (j, k) and its window of policy outputs."""

    def __init__(self, eps: float, r: int, s: int, num_ops: int = NUM_OPS, unseen_value: float = 1.0,
                 signed: bool = True):
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be a number in [0, 1] (Eq. 5), got {eps!r}")
        for name, value in (("r", r), ("s", s), ("num_ops", num_ops)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(unseen_value, (int, float)) or not (0.0 < unseen_value < math.inf):
            raise ValueError(f"unseen_value must be a positive finite number, got {unseen_value!r}")
        self.eps, self.r, self.s, self.num_ops = float(eps), r, s, num_ops
        self.unseen_value, self.signed = float(unseen_value), signed
        pairs = num_ops * num_ops
        self._sums = torch.zeros(r, pairs, dtype=torch.float64)     # ring buffer: one row per iteration
        self._counts = torch.zeros(r, pairs, dtype=torch.long)
        self.iteration = 0                                           # iterations recorded so far (t + 1)
        self._probs = torch.full((num_ops, num_ops), 1.0 / pairs, dtype=torch.float64)

    @property
    def probabilities(self) -> Tensor:
        """p_{j,k} as a [K, K] float64 tensor (row j: first op, column k: second op)."""
        return self._probs.clone()

    def mean_outputs(self) -> tuple[Tensor, Tensor]:
        """(v, c): v_{j,k} over the window (unseen pairs -> unseen_value) and the counts c_{j,k}."""
        counts = self._counts.sum(0)
        sums = self._sums.sum(0)
        v = torch.where(counts > 0, sums / counts.clamp_min(1), torch.tensor(self.unseen_value, dtype=torch.float64))
        k = self.num_ops
        return v.view(k, k), counts.view(k, k)

    def update(self) -> Tensor:
        """Recompute p from the window (Eq. 5); called by `record` after every s-th iteration."""
        v, _ = self.mean_outputs()
        total = v.sum()
        share = v / total if total > 0 else torch.full_like(v, 1.0 / v.numel())
        self._probs = (1.0 - self.eps) * share + self.eps / v.numel()
        return self.probabilities

    def record(self, j: Tensor, k: Tensor, outputs: Tensor) -> bool:
        """One iteration's op pairs and policy outputs (raw sigmoid P_i, any shape [n]). Returns
        True if this was an s-th iteration and p was recomputed (Algorithm 1, lines 10-11)."""
        outputs = torch.as_tensor(outputs).detach().to("cpu", torch.float64).flatten()
        n = outputs.numel()
        j, k = self._pair_ids(j, n, "j"), self._pair_ids(k, n, "k")
        if not bool(torch.isfinite(outputs).all()) or bool((outputs < 0).any()):
            raise ValueError("policy outputs must be finite and non-negative")
        slot = self.iteration % self.r                       # drops the iteration r steps back
        pair = j * self.num_ops + k
        self._sums[slot] = torch.zeros(self.num_ops ** 2, dtype=torch.float64).index_add_(0, pair, outputs)
        self._counts[slot] = torch.zeros(self.num_ops ** 2, dtype=torch.long).index_add_(
            0, pair, torch.ones_like(pair))
        self.iteration += 1
        if self.iteration % self.s == 0:
            self.update()
            return True
        return False

    def _pair_ids(self, ops: Tensor, n: int, what: str) -> Tensor:
        ops = torch.as_tensor(ops).cpu()
        if ops.dtype.is_floating_point or ops.dtype == torch.bool or ops.shape != (n,):
            raise ValueError(f"{what}: expected {n} integer op indices (one per output), got "
                             f"{ops.dtype} {tuple(ops.shape)}")
        if n and (int(ops.min()) < 0 or int(ops.max()) >= self.num_ops):
            raise ValueError(f"{what}: op indices must lie in [0, {self.num_ops - 1}]")
        return ops.long()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """n transformations (j, k, m1, m2): the pair from p (Algorithm 1, line 4), magnitudes
        uniform in [0, 10], with a random sign when `signed`."""
        flat = torch.multinomial(self._probs.flatten(), n, replacement=True, generator=generator)
        m1 = sample_magnitudes(n, generator, self.signed)
        m2 = sample_magnitudes(n, generator, self.signed)
        return flat // self.num_ops, flat % self.num_ops, m1, m2

    def state_dict(self) -> dict:
        return {"eps": self.eps, "r": self.r, "s": self.s, "num_ops": self.num_ops,
                "unseen_value": self.unseen_value, "signed": self.signed, "iteration": self.iteration,
                "sums": self._sums.clone(), "counts": self._counts.clone(), "probs": self._probs.clone()}

    def load_state_dict(self, state: dict) -> None:
        mine = {key: getattr(self, key) for key in ("eps", "r", "s", "num_ops", "unseen_value", "signed")}
        theirs = {key: state.get(key) for key in mine}
        if mine != theirs:
            raise ValueError(f"sampler state has settings {theirs}, this sampler {mine}")
        self.iteration = int(state["iteration"])
        self._sums, self._counts = state["sums"].clone(), state["counts"].clone()
        self._probs = state["probs"].clone()
