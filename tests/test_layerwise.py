"""GLL / RLL and the end-to-end feedback rules: which parameters move, where autograd may
reach, the stage schedule and draws, checkpoints, diagnostics, loud failures."""
from __future__ import annotations

import copy

import pytest
import torch

from biossl.config import ConfigError, TrainConfig, build_config
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.feedback import FeedbackLayer, feedback_layers
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.registry import RULES, load_all
from biossl.rules.bp import BP, BPConfig, FeedbackE2EConfig
from biossl.rules.layerwise import GLL, RLL, LayerwiseConfig
from biossl.views.batch import ViewBatch

load_all()


def make_rule(name: str, feedback: str | None = None, seed: int = 0, epochs: int = 2,
              grad_block: bool = True, diagnostics_every: int = 0):
    torch.manual_seed(seed)
    enc = convstack(ConvStackConfig(channels=[4, 6, 8], pool=[True, True, False]), 1)
    shapes = enc.out_shapes((1, 12, 12))
    obj_cfg = HingeConfig(dim=8, grad_block=grad_block, negatives=3)

    def make_objective(i):
        return HingeObjective(obj_cfg, shapes[i])

    entry = RULES.get(name)
    cfg = entry.config(**({"feedback": feedback} if feedback else {}),
                       diagnostics_every=diagnostics_every)
    train = TrainConfig(epochs=epochs, batch_size=6, lr=1e-2, seed=seed)
    return entry.factory(cfg, enc, make_objective, train)


def batch(seed: int = 0, n: int = 6) -> ViewBatch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g)
    views = torch.cat([x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)])
    return ViewBatch(views, n, "pairs")


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


# ---- GLL -------------------------------------------------------------------------------
@pytest.mark.parametrize("feedback", ["bp", "rf", "urf"])
def test_gll_step_changes_only_current_stage_and_its_head(feedback):
    rule = make_rule("gll", feedback)
    rule.start_epoch(2)                                    # 2 epochs per stage → stage 1
    assert rule.stage == 1
    before = snapshot(rule)
    out = rule.step(batch())
    after = snapshot(rule)
    moved = changed(before, after)
    allowed = {k for k in before if k.startswith(("encoder.stages.1.", "objectives.1."))}
    assert moved and moved <= allowed
    assert any(k.startswith("encoder.stages.1.") and k.endswith("weight") for k in moved)
    assert any(k.startswith("objectives.1.") for k in moved)
    if feedback == "urf":
        assert any(k.endswith("feedback") for k in moved)  # B followed W
    else:
        assert not any(k.endswith("feedback") for k in moved)
    assert set(out) >= {"loss", "loss/stage1"}
    # no gradient ever reached another stage or head
    for i, (s, o) in enumerate(zip(rule.encoder.stages, rule.objectives)):
        for p in list(s.parameters()) + list(o.parameters()):
            assert (p.grad is not None) == (i == 1)


def test_gll_lower_stages_run_without_autograd_and_upper_not_at_all():
    rule = make_rule("gll", "rf")
    rule.start_epoch(2)
    calls = {0: [], 1: [], 2: []}
    hooks = [s.register_forward_hook(lambda m, i, o, k=k: calls[k].append((torch.is_grad_enabled(), o.grad_fn)))
             for k, s in enumerate(rule.encoder.stages)]
    inp = rule.stage_input(batch(), 1)
    assert not inp.x.requires_grad and inp.x.grad_fn is None
    rule.step(batch())
    for h in hooks:
        h.remove()
    assert calls[0] and all(not en and fn is None for en, fn in calls[0])   # frozen: no graph
    assert any(en and fn is not None for en, fn in calls[1])                # trained stage
    assert calls[2] == []                                                   # upper: not run


def test_gll_schedule_epochs_per_stage():
    rule = make_rule("gll", epochs=3)
    assert rule.num_epochs() == 9
    assert [(rule.start_epoch(e), rule.stage)[1] for e in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="outside GLL's schedule"):
        rule.start_epoch(9)


