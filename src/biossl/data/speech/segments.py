"""Fixed-length segments of a speech corpus: what training, views and probes read.

Utterances have different lengths; the trainer, the view recipes and the probes take
fixed-size samples. Every utterance is cut into segments of ``length`` samples every
``hop`` samples (on the 10 ms grid); an utterance shorter than one segment gives one
segment, zero-padded at the end (its padded frames are labelled −1). A segment keeps its
utterance's speaker as its label and its frames' phone labels.
"""
from __future__ import annotations

import torch

from biossl.data.base import ImageSet
from biossl.data.speech.audioset import HOP, AudioSet


SEGMENT_CHUNK_SAMPLES = 2 ** 24
"""Samples gathered per copy while cutting segments (bounds the index arrays to ~128 MiB)."""


def segment_starts(num_samples: torch.Tensor, length: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(utterance index, first sample) of every segment, int64 (S,) each."""
    n = num_samples.long()
    count = torch.where(n >= length, (n - length) // hop + 1, torch.ones_like(n))
    utt = torch.repeat_interleave(torch.arange(len(n)), count)
    first_of_utt = torch.cumsum(count, 0) - count
    within = torch.arange(len(utt)) - first_of_utt[utt]
    return utt, within * hop


def segment(audio: AudioSet, length: int, hop: int, num_speakers: int | None = None) -> ImageSet:
    """The corpus as segments → :class:`ImageSet` with int16 (S, 1, length) waveforms,
    speaker labels (S,) and phone labels (S, length // 10 ms)."""
    if length % HOP or hop % HOP:
        raise ValueError(f"segment length {length} and hop {hop} must be multiples of {HOP} samples (10 ms)")
    utt, start = segment_starts(audio.num_samples, length, hop)
    wave = torch.zeros(len(utt), 1, length, dtype=torch.int16)
    # in chunks: the int64 index of all segments at once would be 8 × the corpus (LibriSpeech: ~70 GB)
    per = max(1, SEGMENT_CHUNK_SAMPLES // length)
    for s in range(0, len(utt), per):
        u, pos = utt[s:s + per], start[s:s + per, None] + torch.arange(length)
        inside = pos < audio.num_samples[u][:, None]
        index = torch.where(inside, audio.sample_offsets[u][:, None] + pos, 0)
        wave[s:s + per, 0] = torch.where(inside, audio.samples[index], torch.zeros((), dtype=torch.int16))
    frames = audio.frame_labels(utt, start // HOP, length // HOP)
    return ImageSet(wave, audio.speakers[utt].clone(),
                    num_speakers if num_speakers is not None else audio.num_speakers,
                    audio.name, audio.split, audio.source, frame_labels=frames,
                    frame_classes=audio.num_phones)
