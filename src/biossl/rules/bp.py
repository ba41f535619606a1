"""End-to-end training: one objective on the top stage, one optimizer.

``bp`` back-propagates with the forward weights (the baseline). With ``feedback`` set to
``rf`` / ``urf`` / ``sign`` (or the rules of those names, ``fa`` an alias of ``rf``) the
encoder and the head are converted to feedback layers: the error still travels the whole
network, but every layer sends it down through its feedback weight B instead of Wᵀ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from biossl.feedback import check_mode, feedback_generator, feedback_layers, mirrored_updates, to_feedback
from biossl.rules.base import Rule, check_finite, forward_views, make_optimizer
from biossl.rules.diagnostics import FeedbackDiagnostics, GradientAngleProbe
from biossl.views.batch import ViewBatch

Feedback = Literal["bp", "rf", "urf", "sign"]


@dataclass
class BPConfig:
    feedback: Feedback = "bp"
    """How the error travels down: 'bp' (Wᵀ), 'rf' (fixed random B), 'urf' (B receives
    every increment of W), 'sign' (sign(B))."""
    diagnostics_every: int = 100
    """Steps between gradient-angle measurements (one extra forward + backward with B := W
    on that step's batch); 0: off. Nothing is measured for feedback 'bp'."""

    def validate(self) -> None:
        check_mode(self.feedback)
        if self.diagnostics_every < 0:
            raise ValueError("diagnostics_every must be ≥ 0")


@dataclass
class FeedbackE2EConfig:
    diagnostics_every: int = 100
    """Steps between gradient-angle measurements (one extra forward + backward with B := W
    on that step's batch); 0: off."""

    def validate(self) -> None:
        if self.diagnostics_every < 0:
            raise ValueError("diagnostics_every must be ≥ 0")


class BP(FeedbackDiagnostics, Rule):
    """End-to-end back-propagation of the objective on the top stage (the baseline)."""

    Config: ClassVar[type] = BPConfig
    fixed_feedback: ClassVar[str | None] = None
    """Set by the rf/urf/sign rules: their feedback mode (their Config has no such key)."""
    # (ii) is decided by the objective (rules.base.plausibility): BP adds no normalisation.
    # (i) fails: the error crosses every layer; (iii) fails: Wᵀ carries it down.
    plausible_rule = {"i": False, "ii": True, "iii": False, "iv": True}

    def __init__(self, cfg, encoder, make_objective, train):
        cfg = cfg if cfg is not None else self.Config()
        super().__init__(cfg, encoder, make_objective, train)
        self.feedback = check_mode(self.fixed_feedback or getattr(cfg, "feedback", "bp"))
        self.objective = make_objective(len(encoder) - 1)
        gen = feedback_generator(train.seed)
        to_feedback(self.encoder, self.feedback, gen)
        to_feedback(self.objective, self.feedback, gen)
        self._layers = feedback_layers(self.encoder, self.objective)
        self.probe = GradientAngleProbe(cfg.diagnostics_every, self._layers)
        self.optimizers = [make_optimizer(list(encoder.parameters()) + list(self.objective.parameters()), train)]

    @classmethod
    def plausible_for(cls, cfg) -> dict[str, bool]:
        """Conditions the rule meets with this config: feedback other than 'bp' removes
        weight transport (iii); the error still crosses every layer, so (i) fails."""
        mode = cls.fixed_feedback or getattr(cfg, "feedback", "bp")
        return {**cls.plausible_rule, "iii": mode != "bp"}

    def _loss(self, batch: ViewBatch) -> torch.Tensor:
        top = forward_views(lambda x: self.encoder.run(x), batch, self.objective.stop_grad_first)
        return self.objective(top, batch)

    def step(self, batch: ViewBatch) -> dict[str, float]:
        opt = self.optimizers[0]
        opt.zero_grad(set_to_none=True)
        loss = self._loss(batch)
        check_finite(loss, "loss")
        loss.backward()
        if self.probe.tick():
            groups = {**self.stage_groups(), "head": list(self.objective.parameters())}
            self.probe.measure(groups, lambda: self._loss(batch))
        with mirrored_updates(self._layers):
            opt.step()
        return {"loss": loss.item()}


def _e2e_feedback_rule(mode: str, doc: str) -> type[BP]:
    """A BP subclass with a fixed feedback mode (so its config cannot contradict its name)."""
    return type(f"E2E_{mode.upper()}", (BP,), {
        "__doc__": doc, "Config": FeedbackE2EConfig, "fixed_feedback": mode,
        "plausible_rule": {"i": False, "ii": True, "iii": True, "iv": True},
        "__module__": __name__})


E2ERandomFeedback = _e2e_feedback_rule("rf", "End-to-end training with fixed random feedback B (feedback alignment).")
E2EUpdatedRandomFeedback = _e2e_feedback_rule("urf", "End-to-end training with updated random feedback (ΔB = ΔW).")
E2ESignFeedback = _e2e_feedback_rule("sign", "End-to-end training whose backward uses sign(B) of a random B.")
