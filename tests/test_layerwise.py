"""The rule axis, schedule × transport, on tiny encoders: which parameters each pair may move
per step, where autograd may reach, the greedy and random schedules, feedback weights,
angle diagnostics, checkpoints, the trainer's resume and loud failures."""
from __future__ import annotations

import ast
import copy
import inspect
import json
import os
from pathlib import Path

import pytest
import torch

from biossl.config import ConfigError, TrainConfig, apply_overrides, build_config
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.feedback import FeedbackLayer, feedback_layers, random_feedback
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.registry import SCHEDULES, TRANSPORTS, load_all
from biossl.rules import IncompatibleRule, make_rule
from biossl.rules.base import plausibility
from biossl.rules.diagnostics import angle_deg
from biossl.rules.schedules import EndToEnd, Greedy, RandomStage
from biossl.rules.transports import Backprop, RandomFeedback, Targets, UpdatedRandomFeedback
from biossl.rules.transports.feedback import FeedbackConfig
from biossl.seeds import generator
from biossl.views.batch import ViewBatch

load_all()

SCHEDULE_NAMES = ["e2e", "greedy", "random", "simultaneous"]
TRANSPORT_NAMES = ["bp", "rf", "urf", "sign", "targets", "explicit"]
FEEDBACK = ["rf", "urf", "sign"]


def tiny_rule(schedule: str, transport: str = "bp", seed: int = 0, epochs: int = 6, grad_block: bool = True,
              diagnostics_every: int = 0, objective: str = "hinge", weight_seed: int | None = None):
    """3 conv stages on 1×12×12 inputs; epochs=6 gives greedy 2 epochs per stage."""
    torch.manual_seed(seed if weight_seed is None else weight_seed)
    enc = convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1)
    shapes = enc.out_shapes((1, 12, 12))
    if objective == "hinge":
        obj_cfg = HingeConfig(dim=8, grad_block=grad_block, negatives=3)
        make = lambda i: HingeObjective(obj_cfg, shapes[i])  # noqa: E731
    else:
        make = lambda i: ClappObjective(ClappConfig(), shapes[i])  # noqa: E731
    entry = TRANSPORTS.get(transport)
    params = entry.config(diagnostics_every=diagnostics_every) if entry.config is not None else None
    train = TrainConfig(epochs=epochs, batch_size=6, lr=1e-2, seed=seed)
    return make_rule(schedule, transport, enc, make, train, transport_params=params)


def batch(seed: int = 0, n: int = 6) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    views = torch.cat([x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)])
    return ViewBatch(views, n, "pairs")


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def segment_params(rule, k: int) -> list[torch.nn.Parameter]:
    """Forward weights of segment k's stages and its objective (what its optimizer owns)."""
    return [p for i in rule.spans[k] for p in rule.encoder.stages[i].parameters()] + \
        list(rule.objectives[k].parameters())


def assert_same_tensors(a: dict, b: dict) -> None:
    """Same keys (a missing or extra entry fails, not truncates) and equal tensors."""
    assert a.keys() == b.keys()
    tensors = [k for k in a if torch.is_tensor(a[k])]
    assert tensors
    for k in tensors:
        assert torch.equal(a[k], b[k]), k


def assert_b_mirrors_w(layers, b0: dict, w0: dict) -> None:
    """URF: B − W is still its initial offset (B received exactly W's increments)."""
    for l in layers:
        torch.testing.assert_close(l.feedback - l.weight.detach(), b0[id(l)] - w0[id(l)], rtol=0, atol=1e-6)


