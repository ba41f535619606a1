"""Speech data: :class:`AudioSet` (16 kHz utterances with 10 ms phone labels and speakers),
its sources — LibriSpeech train-clean-100 with the CPC/GIM alignments
(:class:`LibriSpeech`) and a corpus generated with espeak-ng (:class:`EspeakSpeech`) —
and MFCC baseline features aligned with the labels.

Nothing here is registered in :mod:`biossl.registry`; each source is an
:class:`AudioSpec` whose ``load(split, root=None, download=False, **sizes)`` gives an
AudioSet.
"""
from __future__ import annotations

from biossl.data.speech.audioset import HOP, SAMPLE_RATE, AudioSet
from biossl.data.speech.corpus import EspeakCorpusConfig, EspeakSpeech
from biossl.data.speech.espeak import EspeakMissing
from biossl.data.speech.librispeech import LibriSpeech
from biossl.data.speech.mfcc import mfcc_frames, mfcc_table
from biossl.data.speech.spec import AudioSpec

__all__ = ["AudioSet", "AudioSpec", "EspeakCorpusConfig", "EspeakMissing", "EspeakSpeech", "HOP",
           "LibriSpeech", "SAMPLE_RATE", "mfcc_frames", "mfcc_table"]
