"""Autograd Functions whose backward sends the error through a feedback weight B, not W.

Forward is the ordinary linear map / convolution with W. Backward:
  δ_in = Bᵀ δ_out            (the only place W is replaced: no weight transport)
  ∂L/∂W = δ_out ⊗ input      (unchanged: pre-synaptic activity × post-synaptic error)
With B := W both are exactly back-propagation (tested in float64).

Under autocast the Functions cast their inputs to the autocast dtype themselves, so the
saved tensors and the incoming gradient agree in dtype in backward; gradients are returned
in the dtype of the original input / parameter.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    return t if t is None or dtype is None else t.to(dtype)


class FeedbackLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b; backward δx = δy B, δW = δyᵀ x, δb = Σ δy. ``x`` may have leading dims."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        dt = _autocast_dtype(x)
        x, weight, bias, feedback = (_cast(t, dt) for t in (x, weight, bias, feedback))
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, feedback = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_out = grad_out.to(x.dtype)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (grad_out @ feedback.to(x.dtype)).to(x_dtype)
        if ctx.needs_input_grad[1]:
            gw = (grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).to(w_dtype)
        if ctx.needs_input_grad[2]:
            gb = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(b_dtype)
        return gx, gw, gb, None


class FeedbackConvFn(torch.autograd.Function):
    """N-d convolution (1-D, 2-D, 3-D) with feedback weight B in the input gradient.

    Backward is one ``aten.convolution_backward`` call with B in W's place: its input
    gradient uses the weight it is given (B), its weight gradient only W's shape, so both
    come from a single call (``torch.nn.grad.conv*d_input`` / ``_weight`` wrap the same
    op, one call each). Padding must already be numeric (see FeedbackConv).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int) -> Tensor:
        dims = weight.dim() - 2
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.conv = (list(stride), list(padding), list(dilation), groups, dims)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        dt = _autocast_dtype(x)
        x, weight, bias, feedback = (_cast(t, dt) for t in (x, weight, bias, feedback))
        ctx.save_for_backward(x, feedback)
        return _CONV[dims](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, feedback = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        stride, padding, dilation, groups, dims = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        if not any(mask):
            return None, None, None, None, None, None, None, None
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out.to(x.dtype), x, feedback.to(x.dtype), ctx.bias_sizes, stride, padding,
            dilation, False, [0] * dims, groups, mask)
        gx = gx.to(x_dtype) if mask[0] else None
        gw = gw.to(w_dtype) if mask[1] else None
        gb = gb.to(b_dtype) if mask[2] else None
        return gx, gw, gb, None, None, None, None, None


def feedback_linear(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:
    return FeedbackLinearFn.apply(x, weight, bias, feedback)


def feedback_conv(x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor,
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                  groups: int = 1) -> Tensor:
    return FeedbackConvFn.apply(x, weight, bias, feedback, stride, padding, dilation, groups)