# ---- the axis: registries, every pair ------------------------------------------------------
def test_each_schedule_and_transport_is_one_file_and_one_registry_line():
    assert SCHEDULES.names() == sorted(SCHEDULE_NAMES)
    assert TRANSPORTS.names() == sorted(TRANSPORT_NAMES)
    import biossl.rules as rules_pkg
    init = Path(inspect.getsourcefile(rules_pkg))
    calls = {"SCHEDULES": [], "TRANSPORTS": []}
    for node in ast.walk(ast.parse(init.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
                and isinstance(node.func.value, ast.Name) and node.func.value.id in calls):
            calls[node.func.value.id].append(node.args[0].value)
    # one register line per name, all of them in rules/__init__.py
    assert sorted(calls["SCHEDULES"]) == sorted(SCHEDULE_NAMES)
    assert sorted(calls["TRANSPORTS"]) == sorted(TRANSPORT_NAMES)
    # each lives in its axis' folder, and every file there (but base) holds a registered one
    for registry, folder in ((SCHEDULES, "schedules"), (TRANSPORTS, "transports")):
        files = {Path(inspect.getsourcefile(e.factory)) for e in registry.entries()}
        assert {f.parent for f in files} == {init.parent / folder}
        present = {f for f in (init.parent / folder).glob("*.py") if f.name not in ("__init__.py", "base.py")}
        assert files == present
    # a schedule is one idea per file
    assert len({inspect.getsourcefile(e.factory) for e in SCHEDULES.entries()}) == 4


def expected_segments(schedule: str, out: dict) -> list[int]:
    """The segments (= stages for local schedules) a step of ``schedule`` trains."""
    return {"e2e": [0], "greedy": [0], "random": [int(out.get("stage", -1))], "simultaneous": [0, 1, 2]}[schedule]


@pytest.mark.parametrize("transport", TRANSPORT_NAMES)
@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_every_pair_builds_and_steps_or_is_refused_by_name(schedule, transport):
    """A pair either trains (and moves exactly the parameters its schedule names, with the
    error only inside each trained segment) or is refused, naming both parts and the reason."""
    objective = "clapp" if transport == "explicit" else "hinge"   # explicit needs an explicit form
    if schedule == "e2e" and transport == "explicit":
        with pytest.raises(IncompatibleRule, match=r"schedule e2e × transport explicit cannot work: .*own "
                                                   r"objective.*Use schedule simultaneous, greedy or random"):
            tiny_rule(schedule, transport, objective=objective)
        return
    rule = tiny_rule(schedule, transport, objective=objective)
    assert len(rule.spans) == (1 if schedule == "e2e" else 3) == len(rule.objectives) == \
        len([o for o in rule.optimizers if o is not getattr(rule.transport, "optimizer", None)])
    rule.start_epoch(0)
    before = snapshot(rule)
    out = rule.step(batch())
    assert torch.isfinite(torch.tensor(out["loss"]))
    moved = changed(before, snapshot(rule))
    segs = expected_segments(schedule, out)
    stages = [i for k in segs for i in rule.spans[k]]
    allowed = {k for k in before if k.startswith(tuple(f"encoder.stages.{i}." for i in stages)
                                                 + tuple(f"objectives.{k}." for k in segs) + ("transport.",))}
    assert moved <= allowed, moved - allowed
    for i in stages:                                        # every trained stage's weight moved
        assert f"encoder.stages.{i}.0.weight" in moved
    for k in segs:                                          # … and its objective learned
        assert any(m.startswith(f"objectives.{k}.") for m in moved)
    fb = {m for m in moved if m.endswith(".feedback")}
    if transport == "urf":                                  # B follows W wherever W moved
        assert fb == {m[: -len("weight")] + "feedback" for m in moved
                      if m.endswith(".weight") and m[: -len("weight")] + "feedback" in before}
        assert fb
    else:
        assert not fb
    # the error never left a trained segment: exactly the trained segments hold gradients
    for k in range(len(rule.spans)):
        for p in segment_params(rule, k):
            if p.requires_grad and k not in segs:
                assert p.grad is None
    for k in segs:
        assert all(p.grad is not None for p in rule.encoder.stages[rule.spans[k][-1]].parameters())
    if transport == "targets" and schedule == "e2e":        # its inverses learn, for stages 1 and 2
        assert {m.split(".")[3] for m in moved if m.startswith("transport.inverses.0.")} == {"0", "1"}


@pytest.mark.parametrize("schedule", ["greedy", "random", "simultaneous"])
def test_explicit_with_a_headed_objective_is_refused_naming_it(schedule):
    with pytest.raises(ValueError, match="transport explicit needs an objective with an explicit form "
                                         r"\(clapp\); HingeObjective has none — use transport bp"):
        tiny_rule(schedule, "explicit", objective="hinge")


@pytest.mark.parametrize("schedule,transport,epochs,match", [
    ("e2e", "explicit", 3, "schedule e2e × transport explicit cannot work"),
    ("greedy", "explicit", 3, "schedule greedy × transport explicit: transport explicit needs .*HingeObjective"),
    ("greedy", "rf", 4, "schedule greedy splits train.epochs over the 3 stages, but 4 epochs .* train.epochs=3")])
def test_the_assembler_turns_refusals_into_config_errors(schedule, transport, epochs, match):
    from biossl.assemble import build_rule
    cfg = build_config(apply_overrides({}, [f"schedule.name={schedule}", f"transport.name={transport}",
                                            f"train.epochs={epochs}"]))
    enc = convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1)
    shapes = enc.out_shapes((1, 12, 12))
    with pytest.raises(ConfigError, match=match):
        build_rule(cfg, enc, lambda i: HingeObjective(HingeConfig(dim=8), shapes[i]))


