"""hu19 text augmentation (Sec. 4.2, Eq. 9-10 with the meta update of Eq. 8) and its baselines.

Every step trains the classifier on the batch's originals plus one augmented copy of each
example (mean cross-entropy over both, as the official code), and differs in the augmenter:

* `synonym`    WordNet synonym replacement (EDA-style; `common.augment.synonym`), one random
               variant per example from variants drawn once per run.
* `fixed_aug`  label-conditional BERT (CBERT, `common.augment.cbert`) MLM-fitted on the task's train set,
               then frozen; its gumbel-softmax soft samples are consumed as probability-weighted
               input embeddings.
* `ours_aug`   the same CBERT fine-tuned jointly with the classifier (Eq. 9-10): per batch,
               soft samples x(phi) -> one *differentiable* Adam step of the classifier on them,
               theta'(phi) = theta + Delta_Adam(grad_theta L_aug(theta, x(phi)))         (Eq. 10)
               -> dev loss L_dev(theta'(phi)) -> d/dphi by second-order backprop          (Eq. 8)
               -> one Adam step of the augmenter; then the classifier's real step.

Deviation from the official code (documented in the report): the official meta step loops over the
batch and takes one lookahead per example (B second-order graphs); here one lookahead on the
batch's augmented mini-batch, which is Eq. 10 in its minibatch form and B times cheaper.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from common.augment.cbert import (
    LabelConditionalMLM,
    augmentation_positions,
    soft_samples,
)
from common.meta.differentiable_step import adam_hyper, lookahead_step
from common.meta.lookahead import (
    PassModes,
    adam_deltas,
    adam_optimizer_state,
    in_mode,
    sparse_embedding_table,
)
from common.text.soft_tokens import SoftTokens
from common.train.batches import Batch, logits_by_length


class _SoftForward(nn.Module):
    """`classifier.forward_soft_tokens` as a module's forward, so torch.func.functional_call can
    evaluate it at substituted parameters."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, soft: SoftTokens) -> Tensor:
        return self.classifier.forward_soft_tokens(soft)


def lookahead_dev_loss(classifier: nn.Module, optimizer: torch.optim.Optimizer, soft: SoftTokens,
                       soft_labels: Tensor, dev_x: Tensor, dev_y: Tensor, *, sparse_embedding: bool = True,
                       modes: PassModes | None = None) -> Tensor:
    """L_dev(theta'(phi)) with theta' one differentiable Adam step on the soft batch (Eq. 10, 8);
    the soft-batch pass and the dev pass each in their mode of `modes` (official: both train;
    None: the classifier's current mode, the reading of the results made before `meta_step`).

    The returned scalar depends on the augmenter's parameters through `soft.probs`; its backward
    is second order (through the classifier's gradient, Adam's moments and its square root).
    Adam is elementwise and the dev forward reads the word-embedding table (the classifier's
    `token_embedding_param`) only at the dev tokens' rows R, so only those rows of the table are
    stepped: exact, and it skips the [V, H] elementwise graph (`sparse_embedding=False`: all rows)."""
    names = [n for n, p in classifier.named_parameters() if p.requires_grad]
    leaves = {n: p.detach().requires_grad_(True) for n, p in classifier.named_parameters() if p.requires_grad}
    buffers = {f"classifier.{n}": b for n, b in classifier.named_buffers()}
    with in_mode(classifier, modes.per_example) if modes else contextlib.nullcontext():
        logits = functional_call(_SoftForward(classifier), ({f"classifier.{n}": v for n, v in leaves.items()},
                                                            buffers), (soft,))
    grads = dict(zip(names, torch.autograd.grad(F.cross_entropy(logits, soft_labels), [leaves[n] for n in names],
                                                create_graph=True)))
    exp_avg, exp_avg_sq, step = adam_optimizer_state(optimizer, classifier)
    hp = adam_hyper(optimizer, classifier)
    table = sparse_embedding_table(classifier, leaves, dev_x) if sparse_embedding else None
    stepped = [n for n in names if n != table]
    ahead = lookahead_step(classifier, optimizer, leaves, {n: grads[n] for n in stepped})
    inputs: dict[str, Tensor] = {}
    if table is not None:
        rows, inverse = torch.unique(dev_x, return_inverse=True)
        rows_delta = adam_deltas({table: leaves[table][rows]}, {table: grads[table][rows]},
                                 {table: exp_avg[table][rows]}, {table: exp_avg_sq[table][rows]}, step, hp)[table]
        inputs["inputs_embeds"] = (leaves[table][rows] + rows_delta)[inverse]      # E'[dev tokens]
        ahead[table] = leaves[table]     # not read: the dev embeddings come from inputs_embeds
    with in_mode(classifier, modes.dev) if modes else contextlib.nullcontext():
        dev_logits = functional_call(classifier, (ahead, dict(classifier.named_buffers())), (dev_x,), inputs)
    return F.cross_entropy(dev_logits, dev_y)


