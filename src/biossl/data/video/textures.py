"""Procedural background textures for the generated action corpus, one per clip, batched.

Three kinds, chosen per clip: smoothed noise (a coarse random grid upsampled bicubically),
stripes (random frequency, angle, phase) and a soft checkerboard (random cell count and
phases). Every parameter of every kind is drawn for every clip in a fixed order, so the
result depends only on the generator's state and ``n``, not on which kinds were chosen.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KINDS = ("noise", "stripes", "checker")
NOISE_GRID = 5
"""Noise cells per canvas side before upsampling: blobs about a fifth of the frame wide."""


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def textures(n: int, side: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """→ (float (n, 1, side, side) in [0, 1], int64 (n,) kind index into :data:`KINDS`)."""
    g = generator
    kind = torch.randint(len(KINDS), (n,), generator=g)
    coarse = torch.rand(n, 1, NOISE_GRID, NOISE_GRID, generator=g)
    freq, angle, phase = _uniform(n, 1.5, 4.0, g), _uniform(n, 0.0, math.pi, g), _uniform(n, 0, 2 * math.pi, g)
    cells, phx, phy = _uniform(n, 2.0, 5.0, g), _uniform(n, 0, 2 * math.pi, g), _uniform(n, 0, 2 * math.pi, g)

    noise = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
    lo = noise.amin(dim=(2, 3), keepdim=True)
    hi = noise.amax(dim=(2, 3), keepdim=True)
    noise = (noise - lo) / (hi - lo).clamp_min(1e-6)

    # Pixel centres in [-1, 1] (the canvas is 2 wide): x along columns, y down rows.
    c = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    y, x = c.view(1, 1, side, 1), c.view(1, 1, 1, side)
    p = lambda v: v.view(n, 1, 1, 1)  # noqa: E731 (per-clip parameter broadcast over pixels)
    stripes = 0.5 + 0.5 * torch.sin(math.pi * p(freq) * (x * torch.cos(p(angle)) + y * torch.sin(p(angle)))
                                     + p(phase))
    checker = 0.5 + 0.5 * torch.tanh(4 * torch.sin(math.pi * p(cells) * x + p(phx))
                                     * torch.sin(math.pi * p(cells) * y + p(phy)))
    all_kinds = torch.stack([noise, stripes.expand_as(noise), checker.expand_as(noise)])
    out = all_kinds[kind, torch.arange(n)]
    return out, kind