# ---- greedy (GLL) ----------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["bp", "rf", "urf", "sign"])
def test_greedy_step_changes_only_current_stage_and_its_head(transport):
    rule = tiny_rule("greedy", transport)
    rule.start_epoch(2)                                    # 6 epochs over 3 stages → stage 1
    assert rule.schedule.stage == 1
    layers = feedback_layers(rule.encoder.stages[1], rule.objectives[1])
    b0 = {id(l): l.feedback.clone() for l in layers}
    w0 = {id(l): l.weight.detach().clone() for l in layers}
    before = snapshot(rule)
    out = rule.step(batch())
    after = snapshot(rule)
    moved = changed(before, after)
    allowed = {k for k in before if k.startswith(("encoder.stages.1.", "objectives.1."))}
    assert moved and moved <= allowed
    assert any(k.startswith("encoder.stages.1.") and k.endswith("weight") for k in moved)
    assert any(k.startswith("objectives.1.") for k in moved)
    if transport == "urf":
        assert any(k.endswith("feedback") for k in moved)  # B followed W
        assert_b_mirrors_w(layers, b0, w0)
    else:
        assert not any(k.endswith("feedback") for k in moved)
    assert (len(layers) == 2) == (transport != "bp")
    assert set(out) >= {"loss", "loss/stage1"} and out["stage"] == 1.0
    # no gradient ever reached another stage or head
    for i, (s, o) in enumerate(zip(rule.encoder.stages, rule.objectives)):
        for p in list(s.parameters()) + list(o.parameters()):
            assert (p.grad is not None) == (i == 1)


def test_greedy_lower_stages_run_without_autograd_and_upper_not_at_all():
    rule = tiny_rule("greedy", "rf")
    rule.start_epoch(2)
    calls = {0: [], 1: [], 2: []}
    hooks = [s.register_forward_hook(lambda m, i, o, k=k: calls[k].append((torch.is_grad_enabled(), o.grad_fn)))
             for k, s in enumerate(rule.encoder.stages)]
    inp = rule.frozen_input(1, batch())
    assert not inp.requires_grad and inp.grad_fn is None
    assert inp.shape[0] == 12
    rule.step(batch())
    for h in hooks:
        h.remove()
    assert calls[0] and all(not en and fn is None for en, fn in calls[0])   # frozen: no graph
    assert any(en and fn is not None for en, fn in calls[1])                # trained stage
    assert calls[2] == []                                                   # upper: not run


