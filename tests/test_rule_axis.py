"""The rule axis as a whole: precision scoped to the forward, one seed derivation, one
meaning per config word, contracts declared on base classes, old configs translated."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from biossl.config import ConfigError, TrainConfig, build_config, load_config
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.objectives.base import Objective
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.objectives.hinge import HingeConfig, HingeObjective, negative_offsets
from biossl.registry import OBJECTIVES, load_all
from biossl.rules import make_rule
from biossl.seeds import PURPOSES, derive, generator
from biossl.views.batch import ViewBatch


def _hinge_rule(schedule: str, transport: str, seed: int = 0, epochs: int = 2):
    torch.manual_seed(seed)
    enc = convstack(ConvStackConfig(channels=[3, 4], pool=[True, True]), 1)
    shapes = enc.out_shapes((1, 8, 8))
    return make_rule(schedule, transport, enc,
                     lambda i: HingeObjective(HingeConfig(dim=5, grad_block=True), shapes[i]),
                     TrainConfig(seed=seed, lr=1e-3, epochs=epochs))


def _pairs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ViewBatch(torch.randn(2 * n, 1, 8, 8, generator=g), n, "pairs")


# ---- precision: the forward under autocast, every backward outside it ----------------------
@pytest.mark.parametrize("schedule,transport", [("e2e", "bp"), ("e2e", "urf"), ("greedy", "rf"),
                                                ("simultaneous", "bp"), ("e2e", "targets")])
def test_autocast_covers_the_forward_and_never_a_backward(schedule, transport):
    rule = _hinge_rule(schedule, transport)
    rule.start_epoch(0)
    entered = []

    def bf16():
        entered.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    rule.set_autocast(bf16)
    in_backward, forward_dtypes = [], []
    for p in rule.parameters():
        p.register_hook(lambda g: in_backward.append(torch.is_autocast_enabled("cpu")) or g)
    for s in rule.encoder.stages:
        s.register_forward_hook(lambda m, i, o: forward_dtypes.append(o.dtype))
    rule.step(_pairs())
    assert entered, "the rule never entered the precision context"
    assert torch.bfloat16 in forward_dtypes            # the forward ran in bf16
    assert in_backward and not any(in_backward)        # no backward ran under autocast


def test_the_trainer_leaves_precision_to_the_rule():
    """train.py does not wrap steps in autocast any more: assemble gives the rule the context."""
    src = Path(__import__("biossl.train").train.__file__).read_text()
    assert "autocast" not in src
    from biossl.assemble import assemble
    asm = assemble(load_config("fmnist-bp-hinge", ["train.precision=bf16", "train.device=cpu",
                                                   "encoder.channels=[4,8]", "encoder.pool=[true,true]"]))
    with asm.rule.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# ---- one seed derivation ---------------------------------------------------------------------
def test_seed_derivation_is_stable_distinct_and_checked():
    assert derive(0, "views") == derive(0, "views")
    seeds = {derive(s, p, *idx) for s in (0, 1) for p in PURPOSES for idx in ((), (0,), (1,))}
    assert len(seeds) == 2 * len(PURPOSES) * 3                  # no two streams share a seed
    assert all(0 <= s < 2 ** 63 for s in seeds)
    g1, g2 = generator(3, "feedback"), generator(3, "feedback")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    with pytest.raises(ValueError, match="unknown seed purpose 'noise'.*known: weights"):
        derive(0, "noise")


def test_a_run_draws_nothing_from_the_global_rng_after_building():
    """Same run seed → same step, whatever the global torch seed is while the rule trains."""
    losses = []
    for global_seed in (1, 99):
        rule = _hinge_rule("random", "rf", seed=5)
        rule.start_epoch(0)
        torch.manual_seed(global_seed)
        losses.append([rule.step(_pairs())["loss"] for _ in range(3)])
    assert losses[0] == losses[1]


def test_objective_draws_follow_the_run_seed_not_the_global_one():
    objs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        o = ClappObjective(ClappConfig(), (4,))
        o.seed_draws(7, 0)
        objs.append(o)
    a, b = (o.draw(8, [3]).steps[0] for o in objs)
    assert torch.equal(a.index, b.index) and torch.equal(a.use, b.use)


# ---- one meaning per word --------------------------------------------------------------------
@pytest.mark.parametrize("j", [1, 3, 6])
def test_hinge_negatives_counts_negatives(j):
    """negatives: J gives every image (but the last J, without wrap-around) J negatives."""
    offsets, weight = negative_offsets(10, j, wrap=False)
    assert len(offsets) == j and weight == pytest.approx(1 / (j + 1))
    offsets, _ = negative_offsets(10, j, wrap=True)
    assert len(offsets) == j


def test_train_epochs_is_the_whole_run_for_every_schedule():
    for schedule in ("e2e", "greedy", "random", "simultaneous"):
        rule = _hinge_rule(schedule, "bp", epochs=4)
        assert rule.num_epochs() == 4, schedule
    greedy = _hinge_rule("greedy", "bp", epochs=4)          # 2 stages × 2 epochs
    greedy.start_epoch(1)
    assert greedy.schedule.stage == 0
    greedy.start_epoch(2)
    assert greedy.schedule.stage == 1
    with pytest.raises(ValueError, match=r"greedy splits train.epochs over the 2 stages, but 3 .*train.epochs=4"):
        _hinge_rule("greedy", "bp", epochs=3)


def test_config_words_have_one_name():
    cfg = load_config("fmnist-clapp-s")
    assert cfg.objective.params.context_path == "transpose"
    with pytest.raises(ConfigError, match="unknown key 'objective.feedback'"):
        load_config("fmnist-clapp", ["objective.feedback=retro"])
    with pytest.raises(ConfigError, match="unknown key 'transport.feedback_warmup'"):
        load_config("fmnist-dtp-hinge", ["transport.feedback_warmup=3"])
    assert HingeObjective(HingeConfig(grad_block=True), (3,)).grad_block


# ---- contracts declared, not probed ------------------------------------------------------------
def test_rules_read_no_contract_with_getattr():
    rules = Path(__import__("biossl.rules").rules.__file__).parent
    offenders = [f"{p.name}:{i + 1}" for p in rules.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines()) if re.search(r"\bgetattr\(", line)]
    assert offenders == []


def test_every_objective_declares_the_contract_on_its_class():
    load_all()
    for e in OBJECTIVES.entries():
        cls = e.factory
        assert issubclass(cls, Objective), e.name
        for flag in ("plausible_error", "has_head", "has_explicit_form"):
            assert isinstance(getattr(cls, flag), bool), (e.name, flag)
    assert OBJECTIVES.get("clapp").factory.has_explicit_form
    assert not OBJECTIVES.get("hinge").factory.has_explicit_form


def test_viewbatch_layout_contract():
    pairs = _pairs(n=3)
    assert pairs.view_rows() == [slice(0, 3), slice(3, 6)] and pairs.first_view_rows() == slice(0, 3)
    grid = ViewBatch(torch.zeros(2 * 9, 1, 4, 4), 2, "grid", (3, 3))
    assert grid.view_rows() == [slice(0, 18)] and grid.first_view_rows() is None
    assert grid.with_x(torch.ones(18, 5)).grid == (3, 3)


# ---- transports that coincide where they must ----------------------------------------------------
def _clapp_rule(transport: str):
    torch.manual_seed(0)
    enc = convstack(ConvStackConfig(channels=[3, 4], pool=[True, True]), 1).double()
    shapes = enc.out_shapes((1, 8, 8))
    return make_rule("simultaneous", transport, enc,
                     lambda i: ClappObjective(ClappConfig(sampling="both"), shapes[i]).double(),
                     TrainConfig(seed=0, lr=1e-2))


def test_feedback_transports_equal_bp_for_headless_local_losses():
    """With one weight layer per stage and no head, an error meets no weight before the
    stage's own: rf / urf / sign give bp's update exactly."""
    g = torch.Generator().manual_seed(2)
    batch = ViewBatch(torch.randn(2 * 6, 1, 8, 8, generator=g, dtype=torch.float64), 6, "pairs")
    ref = _clapp_rule("bp")
    ref.step(batch)
    for transport in ("rf", "urf", "sign"):
        rule = _clapp_rule(transport)
        rule.step(batch)
        for (name, a), b in zip(ref.encoder.named_parameters(), rule.encoder.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=f"{transport}: {name}")


# ---- configs of biossl 0.1 -------------------------------------------------------------------
@pytest.mark.parametrize("old,new", [
    ({"name": "rf"}, "schedule: e2e` and `transport: rf`"),
    ({"name": "fa"}, "schedule: e2e` and `transport: rf`"),
    ({"name": "gll", "feedback": "urf"}, "schedule: greedy` and `transport: urf`.*multiply the old per-stage"),
    ({"name": "rll", "feedback": "random"}, r"schedule: random` and `transport: bp\|rf\|urf\|sign`"),
    ({"name": "dtp", "feedback_warmup": 3}, "schedule: e2e` and `transport: targets`.*inverse_warmup"),
    ({"name": "clapp", "mode": "explicit", "draws": "per_stage"},
     "schedule: simultaneous` and `transport: explicit`.*objective.draws"),
    ({"name": "gim"}, "schedule: simultaneous` and `transport: bp`"),
])
def test_an_old_rule_section_is_refused_with_its_translation(old, new):
    with pytest.raises(ConfigError, match="the `rule` section was split into `schedule`.*" + new):
        build_config({"rule": old})
    with pytest.raises(ConfigError, match="split into `schedule`"):
        load_config("fmnist-bp-hinge", [f"rule.name={old['name']}"])


def test_no_recipe_or_suite_uses_an_old_key():
    from biossl.config import RECIPES_DIR
    for path in [*RECIPES_DIR.glob("*.yaml"), *RECIPES_DIR.glob("suites/*.yaml")]:
        text = path.read_text()
        assert not re.search(r"^rule:|\brule\.\w+=", text, re.M), path.name
        assert "feedback_" not in text, path.name


def test_no_transport_opens_autocast_itself():
    """Only the rule's precision context decides where autocast applies."""
    rules = Path(__import__("biossl.rules").rules.__file__).parent
    assert not [p.name for p in rules.rglob("*.py") if "torch.autocast" in p.read_text()]
