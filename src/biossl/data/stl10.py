"""STL-10 from the official binary release (``stl10_binary/``).

``<split>_X.bin``: images back to back, 3 × 96 × 96 bytes each, every colour plane
stored **column-major** (Matlab order), so a plain (3, 96, 96) reshape gives
(channel, column, row) and needs its last two axes swapped. ``<split>_y.bin``: one
byte per image, classes 1..10 (mapped here to 0..9). ``unlabeled_X.bin`` (100 000
images, ~2.7 GB) is memory-mapped, never read into memory whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biossl.data.base import DatasetError, DatasetSpec, ImageSet
from biossl.data.fetch import Remote
from biossl.data.locate import Source, resolve

IMAGE_BYTES = 3 * 96 * 96


def read_stl10_images(path: str | Path, *, mmap: bool) -> np.ndarray:
    """Read an STL-10 ``*_X.bin`` → uint8 (N, 3, 96, 96) in (channel, row, column) order.

    mmap=True: a copy-on-write memory map seen through a transposed (non-contiguous)
    view; nothing is read until indexed, and writes never reach the file.
    mmap=False: a contiguous in-memory copy (for the small labelled splits).
    The file size must be a positive multiple of one image; else DatasetError.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DatasetError(f"{path}: size {size} bytes is not a positive multiple of one image "
                           f"({IMAGE_BYTES} bytes); the file is truncated or corrupt. "
                           f"Delete it and download it again.")
    n = size // IMAGE_BYTES
    if mmap:
        # mode 'c' (copy-on-write) gives a writable array, so torch.from_numpy does not
        # warn, while the file on disk stays untouched.
        stored = np.memmap(path, dtype=np.uint8, mode="c", shape=(n, 3, 96, 96))
    else:
        stored = np.fromfile(path, dtype=np.uint8).reshape(n, 3, 96, 96)
    images = stored.transpose(0, 1, 3, 2)  # (N, C, col, row) → (N, C, row, col)
    return images if mmap else np.ascontiguousarray(images)


def read_stl10_labels(path: str | Path, count: int) -> np.ndarray:
    """Read an STL-10 ``*_y.bin`` → int64 (count,) in 0..9; DatasetError if the count or range is off."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.shape[0] != count:
        raise DatasetError(f"{path}: {raw.shape[0]} labels for {count} images; the file is "
                           f"truncated or belongs to another split. Delete it and download it again.")
    if count and (raw.min() < 1 or raw.max() > 10):
        raise DatasetError(f"{path}: labels outside 1..10; the file is corrupt")
    return raw.astype(np.int64) - 1


class STL10(DatasetSpec):
    """STL-10: 96×96 colour images, 10 classes; 5 000 train, 8 000 test, 100 000 unlabeled."""

    name = "stl10"
    splits = ("train", "test", "unlabeled")
    ssl_split = "unlabeled"
    image_shape = (3, 96, 96)
    num_classes = 10
    source = Source(
        name="stl10",
        remotes=(Remote("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                        "91f7769df0f17e558f3565bffb0c7dfb"),),
        archive_dir="stl10_binary",
        homepage="https://cs.stanford.edu/~acoates/stl10/",
    )

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        names = [f"{split}_X.bin"] + ([] if split == "unlabeled" else [f"{split}_y.bin"])
        # Also accept a directory that is stl10_binary/ itself.
        paths = resolve(self.source, [(f"stl10_binary/{n}", n) for n in names], root, download)
        images = read_stl10_images(paths[0], mmap=split == "unlabeled")
        if split == "unlabeled":
            labels = np.full(images.shape[0], -1, dtype=np.int64)
        else:
            labels = read_stl10_labels(paths[1], images.shape[0])
        return ImageSet(torch.from_numpy(images), torch.from_numpy(labels),
                        self.num_classes, self.name, split, source=str(paths[0].parent))
