"""The speakers of the generated corpus: espeak-ng accents combined with voice variants.

Speaker ``k`` is accent ``k mod 8`` with variant ``k mod 13``; 8 and 13 share no factor,
so the first 104 speakers are 104 distinct pairs, and any first few of them mix accents
and female/male variants (variants alternate f/m).
"""
from __future__ import annotations

ACCENTS: tuple[str, ...] = (
    "en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
"""espeak-ng English voices (``espeak-ng --voices=en``); ``en`` is British English."""

VARIANTS: tuple[str, ...] = (
    "f1", "m1", "f2", "m2", "f3", "m3", "f4", "m4", "f5", "m5", "m6", "m7", "m8",
)
"""espeak-ng voice variants (``espeak-ng --voices=variant``) appended as ``+variant``."""

MAX_SPEAKERS = len(ACCENTS) * len(VARIANTS)


def voice_name(k: int) -> str:
    """The espeak-ng voice of speaker ``k`` (0 ≤ k < MAX_SPEAKERS), e.g. ``"en-us+f1"``."""
    if not 0 <= k < MAX_SPEAKERS:
        raise ValueError(f"speaker {k} out of range: the corpus has {MAX_SPEAKERS} voices "
                         f"({len(ACCENTS)} accents × {len(VARIANTS)} variants)")
    return f"{ACCENTS[k % len(ACCENTS)]}+{VARIANTS[k % len(VARIANTS)]}"
