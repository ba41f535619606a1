"""Objectives: pure loss functions plus thin modules holding their own parameters.

An objective module is built for one attachment point (a stage output of shape
``in_shape``) and maps that stage's output on a :class:`ViewBatch` to a scalar loss.
It owns its head / prediction weights; which parameters are updated, and how, is the
rule's business.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from biossl.distributed.replicas import ONE_PROCESS, Replicas
from biossl.views.batch import Kind, ViewBatch


class Objective(nn.Module):
    """The contract every objective declares; rules read these, never probe with getattr."""

    accepts_kinds: ClassVar[tuple[Kind, ...]] = ("pairs",)
    """The ViewBatch kinds this objective consumes ('pairs', 'grid'); the assembler checks
    the view recipe against it."""

    plausible_error: ClassVar[bool] = False
    """Condition (ii): the error this loss sends needs no normalisation, division, inner
    products across units or softmax (hinge, clapp: True; NT-Xent, InfoNCE: False)."""

    has_head: ClassVar[bool] = False
    """The loss reaches the stage output through weight layers of its own (a projection
    head): an error to the stage then crosses them backwards."""

    has_explicit_form: ClassVar[bool] = False
    """True when :meth:`explicit_backward` gives the error at the stage output without
    autograd (the ``explicit`` transport needs it)."""

    grad_block: bool = False
    """True when the first view enters only as stored (detached) activity: a rule may then
    encode the first view without autograd (saves its backward). Set from the config."""

    replicas: Replicas = ONE_PROCESS
    """The data-parallel replicas sharing each global batch (one process: the identity)."""

    def distribute(self, replicas: Replicas) -> None:
        """Compute this objective's share of the *global*-batch loss from now on: its own
        rows' terms against candidates gathered from every replica, scaled so that the
        average of the replicas' gradients is the global gradient (biossl.distributed.replicas;
        docs/distributed.md says what the global batch means for each objective)."""
        self.replicas = replicas

    @classmethod
    def uses_weight_transport(cls, params) -> bool:
        """Whether the objective itself sends an error back through a forward weight
        (condition (iii)), for its config ``params``; False by default."""
        return False

    def forward(self, h: Tensor, batch: ViewBatch) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def rowwise(self, h: Tensor) -> Tensor:
        """The loss's row-wise start: row r of the result from row r of ``h`` alone (a
        projection head); :meth:`coupled` does the rest, which mixes rows (negatives, …):
        ``forward(h, b) == coupled(rowwise(h), b)``. A rule learning in row chunks
        (train.stage_chunks) cuts there, so the head's maps are chunked too. The identity
        by default."""
        return h

    def coupled(self, z: Tensor, batch: ViewBatch) -> Tensor:
        """The loss from :meth:`rowwise`' output ``z`` (see there); ``forward`` by default."""
        return self(z, batch)

    def explicit_backward(self, h: Tensor, batch: ViewBatch) -> tuple[Tensor, Tensor]:
        """(loss, ∂loss/∂h) computed from activities, when ``has_explicit_form``."""
        raise NotImplementedError(f"{type(self).__name__} has no explicit form")

    def seed_draws(self, run_seed: int, stage: int) -> None:
        """Seed this objective's random draws (negatives, coins) for the copy attached to
        ``stage``, from the run seed (biossl.seeds, purpose 'objective'). Objectives without
        draws have nothing to do."""

    def draw_state(self):
        """The state of this objective's random draws (None: it draws nothing), so that a
        measurement can replay a step's loss with the same negatives and coins."""
        return None

    def set_draw_state(self, state) -> None:
        """Restore a :meth:`draw_state`."""

    def diagnostics(self) -> dict[str, float]:
        """Numbers to log with the training metrics (e.g. W_retro's alignment); none by default."""
        return {}


PoolMode = Literal["adaptive", "window"]


def check_head_pool(pool: int | None, mode: str) -> None:
    """Config-time check of a head's pool keys (``head_pool``, ``head_pool_mode``)."""
    if mode not in ("adaptive", "window"):
        raise ValueError(f"unknown head_pool_mode {mode!r}; choose 'adaptive' or 'window'")
    if pool is not None and pool < 1:
        raise ValueError(f"head_pool must be ≥ 1 or null (flatten), got {pool}")


class ProjectionHead(nn.Module):
    """Bio-SSL head: AvgPool → Flatten → Linear(→ dim, no bias).

    ``pool`` None flattens the whole map (the official conv6 heads: Linear(C·H·W → dim));
    otherwise ``pool_mode`` says how it is read: 'adaptive' — adaptive average pool to a
    pool×pool output (1 = global pooling; conv6's top at 32×32 with pool=4 is 512×4×4 =
    8192 features); 'window' — ``AvgPool(pool)``, window and stride ``pool`` (Bio-SSL's
    vgg6 head is AvgPool2d(2)), so the output side shrinks with the map, floor(H / pool).
    ``init_scale`` multiplies the output layer's default initial weights.
    """

    def __init__(self, in_shape: tuple[int, ...], dim: int = 64, pool: int | None = 1,
                 hidden: int | None = None, init_scale: float = 1.0, pool_mode: PoolMode = "adaptive"):
        super().__init__()
        c = in_shape[0]
        spatial = in_shape[1:]
        check_head_pool(pool, pool_mode)
        if pool is None or not spatial:
            self.pool = nn.Identity()
            out_spatial = list(spatial)
        elif pool_mode == "adaptive":
            out_spatial = [min(pool, s) for s in spatial]
            self.pool = (nn.AdaptiveAvgPool2d(tuple(out_spatial)) if len(spatial) == 2
                         else nn.AdaptiveAvgPool1d(out_spatial[0]))
        else:
            if any(s < pool for s in spatial):
                raise ValueError(f"head pool window {pool} is larger than the stage output "
                                 f"{tuple(spatial)}; lower head_pool or use head_pool_mode 'adaptive'")
            out_spatial = [s // pool for s in spatial]
            self.pool = nn.AvgPool2d(pool) if len(spatial) == 2 else nn.AvgPool1d(pool)
        feat = c
        for s in out_spatial:
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