class AugmentationStep:
    """Callable training step of `synonym`, `fixed_aug` or `ours_aug` (see the module docstring)."""

    def __init__(self, method: str, classifier: nn.Module, optimizer: torch.optim.Optimizer, *,
                 generator: torch.Generator, augmenter: LabelConditionalMLM | None = None,
                 augmenter_optimizer: torch.optim.Optimizer | None = None, synonym_variants: Tensor | None = None,
                 dev: tuple[Tensor, Tensor] | None = None, n_aug_meta: int = 4, tau: float = 1.0,
                 trim=lambda x: x, modes: PassModes | None = None):
        if method not in ("synonym", "fixed_aug", "ours_aug"):
            raise ValueError(f"unknown augmentation method {method!r}")
        if method == "synonym" and synonym_variants is None:
            raise ValueError("synonym needs synonym_variants [n_variants, N, L]")
        if method != "synonym" and augmenter is None:
            raise ValueError(f"{method} needs an augmenter")
        if method == "ours_aug" and (augmenter_optimizer is None or dev is None):
            raise ValueError("ours_aug needs augmenter_optimizer and dev data")
        self.method, self.classifier, self.optimizer = method, classifier, optimizer
        self.generator, self.augmenter, self.augmenter_optimizer = generator, augmenter, augmenter_optimizer
        self.synonym_variants, self.dev, self.n_aug_meta, self.tau, self.trim = (synonym_variants, dev, n_aug_meta,
                                                                                 tau, trim)
        self.modes = modes
        self.last_meta_dev_loss: float | None = None

    def meta_step(self, x: Tensor, y: Tensor) -> float:
        """One augmenter update: d L_dev(theta'(phi)) / d phi (Eq. 8 through Eq. 10), Adam step."""
        self.augmenter.train()
        self.augmenter_optimizer.zero_grad(set_to_none=True)
        positions = augmentation_positions(x, self.generator)
        soft = soft_samples(self.augmenter, x, y, positions, self.n_aug_meta, self.generator, self.tau)
        dev_x, dev_y = self.dev
        loss = lookahead_dev_loss(self.classifier, self.optimizer, soft, y.repeat(self.n_aug_meta), dev_x, dev_y,
                                  modes=self.modes)
        # only the augmenter's gradients: the classifier leaves of the lookahead would otherwise get
        # (unused) second-order gradients too, ~25% of the meta step
        loss.backward(inputs=[p for p in self.augmenter.parameters() if p.requires_grad])
        self.augmenter_optimizer.step()
        self.augmenter_optimizer.zero_grad(set_to_none=True)
        self.classifier.zero_grad(set_to_none=True)
        self.last_meta_dev_loss = float(loss.detach())
        return self.last_meta_dev_loss

    def augmented_logits(self, x: Tensor, y: Tensor, ids: Tensor) -> Tensor:
        """Classifier logits of the originals followed by one augmented copy of each example."""
        if self.method == "synonym":
            pick = torch.randint(len(self.synonym_variants), (len(ids),), generator=self.generator)
            aug = self.trim(self.synonym_variants[pick, ids.cpu()].to(x.device))
            width = max(x.shape[1], aug.shape[1])
            both = torch.cat([F.pad(x, (0, width - x.shape[1])), F.pad(aug, (0, width - aug.shape[1]))])
            return logits_by_length(self.classifier, both)
        self.augmenter.eval()
        with torch.no_grad():
            positions = augmentation_positions(x, self.generator)
            soft = soft_samples(self.augmenter, x, y, positions, 1, self.generator, self.tau)
        return torch.cat([logits_by_length(self.classifier, x), self.classifier.forward_soft_tokens(soft)])

    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.augmenter is not None:
            state["augmenter"] = self.augmenter.state_dict()
        if self.augmenter_optimizer is not None:
            state["augmenter_optimizer"] = self.augmenter_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if "augmenter" in state:
            self.augmenter.load_state_dict(state["augmenter"])
        if "augmenter_optimizer" in state:
            self.augmenter_optimizer.load_state_dict(state["augmenter_optimizer"])

    def __call__(self, batch: Batch) -> float:
        x, y = self.trim(batch.x), batch.y
        if self.method == "ours_aug":
            self.meta_step(x, y)
        self.classifier.train()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.augmented_logits(x, y, batch.ids)
        loss = F.cross_entropy(logits, torch.cat([y, y]))
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
