"""Bio-SSL contrastive hinge loss on unnormalised L1 distances.

With head outputs z¹, z² (N, D): d_ij = ‖z¹_i − z²_j‖₁ and
L = Σ_ij relu(δ − y_ij (τ − d_ij)), y_ii = +1, y_ij = −1 (i ≠ j);
defaults τ = 2, δ = 1 give positives relu(d_ii − 1) and negatives relu(3 − d_ij).
The error needs no normalisation, inner products or division: per unit it is a sum of
gated signs (see :func:`hinge_error`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from biossl.bounds import PositiveFloat, PositiveInt
from biossl.objectives.base import Objective, ProjectionHead
from biossl.views.batch import ViewBatch

Reduction = Literal["sum", "mean"]


def _check(z1: Tensor, z2: Tensor) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("the contrastive hinge loss needs a batch of at least 2")


def _offsets(n: int, negatives: int | None) -> list[int] | None:
    """Offsets k of the negative pairs (i, i+k mod N); None means all pairs."""
    if negatives is None or negatives >= n:
        return None
    return list(range(1, negatives))


def hinge_loss(z1: Tensor, z2: Tensor, tau: float = 2.0, delta: float = 1.0,
               negatives: int | None = None, reduction: Reduction = "sum") -> Tensor:
    """Contrastive hinge loss.

    Args:
        z1, z2: (N, D) head outputs of the two views (row i of each from image i).
        tau, delta: threshold and margin.
        negatives: ``None`` — every pair i ≠ j is a negative. ``n`` — only the pairs
            (i, i+k mod N) for k = 1…n−1, each weighted 1/n (Bio-SSL "n negatives").
            A value ≥ N falls back to all pairs.
        reduction: 'sum' — Σ over all terms (the paper's form); 'mean' — mean over the
            positive terms plus mean over the negative terms.
    Returns: scalar loss.
    """
    _check(z1, z2)
    n = z1.shape[0]
    pos = torch.relu(delta - tau + (z1 - z2).abs().sum(1))            # (N,)
    offsets = _offsets(n, negatives)
    if offsets is None:
        d = torch.cdist(z1, z2, p=1)                                    # (N, N)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=z1.device)
        neg = torch.relu(delta + tau - d)[off_diag]                     # (N(N−1),)
        w = 1.0
    else:
        # Only the needed pairs: N·(n−1) distances, never the N×N matrix.
        neg = torch.stack([torch.relu(delta + tau - (z1 - z2.roll(-k, 0)).abs().sum(1))
                           for k in offsets])                           # (n−1, N)
        w = 1.0 / negatives
    if reduction == "sum":
        return pos.sum() + w * neg.sum()
    if reduction == "mean":
        return pos.mean() + neg.mean()
    raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")


def hinge_error(z1: Tensor, z2: Tensor, tau: float = 2.0, delta: float = 1.0,
                negatives: int | None = None) -> Tensor:
    """Explicit per-unit error ∂L/∂z² (reduction 'sum'), without autograd.

    e_ju = Σ_i g_ij sign(z²_ju − z¹_iu), with gate g_ij = +1 for an active positive
    hinge, −w for an active negative hinge (w = 1 or 1/n), 0 when the hinge is off.
    Only signs, comparisons and sums: plausibility condition (ii).
    """
    _check(z1, z2)
    n = z1.shape[0]
    d = torch.cdist(z1, z2, p=1)
    eye = torch.eye(n, dtype=torch.bool, device=z1.device)
    gate = torch.zeros_like(d)
    gate[eye] = (d[eye] > tau - delta).to(d.dtype)
    offsets = _offsets(n, negatives)
    if offsets is None:
        neg_mask, w = ~eye, 1.0
    else:
        idx = torch.arange(n, device=z1.device)
        neg_mask = torch.zeros_like(eye)
        for k in offsets:
            neg_mask[idx, (idx + k) % n] = True
        w = 1.0 / negatives
    gate = torch.where(neg_mask, -w * (d < tau + delta).to(d.dtype), gate)
    sign = torch.sign(z2.unsqueeze(0) - z1.unsqueeze(1))                  # (i, j, u)
    return (gate.unsqueeze(-1) * sign).sum(0)


@dataclass
class HingeConfig:
    tau: PositiveFloat = 2.0
    """Distance threshold τ."""
    delta: float = 1.0
    """Margin δ: positives relu(d − (τ − δ)), negatives relu((τ + δ) − d)."""
    grad_block: bool = False
    """Detach the first view's head output: it acts as stored post-synaptic activity."""
    negatives: int | None = None
    """None: all pairs; n: pairs (i, i+k), k = 1…n−1, weighted 1/n."""
    reduction: Reduction = "sum"
    """'sum' (paper) or 'mean' (positives and negatives each averaged)."""
    dim: PositiveInt = 64
    """Head output dimension."""
    head_pool: PositiveInt | None = 1
    """Head's adaptive average pool output side (1: global; None: flatten everything)."""
    head_init: float = 1.0
    """Scale of the head's initial weights (× PyTorch's default). A small head (0.1) lets
    random feedback align: under ``urf`` the offset B − W stays at its (then small) initial
    value while the shared increments grow. The loss is homogeneous in z, so scale ``tau``
    and ``delta`` by the same factor to keep the hinge's working range."""

    def validate(self) -> None:
        if self.negatives is not None and self.negatives < 2:
            raise ValueError("negatives must be ≥ 2 (k = 1…n−1) or null for all pairs")
        if self.delta < 0:
            raise ValueError("delta must be ≥ 0")
        if self.head_init <= 0:
            raise ValueError(f"head_init must be > 0, got {self.head_init}")


class HingeObjective(Objective):
    """Projection head + contrastive hinge loss on a pair batch."""

    Config = HingeConfig
    plausible_error = True

    def __init__(self, cfg: HingeConfig, in_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.stop_grad_first = cfg.grad_block
        self.head = ProjectionHead(in_shape, cfg.dim, cfg.head_pool, init_scale=cfg.head_init)

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        z1, z2 = batch.split(self.head(h).float())
        if self.cfg.grad_block:
            z1 = z1.detach()
        return hinge_loss(z1, z2, self.cfg.tau, self.cfg.delta, self.cfg.negatives, self.cfg.reduction)
