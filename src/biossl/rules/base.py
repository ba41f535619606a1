"""Credit-assignment rules: which parameters get which update, with which optimizer.

A rule owns the encoder, the objective modules it attaches (one on top for
end-to-end rules, one per stage for layer-local ones) and its optimizers. The trainer
only calls :meth:`Rule.start_epoch` and :meth:`Rule.step`; a rule never learns which
encoder, objective or view recipe it was given.

Because optimizers and the rule's random generator live in ``get_extra_state``,
``rule.state_dict()`` is a complete, resumable training state.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Iterable, Sequence

import torch
from torch import Tensor, nn

from biossl.encoders.base import StageStack
from biossl.objectives.base import Objective
from biossl.views.batch import ViewBatch

MakeObjective = Callable[[int], Objective]
"""Builds a fresh objective module attached to the output of stage ``i``."""

CONDITIONS = ("i", "ii", "iii", "iv")
CONDITION_TEXT = {
    "i": "updates use only current pre- and (short-term-memory) post-synaptic activity",
    "ii": "error needs no normalisation, inner products or division",
    "iii": "no weight transport (feedback weights are not the forward weights)",
    "iv": "self-supervised",
}


class NonFiniteLoss(FloatingPointError):
    """Raised by rules when a loss becomes NaN/inf."""


class Rule(nn.Module):
    Config: ClassVar[type | None] = None

    plausible_rule: ClassVar[dict[str, bool]] = {"i": False, "ii": True, "iii": False, "iv": True}
    """Which Bio-SSL plausibility conditions the rule's credit assignment satisfies. (ii) is
    True unless the rule itself normalises or divides; the objective decides the rest of
    (ii), and can remove (iii): see :func:`plausibility`."""

    def __init__(self, cfg, encoder: StageStack, make_objective: MakeObjective, train):
        super().__init__()
        self.cfg = cfg
        self.train_cfg = train
        self.encoder = encoder
        self.make_objective = make_objective
        self.optimizers: list[torch.optim.Optimizer] = []
        device = next(encoder.parameters()).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(train.seed) * 7919 + 17)
        self.epoch = 0

    # ---- the trainer's interface -----------------------------------------------------
    def num_epochs(self) -> int:
        """Epochs of the whole schedule (GLL: epochs per stage × stages)."""
        return self.train_cfg.epochs

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step(self, batch: ViewBatch) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def encoder_frozen_steps(self) -> int:
        """Steps at the start of training during which the rule leaves the encoder untouched
        (DTP's feedback warm-up); a run no longer than this trains nothing. 0 by default."""
        return 0

    def stage_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one per stage (forward weights only)."""
        return {f"stage{i}": list(s.parameters()) for i, s in enumerate(self.encoder.stages)}

    def diagnostics(self) -> dict[str, float]:
        """Extra per-stage numbers to log (angles, norm ratios); empty by default."""
        return {}

    # ---- state -----------------------------------------------------------------------
    def get_extra_state(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "generator": self.generator.get_state(), "epoch": self.epoch,
                **self.schedule_state()}

    def set_extra_state(self, state) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("checkpoint has a different number of optimizers than this rule")
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]
        self.load_schedule_state(state)

    def schedule_state(self) -> dict:
        """Extra schedule state to checkpoint (override with load_schedule_state)."""
        return {}

    def load_schedule_state(self, state: dict) -> None:
        pass


# ---- helpers shared by rules -----------------------------------------------------------
def stage_optimizers(encoder: StageStack, objectives: Sequence[nn.Module], train) -> list[torch.optim.Optimizer]:
    """One optimizer per stage over that stage's weights and its own objective's (head, W_pred):
    what every rule with per-stage losses (layer-wise, layer-local) updates together."""
    return [make_optimizer(list(s.parameters()) + list(o.parameters()), train)
            for s, o in zip(encoder.stages, objectives)]


def make_optimizer(params: Iterable[nn.Parameter], train) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("optimizer got no trainable parameters")
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    raise ValueError(f"unknown optimizer {train.optimizer!r}; choose adam, adamw or sgd")


def forward_views(fn: Callable[[Tensor], Tensor | Sequence[Tensor]], batch: ViewBatch,
                  stop_grad_first: bool):
    """Run ``fn`` on the batch; for a gradient-blocked pair objective the first view runs
    without autograd, so its backward is never built (Bio-SSL's code built it)."""
    if not (stop_grad_first and batch.kind == "pairs" and torch.is_grad_enabled()):
        return fn(batch.x)
    with torch.no_grad():
        a = fn(batch.x[: batch.n])
    b = fn(batch.x[batch.n:])
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    return [torch.cat([u, v]) for u, v in zip(a, b)]


def check_finite(loss: Tensor, what: str) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"{what} is {loss.item()}")


def plausibility(rule_cls: type, rule_params, objective_cls: type, objective_params) -> dict[str, bool]:
    """Conditions (i)–(iv) for a configured rule × objective pair.

    The rule says what its credit assignment meets (``plausible_for(params)`` when it
    depends on options such as the feedback mode). The objective can only take away:
    (ii) needs an error without normalisation/division (``plausible_error``: hinge, clapp;
    NT-Xent/InfoNCE fail it), and (iii) fails when the objective itself transports
    weights (``uses_weight_transport(params)``, e.g. CLAPP-s's transposed W_pred)."""
    pf = getattr(rule_cls, "plausible_for", None)
    out = dict(pf(rule_params) if callable(pf) else rule_cls.plausible_rule)
    out["ii"] = out["ii"] and getattr(objective_cls, "plausible_error", False)
    wt = getattr(objective_cls, "uses_weight_transport", None)
    if callable(wt) and wt(objective_params):
        out["iii"] = False
    return out
