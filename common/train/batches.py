"""Data sets as tensors (`ArrayData`), minibatches with example ids (`Batch`), and token-id batches
[B, L] (int64, right-padded with [PAD] = 0): trimming and length groups.

A transformer's cost grows with the padded width, and a random batch is padded to its longest row.
On the SST-2 phrase pool of hu19 Table 3 an epoch holds 13.9k real tokens but 41.3k after padding
each batch of 25 to its longest phrase. Running a batch as a few groups of similar length, each
trimmed to its own longest row, gives the same per-example losses and gradients (padded positions
are masked out of attention exactly) for a fraction of the cost; the batch itself is unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    x: Tensor
    y: Tensor
    ids: Tensor           # positions in the training set (for persistent per-example state)


@dataclass
class ArrayData:
    """In-memory tensors of one split."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> ArrayData:
        return ArrayData(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), batch_size):
            ids = order[start:start + batch_size]
            on_device = ids.to(self.x.device)
            yield Batch(self.x[on_device], self.y[on_device], ids)


PAD_ID = 0


GROUP_OVERHEAD_TOKENS = 32     # a group's fixed cost in padded-token equivalents (call overheads)


def is_token_batch(x: Tensor) -> bool:
    return x.dim() == 2 and x.dtype == torch.int64


def real_width(ids: Tensor) -> int:
    """Columns up to the longest row's last real token (>= 1): the width without right padding."""
    return max(int((ids != PAD_ID).sum(1).max()), 1) if len(ids) else 1


def trim_padding(ids: Tensor) -> Tensor:
    """Drop the all-[PAD] columns at the right of a batch of token ids."""
    return ids[:, :real_width(ids)]


def length_groups(ids: Tensor, max_groups: int = 4) -> list[Tensor]:
    """Row indices split into at most `max_groups` groups of similar length: the partition of the
    length-sorted rows into contiguous groups that minimises sum_g (|g| * longest_g +
    GROUP_OVERHEAD_TOKENS), found exactly by dynamic programming (B is a batch, so B^2 is small)."""
    lengths = (ids != PAD_ID).sum(1).clamp(min=1)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].tolist()
    n = len(sorted_lengths)
    inf = float("inf")
    # best[k][j]: cost of the first j sorted rows in k groups; cut[k][j]: where the last group starts
    best = [[0.0] + [inf] * n] + [[inf] * (n + 1) for _ in range(max_groups)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[k - 1][i] + (j - i) * sorted_lengths[j - 1] + GROUP_OVERHEAD_TOKENS
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, max_groups + 1), key=lambda g: best[g][n]) if n else 0
    groups, j = [], n
    while k > 0 and j > 0:
        i = cut[k][j]
        groups.append(order[i:j])
        j, k = i, k - 1
    return groups[::-1]


def logits_by_length(forward: Callable[[Tensor], Tensor], ids: Tensor, max_groups: int = 4) -> Tensor:
    """forward(ids) computed per length group (each trimmed to its longest row), rows in the
    original order; `forward` maps token ids [b, l] to per-row outputs [b, ...]."""
    groups = length_groups(ids, max_groups)
    if len(groups) == 1:
        return forward(trim_padding(ids))
    parts = [forward(trim_padding(ids[g])) for g in groups]
    out = parts[0].new_empty((len(ids),) + parts[0].shape[1:])
    for g, part in zip(groups, parts):
        out = out.index_put((g,), part)       # out of place: differentiable
    return out
