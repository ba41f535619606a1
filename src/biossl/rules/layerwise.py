"""Layer-wise learning (Bio-SSL): every stage has its own head, loss and optimizer.

The error travels one step only: head i → stage i (through Wᵀ, or the head's feedback
weight B for rf/urf/sign). The input of stage i is computed from the lower stages under
``torch.no_grad()``, so no autograd graph ever reaches another stage.

* ``gll`` (greedy): stages trained in order 0…L−1, ``train.epochs`` epochs each
  (``num_epochs()`` = epochs × L); lower stages frozen and run without autograd, upper
  stages not run at all.
* ``rll`` (random): every minibatch draws one stage uniformly (from the rule's
  checkpointed generator) and updates it; ``train.epochs`` is the whole schedule.

:meth:`Layerwise.stage_step` is one stage's complete update, callable on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from biossl.feedback import check_mode, feedback_generator, feedback_layers, mirrored_updates, to_feedback
from biossl.rules.base import Rule, check_finite, forward_views, stage_optimizers
from biossl.rules.bp import Feedback
from biossl.rules.diagnostics import FeedbackDiagnostics, GradientAngleProbe
from biossl.views.batch import ViewBatch


@dataclass
class LayerwiseConfig:
    feedback: Feedback = "bp"
    """How the one-step error travels head → stage: 'bp' (Wᵀ), 'rf' (fixed random B),
    'urf' (B receives every increment of W), 'sign' (sign(B))."""
    diagnostics_every: int = 100
    """Steps between gradient-angle measurements for the stage being trained (one extra
    forward + backward of that stage with B := W); 0: off. Nothing is measured for 'bp'."""

    def validate(self) -> None:
        check_mode(self.feedback)
        if self.diagnostics_every < 0:
            raise ValueError("diagnostics_every must be ≥ 0")


class Layerwise(FeedbackDiagnostics, Rule):
    """Shared machinery of GLL and RLL: per-stage heads, optimizers and the stage step."""

    Config: ClassVar[type] = LayerwiseConfig
    # The rule itself: one-step error with stored post-synaptic activity (i), no division
    # (ii, the objective decides), weight transport only for feedback 'bp' (see plausible_for).
    plausible_rule = {"i": True, "ii": True, "iii": False, "iv": True}

    def __init__(self, cfg, encoder, make_objective, train):
        cfg = cfg if cfg is not None else self.Config()
        super().__init__(cfg, encoder, make_objective, train)
        self.feedback = check_mode(cfg.feedback)
        self.objectives = nn.ModuleList(make_objective(i) for i in range(len(encoder)))
        gen = feedback_generator(train.seed)
        to_feedback(self.encoder, self.feedback, gen)
        for obj in self.objectives:
            to_feedback(obj, self.feedback, gen)
        self._layers = [feedback_layers(s, o) for s, o in zip(encoder.stages, self.objectives)]
        self.probe = GradientAngleProbe(cfg.diagnostics_every, [l for ls in self._layers for l in ls])
        self.optimizers = stage_optimizers(encoder, self.objectives, train)

    @classmethod
    def plausible_for(cls, cfg) -> dict[str, bool]:
        return {**cls.plausible_rule, "iii": getattr(cfg, "feedback", "bp") != "bp"}

    def stage_input(self, batch: ViewBatch, i: int) -> ViewBatch:
        """The batch as stage ``i`` sees it: lower stages run without autograd (frozen)."""
        if i == 0:
            return batch
        # One view at a time: the frozen stages' transient (pre-pool) maps are the step's
        # memory peak, and nothing of them is kept, so halving the rows halves the peak.
        parts = batch.x.split(batch.n) if batch.kind == "pairs" else (batch.x,)
        with torch.no_grad():
            x = torch.cat([self.encoder.run(p, 0, i) for p in parts])
        return ViewBatch(x, batch.n, batch.kind, batch.grid)

    def stage_step(self, i: int, batch: ViewBatch) -> float:
        """Update stage ``i`` and its head on ``batch``; returns the stage's loss."""
        stage, obj, opt = self.encoder.stages[i], self.objectives[i], self.optimizers[i]
        inp = self.stage_input(batch, i)

        def loss_fn() -> torch.Tensor:
            return obj(forward_views(stage, inp, obj.stop_grad_first), batch)

        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        check_finite(loss, f"loss of stage {i}")
        loss.backward()
        if self.probe.tick():
            self.probe.measure({f"stage{i}": list(stage.parameters()), f"head{i}": list(obj.parameters())},
                               loss_fn)
        with mirrored_updates(self._layers[i]):
            opt.step()
        return loss.item()


class GLL(Layerwise):
    """Greedy layer-wise learning: stage 0 for ``epochs`` epochs, then stage 1, …"""

    def __init__(self, cfg, encoder, make_objective, train):
        super().__init__(cfg, encoder, make_objective, train)
        self.stage = 0

    def num_epochs(self) -> int:
        return self.train_cfg.epochs * len(self.encoder)

    def start_epoch(self, epoch: int) -> None:
        if not 0 <= epoch < self.num_epochs():
            raise ValueError(f"epoch {epoch} is outside GLL's schedule of {self.num_epochs()} epochs "
                             f"({self.train_cfg.epochs} per stage × {len(self.encoder)} stages)")
        self.epoch = epoch
        self.stage = epoch // self.train_cfg.epochs

    def step(self, batch: ViewBatch) -> dict[str, float]:
        loss = self.stage_step(self.stage, batch)
        return {"loss": loss, f"loss/stage{self.stage}": loss, "stage": float(self.stage)}

    def schedule_state(self) -> dict:
        return {**super().schedule_state(), "stage": self.stage,
                "stage_epoch": self.epoch % self.train_cfg.epochs}

    def load_schedule_state(self, state: dict) -> None:
        super().load_schedule_state(state)
        self.stage = state["stage"]


class RLL(Layerwise):
    """Random layer-wise learning: each minibatch updates one uniformly drawn stage."""

    def draw_stage(self) -> int:
        g = self.generator
        return int(torch.randint(len(self.encoder), (1,), generator=g, device=g.device).item())

    def step(self, batch: ViewBatch) -> dict[str, float]:
        i = self.draw_stage()
        loss = self.stage_step(i, batch)
        return {"loss": loss, f"loss/stage{i}": loss, "stage": float(i)}
