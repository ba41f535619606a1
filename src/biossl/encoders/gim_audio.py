"""Greedy InfoMax's audio encoder: five strided Conv1d + ReLU stages on the raw waveform.

Kernels [10, 8, 4, 4, 4], strides [5, 4, 2, 2, 2], padding [2, 2, 2, 2, 1], no normalisation:
160× downsampling, one output frame per 10 ms at 16 kHz (GIM ``audio/models/encoder.py``).
Each conv is a stage (GIM's ``model_splits 6``; CPC trains them as one). An optional GRU
autoregressor (CPC's c_t) is a sixth stage. The width is configurable so a 2-core machine
can train a narrow copy (GIM: 512 channels, GRU 256).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from biossl.bounds import PositiveInt
from biossl.encoders.base import StageStack
from biossl.encoders.layers import conv_stage


@dataclass
class GimAudioConfig:
    channels: PositiveInt = 512
    """Output channels of every conv stage (GIM: 512)."""
    kernels: list[int] = field(default_factory=lambda: [10, 8, 4, 4, 4])
    """Kernel size of each conv stage (one entry per stage)."""
    strides: list[int] = field(default_factory=lambda: [5, 4, 2, 2, 2])
    """Stride of each conv stage; their product is the samples per output frame (160 = 10 ms)."""
    padding: list[int] = field(default_factory=lambda: [2, 2, 2, 2, 1])
    """Zero padding of each conv stage."""
    autoregressor: PositiveInt | None = None
    """Hidden units of a GRU stage on top (CPC's autoregressive context; GIM: 256); None: none."""

    def validate(self) -> None:
        if not len(self.kernels) == len(self.strides) == len(self.padding) >= 1:
            raise ValueError(f"kernels, strides and padding need one entry per stage, got "
                             f"{len(self.kernels)}, {len(self.strides)}, {len(self.padding)}")
        if min(self.kernels) < 1 or min(self.strides) < 1 or min(self.padding) < 0:
            raise ValueError("kernels and strides must be ≥ 1 and padding ≥ 0")


class Autoregressor(nn.Module):
    """A GRU over time as a stage: (n, C, T) → (n, hidden, T), the context c_t at every step."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(in_channels, hidden, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(x.transpose(1, 2))
        return out.transpose(1, 2)


def gim_audio(cfg: GimAudioConfig, in_channels: int) -> StageStack:
    """One Conv1d → ReLU stage per kernel, then the optional GRU stage."""
    stages: list[nn.Module] = []
    cin = in_channels
    for k, s, p in zip(cfg.kernels, cfg.strides, cfg.padding):
        stages.append(conv_stage(cin, cfg.channels, kernel=k, stride=s, padding=p, bias=True, dims=1))
        cin = cfg.channels
    if cfg.autoregressor is not None:
        stages.append(Autoregressor(cin, cfg.autoregressor))
    return StageStack(stages, in_channels)


gim_audio.Config = GimAudioConfig
