"""What the predictive objectives (``clapp``, ``infonce``) share: which patch predicts which.

A stage output is first turned into one vector per position, then laid out as a grid
(n, rows, cols, C). Prediction step k pairs the context at row r with the "future" at row
r + offset of the same column:

* 'grid' (saccade patches, each row of the batch a patch): one vector per patch (mean over
  its spatial axes); offset k + 1 — CLAPP/GIM skip the directly adjacent row, which
  overlaps the context patch by half.
* 'sequence' (audio crops, clips: each row of the batch a whole sequence): one vector per
  time step of the stage output (mean over any spatial axes), the time steps as rows of a
  one-column grid; offset k — the context at frame t predicts frame t + k (GIM, CPC).
* 'pairs': view 1 is the context, view 2 the single future (offset 1, step index 0), which
  is how "CLAPP with deformations" (Bio-SSL) uses augmentation pairs.

The objectives draw their negatives (and CLAPP's positive/negative coin) from their own
:class:`torch.Generator`, saved with the module state, so a run is reproducible and
resumes with the same draws.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from biossl.objectives.base import Objective
from biossl.seeds import derive
from biossl.views.batch import ViewBatch


def patch_vectors(h: Tensor, batch: ViewBatch) -> Tensor:
    """Stage output → one vector per position (M, C): 'sequence' (n, C, T, ...) → (n·T, C),
    time-major within a sequence, averaged over any spatial axes; otherwise (M, C, ...) →
    (M, C), averaged over every axis after the channels.

    Half-precision outputs are promoted to float32 (the scores and hinges need it);
    float64 stays float64 (the exactness tests run in it).
    """
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    if batch.kind == "sequence":
        if h.dim() < 3:
            raise ValueError(f"a 'sequence' batch needs stage outputs (n, C, T, ...), got {tuple(h.shape)}")
        v = h.flatten(3).mean(-1) if h.dim() > 3 else h                  # (n, C, T)
        return v.transpose(1, 2).reshape(-1, v.shape[1])
    return h.flatten(2).mean(-1) if h.dim() > 2 else h


def spread_to_output(grad_v: Tensor, h_shape: torch.Size, batch: ViewBatch) -> Tensor:
    """Gradient at the position vectors (M, C) → gradient at the stage output (the mean's
    backward, the inverse layout of :func:`patch_vectors`)."""
    if batch.kind == "sequence":
        n, c, t = h_shape[0], h_shape[1], h_shape[2]
        spatial = h_shape[3:]
        g = grad_v.view(n, t, c).transpose(1, 2)                            # (n, C, T)
    else:
        spatial = h_shape[2:]
        g = grad_v
    size = 1
    for s in spatial:
        size *= s
    return (g / size).reshape(*g.shape, *([1] * len(spatial))).expand(h_shape)


def vector_grid(v: Tensor, batch: ViewBatch) -> Tensor:
    """Position vectors (M, C) → grid (n, rows, cols, C): a 'pairs' batch is a 2×1 grid, a
    'sequence' batch a T×1 grid."""
    if batch.kind == "grid":
        r, c = batch.grid
        return v.view(batch.n, r, c, v.shape[-1])
    if batch.kind == "sequence":
        return v.view(batch.n, -1, 1, v.shape[-1])
    if batch.kind == "pairs":
        return v.view(2, batch.n, 1, v.shape[-1]).permute(1, 0, 2, 3)
    raise ValueError(f"predictive objectives need a 'grid', 'sequence' or 'pairs' batch, got {batch.kind!r}")


def steps_for(batch: ViewBatch, rows: int, max_steps: int) -> list[tuple[int, int]]:
    """(index into the per-step weights, row offset) of every prediction step used.

    Grid: k = 1…min(K, rows − 2), offset k + 1. Sequence: k = 1…min(K, T − 1), offset k.
    Pairs: one step, index 0, offset 1.
    """
    if batch.kind == "pairs":
        return [(0, 1)]
    if batch.kind == "sequence":
        usable = min(max_steps, rows - 1)
        if usable < 1:
            raise ValueError(f"a sequence of {rows} time steps at this stage leaves no prediction step "
                             f"(frame t predicts t+k, k ≥ 1): use longer crops or fewer strided stages")
        return [(k - 1, k) for k in range(1, usable + 1)]
    usable = min(max_steps, rows - 2)
    if usable < 1:
        raise ValueError(f"a patch grid of {rows} rows leaves no prediction step "
                         f"(row r predicts row r+k+1, k ≥ 1): use ≥ 3 rows")
    return [(k - 1, k + 1) for k in range(1, usable + 1)]


def context_future(grid: Tensor, offset: int) -> tuple[Tensor, Tensor]:
    """Contexts and their futures offset rows below: each (n, P, C), P = (rows − offset)·cols."""
    n, rows, cols, ch = grid.shape
    c = grid[:, : rows - offset].reshape(n, -1, ch)
    z = grid[:, offset:].reshape(n, -1, ch)
    return c, z


def init_step_weights(steps: int, rows: int, cols: int, scale: float = 1.0) -> Tensor:
    """(steps, rows, cols) matrices, uniform ±scale/√cols (scale 1: nn.Linear's default)."""
    bound = scale / cols ** 0.5
    return torch.empty(steps, rows, cols).uniform_(-bound, bound)


Draws = Literal["lockstep", "per_stage"]


class PredictiveObjective(Objective):
    """Base of ``clapp`` and ``infonce``: reads 'grid' or 'pairs' batches, own seeded generator."""

    accepts_kinds = ("grid", "sequence", "pairs")
    """Saccade grids (the papers' setting), sequences (audio, video: prediction over time) or
    augmentation pairs (a two-row grid)."""

    def __init__(self, draws: Draws):
        super().__init__()
        if draws not in ("lockstep", "per_stage"):
            raise ValueError(f"unknown draws {draws!r}; choose 'lockstep' or 'per_stage'")
        self.draws = draws
        self.generator = torch.Generator()  # seeded by the rule: seed_draws

    def seed_draws(self, run_seed: int, stage: int) -> None:
        """'lockstep': every stage's copy gets the same stream (all stages make the same
        choice at each step); 'per_stage': stage i gets stream i (the official CLAPP code)."""
        self.generator.manual_seed(derive(run_seed, "objective", stage if self.draws == "per_stage" else 0))

    def draw_state(self):
        return self.generator.get_state()

    def set_draw_state(self, state) -> None:
        self.generator.set_state(state)

    def _check_batch(self, batch: ViewBatch) -> None:
        if batch.kind not in self.accepts_kinds:
            raise ValueError(f"{type(self).__name__} needs a 'grid' (saccades), 'sequence' (audio, "
                             f"video) or 'pairs' batch, got {batch.kind!r}")
        if batch.n < 2:
            raise ValueError("predictive objectives need at least 2 images per batch (negatives)")

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"])
