"""The numeric precision a run computes in, as a context manager the trainer and the
benchmark enter around the work ``train.precision`` applies to."""
from __future__ import annotations

import contextlib

import torch

from biossl.config import RunConfig


def autocast_for(cfg: RunConfig, device: torch.device):
    """bf16 autocast when ``train.precision=bf16``, else nothing."""
    if cfg.train.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
