"""Bio-SSL's CIFAR network: five 3×3 convs without bias, Hardtanh, three max-pools."""
from __future__ import annotations

from dataclasses import dataclass

from biossl.bounds import PositiveFloat
from biossl.encoders.base import StageStack
from biossl.encoders.layers import Activation, conv_stage


@dataclass
class Conv6Config:
    width: PositiveFloat = 1.0
    """Channel multiplier (1.0: 32, 32, 64, 64, 512)."""
    activation: Activation = "hardtanh"
    """Nonlinearity (Bio-SSL: Hardtanh)."""


def conv6(cfg: Conv6Config, in_channels: int) -> StageStack:
    """conv 3→32, 32→32+M, 32→64, 64→64+M, 64→512+M (32×32 → 512×4×4 = 8192 features)."""
    plan = [(32, False), (32, True), (64, False), (64, True), (512, True)]
    stages, cin = [], in_channels
    for cout, pool in plan:
        cout = max(1, int(round(cout * cfg.width)))
        stages.append(conv_stage(cin, cout, act=cfg.activation, pool=pool, bias=False))
        cin = cout
    return StageStack(stages, in_channels)


conv6.Config = Conv6Config
