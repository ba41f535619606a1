"""InfoNCE over patch predictions (CPC / Greedy InfoMax), the non-plausible baseline.

Same geometry as ``clapp`` (row r predicts row r + k + 1, k = 1…K): the score of a
future z given a context c is the bilinear zᵀ W_k c; each context is scored against its
own future and against ``negatives`` futures drawn from all images and locations of the
step (never itself), and the loss is the cross-entropy of picking the true one, written
with log-sum-exp. The softmax's normalisation makes the error non-local:
``plausible_error = False``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.objectives.predictive import (Draws, PredictiveObjective, context_future, init_step_weights,
                                          patch_vectors, steps_for, vector_grid)
from biossl.views.batch import ViewBatch


def infonce_scores(pred: Tensor, z: Tensor, neg_idx: Tensor, candidates: Tensor | None = None) -> Tensor:
    """Logits (M, 1 + J): column 0 the positive zᵀ pred, then the negatives candidates[neg_idx].

    pred, z: (M, D) predictions W c and their own futures; neg_idx: (M, J) rows of
    ``candidates`` (default z; data parallel: every replica's futures).
    """
    candidates = z if candidates is None else candidates
    # index_select: its backward is an index_add (advanced indexing's sorts the indices)
    zn = candidates.index_select(0, neg_idx.flatten()).view(*neg_idx.shape, z.shape[-1])
    # J dot products per row: vecdot, not a bmm of M (J×D)·(D×1) products (on the CPU its
    # backward's outer products cost ~2× the whole scoring)
    neg = torch.linalg.vecdot(zn, pred.unsqueeze(1))
    return torch.cat([torch.linalg.vecdot(z, pred).unsqueeze(1), neg], dim=1)


@dataclass
class InfoNCEConfig:
    steps: int = 5
    """K: prediction steps k = 1…K (row r predicts row r+k+1); capped at rows − 2 of the grid."""
    negatives: int = 16
    """Negatives per context, drawn uniformly from the other (image, location) futures of the step."""
    draws: Draws = "lockstep"
    """The negative draws of the copies on different stages: 'lockstep' (default) — one
    stream for every stage; 'per_stage' — each stage draws its own."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be ≥ 1, got {self.negatives}")


class InfoNCEObjective(PredictiveObjective):
    """CPC/GIM InfoNCE with one bilinear W_k per prediction step."""

    Config = InfoNCEConfig
    plausible_error = False

    @classmethod
    def uses_weight_transport(cls, params) -> bool:
        """The context's error is W_kᵀ z: the score's forward weight, used backwards (found
        by the audit; declared as no transport before)."""
        return True

    def __init__(self, cfg: InfoNCEConfig, in_shape: tuple[int, ...]):
        super().__init__(cfg.draws)
        cfg.validate()
        self.cfg = cfg
        ch = in_shape[0]
        self.w_pred = nn.Parameter(init_step_weights(cfg.steps, ch, ch))  # pairs: step 0 only

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:
        self._check_batch(batch)
        grid = vector_grid(patch_vectors(h, batch), batch)
        steps = steps_for(batch, grid.shape[1], self.cfg.steps)
        total = grid.new_zeros(())
        # data parallel: this rank's contexts, negatives drawn over every replica's futures
        # with the stream all replicas share (the mean over own contexts is size × share)
        grid_all = self.replicas.rows(grid)
        # one unbind: its backward stacks the steps' gradients once (indexing w_pred[t] per
        # step would zero-fill and add a full (K, C, C) gradient per step)
        w_pred = self.w_pred.unbind(0)
        for t, off in steps:
            c, z = context_future(grid, off)
            c, z = c.reshape(-1, c.shape[-1]), z.reshape(-1, z.shape[-1])
            # one replica: the candidates are the own futures (not a second copy of the cut)
            z_all = z if grid_all is grid else context_future(grid_all, off)[1].reshape(-1, z.shape[-1])
            m = z_all.shape[0]
            # offsets in [1, m): a context's own future is never one of its negatives
            shift = torch.randint(1, m, (m, self.cfg.negatives), generator=self.generator)
            neg_idx = ((torch.arange(m)[:, None] + shift) % m)[self.replicas.own(z.shape[0])].to(z.device)
            logits = infonce_scores(c @ w_pred[t].t(), z, neg_idx, z_all)
            target = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)  # own contexts
            total = total + F.cross_entropy(logits, target)
        return total / len(steps)
