"""The explicit CLAPP plasticity rule for one stage, computed from activities without autograd.

CLAPP's update of a forward weight W_ij of a stage (pre-synaptic unit i, post-synaptic j):

    ΔW_ij ∝ γ [ (W_pred c)_j ρ′(a_j^{t+δt}) x_i^{t+δt} + (W_retro z)_j ρ′(a_j^t) x_i^t ]

The objective supplies the modulated dendritic signals at the stage output (γ times
W_pred c for a future patch, γ times W_retro z for a context patch, spread over the
patch's spatial positions by the per-patch average; see
``ClappObjective.explicit_backward``; with ``retro_score: separate``, the official form,
the context's signal is gated by its own γ′ from the mirror score u′ = cᵀ W_retro z). This
module supplies the rest, inside the stage:
the signal is routed back through the max-pool to the unit that won it (argmax), gated
by the post-synaptic derivative ρ′(a), and multiplied with the pre-synaptic input x
(via ``unfold`` for a 1-D/2-D convolution, which lists the inputs each output unit sees;
for a 3-D convolution, which ``unfold`` has no form for, via
``torch.nn.grad.conv3d_weight``: the same sum of post-synaptic signal × stored input over
samples and positions, computed as their correlation). The product is written into
``.grad`` so that the stage's optimizer applies it.

A stage must be exactly one weight layer (conv or linear), then element-wise
nonlinearities and max-pools: with a second weight layer the signal would have to cross
that layer's weights backwards, i.e. weight transport. Anything else fails loudly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NONLINEARITIES = (nn.ReLU, nn.Hardtanh, nn.Tanh, nn.LeakyReLU, nn.Identity)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_POOL_FN = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}

UNFOLD_CHUNK_BYTES = 16 * 2 ** 20
"""Upper bound on one chunk of unfolded pre-synaptic inputs (the Hebbian product runs in chunks)."""


def check_stage(stage: nn.Module) -> None:
    """Raise ValueError unless ``stage`` is weight layer → element-wise nonlinearities / max-pools."""
    mods = list(stage.children()) if isinstance(stage, nn.Sequential) else [stage]
    if not mods or not isinstance(mods[0], WEIGHT_LAYERS):
        raise ValueError(f"the explicit rule needs a stage that starts with one conv/linear layer; "
                         f"got {stage}")
    w = mods[0]
    if isinstance(w, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if w.groups != 1 or isinstance(w.padding, str) or w.padding_mode != "zeros":
            raise ValueError(f"the explicit rule supports convs with groups=1, integer zero padding; got {w}")
    for m in mods[1:]:
        if not isinstance(m, NONLINEARITIES + POOLS):
            raise ValueError(f"the explicit rule cannot route a local error through {type(m).__name__} "
                             f"(supported after the weight layer: "
                             f"{', '.join(t.__name__ for t in NONLINEARITIES + POOLS)})")


@dataclass
class StageTrace:
    """What the rule keeps of one forward pass: the layer's input x, its drive a, pool indices."""
    modules: list[nn.Module]
    x: Tensor
    records: list[Tensor]
    """Per module after the weight layer: its input (nonlinearity) or argmax indices (pool)."""
    shapes: list[torch.Size]
    """Per module after the weight layer: its input shape."""


@torch.no_grad()
def forward_traced(stage: nn.Module, x: Tensor) -> tuple[Tensor, StageTrace]:
    """Run the stage and keep what the update needs (no autograd graph is built)."""
    check_stage(stage)
    mods = list(stage.children()) if isinstance(stage, nn.Sequential) else [stage]
    h = mods[0](x)
    records, shapes = [], []
    for m in mods[1:]:
        shapes.append(h.shape)
        if isinstance(m, POOLS):
            pool = next(fn for t, fn in _POOL_FN.items() if isinstance(m, t))  # also subclasses
            h, idx = pool(h, m.kernel_size, m.stride, m.padding, m.dilation,
                          ceil_mode=m.ceil_mode, return_indices=True)
            records.append(idx)
        else:
            records.append(h)
            h = m(h)
    return h, StageTrace(mods, x, records, shapes)


