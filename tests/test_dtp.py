"""Difference target propagation (transport ``targets``): locality of every update, detached
targets, the difference correction against its analytic value, learned inverses, BP
alignment — end-to-end (classic DTP, schedule e2e) and under the local schedules (greedy,
simultaneous), where every stage's target comes straight from its own head."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from biossl.assemble import build_rule
from biossl.config import ConfigError, TrainConfig, build_config, from_dict
from biossl.encoders.base import StageStack
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.feedback.inverse import build_inverse
from biossl.objectives.base import Objective
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.registry import TRANSPORTS, load_all
from biossl.rules import make_rule as make_axis_rule
from biossl.rules.base import plausibility
from biossl.rules.diagnostics import angle_deg
from biossl.rules.schedules import EndToEnd, Greedy, Simultaneous
from biossl.rules.transports.targets import Targets, TargetsConfig
from biossl.views.batch import ViewBatch

load_all()


def small_convstack(seed=0, channels=(4, 8, 8), act="tanh"):
    torch.manual_seed(seed)
    return convstack(ConvStackConfig(channels=list(channels), pool=[True] * len(channels),
                                     activation=act), 1)


def make_rule(encoder, in_shape=(1, 12, 12), seed=0, grad_block=True, lr=1e-3, schedule="e2e",
              epochs=None, **kw):
    """``schedule`` × targets; ``kw`` are transport keys, validated as the config loader does."""
    shapes = encoder.out_shapes(in_shape)
    torch.manual_seed(seed + 1)
    hinge = HingeConfig(grad_block=grad_block, negatives=3, dim=8, head_pool=None)
    train = TrainConfig(lr=lr, seed=seed, epochs=epochs or len(encoder))
    return make_axis_rule(schedule, "targets", encoder, lambda i: HingeObjective(hinge, shapes[i]),
                          train, transport_params=from_dict(TargetsConfig, kw, "transport"))


def pair_batch(n=6, shape=(1, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return ViewBatch(torch.cat([x, x + 0.1 * torch.randn(x.shape, generator=g)]), n, "pairs")


def _owners(rule):
    owners = {id(p): f"stage{i}" for i, s in enumerate(rule.encoder.stages) for p in s.parameters()}
    owners.update({id(p): f"g{l}" for l in range(1, len(rule.encoder))
                   for p in rule.transport.inverse(l).parameters()})
    owners.update({id(p): "head" for p in rule.objectives[0].parameters()})
    return owners


def _touched(rule, loss):
    """Names of the parameter groups that receive a nonzero gradient from ``loss``."""
    params = list(rule.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    owners = _owners(rule)
    return {owners[id(p)] for p, g in zip(params, grads) if g is not None and g.abs().sum() > 0}


def dtp_pieces(rule, batch, k=0):
    """(pass, targets) of segment ``k`` from the transport's pieces (no step, no head grads)."""
    t = rule.transport
    p = t.forward_pass(rule, k, rule.frozen_input(k, batch), batch)
    _, top = t.top_target(rule, k, p, batch, head_grads=False)
    return p, t.propagate_targets(k, p.hs, top)


def update_directions(rule, batch, k=0):
    """Per stage of segment ``k``, the gradient of its target loss (no step taken)."""
    p, targets = dtp_pieces(rule, batch, k)
    local = rule.transport.stage_losses(p.outs, targets)
    return [list(torch.autograd.grad(loss, list(rule.encoder.stages[i].parameters())))
            for loss, i in zip(local, rule.spans[k])]


def bp_gradients(rule, batch):
    """Per stage, the end-to-end back-propagation gradient of the top objective."""
    loss = rule.objectives[0](rule.encoder.run(batch.x), batch)
    params = [list(s.parameters()) for s in rule.encoder.stages]
    flat = torch.autograd.grad(loss, [q for ps in params for q in ps])
    out, i = [], 0
    for ps in params:
        out.append(list(flat[i:i + len(ps)]))
        i += len(ps)
    return out


# ---- the inverse (feedback) functions ----------------------------------------------------
@pytest.mark.parametrize("stage, x_shape", [
    (nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)), (2, 3, 7, 7)),
    (nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Tanh()), (2, 3, 9, 9)),
    (nn.Sequential(nn.Conv1d(3, 5, 5, padding="same"), nn.Hardtanh(), nn.AvgPool1d(3)), (2, 3, 17)),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 1), nn.Tanh(),
                   nn.MaxPool2d(2, ceil_mode=True)), (2, 3, 5, 5)),
    (nn.Sequential(nn.Linear(6, 4), nn.ReLU()), (2, 6)),
])
def test_inverse_maps_output_back_to_input_shape(stage, x_shape):
    below = nn.Sequential(nn.Identity(), nn.Hardtanh())
    g = build_inverse([below, stage], 1)
    x = torch.randn(x_shape)
    rec = g(stage(x), x.shape[2:])
    assert rec.shape == x.shape
    assert isinstance(g.acts[-1], nn.Hardtanh)  # output nonlinearity: the stage below's
    assert rec.abs().max() <= 1.0
    fwd = {id(p) for p in stage.parameters()}
    assert not any(id(p) in fwd for p in g.parameters())  # own weights, no weight transport


