"""Objectives: pure loss functions plus thin modules holding their own parameters.

An objective module is built for one attachment point (a stage output of shape
``in_shape``) and maps that stage's output on a :class:`ViewBatch` to a scalar loss.
It owns its head / prediction weights; which parameters are updated, and how, is the
rule's business.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from biossl.views.batch import Kind, ViewBatch


class Objective(nn.Module):
    accepts_kinds: ClassVar[tuple[Kind, ...]] = ("pairs",)
    """The ViewBatch kinds this objective consumes ('pairs', 'grid'); the assembler checks
    the view recipe against it."""

    stop_grad_first: bool = False
    """True when the first view enters only as stored (detached) activity: rules may then
    encode the first view without autograd (saves its backward)."""

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class ProjectionHead(nn.Module):
    """Bio-SSL head: AvgPool → Flatten → Linear(→ dim, no bias).

    ``pool`` is the output side of the adaptive average pool (1 = global pooling);
    for ``conv6`` Bio-SSL flattens 512×4×4 = 8192 features (pool=4 at 32×32 input).
    ``init_scale`` multiplies the output layer's default initial weights.
    """

    def __init__(self, in_shape: tuple[int, ...], dim: int = 64, pool: int | None = 1,
                 hidden: int | None = None, init_scale: float = 1.0):
        super().__init__()
        c = in_shape[0]
        spatial = in_shape[1:]
        if pool is None or not spatial:
            self.pool = nn.Identity()
            feat = c
            for s in spatial:
                feat *= s
        else:
            p = [min(pool, s) for s in spatial]
            self.pool = nn.AdaptiveAvgPool2d(tuple(p)) if len(spatial) == 2 else nn.AdaptiveAvgPool1d(p[0])
            feat = c
            for s in p:
                feat *= s
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(feat, hidden), nn.ReLU()]
            feat = hidden
        layers.append(nn.Linear(feat, dim, bias=False))
        if init_scale <= 0:
            raise ValueError(f"head init scale must be > 0, got {init_scale}")
        with torch.no_grad():
            layers[-1].weight.mul_(init_scale)
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.mlp(self.pool(h).flatten(1))