def activation_derivative(m: nn.Module, a: Tensor) -> Tensor:
    """ρ′(a) of an element-wise nonlinearity at its input a (the conventions of torch's own backward)."""
    if isinstance(m, nn.ReLU):
        return (a > 0).to(a.dtype)
    if isinstance(m, nn.Hardtanh):
        return ((a > m.min_val) & (a < m.max_val)).to(a.dtype)
    if isinstance(m, nn.Tanh):
        return 1.0 - torch.tanh(a) ** 2
    if isinstance(m, nn.LeakyReLU):
        return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, m.negative_slope))
    if isinstance(m, nn.Identity):
        return torch.ones_like(a)
    raise ValueError(f"no derivative known for {type(m).__name__}")


def route_through_pool(g: Tensor, idx: Tensor, in_shape: torch.Size) -> Tensor:
    """Signal at a max-pool's output → its input: each value goes to the unit that won (argmax)."""
    out = torch.zeros(in_shape, dtype=g.dtype, device=g.device)
    return out.flatten(2).scatter_add_(2, idx.flatten(2), g.flatten(2)).view(in_shape)


def _conv_as_2d(layer: nn.Module, x: Tensor, delta: Tensor):
    """Conv1d is a Conv2d over a height-1 image: the same unfold serves both."""
    if isinstance(layer, nn.Conv2d):
        return x, delta, layer.kernel_size, layer.dilation, layer.padding, layer.stride
    return (x.unsqueeze(2), delta.unsqueeze(2), (1, *layer.kernel_size), (1, *layer.dilation),
            (0, *layer.padding), (1, *layer.stride))


def hebbian_product(layer: nn.Module, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor | None]:
    """Σ post ⊗ pre: (∂W, ∂b) from the post-synaptic signal delta (at the layer's output) and input x.

    Convolution: unfold lists, for every output position, the inputs x_i it sees; the
    product sums delta_j · x_i over samples and positions (in chunks of samples so the
    unfolded copy stays below :data:`UNFOLD_CHUNK_BYTES`). Conv3d: ``unfold`` has no 3-D
    form; ``torch.nn.grad.conv3d_weight`` computes the same sum as the correlation of the
    post-synaptic signal delta with the stored input x (no graph, no other weight).
    """
    gb = delta.sum(dim=[d for d in range(delta.dim()) if d != 1]) if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        return delta.t() @ x, gb
    if isinstance(layer, nn.Conv3d):
        gw = torch.nn.grad.conv3d_weight(x, layer.weight.shape, delta, stride=layer.stride,
                                         padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        return gw, gb
    x2, d2, k, dil, pad, stride = _conv_as_2d(layer, x, delta)
    n = x2.shape[0]
    cols = d2.shape[2] * d2.shape[3]
    per_sample = x2.shape[1] * k[0] * k[1] * cols * x2.element_size()
    chunk = max(1, UNFOLD_CHUNK_BYTES // max(per_sample, 1))
    gw = torch.zeros(layer.out_channels, x2.shape[1] * k[0] * k[1], dtype=x.dtype, device=x.device)
    for s in range(0, n, chunk):
        pre = F.unfold(x2[s:s + chunk], k, dilation=dil, padding=pad, stride=stride)  # (b, C·k·k, L)
        post = d2[s:s + chunk].flatten(2)                                           # (b, O, L)
        gw += torch.einsum("bol,bil->oi", post, pre)
    return gw.view_as(layer.weight), gb


@torch.no_grad()
def local_gradients(trace: StageTrace, grad_out: Tensor) -> None:
    """Write the stage's weight gradients (∂L/∂W) into ``.grad`` from the error at its output.

    grad_out is ∂L/∂h at the stage output; walking back through pools (argmax routing)
    and nonlinearities (× ρ′(a)) gives the post-synaptic factor at the weight layer's
    output, and the Hebbian product with the stored input x gives ∂L/∂W.
    """
    g = grad_out
    for m, rec, shape in reversed(list(zip(trace.modules[1:], trace.records, trace.shapes))):
        if isinstance(m, POOLS):
            g = route_through_pool(g, rec, shape)
        else:
            g = g * activation_derivative(m, rec)
    layer = trace.modules[0]
    gw, gb = hebbian_product(layer, trace.x, g)
    for p, v in ((layer.weight, gw), (layer.bias, gb)):
        if p is not None and p.requires_grad:
            p.grad = v if p.grad is None else p.grad + v