def test_greedy_splits_train_epochs_over_the_stages():
    rule = tiny_rule("greedy", epochs=9)
    assert rule.num_epochs() == 9
    assert [(rule.start_epoch(e), rule.schedule.stage)[1] for e in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="epoch 9 is outside this run's 9 epochs"):
        rule.start_epoch(9)
    with pytest.raises(ValueError, match=r"8 epochs do not split evenly; use a multiple of 3, e\.g\. "
                                         r"train\.epochs=9"):
        tiny_rule("greedy", epochs=8)


def test_greedy_trains_the_stages_in_order_switching_per_epoch():
    rule = tiny_rule("greedy", "sign", epochs=3)
    for epoch in range(3):
        rule.start_epoch(epoch)
        for k in range(2):
            before = snapshot(rule)
            out = rule.step(batch(k))
            moved = changed(before, snapshot(rule))
            assert out["stage"] == float(epoch) and f"loss/stage{epoch}" in out
            assert f"encoder.stages.{epoch}.0.weight" in moved
            assert all(m.startswith((f"encoder.stages.{epoch}.", f"objectives.{epoch}.")) for m in moved)


def test_greedy_checkpoint_resumes_mid_stack():
    rule = tiny_rule("greedy", "urf", epochs=6)
    rule.start_epoch(3)
    rule.step(batch(1))
    state = copy.deepcopy(rule.state_dict())
    fresh = tiny_rule("greedy", "urf", epochs=6)
    assert fresh.schedule.stage == 0
    fresh.load_state_dict(state)
    assert (fresh.schedule.stage, fresh.epoch) == (1, 3)
    assert state["_extra_state"]["schedule"] == {"stage": 1} and state["_extra_state"]["epoch"] == 3
    assert_same_tensors(fresh.state_dict(), rule.state_dict())
    # the next step is identical from the restored state (optimizer state included)
    rule.step(batch(2)), fresh.step(batch(2))
    assert_same_tensors(fresh.state_dict(), rule.state_dict())


# ---- random (RLL) ----------------------------------------------------------------------------
def cheap_random_rule(seed: int):
    """RLL on 1×1 maps with one channel per stage: a step costs little, so thousands fit."""
    torch.manual_seed(seed)
    enc = convstack(ConvStackConfig(channels=[1, 1, 1], pool=[False] * 3, kernel=1), 1)
    shapes = enc.out_shapes((1, 1, 1))
    return make_rule("random", "bp", enc, lambda i: HingeObjective(HingeConfig(dim=1), shapes[i]),
                     TrainConfig(epochs=1, optimizer="sgd", lr=1e-3, seed=seed))


def drawn(rule, steps: int, b: ViewBatch) -> list[int]:
    return [int(rule.step(b)["stage"]) for _ in range(steps)]


def test_random_stage_draws_are_uniform():
    b = ViewBatch(torch.randn(4, 1, 1, 1, generator=torch.Generator().manual_seed(0)), 2, "pairs")
    draws = torch.tensor(drawn(cheap_random_rule(3), 3000, b))
    counts = torch.bincount(draws, minlength=3).double()
    assert counts.numel() == 3
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum().item()
    assert chi2 < 13.82                                   # df = 2, p = 0.001


def test_random_step_updates_only_the_drawn_stage():
    rule = tiny_rule("random", "rf", seed=1)
    seen = set()
    for k in range(8):
        before = snapshot(rule)
        out = rule.step(batch(k))
        i = int(out["stage"])
        seen.add(i)
        moved = changed(before, snapshot(rule))
        assert moved and all(m.startswith((f"encoder.stages.{i}.", f"objectives.{i}.")) for m in moved)
        assert f"encoder.stages.{i}.0.weight" in moved
        assert f"loss/stage{i}" in out
    assert len(seen) >= 2


