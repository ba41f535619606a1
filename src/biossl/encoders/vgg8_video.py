"""CLAPP's video network (VGG-8 after DPC): five Conv3d stages on clips (n, C, T, H, W).

Layout (channels at width 1; kernels time × height × width):

    96  (1×7×7, spatial stride 2) + max-pool
    256 (1×5×5, spatial stride ``conv2_stride``) + max-pool
    512 (1×3×3)
    512 (t×3×3, temporal stride t)
    512 (t×3×3, temporal stride t) + max-pool

t = ``temporal_kernel`` (CLAPP's temporal VGG-8: 3; 1: the frame-wise VGG-8). The temporal
convs have stride = kernel and no temporal padding (as CLAPP's code), so the time axis is
T at stages 1–3 (one step per frame) and T/t, T/t² at stages 4 and 5: no receptive field
crosses a time-step boundary, and the predictive objectives, which read each stage's time
axis, never give a context a view of its own future. Spatial convs pad to keep the size
(k // 2) and the max-pools are 3×3 stride 2 padding 1 in space (1 in time), so 32-pixel
frames still leave a 2×2 map at the top (CLAPP's code pads neither, for 128-pixel frames).

Each conv with its ReLU (and BatchNorm, and pool) is one stage: what layer-local rules
train one at a time. BatchNorm3d is optional and off by default: its batch statistics
couple the samples of a batch, which no synapse-local rule can compute (the explicit CLAPP
rule refuses such stages).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from biossl.bounds import PositiveFloat, PositiveInt
from biossl.encoders.base import StageStack
from biossl.encoders.layers import MaxPool3d

PLAN = ((96, 7, True), (256, 5, True), (512, 3, False), (512, 3, False), (512, 3, True))
"""(channels at width 1, spatial kernel, max-pool after) per stage."""
TEMPORAL_STAGES = (3, 4)
"""Stages (0-based) whose kernels span ``temporal_kernel`` frames."""


@dataclass
class VGG8VideoConfig:
    width: PositiveFloat = 1.0
    """Channel multiplier (1.0: 96, 256, 512, 512, 512; a 2-core machine trains 0.25)."""
    temporal_kernel: PositiveInt = 3
    """Temporal kernel = temporal stride of stages 4 and 5 (CLAPP: 3; 1: frame-wise only).
    The top stage has one time step per temporal_kernel² input frames."""
    conv2_stride: PositiveInt = 1
    """Spatial stride of stage 2's conv (CLAPP's code: 2, for 128-pixel frames; 1 keeps
    small frames large enough for the three pools)."""
    batch_norm: bool = False
    """BatchNorm3d after each ReLU (CLAPP's code). Off by default: batch statistics are not
    local (each unit's output depends on the whole batch), which the plausibility audit must flag."""
    bias: bool = True
    """Conv bias (CLAPP's code uses biased convs)."""


def vgg8_video(cfg: VGG8VideoConfig, in_channels: int) -> StageStack:
    """Conv3d → ReLU → [BatchNorm3d] → [MaxPool3d] per stage (see the module doc)."""
    stages, cin = [], in_channels
    for i, (cout, k, pool) in enumerate(PLAN):
        cout = max(1, int(round(cout * cfg.width)))
        t = cfg.temporal_kernel if i in TEMPORAL_STAGES else 1
        s = 2 if i == 0 else cfg.conv2_stride if i == 1 else 1   # spatial stride
        layers: list[nn.Module] = [nn.Conv3d(cin, cout, (t, k, k), stride=(t, s, s), padding=(0, k // 2, k // 2),
                                             bias=cfg.bias), nn.ReLU(inplace=True)]
        if cfg.batch_norm:
            layers.append(nn.BatchNorm3d(cout))
        if pool:
            layers.append(MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))  # keeps only indices
        stages.append(nn.Sequential(*layers))
        cin = cout
    return StageStack(stages, in_channels)


vgg8_video.Config = VGG8VideoConfig
