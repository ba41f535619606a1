"""Building blocks for stage stacks, generic over 1-D (audio), 2-D (images), 3-D (video)."""
from __future__ import annotations

from typing import Literal

from torch import nn

Activation = Literal["relu", "hardtanh", "tanh", "leaky_relu", "identity"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "hardtanh": nn.Hardtanh, "tanh": nn.Tanh,
             "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


def conv_stage(cin: int, cout: int, *, act: str | None = "relu", pool: bool = False,
               kernel: int = 3, bias: bool = False, batchnorm: bool = False,
               dims: int = 2, stride: int = 1, padding: int | None = None) -> nn.Sequential:
    """conv (k×k, stride, padding — default 'same': kernel // 2) → [batch norm] →
    [nonlinearity] → [max-pool 2].

    ``act`` None leaves the nonlinearity out (conv → pool), as in the official conv6."""
    pad = kernel // 2 if padding is None else padding
    layers: list[nn.Module] = [_CONV[dims](cin, cout, kernel, stride=stride, padding=pad, bias=bias)]
    if batchnorm:
        layers.append(_BN[dims](cout))
    if act is not None:
        layers.append(activation(act))
    if pool:
        layers.append(_MAXPOOL[dims](2))
    return nn.Sequential(*layers)
