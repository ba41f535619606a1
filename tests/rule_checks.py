"""Checks several test files run on different encoders: CLAPP's explicit rule against autograd."""
from __future__ import annotations

import copy

from biossl.config import TrainConfig
from biossl.rules import make_rule


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_explicit_equals_autograd(enc, make_objective, batch, must_reach: str) -> None:
    """simultaneous × explicit and simultaneous × bp on copies of ``enc`` (float64) give the
    same losses and the same gradients for every parameter, none of them zero, and some
    reach the parameter ``must_reach`` (e.g. the top stage's weight)."""
    def rule(transport):
        return make_rule("simultaneous", transport, copy.deepcopy(enc), make_objective,
                         TrainConfig(lr=1e-2, seed=3))

    ra, re = rule("bp"), rule("explicit")
    re.load_state_dict(ra.state_dict())
    for r in (ra, re):
        for o in r.optimizers:
            for group in o.param_groups:
                group["lr"] = 0.0   # compare the updates the optimizers would apply
    la, le = ra.step(batch), re.step(batch)
    for k in la:
        assert abs(la[k] - le[k]) < 1e-12, k
    grads_a = {n: p.grad for n, p in ra.named_parameters() if p.grad is not None}
    grads_e = {n: p.grad for n, p in re.named_parameters() if p.grad is not None}
    assert grads_a.keys() == grads_e.keys() and must_reach in grads_a
    for n in grads_a:
        assert rel(grads_e[n], grads_a[n]) < 1e-10, n
        assert grads_a[n].abs().sum() > 0, n


def assert_every_schedule_trains(enc, shapes, batch) -> None:
    """Every schedule, with bp and each predictive objective (clapp, infonce), takes a finite
    step that moves the encoder's weights."""
    import torch

    from biossl.objectives.clapp import ClappConfig, ClappObjective
    from biossl.objectives.infonce import InfoNCEConfig, InfoNCEObjective
    for obj in (lambda i: ClappObjective(ClappConfig(steps=3), shapes[i]),
                lambda i: InfoNCEObjective(InfoNCEConfig(steps=3, negatives=4), shapes[i])):
        for schedule in ("e2e", "greedy", "random", "simultaneous"):
            r = make_rule(schedule, "bp", copy.deepcopy(enc), obj, TrainConfig(lr=1e-2, epochs=5))
            r.start_epoch(0)
            before = [p.detach().clone() for p in r.encoder.parameters()]
            out = r.step(batch)
            assert torch.isfinite(torch.tensor(out["loss"])), schedule
            assert any(not torch.equal(a, b) for a, b in zip(before, r.encoder.parameters())), schedule
