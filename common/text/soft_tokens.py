"""Soft one-hot token inputs (gumbel-softmax samples of an MLM), consumed by text classifiers as
probability-weighted input embeddings.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from common.train.batches import PAD_ID


@dataclass
class SoftTokens:
    """Soft one-hot token inputs, stored sparsely: rows of `input_ids` are one-hot everywhere except
    at the M True entries of `positions` (row-major order), whose distributions are `probs` [M, V].
    (The dense [B, L, V] tensor is 60+ MB per batch at V = 30522.)"""
    input_ids: Tensor   # [B, L] int64, original tokens (also at the soft positions), 0-padded
    positions: Tensor   # [B, L] bool
    probs: Tensor       # [M, V] float, M = positions.sum()

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def dense(self) -> Tensor:
        """The dense [B, L, V] distributions (tests, small inputs only)."""
        out = F.one_hot(self.input_ids, self.probs.shape[-1]).to(self.probs.dtype)
        return out.index_put((self.positions,), self.probs)

    def repeat(self, n: int) -> SoftTokens:
        """The rows n times over (copy a of row b at row a*B + b)."""
        return SoftTokens(self.input_ids.repeat(n, 1), self.positions.repeat(n, 1), self.probs.repeat(n, 1))

    def detach(self) -> SoftTokens:
        return SoftTokens(self.input_ids, self.positions, self.probs.detach())

    def to(self, device) -> SoftTokens:
        return SoftTokens(self.input_ids.to(device), self.positions.to(device), self.probs.to(device))

    @staticmethod
    def concat(parts: Sequence[SoftTokens]) -> SoftTokens:
        """Rows of all parts in order, right-padded to the longest."""
        width = max(p.input_ids.shape[1] for p in parts)
        return SoftTokens(torch.cat([F.pad(p.input_ids, (0, width - p.input_ids.shape[1]), value=PAD_ID)
                                     for p in parts]),
                          torch.cat([F.pad(p.positions, (0, width - p.positions.shape[1])) for p in parts]),
                          torch.cat([p.probs for p in parts]))
