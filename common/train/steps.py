"""The plain training step every paper's methods end in: one optimizer step on a weighted loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.train.batches import Batch, is_token_batch, logits_by_length


def weighted_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, weights: torch.Tensor) -> float:
    """One optimizer step on sum_i weights_i * CE_i in train mode; returns the unweighted mean loss.
    Token-id batches run in length groups (`common.token_batches`: same losses, less padding)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    logits = logits_by_length(model, batch.x) if is_token_batch(batch.x) else model(batch.x)
    losses = F.cross_entropy(logits, batch.y, reduction="none")
    (losses * weights.detach().to(losses.device)).sum().backward()
    optimizer.step()
    return float(losses.detach().mean())