def test_gll_checkpoint_resumes_mid_stack():
    rule = make_rule("gll", "urf", epochs=2)
    rule.start_epoch(3)
    rule.step(batch(1))
    state = copy.deepcopy(rule.state_dict())
    fresh = make_rule("gll", "urf", epochs=2)
    assert fresh.stage == 0
    fresh.load_state_dict(state)
    assert (fresh.stage, fresh.epoch) == (1, 3)
    assert state["_extra_state"]["stage_epoch"] == 1
    assert_same_tensors(fresh.state_dict(), rule.state_dict())
    # the next step is identical from the restored state (optimizer state included)
    rule.step(batch(2)), fresh.step(batch(2))
    assert_same_tensors(fresh.state_dict(), rule.state_dict())


def assert_same_tensors(a: dict, b: dict) -> None:
    """Same keys (a missing or extra entry fails, not truncates) and equal tensors."""
    assert a.keys() == b.keys()
    tensors = [k for k in a if torch.is_tensor(a[k])]
    assert tensors
    for k in tensors:
        assert torch.equal(a[k], b[k]), k


# ---- RLL -------------------------------------------------------------------------------
def test_rll_stage_draws_are_uniform():
    rule = make_rule("rll", seed=3)
    draws = torch.tensor([rule.draw_stage() for _ in range(3000)])
    counts = torch.bincount(draws, minlength=3).double()
    assert counts.numel() == 3
    chi2 = ((counts - 1000.0) ** 2 / 1000.0).sum().item()
    assert chi2 < 13.82                                   # df = 2, p = 0.001


def test_rll_step_updates_only_the_drawn_stage():
    rule = make_rule("rll", "rf", seed=1)
    seen = set()
    for k in range(8):
        before = snapshot(rule)
        out = rule.step(batch(k))
        i = int(out["stage"])
        seen.add(i)
        moved = changed(before, snapshot(rule))
        assert moved and all(m.startswith((f"encoder.stages.{i}.", f"objectives.{i}.")) for m in moved)
        assert f"loss/stage{i}" in out
    assert len(seen) >= 2


def test_rll_generator_round_trips_through_checkpoint():
    rule = make_rule("rll", seed=5)
    for _ in range(7):
        rule.draw_stage()
    state = copy.deepcopy(rule.state_dict())
    expected = [rule.draw_stage() for _ in range(30)]
    fresh = make_rule("rll", seed=5)
    fresh.load_state_dict(state)
    assert [fresh.draw_stage() for _ in range(30)] == expected
    other = make_rule("rll", seed=5)
    assert [other.draw_stage() for _ in range(30)] != expected   # the state mattered


# ---- end-to-end feedback rules -----------------------------------------------------------
@pytest.mark.parametrize("name", ["rf", "fa", "urf", "sign"])
def test_e2e_feedback_rules_convert_everything_and_train_all_stages(name):
    rule = make_rule(name)
    layers = feedback_layers(rule)
    assert len(layers) == 4 and all(l.mode == ("rf" if name == "fa" else name) for l in layers)
    b0 = {id(l): l.feedback.clone() for l in layers}
    w0 = {id(l): l.weight.detach().clone() for l in layers}
    before = snapshot(rule)
    rule.step(batch())
    moved = changed(before, snapshot(rule))
    for i in range(3):
        assert f"encoder.stages.{i}.0.weight" in moved
    for l in layers:
        if name == "urf":
            torch.testing.assert_close(l.feedback - l.weight.detach(), b0[id(l)] - w0[id(l)], rtol=0, atol=1e-6)
        else:
            assert torch.equal(l.feedback, b0[id(l)])


def test_e2e_rf_gradient_is_not_bp_but_weight_gradient_form_is():
    """Top stage: its weight gradient needs only δ at its output, which RF changes only
    through the head's B; lower stages see δ through B of every layer above."""
    rule = make_rule("rf", diagnostics_every=1)
    rule.step(batch())
    d = rule.diagnostics()
    for key in ("angle/stage0", "angle/stage1", "angle/stage2", "angle/head"):
        assert key in d
    assert d["angle/head"] < 1e-3                         # head weight grad has no feedback in it
    assert d["angle/stage0"] > 1.0                        # a random B is not W
    assert any(k.startswith("fb_norm_ratio/encoder.stages.0") for k in d)


