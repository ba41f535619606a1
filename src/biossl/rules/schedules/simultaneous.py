"""Simultaneous local learning (CLAPP, GIM): every stage learns from its own loss, every step.

The stages run bottom to top; each stage's update needs only its input (the detached
output of the stage below), so its graph is freed before the next stage runs and stages
could run in separate processes without backward locking.
"""
from __future__ import annotations

from biossl.rules.schedules.base import Schedule


class Simultaneous(Schedule):
    """All stages every step, each from its own objective; logs the mean of their losses."""

    def step(self, rule, batch):
        out: dict[str, float] = {}
        x = batch.x
        losses = []
        for k in range(len(rule.spans)):
            u = rule.update(k, x, batch)
            x = u.out
            losses.append(u.loss)
            out[f"loss/stage{k}"] = u.loss
            out.update(u.log)  # transports name their per-stage numbers ('recon/stage2', …)
        out["loss"] = sum(losses) / len(losses)
        return out
