"""What a video source hands out: :class:`ClipSet`, clips of uint8 frames with action
labels (and optionally object labels), plus batched gathers of frame blocks.

Frames of all clips lie back to back in one store ``frames`` (F, C, H, W) — a plain
tensor or a copy-on-write memory map of a cache file — and ``offsets`` (N + 1,) says
where each clip starts, so clips of different lengths (UCF-101) and of one length
(the generated corpus) are handled alike and any batch of blocks is one gather.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biossl.data.base import DatasetError


@dataclass
class ClipSet:
    """One split of a video dataset, kept as uint8.

    frames: uint8 (F, C, H, W), every clip's frames back to back in time order.
    offsets: int64 (N + 1,), clip i is ``frames[offsets[i]:offsets[i + 1]]``;
        offsets[0] = 0, offsets[-1] = F, every clip at least one frame.
    labels: int64 (N,), action class ids in [0, len(class_names)).
    class_names: the action names, indexed by label.
    objects: int64 (N,) object class ids in [0, len(object_names)), or None.
    object_names: the object class names (empty when ``objects`` is None).
    clip_names: one name per clip (e.g. the file path inside the dataset), used in
        error messages; may be empty.
    source: where the clips were read from (dataset directory or generator cache file),
        so a run can record which copy it saw; empty for data made in memory.
    """

    frames: Tensor
    offsets: Tensor
    labels: Tensor
    class_names: tuple[str, ...]
    name: str
    split: str
    objects: Tensor | None = None
    object_names: tuple[str, ...] = ()
    clip_names: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        # Checked once here so no consumer has to guess dtype, layout or ranges.
        self.class_names = tuple(self.class_names)
        self.object_names = tuple(self.object_names)
        self.clip_names = tuple(self.clip_names)
        where = f"{self.name}/{self.split}"
        if self.frames.dtype != torch.uint8 or self.frames.dim() != 4:
            raise ValueError(f"{where}: frames must be uint8 (F, C, H, W), got "
                             f"{self.frames.dtype} {tuple(self.frames.shape)}")
        off = self.offsets
        if off.dtype != torch.int64 or off.dim() != 1 or off.numel() < 1:
            raise ValueError(f"{where}: offsets must be int64 (N + 1,), got {off.dtype} {tuple(off.shape)}")
        if int(off[0]) != 0 or int(off[-1]) != self.frames.shape[0]:
            raise ValueError(f"{where}: offsets must run from 0 to the frame count "
                             f"{self.frames.shape[0]}, got {int(off[0])} .. {int(off[-1])}")
        n = off.numel() - 1
        if n and int((off[1:] - off[:-1]).min()) < 1:
            raise ValueError(f"{where}: every clip needs at least one frame (offsets must increase)")
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,):
            raise ValueError(f"{where}: labels must be int64 ({n},), got "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")
        _check_range(self.labels, len(self.class_names), f"{where}: action label")
        if self.objects is None:
            if self.object_names:
                raise ValueError(f"{where}: object_names given without objects")
        else:
            if self.objects.dtype != torch.int64 or self.objects.shape != (n,):
                raise ValueError(f"{where}: objects must be int64 ({n},), got "
                                 f"{self.objects.dtype} {tuple(self.objects.shape)}")
            _check_range(self.objects, len(self.object_names), f"{where}: object label")
        if self.clip_names and len(self.clip_names) != n:
            raise ValueError(f"{where}: {len(self.clip_names)} clip names for {n} clips")

    def to(self, device: torch.device | str) -> "ClipSet":
        """The same clips with ``frames`` on ``device`` (labels and offsets stay on the CPU,
        where the gathers compute their indices)."""
        return ClipSet(self.frames.to(device), self.offsets, self.labels, self.class_names, self.name,
                       self.split, objects=self.objects, object_names=self.object_names,
                       clip_names=self.clip_names, source=self.source)

    def __repr__(self) -> str:
        return (f"ClipSet({self.name}/{self.split}: {len(self)} clips, {self.frames.shape[0]} frames "
                f"{'×'.join(map(str, self.frame_shape))}, {self.num_classes} actions"
                f"{f', {self.num_objects} objects' if self.objects is not None else ''})")

    # ---- facts -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_objects(self) -> int:
        return len(self.object_names)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame."""
        return tuple(self.frames.shape[1:])  # type: ignore[return-value]

    @property
    def lengths(self) -> Tensor:
        """int64 (N,), frames per clip."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def fixed_length(self) -> int | None:
        """The common clip length when all clips have one, else None."""
        lens = self.lengths
        return int(lens[0]) if len(self) and bool((lens == lens[0]).all()) else None

    def clips(self) -> Tensor:
        """uint8 (N, T, C, H, W) view of equal-length clips; ValueError otherwise."""
        t = self.fixed_length
        if t is None:
            raise ValueError(f"{self.name}/{self.split}: clips have different lengths "
                             f"({int(self.lengths.min())}..{int(self.lengths.max())} frames); "
                             f"use window() or blocks()")
        return self.frames.view(len(self), t, *self.frame_shape)

    def clip(self, i: int) -> Tensor:
        """uint8 (T_i, C, H, W) view of clip ``i``."""
        return self.frames[int(self.offsets[i]):int(self.offsets[i + 1])]

    def clip_name(self, i: int) -> str:
        return self.clip_names[i] if self.clip_names else f"clip {i}"

    # ---- checks ------------------------------------------------------------------------
    def require_frames(self, needed: int, what: str = "") -> None:
        """DatasetError naming the shortest clip unless every clip has ≥ ``needed`` frames.

        what: what needs them, for the message (e.g. 'views: 4 blocks of 5 frames').
        """
        if not len(self):
            return
        lens = self.lengths
        short = int(torch.argmin(lens))
        if int(lens[short]) >= needed:
            return
        count = int((lens < needed).sum())
        raise DatasetError(
            f"{self.name}/{self.split}: {self.clip_name(short)} has {int(lens[short])} frames, "
            f"fewer than the {needed} needed{f' by {what}' if what else ''} ({count} of "
            f"{len(self)} clips are that short). Use fewer or shorter blocks, a smaller "
            f"frame step (more frames per clip), or longer clips.")

    # ---- batched gathers ---------------------------------------------------------------
    @staticmethod
    def span(n_blocks: int, block_len: int, stride: int | None = None) -> int:
        """Frames covered by ``n_blocks`` blocks of ``block_len`` frames starting ``stride`` apart."""
        stride = block_len if stride is None else stride
        if n_blocks < 1 or block_len < 1 or stride < 1:
            raise ValueError(f"n_blocks, block_len and stride must be ≥ 1, got "
                             f"{n_blocks}, {block_len}, {stride}")
        return (n_blocks - 1) * stride + block_len

    def random_starts(self, clip_idx: Tensor, span: int,
                      generator: torch.Generator | None = None) -> Tensor:
        """int64 (n,), a uniform start frame per clip so that ``span`` frames fit in it."""
        clip_idx = torch.as_tensor(clip_idx, dtype=torch.int64)
        self._check_fit(clip_idx, torch.zeros_like(clip_idx), span)
        room = self.lengths[clip_idx] - span + 1
        u = torch.rand(clip_idx.shape, generator=generator, dtype=torch.float64)
        return (u * room).long().clamp_max(room - 1)

    def blocks(self, clip_idx: Tensor, start: Tensor, n_blocks: int, block_len: int,
               stride: int | None = None) -> Tensor:
        """uint8 (n, n_blocks, C, block_len, H, W): for each clip ``clip_idx[j]`` the blocks of
        ``block_len`` consecutive frames starting at ``start[j] + b * stride`` (stride
        defaults to block_len: adjacent, non-overlapping). One gather over the store."""
        span = self.span(n_blocks, block_len, stride)
        stride = block_len if stride is None else stride
        clip_idx = torch.as_tensor(clip_idx, dtype=torch.int64)
        start = torch.as_tensor(start, dtype=torch.int64).expand(clip_idx.shape)
        self._check_fit(clip_idx, start, span)
        rel = (torch.arange(n_blocks) * stride)[:, None] + torch.arange(block_len)  # (nb, L)
        idx = (self.offsets[clip_idx] + start)[:, None, None] + rel
        out = self.frames[idx.reshape(-1)].view(clip_idx.numel(), n_blocks, block_len, *self.frame_shape)
        return out.permute(0, 1, 3, 2, 4, 5).contiguous()

    def window(self, clip_idx: Tensor, start: Tensor, length: int) -> Tensor:
        """uint8 (n, C, length, H, W): ``length`` consecutive frames of each clip from ``start``."""
        return self.blocks(clip_idx, start, 1, length)[:, 0]

    def _check_fit(self, clip_idx: Tensor, start: Tensor, span: int) -> None:
        if clip_idx.dim() != 1:
            raise ValueError(f"clip_idx must be 1-D, got shape {tuple(clip_idx.shape)}")
        if clip_idx.numel() == 0:
            return
        if int(clip_idx.min()) < 0 or int(clip_idx.max()) >= len(self):
            raise IndexError(f"{self.name}/{self.split}: clip index out of range 0..{len(self) - 1}")
        over = start + span - self.lengths[clip_idx]
        bad = torch.nonzero((over > 0) | (start < 0)).flatten()
        if bad.numel():
            j = int(bad[0])
            i = int(clip_idx[j])
            raise DatasetError(
                f"{self.name}/{self.split}: {self.clip_name(i)} has {int(self.lengths[i])} frames; "
                f"frames {int(start[j])}..{int(start[j]) + span - 1} were asked for ({bad.numel()} "
                f"clips of this batch are too short). Use fewer or shorter blocks, or check "
                f"require_frames() when loading.")

    def subset(self, idx: Tensor) -> "ClipSet":
        """The clips ``idx`` (in that order) as a new ClipSet; their frames are copied."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        lens = self.lengths[idx]
        offsets = torch.zeros(idx.numel() + 1, dtype=torch.int64)
        offsets[1:] = lens.cumsum(0)
        # Frame index of every kept frame: its clip's old start plus its position in the clip.
        pos = torch.arange(int(offsets[-1])) - torch.repeat_interleave(offsets[:-1], lens)
        frames = self.frames[torch.repeat_interleave(self.offsets[idx], lens) + pos]
        return ClipSet(frames, offsets, self.labels[idx], self.class_names, self.name, self.split,
                       objects=None if self.objects is None else self.objects[idx],
                       object_names=self.object_names,
                       clip_names=tuple(self.clip_names[i] for i in idx.tolist()) if self.clip_names else (),
                       source=self.source)


def _check_range(values: Tensor, count: int, what: str) -> None:
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= count):
        bad = int(values.min()) if int(values.min()) < 0 else int(values.max())
        raise ValueError(f"{what} {bad} is outside 0..{count - 1} ({count} names given)")
