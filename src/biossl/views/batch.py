"""The data contract between views, encoders, objectives and rules.

A :class:`ViewBatch` is what a view recipe hands to a rule: one float tensor that the
encoder runs on in a single batched pass, plus the layout that tells an objective how
the rows relate (which rows are positive pairs, which are patches of one image).
Nothing here knows which recipe, encoder, objective or rule is in use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Kind = Literal["plain", "pairs", "grid", "sequence"]


@dataclass
class ViewBatch:
    x: Tensor
    """Encoder input, float (M, C, H, W) (or (M, C, T) / (M, C, T, H, W) for other modalities)."""
    n: int
    """Number of source images the batch was made from."""
    kind: Kind
    """'plain': M = n unaugmented images (evaluation).
    'pairs': M = 2n; rows [0, n) are first views, rows [n, 2n) second views of the same images.
    'grid':  M = n·rows·cols patches, image-major then row-major over the patch grid.
    'sequence': M = n sequences (audio crops, clips); the encoder's outputs keep a time axis
    (dim 2) whose steps play the role of a grid's rows."""
    grid: tuple[int, int] | None = None
    """(rows, cols) of the patch grid for kind 'grid'."""

    def __post_init__(self) -> None:
        m = self.x.shape[0]
        if self.kind in ("plain", "sequence") and m != self.n:
            raise ValueError(f"{self.kind} ViewBatch: {m} rows for n={self.n}")
        if self.kind == "pairs" and m != 2 * self.n:
            raise ValueError(f"pairs ViewBatch: {m} rows, expected 2n={2 * self.n}")
        if self.kind == "grid":
            if self.grid is None or m != self.n * self.grid[0] * self.grid[1]:
                raise ValueError(f"grid ViewBatch: {m} rows do not match n={self.n} × grid {self.grid}")

    # ---- the row layout, as rules may use it (they never branch on ``kind``) -----------
    def view_rows(self) -> list[slice]:
        """Row ranges that are separate views of the images ('pairs': the two halves; else
        one range): a rule may encode them one at a time to halve a transient peak."""
        if self.kind == "pairs":
            return [slice(0, self.n), slice(self.n, 2 * self.n)]
        return [slice(0, self.x.shape[0])]

    def first_view_rows(self) -> slice | None:
        """The first view's rows for 'pairs' (what a gradient-blocked objective stores as
        activity), None for layouts without a first view."""
        return slice(0, self.n) if self.kind == "pairs" else None

    def with_x(self, x: Tensor) -> "ViewBatch":
        """The same layout over other rows of activity (e.g. a lower stage's output)."""
        return ViewBatch(x, self.n, self.kind, self.grid)

    # ---- layout helpers shared by objectives and evaluation --------------------------
    def grid_map(self, h: Tensor) -> Tensor:
        """Stage output (M, C, ...) → per-patch vectors on the grid (n, C, rows, cols)."""
        if self.kind != "grid":
            raise ValueError(f"grid_map needs a 'grid' batch, got {self.kind!r}")
        v = h.flatten(2).mean(-1) if h.dim() > 2 else h
        r, c = self.grid
        return v.view(self.n, r, c, -1).permute(0, 3, 1, 2)

    def pooled(self, h: Tensor) -> Tensor:
        """One vector per image: global average pool (mean over the patch grid for 'grid')."""
        if self.kind == "grid":
            return self.grid_map(h).flatten(2).mean(-1)
        return h.flatten(2).mean(-1) if h.dim() > 2 else h

    def split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """For 'pairs': (first views, second views), each (n, ...)."""
        if self.kind != "pairs":
            raise ValueError(f"split needs a 'pairs' batch, got {self.kind!r}")
        return h[: self.n], h[self.n:]

    def to(self, device: torch.device | str) -> "ViewBatch":
        return ViewBatch(self.x.to(device), self.n, self.kind, self.grid)
