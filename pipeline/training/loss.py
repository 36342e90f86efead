"""Losses: softmax cross-entropy, and the gradient-boosting cross-entropy of Sun et al.

GCE is the cross-entropy over the true class and the ``k`` highest-scoring negative classes
only: the gradient goes to the confusable classes and none to the negatives already far below.
With ``k`` covering every negative it is plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "gce")
DEFAULT_TOP_K = 15  # the paper's best on CUB


def default_top_k(num_classes: int) -> int:
    """15, or every negative when there are fewer."""
    return min(DEFAULT_TOP_K, num_classes - 1)


def gradient_boosting_ce(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Mean GCE of (N, K) logits against (N,) targets, over the true class and top-k negatives."""
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    negatives = logits.detach().scatter(1, target[:, None], float("-inf"))
    top = negatives.topk(min(k, logits.shape[1] - 1), dim=1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top, True)
    keep.scatter_(1, target[:, None], True)
    return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), target)


def training_loss(name: str, logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """The loss named ``ce`` or ``gce`` (with top-k)."""
    if name == "ce":
        return F.cross_entropy(logits, target)
    if name == "gce":
        return gradient_boosting_ce(logits, target, k)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
