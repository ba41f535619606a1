"""What a dataset source hands out (:class:`ImageSet`) and what every source declares
(:class:`DatasetSpec`): its splits, which split each training phase reads, image shape
and number of classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor


class DatasetError(RuntimeError):
    """Dataset files are missing, truncated, corrupt or fail their checksum.

    The message names the file or directories concerned and how to fix it.
    """


def check_label_range(labels, num_classes: int, path: Path) -> None:
    """DatasetError naming ``path`` unless every label of that file lies in [0, num_classes)."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DatasetError(f"{path}: label {bad} is outside 0..{num_classes - 1}; the file is corrupt "
                           f"or belongs to another dataset. Delete it and download it again.")


@dataclass
class ImageSet:
    """One split of a dataset of fixed-size samples, kept small: uint8 images (N, C, H, W),
    int16 waveform segments (N, C, T) or uint8 clips (N, C, T, H, W).

    images: the samples. May be a read-only-backed memory map (STL-10 unlabeled) or a
        non-contiguous view; index it in batches (``images[idx]``) rather than copying it whole.
    labels: int64 (N,), class ids in [0, num_classes), −1 where unlabeled (speech: speakers).
    frame_labels: int64 (N, F) per-frame classes in [0, frame_classes), −1 where unknown
        (speech: phones per 10 ms); None without frame labels.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    name: str
    split: str
    source: str = ""
    """Where the images were read from (the directory holding the files), so that a run
    can record which copy of a dataset it saw; empty for data made in memory."""
    frame_labels: Tensor | None = None
    frame_classes: int = 0

    def __post_init__(self) -> None:
        # Checked once here so that no consumer has to guess dtype or layout.
        if self.images.dtype not in (torch.uint8, torch.int16) or not 3 <= self.images.dim() <= 5:
            raise ValueError(f"{self.name}/{self.split}: images must be uint8 (N, C, H, W) / (N, C, T, H, W) "
                             f"or int16 (N, C, T), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.frame_labels is not None and (self.frame_labels.dtype != torch.int64 or self.frame_labels.dim() != 2
                                              or self.frame_labels.shape[0] != self.images.shape[0]):
            raise ValueError(f"{self.name}/{self.split}: frame_labels must be int64 ({self.images.shape[0]}, F), "
                             f"got {self.frame_labels.dtype} {tuple(self.frame_labels.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}/{self.split}: labels must be int64 ({self.images.shape[0]},), "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) of an image, (C, T) of a waveform segment."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def labeled(self) -> bool:
        """True when every image carries a class label."""
        return len(self) > 0 and bool((self.labels >= 0).all())


class DatasetSpec:
    """One dataset: its facts as class attributes plus :meth:`load`.

    Registered in :data:`biossl.registry.DATASETS` with the class itself as factory,
    so ``DATASETS.build(name)`` gives an instance whose ``load`` reads a split.
    Subclasses implement :meth:`_load`; :meth:`load` checks the split name before
    and the result's shape and labels after.
    """

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    ssl_split: ClassVar[str] = "train"          # read by self-supervised training
    probe_train_split: ClassVar[str] = "train"  # labelled split the probes are fit on
    test_split: ClassVar[str] = "test"          # labelled split probes are scored on
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)  # (C, H, W)
    num_classes: ClassVar[int] = 10
    frame_classes: ClassVar[int] = 0
    """Classes of the per-frame labels (ImageSet.frame_labels); 0: the dataset has none."""
    frame_name: ClassVar[str] = "frame"
    """What a frame label is, as table headers name it (speech: 'phone')."""

    def load(self, split: str, root: str | Path | None = None, download: bool = True) -> ImageSet:
        """Read ``split`` → :class:`ImageSet` with images (N, *image_shape) uint8.

        root: a directory to look in first (see :mod:`biossl.data.locate` for the
        rest of the search order). download: fetch missing files from the official
        URL into the user cache; with False a missing file raises DatasetError.
        """
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; "
                             f"its splits are: {', '.join(self.splits)}")
        out = self._load(split, Path(root).expanduser() if root is not None else None, download)
        if out.image_shape != tuple(self.image_shape):
            raise DatasetError(f"{self.name}/{split}: images have shape {out.image_shape}, "
                               f"expected {tuple(self.image_shape)}; the files are not {self.name}")
        if len(out) and (int(out.labels.min()) < -1 or int(out.labels.max()) >= self.num_classes):
            raise DatasetError(f"{self.name}/{split}: labels outside [0, {self.num_classes}); "
                               f"the label file is corrupt or belongs to another dataset")
        return out

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, splits={self.splits})"
