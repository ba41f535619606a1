"""CLAPP's STL-10 network: six VGG stages, 3×3 pad 1, ReLU, no batch norm."""
from __future__ import annotations

from dataclasses import dataclass

from biossl.bounds import PositiveFloat
from biossl.encoders.base import StageStack
from biossl.encoders.layers import Activation, conv_stage


@dataclass
class VGG6Config:
    width: PositiveFloat = 1.0
    """Channel multiplier (1.0: 128, 256, 256, 512, 1024, 1024)."""
    activation: Activation = "relu"
    """Nonlinearity."""
    bias: bool = True
    """Conv bias (CLAPP's code uses biased convs)."""


def vgg6(cfg: VGG6Config, in_channels: int) -> StageStack:
    """[128], [256,M], [256], [512,M], [1024,M], [1024,M]."""
    plan = [(128, False), (256, True), (256, False), (512, True), (1024, True), (1024, True)]
    stages, cin = [], in_channels
    for cout, pool in plan:
        cout = max(1, int(round(cout * cfg.width)))
        stages.append(conv_stage(cin, cout, act=cfg.activation, pool=pool, bias=cfg.bias))
        cin = cout
    return StageStack(stages, in_channels)


vgg6.Config = VGG6Config
