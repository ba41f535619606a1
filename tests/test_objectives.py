"""Objectives against hand-written references: values and gradients."""
import math

import pytest
import torch

from biossl.objectives import hinge_error, hinge_loss, ntxent_loss
from biossl.objectives.base import ProjectionHead
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.objectives.ntxent import NTXentConfig
from biossl.views.batch import ViewBatch


def hinge_reference(z1, z2, tau=2.0, delta=1.0, negatives=None, wrap=False, reduction="sum"):
    """Literal double loop over DESIGN.md's formula.

    J = ``negatives``, official (wrap False): the pairs (r, r+k), k = 1…J, r + k < N (j > i,
    no wrap-around), each weighted 1/(J+1) (Bio-SSL's "n negatives", n = J + 1) — for
    J ≥ N−1 every upper-diagonal pair. Wrapping: (i, i+k mod N), and all pairs at weight 1
    when J ≥ N−1. 'mean': mean of the positive terms + mean of the negative terms
    (unweighted)."""
    n = z1.shape[0]
    pos, neg, w = [], [], 1.0
    for i in range(n):
        for j in range(n):
            d = (z1[i] - z2[j]).abs().sum()
            if i == j:
                pos.append(torch.relu(delta - (tau - d)))
                continue
            if negatives is None or (wrap and negatives >= n - 1):
                chosen = True
            elif wrap:
                chosen, w = (j - i) % n in range(1, negatives + 1), 1.0 / (negatives + 1)
            else:
                chosen, w = j - i in range(1, negatives + 1), 1.0 / (negatives + 1)
            if chosen:
                neg.append(torch.relu(delta + (tau - d)))
    if reduction == "mean":
        return sum(pos) / len(pos) + sum(neg) / len(neg)
    return sum(pos) + w * sum(neg)


def assert_exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def ntxent_reference(z1, z2, t):
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for a in range(n2):
        pos = (a + n) % n2
        num = torch.exp(z[a] @ z[pos] / t)
        den = sum(torch.exp(z[a] @ z[b] / t) for b in range(n2) if b != a)
        total = total - torch.log(num / den)
    return total / n2


@pytest.mark.parametrize("negatives", [None, 2, 4, 6, 11])  # N = 7: 6 and 11 are J ≥ N − 1
@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("tau,delta", [(2.0, 1.0), (0.5, 0.3)])
def test_hinge_matches_reference_values_and_grads(negatives, wrap, reduction, tau, delta):
    g = torch.Generator().manual_seed(1)
    z1 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    z2 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    ours = hinge_loss(z1, z2, tau, delta, negatives, reduction, negatives_wrap=wrap)
    ref = hinge_reference(z1, z2, tau, delta, negatives, wrap, reduction)
    assert_exact(ours, ref)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    g_ref = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        assert_exact(a, b)
    # some hinges on, some off: the test would miss gating bugs otherwise
    assert 0 < ref.item()


def test_hinge_n_negatives_default_is_the_official_non_wrapping_diagonals():
    """Default: pairs (r, r+k), r < N−k, weight 1/(J+1); the last rows get fewer negatives."""
    assert HingeConfig().negatives_wrap is False
    z1 = torch.zeros(3, 1, dtype=torch.float64)
    z2 = torch.tensor([[0.0], [0.5], [1.0]], dtype=torch.float64)
    # positives: d = 0, 0.5, 1 → relu(d − 1) = 0. One negative (k = 1 only; Bio-SSL's n = 2):
    # official (0,1): d 0.5 → 2.5; (1,2): d 1 → 2; weight 1/2 → 2.25
    assert hinge_loss(z1, z2, negatives=1).item() == pytest.approx(2.25, abs=1e-15)
    # wrapping adds (2,0): d 0 → 3; (4.5 + 3) / 2
    assert hinge_loss(z1, z2, negatives=1, negatives_wrap=True).item() == pytest.approx(3.75, abs=1e-15)
    # J ≥ N−1: official keeps weight 1/(J+1) on the upper triangle; wrapping falls back to all pairs, weight 1
    upper = (2.5 + 2.0 + 2.0) / 5  # (0,1), (0,2), (1,2)
    assert hinge_loss(z1, z2, negatives=4).item() == pytest.approx(upper, abs=1e-15)


def test_hinge_defaults_are_the_spec_thresholds():
    z1 = torch.zeros(2, 1, dtype=torch.float64)
    z2 = torch.tensor([[0.5], [2.5]], dtype=torch.float64)
    # positives: relu(d_ii - 1) = relu(0.5-1)=0 and relu(2.5-1)=1.5; negatives relu(3 - d_ij):
    # d_01 = 2.5 -> 0.5, d_10 = 0.5 -> 2.5
    assert hinge_loss(z1, z2).item() == pytest.approx(1.5 + 0.5 + 2.5)


