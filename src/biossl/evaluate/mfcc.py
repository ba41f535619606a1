"""The MFCC baseline of waveform datasets: 13 MFCCs per 10 ms frame, probed like one encoder stage.

Same analysis as the corpus's MFCC features (biossl.data.speech.mfcc): 16 kHz, 400-sample
(25 ms) Hann window, hop 160, 40 mel bands, unclipped log-mel power, DCT to 13 cepstra;
no deltas (each row depends on its own 25 ms window only). Frame f's window is centred on
the centre of the f-th 10 ms frame (sample 160 f + 80): the segment is zero-padded by 120
samples on both sides and framed without librosa's own centring, so a segment of T samples
gives exactly T / 160 rows, one per label frame (the frame probe's pooling is then the
identity).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from biossl.data.speech.audioset import HOP, INT16_SCALE, SAMPLE_RATE
from biossl.data.speech.mfcc import N_MELS, WINDOW

MFCC_LABEL = "mfcc"
"""The baseline's row label (``biossl eval``) and suite row label (``biossl compare``)."""
N_MFCC = 13
"""Cepstral coefficients per frame."""


def is_waveform(sample_shape: tuple[int, ...]) -> bool:
    """True for a dataset of mono waveform segments: samples of shape (1, T)."""
    return len(sample_shape) == 2 and sample_shape[0] == 1


def mfcc_stage(x: Tensor) -> Tensor:
    """int16 waveforms (n, 1, T), T a multiple of 160 → float32 MFCCs (n, 13, T / 160) on the CPU."""
    if x.dim() != 3 or x.shape[1] != 1 or x.dtype != torch.int16 or x.shape[-1] % HOP:
        raise ValueError(f"MFCC baseline: needs int16 mono waveforms (n, 1, T) with T a multiple of "
                         f"{HOP}, got {x.dtype} {tuple(x.shape)}")
    import librosa  # a dependency; imported here so that image-only evaluation never loads it
    lead = (WINDOW - HOP) // 2
    y = np.pad(x[:, 0].cpu().numpy().astype(np.float32) / INT16_SCALE, ((0, 0), (lead, lead)))
    # librosa frames every row of the (n, T') array in one call (no per-sample loop)
    mel = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=WINDOW, hop_length=HOP,
                                         win_length=WINDOW, window="hann", center=False, n_mels=N_MELS)
    # top_db=None: librosa's default clips 80 dB below the loudest frame of the whole call,
    # which would tie a segment's features to the other segments of its batch
    feats = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=N_MFCC)
    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))


def mfcc_stages(x: Tensor) -> list[Tensor]:
    """:data:`~biossl.evaluate.frames.StageFn` of the baseline: its one 'stage' [(n, 13, F)]."""
    return [mfcc_stage(x)]
