"""Bio-SSL's CIFAR network: five 3×3 convs without bias, Hardtanh, three max-pools."""
from __future__ import annotations

from dataclasses import dataclass

from biossl.bounds import PositiveFloat
from biossl.encoders.base import StageStack
from biossl.encoders.layers import Activation, conv_stage

CONVS = 5


@dataclass
class Conv6Config:
    width: PositiveFloat = 1.0
    """Channel multiplier (1.0: 32, 32, 64, 64, 512)."""
    activation: Activation = "hardtanh"
    """Nonlinearity (Bio-SSL: Hardtanh)."""
    activation_after: list[int] | None = None
    """Which convs (0…4) the nonlinearity follows. None (default, the paper's text): every
    conv. [0, 2]: the official Bio-SSL code — convs 1, 3 and 4 go straight to the max-pool."""

    def validate(self) -> None:
        if self.activation_after is not None:
            bad = [i for i in self.activation_after if not 0 <= i < CONVS]
            if bad or len(set(self.activation_after)) != len(self.activation_after):
                raise ValueError(f"activation_after lists conv indices 0…{CONVS - 1}, each once; "
                                 f"got {self.activation_after} (official layout: [0, 2])")


def conv6(cfg: Conv6Config, in_channels: int) -> StageStack:
    """conv 3→32, 32→32+M, 32→64, 64→64+M, 64→512+M (32×32 → 512×4×4 = 8192 features)."""
    cfg.validate()
    plan = [(32, False), (32, True), (64, False), (64, True), (512, True)]
    after = set(range(CONVS)) if cfg.activation_after is None else set(cfg.activation_after)
    stages, cin = [], in_channels
    for i, (cout, pool) in enumerate(plan):
        cout = max(1, int(round(cout * cfg.width)))
        act = cfg.activation if i in after else None
        stages.append(conv_stage(cin, cout, act=act, pool=pool, bias=False))
        cin = cout
    return StageStack(stages, in_channels)


conv6.Config = Conv6Config
