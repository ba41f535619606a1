"""Allowed ranges of numeric config keys, declared next to the field they constrain::

    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-3
    momentum: Annotated[float, Range(0, 1, max_open=True)] = 0.9

The config loader (:func:`biossl.config.coerce`) checks every value against the
:class:`Range` of its annotation, so each key's bounds live in one place and every error
names the key, the bad value and the allowed range. No dependencies: component modules
import it without importing the loader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    """Closed (default) or open bounds of a numeric key; None: unbounded on that side."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    """Exclude ``min`` itself (> min rather than ≥ min)."""
    max_open: bool = False
    """Exclude ``max`` itself (< max rather than ≤ max)."""

    def __str__(self) -> str:
        lo = None if self.min is None else f"{'>' if self.min_open else '≥'} {self.min:g}"
        hi = None if self.max is None else f"{'<' if self.max_open else '≤'} {self.max:g}"
        return " and ".join(s for s in (lo, hi) if s) or "any value"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.min is not None and (value < self.min or (self.min_open and value == self.min)):
            return False
        if self.max is not None and (value > self.max or (self.max_open and value == self.max)):
            return False
        return True


PositiveInt = Annotated[int, Range(1)]
"""An integer ≥ 1 (counts, sizes, periods)."""
NonNegativeInt = Annotated[int, Range(0)]
"""An integer ≥ 0 (seeds; 0 disables where the doc says so)."""
PositiveFloat = Annotated[float, Range(0, min_open=True)]
"""A finite number > 0 (learning rates, temperatures, widths)."""
NonNegativeFloat = Annotated[float, Range(0)]
"""A finite number ≥ 0 (penalties, noise levels)."""
