"""Bio-SSL contrastive hinge loss on unnormalised L1 distances.

With head outputs z¹, z² (N, D): d_ij = ‖z¹_i − z²_j‖₁ and
L = Σ_ij relu(δ − y_ij (τ − d_ij)), y_ii = +1, y_ij = −1 (i ≠ j);
defaults τ = 2, δ = 1 give positives relu(d_ii − 1) and negatives relu(3 − d_ij).
The error needs no normalisation, inner products or division: per unit it is a sum of
gated signs (see :func:`hinge_error`).

With ``negatives = J`` only some pairs are negatives: the pairs at offsets k = 1…J, each
weighted 1/(J+1) — Bio-SSL's ``HingeNNFewerNegs`` with its "n negatives" = J + 1 (its n
counts the positive diagonal too; biossl's ``negatives`` counts negatives in every
objective). The official form (``negatives_wrap=False``, the default) takes the pairs
(r, r+k) with r < N−k — the k-th upper diagonal of the distance matrix,
``torch.diagonal(·, k)``, which does not wrap around the batch; for J ≥ N−1 that is every
upper-diagonal pair, still weighted 1/(J+1). ``negatives_wrap=True`` takes (i, i+k mod N),
so every row gets J negatives, and falls back to all pairs at weight 1 when J ≥ N−1 (the
form biossl used before it was checked against the official code). Either way only the
N·(n−1) needed distances are computed, never the N×N matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from biossl.bounds import PositiveFloat, PositiveInt
from biossl.distributed.replicas import ONE_PROCESS, Replicas
from biossl.objectives.base import Objective, PoolMode, ProjectionHead, check_head_pool
from biossl.views.batch import ViewBatch

Reduction = Literal["sum", "mean"]


def _check(z1: Tensor, z2: Tensor, least: int = 2) -> None:
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < least:
        raise ValueError("the contrastive hinge loss needs a batch of at least 2")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'sum' or 'mean'")


def negative_offsets(n: int, negatives: int | None, wrap: bool) -> tuple[list[int] | None, float]:
    """(offsets k of the negative pairs, their weight) for a batch of N = ``n`` and J =
    ``negatives``; offsets None means all pairs i ≠ j.

    Not wrapping: k = 1…min(J, N−1), pairs (r, r+k) with r < N−k, weight 1/(J+1).
    Wrapping: k = 1…J, pairs (i, i+k mod N), weight 1/(J+1); J ≥ N−1: all pairs, weight 1.
    """
    if negatives is None:
        return None, 1.0
    if wrap:
        return (None, 1.0) if negatives >= n - 1 else (list(range(1, negatives + 1)), 1.0 / (negatives + 1))
    return list(range(1, min(negatives, n - 1) + 1)), 1.0 / (negatives + 1)


def _pair(z1: Tensor, z2: Tensor, first: int, k: int, wrap: bool) -> tuple[Tensor, Tensor]:
    """Rows of z¹ and z² forming the pairs at offset k: (z¹_i, z²_{i+k}); z¹ holds the rows
    ``first…`` of the batch z² (all of it in one process: first = 0)."""
    n = z2.shape[0]
    if wrap:
        return z1, z2.roll(-(first + k), 0)[: z1.shape[0]]
    count = max(0, min(z1.shape[0], n - k - first))
    return z1[:count], z2[first + k: first + k + count]


def hinge_loss(z1: Tensor, z2: Tensor, tau: float = 2.0, delta: float = 1.0,
               negatives: int | None = None, reduction: Reduction = "sum",
               negatives_wrap: bool = False, replicas: Replicas = ONE_PROCESS) -> Tensor:
    """Contrastive hinge loss.

    Args:
        z1, z2: (N, D) head outputs of the two views (row i of each from image i).
        tau, delta: threshold and margin.
        negatives: ``None`` — every pair i ≠ j is a negative (weight 1). ``J`` — the pairs at
            offsets k = 1…J, each weighted 1/(J+1) (Bio-SSL's "n negatives" is J = n − 1);
            which pairs: see ``negatives_wrap``.
        reduction: 'sum' — Σ over all (weighted) terms (the paper's form); 'mean' — mean
            over the positive terms plus mean over the negative terms (weights unused).
        negatives_wrap: False (official) — pairs (r, r+k), k = 1…J, r < N−k;
            True — pairs (i, i+k mod N), and all pairs at weight 1 when J ≥ N−1.
        replicas: data-parallel replicas; z1, z2 are then this rank's rows of the global
            batch (N = all ranks' rows, rank-major) and the result is ``replicas.loss_scale``
            × the terms whose z¹ row is this rank's (a pair (r, r+k) belongs to row r's rank).
    Returns: scalar loss.
    """
    _check(z1, z2, least=1)  # the global batch (all replicas' rows) needs 2: below
    _check_reduction(reduction)
    z2_all = replicas.rows(z2)
    n = z2_all.shape[0]
    if n < 2:
        raise ValueError("the contrastive hinge loss needs a batch of at least 2")
    own = replicas.own(z1.shape[0])
    pos = torch.relu(delta - tau + (z1 - z2).abs().sum(1))            # (n own,)
    offsets, w = negative_offsets(n, negatives, negatives_wrap)
    if offsets is None:
        d = torch.cdist(z1, z2_all, p=1)                                # (n own, N)
        off_diag = torch.ones_like(d, dtype=torch.bool)
        off_diag[:, own] &= ~torch.eye(z1.shape[0], dtype=torch.bool, device=z1.device)
        neg = torch.relu(delta + tau - d)[off_diag]                     # (n own·(N−1),)
        pairs = n * (n - 1)
    else:
        # Only the needed pairs: at most N·(n−1) distances, never the N×N matrix.
        neg = torch.cat([torch.relu(delta + tau - (a - b).abs().sum(1))
                         for a, b in (_pair(z1, z2_all, own.start, k, negatives_wrap) for k in offsets)])
        pairs = sum(n if negatives_wrap else n - k for k in offsets)
    scale = replicas.loss_scale
    if reduction == "sum":
        return scale * (pos.sum() + w * neg.sum())
    return scale * (pos.sum() / n + neg.sum() / pairs)


def hinge_error(z1: Tensor, z2: Tensor, tau: float = 2.0, delta: float = 1.0,
                negatives: int | None = None, reduction: Reduction = "sum",
                negatives_wrap: bool = False) -> Tensor:
    """Explicit per-unit error ∂L/∂z² of :func:`hinge_loss` (same options), without autograd.

    e_ju = Σ_i g_ij sign(z²_ju − z¹_iu), with gate g_ij = +1 for an active positive
    hinge, −w for an active negative hinge (w = 1 or 1/n), 0 when the hinge is off
    ('mean': the positive gates over N, the negative ones over the number of negative
    pairs — a constant learning-rate factor per term kind).
    Only signs, comparisons and sums: plausibility condition (ii).
    """
    _check(z1, z2)
    _check_reduction(reduction)
    n = z1.shape[0]
    offsets, w = negative_offsets(n, negatives, negatives_wrap)
    diff = z2 - z1
    w_pos = 1.0 / n if reduction == "mean" else 1.0
    err = w_pos * (diff.abs().sum(1, keepdim=True) > tau - delta).to(z2.dtype) * torch.sign(diff)
    if offsets is None:
        d = torch.cdist(z1, z2, p=1)
        eye = torch.eye(n, dtype=torch.bool, device=z1.device)
        w_neg = 1.0 / (n * (n - 1)) if reduction == "mean" else w
        gate = torch.where(eye, torch.zeros_like(d), -w_neg * (d < tau + delta).to(d.dtype))
        sign = torch.sign(z2.unsqueeze(0) - z1.unsqueeze(1))              # (i, j, u)
        return err + (gate.unsqueeze(-1) * sign).sum(0)
    pairs = sum(n if negatives_wrap else n - k for k in offsets)
    w_neg = 1.0 / pairs if reduction == "mean" else w
    for k in offsets:
        a, b = _pair(z1, z2, 0, k, negatives_wrap)
        gate = -w_neg * ((a - b).abs().sum(1, keepdim=True) < tau + delta).to(z2.dtype)
        e = gate * torch.sign(b - a)                                     # error of the z² rows b
        err = err + (e.roll(k, 0) if negatives_wrap else torch.cat([e.new_zeros(k, e.shape[1]), e]))
    return err


@dataclass
class HingeConfig:
    tau: PositiveFloat = 2.0
    """Distance threshold τ."""
    delta: float = 1.0
    """Margin δ: positives relu(d − (τ − δ)), negatives relu((τ + δ) − d)."""
    grad_block: bool = False
    """Detach the first view's head output: it acts as stored post-synaptic activity."""
    negatives: PositiveInt | None = None
    """None: every pair i ≠ j is a negative (weight 1); J: the negatives of each image, the
    pairs at offsets k = 1…J, each weighted 1/(J+1) (Bio-SSL's "n negatives" is J = n − 1;
    which pairs: ``negatives_wrap``)."""
    negatives_wrap: bool = False
    """False (default; the official HingeNNFewerNegs): pairs (r, r+k) with r < N−k, no
    wrap-around (``torch.diagonal(·, k)``); J ≥ N−1: every upper-diagonal pair, weight 1/(J+1).
    True: pairs (i, i+k mod N), every row gets J negatives; J ≥ N−1: all pairs, weight 1."""
    reduction: Reduction = "sum"
    """'sum' (paper) or 'mean' (positives and negatives each averaged)."""
    dim: PositiveInt = 64
    """Head output dimension."""
    head_pool: PositiveInt | None = 1
    """Head's average pool: the output side ('adaptive', 1: global) or the window
    ('window'); None: no pool, flatten the whole map (the official conv6 heads)."""
    head_pool_mode: PoolMode = "adaptive"
    """How ``head_pool`` is read (default 'adaptive'): 'adaptive' — adaptive average pool to
    head_pool × head_pool; 'window' — AvgPool(head_pool), window = stride (Bio-SSL's vgg6
    head: AvgPool2d(2))."""
    head_init: float = 1.0
    """Scale of the head's initial weights (× PyTorch's default). A small head (0.1) lets
    random feedback align: under ``urf`` the offset B − W stays at its (then small) initial
    value while the shared increments grow. The loss is homogeneous in z, so scale ``tau``
    and ``delta`` by the same factor to keep the hinge's working range."""

    def validate(self) -> None:
        if self.negatives is not None and self.negatives < 1:
            raise ValueError("negatives must be ≥ 1 (offsets k = 1…negatives) or null for all pairs")
        if self.delta < 0:
            raise ValueError("delta must be ≥ 0")
        if self.head_init <= 0:
            raise ValueError(f"head_init must be > 0, got {self.head_init}")
        check_head_pool(self.head_pool, self.head_pool_mode)


class HingeObjective(Objective):
    """Projection head + contrastive hinge loss on a pair batch."""

    Config = HingeConfig
    plausible_error = True
    has_head = True

    def __init__(self, cfg: HingeConfig, in_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.grad_block = cfg.grad_block
        self.head = ProjectionHead(in_shape, cfg.dim, cfg.head_pool, init_scale=cfg.head_init,
                                   pool_mode=cfg.head_pool_mode)

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        return self.coupled(self.rowwise(h), batch)

    def rowwise(self, h: Tensor) -> Tensor:
        return self.head(h)

    def coupled(self, z: Tensor, batch: ViewBatch) -> Tensor:
        z1, z2 = batch.split(z.float())
        if self.cfg.grad_block:
            z1 = z1.detach()
        return hinge_loss(z1, z2, self.cfg.tau, self.cfg.delta, self.cfg.negatives, self.cfg.reduction,
                          self.cfg.negatives_wrap, self.replicas)
