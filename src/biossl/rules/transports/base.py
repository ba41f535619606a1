"""A transport says how an error reaches a weight: through Wᵀ (bp), a random feedback
weight B (rf, urf, sign), a learned inverse's target (targets) or CLAPP's explicit
plasticity rule (explicit).

A transport updates one *segment* of the rule — the stages a schedule trains from one
objective (all stages end-to-end, one stage for local schedules) — from that segment's
detached input: :meth:`Transport.gradients` leaves the update in the parameters' ``.grad``
for the segment's optimizer. Forward computations run inside ``rule.autocast()``, the
backward outside it (the trainer scopes precision to the forward).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, ContextManager

import torch
from torch import Tensor, nn

from biossl.distributed.replicas import ONE_PROCESS, Replicas
from biossl.views.batch import ViewBatch

if TYPE_CHECKING:
    from biossl.rules.rule import Rule
    from biossl.rules.schedules.base import Schedule


@dataclass
class Update:
    """What one segment's update produced."""
    out: Tensor
    """The segment's output on the whole batch, detached (the next segment's input)."""
    loss: float
    """The segment objective's loss."""
    log: dict[str, float] = field(default_factory=dict)
    """Extra numbers to log (e.g. DTP's reconstruction losses)."""
    step: bool = True
    """False when the segment's forward weights must not move this step (DTP's warm-up)."""


def run_segment(rule: "Rule", k: int, x: Tensor, batch: ViewBatch) -> Tensor:
    """Segment ``k``'s output from its input ``x`` with autograd — except the first view of
    a gradient-blocked objective, which only enters as stored activity, so it runs without
    autograd and its backward is never built."""
    span = rule.spans[k]
    blocked = batch.first_view_rows() if rule.objectives[k].grad_block else None
    if blocked is None or not torch.is_grad_enabled():
        return rule.encoder.run(x, span.start, span.stop)
    with torch.no_grad():
        a = rule.encoder.run(x[blocked], span.start, span.stop)
    b = rule.encoder.run(x[blocked.stop:], span.start, span.stop)
    return torch.cat([a, b])


class Transport(nn.Module):
    """Base of every transport; a transport is a module so that what it learns (DTP's
    inverses) or draws (feedback weights live in the converted layers) is checkpointed."""

    Config: ClassVar[type | None] = None

    def __init__(self, params, run_seed: int):
        super().__init__()
        self.params = params
        self.run_seed = int(run_seed)
        self.diagnostics_every = 0
        """Steps between measurements of the angle to back-propagation (0: never); set
        from the config by transports that measure it."""

    transposes_between_stages: ClassVar[bool] = False
    """An error crossing from one stage down to the next travels through the transposed
    forward weights (bp); an end-to-end schedule then fails condition (iii)."""

    transposes_in_head: ClassVar[bool] = False
    """The error from the loss to the top stage's output travels through the head's
    transposed forward weights (bp; targets, whose top target is the head's gradient)."""

    local_targets: ClassVar[bool] = False
    """Every stage learns from a target for its own output (targets), so updates stay
    local (condition (i)) even under an end-to-end schedule."""

    row_chunked: ClassVar[bool] = False
    """The segment's update can run over the batch's rows in chunks (train.stage_chunks)
    with the same gradients: autograd through its forward (bp, rf, urf, sign), or stage
    losses that are sums over rows (targets)."""

    replicas: Replicas = ONE_PROCESS
    """The data-parallel replicas sharing each global batch (one process: the identity)."""

    def distribute(self, replicas: Replicas) -> None:
        """Learn as one of data-parallel ``replicas``: what the transport itself learns with its
        own optimizers (DTP's inverses) averages its gradients over them before each of its
        steps, and its per-row draws (noise) are the global batch's. Feedback weights need
        nothing: URF's B receives W's increment, which is already the replicas' average."""
        self.replicas = replicas

    @classmethod
    def refuse(cls, schedule: "Schedule") -> str | None:
        """Why this transport cannot work with ``schedule`` (None: it can)."""
        return None

    def attach(self, rule: "Rule") -> None:
        """Prepare the rule's encoder and objectives (convert layers, build inverses)."""

    def extra_optimizers(self, train) -> list[torch.optim.Optimizer]:
        """Optimizers of what the transport itself learns (DTP's inverses); none by default."""
        return []

    def gradients(self, rule: "Rule", k: int, x: Tensor, batch: ViewBatch, *,
                  learn_extra: bool = True) -> Update:  # pragma: no cover
        """Write segment ``k``'s update into ``.grad`` from its detached input ``x``.
        ``learn_extra=False``: do not train the transport's own parameters (measurements)."""
        raise NotImplementedError

    def reference_loss(self, rule: "Rule", k: int, x: Tensor, batch: ViewBatch) -> Tensor:
        """Segment ``k``'s loss with a graph through its forward weights, for the angle to
        back-propagation; differentiated inside :meth:`exact`."""
        span = rule.spans[k]
        with rule.autocast():
            return rule.objectives[k](rule.encoder.run(x, span.start, span.stop), batch)

    def exact(self) -> ContextManager:
        """Context in which a backward is true back-propagation (B := W for feedback layers)."""
        return contextlib.nullcontext()

    def stepping(self, rule: "Rule", k: int) -> ContextManager:
        """Context around segment ``k``'s optimizer step (URF: B receives W's increment)."""
        return contextlib.nullcontext()

    def frozen_steps(self) -> int:
        """Initial steps that leave the encoder untouched (DTP's inverse warm-up)."""
        return 0

    def diagnostics(self) -> dict[str, float]:
        return {}
