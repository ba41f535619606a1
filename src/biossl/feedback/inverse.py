"""Learned inverses g_l of encoder stages, the feedback functions of target propagation.

Stage l maps h_{l−1} → h_l through conv/linear layers, elementwise nonlinearities and
pools. Its inverse g_l runs the stage backwards with its own weights (never the forward
ones): each pool becomes a nearest-neighbour upsample to the pre-pool size, each conv a
transposed conv with the same geometry (channels swapped), each linear layer a linear
layer out → in; after every transposed map comes the nonlinearity whose output the
forward layer had read, so g_l's output lives in the range of h_{l−1}. Nonlinearities of
the forward stage are not inverted explicitly: the learned map absorbs them.

Anything else in a stage (batch norm, dropout, attention, an unknown module) has no
such inverse; :func:`invertible_layers` refuses it by name.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.config import ConfigError  # a ValueError: the encoder/rule pair is a config mistake
from biossl.encoders.layers import activation
from biossl.layout import channels_last

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU, nn.Identity)
"""Elementwise nonlinearities a stage may contain (absorbed by the learned inverse)."""
_CONV_TRANSPOSE = {nn.Conv1d: nn.ConvTranspose1d, nn.Conv2d: nn.ConvTranspose2d,
               nn.Conv3d: nn.ConvTranspose3d}
POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                                      nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
MAPS: tuple[type[nn.Module], ...] = (*_CONV_TRANSPOSE, nn.Linear)
ALLOWED = (*MAPS, *POOLS, *ACTIVATIONS)


def _flat_layers(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flat_layers(child)]
    return [module]


def invertible_layers(stage: nn.Module, index: int) -> list[nn.Module]:
    """The stage's layers in forward order, or ConfigError naming the first one DTP cannot invert."""
    layers = _flat_layers(stage)
    for m in layers:
        if not isinstance(m, ALLOWED):
            raise ConfigError(
                f"stage {index} contains {type(m).__name__}, which DTP cannot invert; allowed: "
                f"{', '.join(sorted(t.__name__ for t in ALLOWED))}. Use an encoder without it "
                f"(convstack: encoder.batchnorm=false) or another rule.")
    if not any(isinstance(m, MAPS) for m in layers):
        raise ConfigError(f"stage {index} has no conv or linear layer for DTP to invert; "
                          f"choose another encoder or rule")
    return layers


def last_activation(stage: nn.Module) -> nn.Module:
    """A copy of the stage's last nonlinearity (identity when it has none): g_{l+1}'s output
    nonlinearity, so that reconstructions share h_l's range."""
    acts = [m for m in _flat_layers(stage) if isinstance(m, ACTIVATIONS)]
    return copy.deepcopy(acts[-1]) if acts else nn.Identity()


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _out_size(m: nn.Module, size: tuple[int, ...]) -> tuple[int, ...]:
    """Spatial output size of a conv or pool layer for a spatial input ``size``."""
    n = len(size)
    k = _tuple(m.kernel_size, n)
    if isinstance(m, tuple(_CONV_TRANSPOSE)) and isinstance(m.padding, str):
        if m.padding == "same":
            return size
        pad = (0,) * n
    else:
        pad = _tuple(m.padding, n)
    stride = _tuple(m.stride if m.stride is not None else m.kernel_size, n)
    dil = _tuple(getattr(m, "dilation", 1), n)
    ceil = getattr(m, "ceil_mode", False)
    out = []
    for s, kk, p, st, d in zip(size, k, pad, stride, dil):
        span = s + 2 * p - d * (kk - 1) - 1
        o = -(-span // st) + 1 if ceil else span // st + 1
        if ceil and (o - 1) * st >= s + p:  # PyTorch: the last window must start inside the input
            o -= 1
        out.append(o)
    return tuple(out)


def _transposed_type(conv: nn.Module) -> type[nn.Module]:
    """The ConvTranspose class of ``conv``'s dimension (subclasses too: ThinInputConv1d)."""
    return next(t for c, t in _CONV_TRANSPOSE.items() if isinstance(conv, c))


def _transpose(conv: nn.Module, bias: bool) -> nn.Module:
    n = conv.weight.dim() - 2
    if isinstance(conv.padding, str):
        # 'same' (stride 1) pads d·(k−1)/2 per side; 'valid' pads nothing.
        k, d = _tuple(conv.kernel_size, n), _tuple(conv.dilation, n)
        pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d)) if conv.padding == "same" else 0
    else:
        pad = conv.padding
    return _transposed_type(conv)(conv.out_channels, conv.in_channels, conv.kernel_size,
                                   stride=conv.stride, padding=pad, dilation=conv.dilation,
                                   groups=conv.groups, bias=bias)


