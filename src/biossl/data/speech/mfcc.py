"""MFCC baseline features (librosa), one row per 10 ms label frame.

Frame ``f`` of an utterance covers samples ``[160 f, 160 f + 160)``; its MFCC window is
400 samples (25 ms, Hann) centred on that frame's centre (sample ``160 f + 80``): the
utterance is zero-padded by 120 samples in front and framed without librosa's own
centring, which gives exactly one MFCC row per whole frame. Log-mel power is not clipped
(``power_to_db(top_db=None)``), so a row depends on its own window only. Rows are returned for the
utterance's labelled frames (``num_labels``), so row ``f`` pairs with label ``f``.

Many utterances go through one librosa call: each is laid out as a block of
``160 (n + 2)`` samples (120 zeros, its ``160 n`` samples, 200 zeros), so every block starts
on the hop grid, its first ``n`` windows see only its own samples and zeros, and the two
windows straddling the next block are dropped. This equals one call per utterance
(a test checks it) without librosa's per-call overhead.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from biossl.data.speech.audioset import HOP, INT16_SCALE, SAMPLE_RATE, AudioSet

WINDOW = 400
"""MFCC analysis window in samples (25 ms at 16 kHz)."""
N_MELS = 40
"""Mel bands the cepstra are computed from."""


def _librosa():
    try:
        import librosa
    except ImportError as e:  # pragma: no cover - librosa is a dependency
        raise ImportError("MFCC features need librosa: pip install librosa") from e
    return librosa


CHUNK_SAMPLES = 1 << 23
"""About how many samples (~9 min of audio) one librosa call processes."""


def mfcc_frames(audio: AudioSet, utt: int, n_mfcc: int = 13) -> Tensor:
    """MFCCs of utterance ``utt`` → float32 (audio.num_labels[utt], n_mfcc), aligned with its labels."""
    return _mfcc_utterances(audio, [utt], n_mfcc)


def mfcc_table(audio: AudioSet, n_mfcc: int = 13) -> Tensor:
    """Every utterance's :func:`mfcc_frames` back to back → float32 (len(audio.labels), n_mfcc),
    row ``i`` the features of label ``audio.labels[i]`` (same ``label_offsets`` layout)."""
    out = torch.zeros(audio.labels.shape[0], n_mfcc)
    blocks = (audio.num_labels + 2) * HOP
    group: list[int] = []
    size = 0
    for u in range(len(audio)):  # only index building per utterance; the maths is per chunk
        group.append(u)
        size += int(blocks[u])
        if size >= CHUNK_SAMPLES or u == len(audio) - 1:
            rows = _mfcc_utterances(audio, group, n_mfcc)
            index = torch.cat([torch.arange(int(audio.label_offsets[g]),
                                            int(audio.label_offsets[g] + audio.num_labels[g])) for g in group])
            out[index] = rows
            group, size = [], 0
    return out


def _mfcc_utterances(audio: AudioSet, utts: list[int], n_mfcc: int) -> Tensor:
    """MFCC rows of the labelled frames of ``utts``, concatenated in that order."""
    librosa = _librosa()
    n = audio.num_labels[utts]
    if int(n.sum()) == 0:
        return torch.zeros(0, n_mfcc)
    lead = (WINDOW - HOP) // 2
    block_starts = torch.cumsum((n + 2) * HOP, 0) - (n + 2) * HOP
    signal = torch.zeros(int(((n + 2) * HOP).sum()))
    # One gather: destination and source index of every kept sample.
    dest = torch.repeat_interleave(block_starts + lead - torch.cumsum(n * HOP, 0) + n * HOP, n * HOP)
    src = torch.repeat_interleave(audio.sample_offsets[utts] - torch.cumsum(n * HOP, 0) + n * HOP, n * HOP)
    k = torch.arange(int((n * HOP).sum()))
    signal[dest + k] = audio.samples[src + k].float() / INT16_SCALE
    mel = librosa.feature.melspectrogram(y=signal.numpy(), sr=SAMPLE_RATE, n_fft=WINDOW,
                                         hop_length=HOP, win_length=WINDOW, window="hann",
                                         center=False, n_mels=N_MELS)
    # top_db=None: librosa's default clips at 80 dB below the loudest frame of the call,
    # which would make a frame's features depend on the other utterances in the chunk.
    feats = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=n_mfcc)  # (n_mfcc, frames)
    first_frame = block_starts // HOP
    keep = torch.repeat_interleave(first_frame - torch.cumsum(n, 0) + n, n) + torch.arange(int(n.sum()))
    return torch.from_numpy(np.ascontiguousarray(feats.T))[keep].float()