def test_true_gradient_measurement_equals_plain_autograd_on_unconverted_copy():
    plain = make_rule("bp")
    rule = make_rule("rf", diagnostics_every=1)
    for l in feedback_layers(rule):                       # same W, B := W by copy
        l.feedback.copy_(l.weight.detach())
    plain.optimizers[0].zero_grad()
    b = batch()
    plain.objective(plain.encoder.run(b.x), b).backward()
    rule.step(b)
    for key in ("angle/stage0", "angle/stage1", "angle/stage2"):
        assert rule.diagnostics()[key] < 1e-3
    # and the rule's own gradient then equals plain BP's (same weights before the step)
    ref = [p.grad for p in plain.encoder.stages[0].parameters()]
    rule2 = make_rule("rf")
    for l in feedback_layers(rule2):
        l.feedback.copy_(l.weight.detach())
    rule2.optimizers[0].zero_grad()
    rule2._loss(b).backward()
    for a, r in zip(rule2.encoder.stages[0].parameters(), ref):
        torch.testing.assert_close(a.grad, r)


def test_gll_rf_diagnostics_per_stage():
    rule = make_rule("gll", "rf", diagnostics_every=2)
    rule.start_epoch(0)
    rule.step(batch(0))
    d = rule.diagnostics()
    assert d["angle/stage0"] > 1.0 and d["angle/head0"] < 1e-3
    assert rule.probe.steps == 1
    rule.step(batch(1))                                    # not measured (interval 2)
    assert rule.diagnostics()["angle/stage0"] == d["angle/stage0"]
    # feedback 'bp': nothing to measure, no feedback layers
    assert make_rule("gll", "bp", diagnostics_every=1).diagnostics() == {}


# ---- loud failures ----------------------------------------------------------------------
def test_unknown_feedback_raises_everywhere():
    with pytest.raises(ValueError, match="bp, rf, urf, sign"):
        LayerwiseConfig(feedback="ufr").validate()
    with pytest.raises(ValueError, match="bp, rf, urf, sign"):
        BPConfig(feedback="fb").validate()
    with pytest.raises(ValueError, match="unknown feedback"):
        make_rule("gll", "nope")
    with pytest.raises(ValueError, match="unknown feedback"):
        make_rule("bp", "nope")
    with pytest.raises(ConfigError, match="rf"):
        build_config({"rule": {"name": "rll", "feedback": "random"}})
    with pytest.raises(ConfigError, match="feedback"):        # rf's feedback is its name
        build_config({"rule": {"name": "rf", "feedback": "urf"}})
    with pytest.raises(ValueError, match="diagnostics_every must be ≥ 0"):
        FeedbackE2EConfig(diagnostics_every=-1).validate()


def test_configs_select_the_right_rules():
    cfg = build_config({"rule": {"name": "gll", "feedback": "urf"}})
    assert isinstance(cfg.rule.params, LayerwiseConfig) and cfg.rule.params.feedback == "urf"
    assert RULES.get("fa").factory is RULES.get("rf").factory
    assert GLL.plausible_for(LayerwiseConfig("urf"))["iii"] and not RLL.plausible_for(LayerwiseConfig("bp"))["iii"]
    assert not BP.plausible_for(BPConfig())["iii"] and BP.plausible_for(BPConfig("rf"))["iii"]
    assert RULES.get("urf").factory.plausible_rule["iii"]


def test_plain_bp_has_no_feedback_layers():
    rule = make_rule("bp")
    assert not any(isinstance(m, FeedbackLayer) for m in rule.modules())


# ---- through the trainer: a GLL run resumes mid-stack, an RLL run with its draws ----------
_FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
_TINY = ["data.download=false", "encoder.channels=[8,16]", "encoder.pool=[true,true]", "data.train_subset=384",
         "train.batch_size=64", "train.checkpoint_every=100", "train.log_every=2",
         "train.threads=1", "transport.diagnostics_every=3"]


@pytest.mark.skipif(not __import__("os").path.exists(_FMNIST), reason="Fashion-MNIST not installed")
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
        assert mid["rule"]["_extra_state"]["stage"] == 1
    out = train(None, tmp_path / "b", resume=True, progress=False)
    assert out["steps"] == 12
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["rule"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["rule"]
    assert_same_tensors(a, b)
    assert a["_extra_state"]["generator"].equal(b["_extra_state"]["generator"])
    rows = [__import__("json").loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("angle/stage0" in r or "angle/stage1" in r for r in rows)
    assert any(k.startswith("fb_norm_ratio/") for k in rows[-1])