def test_random_draws_are_reproducible_and_round_trip_through_checkpoint():
    b = batch()
    rule = tiny_rule("random", seed=5)
    first = drawn(rule, 7, b)
    state = copy.deepcopy(rule.state_dict())
    expected = drawn(rule, 30, b)
    fresh = tiny_rule("random", seed=5)
    fresh.load_state_dict(state)
    assert drawn(fresh, 30, b) == expected
    other = tiny_rule("random", seed=5)
    assert drawn(other, 30, b) != expected                 # the state mattered
    # the draws come from the run seed's own stream, not from torch's global generator
    again = tiny_rule("random", seed=5)
    seq = []
    for k in range(37):
        torch.manual_seed(1000 + k)
        seq.append(int(again.step(b)["stage"]))
    assert seq == first + expected
    assert drawn(tiny_rule("random", seed=6), 37, b) != first + expected


# ---- feedback transports ---------------------------------------------------------------------
@pytest.mark.parametrize("transport", FEEDBACK)
def test_e2e_feedback_transports_convert_everything_and_train_all_stages(transport):
    rule = tiny_rule("e2e", transport)
    layers = feedback_layers(rule)
    assert len(layers) == 4 and all(l.mode == transport for l in layers)
    b0 = {id(l): l.feedback.clone() for l in layers}
    w0 = {id(l): l.weight.detach().clone() for l in layers}
    before = snapshot(rule)
    rule.step(batch())
    moved = changed(before, snapshot(rule))
    for i in range(3):
        assert f"encoder.stages.{i}.0.weight" in moved
    if transport == "urf":
        assert_b_mirrors_w(layers, b0, w0)
        assert all(not torch.equal(l.feedback, b0[id(l)]) for l in layers)
    else:                                                  # rf and sign keep B fixed
        assert all(torch.equal(l.feedback, b0[id(l)]) for l in layers)


@pytest.mark.parametrize("schedule", ["e2e", "greedy", "simultaneous"])
@pytest.mark.parametrize("transport", FEEDBACK)
def test_feedback_weights_are_not_the_forward_weights(schedule, transport):
    """B is its own tensor, far from W, drawn from the run seed's 'feedback' stream (so it
    does not depend on how W was drawn, beyond W's norm)."""
    rule = tiny_rule(schedule, transport, seed=2)
    layers = feedback_layers(rule)
    assert len(layers) == (4 if schedule == "e2e" else 6)
    for l in layers:
        assert l.feedback.data_ptr() != l.weight.data_ptr()
        assert not torch.equal(l.feedback, l.weight.detach())
        assert angle_deg([l.feedback], [l.weight]) > 45.0   # independent draws: ≈ 90°
    first = rule.encoder.stages[0][0]                      # the first layer converted
    torch.testing.assert_close(first.feedback, random_feedback(first.weight, generator(2, "feedback")),
                               rtol=0, atol=0)
    # other forward weights, same run seed: the same B directions
    other = feedback_layers(tiny_rule(schedule, transport, seed=2, weight_seed=9))
    for l, m in zip(layers, other):
        assert not torch.equal(l.weight, m.weight)
        torch.testing.assert_close(l.feedback / l.feedback.norm(), m.feedback / m.feedback.norm())
    # another run seed: other B
    assert not torch.equal(feedback_layers(tiny_rule(schedule, transport, seed=3, weight_seed=2))[0].feedback,
                           layers[0].feedback)


@pytest.mark.parametrize("schedule,k", [("e2e", 0), ("greedy", 1)])
def test_sign_sends_the_error_through_sign_of_b(schedule, k):
    """sign's update equals rf's with B replaced by sign(B) (same W, same B stream)."""
    b = batch()
    sign, rf = tiny_rule(schedule, "sign"), tiny_rule(schedule, "rf")
    for s, r in zip(feedback_layers(sign), feedback_layers(rf), strict=True):
        assert torch.equal(s.weight, r.weight) and torch.equal(s.feedback, r.feedback)
        assert not torch.equal(s.feedback.sign(), s.feedback)
    grads = {}
    for name, rule in (("sign", sign), ("rf", rf)):
        rule.transport.gradients(rule, k, rule.frozen_input(k, b), b)
        grads[name] = [p.grad.clone() for p in segment_params(rule, k)]
    bottom = list(sign.encoder.stages[sign.spans[k].start].parameters())
    n = len(bottom)
    # the bottom stage's error crossed a B (the head's, and the upper stages' end-to-end)
    assert not all(torch.allclose(a, c) for a, c in zip(grads["sign"][:n], grads["rf"][:n]))
    for l in feedback_layers(rf):
        l.feedback.copy_(l.feedback.sign())
    for p in rf.parameters():
        p.grad = None
    rf.transport.gradients(rf, k, rf.frozen_input(k, b), b)
    for a, p in zip(grads["sign"], segment_params(rf, k)):
        torch.testing.assert_close(a, p.grad)
    # and a step leaves sign's B where it was
    b0 = [l.feedback.clone() for l in feedback_layers(sign)]
    sign.start_epoch(2 if schedule == "greedy" else 0)
    sign.step(b)
    assert all(torch.equal(l.feedback, x) for l, x in zip(feedback_layers(sign), b0))


