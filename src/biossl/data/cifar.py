"""CIFAR-10 and CIFAR-100, from the official "python version" pickle batches.

Each batch is a pickled dict with ``b'data'`` (N×3072 uint8: 1024 red, 1024 green,
1024 blue values, each a row-major 32×32 plane) and ``b'labels'`` (CIFAR-10) or
``b'fine_labels'`` (CIFAR-100). Read either from the extracted directory
(``cifar-10-batches-py/``, ``cifar-100-python/``) or from the official .tar.gz,
which is extracted into the user cache once.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from biossl.data.base import DatasetError, DatasetSpec, ImageSet, check_label_range
from biossl.data.fetch import Remote
from biossl.data.locate import Source, resolve

# Pickles can run arbitrary code on load; the batches need only numpy arrays, so
# these are the only globals the unpickler may resolve (numpy 1.x and 2.x names,
# and _codecs.encode, which protocol-2 pickles use for bytes).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickle batch → (images uint8 (N, 3, 32, 32), labels int64 (N,)).

    ``label_key``: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100). Keys may
    be bytes (the official Python-2 pickles read with encoding='bytes') or str.
    Raises DatasetError naming ``path`` when it is truncated, not a batch, or the
    wrong size.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e}); it is "
                           f"truncated or corrupt. Delete it and download it again.") from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: holds a {type(batch).__name__}, not a CIFAR batch dict")
    data = _get(batch, "data", path)
    labels = _get(batch, label_key, path)
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for "
                           f"{data.shape[0]} images")
    # Each row is already channel-major, plane by plane: a reshape, not a transpose.
    return data.reshape(-1, 3, 32, 32), labels


def _get(batch: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{path}: no {key!r} entry (keys: {sorted(map(str, batch))}); it is not a "
                       f"batch of this dataset. Delete it and download the official archive again.")


class _CIFAR(DatasetSpec):
    splits = ("train", "test")
    image_shape = (3, 32, 32)
    source: ClassVar[Source]
    batches: ClassVar[dict[str, tuple[str, ...]]]  # split → batch file names
    label_key: ClassVar[str]

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        top = self.source.archive_dir
        # The batches sit in the archive's top directory; also accept a directory
        # that is that top directory itself (root=.../cifar-10-batches-py).
        members = [(f"{top}/{b}", b) for b in self.batches[split]]
        paths = resolve(self.source, members, root, download)
        parts = []
        for path in paths:
            parts.append(read_cifar_batch(path, self.label_key))
            check_label_range(parts[-1][1], self.num_classes, path)
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels),
                        self.num_classes, self.name, split, source=str(paths[0].parent))


_TORONTO = "https://www.cs.toronto.edu/~kriz/"


class CIFAR10(_CIFAR):
    """CIFAR-10: 60 000 32×32 colour images, 10 classes (50 000 train / 10 000 test)."""

    name = "cifar10"
    num_classes = 10
    label_key = "labels"
    batches = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    source = Source(
        name="cifar10",
        remotes=(Remote("cifar-10-python.tar.gz", _TORONTO + "cifar-10-python.tar.gz",
                        "c58f30108f718f92721af3b95e74349a"),),
        archive_dir="cifar-10-batches-py",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    )


class CIFAR100(_CIFAR):
    """CIFAR-100: 60 000 32×32 colour images, 100 fine classes (50 000 train / 10 000 test)."""

    name = "cifar100"
    num_classes = 100
    label_key = "fine_labels"
    batches = {"train": ("train",), "test": ("test",)}
    source = Source(
        name="cifar100",
        remotes=(Remote("cifar-100-python.tar.gz", _TORONTO + "cifar-100-python.tar.gz",
                        "eb9058c3a382ffc7106e4002c42a8d85"),),
        archive_dir="cifar-100-python",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    )