def test_conv_then_pool_is_inverted_by_one_strided_transposed_conv():
    stage = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), nn.Hardtanh(), nn.MaxPool2d(2))
    g = build_inverse([nn.ReLU(), stage], 1)
    (m,) = g.maps
    assert isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) and m.kernel_size == (4, 4)
    assert (m.in_channels, m.out_channels) == (5, 3)
    overlapping = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.MaxPool2d(3, stride=2))
    g = build_inverse([nn.ReLU(), overlapping], 1)
    assert [type(m) for m in g.maps] == [nn.ConvTranspose2d] and g.maps[0].stride == (1, 1)
    assert g(overlapping(torch.randn(2, 3, 9, 9)), (9, 9)).shape == (2, 3, 9, 9)


@pytest.mark.parametrize("below, affine", [(nn.Identity(), True), (nn.Hardtanh(), False)])
def test_an_inverse_differences_two_inputs_as_its_two_outputs(below, affine):
    """g(a) − g(b) for DTP's targets: an affine g (no nonlinearity below) runs once on a − b,
    its biases and the unpooling included; equal to the two passes in float64."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), below),
              nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.MaxPool2d(3, stride=2)),
              nn.Sequential(nn.Conv2d(5, 4, 3, padding=1), nn.MaxPool2d(2))]
    for l in (1, 2):
        g = build_inverse(stages, l, True, "below").double()
        assert g.affine() is (affine or l == 2) and all(m.bias is not None for m in g.maps)
        size = (9, 9) if l == 1 else (4, 4)
        a, b = (torch.randn(2, *stages[l](torch.zeros(1, stages[l][0].in_channels, *size)).shape[1:],
                            dtype=torch.float64) for _ in range(2))
        torch.testing.assert_close(g.difference(a, b, size), g(a, size) - g(b, size), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("below", [nn.Identity(), nn.Hardtanh()])
def test_an_inverse_adds_its_difference_to_a_map_in_that_maps_layout(below):
    """DTP's ĥ_{l−1} = h_{l−1} + g(ĥ_l) − g(h_l) in one call: the values of the two passes
    plus the map, written into ``out`` in its layout (NCHW, though g works channels-last on
    the CPU); ``working`` answers g(h) in g's own layout with forward's values."""
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), below),
              nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.MaxPool2d(2))]
    g = build_inverse(stages, 1, True, "below").double()
    a, b = (torch.randn(4, 5, 4, 4, dtype=torch.float64) for _ in range(2))
    h = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    out = torch.empty_like(h)
    with torch.no_grad():
        got = g.difference(a, b, (9, 9), plus=h, out=out)
        assert got is out and out.is_contiguous()
        torch.testing.assert_close(out, h + g(a, (9, 9)) - g(b, (9, 9)), rtol=1e-12, atol=1e-12)
        assert g.difference(a, b, (9, 9), plus=h).is_contiguous()
    rec = g.working(a, (9, 9))
    assert rec.is_contiguous(memory_format=torch.channels_last) and not rec.is_contiguous()
    assert torch.equal(rec, g(a, (9, 9)))


def test_inverse_has_intermediate_nonlinearity_of_a_two_map_stage():
    stage = nn.Sequential(nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.ReLU())
    g = build_inverse([nn.Tanh(), stage], 1)
    # Execution order: Linear(4→5) then the sigmoid the second map had read, Linear(5→6), tanh.
    assert [type(a) for a in g.acts] == [nn.Sigmoid, nn.Tanh]
    assert [m.in_features for m in g.maps] == [4, 5]


@pytest.mark.parametrize("stage, name", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()), "BatchNorm2d"),
    (nn.Sequential(nn.Linear(2, 2), nn.Dropout()), "Dropout"),
    (nn.Sequential(nn.Flatten(), nn.Linear(2, 2)), "Flatten"),
])
def test_non_invertible_stage_is_refused_by_name(stage, name):
    enc = StageStack([nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()),
                      nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU()), stage], 1)
    # the transport builds the inverses before anything runs: a parameter-free objective will do
    with pytest.raises(ValueError, match=rf"stage 2 contains {name}, which DTP cannot invert; allowed: .*Conv2d"):
        make_axis_rule("e2e", "targets", enc, lambda i: Objective(), TrainConfig())


def test_batchnorm_encoder_is_refused_at_its_first_inverted_stage():
    enc = convstack(ConvStackConfig(channels=[2, 2], batchnorm=True), 1)
    with pytest.raises(ValueError, match="stage 1 contains BatchNorm2d"):
        make_rule(enc)


# ---- configuration ----------------------------------------------------------------------
def test_unknown_option_fails_loudly_and_old_keys_name_their_new_form():
    with pytest.raises(ConfigError, match="unknown key 'transport.sigma'; allowed keys of transport: eta, "):
        build_config({"transport": {"name": "targets", "sigma": 0.1}})
    # the renamed DTP keys: the old spelling is an unknown key that lists the new ones
    with pytest.raises(ConfigError, match="unknown key 'transport.feedback_steps'.*inverse_steps"):
        build_config({"transport": {"name": "targets", "feedback_steps": 2}})
    cfg = build_config({"schedule": "e2e", "transport": {"name": "targets", "eta": 0.25, "inverse_steps": 2}})
    assert (cfg.schedule.name, cfg.transport.name) == ("e2e", "targets")
    assert cfg.transport.params == TargetsConfig(eta=0.25, inverse_steps=2)
    # the old `rule: dtp` section is refused with its translation
    with pytest.raises(ConfigError, match=r"write `schedule: e2e` and `transport: targets`.*"
                                          r"feedback_\* keys are now transport.inverse_\* "
                                          r"\(e.g. feedback_warmup → inverse_warmup\)"):
        build_config({"rule": {"name": "dtp", "feedback_warmup": 3}})


@pytest.mark.parametrize("bad,message", [
    (dict(eta=0.0), "transport.eta: must be a finite number > 0, got 0.0"),
    (dict(noise_std=-1.0), "transport.noise_std: must be a finite number ≥ 0, got -1.0"),
    (dict(inverse_steps=-1), "transport.inverse_steps: must be an integer ≥ 0, got -1"),
    (dict(inverse_every=0), "transport.inverse_every: must be an integer ≥ 1, got 0"),
    (dict(inverse_warmup=-1), "transport.inverse_warmup: must be an integer ≥ 0, got -1"),
    (dict(inverse_activation="softplus"),
     "transport: inverse_activation: unknown activation 'softplus'; choose one of .*'relu'.* \\(or 'below'\\)"),
    (dict(target_loss="l1"),
     r"transport.target_loss: 'l1' is not allowed; choose one of \['sum', 'row_mean', 'element_mean'\]"),
    (dict(target_loss="mean"),
     r"transport.target_loss: 'mean' is not allowed; choose one of \['sum', 'row_mean', 'element_mean'\]"),
    (dict(inverse_order="late"),
     r"transport.inverse_order: 'late' is not allowed; choose one of \['before_targets', 'after_targets'\]"),
    (dict(inverse_rows="half"), r"transport.inverse_rows: 'half' is not allowed; choose one of \['one_view', 'all'\]"),
    (dict(inverse_lr=0.0), "transport.inverse_lr: must be a finite number > 0, got 0.0"),
    (dict(inverse_bias="yes"), "transport.inverse_bias: expected true/false, got 'yes'"),
    (dict(diagnostics_every=-1), "transport.diagnostics_every: must be an integer ≥ 0, got -1"),
    (dict(inverse_warmup=3, inverse_steps=0), "transport: inverse_warmup needs inverse_steps ≥ 1"),
])
def test_bad_values_are_rejected_naming_the_key(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"schedule": "e2e", "transport": {"name": "targets", **bad}})
    with pytest.raises(ConfigError, match=message):
        make_rule(small_convstack(), **bad)


def test_checks_of_the_config_class_itself():
    """The cross-key and name checks live on TargetsConfig (ranges and choices: the loader)."""
    with pytest.raises(ValueError, match="inverse_warmup needs inverse_steps ≥ 1"):
        TargetsConfig(inverse_warmup=3, inverse_steps=0).validate()
    with pytest.raises(ValueError, match="inverse_activation: unknown activation 'softplus'"):
        TargetsConfig(inverse_activation="softplus").validate()
    TargetsConfig(inverse_activation="relu").validate()


def test_registered_with_plausibility_flags():
    entry = TRANSPORTS.get("targets")
    assert entry.factory is Targets and entry.config is TargetsConfig
    # classic DTP: local targets keep (i); the top target crosses the head's weights: (iii) fails
    for schedule in (EndToEnd, Greedy, Simultaneous):
        assert plausibility(schedule, Targets, HingeObjective, HingeConfig()) == {
            "i": True, "ii": True, "iii": False, "iv": True}


def test_e2e_has_one_optimizer_for_stages_and_head_and_one_for_the_inverses():
    rule = make_rule(small_convstack())
    assert len(rule.spans) == 1 and list(rule.spans[0]) == [0, 1, 2]
    assert len(rule.optimizers) == 2
    ids = [{id(q) for grp in o.param_groups for q in grp["params"]} for o in rule.optimizers]
    stages_head = {id(q) for q in rule.encoder.parameters()} | {id(q) for q in rule.objectives[0].parameters()}
    assert ids[0] == stages_head
    assert ids[1] == {id(q) for q in rule.transport.inverses.parameters()}
    assert rule.optimizers[1] is rule.transport.optimizer
    with pytest.raises(IndexError, match="stage 0 is the bottom of its segment"):
        rule.transport.inverse(0)


# ---- locality: which parameters each loss may change ----------------------------------
def test_each_loss_reaches_only_its_own_parameters():
    rule = make_rule(small_convstack())
    batch = pair_batch()
    p, targets = dtp_pieces(rule, batch)
    local = rule.transport.stage_losses(p.outs, targets)
    for l, loss in enumerate(local):
        assert _touched(rule, loss) == {f"stage{l}"}
    for l, loss in enumerate(rule.transport.inverse_losses(rule, 0, p.hs), start=1):
        assert _touched(rule, loss) == {f"g{l}"}


def test_step_changes_every_group_and_warmup_changes_only_inverses():
    rule = make_rule(small_convstack(), inverse_warmup=2)
    assert rule.encoder_frozen_steps() == 2
    owners = _owners(rule)
    batch = pair_batch()

    def changed(before):
        return {owners[id(q)] for q, b in zip(rule.parameters(), before) if not torch.equal(q, b)}

    before = [q.detach().clone() for q in rule.parameters()]
    out = rule.step(batch)  # warm-up: inverses only
    assert changed(before) == {"g1", "g2"} and "target_loss/stage0" not in out
    assert {"loss", "recon/stage1", "recon/stage2"} <= set(out)
    rule.step(batch)
    before = [q.detach().clone() for q in rule.parameters()]
    out = rule.step(batch)
    assert changed(before) == {"stage0", "stage1", "stage2", "g1", "g2", "head"}
    assert {"loss", "target_loss/stage0", "target_loss/stage2", "shift/stage0", "shift/stage2",
            "recon/stage1", "recon/stage2"} <= set(out)


def test_no_graph_spans_two_stages():
    rule = make_rule(small_convstack())
    batch = pair_batch()
    p = rule.transport.forward_pass(rule, 0, batch.x, batch)
    for l in range(1, len(p.outs)):
        # The output of stage l does not depend (in autograd) on stage l−1's weights.
        below = list(rule.encoder.stages[l - 1].parameters())
        assert below and torch.autograd.grad(p.outs[l].sum(), below, allow_unused=True) == (None,) * len(below)
    # the first (gradient-blocked) view got no graph: targets cover the second views only
    assert p.active == slice(batch.n, 2 * batch.n) and p.outs[0].shape[0] == batch.n
    assert p.top.shape[0] == 2 * batch.n


def test_targets_are_detached():
    rule = make_rule(small_convstack())
    p, targets = dtp_pieces(rule, pair_batch())
    assert len(targets) == 3
    for t, h in zip(targets, p.hs):
        assert t.grad_fn is None and not t.requires_grad
        assert t.shape == h.shape
        assert not torch.equal(t, h)  # a nonzero top error moved every layer's target


# ---- the difference correction and the top target, against their analytic values ------
def linear_encoder(seed=0, dims=(5, 5, 5)):
    torch.manual_seed(seed)
    stages = [nn.Sequential(nn.Linear(dims[0], dims[1]), nn.Identity()),
              nn.Sequential(nn.Linear(dims[1], dims[2]), nn.Identity())]
    return StageStack(stages, dims[0])


def test_linear_exact_inverse_gives_analytic_target_below():
    enc = linear_encoder()
    rule = make_rule(enc, in_shape=(5,), grad_block=False, eta=0.3)
    w, b = enc.stages[1][0].weight.detach(), enc.stages[1][0].bias.detach()
    g = rule.transport.inverse(1).maps[0]
    with torch.no_grad():  # g_1 = f_1⁻¹ exactly
        g.weight.copy_(torch.linalg.inv(w))
        g.bias.copy_(-torch.linalg.inv(w) @ b)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    batch = ViewBatch(torch.cat([x, x + 0.1]), 4, "pairs")
    p, targets = dtp_pieces(rule, batch)
    # Independent autograd of the objective on h_1:
    h1 = enc(batch.x)[1].detach().requires_grad_(True)
    (dl_dh1,) = torch.autograd.grad(rule.objectives[0](h1, batch), h1)
    torch.testing.assert_close(targets[1], h1.detach() - 0.3 * dl_dh1)
    expected = p.hs[0] - 0.3 * dl_dh1 @ torch.linalg.inv(w).T
    torch.testing.assert_close(targets[0], expected, rtol=1e-4, atol=1e-5)
    assert (targets[0] - p.hs[0]).abs().max() > 1e-3  # not trivially equal to h_0


def test_one_by_one_conv_exact_inverse_gives_analytic_target_below():
    torch.manual_seed(0)
    enc = StageStack([nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.Identity()),
                      nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.Identity())], 2)
    rule = make_rule(enc, in_shape=(2, 4, 4), grad_block=False, eta=0.5, inverse_bias=False)
    a = enc.stages[1][0].weight.detach()[:, :, 0, 0]  # (out, in)
    with torch.no_grad():  # transposed conv y[o] = Σ_i w[i, o] x[i]: w = (A⁻¹)ᵀ inverts A
        rule.transport.inverse(1).maps[0].weight.copy_(torch.linalg.inv(a).T[:, :, None, None])
    batch = pair_batch(n=3, shape=(2, 4, 4))
    p, targets = dtp_pieces(rule, batch)
    step = (targets[1] - p.hs[1]).permute(0, 2, 3, 1) @ torch.linalg.inv(a).T  # A⁻¹ applied per pixel
    torch.testing.assert_close(targets[0], p.hs[0] + step.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)
    assert step.abs().max() > 1e-4  # the top target moved: the check is not 0 = 0


def test_top_stage_update_is_eta_times_bp_gradient_and_first_view_shortcut_is_exact():
    rule = make_rule(small_convstack(), eta=0.5)
    batch = pair_batch()
    dtp, bp = update_directions(rule, batch), bp_gradients(rule, batch)
    for a, b in zip(dtp[-1], bp[-1]):
        torch.testing.assert_close(a, 0.5 * b, rtol=1e-4, atol=1e-6)
    # the update a step writes into .grad is the same: top stage eta × BP, head the BP gradient
    u = rule.transport.gradients(rule, 0, batch.x, batch, learn_extra=False)
    assert u.step and set(u.log) >= {"target_loss/stage2", "shift/stage0"}
    for l, want in enumerate(dtp):
        for q, w in zip(rule.encoder.stages[l].parameters(), want):
            torch.testing.assert_close(q.grad, w, rtol=1e-5, atol=1e-7)
    head = list(rule.objectives[0].parameters())
    bp_head = torch.autograd.grad(rule.objectives[0](rule.encoder.run(batch.x), batch), head)
    for q, w in zip(head, bp_head):
        torch.testing.assert_close(q.grad, w, rtol=1e-5, atol=1e-7)
    angles = rule.angles(batch)  # the generic probe: the same two facts as angles
    assert angles["angle/stage2"] < 0.1 and angles["angle/head"] < 0.1
    assert angles["angle/stage0"] > 1.0  # below the top, untrained inverses: not BP
    # Gradient block: running the first view as targets-equal-activity rows changes nothing
    # (the transport reads the declared grad_block; the loss itself still blocks the first view).
    rule.objectives[0].grad_block = False
    assert rule.transport.forward_pass(rule, 0, batch.x, batch).active == slice(0, 2 * batch.n)
    for a, b in zip(update_directions(rule, batch), dtp):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


# ---- the official SSL-DTP forms as options ---------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "row_mean", "element_mean"])
def test_stage_loss_reductions_match_their_formulas_values_and_gradients(reduction):
    """'sum' ½Σ(f − ĥ)², 'row_mean' that / rows, 'element_mean' (official) Σ(f − ĥ)² / numel."""
    enc = small_convstack().double()
    rule = make_rule(enc, target_loss=reduction)
    rule.double()  # encoder, heads and inverses
    assert TargetsConfig().target_loss == "sum"
    batch = pair_batch()
    batch = ViewBatch(batch.x.double(), batch.n, "pairs")
    p, targets = dtp_pieces(rule, batch)
    for l, (loss, out, t) in enumerate(zip(rule.transport.stage_losses(p.outs, targets), p.outs, targets)):
        sq = ((out - t) ** 2).sum()
        ref = {"sum": 0.5 * sq, "row_mean": 0.5 * sq / out.shape[0], "element_mean": sq / out.numel()}[reduction]
        params = list(rule.encoder.stages[l].parameters())
        ours_g = torch.autograd.grad(loss, params, retain_graph=True)
        ref_g = torch.autograd.grad(ref, params, retain_graph=True)
        sum_g = torch.autograd.grad(0.5 * sq, params, retain_graph=True)
        torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
        for a, b, c in zip(ours_g, ref_g, sum_g):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            scale = {"sum": 1.0, "row_mean": 1.0 / out.shape[0], "element_mean": 2.0 / out.numel()}[reduction]
            torch.testing.assert_close(a, scale * c, rtol=1e-12, atol=1e-15)
        assert sq.item() > 0


def _stage_grads(rule):
    return [[q.grad.clone() for q in s.parameters()] for s in rule.encoder.stages]


@pytest.mark.parametrize("reduction", ["sum", "row_mean", "element_mean"])
def test_a_step_hands_each_stage_the_gradient_of_its_mse_loss(reduction):
    """The step backs each stage's loss up by handing its output the loss's gradient
    scale·(f − ĥ) (no MSE graph): the same stage gradients, losses and shifts as the MSE
    losses of the pieces, in float64 (official order: every target from the initial g)."""
    batch = pair_batch()
    batch = ViewBatch(batch.x.double(), batch.n, "pairs")
    rule, twin = (make_rule(small_convstack(), inverse_order="after_targets", diagnostics_every=0,
                            target_loss=reduction).double() for _ in range(2))
    p, targets = dtp_pieces(twin, batch)
    local = twin.transport.stage_losses(p.outs, targets)
    expected = [torch.autograd.grad(loss, list(s.parameters()), retain_graph=True)
                for loss, s in zip(local, twin.encoder.stages)]
    log = rule.step(batch)
    for l, (loss, want) in enumerate(zip(local, expected)):
        for a, b in zip(rule.encoder.stages[l].parameters(), want):
            torch.testing.assert_close(a.grad, b, rtol=1e-12, atol=1e-15)
        assert log[f"target_loss/stage{l}"] == pytest.approx(loss.item(), rel=1e-12)
        h = p.hs[l]
        assert log[f"shift/stage{l}"] == pytest.approx(((targets[l] - h).norm() / h.norm()).item(), rel=1e-12)


def test_inverses_learn_the_gradient_of_their_mse_loss():
    """train_inverses hands each g's reconstruction the gradient of its denoising MSE
    (no loss graph, g's layout kept): the gradients and losses of :meth:`inverse_losses`
    with the same noise, in float64; on the CPU the inverses' conv weights and their
    gradients are channels-last, the layout g works in."""
    batch = pair_batch()
    batch = ViewBatch(batch.x.double(), batch.n, "pairs")
    rule, twin = (make_rule(small_convstack(), inverse_rows="all", noise_std=0.3).double() for _ in range(2))
    t, tt = rule.transport, twin.transport
    losses = tt.inverse_losses(twin, 0, tt.forward_pass(twin, 0, batch.x, batch).hs)
    log = t.train_inverses(rule, 0, t.forward_pass(rule, 0, batch.x, batch), batch)
    for l, loss in enumerate(losses, start=1):
        g, ref = t.inverse(l), tt.inverse(l)
        want = torch.autograd.grad(loss, list(ref.parameters()))
        for q, w in zip(g.parameters(), want):
            torch.testing.assert_close(q.grad, w, rtol=1e-12, atol=1e-15)
            if q.dim() == 4:
                assert q.is_contiguous(memory_format=torch.channels_last) and not q.is_contiguous()
                assert q.grad.stride() == q.stride()
        assert log[f"recon/stage{l}"] == pytest.approx(loss.item(), rel=1e-12)


def test_inverse_order_decides_which_g_makes_the_targets():
    """'after_targets' (official): the step's stage updates are those of the targets from the
    g it started with; 'before_targets' (default): from g after this step's inverse update."""
    assert TargetsConfig().inverse_order == "before_targets"
    batch = pair_batch()
    # official order: the update equals the update directions computed before the step
    after = make_rule(small_convstack(), inverse_order="after_targets", diagnostics_every=0)
    expected = update_directions(after, batch)
    g_before = [q.detach().clone() for q in after.transport.inverses.parameters()]
    after.step(batch)
    assert not all(torch.equal(a, b) for a, b in zip(g_before, after.transport.inverses.parameters()))  # g learned
    for got, want in zip(_stage_grads(after), expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # default order: the same as training g first by hand, then computing the directions
    first = make_rule(small_convstack(), diagnostics_every=0)
    twin = make_rule(small_convstack(), diagnostics_every=0)
    twin.transport.train_inverses(twin, 0, twin.transport.forward_pass(twin, 0, batch.x, batch), batch)
    expected_first = update_directions(twin, batch)
    first.step(batch)
    for l, (got, want, old) in enumerate(zip(_stage_grads(first), expected_first, expected)):
        for a, b, c in zip(got, want, old):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            if l < len(expected) - 1:  # below the top the targets pass through g: they differ
                assert not torch.allclose(a, c)


def test_inverse_every_skips_the_inverse_phase_between_turns():
    rule = make_rule(small_convstack(), inverse_every=2, diagnostics_every=0)
    batch = pair_batch()
    logs, moved = [], []
    for _ in range(4):
        before = [q.detach().clone() for q in rule.transport.inverses.parameters()]
        logs.append(rule.step(batch))
        moved.append(not all(torch.equal(a, b) for a, b in zip(before, rule.transport.inverses.parameters())))
    assert moved == [True, False, True, False]
    assert ["recon/stage1" in log for log in logs] == moved


# ---- learned inverses -------------------------------------------------------------------
def test_inverse_reconstruction_loss_decreases():
    rule = make_rule(small_convstack(), inverse_warmup=60, lr=3e-3, noise_std=0.05)
    batch = pair_batch(n=8)
    first = rule.step(batch)
    for _ in range(58):
        rule.step(batch)
    last = rule.step(batch)
    for key in ("recon/stage1", "recon/stage2"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])


def test_inverse_loss_is_denoising_reconstruction_with_the_transports_noise():
    rule = make_rule(small_convstack(), noise_std=0.3)
    batch = pair_batch()
    p = rule.transport.forward_pass(rule, 0, batch.x, batch)
    noise = rule.transport.noise
    state = noise.get_state()
    losses = rule.transport.inverse_losses(rule, 0, p.hs)
    noise.set_state(state)
    for l, loss in enumerate(losses, start=1):
        h = p.hs[l - 1]
        noisy = h + 0.3 * torch.randn(h.shape, generator=noise)
        rec = rule.transport.inverse(l)(rule.encoder.stages[l](noisy), h.shape[2:])
        torch.testing.assert_close(loss, (rec - noisy).pow(2).mean())


@pytest.mark.parametrize("rows, same", [("one_view", True), ("all", False)])
def test_inverse_rows_one_view_learns_from_second_views_only(rows, same):
    results = []
    for first in (0.0, 0.5):
        rule = make_rule(small_convstack(), grad_block=False, inverse_warmup=1, inverse_rows=rows)
        b = pair_batch()
        x = b.x.clone()
        x[: b.n] += first  # change only the first views
        rule.step(ViewBatch(x, b.n, "pairs"))
        results.append([q.detach().clone() for q in rule.transport.inverses.parameters()])
    assert all(torch.equal(u, v) for u, v in zip(*results)) is same


def _direction_angles(rule, batch):
    """Angle (degrees) of each stage's target update to its BP gradient, from the pieces
    (rule.angles measures the step's own update, which the warm-up leaves empty)."""
    return [angle_deg(a, b) for a, b in zip(update_directions(rule, batch), bp_gradients(rule, batch))]


def test_dtp_update_aligns_with_bp_after_inverse_training():
    # Stages that lose little information (pool only twice, channels grow), so that g_l
    # can approximate f_l⁻¹; tanh keeps the activity graded.
    torch.manual_seed(0)
    enc = convstack(ConvStackConfig(channels=[8, 32, 32], pool=[True, True, False],
                                    activation="tanh"), 1)
    rule = make_rule(enc, inverse_warmup=200, lr=3e-3, noise_std=0.05)
    batches = [pair_batch(n=8, seed=1000 + s) for s in range(3)]

    def mean(angles):
        return [sum(a[l] for a in angles) / len(angles) for l in range(3)]

    before = mean([_direction_angles(rule, b) for b in batches])
    for s in range(200):  # warm-up: only the inverses learn
        rule.step(pair_batch(n=8, seed=s))
    after = mean([_direction_angles(rule, b) for b in batches])
    # past the warm-up, the rule's own measurement of its update agrees with the pieces
    probe = mean([[rule.angles(b)[f"angle/stage{l}"] for l in range(3)] for b in batches])
    for a, b in zip(probe, after):
        assert math.isclose(a, b, abs_tol=1e-2), (probe, after)
    assert after[2] < 1.0  # top stage: exactly the BP direction
    assert all(a < 80.0 for a in after), after
    assert after[0] < before[0] - 10 and after[1] < before[1] - 10, (before, after)


def test_logged_angles_are_those_of_the_step_update():
    rule = make_rule(small_convstack(), inverse_steps=0, diagnostics_every=2)
    assert len(rule.optimizers) == 1  # no inverse phase: no inverse optimizer
    batch = pair_batch()
    expected = rule.angles(batch)  # no inverse update in the step: same g, same weights
    assert set(expected) == {"angle/stage0", "angle/stage1", "angle/stage2", "angle/head"}
    assert rule.diagnostics() == {}
    rule.step(batch)
    got = rule.diagnostics()
    assert set(got) == set(expected)
    for key, a in expected.items():
        assert math.isclose(got[key], a, abs_tol=1e-3), key
    rule.step(batch)  # not a measured step: the logged values are kept
    assert rule.diagnostics() == got


# ---- reproducibility and resumption ---------------------------------------------------
def test_same_seed_same_run_and_checkpoint_resumes_exactly():
    runs = []
    for _ in range(2):
        rule = make_rule(small_convstack(seed=3), seed=3)
        for s in range(3):
            rule.step(pair_batch(seed=s))
        runs.append(rule)
    a, b = runs[0].state_dict(), runs[1].state_dict()
    assert a.keys() == b.keys()  # compared key by key: a missing entry fails, not truncates
    tensors = [k for k in a if isinstance(a[k], torch.Tensor)]
    assert tensors and any(k.startswith("transport.inverses.") for k in tensors)
    for k in tensors:
        assert torch.equal(a[k], b[k]), k
    ta, tb = a["transport._extra_state"], b["transport._extra_state"]
    assert ta["steps_done"] == tb["steps_done"] == [3] and torch.equal(ta["noise"], tb["noise"])
    # Resume: a fresh rule loaded from run 0 continues exactly like run 0.
    resumed = make_rule(small_convstack(seed=7), seed=7)
    buf = io.BytesIO()
    torch.save(runs[0].state_dict(), buf)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.transport.steps_done == [3]
    assert torch.equal(resumed.transport.noise.get_state(), runs[0].transport.noise.get_state())
    runs[0].step(pair_batch(seed=9))
    resumed.step(pair_batch(seed=9))
    a, b = dict(runs[0].named_parameters()), dict(resumed.named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_different_seed_different_inverse_noise():
    a, b = make_rule(small_convstack(), seed=0), make_rule(small_convstack(), seed=1)
    assert not torch.equal(a.transport.noise.get_state(), b.transport.noise.get_state())


# ---- local schedules × targets: every stage's target comes from its own head ----------
def _local_bp_reference(rule, batch, k):
    """(stage grads, head grads) of BP on segment k's own loss: stage k on the frozen output
    of the stages below, then its head (taken before any step moves a weight)."""
    x = rule.frozen_input(k, batch)
    loss = rule.objectives[k](rule.encoder.stages[k](x), batch)
    stage, head = list(rule.encoder.stages[k].parameters()), list(rule.objectives[k].parameters())
    grads = torch.autograd.grad(loss, stage + head)
    return grads[:len(stage)], grads[len(stage):]


def _assert_no_inverse(rule):
    t = rule.transport
    assert not t.has_inverses() and [len(g) for g in t.inverses] == [0, 0, 0]
    assert not list(t.inverses.parameters())
    assert len(rule.optimizers) == 3 and not hasattr(t, "optimizer")  # one per stage + head
    for l in range(3):
        with pytest.raises(IndexError, match=f"stage {l} is the bottom of its segment"):
            t.inverse(l, k=l)


def test_greedy_targets_update_is_eta_times_the_stages_own_bp_gradient():
    rule = make_rule(small_convstack(), schedule="greedy", eta=0.5, target_loss="sum", epochs=3)
    _assert_no_inverse(rule)
    batch = pair_batch()
    for stage in range(3):  # one epoch per stage
        rule.start_epoch(stage)
        want_stage, want_head = _local_bp_reference(rule, batch, stage)
        before = {k: v.detach().clone() for k, v in rule.named_parameters()}
        out = rule.step(batch)
        assert out["stage"] == stage and set(out) >= {f"target_loss/stage{stage}", f"shift/stage{stage}"}
        assert not any(k.startswith("recon/") for k in out)
        for q, w in zip(rule.encoder.stages[stage].parameters(), want_stage):
            torch.testing.assert_close(q.grad, 0.5 * w, rtol=1e-4, atol=1e-6)
        for q, w in zip(rule.objectives[stage].parameters(), want_head):
            torch.testing.assert_close(q.grad, w, rtol=1e-4, atol=1e-6)
        own = (f"encoder.stages.{stage}.", f"objectives.{stage}.")
        moved = {k for k, v in rule.named_parameters() if not torch.equal(v, before[k])}
        assert moved and all(k.startswith(own) for k in moved), moved
        for i, (s, o) in enumerate(zip(rule.encoder.stages, rule.objectives)):
            if i > stage:  # not trained yet: no gradient ever reached them
                assert all(q.grad is None for q in [*s.parameters(), *o.parameters()])


def test_simultaneous_targets_update_is_eta_times_each_stages_own_bp_gradient():
    rule = make_rule(small_convstack(), schedule="simultaneous", eta=0.5, target_loss="sum")
    _assert_no_inverse(rule)
    batch = pair_batch()
    want = [_local_bp_reference(rule, batch, k) for k in range(3)]
    angles = [rule.angles(batch, k) for k in range(3)]  # measured without a step
    out = rule.step(batch)
    for k, (want_stage, want_head) in enumerate(want):
        for q, w in zip(rule.encoder.stages[k].parameters(), want_stage):
            torch.testing.assert_close(q.grad, 0.5 * w, rtol=1e-4, atol=1e-6)
        for q, w in zip(rule.objectives[k].parameters(), want_head):
            torch.testing.assert_close(q.grad, w, rtol=1e-4, atol=1e-6)
        assert set(angles[k]) == {f"angle/stage{k}", f"angle/head{k}"}
        assert angles[k][f"angle/stage{k}"] < 0.1 and angles[k][f"angle/head{k}"] < 0.1
    assert set(out) >= {"loss", *(f"{m}/stage{k}" for m in ("loss", "target_loss", "shift") for k in range(3))}
    assert not any(k.startswith("recon/") for k in out)
    # each stage's update used a graph of its own stage only: stage k's target loss reaches
    # no other stage (the first view of the blocked objective has no graph at all)
    t = rule.transport
    for k in range(3):
        p = t.forward_pass(rule, k, rule.frozen_input(k, batch), batch)
        _, top = t.top_target(rule, k, p, batch, head_grads=False)
        (loss,) = t.stage_losses(p.outs, t.propagate_targets(k, p.hs, top))
        others = [q for i, s in enumerate(rule.encoder.stages) if i != k for q in s.parameters()]
        assert all(g is None for g in torch.autograd.grad(loss, others, allow_unused=True, retain_graph=True))
        assert all(g is not None for g in torch.autograd.grad(loss, list(rule.encoder.stages[k].parameters())))


@pytest.mark.parametrize("schedule", ["greedy", "simultaneous", "random"])
def test_inverse_warmup_with_a_local_schedule_is_refused(schedule):
    message = (r"transport.inverse_warmup trains the inverses, but no segment of this rule spans more than "
               r"one stage \(a local schedule gives every stage its own loss.*no inverse is learned; set "
               r"transport.inverse_warmup=0 \(or use schedule e2e on a deeper encoder\)")
    with pytest.raises(ValueError, match=message):
        make_rule(small_convstack(), schedule=schedule, inverse_warmup=2)
    # the same through the config: a ConfigError naming the pair
    cfg = build_config({"schedule": schedule, "transport": {"name": "targets", "inverse_warmup": 2},
                        "train": {"epochs": 3}})
    enc = small_convstack()
    shapes = enc.out_shapes((1, 12, 12))
    with pytest.raises(ConfigError, match=rf"schedule {schedule} × transport targets: " + message):
        build_rule(cfg, enc, lambda i: HingeObjective(HingeConfig(dim=8), shapes[i]))
