"""Objectives against hand-written references: values and gradients."""
import math

import pytest
import torch

from biossl.objectives import hinge_error, hinge_loss, ntxent_loss
from biossl.objectives.hinge import HingeConfig, HingeObjective
from biossl.views.batch import ViewBatch


def hinge_reference(z1, z2, tau=2.0, delta=1.0, negatives=None):
    """Literal double loop over the spec's formula."""
    n = z1.shape[0]
    total = z1.new_zeros(())
    for i in range(n):
        for j in range(n):
            d = (z1[i] - z2[j]).abs().sum()
            if i == j:
                total = total + torch.relu(delta - (tau - d))
            elif negatives is None:
                total = total + torch.relu(delta + (tau - d))
            elif (j - i) % n in range(1, negatives):
                total = total + torch.relu(delta + (tau - d)) / negatives
    return total


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


@pytest.mark.parametrize("negatives", [None, 3, 5])
@pytest.mark.parametrize("tau,delta", [(2.0, 1.0), (0.5, 0.3)])
def test_hinge_matches_reference_values_and_grads(negatives, tau, delta):
    g = torch.Generator().manual_seed(1)
    z1 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    z2 = (torch.randn(7, 4, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    ours = hinge_loss(z1, z2, tau, delta, negatives)
    ref = hinge_reference(z1, z2, tau, delta, negatives)
    assert torch.allclose(ours, ref)
    g_ours = torch.autograd.grad(ours, (z1, z2))
    g_ref = torch.autograd.grad(ref, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b)
    # some hinges on, some off: the test would miss gating bugs otherwise
    assert 0 < ref.item()


def test_hinge_defaults_are_the_spec_thresholds():
    z1 = torch.zeros(2, 1, dtype=torch.float64)
    z2 = torch.tensor([[0.5], [2.5]], dtype=torch.float64)
    # positives: relu(d_ii - 1) = relu(0.5-1)=0 and relu(2.5-1)=1.5; negatives relu(3 - d_ij):
    # d_01 = 2.5 -> 0.5, d_10 = 0.5 -> 2.5
    assert hinge_loss(z1, z2).item() == pytest.approx(1.5 + 0.5 + 2.5)


@pytest.mark.parametrize("negatives", [None, 4])
def test_hinge_explicit_error_equals_autograd(negatives):
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.7
    z2 = (torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    loss = hinge_loss(z1, z2, negatives=negatives)
    (auto,) = torch.autograd.grad(loss, z2)
    assert torch.allclose(hinge_error(z1, z2.detach(), negatives=negatives), auto)


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
    assert obj.stop_grad_first


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
