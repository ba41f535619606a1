"""The rule axis: a schedule (which stages learn when) × a transport (how an error reaches
a weight). Each is one file plus one registry line here; see :mod:`biossl.rules.rule`."""
from __future__ import annotations

from biossl.registry import SCHEDULES, TRANSPORTS
from biossl.rules.rule import IncompatibleRule, MakeObjective, Rule
from biossl.rules.schedules import EndToEnd, Greedy, RandomStage, Schedule, Simultaneous
from biossl.rules.transports import (Backprop, Explicit, RandomFeedback, SignFeedback, Targets, Transport,
                                     UpdatedRandomFeedback)

SCHEDULES.register("e2e", EndToEnd, summary="end-to-end: one objective on the top stage, its error reaches every stage")
SCHEDULES.register("greedy", Greedy, summary="greedy layer-wise (GLL): stage by stage, each its own head; train.epochs split over the stages")
SCHEDULES.register("random", RandomStage, summary="random layer-wise (RLL): one uniformly drawn stage per step, each its own head")
SCHEDULES.register("simultaneous", Simultaneous, summary="every stage every step from its own loss, inputs detached (CLAPP, GIM)")

TRANSPORTS.register("bp", Backprop, summary="back-propagation through the forward weights (weight transport)")
TRANSPORTS.register("rf", RandomFeedback, summary="fixed random feedback weights B (feedback alignment)")
TRANSPORTS.register("urf", UpdatedRandomFeedback, summary="updated random feedback: B receives every increment of W")
TRANSPORTS.register("sign", SignFeedback, summary="sign(B) of a random B carries the error")
TRANSPORTS.register("targets", Targets, summary="difference target propagation: stage targets from learned inverses")
TRANSPORTS.register("explicit", Explicit, summary="CLAPP's explicit plasticity rule (Hebbian product, no autograd)")


def make_rule(schedule: str, transport: str, encoder, make_objective: MakeObjective, train,
              schedule_params=None, transport_params=None) -> Rule:
    """The rule ``schedule`` × ``transport`` over ``encoder`` (registered names; params are
    the components' Config instances, None for their defaults)."""
    sched_entry, trans_entry = SCHEDULES.get(schedule), TRANSPORTS.get(transport)
    if schedule_params is None and sched_entry.config is not None:
        schedule_params = sched_entry.config()
    if transport_params is None and trans_entry.config is not None:
        transport_params = trans_entry.config()
    return Rule(sched_entry.factory(schedule_params), trans_entry.factory(transport_params, train.seed),
                encoder, make_objective, train)


__all__ = ["Rule", "IncompatibleRule", "Schedule", "Transport", "make_rule", "SCHEDULES", "TRANSPORTS"]
