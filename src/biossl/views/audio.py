"""Audio views: random crops of the waveform on the 10 ms grid, batched on the device.

The dataset's samples are int16 waveform segments (N, 1, T) (biossl.data.speech); a
training batch takes one crop of ``crop`` samples from each, starting at a random
multiple of 160 samples (10 ms), so frame j of a crop is a labelled frame — GIM's random
1.28 s windows. The crops form a 'sequence' batch: the predictive objectives predict the
encoder's later time steps from its earlier ones. Evaluation reads the whole segment.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from biossl.bounds import PositiveInt
from biossl.data.speech.audioset import HOP as FRAME  # samples per 10 ms frame at 16 kHz: the crop grid
from biossl.data.speech.audioset import waveform_to_float
from biossl.views.base import ViewRecipe, check_samples
from biossl.views.batch import ViewBatch


def check_waveforms(x: Tensor) -> None:
    check_samples(x, torch.int16, 3, "audio views take int16 waveform segments (N, 1, T)",
                  "; use them with a speech dataset (e.g. data.name=espeak-speech)")


@dataclass
class AudioCropConfig:
    crop: PositiveInt = 20480
    """Samples per training crop (GIM: 20,480 = 1.28 s); a multiple of 160 (10 ms)."""

    def validate(self) -> None:
        if self.crop % FRAME:
            raise ValueError(f"crop must be a multiple of {FRAME} samples (10 ms), got {self.crop}")


class AudioCrops(ViewRecipe):
    """One random crop per segment, on the 10 ms grid → 'sequence' batch (n, 1, crop)."""

    Config = AudioCropConfig
    kind = "sequence"

    def __init__(self, cfg: AudioCropConfig | None, image_shape: tuple[int, ...]):
        self.cfg = cfg if cfg is not None else AudioCropConfig()
        self.cfg.validate()
        if len(image_shape) != 2:
            raise ValueError(f"view recipe 'audio-crops' needs waveform segments (1, T), got samples of "
                             f"shape {tuple(image_shape)}; use a speech dataset (data.name=espeak-speech)")
        self.length = image_shape[-1]
        if self.cfg.crop > self.length:
            raise ValueError(f"views.crop={self.cfg.crop} is longer than the dataset's segments "
                             f"({self.length} samples); lower views.crop")

    def __call__(self, x: Tensor, generator: torch.Generator) -> ViewBatch:
        check_waveforms(x)
        n = x.shape[0]
        starts = torch.randint((self.length - self.cfg.crop) // FRAME + 1, (n,), generator=generator,
                               device=generator.device).to(x.device) * FRAME
        index = starts[:, None] + torch.arange(self.cfg.crop, device=x.device)       # (n, crop)
        crops = torch.gather(x[:, 0], 1, index)
        return ViewBatch(waveform_to_float(crops).unsqueeze(1), n, "sequence")

    def eval_batch(self, x: Tensor) -> ViewBatch:
        check_waveforms(x)
        return ViewBatch(waveform_to_float(x), x.shape[0], "plain")

    def sample_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (image_shape[0], self.cfg.crop)
