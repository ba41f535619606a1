"""Layer-local simultaneous learning (CLAPP, GIM): every stage learns from its own loss.

Each stage i gets its own objective (``make_objective(i)``) and its own optimizer, and
sees its input detached: no error crosses from one stage to another. A step runs the
stages bottom to top; each stage's loss is its own graph, back-propagated once and then
freed before the next stage runs (CLAPP's published code chained all layer graphs in one
tensor, so each of its per-layer backward calls ran through every layer).

``mode: explicit`` replaces autograd inside the stage by the explicit plasticity rule
(:mod:`biossl.rules.clapp_explicit`): the objective returns the modulated error at the
stage output from γ and the dendritic signals, and the stage's weight update is the
Hebbian product of that error (through ρ′ and the max-pool's argmax) with the stored
pre-synaptic input. Both modes give the same update (tested in float64).

Registered as ``clapp`` and ``gim``: the rule is the same, only the objective differs
(``clapp`` predictive hinge, ``infonce``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from biossl.rules.base import Rule, check_finite, stage_optimizers
from biossl.rules.clapp_explicit import check_stage, forward_traced, local_gradients
from biossl.views.batch import ViewBatch


@dataclass
class LocalConfig:
    mode: Literal["autograd", "explicit"] = "autograd"
    """'autograd': backward of each stage's own loss over that stage only; 'explicit':
    CLAPP's plasticity rule computed from activities (needs an objective with an explicit
    form, e.g. clapp, and stages of one conv/linear layer + nonlinearity + max-pool)."""

    draws: Literal["lockstep", "per_stage"] = "lockstep"
    """The stage objectives' random draws (CLAPP's negatives and coins): 'lockstep' (default)
    — every stage's objective starts from the same seed, so at each step all stages make the
    same choice; 'per_stage' (the official CLAPP code) — each stage draws its own."""

    def validate(self) -> None:
        if self.mode not in ("autograd", "explicit"):
            raise ValueError(f"unknown mode {self.mode!r}; choose 'autograd' or 'explicit'")
        if self.draws not in ("lockstep", "per_stage"):
            raise ValueError(f"unknown draws {self.draws!r}; choose 'lockstep' or 'per_stage'")


class LayerLocal(Rule):
    """Simultaneous layer-local learning: one objective and one optimizer per stage."""

    Config = LocalConfig
    plausible_rule = {"i": True, "ii": True, "iii": True, "iv": True}

    def __init__(self, cfg: LocalConfig | None, encoder, make_objective, train):
        cfg = cfg if cfg is not None else LocalConfig()
        cfg.validate()
        super().__init__(cfg, encoder, make_objective, train)
        self.objectives = nn.ModuleList(make_objective(i) for i in range(len(encoder)))
        if cfg.draws == "per_stage":
            for i, obj in enumerate(self.objectives):
                obj.separate_draws(i)
        if cfg.mode == "explicit":
            for i, (stage, obj) in enumerate(zip(encoder.stages, self.objectives)):
                if not callable(getattr(obj, "explicit_backward", None)):
                    raise ValueError(f"mode 'explicit' needs an objective with an explicit form "
                                     f"(explicit_backward); {type(obj).__name__} has none — use "
                                     f"mode 'autograd'")
                check_stage(stage)
        self.optimizers = stage_optimizers(encoder, self.objectives, train)

    def step_stage(self, i: int, x: Tensor, batch: ViewBatch) -> tuple[Tensor, float]:
        """One update of stage i from its input x; returns (detached output, loss).

        Callable on its own: a stage needs only its input, so stages can run in
        separate processes without backward locking.
        """
        stage, obj, opt = self.encoder.stages[i], self.objectives[i], self.optimizers[i]
        x = x.detach()  # the boundary: nothing of this stage's error reaches stage i − 1
        opt.zero_grad(set_to_none=True)
        if self.cfg.mode == "explicit":
            h, trace = forward_traced(stage, x)
            loss, grad_h = obj.explicit_backward(h, batch)
            check_finite(loss, f"loss of stage {i}")
            local_gradients(trace, grad_h)
        else:
            h = stage(x)
            loss = obj(h, batch)
            check_finite(loss, f"loss of stage {i}")
            loss.backward()
        opt.step()
        return h.detach(), loss.item()

    def step(self, batch: ViewBatch) -> dict[str, float]:
        out: dict[str, float] = {}
        x = batch.x
        for i in range(len(self.encoder)):
            x, loss = self.step_stage(i, x, batch)
            out[f"loss/stage{i}"] = loss
        out["loss"] = sum(out.values()) / len(self.encoder)  # mean of the stage losses
        return out

    def diagnostics(self) -> dict[str, float]:
        """Each stage objective's own numbers (e.g. clapp's W_retro · W_predᵀ alignment)."""
        out = {}
        for i, obj in enumerate(self.objectives):
            diag = getattr(obj, "diagnostics", None)
            if callable(diag):
                out.update({f"stage{i}/{k}": v for k, v in diag().items()})
        return out
