"""CLAPP's explicit plasticity rule: a stage's update from activities, without autograd.

The objective gives the modulated error at the stage output from γ and the dendritic
signals (``Objective.explicit_backward``); inside the stage that signal is routed through
the max-pool to the unit that won, gated by ρ′(a) and multiplied with the stored
pre-synaptic input (biossl.rules.clapp_explicit). It equals autograd of the same loss
(tested in float64). It needs a schedule that gives every stage its own loss, an
objective with an explicit form (clapp) and stages of one conv/linear layer followed by
element-wise nonlinearities and max-pools.
"""
from __future__ import annotations

from dataclasses import dataclass

from biossl.bounds import NonNegativeInt
from biossl.rules.base import check_finite
from biossl.rules.clapp_explicit import check_stage, forward_traced, local_gradients
from biossl.rules.transports.base import Transport, Update


@dataclass
class ExplicitConfig:
    diagnostics_every: NonNegativeInt = 0
    """Steps between measurements of the angle between the explicit update and autograd's
    gradient of the same loss (one extra forward + backward; ≈ 0° up to rounding); 0: off."""


class Explicit(Transport):
    """Each stage's update is CLAPP's Hebbian product of its output error and its input."""

    Config = ExplicitConfig

    def __init__(self, params, run_seed):
        params = params if params is not None else ExplicitConfig()
        super().__init__(params, run_seed)
        self.diagnostics_every = params.diagnostics_every

    @classmethod
    def refuse(cls, schedule) -> str | None:
        if not schedule.local:
            return ("the explicit rule computes a stage's update from its own objective's signal "
                    "at its output; an end-to-end error would have to cross the upper stages' "
                    "weights backwards. Use schedule simultaneous, greedy or random, or transport bp")
        return None

    def attach(self, rule) -> None:
        for span, obj in zip(rule.spans, rule.objectives):
            if not obj.has_explicit_form:
                raise ValueError(f"transport explicit needs an objective with an explicit form "
                                 f"(clapp); {type(obj).__name__} has none — use transport bp")
            for i in span:
                check_stage(rule.encoder.stages[i])

    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        stage = rule.encoder.stages[rule.spans[k].start]
        # No autograd anywhere: the whole rule is activity arithmetic, so it runs in the
        # forward precision too.
        with rule.autocast():
            h, trace = forward_traced(stage, x)
            loss, grad_h = rule.objectives[k].explicit_backward(h, batch)
            check_finite(loss, rule.loss_name(k), rule.replicas)
            local_gradients(trace, grad_h)
        return Update(h.detach(), loss.item())
