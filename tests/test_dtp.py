"""Difference target propagation: locality of every update, detached targets, the
difference correction against its analytic value, learned inverses, BP alignment."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from biossl.config import ConfigError, TrainConfig, build_config
from biossl.encoders.base import StageStack
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.feedback.inverse import build_inverse
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.registry import RULES, load_all
from biossl.rules.dtp import DTP, DTPConfig
from biossl.views.batch import ViewBatch

load_all()


def small_convstack(seed=0, channels=(4, 8, 8), act="tanh"):
    torch.manual_seed(seed)
    return convstack(ConvStackConfig(channels=list(channels), pool=[True] * len(channels),
                                     activation=act), 1)


def make_rule(encoder, in_shape=(1, 12, 12), seed=0, grad_block=True, lr=1e-3, **kw):
    shapes = encoder.out_shapes(in_shape)
    torch.manual_seed(seed + 1)
    hinge = HingeConfig(grad_block=grad_block, negatives=3, dim=8, head_pool=None)
    return DTP(DTPConfig(**kw), encoder, lambda i: HingeObjective(hinge, shapes[i]),
               TrainConfig(lr=lr, seed=seed))


def pair_batch(n=6, shape=(1, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return ViewBatch(torch.cat([x, x + 0.1 * torch.randn(x.shape, generator=g)]), n, "pairs")


def _owners(rule):
    owners = {id(p): f"stage{i}" for i, s in enumerate(rule.encoder.stages) for p in s.parameters()}
    owners.update({id(p): f"g{l + 1}" for l, g in enumerate(rule.inverses) for p in g.parameters()})
    owners.update({id(p): "head" for p in rule.objective.parameters()})
    return owners


def _touched(rule, loss):
    """Names of the parameter groups that receive a nonzero gradient from ``loss``."""
    params = list(rule.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    owners = _owners(rule)
    return {owners[id(p)] for p, g in zip(params, grads) if g is not None and g.abs().sum() > 0}


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
    with pytest.raises(ValueError, match=rf"stage 2 contains {name}, which DTP cannot invert; allowed: .*Conv2d"):
        DTP(DTPConfig(), enc, lambda i: None, TrainConfig())


def test_batchnorm_encoder_is_refused_at_its_first_inverted_stage():
    enc = convstack(ConvStackConfig(channels=[2, 2], batchnorm=True), 1)
    with pytest.raises(ValueError, match="stage 1 contains BatchNorm2d"):
        make_rule(enc)


# ---- configuration ----------------------------------------------------------------------
def test_unknown_option_fails_loudly():
    with pytest.raises(ConfigError, match="unknown key 'rule.sigma'"):
        build_config({"rule": {"name": "dtp", "sigma": 0.1}})
    cfg = build_config({"rule": {"name": "dtp", "eta": 0.25, "feedback_steps": 2}})
    assert cfg.rule.params == DTPConfig(eta=0.25, feedback_steps=2)


@pytest.mark.parametrize("bad,message", [
    (dict(eta=0.0), "eta must be > 0, got 0.0"),
    (dict(noise_std=-1.0), "noise_std must be ≥ 0, got -1.0"),
    (dict(feedback_steps=-1), "feedback_steps must be ≥ 0, got -1"),
    (dict(feedback_every=0), "feedback_every must be ≥ 1, got 0"),
    (dict(feedback_activation="softplus"), "feedback_activation: unknown activation 'softplus'; choose one of"),
    (dict(target_loss="l1"), "unknown target_loss 'l1'; choose 'sum', 'row_mean' or 'element_mean'"),
    (dict(target_loss="mean"), "unknown target_loss 'mean'; choose 'sum', 'row_mean' or 'element_mean'"),
    (dict(feedback_order="late"), "unknown feedback_order 'late'; choose 'before_targets' or 'after_targets'"),
    (dict(feedback_rows="half"), "unknown feedback_rows 'half'; choose 'one_view' or 'all'"),
    (dict(feedback_lr=0.0), "feedback_lr must be > 0, got 0.0"),
    (dict(diagnostics_every=-1), "diagnostics_every must be ≥ 0, got -1"),
    (dict(feedback_warmup=3, feedback_steps=0), "feedback_warmup needs feedback_steps ≥ 1"),
])
def test_bad_values_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        DTPConfig(**bad).validate()
    with pytest.raises(ValueError, match=message):
        make_rule(small_convstack(), **bad)


def test_registered_with_plausibility_flags():
    assert RULES.get("dtp").factory is DTP
    assert DTP.plausible_rule == {"i": True, "ii": True, "iii": False, "iv": True}


# ---- locality: which parameters each loss may change ----------------------------------
def test_each_loss_reaches_only_its_own_parameters():
    rule = make_rule(small_convstack())
    batch = pair_batch()
    p = rule.forward_pass(batch)
    _, top = rule.top_target(p, batch, head_grads=False)
    local = rule.stage_losses(p.outs, rule.propagate_targets(p.hs, top))
    for l, loss in enumerate(local):
        assert _touched(rule, loss) == {f"stage{l}"}
    for l, loss in enumerate(rule.feedback_losses(p.hs), start=1):
        assert _touched(rule, loss) == {f"g{l}"}


def test_step_changes_every_group_and_warmup_changes_only_feedback():
    rule = make_rule(small_convstack(), feedback_warmup=2)
    owners = _owners(rule)
    batch = pair_batch()

    def changed(before):
        return {owners[id(q)] for q, b in zip(rule.parameters(), before) if not torch.equal(q, b)}

    before = [q.detach().clone() for q in rule.parameters()]
    out = rule.step(batch)  # warm-up: feedback only
    assert changed(before) == {"g1", "g2"} and "loss/stage0" not in out
    rule.step(batch)
    before = [q.detach().clone() for q in rule.parameters()]
    out = rule.step(batch)
    assert changed(before) == {"stage0", "stage1", "stage2", "g1", "g2", "head"}
    assert {"loss", "loss/stage0", "loss/stage2", "recon/stage1", "recon/stage2"} <= set(out)


def test_no_graph_spans_two_stages():
    rule = make_rule(small_convstack())
    p = rule.forward_pass(pair_batch())
    for l in range(1, len(p.outs)):
        # The output of stage l does not depend (in autograd) on stage l−1's weights.
        assert torch.autograd.grad(p.outs[l].sum(), list(rule.encoder.stages[l - 1].parameters()),
                                   allow_unused=True) == (None,)


def test_targets_are_detached():
    rule = make_rule(small_convstack())
    batch = pair_batch()
    p = rule.forward_pass(batch)
    _, top = rule.top_target(p, batch)
    targets = rule.propagate_targets(p.hs, top)
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
    g = rule.inverse(1).maps[0]
    with torch.no_grad():  # g_1 = f_1⁻¹ exactly
        g.weight.copy_(torch.linalg.inv(w))
        g.bias.copy_(-torch.linalg.inv(w) @ b)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    batch = ViewBatch(torch.cat([x, x + 0.1]), 4, "pairs")
    p = rule.forward_pass(batch)
    _, top = rule.top_target(p, batch)
    targets = rule.propagate_targets(p.hs, top)
    # Independent autograd of the objective on h_1:
    h1 = enc(batch.x)[1].detach().requires_grad_(True)
    (dl_dh1,) = torch.autograd.grad(rule.objective(h1, batch), h1)
    torch.testing.assert_close(targets[1], h1.detach() - 0.3 * dl_dh1)
    expected = p.hs[0] - 0.3 * dl_dh1 @ torch.linalg.inv(w).T
    torch.testing.assert_close(targets[0], expected, rtol=1e-4, atol=1e-5)
    assert (targets[0] - p.hs[0]).abs().max() > 1e-3  # not trivially equal to h_0


def test_one_by_one_conv_exact_inverse_gives_analytic_target_below():
    torch.manual_seed(0)
    enc = StageStack([nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.Identity()),
                      nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.Identity())], 2)
    rule = make_rule(enc, in_shape=(2, 4, 4), grad_block=False, eta=0.5, feedback_bias=False)
    a = enc.stages[1][0].weight.detach()[:, :, 0, 0]  # (out, in)
    with torch.no_grad():  # transposed conv y[o] = Σ_i w[i, o] x[i]: w = (A⁻¹)ᵀ inverts A
        rule.inverse(1).maps[0].weight.copy_(torch.linalg.inv(a).T[:, :, None, None])
    batch = pair_batch(n=3, shape=(2, 4, 4))
    p = rule.forward_pass(batch)
    _, top = rule.top_target(p, batch)
    targets = rule.propagate_targets(p.hs, top)
    step = (top - p.hs[1]).permute(0, 2, 3, 1) @ torch.linalg.inv(a).T  # A⁻¹ applied per pixel
    torch.testing.assert_close(targets[0], p.hs[0] + step.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_top_stage_update_is_eta_times_bp_gradient_and_first_view_shortcut_is_exact():
    rule = make_rule(small_convstack(), eta=0.5)
    batch = pair_batch()
    dtp, bp = rule.update_directions(batch), rule.bp_gradients(batch)
    for a, b in zip(dtp[-1], bp[-1]):
        torch.testing.assert_close(a, 0.5 * b, rtol=1e-4, atol=1e-6)
    # Gradient block: running the first view as targets-equal-activity rows changes nothing.
    rule._active_rows = lambda b: slice(0, b.x.shape[0])
    for a, b in zip(rule.update_directions(batch), dtp):
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-6)


# ---- the official SSL-DTP forms as options ---------------------------------------------
@pytest.mark.parametrize("reduction", ["sum", "row_mean", "element_mean"])
def test_stage_loss_reductions_match_their_formulas_values_and_gradients(reduction):
    """'sum' ½Σ(f − ĥ)², 'row_mean' that / rows, 'element_mean' (official) Σ(f − ĥ)² / numel."""
    enc = small_convstack().double()
    rule = make_rule(enc, target_loss=reduction)
    rule.double()  # encoder, head and inverses
    assert DTPConfig().target_loss == "sum"
    batch = pair_batch()
    batch = ViewBatch(batch.x.double(), batch.n, "pairs")
    p = rule.forward_pass(batch)
    _, top = rule.top_target(p, batch, head_grads=False)
    targets = rule.propagate_targets(p.hs, top)
    for l, (loss, out, t) in enumerate(zip(rule.stage_losses(p.outs, targets), p.outs, targets)):
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


def test_feedback_order_decides_which_g_makes_the_targets():
    """'after_targets' (official): the step's stage updates are those of the targets from the
    g it started with; 'before_targets' (default): from g after this step's feedback update."""
    assert DTPConfig().feedback_order == "before_targets"
    batch = pair_batch()
    # official order: the update equals the update directions computed before the step
    after = make_rule(small_convstack(), feedback_order="after_targets", diagnostics_every=0)
    expected = after.update_directions(batch)
    g_before = [q.detach().clone() for q in after.inverses.parameters()]
    after.step(batch)
    assert not all(torch.equal(a, b) for a, b in zip(g_before, after.inverses.parameters()))  # g did learn
    for got, want in zip(_stage_grads(after), expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # default order: the same as training g first by hand, then computing the directions
    first = make_rule(small_convstack(), diagnostics_every=0)
    twin = make_rule(small_convstack(), diagnostics_every=0)
    twin.feedback_phase(twin.forward_pass(batch), batch)
    expected_first = twin.update_directions(batch)
    first.step(batch)
    for l, (got, want, old) in enumerate(zip(_stage_grads(first), expected_first, expected)):
        for a, b, c in zip(got, want, old):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            if l < len(expected) - 1:  # below the top the targets pass through g: they differ
                assert not torch.allclose(a, c)


# ---- learned feedback -------------------------------------------------------------------
def test_feedback_reconstruction_loss_decreases():
    rule = make_rule(small_convstack(), feedback_warmup=60, lr=3e-3, noise_std=0.05)
    batch = pair_batch(n=8)
    first = rule.step(batch)
    for _ in range(58):
        rule.step(batch)
    last = rule.step(batch)
    for key in ("recon/stage1", "recon/stage2"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])


