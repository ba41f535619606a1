"""Clips cached on disk so that epochs (and later runs) never decode or render again.

A store is two files in a cache directory:

- ``STEM.u8``: every clip's frames back to back, raw uint8 (F, C, H, W), read back as a
  copy-on-write memory map (pages are read when indexed; writes never reach the file);
- ``STEM.json``: format version, frame shape, frames per clip, byte count, and the
  source's own metadata (labels, names, settings).

Frames are streamed into a temporary file while they are produced (a UCF-101 split never
sits in memory whole); the data file is renamed into place first and the index last,
each atomically, so an index only exists next to a complete data file. A store whose
data file does not match its index is treated as absent and rebuilt: it is derived data.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from biossl.checkpoint import write_text_atomic

FORMAT = 1


def cache_key(**parts: Any) -> str:
    """A short stable hash of JSON-serialisable settings, for cache file names."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StoreWriter:
    """Append clips, then :meth:`commit`; leaving a ``with`` block by an exception removes
    the temporary file and leaves any earlier store untouched."""

    def __init__(self, directory: str | Path, stem: str, frame_shape: tuple[int, int, int]):
        self.directory = Path(directory)
        self.stem = stem
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.lengths: list[int] = []
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=self.directory)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def add(self, frames: Tensor) -> None:
        """Append one clip uint8 (T, C, H, W) or a batch of equal-length clips (n, T, C, H, W)."""
        if frames.dtype != torch.uint8 or frames.dim() not in (4, 5) \
                or tuple(frames.shape[-3:]) != self.frame_shape:
            raise ValueError(f"store {self.stem}: expected uint8 (T, {', '.join(map(str, self.frame_shape))}) "
                             f"clips, got {frames.dtype} {tuple(frames.shape)}")
        clips = frames if frames.dim() == 5 else frames[None]
        if clips.shape[1] < 1:
            raise ValueError(f"store {self.stem}: a clip needs at least one frame")
        self._file.write(memoryview(np.ascontiguousarray(clips.numpy())).cast("B"))
        self.lengths += [int(clips.shape[1])] * int(clips.shape[0])

    def commit(self, meta: dict[str, Any]) -> Path:
        """Make the store visible under its final names → the data file's path."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        data = self.directory / f"{self.stem}.u8"
        os.replace(self._tmp, data)
        index = {"format": FORMAT, "frame_shape": list(self.frame_shape), "lengths": self.lengths,
                 "bytes": data.stat().st_size, "meta": meta}
        write_text_atomic(json.dumps(index), self.directory / f"{self.stem}.json")
        return data

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def read_store(directory: str | Path, stem: str) -> tuple[Tensor, Tensor, dict[str, Any], Path] | None:
    """(frames uint8 (F, C, H, W) memory map, offsets int64 (N + 1,), meta, data path) of
    the store ``stem``, or None when it is absent, unreadable or incomplete."""
    directory = Path(directory)
    data, index_path = directory / f"{stem}.u8", directory / f"{stem}.json"
    try:
        index = json.loads(index_path.read_text())
        shape = tuple(int(s) for s in index["frame_shape"])
        lengths = [int(n) for n in index["lengths"]]
        size = data.stat().st_size
        meta = index["meta"]
        ok = index["format"] == FORMAT and size == index["bytes"] == sum(lengths) * int(np.prod(shape))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        return None
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    if size == 0:
        return torch.empty((0, *shape), dtype=torch.uint8), offsets, meta, data
    # Mode 'c' (copy-on-write) gives a writable array, so torch.from_numpy does not warn.
    frames = np.memmap(data, dtype=np.uint8, mode="c", shape=(int(offsets[-1]), *shape))
    return torch.from_numpy(frames), offsets, meta, data
