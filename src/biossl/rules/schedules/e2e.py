"""End-to-end: one objective on the top stage; every step its error reaches every stage."""
from __future__ import annotations

from biossl.rules.schedules.base import Schedule


class EndToEnd(Schedule):
    """One loss on the top stage, one optimizer; the transport carries the error down."""

    local = False

    def step(self, rule, batch):
        u = rule.update(0, batch.x, batch)
        return {"loss": u.loss, **u.log}
