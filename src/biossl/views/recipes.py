"""Augmentation-pair view recipes: ``deform`` (Bio-SSL), ``simclr`` and ``none``.

Each recipe maps uint8 images x (N, C, H, W) on the device to a 'pairs'
:class:`ViewBatch` with x (2N, C, H', W') float in [-1, 1]: rows [0, N) are first views,
rows [N, 2N) second views of the same images. Both views are made in one batched pass
over the concatenated 2N rows, each row with its own random parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from biossl.views.augment import Augment, Padding
from biossl.views.base import ViewRecipe, check_uint8_images, to_float, to_unit, unit_to_input
from biossl.views.batch import ViewBatch


# ----------------------------------------------------------------------------- validation
def _check_range(name: str, v: tuple[float, float], lo: float, hi: float) -> None:
    if len(v) != 2:
        raise ValueError(f"{name} must be [min, max], got {list(v)}")
    if not (lo < v[0] <= v[1] <= hi):
        raise ValueError(f"{name} must satisfy {lo} < min <= max <= {hi}, got {list(v)}")


def _check_in(name: str, v: float, lo: float, hi: float) -> None:
    if not (lo <= v <= hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v}")


def _check_size(size: tuple[int, int] | None) -> None:
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be [height, width] of positive ints or null, got {size}")


def _out_hw(size: tuple[int, int] | None, image_shape: tuple[int, ...]) -> tuple[int, int]:
    return tuple(size) if size is not None else tuple(image_shape[-2:])


# ----------------------------------------------------------------------------- configs
@dataclass
class CropFlipConfig:
    """Fields shared by the augmentation-pair recipes: the crop, the flip, and how often
    the colour ops fire."""
    size: tuple[int, int] | None = None
    """Output [height, width] of every view; null: the image's own size."""
    scale: tuple[float, float] = (0.6, 1.0)
    """Range of the crop's area as a fraction of the image (0 < min <= max <= 1)."""
    ratio: tuple[float, float] = (0.75, 4 / 3)
    """Range of the crop's aspect ratio width/height (log-uniform)."""
    flip_p: float = 0.5
    """Probability of a horizontal flip."""
    jitter_p: float = 0.8
    """Probability that a view gets the colour jitter at all."""
    grayscale_p: float = 0.2
    """Probability that a view is turned grayscale (no-op on 1 channel)."""

    def validate(self) -> None:
        _check_size(self.size)
        _check_range("scale", self.scale, 0.0, 1.0)
        _check_range("ratio", self.ratio, 0.0, float("inf"))
        for k in ("flip_p", "jitter_p", "grayscale_p"):
            _check_in(k, getattr(self, k), 0.0, 1.0)


@dataclass
class DeformConfig(CropFlipConfig):
    translate: float = 0.1
    """Extra shift of up to ± this fraction of the image side per axis ("motion")."""
    degrees: float = 10.0
    """Rotation of up to ± this many degrees about the crop centre."""
    padding: Padding = "zeros"
    """Fill for pixels shifted or rotated in from outside: zeros (black), border, reflection."""
    brightness: float = 0.4
    """Brightness factor ~ U[1 − b, 1 + b] ("lighting")."""
    contrast: float = 0.4
    """Contrast factor ~ U[1 − c, 1 + c] (blend with the image's mean luminance)."""
    saturation: float = 0.4
    """Saturation factor ~ U[1 − s, 1 + s] (blend with per-pixel grayscale; no-op on 1 channel)."""
    hue: float = 0.1
    """Hue shift ~ U(±hue) turns, a YIQ rotation (<= 0.5; no-op on 1 channel)."""

    def validate(self) -> None:
        super().validate()
        _check_in("translate", self.translate, 0.0, 1.0)
        _check_in("degrees", self.degrees, 0.0, 180.0)
        for k in ("brightness", "contrast", "saturation"):
            _check_in(k, getattr(self, k), 0.0, float("inf"))
        _check_in("hue", self.hue, 0.0, 0.5)


