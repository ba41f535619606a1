"""CLAPP on augmentation pairs ('pairs' batches: view 1 is the context, view 2 its one
future): the explicit plasticity rule equals autograd, stage by stage and for the whole
layer-local rule, in float64."""
import copy

import pytest
import torch
from torch import nn

from biossl.config import TrainConfig
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.rules.clapp_explicit import forward_traced, local_gradients
from biossl.rules import make_rule
from biossl.views.batch import ViewBatch

STAGES = {
    "conv+relu+maxpool": lambda: nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
    "conv+hardtanh": lambda: nn.Sequential(nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.Hardtanh()),
    "linear+leakyrelu": lambda: nn.Sequential(nn.Linear(16, 5), nn.LeakyReLU(0.1)),
}
VARIANTS = {
    "retro=pred^T": ClappConfig(),                                   # plain autograd reference
    "retro-asym": ClappConfig(),                                     # independent W_retro
    "transpose-both": ClappConfig(sampling="both", negatives=3, context_path="transpose"),
}


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def pairs_input(kind, n, seed=3):
    g = torch.Generator().manual_seed(seed)
    shape = (2 * n, 16) if kind == "linear+leakyrelu" else (2 * n, 2, 8, 8)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def pairs_reference(obj: ClappObjective, h, n, draws):
    """The loss written out for a pair batch, plain autograd, W_retro := W_predᵀ: image i's
    context v1[i] scores the future v2[index[j, i]] by u = v2ᵀ W_pred,1 v1; the positive
    (j = 0, index i itself) and negative hinges are averaged over the n images, the negatives also over J."""
    v = h.flatten(2).mean(-1) if h.dim() > 2 else h
    v1, v2 = v[:n], v[n:]
    (d,) = draws.steps
    w = obj.w_pred[0]
    terms = []
    assert torch.equal(d.index[0, :, 0], torch.arange(n))
    for j in range(d.index.shape[0]):
        u = torch.einsum("nd,dc,nc->n", v2[d.index[j, :, 0]], w, v1)
        hinge = torch.relu(1 - u) if j == 0 else torch.relu(1 + u)
        terms.append((hinge * d.use[j].to(u)).mean())
    factor = 2.0 if obj.cfg.sampling == "either" else 1.0
    return factor * (terms[0] + torch.stack(terms[1:]).mean())


@pytest.mark.parametrize("kind", list(STAGES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_explicit_rule_equals_autograd_on_pairs(kind, variant):
    torch.manual_seed(0)
    stage = STAGES[kind]().double()
    obj = ClappObjective(copy.deepcopy(VARIANTS[variant]), (5,)).double()
    if variant == "retro=pred^T":
        obj.w_retro.data.copy_(obj.w_pred.detach().transpose(1, 2))
    n = 6
    batch = ViewBatch(pairs_input(kind, n), n, "pairs")
    a_stage, a_obj = copy.deepcopy(stage), copy.deepcopy(obj)
    h = a_stage(batch.x)
    if variant == "retro=pred^T":
        loss = pairs_reference(a_obj, h, n, a_obj.draw(n, [1]))
    else:
        loss = a_obj(h, batch)
    loss.backward()
    with torch.no_grad():
        out, trace = forward_traced(stage, batch.x)
        e_loss, grad_h = obj.explicit_backward(out, batch)
    local_gradients(trace, grad_h)
    assert loss.item() > 0 and abs(e_loss.item() - loss.item()) < 1e-12
    explicit, autograd = dict(stage.named_parameters()), dict(a_stage.named_parameters())
    assert explicit.keys() == autograd.keys()
    for name in explicit:
        assert autograd[name].grad.abs().sum() > 0, name
        assert rel(explicit[name].grad, autograd[name].grad) < 1e-12, name  # measured ≤ 2e-14
    assert rel(obj.w_pred.grad, a_obj.w_pred.grad) < 1e-12
    if variant == "retro-asym":
        assert rel(obj.w_retro.grad, a_obj.w_retro.grad) < 1e-12


def pairs_rule(mode, seed=0):
    torch.manual_seed(seed)
    enc = convstack(ConvStackConfig(channels=[3, 4], pool=[True, True], bias=True), 1).double()
    shapes = enc.out_shapes((1, 8, 8))
    return make_rule("simultaneous", "explicit" if mode == "explicit" else "bp", enc,
                      lambda i: ClappObjective(ClappConfig(negatives=2), shapes[i]).double(),
                      TrainConfig(lr=1e-2, seed=seed))


def test_rule_on_pairs_explicit_and_autograd_give_the_same_steps():
    """Whole rule, two stages, three Adam steps on pair batches: same losses each step and the
    same parameters after (float64)."""
    ra, re = pairs_rule("autograd"), pairs_rule("explicit")
    re.load_state_dict(ra.state_dict())
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x = torch.randn(2 * 8, 1, 8, 8, generator=g, dtype=torch.float64)
        batch = ViewBatch(x, 8, "pairs")
        la, le = ra.step(batch), re.step(batch)
        assert la.keys() == le.keys() == {"loss", "loss/stage0", "loss/stage1"}
        for k in la:
            assert abs(la[k] - le[k]) < 1e-12, k
    pa, pe = dict(ra.named_parameters()), dict(re.named_parameters())
    assert pa.keys() == pe.keys()
    for k in pa:
        assert rel(pe[k], pa[k]) < 1e-12, k
    moved = pairs_rule("autograd")
    assert any(not torch.equal(moved.state_dict()[k], ra.state_dict()[k]) for k in pa)  # it trained
