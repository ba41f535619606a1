"""Video files → uint8 frames with PyAV (FFmpeg): every ``step``-th frame, resized.

Decoding is frame by frame (that is how codecs work); the kept frames are resized
together with one antialiased ``interpolate`` per chunk of frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from biossl.data.base import DatasetError

RESIZE_CHUNK = 64
"""Frames resized per interpolate call (bounds the float copy of a long clip)."""


def decode_video(path: str | Path, *, size: tuple[int, int], frame_step: int = 1,
                 gray: bool = False) -> Tensor:
    """Decode the first video stream of ``path`` → uint8 (T, C, H, W), C = 1 if gray else 3.

    Keeps frames 0, step, 2·step, …; each is resized to ``size`` (H, W) bilinearly
    (antialiased when shrinking; the aspect ratio follows ``size``). DatasetError naming
    the file when it cannot be opened or decoded, has no video stream or no frame.
    """
    import av  # imported here: only video files need it

    path = Path(path)
    kept: list[np.ndarray] = []
    fix = "The file is corrupt or truncated; extract it again from the original archive."
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream. {fix}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
            fmt = "gray" if gray else "rgb24"
            for i, frame in enumerate(container.decode(stream)):
                if i % frame_step == 0:
                    kept.append(frame.to_ndarray(format=fmt))
    except av.FFmpegError as e:
        raise DatasetError(f"{path}: cannot be decoded ({e}). {fix}") from e
    if not kept:
        raise DatasetError(f"{path}: no video frame could be decoded. {fix}")
    raw = torch.from_numpy(np.stack(kept))  # (T, H, W, C) or (T, H, W)
    raw = raw[..., None] if raw.dim() == 3 else raw
    return resize_frames(raw.permute(0, 3, 1, 2), size)


def resize_frames(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (T, C, H, W) → uint8 (T, C, *size), bilinear, antialiased when shrinking."""
    if tuple(frames.shape[2:]) == tuple(size):
        return frames.contiguous()
    shrink = size[0] < frames.shape[2] or size[1] < frames.shape[3]
    out = torch.empty((frames.shape[0], frames.shape[1], *size), dtype=torch.uint8)
    for s in range(0, frames.shape[0], RESIZE_CHUNK):
        x = frames[s:s + RESIZE_CHUNK].float()
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink)
        out[s:s + RESIZE_CHUNK] = x.round().clamp(0, 255).to(torch.uint8)
    return out
