"""Encoders are stacks of stages; ``forward`` returns every stage's output.

A stage is an ``nn.Sequential`` of (conv → nonlinearity → optional pool). Rules see
only the stage list: layer-local rules run stages one at a time, feedback converters
swap the conv/linear modules inside them, DTP inverts them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class StageStack(nn.Module):
    def __init__(self, stages: Sequence[nn.Module], in_channels: int):
        super().__init__()
        if not stages:
            raise ValueError("an encoder needs at least one stage")
        self.stages = nn.ModuleList(stages)
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Every stage's output, bottom to top."""
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def run(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Output of stage ``stop - 1`` given the input ``x`` of stage ``start``."""
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def mixes_rows(self) -> bool:
        """True when a stage's output on a row depends on other rows of the batch (batch
        statistics: BatchNorm); row-chunked training (train.stage_chunks) needs it False."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())

    @torch.no_grad()
    def out_shapes(self, in_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Per-stage output shapes (without batch) for one input of ``in_shape``."""
        p = next(self.parameters())
        x = torch.zeros(1, *in_shape, device=p.device, dtype=p.dtype)
        return [tuple(o.shape[1:]) for o in self.forward(x)]
