"""IDX files (the MNIST family's format) and the Fashion-MNIST / MNIST datasets.

IDX layout: 2 zero bytes, a type code, the number of dims D, then D big-endian
uint32 sizes, then the values, big-endian, row-major. Files may be gzip-compressed;
that is detected from the gzip magic bytes, not the file name.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from biossl.data.base import DatasetError, DatasetSpec, ImageSet, check_label_range
from biossl.data.fetch import Remote
from biossl.data.locate import Source, resolve

# type code → big-endian numpy dtype
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20
"""Bytes per readinto: gzip serves a readinto through a bytes object of the size asked, so
asking for the whole payload at once would hold a second copy of it."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip'd) → array of its declared shape and dtype.

    The values are read straight into a preallocated array (no per-sample Python and
    no intermediate bytes copy). Raises DatasetError naming ``path`` on a bad magic
    number, a truncated payload or trailing bytes.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == GZIP_MAGIC
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as f:
            return _read_idx_stream(f, path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: truncated or corrupt gzip data ({e}). "
                           f"Delete it and download it again.") from e


def _read_idx_stream(f: BinaryIO, path: Path) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (magic {head.hex() or 'empty'}; expected "
                           f"0000 + type code + dims, e.g. 00000803 for images). The file is "
                           f"corrupt or of another format; delete it and download it again.")
    dtype, ndim = IDX_DTYPES[head[2]], head[3]
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header. Delete it and download it again.")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    out = np.empty(shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):  # readinto may return less than asked (gzip streams do)
        n = f.readinto(view[got:got + READ_CHUNK])
        if not n:
            break
        got += n
    if got < len(view):
        raise DatasetError(f"{path}: truncated: the header declares shape {shape} "
                           f"({len(view)} bytes of values) but only {got} bytes follow. "
                           f"Delete it and download it again.")
    if f.read(1):
        raise DatasetError(f"{path}: has bytes past the {shape} values its header declares; "
                           f"it is corrupt. Delete it and download it again.")
    return out


def _idx_split_files(split: str) -> list[tuple[str, str]]:
    """[(images alternatives), (labels alternatives)] for one split; .gz preferred."""
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    return [(n + ".gz", n) for n in names]


class _IDXDataset(DatasetSpec):
    """A 28×28 grayscale IDX dataset with train (60 000) and test (10 000) splits."""

    splits = ("train", "test")
    image_shape = (1, 28, 28)
    num_classes = 10
    source: Source

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        img_path, lbl_path = resolve(self.source, _idx_split_files(split), root, download)
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"{img_path}: expected uint8 images (N, H, W), got "
                               f"{images.dtype} {images.shape}; is it a labels file?")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{lbl_path}: expected {images.shape[0]} labels to match "
                               f"{img_path.name}, got shape {labels.shape}")
        check_label_range(labels, self.num_classes, lbl_path)
        return ImageSet(torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
                        torch.from_numpy(labels.astype(np.int64)),
                        self.num_classes, self.name, split, source=str(img_path.parent))


_ZALANDO = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_OSSCI = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # yann.lecun.com no longer serves them


class FashionMNIST(_IDXDataset):
    """Fashion-MNIST (Zalando): 70 000 28×28 grayscale clothing images, 10 classes."""

    name = "fashion-mnist"
    source = Source(
        name="fashion-mnist",
        remotes=(Remote("train-images-idx3-ubyte.gz", _ZALANDO + "train-images-idx3-ubyte.gz",
                        "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                 Remote("train-labels-idx1-ubyte.gz", _ZALANDO + "train-labels-idx1-ubyte.gz",
                        "25c81989df183df01b3e8a0aad5dffbe"),
                 Remote("t10k-images-idx3-ubyte.gz", _ZALANDO + "t10k-images-idx3-ubyte.gz",
                        "bef4ecab320f06d8554ea6380940ec79"),
                 Remote("t10k-labels-idx1-ubyte.gz", _ZALANDO + "t10k-labels-idx1-ubyte.gz",
                        "bb300cfdad3c16e7a12a480ee83cd310")),
        apt_package="dataset-fashion-mnist",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )


class MNIST(_IDXDataset):
    """MNIST handwritten digits: 70 000 28×28 grayscale images, 10 classes."""

    name = "mnist"
    source = Source(
        name="mnist",
        remotes=(Remote("train-images-idx3-ubyte.gz", _OSSCI + "train-images-idx3-ubyte.gz",
                        "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                 Remote("train-labels-idx1-ubyte.gz", _OSSCI + "train-labels-idx1-ubyte.gz",
                        "d53e105ee54ea40749a09fcbcd1e9432"),
                 Remote("t10k-images-idx3-ubyte.gz", _OSSCI + "t10k-images-idx3-ubyte.gz",
                        "9fb629c4189551a2d022fa330f9573f3"),
                 Remote("t10k-labels-idx1-ubyte.gz", _OSSCI + "t10k-labels-idx1-ubyte.gz",
                        "ec29112dd5afa0611ce80d1b7f02629c")),
        homepage="http://yann.lecun.com/exdb/mnist/",
    )
