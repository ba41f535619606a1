"""Greedy layer-wise (Bio-SSL's GLL): stage 0 for a while, then stage 1, …

``train.epochs`` is the whole run, split evenly over the stages (Bio-SSL's "400 epochs
per layer" on 5 layers is ``train.epochs: 2000``). The lower stages run frozen without
autograd; the upper stages do not run at all.
"""
from __future__ import annotations

from biossl.rules.schedules.base import Schedule, one_stage_log


class Greedy(Schedule):
    """Stages trained one after the other, each for train.epochs / stages epochs."""

    epochs_resizable = False

    def __init__(self, params=None):
        super().__init__(params)
        self.stage = 0
        self.per_stage = 1
        self.stages = 1

    def plan(self, epochs: int, stages: int) -> None:
        if epochs % stages:
            near = stages * max(1, round(epochs / stages))
            raise ValueError(
                f"schedule greedy splits train.epochs over the {stages} stages, but {epochs} "
                f"epochs do not split evenly; use a multiple of {stages}, e.g. train.epochs={near} "
                f"(train.epochs counts the whole run: stages × epochs per stage)")
        self.per_stage = epochs // stages
        self.stages = stages

    def positions(self) -> list[int]:
        return [s * self.per_stage for s in range(self.stages)]

    def start_epoch(self, rule, epoch: int) -> None:
        self.stage = epoch // self.per_stage

    def step(self, rule, batch):
        u = rule.update(self.stage, rule.frozen_input(self.stage, batch), batch)
        return one_stage_log(self.stage, u)

    def state(self) -> dict:
        return {"stage": self.stage}

    def load_state(self, state: dict) -> None:
        self.stage = state["stage"]
