"""The forward precision of a run (``train.precision``)."""
from __future__ import annotations

import contextlib

import torch


def autocast_for(cfg, device: torch.device):
    """bf16 autocast when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