def test_feedback_loss_is_denoising_reconstruction_with_the_rules_noise():
    rule = make_rule(small_convstack(), noise_std=0.3)
    p = rule.forward_pass(pair_batch())
    state = rule.generator.get_state()
    losses = rule.feedback_losses(p.hs)
    rule.generator.set_state(state)
    for l, loss in enumerate(losses, start=1):
        h = p.hs[l - 1]
        noisy = h + 0.3 * torch.randn(h.shape, generator=rule.generator)
        rec = rule.inverse(l)(rule.encoder.stages[l](noisy), h.shape[2:])
        torch.testing.assert_close(loss, (rec - noisy).pow(2).mean())


@pytest.mark.parametrize("rows, same", [("one_view", True), ("all", False)])
def test_feedback_rows_one_view_learns_from_second_views_only(rows, same):
    results = []
    for first in (0.0, 0.5):
        rule = make_rule(small_convstack(), grad_block=False, feedback_warmup=1, feedback_rows=rows)
        b = pair_batch()
        x = b.x.clone()
        x[: b.n] += first  # change only the first views
        rule.step(ViewBatch(x, b.n, "pairs"))
        results.append([q.detach().clone() for q in rule.inverses.parameters()])
    assert all(torch.equal(u, v) for u, v in zip(*results)) is same


