"""Fit a labelled image set to another image shape, for transfer probes.

An encoder trained on dataset A (e.g. Fashion-MNIST, 1×28×28) is probed on dataset B of
another size (e.g. sklearn digits, 1×8×8). The probe images are mapped to A's shape:

- channels: 1 → C by repetition; 3 → 1 by ITU-R 601 luminance (0.299 R + 0.587 G +
  0.114 B); other channel changes are refused;
- space: bilinear interpolation (antialiased when shrinking, ``align_corners=False``),
  rounded back to uint8 so the result is again an ordinary uint8 image set.

Batched tensor ops over chunks; no per-image Python.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)
CHUNK = 4096


def resize_note(src: tuple[int, ...], dst: tuple[int, ...]) -> str:
    """How :func:`fit_images` maps ``src`` (C, H, W) to ``dst``, for protocol strings."""
    if tuple(src) == tuple(dst):
        return ""
    parts = []
    if src[0] != dst[0]:
        parts.append("gray→RGB repeat" if src[0] == 1 else "RGB→gray luminance")
    if tuple(src[1:]) != tuple(dst[1:]):
        parts.append(f"bilinear {src[1]}×{src[2]}→{dst[1]}×{dst[2]}")
    return "resized: " + ", ".join(parts)


def fit_images(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """uint8 (N, C, H, W) → uint8 (N, *shape); see the module docstring for the mapping."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    c_in, c_out = images.shape[1], shape[0]
    if c_in != c_out and not (c_in == 1 or (c_in == 3 and c_out == 1)):
        raise ValueError(f"cannot map {c_in}-channel images to {c_out} channels "
                         f"(supported: 1→C repeat, 3→1 luminance)")
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    out = torch.empty((images.shape[0], *shape), dtype=torch.uint8)
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    for s in range(0, images.shape[0], CHUNK):
        x = images[s:s + CHUNK].float()
        if c_in == 3 and c_out == 1:
            x = (x * luma).sum(1, keepdim=True)
        elif c_in == 1 and c_out > 1:
            x = x.expand(-1, c_out, -1, -1)
        if tuple(x.shape[2:]) != tuple(shape[1:]):
            shrink = shape[1] < x.shape[2] or shape[2] < x.shape[3]
            x = F.interpolate(x, size=tuple(shape[1:]), mode="bilinear", align_corners=False,
                              antialias=shrink)
        out[s:s + CHUNK] = x.round().clamp(0, 255).to(torch.uint8)
    return out
