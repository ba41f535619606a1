"""Conv1d on a thin input (few channels × kernel taps, e.g. the raw waveform) as one batched GEMM.

torch's CPU conv (oneDNN) spends on GIM's first stage (1 → 512 channels, kernel 10,
stride 5, 8 crops of 20,480 samples) 83–109 ms forward + backward with its ReLU for 0.67
GFLOP (1 thread, huge pages; ~300 ms without them). Written as a GEMM on the im2col
windows — (n, T, C·k), C·k = 10, a copy 2 × the input — the work is writing the output
once (forward) and reading its gradient once (weight gradient): 63–68 ms (~200 ms).

The output is (n, Cout, T) contiguous, as nn.Conv1d's, so the stages after it see the
same layout. The graph keeps the input x (small by definition), not the windows: the
backward rebuilds them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

THIN_INPUT_TAPS = 32
"""Largest C·k (input channels × kernel) that takes the GEMM path: the first stage of an
audio encoder on the waveform (C = 1). Wider inputs stay with torch's conv, which is
faster there (measured on GIM's 64- and 512-channel stages)."""


def _windows(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """im2col: (n, C, L) → (n, T, C·k), row t the (zero-padded) inputs output t sees."""
    win = F.pad(x, (padding, padding)).unfold(2, kernel, stride)  # (n, C, T, k), a view
    n, c, t, _ = win.shape
    return win.permute(0, 2, 1, 3).reshape(n, t, c * kernel)


class _ThinConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
        cout, c, k = weight.shape
        a = _windows(x, k, stride, padding)
        n = a.shape[0]
        y = torch.bmm(weight.reshape(1, cout, c * k).expand(n, -1, -1), a.transpose(1, 2))
        if bias is not None:  # after the GEMM: baddbmm would first copy the expanded bias (~15 % slower)
            y.add_(bias.view(1, cout, 1))
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, bias is not None)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.geometry
        cout, c, k = weight.shape
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            a = _windows(x, k, stride, padding)
            # (C·k, T)·(T, Cout) per sample: MKL is ~3 × faster with the thin side first
            gw = torch.bmm(a.transpose(1, 2), gy.transpose(1, 2)).sum(0).t().reshape(cout, c, k)
        if has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2))
        if ctx.needs_input_grad[0]:
            n, length = x.shape[0], x.shape[2]
            ga = torch.matmul(weight.reshape(cout, c * k).t(), gy)                 # (n, C·k, T)
            gxp = F.fold(ga, (1, length + 2 * padding), (1, k), stride=(1, stride))  # col2im
            gx = gxp.view(n, c, -1)[:, :, padding:padding + length]
        return gx, gw, gb, None, None


class ThinInputConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters, same state dict) that on the CPU, in float32/float64,
    without autocast, runs as one batched GEMM when its input is thin (C·k ≤
    :data:`THIN_INPUT_TAPS`); otherwise torch's conv."""

    def forward(self, x: Tensor) -> Tensor:
        if self._thin() and x.dim() == 3 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) \
                and not torch.is_autocast_enabled("cpu") \
                and x.shape[2] + 2 * self.padding[0] >= self.kernel_size[0]:
            return _ThinConv1dFn.apply(x, self.weight, self.bias, self.stride[0], self.padding[0])
        return super().forward(x)

    def _thin(self) -> bool:
        return (self.in_channels * self.kernel_size[0] <= THIN_INPUT_TAPS and self.groups == 1
                and self.dilation == (1,) and self.padding_mode == "zeros" and not isinstance(self.padding, str))
