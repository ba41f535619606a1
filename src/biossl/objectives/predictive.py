"""What the predictive objectives (``clapp``, ``infonce``) share: which patch predicts which.

A stage output h (M, C, ...) is first averaged to one vector per encoder row (per patch),
then laid out as a grid (n, rows, cols, C). Prediction step k pairs the context at row r
with the "future" at row r + k + 1 of the same column (CLAPP/GIM skip the directly
adjacent row, which overlaps the context patch by half). A 'pairs' batch is read as a
two-row grid: view 1 is the context, view 2 the single future (offset 1, step index 0),
which is how "CLAPP with deformations" (Bio-SSL) uses augmentation pairs.

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


def patch_vectors(h: Tensor) -> Tensor:
    """Stage output (M, C, ...) → one vector per row (M, C): mean over the spatial axes.

    Half-precision outputs are promoted to float32 (the scores and hinges need it);
    float64 stays float64 (the exactness tests run in it).
    """
    if h.dtype in (torch.float16, torch.bfloat16):
        h = h.float()
    return h.flatten(2).mean(-1) if h.dim() > 2 else h


def spread_to_output(grad_v: Tensor, h_shape: torch.Size) -> Tensor:
    """Gradient at the patch vectors (M, C) → gradient at the stage output (the mean's backward)."""
    spatial = h_shape[2:]
    size = 1
    for s in spatial:
        size *= s
    return (grad_v / size).view(*grad_v.shape, *([1] * len(spatial))).expand(h_shape)


def vector_grid(v: Tensor, batch: ViewBatch) -> Tensor:
    """Patch vectors (M, C) → grid (n, rows, cols, C); a 'pairs' batch is a 2×1 grid."""
    if batch.kind == "grid":
        r, c = batch.grid
        return v.view(batch.n, r, c, v.shape[-1])
    if batch.kind == "pairs":
        return v.view(2, batch.n, 1, v.shape[-1]).permute(1, 0, 2, 3)
    raise ValueError(f"predictive objectives need a 'grid' or 'pairs' batch, got {batch.kind!r}")


def steps_for(batch: ViewBatch, rows: int, max_steps: int) -> list[tuple[int, int]]:
    """(index into the per-step weights, row offset) of every prediction step used.

    Grid: k = 1…min(K, rows − 2), offset k + 1. Pairs: one step, index 0, offset 1.
    """
    if batch.kind == "pairs":
        return [(0, 1)]
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

    accepts_kinds = ("grid", "pairs")
    """Saccade grids (the papers' setting) or augmentation pairs (a two-row grid)."""

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
            raise ValueError(f"{type(self).__name__} needs a 'grid' (saccades) or 'pairs' batch, "
                             f"got {batch.kind!r}")
        if batch.n < 2:
            raise ValueError("predictive objectives need at least 2 images per batch (negatives)")

    def get_extra_state(self):
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state) -> None:
        self.generator.set_state(state["generator"])