@dataclass
class SimCLRConfig(CropFlipConfig):
    scale: tuple[float, float] = (0.08, 1.0)
    """Range of the random resized crop's area as a fraction of the image."""
    strength: float = 1.0
    """Colour-distortion strength s: brightness, contrast, saturation 0.8·s, hue 0.2·s (s <= 2.5)."""

    def validate(self) -> None:
        super().validate()
        _check_in("strength", self.strength, 0.0, 2.5)


@dataclass
class NoConfig:
    """The ``none`` recipe has no parameters."""

    def validate(self) -> None:
        pass


# ----------------------------------------------------------------------------- recipes
class _AugmentPairs(ViewRecipe):
    """Two independently augmented views of every image (shared by deform and simclr)."""

    kind: ClassVar = "pairs"

    def __init__(self, augment: Augment, image_shape: tuple[int, int, int]):
        self.image_shape = tuple(image_shape)
        self.augment = augment
        self.out_hw = tuple(augment.size)
        colour = augment.jitter_p > 0 or augment.grayscale_p > 0
        if colour and self.image_shape[0] not in (1, 3):
            raise ValueError(f"colour jitter/grayscale need 1 or 3 channels, images have "
                             f"{self.image_shape[0]}; set jitter_p and grayscale_p to 0")

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:
        """x uint8 (N, C, H, W) → ViewBatch x (2N, C, *out_hw) float in [-1, 1], kind 'pairs'."""
        check_uint8_images(x)
        n = x.shape[0]
        # duplicate while still uint8 (a quarter of the bytes of float)
        v = self.augment(to_unit(torch.cat([x, x])), generator)
        return ViewBatch(unit_to_input(v), n, "pairs")

    def eval_batch(self, x: Tensor) -> ViewBatch:
        """Whole image, resized (antialiased bilinear) to the views' size when it differs."""
        if tuple(x.shape[-2:]) == self.out_hw:
            return super().eval_batch(x)
        y = F.interpolate(to_unit(x), size=self.out_hw, mode="bilinear",
                          align_corners=False, antialias=True).clamp_(0.0, 1.0)
        return ViewBatch(unit_to_input(y), x.shape[0], "plain")

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (image_shape[0], *self.out_hw)


class DeformViews(_AugmentPairs):
    """Bio-SSL "motion and lighting" pairs: affine crop/shift/rotation, flip, colour jitter, grayscale."""

    Config: ClassVar[type] = DeformConfig

    def __init__(self, cfg: DeformConfig | None, image_shape: tuple[int, int, int]):
        cfg = cfg if cfg is not None else DeformConfig()
        cfg.validate()
        self.cfg = cfg
        super().__init__(Augment(
            size=_out_hw(cfg.size, image_shape), scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
            translate=cfg.translate, degrees=cfg.degrees, flip_p=cfg.flip_p, padding=cfg.padding,
            brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation,
            hue=cfg.hue, jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p), image_shape)


class SimCLRViews(_AugmentPairs):
    """SimCLR pairs: random resized crop, flip, colour jitter (p 0.8, strength s), grayscale 0.2."""

    Config: ClassVar[type] = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig | None, image_shape: tuple[int, int, int]):
        cfg = cfg if cfg is not None else SimCLRConfig()
        cfg.validate()
        self.cfg = cfg
        s = cfg.strength
        # crops stay inside the image (no shift or rotation), so padding never shows;
        # SimCLR's Gaussian blur (ImageNet only, not its CIFAR recipe) is left out
        super().__init__(Augment(
            size=_out_hw(cfg.size, image_shape), scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
            flip_p=cfg.flip_p, brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s,
            jitter_p=cfg.jitter_p, grayscale_p=cfg.grayscale_p), image_shape)


class NoViews(ViewRecipe):
    """Two identical unaugmented copies of every image (debugging, ablation)."""

    Config: ClassVar[type] = NoConfig
    kind: ClassVar = "pairs"

    def __init__(self, cfg: NoConfig | None, image_shape: tuple[int, int, int]):
        self.cfg = cfg if cfg is not None else NoConfig()
        self.image_shape = tuple(image_shape)

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:
        """x uint8 (N, C, H, W) → ViewBatch x (2N, C, H, W): the image twice, in [-1, 1]."""
        check_uint8_images(x)
        v = to_float(x)
        return ViewBatch(torch.cat([v, v]), x.shape[0], "pairs")
