"""scikit-learn's 8×8 handwritten digits: 1 797 images, always available offline.

Tiny and fast: meant for smoke tests and examples, not for results.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biossl.data.base import DatasetError, DatasetSpec, ImageSet

TRAIN_COUNT = 1500  # fixed split: the first 1500 images train, the remaining 297 test


class Digits(DatasetSpec):
    """sklearn digits: 8×8 grayscale, 10 classes; first 1500 train, last 297 test."""

    name = "digits"
    splits = ("train", "test")
    image_shape = (1, 8, 8)
    num_classes = 10

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise DatasetError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from e
        d = load_digits()
        # Values are counts 0..16 of "on" pixels per 4×4 block; spread them over 0..255.
        images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
        labels = d.target.astype(np.int64)
        sl = slice(0, TRAIN_COUNT) if split == "train" else slice(TRAIN_COUNT, None)
        return ImageSet(torch.from_numpy(np.ascontiguousarray(images[sl])),
                        torch.from_numpy(labels[sl].copy()), self.num_classes, self.name, split,
                        source="sklearn.datasets.load_digits (bundled with scikit-learn)")
