"""What a speech source hands out: :class:`AudioSet`, utterances at 16 kHz with 10 ms
frame labels, stored flat so that a large corpus can stay a memory map on disk.

Layout: all utterances' samples back to back in one int16 tensor, utterance ``u`` at
``samples[sample_offsets[u] : sample_offsets[u] + num_samples[u]]``; the frame labels the
same way in one int16 tensor (``label_offsets``, ``num_labels``). Frame ``f`` of an
utterance covers samples ``[160 f, 160 f + 160)``; an utterance may carry fewer labelled
frames than its ``num_samples // 160`` audio frames (LibriSpeech's alignments stop short
of the end), never more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

SAMPLE_RATE = 16_000
"""Samples per second of every AudioSet."""
HOP = 160
"""Samples per label frame: 10 ms at 16 kHz (GIM's encoder also downsamples by 160)."""
INT16_SCALE = 32768.0
"""int16 sample → float in [-1, 1): divide by this."""



def waveform_to_float(x: Tensor) -> Tensor:
    """int16 samples → float32 in [-1, 1)."""
    return x.float().div_(INT16_SCALE)

@dataclass
class AudioSet:
    """One split of a speech dataset.

    samples: int16 (S,) every utterance's waveform back to back (may be a memory map).
    sample_offsets: int64 (U,) first sample of each utterance in ``samples``.
    num_samples: int64 (U,) samples of each utterance.
    labels: int16 (F,) frame phone labels back to back, one per 10 ms frame, values in
        [0, len(phone_names)) or −1 where unknown.
    label_offsets: int64 (U,) first label of each utterance in ``labels``.
    num_labels: int64 (U,) labelled frames of each utterance, ≤ num_samples // HOP.
    speakers: int64 (U,) speaker of each utterance, index into ``speaker_names``.
    utterance_ids: the U utterance names (LibriSpeech ``SPEAKER-CHAPTER-UTT``).
    phone_names: the phone classes (label id → name).
    speaker_names: the speakers (speaker id → name).
    """

    samples: Tensor
    sample_offsets: Tensor
    num_samples: Tensor
    labels: Tensor
    label_offsets: Tensor
    num_labels: Tensor
    speakers: Tensor
    utterance_ids: tuple[str, ...]
    phone_names: tuple[str, ...]
    speaker_names: tuple[str, ...]
    name: str
    split: str
    source: str = ""
    """Where the audio was read from (or generated into), so a run can record which copy it saw."""
    info: dict = field(default_factory=dict)
    """Facts about how the set was made (generator settings, library versions); JSON-safe."""

    sample_rate = SAMPLE_RATE
    hop = HOP

    def __post_init__(self) -> None:
        # Checked once here so that no consumer has to guess dtypes or layout.
        where = f"{self.name}/{self.split}"
        self.utterance_ids = tuple(self.utterance_ids)
        self.phone_names = tuple(self.phone_names)
        self.speaker_names = tuple(self.speaker_names)
        _expect(where, "samples", self.samples, torch.int16, None)
        _expect(where, "labels", self.labels, torch.int16, None)
        n = len(self.utterance_ids)
        for key in ("sample_offsets", "num_samples", "label_offsets", "num_labels", "speakers"):
            _expect(where, key, getattr(self, key), torch.int64, n)
        if n == 0:
            return
        if int(self.sample_offsets.min()) < 0 or int(self.num_samples.min()) < 0 or \
                int((self.sample_offsets + self.num_samples).max()) > self.samples.shape[0]:
            raise ValueError(f"{where}: sample_offsets/num_samples reach outside samples "
                             f"({self.samples.shape[0]} samples)")
        if int(self.label_offsets.min()) < 0 or int(self.num_labels.min()) < 0 or \
                int((self.label_offsets + self.num_labels).max()) > self.labels.shape[0]:
            raise ValueError(f"{where}: label_offsets/num_labels reach outside labels "
                             f"({self.labels.shape[0]} labels)")
        over = self.num_labels > self.num_samples // HOP
        if bool(over.any()):
            u = int(over.nonzero()[0, 0])
            raise ValueError(f"{where}: utterance {self.utterance_ids[u]} has {int(self.num_labels[u])} "
                             f"labelled frames but only {int(self.num_samples[u]) // HOP} audio frames")
        if int(self.speakers.min()) < 0 or int(self.speakers.max()) >= len(self.speaker_names):
            raise ValueError(f"{where}: speakers must lie in [0, {len(self.speaker_names)})")
        if self.labels.shape[0] and (int(self.labels.min()) < -1
                                     or int(self.labels.max()) >= len(self.phone_names)):
            raise ValueError(f"{where}: labels must lie in [-1, {len(self.phone_names)})")

    def __len__(self) -> int:
        return len(self.utterance_ids)

    @property
    def num_phones(self) -> int:
        return len(self.phone_names)

    @property
    def num_speakers(self) -> int:
        return len(self.speaker_names)

    @property
    def num_frames(self) -> Tensor:
        """int64 (U,) audio frames of each utterance (``num_samples // HOP``)."""
        return self.num_samples // HOP

    @property
    def seconds(self) -> float:
        """Total audio duration in seconds."""
        return float(self.num_samples.sum()) / SAMPLE_RATE

    def max_start_frame(self, length: int) -> Tensor:
        """int64 (U,) last frame a crop of ``length`` samples may start at; −1 where the
        utterance is shorter than ``length``."""
        return torch.where(self.num_samples >= length, (self.num_samples - length) // HOP, -1)

    def crops(self, utt_idx: Tensor, start_frames: Tensor, length: int) -> Tensor:
        """Waveform windows → float32 (n, 1, length) in [-1, 1), one gather for the batch.

        utt_idx, start_frames: int64 (n,); crop i starts at sample ``HOP * start_frames[i]``
        of utterance ``utt_idx[i]`` (on the 10 ms grid, so frame j of the crop is label frame
        ``start_frames[i] + j``). ValueError if a crop runs past its utterance's end.
        """
        utt_idx, start_frames = _index_pair(utt_idx, start_frames)
        first = start_frames * HOP
        if len(utt_idx) and (bool((first < 0).any())
                             or bool((first + length > self.num_samples[utt_idx]).any())):
            bad = ((first < 0) | (first + length > self.num_samples[utt_idx])).nonzero()[0, 0]
            u = int(utt_idx[bad])
            raise ValueError(f"crop of {length} samples at frame {int(start_frames[bad])} runs outside "
                             f"utterance {self.utterance_ids[u]} ({int(self.num_samples[u])} samples); "
                             f"draw starts in [0, max_start_frame(length)]")
        index = (self.sample_offsets[utt_idx] + first)[:, None] + torch.arange(length)
        return waveform_to_float(self.samples[index]).unsqueeze(1)

    def frame_labels(self, utt_idx: Tensor, start_frames: Tensor, n_frames: int) -> Tensor:
        """Phone labels of ``n_frames`` frames from ``start_frames`` → int64 (n, n_frames),
        −1 for frames past an utterance's labelled frames (or unknown), one gather."""
        utt_idx, start_frames = _index_pair(utt_idx, start_frames)
        frame = start_frames[:, None] + torch.arange(n_frames)
        inside = (frame >= 0) & (frame < self.num_labels[utt_idx][:, None])
        index = torch.where(inside, self.label_offsets[utt_idx][:, None] + frame, 0)
        if self.labels.shape[0] == 0:
            return torch.full(frame.shape, -1, dtype=torch.int64)
        return torch.where(inside, self.labels[index].long(), -1)

    def utterance(self, u: int) -> Tensor:
        """Utterance ``u``'s whole waveform → float32 (num_samples[u],) in [-1, 1)."""
        start = int(self.sample_offsets[u])
        return waveform_to_float(self.samples[start:start + int(self.num_samples[u])])

    def utterance_labels(self, u: int) -> Tensor:
        """Utterance ``u``'s frame labels → int64 (num_labels[u],)."""
        start = int(self.label_offsets[u])
        return self.labels[start:start + int(self.num_labels[u])].long()


def _expect(where: str, key: str, t: Tensor, dtype: torch.dtype, n: int | None) -> None:
    if not isinstance(t, Tensor) or t.dtype != dtype or t.dim() != 1 or (n is not None and t.shape[0] != n):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        shape = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{where}: {key} must be a {dtype} {shape} tensor, got {got}")


def _index_pair(utt_idx: Tensor, start_frames: Tensor) -> tuple[Tensor, Tensor]:
    utt_idx = torch.as_tensor(utt_idx, dtype=torch.int64)
    start_frames = torch.as_tensor(start_frames, dtype=torch.int64)
    if utt_idx.dim() != 1 or utt_idx.shape != start_frames.shape:
        raise ValueError(f"utt_idx and start_frames must be 1-D of one length, got "
                         f"{tuple(utt_idx.shape)} and {tuple(start_frames.shape)}")
    return utt_idx, start_frames
