"""Random layer-wise (Bio-SSL's RLL): every step trains one uniformly drawn stage."""
from __future__ import annotations

import torch

from biossl.rules.schedules.base import Schedule, one_stage_log


class RandomStage(Schedule):
    """Each minibatch updates one stage, drawn from the rule's checkpointed generator."""

    def step(self, rule, batch):
        g = rule.generator
        i = int(torch.randint(len(rule.spans), (1,), generator=g, device=g.device).item())
        u = rule.update(i, rule.frozen_input(i, batch), batch)
        return one_stage_log(i, u)