def _fusable(conv: nn.Module, pool: nn.Module) -> bool:
    """A stride-1 'same' conv followed by a non-overlapping pool (window = stride)."""
    n = conv.weight.dim() - 2
    k, d = _tuple(conv.kernel_size, n), _tuple(conv.dilation, n)
    same = conv.padding == "same" or _tuple(conv.padding, n) == tuple((kk - 1) // 2 for kk in k)
    pk = _tuple(pool.kernel_size, n)
    ps = _tuple(pool.stride if pool.stride is not None else pool.kernel_size, n)
    return (same and all(kk % 2 == 1 for kk in k) and set(d) == {1}
            and set(_tuple(conv.stride, n)) == {1} and pk == ps
            and set(_tuple(pool.padding, n)) == {0} and set(_tuple(getattr(pool, "dilation", 1), n)) == {1}
            and not pool.ceil_mode)


def _unpool_transpose(conv: nn.Module, pool: nn.Module, bias: bool) -> nn.Module:
    """One transposed conv with the pool's stride that inverts conv → pool together.

    With window s and conv kernel k, kernel k + s − 1 and padding (k − 1)/2 give exactly
    s× the size (plus the odd row that pooling dropped, via ``output_size``); each output
    pixel sees the same input neighbourhood as nearest-upsample followed by the k×k
    transposed conv, with more freedom, at about half the cost and without
    materialising the upsampled map.
    """
    n = conv.weight.dim() - 2
    k, s = _tuple(conv.kernel_size, n), _tuple(pool.stride or pool.kernel_size, n)
    return _transposed_type(conv)(
        conv.out_channels, conv.in_channels, tuple(kk + ss - 1 for kk, ss in zip(k, s)), stride=s,
        padding=tuple((kk - 1) // 2 for kk in k), groups=conv.groups, bias=bias)


class StageInverse(nn.Module):
    """g_l: stage l's output → an estimate of its input, with weights of its own.

    ``forward(h, in_size)`` takes the spatial size of the stage's input (the pool's and
    strided conv's inverse need it; odd sizes lose a row to pooling). A stride-1 conv
    followed by a non-overlapping pool is inverted by one strided transposed conv;
    other pools by a nearest-neighbour upsample.
    """

    def __init__(self, layers: Sequence[nn.Module], out_activation: nn.Module, bias: bool = True):
        super().__init__()
        self._layers = list(layers)  # forward geometry only (plain list: not registered)
        maps, acts, plan = [], [], []  # plan: (kind, index of the forward layer whose input it rebuilds)
        read = out_activation  # the nonlinearity whose output the next map of the stage reads
        skip = set()
        for j, m in enumerate(layers):
            if j in skip:
                continue
            if isinstance(m, ACTIVATIONS):
                read = m
            elif isinstance(m, POOLS):
                plan.append(("unpool", j))
            else:
                nxt = next((i for i in range(j + 1, len(layers))
                            if not isinstance(layers[i], ACTIVATIONS)), None)
                if (isinstance(m, tuple(_CONV_TRANSPOSE)) and nxt is not None
                        and isinstance(layers[nxt], POOLS) and _fusable(m, layers[nxt])):
                    maps.append(_unpool_transpose(m, layers[nxt], bias))
                    skip.add(nxt)
                elif isinstance(m, tuple(_CONV_TRANSPOSE)):
                    maps.append(_transpose(m, bias))
                else:
                    maps.append(nn.Linear(m.out_features, m.in_features, bias=bias))
                acts.append(copy.deepcopy(read))
                plan.append(("map", j))
        # Stored in reverse (execution) order.
        self.maps = nn.ModuleList(reversed(maps))
        self.acts = nn.ModuleList(reversed(acts))
        self._plan = list(reversed(plan))

    def _sizes(self, in_size: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Spatial input size of every forward layer."""
        sizes, s = [], tuple(in_size)
        for m in self._layers:
            sizes.append(s)
            if isinstance(m, (*_CONV_TRANSPOSE, *POOLS)):
                s = _out_size(m, s)
        return sizes

    def forward(self, h: Tensor, in_size: Sequence[int] = ()) -> Tensor:
        return self._run(h, in_size, bias=True)

    def working(self, h: Tensor, in_size: Sequence[int] = ()) -> Tensor:
        """g(h) in g's working layout (channels-last for a contiguous CPU map, else h's): the
        same values as ``forward``, without the copy back to h's layout (a loss taken there,
        DTP's reconstruction, gets its gradient there)."""
        return self._maps(self._in_working_layout(h), in_size, bias=True)

    def affine(self) -> bool:
        """g is an affine map (every output nonlinearity the identity): g(a) − g(b) is then
        its linear part on a − b."""
        return all(isinstance(a, nn.Identity) for a in self.acts)

    def difference(self, a: Tensor, b: Tensor, in_size: Sequence[int] = (), plus: Tensor | None = None,
                   out: Tensor | None = None) -> Tensor:
        """g(a) − g(b), plus ``plus`` when given (DTP's ĥ_{l−1} = h_{l−1} + g(ĥ_l) − g(h_l)),
        in a's layout (``plus``'s when given), written into ``out`` when given (``plus`` and
        ``out`` without autograd, as DTP makes its targets). For an affine g its linear part
        (no biases) on a − b: one pass of g instead of two (every stage whose stage below has
        no nonlinearity); equal in exact arithmetic. The difference is taken in g's working
        layout and goes back once, fused with the sum (a layout change of a large map costs
        several plain copies on the CPU)."""
        working = self._works_channels_last(a)
        if self.affine():
            fused = working and not torch.is_grad_enabled()  # a − b written channels-last in one pass
            d = a - b if not fused else torch.sub(a, b, out=torch.empty_like(a, memory_format=torch.channels_last))
            d = self._maps(self._in_working_layout(d), in_size, bias=False)
        else:
            d = self._maps(self._in_working_layout(a), in_size, bias=True)
            d = d.sub_(self._maps(self._in_working_layout(b), in_size, bias=True))
        if plus is not None:  # copy, then add in plus's layout: on the CPU as fast as one mixed-layout
            out = out if out is not None else torch.empty_like(plus)  # add or faster (small maps)
            return out.copy_(d).add_(plus)
        if out is not None:
            return out.copy_(d)
        return d.contiguous() if working else d

    def _works_channels_last(self, h: Tensor) -> bool:
        # oneDNN's transposed convs on the CPU run ~4 × faster on channels-last maps than on
        # NCHW ones (which it reorders): g works channels-last on contiguous CPU maps
        return h.dim() == 4 and h.device.type == "cpu" and h.is_contiguous()

    def _in_working_layout(self, h: Tensor) -> Tensor:
        return channels_last(h) if self._works_channels_last(h) else h

    def _run(self, h: Tensor, in_size: Sequence[int], bias: bool) -> Tensor:
        """g(h) (or its linear part), answered in h's layout."""
        out = self._maps(self._in_working_layout(h), in_size, bias)
        return out.contiguous() if self._works_channels_last(h) else out

    def _maps(self, h: Tensor, in_size: Sequence[int], bias: bool) -> Tensor:
        sizes = self._sizes(tuple(in_size))
        maps = iter(zip(self.maps, self.acts))
        for kind, j in self._plan:
            if kind == "unpool":
                h = F.interpolate(h, size=sizes[j], mode="nearest")
                continue
            lin, act = next(maps)
            out = lin(h) if isinstance(lin, nn.Linear) else lin(h, output_size=list(sizes[j]))
            if not bias and lin.bias is not None:  # the linear part: the bias taken off again
                out = out.sub_(lin.bias.view(-1, *[1] * (out.dim() - 2)))
            h = act(out)
        return h


def check_out_activation(name: str) -> None:
    """ValueError unless ``name`` is 'below' or an activation name."""
    if name != "below":
        try:
            activation(name)
        except ValueError as e:
            raise ValueError(f"{e} (or 'below')") from None


def build_inverse(stages: Sequence[nn.Module], index: int, bias: bool = True,
                  out_activation: str = "below") -> StageInverse:
    """g for stage ``index`` (≥ 1); its output nonlinearity: 'below' — stage index−1's last
    one — or an activation name."""
    if index < 1:
        raise ValueError("stage 0's input is the data: it has no target to propagate to")
    layers = invertible_layers(stages[index], index)
    check_out_activation(out_activation)
    act = last_activation(stages[index - 1]) if out_activation == "below" else activation(out_activation)
    return StageInverse(layers, act, bias)
