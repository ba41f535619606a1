"""What every part of the rule axis shares: the plausibility conditions, optimizers, and
the check that a loss is finite."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from biossl.distributed.replicas import ONE_PROCESS, Replicas

CONDITIONS = ("i", "ii", "iii", "iv")
CONDITION_TEXT = {
    "i": "updates use only current pre- and (short-term-memory) post-synaptic activity",
    "ii": "error needs no normalisation, inner products or division",
    "iii": "no weight transport (feedback weights are not the forward weights)",
    "iv": "self-supervised",
}


class NonFiniteLoss(FloatingPointError):
    """Raised by rules when a loss becomes NaN/inf."""


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


def check_finite(loss: Tensor, what: str, replicas: Replicas = ONE_PROCESS) -> None:
    """NonFiniteLoss when ``loss`` is NaN/inf — on any data-parallel replica, so that all of
    them stop at the same point (one that went on would wait for the others forever)."""
    if not replicas.all_finite(loss):
        here = loss.item() if loss.numel() == 1 else loss.detach().flatten().tolist()
        raise NonFiniteLoss(f"{what} is {here}" if not torch.isfinite(loss).all()
                            else f"{what} is not finite on another replica (here {here})")


def plausibility(schedule_cls: type, transport_cls: type, objective_cls: type, objective_params) -> dict[str, bool]:
    """Conditions (i)–(iv) as the three parts declare them (the audit checks them).

    (i) holds when no error crosses a stage: the schedule gives every stage its own loss
    (``Schedule.local``) or the transport gives every stage a target for its own output
    (``Transport.local_targets``). (ii) holds when the objective's error needs no
    normalisation (``Objective.plausible_error``). (iii) fails when an error crosses a
    forward weight backwards: between stages (end-to-end schedules) for transports with
    ``transposes_between_stages``, inside the objective's head (``Objective.has_head``) for
    transports with ``transposes_in_head``, or in the objective itself
    (``Objective.uses_weight_transport``, e.g. CLAPP-s). biossl's encoders have one weight
    layer per stage, so a local error crosses none inside a stage. (iv) always: no labels
    reach a loss."""
    crosses_stages = not schedule_cls.local
    return {"i": schedule_cls.local or transport_cls.local_targets,
            "ii": objective_cls.plausible_error,
            "iii": not ((crosses_stages and transport_cls.transposes_between_stages)
                        or (objective_cls.has_head and transport_cls.transposes_in_head)
                        or objective_cls.uses_weight_transport(objective_params)),
            "iv": True}
