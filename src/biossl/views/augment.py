"""Batched image augmentations in the [0, 1] float domain.

Every op takes a float batch ``x`` of shape (N, C, H, W) on any device and draws its
per-sample parameters from one :class:`torch.Generator` with a single call: there is
no Python loop over samples, so an op costs the same few kernel launches for any N.
Parameters are drawn on the generator's own device and then moved to the data's
device, so a CPU generator can drive CUDA images and gives the same parameters there.

Each random op is split into ``sample_*`` (draws per-sample parameters) and a
deterministic ``adjust_*`` / ``affine_warp`` (applies them), so tests and callers can
apply hand-picked parameters. "With probability p" is a per-sample mask that turns
the sample's parameter into the identity, never a branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Padding = Literal["zeros", "border", "reflection"]

# ITU-R 601 luma weights: grayscale, contrast mean and the Y row of YIQ use the same
# ones, so a hue rotation in YIQ leaves grayscale (luminance) exactly unchanged.
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.596, -0.274, -0.322],
                         [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _rand(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 draws made on the generator's device, moved to ``device``."""
    return torch.rand(shape, generator=g, device=g.device).to(device)


def _lerp(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _per_sample(v: Tensor) -> Tensor:
    """(N,) → (N, 1, 1, 1) for broadcasting against images."""
    return v.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- geometry
def sample_affine(n: int, g: torch.Generator, device: torch.device | str, *,
                  in_hw: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0),
                  ratio: tuple[float, float] | None = None, translate: float = 0.0,
                  degrees: float = 0.0, flip_p: float = 0.0) -> Tensor:
    """Per-sample ``affine_grid`` matrices of random resized crop + flip + shift/rotation.

    Returns theta (n, 2, 3) mapping output coordinates to input coordinates (both
    normalised to [-1, 1], ``align_corners=False``).

    - crop: area fraction ~ U(scale), aspect ratio width/height in pixels ~ log-U(ratio)
      (None: the image's own ratio, so the defaults are the identity). A crop that
      would not fit is shrunk, keeping its ratio (torchvision instead retries, which a
      batch cannot do). Its centre is uniform over the positions keeping it inside;
    - translate: an extra shift ~ U(±translate) of the image side per axis, which may
      move content out of the frame (filled by the warp's padding);
    - degrees: rotation ~ U(±degrees) about the crop centre, done in pixel-isotropic
      units so non-square images rotate without shear;
    - flip_p: probability of a horizontal flip (sign of the x column).
    """
    h, w = in_hw
    device = torch.device(device)
    u = _rand((n, 8), g, device)
    area = _lerp(u[:, 0], *scale)
    if ratio is None:
        ratio = (w / h, w / h)
    r = torch.exp(_lerp(u[:, 1], math.log(ratio[0]), math.log(ratio[1])))
    # (sx·W)/(sy·H) = r and sx·sy = area  →  side fractions of the crop
    sx = torch.sqrt(area * r * (h / w))
    sy = torch.sqrt(area / r * (w / h))
    over = torch.maximum(torch.maximum(sx, sy), torch.ones_like(sx))
    sx, sy = sx / over, sy / over
    tx = (1.0 - sx) * (2.0 * u[:, 2] - 1.0) + 2.0 * translate * (2.0 * u[:, 3] - 1.0)
    ty = (1.0 - sy) * (2.0 * u[:, 4] - 1.0) + 2.0 * translate * (2.0 * u[:, 5] - 1.0)
    ang = math.radians(degrees) * (2.0 * u[:, 6] - 1.0)
    flip = torch.where(u[:, 7] < flip_p, -1.0, 1.0)
    c, s = torch.cos(ang), torch.sin(ang)
    # M = D⁻¹ R D · diag(flip·sx, sy) with D = diag(W, H): rotation in pixel units
    return torch.stack([
        torch.stack([c * sx * flip, -s * (h / w) * sy, tx], dim=1),
        torch.stack([s * (w / h) * sx * flip, c * sy, ty], dim=1),
    ], dim=1)


def affine_warp(x: Tensor, theta: Tensor, out_hw: tuple[int, int],
                padding: Padding = "zeros") -> Tensor:
    """Resample x (N, C, H, W) with per-sample theta (N, 2, 3) → (N, C, *out_hw), bilinear.

    One ``affine_grid`` + ``grid_sample`` for crop, resize, flip, shift and rotation
    together, so every output pixel is interpolated once.
    """
    n, c = x.shape[:2]
    grid = F.affine_grid(theta.to(x.dtype), [n, c, *out_hw], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


# ----------------------------------------------------------------------------- colour
def luminance(x: Tensor) -> Tensor:
    """Per-pixel grayscale (N, 1, H, W) of x (N, C, H, W), C ∈ {1, 3}."""
    c = x.shape[1]
    if c == 1:
        return x
    if c != 3:
        raise ValueError(f"colour ops need 1 or 3 channels, got {c}")
    wts = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * wts).sum(1, keepdim=True)


