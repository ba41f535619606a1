"""View recipes: uint8 image batches → :class:`ViewBatch`, batched on the device."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from biossl.views.batch import Kind, ViewBatch


def check_samples(x: Tensor, dtype: torch.dtype, dims: int, what: str, hint: str = "") -> None:
    """ValueError unless ``x`` is a batch of ``dtype`` with ``dims`` axes: what a recipe takes
    (``what``, e.g. 'uint8 (N, C, H, W) images'); ``hint`` says how to fix it."""
    if x.dim() != dims or x.dtype != dtype:
        raise ValueError(f"{what}, got {x.dtype} {tuple(x.shape)}{hint}")


def check_uint8_images(x: Tensor) -> None:
    """Recipes take the dataset's uint8 (N, C, H, W) batches; anything else is a caller bug."""
    check_samples(x, torch.uint8, 4, "view recipes take uint8 (N, C, H, W) images")


def to_float(x: Tensor) -> Tensor:
    """uint8 (N, C, H, W) in [0, 255] → float in [-1, 1] (the encoders' input range)."""
    return x.float().mul_(2.0 / 255.0).sub_(1.0)


def to_unit(x: Tensor) -> Tensor:
    """uint8 → float in [0, 1], the domain the augmentations work in."""
    return x.float().div_(255.0)


def unit_to_input(v: Tensor) -> Tensor:
    """[0, 1] → the encoders' input range [-1, 1], in place (as :func:`to_float`)."""
    return v.mul_(2.0).sub_(1.0)


class ViewRecipe:
    """Makes training views and evaluation inputs from uint8 images on the device.

    Subclasses set ``kind`` ('pairs' or 'grid') and implement :meth:`__call__`.
    All randomness comes from the ``generator`` argument, so a run is reproducible
    and resumable from the generator's saved state.
    """

    kind: ClassVar[Kind] = "pairs"

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:  # pragma: no cover
        raise NotImplementedError

    def eval_batch(self, x: Tensor) -> ViewBatch:
        """Deterministic input for evaluation: the whole image ('plain')."""
        return ViewBatch(to_float(x), x.shape[0], "plain")

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape (C, H, W) of one encoder input row made from an image of ``image_shape``."""
        return tuple(image_shape)
