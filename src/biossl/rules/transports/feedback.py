"""Random feedback: the error travels down through a feedback weight B instead of Wᵀ.

``rf`` (feedback alignment): B fixed at random; ``urf`` (updated random feedback): B
receives every increment of W, so B − W stays at its initial offset; ``sign``: the
backward uses sign(B). Every conv/linear layer of the encoder and of the objectives
(heads, predictors) is swapped for its feedback version (biossl.feedback); B is drawn from
the run's 'feedback' seed, independent of W.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from biossl.bounds import NonNegativeInt
from biossl.feedback import feedback_layers, mirrored_updates, to_feedback, weight_transport
from biossl.rules.transports.backprop import autograd_update
from biossl.rules.transports.base import Transport
from biossl.seeds import generator


@dataclass
class FeedbackConfig:
    diagnostics_every: NonNegativeInt = 100
    """Steps between measurements of the angle between the rule's update and the BP gradient
    of the same loss (one extra forward + backward with B := W on that step's batch); 0: off."""


class RandomFeedback(Transport):
    """Errors travel through a fixed random B (feedback alignment)."""

    Config = FeedbackConfig
    mode: ClassVar[str] = "rf"
    row_chunked = True

    def __init__(self, params, run_seed):
        params = params if params is not None else FeedbackConfig()
        super().__init__(params, run_seed)
        self.diagnostics_every = params.diagnostics_every
        self._layers = []

    def attach(self, rule) -> None:
        gen = generator(self.run_seed, "feedback")
        to_feedback(rule.encoder, self.mode, gen)
        for obj in rule.objectives:
            to_feedback(obj, self.mode, gen)
        self._layers = [feedback_layers(*[rule.encoder.stages[i] for i in span], obj)
                        for span, obj in zip(rule.spans, rule.objectives)]

    def gradients(self, rule, k, x, batch, *, learn_extra=True):
        return autograd_update(rule, k, x, batch)

    def exact(self):
        return weight_transport([l for ls in self._layers for l in ls])

    def stepping(self, rule, k):
        return mirrored_updates(self._layers[k])


class UpdatedRandomFeedback(RandomFeedback):
    """Errors travel through B, and B receives every increment of W (ΔB = ΔW)."""

    mode = "urf"


class SignFeedback(RandomFeedback):
    """Errors travel through sign(B) of a random B."""

    mode = "sign"