def to_grayscale(x: Tensor) -> Tensor:
    """Grayscale with the channel count kept: (N, C, H, W) → (N, C, H, W), equal channels."""
    return luminance(x).expand_as(x)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """x · factor, factor (N,); 1 is the identity."""
    return x * _per_sample(factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with each image's mean luminance: factor·x + (1 − factor)·mean; factor (N,)."""
    mean = luminance(x).mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(mean.expand_as(x), x, _per_sample(factor))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-pixel grayscale: factor·x + (1 − factor)·gray; identity for C = 1."""
    if x.shape[1] == 1:
        return x
    return torch.lerp(luminance(x).expand_as(x), x, _per_sample(factor))


def hue_matrix(shift: Tensor) -> Tensor:
    """RGB → RGB matrices (N, 3, 3) rotating the (I, Q) chroma plane by 2π·shift, Y fixed."""
    ang = 2.0 * math.pi * shift.double()
    c, s = torch.cos(ang), torch.sin(ang)
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rot = torch.stack([torch.stack([one, zero, zero], -1),
                       torch.stack([zero, c, -s], -1),
                       torch.stack([zero, s, c], -1)], -2)
    dev = shift.device
    # built in float64 so a zero shift gives the identity to float32 precision
    m = _YIQ2RGB.to(dev) @ rot @ _RGB2YIQ.to(dev)
    return m.to(shift.dtype if shift.is_floating_point() else torch.float32)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` (N,) turns in YIQ space (0 = identity); identity for C = 1."""
    if x.shape[1] == 1:
        return x
    luminance(x)  # channel-count check
    m = hue_matrix(shift).to(x.dtype)
    return torch.bmm(m, x.flatten(2)).view_as(x)


@dataclass
class JitterParams:
    """Per-sample colour-jitter factors, each (N,); samples not jittered hold the identity."""
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    """Hue shift in turns (0 = identity)."""


def sample_jitter(n: int, g: torch.Generator, device: torch.device | str, *,
                  brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                  hue: float = 0.0, p: float = 1.0) -> JitterParams:
    """Factors ~ U[max(0, 1 − s), 1 + s] for brightness/contrast/saturation, hue ~ U(±hue).

    With probability 1 − p a sample gets identity factors for all four (SimCLR's
    RandomApply of the whole jitter block), as a mask.
    """
    u = _rand((n, 5), g, torch.device(device))
    on = u[:, 4] < p

    def factor(col: Tensor, s: float) -> Tensor:
        return torch.where(on, _lerp(col, max(0.0, 1.0 - s), 1.0 + s), 1.0)

    return JitterParams(factor(u[:, 0], brightness), factor(u[:, 1], contrast),
                        factor(u[:, 2], saturation),
                        torch.where(on, _lerp(u[:, 3], -hue, hue), 0.0))


def apply_jitter(x: Tensor, prm: JitterParams, *, skip: tuple[str, ...] = ()) -> Tensor:
    """Brightness → contrast → saturation → hue, clamping to [0, 1] after each.

    The order is fixed (torchvision shuffles it per call; a per-sample order would need
    every permutation computed). ``skip`` names ops configured off, to save their passes.
    """
    ops = (("brightness", adjust_brightness), ("contrast", adjust_contrast),
           ("saturation", adjust_saturation), ("hue", adjust_hue))
    for name, op in ops:
        if name not in skip:
            y = op(x, getattr(prm, name))
            # a C = 1 no-op returns its input unchanged (maybe the caller's): leave it
            x = y if y is x else y.clamp_(0.0, 1.0)
    return x


def random_grayscale(x: Tensor, g: torch.Generator, p: float) -> Tensor:
    """Each sample becomes grayscale (equal channels) with probability p; identity for C = 1."""
    if x.shape[1] == 1:
        return x
    mask = _per_sample(_rand((x.shape[0],), g, x.device) < p)
    return torch.where(mask, to_grayscale(x), x)


# ----------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class Augment:
    """One view's transform: affine crop/flip/shift/rotation, colour jitter, grayscale.

    ``__call__`` maps x (N, C, H, W) float in [0, 1] → (N, C, *size) float in [0, 1].
    """
    size: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] | None = None
    translate: float = 0.0
    degrees: float = 0.0
    flip_p: float = 0.0
    padding: Padding = "zeros"
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    jitter_p: float = 0.0
    grayscale_p: float = 0.0

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        n = x.shape[0]
        theta = sample_affine(n, g, x.device, in_hw=tuple(x.shape[-2:]), scale=self.scale,
                              ratio=self.ratio, translate=self.translate,
                              degrees=self.degrees, flip_p=self.flip_p)
        x = affine_warp(x, theta, self.size, self.padding)
        # draws happen even for ops that are off, so a seed's stream does not depend
        # on which ops are enabled; skipped ops only save their compute
        prm = sample_jitter(n, g, x.device, brightness=self.brightness, contrast=self.contrast,
                            saturation=self.saturation, hue=self.hue, p=self.jitter_p)
        skip = tuple(k for k in ("brightness", "contrast", "saturation", "hue")
                     if self.jitter_p == 0.0 or getattr(self, k) == 0.0)
        x = apply_jitter(x, prm, skip=skip)
        x = random_grayscale(x, g, self.grayscale_p)
        return x.clamp_(0.0, 1.0)
