"""The speech corpora as registered datasets: fixed-length segments (biossl.data.speech.segments)
of 1.6 s every 0.8 s, int16 (N, 1, 25600) with speaker labels and 10 ms phone labels."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from biossl.data.base import DatasetSpec, ImageSet
from biossl.data.speech.corpus import EspeakSpeech
from biossl.data.speech.librispeech import LibriSpeech
from biossl.data.speech.phones import ESPEAK_PHONES
from biossl.data.speech.segments import segment
from biossl.data.speech.spec import AudioSpec

SEGMENT = 25_600
"""Samples per segment (1.6 s at 16 kHz): room for a 1.28 s training crop (GIM's 20,480
samples) at 33 start positions on the 10 ms grid."""
SEGMENT_HOP = 12_800
"""Samples between segment starts (0.8 s): consecutive segments overlap by half."""


class SpeechSegments(DatasetSpec):
    """A speech corpus cut into segments; subclasses name the corpus and its size."""

    audio: ClassVar[type[AudioSpec]]
    sizes: ClassVar[dict[str, Any]] = {}
    image_shape = (1, SEGMENT)
    frame_name = "phone"

    def _load(self, split: str, root: Path | None, download: bool) -> ImageSet:
        audio = self.audio().load(split, root=root, download=download, **self.sizes)
        return segment(audio, SEGMENT, SEGMENT_HOP, self.num_classes)


class EspeakSpeechSegments(SpeechSegments):
    """espeak-ng corpus, 20 speakers × 40 utterances (27 min train, 7 min test); made on first use."""

    name = "espeak-speech"
    audio = EspeakSpeech
    num_classes = 20
    frame_classes = len(ESPEAK_PHONES)


class EspeakSpeechLarge(SpeechSegments):
    """espeak-ng corpus, 60 speakers × 120 utterances (about 5 h); made on first use."""

    name = "espeak-speech-large"
    audio = EspeakSpeech
    sizes = {"speakers": 60, "utterances_per_speaker": 120}
    num_classes = 60
    frame_classes = len(ESPEAK_PHONES)


class LibriSpeechSegments(SpeechSegments):
    """LibriSpeech train-clean-100 with the CPC/GIM split and phone alignments (41 phones, 251 speakers)."""

    name = "librispeech"
    audio = LibriSpeech
    num_classes = 251
    frame_classes = 41
