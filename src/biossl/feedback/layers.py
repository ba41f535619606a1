"""Linear and convolution modules whose backward pass uses a feedback weight B.

Modes (how B is made and used):
  ``rf``   fixed random B (Lillicrap et al. 2016 "feedback alignment"), never updated;
  ``urf``  B starts random and independent of W, then receives exactly W's increment
           after every optimizer step (Amit 2019), so B − W stays constant;
  ``sign`` backward uses sign(B) of a fixed random B.
B is a persistent buffer (checkpointed, never a Parameter, so no optimizer touches it).
The modules share W and the bias with the module they replace (the same Parameter
objects), so optimizers and state-dict keys of W are unchanged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biossl.feedback.functions import feedback_conv, feedback_linear

LAYER_MODES = ("rf", "urf", "sign")
"""Modes a feedback layer can be in (``fa`` is accepted as an alias of ``rf``)."""


def canonical_mode(mode: str) -> str:
    mode = "rf" if mode == "fa" else mode
    if mode not in LAYER_MODES:
        raise ValueError(f"unknown feedback mode {mode!r}; choose one of "
                         f"{', '.join(LAYER_MODES)} (or 'fa', an alias of 'rf')")
    return mode


def random_feedback(weight: Tensor, generator: torch.Generator | None) -> Tensor:
    """Kaiming-uniform B of W's shape, drawn independently of W, then rescaled to W's initial
    norm (one scalar, fixed at the start; for PyTorch's default init the factor is ≈ 1).

    Why the rescale: a head initialised small (``head_init`` < 1) gets a feedback matrix of
    the same small size, so under ``urf`` the fixed offset B − W = B₀ − W₀ is small and the
    shared increments soon dominate it (B aligns with W).
    """
    b = torch.empty(weight.shape, dtype=torch.float32)
    nn.init.kaiming_uniform_(b, a=math.sqrt(5), generator=generator)
    w_norm = float(weight.detach().float().norm())
    if w_norm > 0:
        b.mul_(w_norm / float(b.norm()))
    b = b.to(device=weight.device, dtype=weight.dtype)
    if torch.equal(b, weight):
        # A generator seeded like the one that drew W replays W: that is weight transport.
        raise ValueError("random feedback B came out equal to W: the generator replays the "
                         "stream W was drawn from; seed it differently")
    return b


class FeedbackLayer(nn.Module):
    """Common part: W, bias, the feedback buffer B and the weight used by backward."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    feedback: Tensor

    def _init_feedback(self, weight: nn.Parameter, bias: nn.Parameter | None, mode: str,
                       generator: torch.Generator | None) -> None:
        self.mode = canonical_mode(mode)
        self.weight = weight
        self.bias = bias
        self.register_buffer("feedback", random_feedback(weight.detach(), generator))
        self.transport = False
        """True while diagnostics measure the true gradient: backward then uses W (B := W)."""

    def backward_weight(self) -> Tensor:
        """The matrix that carries δ to the input in backward."""
        if self.transport:
            return self.weight.detach()
        return self.feedback.sign() if self.mode == "sign" else self.feedback

    def extra_repr(self) -> str:
        return f"mode={self.mode}, weight={tuple(self.weight.shape)}, bias={self.bias is not None}"


class FeedbackLinear(FeedbackLayer):
    """``nn.Linear`` forward; backward δx = δy B."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, mode: str,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self._init_feedback(weight, bias, mode, generator)

    @classmethod
    def from_linear(cls, m: nn.Linear, mode: str, generator: torch.Generator | None = None):
        return cls(m.weight, m.bias, mode, generator)

    def forward(self, x: Tensor) -> Tensor:
        return feedback_linear(x, self.weight, self.bias, self.backward_weight())


def _numeric_padding(padding, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(padding, str):
        return tuple(padding)
    if padding == "valid":
        return (0,) * len(kernel)
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if any(t % 2 for t in total):  # 'same' with an even kernel pads asymmetrically
        raise ValueError("padding='same' with an even kernel is not supported by FeedbackConv")
    return tuple(t // 2 for t in total)


class FeedbackConv(FeedbackLayer):
    """``nn.Conv1d/2d/3d`` forward (any stride, padding, dilation, groups, padding mode);
    backward δx = Bᵀ ⋆ δy (the transposed convolution with B)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, mode: str, *,
                 stride: Sequence[int], padding, dilation: Sequence[int], groups: int = 1,
                 padding_mode: str = "zeros", generator: torch.Generator | None = None):
        super().__init__()
        self.dims = weight.dim() - 2
        if self.dims not in (1, 2, 3):
            raise ValueError(f"FeedbackConv supports 1-D, 2-D and 3-D kernels, got weight {tuple(weight.shape)}")
        self.out_channels = weight.shape[0]
        self.in_channels = weight.shape[1] * groups
        self.kernel_size = tuple(weight.shape[2:])
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.padding = _numeric_padding(padding, self.kernel_size, self.dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self._init_feedback(weight, bias, mode, generator)

    @classmethod
    def from_conv(cls, m: nn.Conv1d | nn.Conv2d | nn.Conv3d, mode: str,
                  generator: torch.Generator | None = None):
        return cls(m.weight, m.bias, mode, stride=m.stride, padding=m.padding, dilation=m.dilation,
                   groups=m.groups, padding_mode=m.padding_mode, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            # Pad explicitly (as nn.ConvNd does), then convolve without padding.
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=self.padding_mode)
            padding = (0,) * self.dims
        return feedback_conv(x, self.weight, self.bias, self.backward_weight(),
                             self.stride, padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, " + super().extra_repr())


# ---- helpers used by rules ---------------------------------------------------------------
def feedback_layers(*modules: nn.Module) -> list[FeedbackLayer]:
    """Every feedback layer inside ``modules`` (each listed once)."""
    seen: dict[int, FeedbackLayer] = {}
    for mod in modules:
        for m in mod.modules():
            if isinstance(m, FeedbackLayer):
                seen.setdefault(id(m), m)
    return list(seen.values())


@contextmanager
def weight_transport(layers: Iterable[FeedbackLayer]) -> Iterator[None]:
    """Temporarily make backward use W (B := W): the true back-propagation gradient."""
    layers = list(layers)
    before = [l.transport for l in layers]
    for l in layers:
        l.transport = True
    try:
        yield
    finally:
        for l, t in zip(layers, before):
            l.transport = t


@contextmanager
def mirrored_updates(layers: Iterable[FeedbackLayer]) -> Iterator[None]:
    """Around an optimizer step: every ``urf`` layer's B receives exactly W's increment
    (records W before, adds W_new − W_old to B after). Other modes are left alone."""
    urf = [l for l in layers if l.mode == "urf"]
    if not urf:
        yield
        return
    weights = [l.weight.detach() for l in urf]
    old = [w.clone() for w in weights]
    yield
    with torch.no_grad():
        delta = torch._foreach_sub(weights, old)
        torch._foreach_add_([l.feedback for l in urf], delta)