@pytest.mark.parametrize("negatives", [None, 4, 9, 20])  # N = 9
@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_hinge_explicit_error_equals_autograd(negatives, wrap, reduction):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.7
    z2 = (torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    loss = hinge_loss(z1, z2, negatives=negatives, reduction=reduction, negatives_wrap=wrap)
    (auto,) = torch.autograd.grad(loss, z2)
    explicit = hinge_error(z1, z2.detach(), negatives=negatives, reduction=reduction, negatives_wrap=wrap)
    assert_exact(explicit, auto)
    assert explicit.abs().sum() > 0


def test_hinge_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        hinge_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2"):
        hinge_loss(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="reduction"):
        hinge_loss(torch.zeros(3, 3), torch.ones(3, 3), reduction="max")


def test_hinge_partial_batch_with_few_negatives():
    # Bio-SSL's mask was sized for the full batch and crashed on the last partial batch.
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 5, 11):
        z = torch.randn(n, 4, generator=g)
        assert torch.isfinite(hinge_loss(z, z + 0.1, negatives=5))


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_matches_reference(t):
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = ntxent_loss(z1, z2, t), ntxent_reference(z1, z2, t)
    assert torch.allclose(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        assert torch.allclose(a, b)


def ntxent_direction_reference(za, zb, zother_a, t):
    """Mean over anchors a in one view of −log softmax: positive zb[i], over every other view."""
    terms = []
    for i in range(za.shape[0]):
        others = [zb[j] for j in range(zb.shape[0])] + [zother_a[j] for j in range(za.shape[0]) if j != i]
        num = torch.exp(za[i] @ zb[i] / t)
        den = sum(torch.exp(za[i] @ o / t) for o in others)
        terms.append(-torch.log(num / den))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_ntxent_sum_directions_is_bio_ssl_simclr_loss(t):
    """Bio-SSL's SimCLRLoss: mean over view-1 anchors + mean over view-2 anchors (2× 'mean')."""
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u1, u2 = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)
    ref = ntxent_direction_reference(u1, u2, u1, t) + ntxent_direction_reference(u2, u1, u2, t)
    ours = ntxent_loss(z1, z2, t, reduction="sum_directions")
    assert_exact(ours, ref)
    for a, b in zip(torch.autograd.grad(ours, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        assert_exact(a, b)
    assert_exact(ours, 2 * ntxent_loss(z1, z2, t))
    assert NTXentConfig().reduction == "mean"
    with pytest.raises(ValueError, match="sum_directions"):
        ntxent_loss(z1, z2, t, reduction="sum")


@pytest.mark.parametrize("in_shape,pool,mode,features", [
    ((8, 16, 16), 2, "window", 8 * 8 * 8),      # Bio-SSL vgg6 head: AvgPool2d(2)
    ((8, 5, 5), 2, "window", 8 * 2 * 2),        # floor, like nn.AvgPool2d
    ((8, 16, 16), 2, "adaptive", 8 * 2 * 2),
    ((8, 4, 4), None, "adaptive", 8 * 4 * 4),   # official conv6 heads: flatten the whole map
])
def test_head_pool_modes(in_shape, pool, mode, features):
    torch.manual_seed(0)
    head = ProjectionHead(in_shape, 3, pool, pool_mode=mode).double()
    assert head.mlp[-1].in_features == features and head.mlp[-1].bias is None
    h = torch.randn(2, *in_shape, dtype=torch.float64)
    if pool is not None and mode == "window":
        c, hh, ww = in_shape
        m = hh // pool
        pooled = h[:, :, : m * pool, : m * pool].reshape(2, c, m, pool, m, pool).mean((3, 5))
    elif pool is not None:
        pooled = h.reshape(2, in_shape[0], pool, in_shape[1] // pool, pool, in_shape[2] // pool).mean((3, 5))
    else:
        pooled = h
    assert_exact(head(h), pooled.flatten(1) @ head.mlp[-1].weight.t())


def test_head_pool_options_are_validated():
    with pytest.raises(ValueError, match="head_pool_mode"):
        HingeConfig(head_pool_mode="max").validate()
    with pytest.raises(ValueError, match="head_pool"):
        NTXentConfig(head_pool=0).validate()
    with pytest.raises(ValueError, match="larger than the stage output"):
        ProjectionHead((4, 1, 1), 3, 2, pool_mode="window")


def test_ntxent_perfect_pairs_beat_random():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, generator=g)
    assert ntxent_loss(z, z, 0.1) < ntxent_loss(z, torch.randn(16, 8, generator=g), 0.1)
    assert ntxent_loss(z, z, 0.1) < math.log(31)


def test_grad_block_detaches_first_view_and_head_sees_both():
    cfg = HingeConfig(grad_block=True, negatives=3)
    torch.manual_seed(0)  # the head's init
    obj = HingeObjective(cfg, (4, 3, 3)).double()
    h = torch.randn(12, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                    requires_grad=True)
    loss = obj(h, ViewBatch(h, 6, "pairs"))
    (gh,) = torch.autograd.grad(loss, h)
    assert gh[:6].abs().sum() == 0 and gh[6:].abs().sum() > 0
    assert obj.grad_block


def test_head_init_scales_the_head_and_is_validated():
    torch.manual_seed(0)
    w1 = HingeObjective(HingeConfig(), (8, 3, 3)).head.mlp[-1].weight.detach().clone()
    torch.manual_seed(0)
    w01 = HingeObjective(HingeConfig(head_init=0.1), (8, 3, 3)).head.mlp[-1].weight.detach()
    torch.testing.assert_close(w01, 0.1 * w1)
    with pytest.raises(ValueError, match="head_init"):
        HingeConfig(head_init=0.0).validate()


def test_hinge_is_homogeneous_so_scaled_thresholds_match_a_scaled_head():
    """head_init c with (cτ, cδ) is the default head with (τ, δ), scaled by c."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    c = 0.1
    torch.testing.assert_close(hinge_loss(c * z1, c * z2, c * 2.0, c * 1.0, negatives=3),
                               c * hinge_loss(z1, z2, 2.0, 1.0, negatives=3))
