"""The phone classes of the generated speech corpus and how phoneme events become 10 ms
frame labels.

The classes are eSpeak's own phoneme mnemonics (Kirshenbaum-like ASCII names, e.g. ``aI``
for the vowel of "time", ``tS`` for "ch") as libespeak-ng 1.51 reports them for the
corpus's English voices, plus one silence class for every pause (mnemonics starting with
``_``). The list is fixed here, not collected per corpus, so a label id means the same
phone in every corpus. It was made by speaking the whole word list in every accent and
1 500 random sentences at varied rate and pitch; a mnemonic outside it (another espeak-ng
version) labels its frames −1 (unknown) rather than shifting the ids.
"""
from __future__ import annotations

import numpy as np

SILENCE = "sil"

ESPEAK_PHONES: tuple[str, ...] = (SILENCE,) + (
    "0", "3", "3:", ";", "?", "@", "@-", "@2", "@L", "A:", "A@", "D", "E", "I", "I#", "I2", "IR",
    "N", "O2", "O:", "O@", "OI", "S", "T", "U", "U@", "V", "VR", "Z", "a", "a#", "aI", "aI2",
    "aI3", "aI@", "aU", "aa", "b", "d", "dZ", "e@", "eI", "f", "g", "h", "i", "i:", "i@", "i@3",
    "j", "k", "l", "m", "n", "n-", "o@", "oU", "p", "r", "r-", "s", "t", "t#", "t2", "tS", "t[",
    "u:", "v", "w", "w#", "z",
)
"""Label id → phone name; id 0 is silence."""

_IDS = {name: i for i, name in enumerate(ESPEAK_PHONES)}


def phone_id(mnemonic: str) -> int:
    """The class of an eSpeak phoneme mnemonic: 0 for a pause, −1 if not in the vocabulary."""
    if mnemonic.startswith("_"):
        return 0
    return _IDS.get(mnemonic, -1)


def frame_labels(starts: np.ndarray, mnemonics: tuple[str, ...], synth_rate: int, n_frames: int,
                 sample_rate: int = 16_000, hop: int = 160) -> np.ndarray:
    """Phone label of each ``hop``-sample frame at ``sample_rate`` → int16 (n_frames,).

    starts: first sample of each phoneme at ``synth_rate`` (non-decreasing). A frame gets
    the phoneme sounding at its centre; frames before the first phoneme are silence
    (espeak-ng opens every message with a short pause that has no event).
    """
    ids = np.array([phone_id(m) for m in mnemonics] or [0], dtype=np.int16)
    centres = (np.arange(n_frames) * hop + hop / 2) * (synth_rate / sample_rate)
    which = np.searchsorted(np.asarray(starts, dtype=np.float64), centres, side="right") - 1
    if len(mnemonics) == 0:
        return np.zeros(n_frames, dtype=np.int16)
    return np.where(which < 0, 0, ids[np.maximum(which, 0)]).astype(np.int16)
