"""NT-Xent (SimCLR) loss — the non-plausible baseline (normalisation, division, softmax)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from biossl.bounds import PositiveInt
from biossl.objectives.base import Objective, ProjectionHead
from biossl.views.batch import ViewBatch


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """Normalised-temperature cross-entropy over 2N views.

    Args:
        z1, z2: (N, D) projections of the two views (row i of each from image i).
        temperature: cosine-similarity temperature (0.1–0.5).
    Returns: mean over the 2N anchors of −log softmax(sim/τ)[positive], the softmax over
    the 2N − 1 other views (1 positive, 2N − 2 negatives), via log-sum-exp.
    """
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature                                   # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


@dataclass
class NTXentConfig:
    temperature: float = 0.5
    """Cosine-similarity temperature."""
    dim: PositiveInt = 64
    """Projection dimension."""
    hidden: PositiveInt | None = None
    """Hidden width of a 2-layer MLP head (SimCLR); None: one linear layer."""
    head_pool: PositiveInt | None = 1
    """Head's adaptive average pool output side (1: global)."""

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


class NTXentObjective(Objective):
    """Projection head + NT-Xent on a pair batch."""

    Config = NTXentConfig
    plausible_error = False

    def __init__(self, cfg: NTXentConfig, in_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.head = ProjectionHead(in_shape, cfg.dim, cfg.head_pool, cfg.hidden)

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        z1, z2 = batch.split(self.head(h).float())
        return ntxent_loss(z1, z2, self.cfg.temperature)