def test_simultaneous_urf_trains_every_stage_each_from_its_own_loss():
    b = batch()
    rule = tiny_rule("simultaneous", "urf")
    ref = copy.deepcopy(rule)                              # the same state, before the step
    layers = feedback_layers(rule)
    assert len(layers) == 6
    b0 = {id(l): l.feedback.clone() for l in layers}
    w0 = {id(l): l.weight.detach().clone() for l in layers}
    before = snapshot(rule)
    out = rule.step(b)
    moved = changed(before, snapshot(rule))
    for i in range(3):                                     # every stage and every head, every step
        assert f"encoder.stages.{i}.0.weight" in moved and f"encoder.stages.{i}.0.feedback" in moved
        assert any(m.startswith(f"objectives.{i}.") and m.endswith("weight") for m in moved)
        assert any(m.startswith(f"objectives.{i}.") and m.endswith("feedback") for m in moved)
    assert_b_mirrors_w(layers, b0, w0)
    assert out["loss"] == pytest.approx(sum(out[f"loss/stage{i}"] for i in range(3)) / 3)
    # each stage's update is the one its own loss alone gives, on the lower stages' output,
    # and that loss's error reaches nothing outside its stage and head
    for k in range(3):
        for p in ref.parameters():
            p.grad = None
        u = ref.transport.gradients(ref, k, ref.frozen_input(k, b), b)
        assert u.loss == pytest.approx(out[f"loss/stage{k}"], rel=1e-6)
        own = {id(p) for p in segment_params(ref, k)}
        assert all(p.grad is None for p in ref.parameters() if id(p) not in own)
        for p, q in zip(segment_params(ref, k), segment_params(rule, k), strict=True):
            torch.testing.assert_close(q.grad, p.grad)


# ---- angle diagnostics -----------------------------------------------------------------------
def test_e2e_rf_gradient_is_not_bp_but_weight_gradient_form_is():
    """Top stage: its weight gradient needs only δ at its output, which RF changes only
    through the head's B; lower stages see δ through B of every layer above."""
    rule = tiny_rule("e2e", "rf", diagnostics_every=1)
    rule.step(batch())
    d = rule.diagnostics()
    for key in ("angle/stage0", "angle/stage1", "angle/stage2", "angle/head"):
        assert key in d
    assert d["angle/head"] < 1e-3                         # head weight grad has no feedback in it
    assert d["angle/stage0"] > 1.0                        # a random B is not W
    assert any(k.startswith("fb_norm_ratio/encoder.stages.0") for k in d)


def test_true_gradient_measurement_equals_plain_autograd_on_unconverted_copy():
    plain = tiny_rule("e2e", "bp")
    rule = tiny_rule("e2e", "rf", diagnostics_every=1)
    for l in feedback_layers(rule):                       # same W, B := W by copy
        l.feedback.copy_(l.weight.detach())
    plain.optimizers[0].zero_grad()
    b = batch()
    plain.objectives[0](plain.encoder.run(b.x), b).backward()
    rule.step(b)
    for key in ("angle/stage0", "angle/stage1", "angle/stage2"):
        assert rule.diagnostics()[key] < 1e-3
    # and the rule's own gradient then equals plain BP's (same weights before the step)
    ref = [p.grad for p in plain.encoder.stages[0].parameters()]
    rule2 = tiny_rule("e2e", "rf")
    for l in feedback_layers(rule2):
        l.feedback.copy_(l.weight.detach())
    rule2.optimizers[0].zero_grad()
    rule2.transport.gradients(rule2, 0, b.x, b)
    for a, r in zip(rule2.encoder.stages[0].parameters(), ref, strict=True):
        torch.testing.assert_close(a.grad, r)


