"""Clip views: a window of consecutive frames from each clip, with one random crop and flip
for the whole clip, batched on the device.

The dataset's samples are uint8 clips (N, C, T, H, W) (biossl.data.video). A training batch
takes from each clip ``blocks × block_frames`` consecutive frames starting at a random
frame, then one random resized crop (area ~ U(scale), aspect ~ log-U(ratio)) and, with
probability ``flip_p``, a horizontal flip — the same for every frame of that clip (one
affine warp per clip, its frames stacked as channels), different between clips. The
result is a 'sequence' batch x (n, C, blocks·block_frames, H', W') in [-1, 1]: the
predictive objectives read each stage output's time axis, the context at step t
predicting step t + k.

Blocks. The view hands out the frames in order; the encoder's time axis makes the blocks.
``vgg8-video`` convolves frame-wise in its lower stages (one time step per frame) and its
top two stages with temporal kernels of stride = kernel (CLAPP's temporal VGG-8: 3), so its
top stage has one time step per ``temporal_kernel²`` frames; with ``block_frames`` equal to
that, the top stage has one step per block (the DPC/CLAPP block: block t predicts block
t + k). No receptive field crosses a step boundary, so a context never sees its future.

Evaluation reads the whole clip at its own size ('plain'; the probes pool over time and
space).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biossl.bounds import PositiveInt
from biossl.views.augment import affine_warp, sample_affine
from biossl.views.base import ViewRecipe, check_samples, to_float, to_unit, unit_to_input
from biossl.views.batch import ViewBatch
from biossl.views.recipes import _check_in, _check_range, _check_size, _out_hw


def check_clips(x: Tensor) -> None:
    check_samples(x, torch.uint8, 5, "clip views take uint8 clips (N, C, T, H, W)",
                  "; use them with a video dataset (e.g. data.name=fashion-actions)")


@dataclass
class ClipBlocksConfig:
    blocks: PositiveInt = 4
    """Blocks per training sequence (DPC/CLAPP: the context block t predicts block t + k)."""
    block_frames: PositiveInt = 4
    """Consecutive frames per block; set it to the encoder's temporal reduction (vgg8-video:
    temporal_kernel², 9 for CLAPP's temporal kernel 3) so the top stage has one step per block."""
    size: tuple[int, int] | None = None
    """Output [height, width] of every frame; null: the clip's own frame size."""
    scale: tuple[float, float] = (0.5, 1.0)
    """Range of the crop's area as a fraction of the frame (0 < min <= max <= 1)."""
    ratio: tuple[float, float] = (0.75, 4 / 3)
    """Range of the crop's aspect ratio width/height (log-uniform)."""
    flip_p: float = 0.5
    """Probability of a horizontal flip (of the whole clip)."""

    def validate(self) -> None:
        _check_size(self.size)
        _check_range("scale", self.scale, 0.0, 1.0)
        _check_range("ratio", self.ratio, 0.0, float("inf"))
        _check_in("flip_p", self.flip_p, 0.0, 1.0)

    @property
    def span(self) -> int:
        """Frames of one training sequence."""
        return self.blocks * self.block_frames


class ClipBlocks(ViewRecipe):
    """Consecutive frames from a random start, one crop + flip per clip → 'sequence' batch
    (n, C, blocks·block_frames, H', W')."""

    Config = ClipBlocksConfig
    kind = "sequence"

    def __init__(self, cfg: ClipBlocksConfig | None, image_shape: tuple[int, ...]):
        self.cfg = cfg if cfg is not None else ClipBlocksConfig()
        self.cfg.validate()
        if len(image_shape) != 4:
            raise ValueError(f"view recipe 'clip-blocks' needs video clips (C, T, H, W), got samples of "
                             f"shape {tuple(image_shape)}; use a video dataset (data.name=fashion-actions)")
        self.frames = image_shape[1]
        self.out_hw = _out_hw(self.cfg.size, image_shape)
        if self.cfg.span > self.frames:
            raise ValueError(f"views.blocks × views.block_frames = {self.cfg.blocks} × {self.cfg.block_frames} "
                             f"= {self.cfg.span} frames, but the dataset's clips have {self.frames}; "
                             f"lower views.blocks or views.block_frames")

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:
        check_clips(x)
        n, c, _, h, w = x.shape
        span = self.cfg.span
        starts = torch.randint(self.frames - span + 1, (n,), generator=generator,
                               device=generator.device).to(x.device)
        t = starts[:, None] + torch.arange(span, device=x.device)                     # (n, span)
        # channel-major gather (n, C, span, H, W): the output needs no transpose copy
        window = x.gather(2, t[:, None, :, None, None].expand(n, c, span, h, w))
        theta = sample_affine(n, generator, x.device, in_hw=(h, w), scale=self.cfg.scale,
                              ratio=self.cfg.ratio, flip_p=self.cfg.flip_p)
        # The frames of a clip are channels of one image: one warp, the same crop on each.
        warped = affine_warp(to_unit(window.reshape(n, c * span, h, w)), theta, self.out_hw, padding="border")
        return ViewBatch(unit_to_input(warped).view(n, c, span, *self.out_hw), n, "sequence")

    def eval_batch(self, x: Tensor) -> ViewBatch:
        check_clips(x)
        return ViewBatch(to_float(x), x.shape[0], "plain")

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (image_shape[0], self.cfg.span, *self.out_hw)
