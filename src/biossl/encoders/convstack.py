"""Small conv stack sized for 28×28 inputs on 2 CPU cores (and 1-D/3-D variants)."""
from __future__ import annotations

from dataclasses import dataclass, field

from biossl.bounds import PositiveInt
from biossl.encoders.base import StageStack
from biossl.encoders.layers import Activation, conv_stage


@dataclass
class ConvStackConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """Output channels of each stage (one conv per stage)."""
    pool: list[bool] = field(default_factory=lambda: [True, True, True])
    """Max-pool 2 at the end of each stage (28 → 14 → 7 → 3)."""
    activation: Activation = "relu"
    """Nonlinearity after each conv."""
    kernel: PositiveInt = 3
    """Conv kernel size ('same' padding)."""
    bias: bool = False
    """Conv bias."""
    batchnorm: bool = False
    """Batch norm after each conv (off: the plausible rules assume none)."""
    dims: int = 2
    """Spatial axes: 1 (audio), 2 (images), 3 (video)."""

    def validate(self) -> None:
        if len(self.pool) != len(self.channels):
            raise ValueError(f"pool has {len(self.pool)} entries for {len(self.channels)} channels")
        if self.dims not in (1, 2, 3):
            raise ValueError("dims must be 1, 2 or 3")


def convstack(cfg: ConvStackConfig, in_channels: int) -> StageStack:
    """One conv → act → pool stage per entry of ``channels``."""
    stages, cin = [], in_channels
    for cout, pool in zip(cfg.channels, cfg.pool):
        stages.append(conv_stage(cin, cout, act=cfg.activation, pool=pool, kernel=cfg.kernel,
                                 bias=cfg.bias, batchnorm=cfg.batchnorm, dims=cfg.dims))
        cin = cout
    return StageStack(stages, in_channels)


convstack.Config = ConvStackConfig