def test_greedy_rf_diagnostics_per_stage():
    rule = tiny_rule("greedy", "rf", diagnostics_every=2)
    rule.start_epoch(0)
    rule.step(batch(0))
    d = rule.diagnostics()
    assert d["angle/stage0"] > 1.0 and d["angle/head0"] < 1e-3
    assert not any(k in d for k in ("angle/stage1", "angle/head1", "angle/head"))
    assert [p.steps for p in rule.probes] == [1, 0, 0]     # one probe per segment
    rule.step(batch(1))                                    # not measured (interval 2)
    assert rule.diagnostics()["angle/stage0"] == d["angle/stage0"]
    # transport 'bp': nothing to measure, no feedback layers
    bp = tiny_rule("greedy", "bp", diagnostics_every=1)
    bp.start_epoch(0)
    bp.step(batch(0))
    assert bp.diagnostics() == {}


@pytest.mark.parametrize("schedule,k,groups", [("e2e", 0, ["stage0", "stage1", "stage2", "head"]),
                                               ("greedy", 1, ["stage1", "head1"]),
                                               ("simultaneous", 2, ["stage2", "head2"])])
def test_angles_measure_a_segment_without_stepping(schedule, k, groups):
    rule = tiny_rule(schedule, "urf")
    before = snapshot(rule)
    a = rule.angles(batch(), k)
    assert sorted(a) == sorted(f"angle/{g}" for g in groups)
    assert a[f"angle/{groups[0]}"] > 1.0 and a[f"angle/{groups[-1]}"] < 1e-3
    assert changed(before, snapshot(rule)) == set()      # no step, and B learned nothing
    assert all(p.grad is None for p in rule.parameters())
    assert all(p.steps == 0 for p in rule.probes)
    exact = tiny_rule(schedule, "bp").angles(batch(), k)  # bp is its own reference
    assert a.keys() == exact.keys() and all(v < 1e-3 for v in exact.values())


# ---- configs and loud failures ---------------------------------------------------------------
def test_unknown_names_and_keys_are_refused_with_the_fix():
    with pytest.raises(KeyError, match="unknown transport 'nope'; registered transports: bp, explicit, rf, "
                                       "sign, targets, urf"):
        tiny_rule("greedy", "nope")
    with pytest.raises(KeyError, match="unknown schedule 'gll'; registered schedules: e2e, greedy, random, "
                                       "simultaneous"):
        tiny_rule("gll", "bp")
    with pytest.raises(ConfigError, match="unknown transport 'random'"):
        build_config({"schedule": "random", "transport": "random"})
    with pytest.raises(ConfigError, match="allowed keys of transport: diagnostics_every"):
        build_config({"transport": {"name": "rf", "feedback": "urf"}})    # rf's feedback is its name
    with pytest.raises(ConfigError, match="transport 'bp' takes no parameters"):
        build_config({"transport": {"name": "bp", "diagnostics_every": 3}})
    with pytest.raises(ConfigError, match="transport.diagnostics_every: must be an integer ≥ 0, got -1"):
        build_config({"transport": {"name": "urf", "diagnostics_every": -1}})
    with pytest.raises(ValueError, match="diagnostics_every must be ≥ 0"):  # built without the config
        tiny_rule("e2e", "rf", diagnostics_every=-1)


