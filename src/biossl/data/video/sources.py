"""The video corpora as registered datasets: clips of a fixed number of frames, uint8
(N, C, T, H, W) (the Conv3d layout), one action label per clip.

The trainer, the view recipes and the probes take fixed-size samples, so every clip of a
:class:`~biossl.data.video.clipset.ClipSet` becomes a window of ``frames`` frames:

- the generated corpus (``fashion-actions``) has clips of one length: the window is the
  whole clip, a view of the cached store (no copy);
- UCF-101 clips have different lengths: the window is the middle ``frames`` frames of each
  clip (a clip shorter than that holds its last frame to the end, so every official test
  clip is kept and the probe scores stay comparable with the full fold). The windows are
  written once to a second memory-mapped store in the cache, keyed by the decoded store's
  settings, the clip lengths and a sample of the decoded frames.

``fashion-actions-objects`` is the same corpus labelled by the Fashion-MNIST class of its
object instead of the action: ``eval.dataset=fashion-actions-objects`` probes an encoder
trained on ``fashion-actions`` for the object (same clips, same shape).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch

from biossl.data.base import DatasetSpec, ImageSet
from biossl.data.locate import cache_dir
from biossl.data.video.actions import ACTIONS, FASHION_CLASSES, FashionActions
from biossl.data.video.clipset import ClipSet
from biossl.data.video.spec import VideoSpec
from biossl.data.video.store import StoreWriter, cache_key, read_store
from biossl.data.video.ucf101 import UCF101

WINDOW_CHUNK_FRAMES = 4096
"""Frames gathered per write while cutting windows (bounds the memory of one copy)."""


def window_index(cs: ClipSet, frames: int) -> torch.Tensor:
    """int64 (N, frames): store frame indices of each clip's middle ``frames`` frames; a
    shorter clip repeats its last frame to fill the window."""
    lens = cs.lengths
    start = ((lens - frames) // 2).clamp_min(0)
    pos = torch.minimum(start[:, None] + torch.arange(frames), (lens - 1)[:, None])
    return cs.offsets[:-1, None] + pos


def as_image_set(cs: ClipSet, clips_ntchw: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ImageSet:
    """uint8 (N, T, C, H, W) clips → ImageSet of (N, C, T, H, W) (a permuted view, no copy)."""
    return ImageSet(clips_ntchw.permute(0, 2, 1, 3, 4), labels, num_classes, cs.name, cs.split, cs.source)


class VideoClips(DatasetSpec):
    """A video source as fixed-length clips; subclasses name the source, its sizes, the
    window length and which label the clips carry."""

    video: ClassVar[type[VideoSpec]]
    sizes: ClassVar[dict[str, Any]] = {}
    """Options passed to the source's ``load`` (its Config fields)."""
    frames: ClassVar[int] = 16
    """Frames per clip (the window length)."""
    label: ClassVar[str] = "action"
    """'action': the clip's action class; 'object': its object class (generated corpus)."""

    def clip_set(self, split: str, root: Path | None, download: bool) -> ClipSet:
        return self.video().load(split, root=root, download=download, **self.sizes)

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        cs = self.clip_set(split, root, download)
        if self.label == "object":
            if cs.objects is None:
                raise ValueError(f"{self.name}: the source {cs.name} has no object labels")
            labels = cs.objects
        else:
            labels = cs.labels
        return as_image_set(cs, self.fixed_clips(cs, split), labels.clone(), self.num_classes)

    def fixed_clips(self, cs: ClipSet, split: str) -> torch.Tensor:
        """uint8 (N, frames, C, H, W)."""
        if cs.fixed_length == self.frames:
            return cs.clips()
        return cs.frames[window_index(cs, self.frames)]


class FashionActionsClips(VideoClips):
    """The generated corpus at its default size: 16 frames of 32×32 gray, 9 actions,
    150 train / 40 test clips per action (made on first use in seconds, cached)."""

    name = "fashion-actions"
    video = FashionActions
    frames = 16
    image_shape = (1, 16, 32, 32)
    num_classes = len(ACTIONS)


class FashionActionsObjects(FashionActionsClips):
    """The clips of ``fashion-actions``, labelled by the Fashion-MNIST class of the object."""

    name = "fashion-actions-objects"
    label = "object"
    num_classes = len(FASHION_CLASSES)


class UCF101Clips(VideoClips):
    """UCF-101 fold 1, every 3rd frame (8.3 fps), frames resized to 128×128 RGB, the middle
    48 frames (5.8 s) of each clip: 9,537 train / 3,783 test clips, 101 actions.

    Cache: the decoded frames (≈ 29 GB) plus these windows (≈ 22 GB train, 9 GB test);
    on a CUDA device the trainer holds the train windows on the device.
    """

    name = "ucf101"
    video = UCF101
    sizes = {"fold": 1, "side": 128, "frame_step": 3}
    frames = 48
    image_shape = (3, 48, 128, 128)
    num_classes = 101

    def fixed_clips(self, cs: ClipSet, split: str) -> torch.Tensor:
        lens = cs.lengths
        # The decoded store is keyed by the videos; its lengths and a sample of its frames
        # identify it here, so windows are cut again whenever it was decoded anew.
        sample = cs.frames[:: max(1, cs.frames.shape[0] // 64)]
        digest = hashlib.sha256(lens.numpy().tobytes() + sample.numpy().tobytes()).hexdigest()
        stem = f"{split}-{self.frames}f-" + cache_key(source=cs.source, sizes=self.sizes, frames=self.frames,
                                                      frame_shape=list(cs.frame_shape), lengths=digest)
        store_dir = cache_dir(self.video.name) / "windows"
        stored = read_store(store_dir, stem)
        if stored is None:
            index = window_index(cs, self.frames)
            per = max(1, WINDOW_CHUNK_FRAMES // self.frames)
            with StoreWriter(store_dir, stem, cs.frame_shape) as writer:
                for s in range(0, len(cs), per):
                    writer.add(cs.frames[index[s:s + per]].contiguous())
                writer.commit({"clips": len(cs), "frames": self.frames, "short_clips": int((lens < self.frames).sum())})
            stored = read_store(store_dir, stem)
            assert stored is not None, "a store just written must read back"
        frames, _, _, _ = stored
        return frames.view(len(cs), self.frames, *cs.frame_shape)
