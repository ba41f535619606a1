"""Saccade views (CLAPP / GIM): a grid of overlapping grayscale patches per image.

Each image becomes a ``rows × cols`` grid of ``patch × patch`` glimpses taken every
``stride`` pixels; every patch is one encoder input row, and the predictive objectives
(``clapp``, ``infonce``) relate a patch to the ones below it in the same column.

Geometry (documented defaults):

- STL-10 (CLAPP, GIM): random 64×64 crop of the 96×96 image, patches 16×16 stride 8
  → a 7×7 grid (recipes ``clapp-stl10*``).
- 28×28 data (Fashion-MNIST): the same half-overlap scaled by ½: patches 8×8 stride 4
  on the whole image → a 6×6 grid (the defaults of :class:`SaccadeConfig`).

The whole batch is cut with one ``unfold``: no loop over images or patches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from biossl.views.augment import luminance
from biossl.views.base import ViewRecipe, check_uint8_images, to_float
from biossl.views.batch import ViewBatch


@dataclass
class SaccadeConfig:
    patch: int = 8
    """Side of one square patch in pixels (CLAPP on 64×64 crops: 16)."""
    stride: int = 4
    """Step between neighbouring patches (CLAPP: 8, i.e. half-overlapping patches)."""
    crop: int | None = None
    """Side of the square crop the grid is cut from: random position for training,
    centred for evaluation (CLAPP on STL-10: 64). None: the whole image."""
    grayscale: bool = True
    """Convert to luminance first (CLAPP and GIM train on grayscale patches)."""
    flip: bool = False
    """Random horizontal flip of the whole image (training only), p = ½."""

    def validate(self) -> None:
        if self.patch < 1 or self.stride < 1:
            raise ValueError(f"patch and stride must be ≥ 1, got {self.patch}, {self.stride}")
        if self.crop is not None and self.crop < self.patch:
            raise ValueError(f"crop {self.crop} is smaller than the patch {self.patch}")


def grid_size(side: int, patch: int, stride: int) -> int:
    """Patches along one axis of length ``side``."""
    if side < patch:
        raise ValueError(f"image side {side} is smaller than the patch {patch}")
    return (side - patch) // stride + 1


def cut_patches(x: Tensor, patch: int, stride: int) -> tuple[Tensor, tuple[int, int]]:
    """x (N, C, H, W) → patches (N·rows·cols, C, patch, patch), image-major then row-major.

    Patch (r, q) of image i is ``x[i, :, stride·r : stride·r + patch, stride·q : stride·q + patch]``.
    """
    n, c, h, w = x.shape
    rows, cols = grid_size(h, patch, stride), grid_size(w, patch, stride)
    u = F.unfold(x, kernel_size=patch, stride=stride)                 # (N, C·p·p, rows·cols)
    u = u.view(n, c, patch, patch, rows * cols).permute(0, 4, 1, 2, 3)
    return u.reshape(n * rows * cols, c, patch, patch), (rows, cols)


def random_crop(x: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Per-image random ``size × size`` crop of x (N, C, H, W), one gather for the batch."""
    n, _, h, w = x.shape
    if size > h or size > w:
        raise ValueError(f"crop {size} does not fit in {h}×{w} images")
    off = torch.rand((n, 2), generator=g, device=g.device).to(x.device)
    oy = (off[:, 0] * (h - size + 1)).long().clamp_(max=h - size)
    ox = (off[:, 1] * (w - size + 1)).long().clamp_(max=w - size)
    ar = torch.arange(size, device=x.device)
    ys = (oy[:, None] + ar)[:, None, :, None]                           # (N, 1, S, 1)
    xs = (ox[:, None] + ar)[:, None, None, :]                           # (N, 1, 1, S)
    idx = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[idx, ch, ys, xs]


def center_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


class SaccadeViews(ViewRecipe):
    """Patch grids ("saccades") for the predictive objectives: kind 'grid'."""

    Config: ClassVar[type] = SaccadeConfig
    kind: ClassVar = "grid"

    def __init__(self, cfg: SaccadeConfig | None, image_shape: tuple[int, int, int]):
        cfg = cfg if cfg is not None else SaccadeConfig()
        cfg.validate()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        if cfg.grayscale and c not in (1, 3):
            raise ValueError(f"grayscale needs 1 or 3 channels, images have {c}")
        side_h, side_w = (cfg.crop, cfg.crop) if cfg.crop is not None else (h, w)
        if side_h > h or side_w > w:
            raise ValueError(f"crop {cfg.crop} does not fit in {h}×{w} images")
        self.grid = (grid_size(side_h, cfg.patch, cfg.stride), grid_size(side_w, cfg.patch, cfg.stride))

    def _prepare(self, x: Tensor) -> Tensor:
        """uint8 (already cropped: a quarter of the bytes of float) → float in [-1, 1]."""
        v = to_float(x)
        # luminance weights sum to 1, so grayscale commutes with the [-1, 1] rescaling
        return luminance(v) if self.cfg.grayscale else v

    def _grid_batch(self, v: Tensor) -> ViewBatch:
        patches, grid = cut_patches(v, self.cfg.patch, self.cfg.stride)
        return ViewBatch(patches, v.shape[0], "grid", grid)

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:
        """x uint8 (N, C, H, W) → ViewBatch x (N·rows·cols, C', patch, patch) in [-1, 1], 'grid'."""
        check_uint8_images(x)
        if self.cfg.crop is not None:
            x = random_crop(x, self.cfg.crop, generator)
        v = self._prepare(x)
        if self.cfg.flip:
            flip = torch.rand(v.shape[0], generator=generator, device=generator.device) < 0.5
            v = torch.where(flip.to(v.device).view(-1, 1, 1, 1), v.flip(-1), v)
        return self._grid_batch(v)

    def eval_batch(self, x: Tensor) -> ViewBatch:
        """Deterministic grid of the (centre-cropped) image: probes read the patch-averaged features."""
        check_uint8_images(x)
        if self.cfg.crop is not None:
            x = center_crop(x, self.cfg.crop)
        return self._grid_batch(self._prepare(x))

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        c = 1 if self.cfg.grayscale else image_shape[0]
        return (c, self.cfg.patch, self.cfg.patch)
