"""NT-Xent (SimCLR) loss — the non-plausible baseline (normalisation, division, softmax)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from biossl.bounds import PositiveInt
from biossl.distributed.replicas import ONE_PROCESS, Replicas
from biossl.objectives.base import Objective, PoolMode, ProjectionHead, check_head_pool
from biossl.views.batch import ViewBatch

NTXentReduction = Literal["mean", "sum_directions"]


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5,
                reduction: NTXentReduction = "mean", replicas: Replicas = ONE_PROCESS) -> Tensor:
    """Normalised-temperature cross-entropy over 2N views.

    Args:
        z1, z2: (N, D) projections of the two views (row i of each from image i).
        temperature: cosine-similarity temperature (0.1–0.5).
        reduction: 'mean' — the mean over the 2N anchors (SimCLR); 'sum_directions' — the
            mean over the N first-view anchors plus the mean over the N second-view anchors,
            i.e. 2× 'mean' (Bio-SSL's ``SimCLRLoss``, their Table 1 SimCLR row).
        replicas: data-parallel replicas; z1, z2 are then this rank's rows of the global
            batch and the anchors are this rank's 2n views, each against all 2N views of
            the global batch (the mean over this rank's anchors is ``size`` × its share).
    Returns: −log softmax(sim/τ)[positive] reduced as above, the softmax over the 2N − 1
    other views (1 positive, 2N − 2 negatives), via log-sum-exp.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if reduction not in ("mean", "sum_directions"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'sum_directions'")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)                     # this rank's 2n anchors
    every = replicas.rows(z).view(-1, 2, n, z.shape[1])             # one gather: (ranks, view, n, D)
    z1_all, z2_all = every[:, 0].reshape(-1, z.shape[1]), every[:, 1].reshape(-1, z.shape[1])
    big = z1_all.shape[0]
    own = replicas.own(n)
    sim = z @ torch.cat([z1_all, z2_all]).t() / temperature        # (2n, 2N)
    rows = torch.arange(own.start, own.stop)
    itself = torch.cat([rows, rows + big]).to(z.device)            # each anchor's own column
    sim = sim.index_put((torch.arange(2 * n, device=z.device), itself),
                        torch.tensor(float("-inf"), dtype=sim.dtype, device=z.device))
    target = torch.cat([rows + big, rows]).to(z.device)            # the other view of its image
    loss = F.cross_entropy(sim, target)
    # the two directions' means, summed: 2 × the mean over all 2N anchors
    return 2.0 * loss if reduction == "sum_directions" else loss


@dataclass
class NTXentConfig:
    temperature: float = 0.5
    """Cosine-similarity temperature (Bio-SSL's SimCLR row: 0.1)."""
    reduction: NTXentReduction = "mean"
    """'mean' (default, SimCLR): mean over the 2N anchors; 'sum_directions': the two
    directions' means summed, 2× 'mean' (Bio-SSL's SimCLRLoss)."""
    dim: PositiveInt = 64
    """Projection dimension."""
    hidden: PositiveInt | None = None
    """Hidden width of a 2-layer MLP head (SimCLR); None: one linear layer."""
    head_pool: PositiveInt | None = 1
    """Head's average pool: the output side ('adaptive', 1: global) or the window
    ('window'); None: no pool, flatten the whole map."""
    head_pool_mode: PoolMode = "adaptive"
    """How ``head_pool`` is read (default 'adaptive'; 'window': AvgPool(head_pool))."""

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.reduction not in ("mean", "sum_directions"):
            raise ValueError(f"unknown reduction {self.reduction!r}; choose 'mean' or 'sum_directions'")
        check_head_pool(self.head_pool, self.head_pool_mode)


class NTXentObjective(Objective):
    """Projection head + NT-Xent on a pair batch."""

    Config = NTXentConfig
    plausible_error = False
    has_head = True

    def __init__(self, cfg: NTXentConfig, in_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.head = ProjectionHead(in_shape, cfg.dim, cfg.head_pool, cfg.hidden, pool_mode=cfg.head_pool_mode)

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        return self.coupled(self.rowwise(h), batch)

    def rowwise(self, h: Tensor) -> Tensor:
        return self.head(h)

    def coupled(self, z: Tensor, batch: ViewBatch) -> Tensor:
        z1, z2 = batch.split(z.float())
        return ntxent_loss(z1, z2, self.cfg.temperature, self.cfg.reduction, self.replicas)
