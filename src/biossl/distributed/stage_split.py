"""Where a layer-parallel run cuts the encoder: consecutive stage groups, one per process.

A group's time per step is the time of its stages' updates (forward, local loss, backward,
optimizer step); the pipeline runs at the pace of its slowest group, so the split that
balances them is the one whose largest group time is smallest. The split is chosen from each
stage's measured update time on a batch of the run's shape (by the rank that decides it, once
at start-up). FLOPs would be the same number everywhere, but they mislead: on fmnist-clapp
the first stage has 1/15 of the second's FLOPs yet takes 1.4× its time (a 1-channel
convolution and memory-bound maps over 32 channels at full patch size), so a FLOP-balanced
split ([2]) caps the speed-up at 1.4×, the time-balanced one ([1]) at 1.7×.
"""
from __future__ import annotations

import itertools
import statistics
from typing import Callable, Sequence

from torch.utils.flop_counter import FlopCounterMode

from biossl.measure import seconds_per_call
from biossl.views.batch import ViewBatch


def balanced_split(costs: Sequence[float], groups: int) -> list[int]:
    """The first stage of every group but the first (ascending) that minimises the largest
    group's summed cost (ties: the earliest cuts)."""
    n = len(costs)
    if not 1 <= groups <= n:
        raise ValueError(f"cannot split {n} stages into {groups} groups")
    best, best_cost = None, float("inf")
    for cut in itertools.combinations(range(1, n), groups - 1):
        bounds = (0, *cut, n)
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))
        if worst < best_cost:
            best, best_cost = list(cut), worst
    return best


def chosen_split(rule, split: Sequence[int] | None, groups: int, sample: ViewBatch | None) -> list[int]:
    """Where groups 2… start: ``split`` (``parallel.group_starts``; ValueError when it does not fit
    the encoder), or the split that balances the stages' update times measured on ``sample``
    (by the one rank that decides)."""
    if split is None:
        split = balanced_split(update_seconds(rule, sample), groups)
    group_ranges(len(rule.spans), split)
    return list(split)


def group_ranges(stages: int, split: Sequence[int]) -> list[range]:
    """Stage ranges of the groups given where groups 2… start (``parallel.group_starts``)."""
    bounds = [0, *split, stages]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"parallel.group_starts={list(split)} does not cut {stages} stages into "
                         f"{len(split) + 1} non-empty groups: give ascending stage indices in 1…{stages - 1}")
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _measured_updates(rule, batch: ViewBatch, measure: Callable[[Callable], float]) -> list[float]:
    """``measure(update)`` of each segment's update (forward, loss, backward) on ``batch``, each
    segment on its predecessor's output; nothing of the rule changes (no optimizer step, the
    objectives' draws are replayed, gradients cleared)."""
    values, x = [], batch.x
    for k in range(len(rule.spans)):
        obj = rule.objectives[k]
        draws = obj.draw_state()
        out = []

        def update(k=k, x=x):
            out.append(rule.transport.gradients(rule, k, x.detach(), batch, learn_extra=False).out)

        values.append(measure(update))
        obj.set_draw_state(draws)
        x = out[-1]
    for p in rule.parameters():
        p.grad = None
    return values


def update_flops(rule, batch: ViewBatch) -> list[float]:
    """FLOPs of each segment's update on ``batch`` (see :func:`_measured_updates`)."""
    def flops(update) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            update()
        return float(counter.get_total_flops())
    return _measured_updates(rule, batch, flops)


def update_seconds(rule, batch: ViewBatch, repeats: int = 3) -> list[float]:
    """Median seconds of each segment's update on ``batch`` after one warm-up (see
    :func:`_measured_updates`). The optimizer step, a small share, is left out."""
    def seconds(update) -> float:
        return seconds_per_call(update, 1, batch.x.device)
    _measured_updates(rule, batch, seconds)  # warm-up
    runs = [_measured_updates(rule, batch, seconds) for _ in range(repeats)]
    return [statistics.median(t) for t in zip(*runs)]