@pytest.mark.parametrize("old,match", [
    ({"rule": {"name": "rll", "feedback": "rf"}}, r"`schedule: random` and `transport: rf`"),
    ({"rule": "fa"}, r"`schedule: e2e` and `transport: rf`"),
    (apply_overrides({}, ["rule.name=gll", "rule.feedback=urf"]),
     r"schedule\.name=greedy transport\.name=urf\); train\.epochs now counts the whole run"),
    (apply_overrides({}, ["rule.diagnostics_every=3"]), "split into `schedule`.* and `transport`")])
def test_old_rule_keys_are_refused_with_their_translation(old, match):
    with pytest.raises(ConfigError, match=match):
        build_config(old)


def test_configs_select_the_right_rules():
    cfg = build_config(apply_overrides({}, ["schedule.name=greedy", "transport.name=urf",
                                            "transport.diagnostics_every=3"]))
    assert cfg.schedule.name == "greedy" and cfg.transport.params == FeedbackConfig(diagnostics_every=3)
    assert __import__("biossl.naming").naming.rule_name(cfg) == "greedy-urf"
    assert "fa" not in TRANSPORTS and "gll" not in SCHEDULES   # one name per idea, no aliases
    for name in FEEDBACK:                                  # rf, urf, sign share one config
        assert TRANSPORTS.get(name).config is FeedbackConfig
    hinge = (HingeObjective, HingeConfig())
    assert plausibility(Greedy, UpdatedRandomFeedback, *hinge)["iii"]
    assert not plausibility(RandomStage, Backprop, *hinge)["iii"]
    assert not plausibility(EndToEnd, Backprop, *hinge)["iii"]
    assert plausibility(EndToEnd, RandomFeedback, *hinge)["iii"]
    assert plausibility(EndToEnd, UpdatedRandomFeedback, *hinge)["iii"]
    # (i): an end-to-end feedback error crosses stages; local schedules and targets do not
    assert not plausibility(EndToEnd, RandomFeedback, *hinge)["i"]
    assert plausibility(Greedy, RandomFeedback, *hinge)["i"] and plausibility(EndToEnd, Targets, *hinge)["i"]


@pytest.mark.parametrize("schedule", SCHEDULE_NAMES)
def test_plain_bp_has_no_feedback_layers(schedule):
    rule = tiny_rule(schedule, "bp")
    assert not any(isinstance(m, FeedbackLayer) for m in rule.modules())


# ---- through the trainer: a GLL run resumes mid-stack, an RLL run with its draws ----------
_FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
_TINY = ["data.download=false", "encoder.channels=[8,16]", "encoder.pool=[true,true]", "data.train_subset=384",
         "train.batch_size=64", "train.checkpoint_every=100", "train.log_every=2",
         "train.threads=1", "transport.diagnostics_every=3"]


@pytest.mark.skipif(not os.path.exists(_FMNIST), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("recipe,extra,stop", [("fmnist-gll-hinge", ["transport.name=urf", "train.epochs=2"], 8),
                                               ("fmnist-rll-hinge", ["transport.name=rf", "train.epochs=2"], 5)])
def test_trainer_resume_is_identical(tmp_path, recipe, extra, stop):
    from biossl.config import load_config
    from biossl.train import TrainingInterrupted, train
    cfg = load_config(recipe, _TINY + extra)
    train(cfg, tmp_path / "a", progress=False)
    with pytest.raises(TrainingInterrupted, match="biossl train --resume"):
        train(cfg, tmp_path / "b", progress=False, stop_after_steps=stop)   # GLL: inside stage 1
    mid = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    if recipe.startswith("fmnist-gll"):
        assert mid["rule"]["_extra_state"]["schedule"]["stage"] == 1
    out = train(None, tmp_path / "b", resume=True, progress=False)
    assert out["steps"] == 12
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["rule"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["rule"]
    assert_same_tensors(a, b)
    assert a["_extra_state"]["generator"].equal(b["_extra_state"]["generator"])
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("angle/stage0" in r or "angle/stage1" in r for r in rows)
    assert any(k.startswith("fb_norm_ratio/") for k in rows[-1])
