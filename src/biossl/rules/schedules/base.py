"""A schedule says which stages learn when, and from which loss.

End-to-end schedules put one objective on the top stage (its error travels down every
stage, by the transport); local schedules give every stage its own objective and feed it
the lower stages' detached output, so no error crosses a stage boundary. A schedule is
a plain object: its state (the current stage, …) is checkpointed by the rule.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from biossl.views.batch import ViewBatch

if TYPE_CHECKING:
    from biossl.rules.rule import Rule
    from biossl.rules.transports.base import Update


class Schedule:
    Config: ClassVar[type | None] = None

    local: ClassVar[bool] = True
    """Every stage learns from its own loss (its own objective and optimizer); False: one
    objective on the top stage and one error path through all stages."""

    epochs_resizable: ClassVar[bool] = True
    """Whether ``train.epochs`` may grow on resume (a greedy schedule's stage boundaries
    would move)."""

    def __init__(self, params=None):
        self.params = params

    def spans(self, stages: int) -> list[range]:
        """The stage ranges that learn together, each from one objective on its top stage."""
        return [range(i, i + 1) for i in range(stages)] if self.local else [range(stages)]

    def plan(self, epochs: int, stages: int) -> None:
        """Fit the schedule to a run of ``epochs`` epochs (``train.epochs``, always the whole
        run) over ``stages`` stages; ValueError naming the fix when they do not fit."""

    def start_epoch(self, rule: "Rule", epoch: int) -> None:
        """Called before every epoch (0-based)."""

    def positions(self) -> list[int]:
        """The first epoch of every phase whose steps differ in what they train (after
        :meth:`plan`): one per stage for greedy, [0] when every epoch trains alike."""
        return [0]

    def step(self, rule: "Rule", batch: ViewBatch) -> dict[str, float]:  # pragma: no cover
        """One training step on ``batch`` via ``rule.update`` / ``rule.frozen_input``."""
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def one_stage_log(i: int, u: "Update") -> dict[str, float]:
    """What a step that updated stage ``i`` alone logs (greedy, random)."""
    return {"loss": u.loss, f"loss/stage{i}": u.loss, "stage": float(i), **u.log}
