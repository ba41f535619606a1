"""Building blocks for stage stacks, generic over 1-D (audio), 2-D (images), 3-D (video)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.encoders.thin_conv import ThinInputConv1d
from biossl.layout import is_channels_last

Activation = Literal["relu", "hardtanh", "tanh", "leaky_relu", "identity"]

_CONV = {1: ThinInputConv1d, 2: nn.Conv2d, 3: nn.Conv3d}  # 1-D: a GEMM on a thin input (the waveform)
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class _HardtanhInPlace(torch.autograd.Function):
    """clamp_ whose backward reads the output (y inside (lo, hi) exactly when x was), so the
    graph keeps no copy of the input (torch's hardtanh_ saves the input, i.e. a clone)."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.mark_dirty(x)
        x.clamp_(lo, hi)
        ctx.save_for_backward(x)
        ctx.bounds = (lo, hi)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, *ctx.bounds), None, None


class InPlaceHardtanh(nn.Hardtanh):
    """Hardtanh that overwrites its input and keeps only its output for backward: after a
    conv (which does not keep its output) the stage then holds one map, not two."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        super().__init__(min_val, max_val, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return _HardtanhInPlace.apply(x, self.min_val, self.max_val)


class _MaxPoolKeepingIndices(torch.autograd.Function):
    """Max-pool whose graph keeps only the argmax indices: torch's keeps the input map too
    (the conv output, 2–4 × the pooled map), though its backward reads only its shape. The
    backward scatters each output's gradient to the input unit that won, in the input's
    memory layout (torch's CPU backward would also copy a channels-last input)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel, stride, padding, dilation, ceil_mode: bool) -> Tensor:
        pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
        y, idx = pool(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
        ctx.save_for_backward(idx)
        ctx.input = (x.shape, is_channels_last(x))
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        (idx,) = ctx.saved_tensors
        shape, channels_last = ctx.input
        n, c = shape[:2]
        if channels_last:  # (N, *spatial, C) in memory: scatter over the flattened spatial dim 1
            perm = (0, *range(2, len(shape)), 1)
            out = grad.new_zeros((n, *shape[2:], c))
            out.view(n, -1, c).scatter_add_(1, idx.permute(perm).reshape(n, -1, c),
                                            grad.permute(perm).reshape(n, -1, c))
            inverse = (0, len(shape) - 1, *range(1, len(shape) - 1))
            return out.permute(inverse), None, None, None, None, None
        out = grad.new_zeros(shape)
        out.view(n, c, -1).scatter_add_(2, idx.reshape(n, c, -1), grad.reshape(n, c, -1))
        return out, None, None, None, None, None


def _pool(m: nn.Module, x: Tensor) -> Tensor | None:
    """The lean pool's output when a graph is being built, the window max without one
    (None: use torch's own forward)."""
    if m.return_indices:
        return None
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _window_max(m, x)
    return _MaxPoolKeepingIndices.apply(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def _window_max(m: nn.Module, x: Tensor) -> Tensor | None:
    """A pool without graph over non-overlapping k×k windows of a contiguous NCHW map on the
    CPU: the maximum of each window's k rows — k strided views of whole rows, vectorised —
    then of the k columns of that k-fold smaller map. The same values (NaN included), 10–18 ×
    faster than torch's NCHW max-pool there, which costs about as much as a 3×3 conv of its
    map (frozen stages, DTP's inverse training, passes before row chunks). None: not that case."""
    k = m.kernel_size
    if (x.dim() != 4 or x.device.type != "cpu" or not x.is_contiguous() or not isinstance(k, int)
            or m.stride not in (k, (k, k)) or m.padding not in (0, (0, 0)) or m.dilation not in (1, (1, 1))
            or m.ceil_mode):
        return None
    h, w = x.shape[2] // k * k, x.shape[3] // k * k
    rows = _max_of([x[:, :, i:h:k, :w] for i in range(k)])
    return _max_of([rows[:, :, :, j::k] for j in range(k)])


def _max_of(views: list[Tensor]) -> Tensor:
    """The elementwise maximum of equally shaped ``views``, in a new contiguous tensor."""
    if len(views) == 1:
        return views[0].clone(memory_format=torch.contiguous_format)
    out = torch.maximum(views[0], views[1])  # one pass fewer than a copy of the first
    for v in views[2:]:
        torch.maximum(out, v, out=out)
    return out.contiguous()


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose graph keeps only the argmax indices, not its input map."""

    def forward(self, x: Tensor) -> Tensor:
        y = _pool(self, x)
        return super().forward(x) if y is None else y


class MaxPool3d(nn.MaxPool3d):
    """nn.MaxPool3d whose graph keeps only the argmax indices, not its input map."""

    def forward(self, x: Tensor) -> Tensor:
        y = _pool(self, x)
        return super().forward(x) if y is None else y


_MAXPOOL = {1: nn.MaxPool1d, 2: MaxPool2d, 3: MaxPool3d}


def activation(name: str, inplace: bool = False) -> nn.Module:
    """The nonlinearity ``name``; ``inplace`` overwrites its input where the backward can
    read the output instead (relu, hardtanh, leaky_relu), saving one map per layer."""
    table = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh, "tanh": nn.Tanh,
             "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    if inplace and name == "hardtanh":
        return InPlaceHardtanh()
    if inplace and name in ("relu", "leaky_relu"):  # torch's in-place backward reads the output
        return table[name](inplace=True)
    return table[name]()


def conv_stage(cin: int, cout: int, *, act: str | None = "relu", pool: bool = False,
               kernel: int = 3, bias: bool = False, batchnorm: bool = False,
               dims: int = 2, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """conv (k×k, stride, padding — default 'same': kernel // 2) → [batch norm] →
    [nonlinearity] → [max-pool 2].

    ``act`` None leaves the nonlinearity out (conv → pool), as in the official conv6."""
    pad = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [_CONV[dims](cin, cout, kernel, stride=stride, padding=pad, bias=bias)]
    if batchnorm:
        layers.append(_BN[dims](cout))
    if act is not None:  # in place: the conv (or batch norm) before it does not keep its output
        layers.append(activation(act, inplace=True))
    if pool:
        layers.append(_MAXPOOL[dims](2))
    return nn.Sequential(*layers)
