"""Catching a blow-up: a loss that is not finite, or one that explodes against its own history.

A loss is *exploding* when its magnitude exceeds ``factor`` times the larger of (a) the
median of the last ``WINDOW`` losses and (b) the median of the first ``FIRST`` losses. (b)
is a floor: a loss that has converged near zero (a hinge at 1e-4) may jump by orders of
magnitude on one hard batch without anything being wrong; measured against the run's
starting scale, 1000× is a blow-up in every objective here. The test starts at the second
step: Adam at lr 1e6 turns a loss of 80 into 1e30 in one step.
"""
from __future__ import annotations

import math
import statistics
from collections import deque

FIRST = 20
"""Losses whose median is the run's starting scale (the floor of the reference)."""
WINDOW = 50
"""Recent losses whose median is the reference."""


class LossWatch:
    """Feed every step's loss; :meth:`check` returns why it is a blow-up, or None."""

    def __init__(self, factor: float | None):
        self.factor = factor
        self.first: list[float] = []
        self.recent: deque[float] = deque(maxlen=WINDOW)

    def reference(self) -> float:
        return max(statistics.median(self.recent), statistics.median(self.first))

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"loss is {loss}"
        size = abs(loss)
        if self.factor is not None and self.first:
            ref = self.reference()
            if size > self.factor * max(ref, 1e-12):
                return (f"loss {loss:.4g} is over {self.factor:g}× its running median {ref:.4g}, "
                        f"the limit train.divergence_factor sets")
        if len(self.first) < FIRST:
            self.first.append(size)
        self.recent.append(size)
        return None

    # the history is part of the training state: a resumed run tests what an uninterrupted one would
    def state_dict(self) -> dict:
        return {"first": list(self.first), "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.first = list(state.get("first", []))
        self.recent = deque(state.get("recent", []), maxlen=WINDOW)
