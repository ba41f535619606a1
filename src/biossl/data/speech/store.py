"""An :class:`AudioSet` on disk: a directory of ``.npy`` arrays plus ``meta.json``, written
atomically and read back as memory maps (a large corpus is never loaded whole).

Files: ``samples.npy`` (int16), ``labels.npy`` (int16), ``index.npz`` (the five int64
per-utterance arrays), ``meta.json`` (names, split, source, info). ``meta.json`` is
written last, so a directory without it is incomplete.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from biossl.data.base import DatasetError
from biossl.data.speech.audioset import AudioSet

SAMPLES = "samples.npy"
LABELS = "labels.npy"
INDEX = "index.npz"
META = "meta.json"
_INDEX_KEYS = ("sample_offsets", "num_samples", "label_offsets", "num_labels", "speakers")


@contextmanager
def staging(final: Path, replace: bool = True) -> Iterator[Path]:
    """A fresh temporary directory next to ``final``, renamed to ``final`` when the block
    ends without error and removed when it raises (or the process dies before the rename:
    a leftover ``.<name>.tmp-*`` is never read). An existing ``final`` is replaced, or with
    ``replace=False`` kept and the new copy dropped (content fixed by the name, e.g. two
    ranks generating the same corpus at once)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists() and not replace:
            shutil.rmtree(tmp)
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_complete(directory: Path) -> bool:
    """True if ``directory`` holds a fully written AudioSet."""
    return (Path(directory) / META).is_file()


def write(audio: AudioSet, directory: Path, *, samples_written: bool = False) -> None:
    """Write ``audio`` into ``directory`` (use inside :func:`staging`). samples_written: the
    caller already filled ``directory/samples.npy`` (e.g. a memory map decoded into)."""
    directory = Path(directory)
    if not samples_written:
        np.save(directory / SAMPLES, audio.samples.numpy())
    np.save(directory / LABELS, audio.labels.numpy())
    np.savez(directory / INDEX, **{k: getattr(audio, k).numpy() for k in _INDEX_KEYS})
    meta = {"name": audio.name, "split": audio.split, "source": audio.source,
            "utterance_ids": list(audio.utterance_ids), "phone_names": list(audio.phone_names),
            "speaker_names": list(audio.speaker_names), "info": audio.info}
    (directory / META).write_text(json.dumps(meta, indent=1))


def read(directory: Path) -> AudioSet:
    """Read an AudioSet written by :func:`write`; samples and labels stay memory-mapped
    (copy-on-write: writable tensors, the files never change). DatasetError if incomplete."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
        samples = np.load(directory / SAMPLES, mmap_mode="c")
        labels = np.load(directory / LABELS, mmap_mode="c")
        with np.load(directory / INDEX) as index:
            arrays = {k: torch.from_numpy(index[k].astype(np.int64)) for k in _INDEX_KEYS}
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"{directory}: the stored audio is incomplete or corrupt ({e}); "
                           f"delete the directory and load again to rebuild it") from e
    return AudioSet(samples=_tensor(samples), labels=_tensor(labels),
                    utterance_ids=tuple(meta["utterance_ids"]), phone_names=tuple(meta["phone_names"]),
                    speaker_names=tuple(meta["speaker_names"]), name=meta["name"], split=meta["split"],
                    source=meta["source"], info=meta.get("info", {}), **arrays)


def _tensor(array: np.ndarray) -> torch.Tensor:
    # An empty memory map cannot be made (numpy refuses size-0 maps on some versions).
    return torch.from_numpy(array) if array.size else torch.from_numpy(np.array(array))