def test_dtp_update_aligns_with_bp_after_feedback_training():
    # Stages that lose little information (pool only twice, channels grow), so that g_l
    # can approximate f_l⁻¹; tanh keeps the activity graded.
    torch.manual_seed(0)
    enc = convstack(ConvStackConfig(channels=[8, 32, 32], pool=[True, True, False],
                                    activation="tanh"), 1)
    rule = make_rule(enc, feedback_warmup=200, lr=3e-3, noise_std=0.05)

    def mean_angles():
        angles = [rule.angles(pair_batch(n=8, seed=1000 + s)) for s in range(3)]
        return [sum(a[l] for a in angles) / len(angles) for l in range(3)]

    before = mean_angles()
    for s in range(200):  # warm-up: only the inverses learn
        rule.step(pair_batch(n=8, seed=s))
    after = mean_angles()
    assert after[2] < 1.0  # top stage: exactly the BP direction
    assert all(a < 80.0 for a in after), after
    assert after[0] < before[0] - 10 and after[1] < before[1] - 10, (before, after)


def test_logged_angles_are_those_of_the_step_update():
    rule = make_rule(small_convstack(), feedback_steps=0, diagnostics_every=2)
    batch = pair_batch()
    expected = rule.angles(batch)  # no feedback update in the step: same g, same weights
    assert rule.diagnostics() == {}
    rule.step(batch)
    got = rule.diagnostics()
    assert list(got) == ["angle/stage0", "angle/stage1", "angle/stage2"]
    for l, a in enumerate(expected):
        assert math.isclose(got[f"angle/stage{l}"], a, abs_tol=1e-3)
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
    assert tensors
    for k in tensors:
        assert torch.equal(a[k], b[k]), k
    # Resume: a fresh rule loaded from run 0 continues exactly like run 0.
    resumed = make_rule(small_convstack(seed=7), seed=7)
    buf = io.BytesIO()
    torch.save(runs[0].state_dict(), buf)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.steps_done == 3
    runs[0].step(pair_batch(seed=9))
    resumed.step(pair_batch(seed=9))
    a, b = dict(runs[0].named_parameters()), dict(resumed.named_parameters())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
