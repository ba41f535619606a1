"""The speech corpus biossl generates itself with espeak-ng (no download needed).

Each speaker is an espeak-ng voice (accent + variant, :mod:`.voices`); each utterance is
a sentence of random words from :mod:`.words`, spoken at a random rate, pitch and pitch
range, resampled from espeak-ng's 22 050 Hz to 16 kHz, padded with silence to whole 10 ms
frames and labelled per frame from libespeak-ng's phoneme events (:mod:`.phones`).
Utterance ``j`` of speaker ``k`` depends only on (seed, k, j), so a larger corpus
contains the smaller one's utterances. The last ``test_fraction`` of every speaker's
utterances form the test split, so every speaker is in both splits.

Generated once per configuration into ``<root or user cache>/espeak-speech/<key>/`` with
a ``train/`` and ``test/`` AudioSet (see :mod:`.store`), the whole directory renamed into
place only when complete. The key hashes the configuration and everything else that
shapes the audio (word list, voices, phone list, generator version), not the espeak-ng
version, so a cached corpus also loads where espeak-ng is not installed; the version it
was made with is in ``AudioSet.info``. The same seed gives the same int16 bytes with the
same espeak-ng version.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl.data import locate
from biossl.data.speech import store
from biossl.data.speech.audioset import HOP, SAMPLE_RATE, AudioSet
from biossl.data.speech.espeak import Request, get_espeak
from biossl.data.speech.phones import ESPEAK_PHONES, frame_labels
from biossl.data.speech.spec import AudioSpec
from biossl.data.speech.voices import ACCENTS, MAX_SPEAKERS, VARIANTS, voice_name
from biossl.data.speech.words import WORDS

NAME = "espeak-speech"
GENERATOR_VERSION = 1
"""Bump when the generation changes what a configuration produces (part of the cache key)."""


@dataclass(frozen=True)
class EspeakCorpusConfig:
    """How big the generated corpus is and how its utterances vary."""

    speakers: int = 20
    """Number of voices (speakers), 2..104; speaker k is :func:`voices.voice_name` (k)."""
    utterances_per_speaker: int = 40
    """Sentences each speaker says, train and test together (at least 2)."""
    min_words: int = 6
    """Fewest words in a sentence."""
    max_words: int = 10
    """Most words in a sentence (6–10 words at the default rates last about 2–3.5 s)."""
    test_fraction: float = 0.2
    """Share of each speaker's utterances in the test split (at least one, at most all but one)."""
    min_rate: int = 140
    """Slowest speaking rate, words per minute (espeak-ng's default is 175)."""
    max_rate: int = 220
    """Fastest speaking rate, words per minute."""
    min_pitch: int = 30
    """Lowest base pitch on espeak-ng's 0..100 scale (50 = the voice's normal)."""
    max_pitch: int = 70
    """Highest base pitch, 0..100."""
    seed: int = 0
    """Seeds every choice (words, rate, pitch, pitch range)."""

    def __post_init__(self) -> None:
        if not 2 <= self.speakers <= MAX_SPEAKERS:
            raise ValueError(f"speakers must be in 2..{MAX_SPEAKERS} ({len(ACCENTS)} accents × "
                             f"{len(VARIANTS)} variants), got {self.speakers}")
        if self.utterances_per_speaker < 2:
            raise ValueError(f"utterances_per_speaker must be ≥ 2 (one train, one test), "
                             f"got {self.utterances_per_speaker}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 ≤ min_words ≤ max_words, got {self.min_words}, {self.max_words}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 80 <= self.min_rate <= self.max_rate <= 450:
            raise ValueError(f"need 80 ≤ min_rate ≤ max_rate ≤ 450 words per minute, "
                             f"got {self.min_rate}, {self.max_rate}")
        if not 0 <= self.min_pitch <= self.max_pitch <= 100:
            raise ValueError(f"need 0 ≤ min_pitch ≤ max_pitch ≤ 100, got {self.min_pitch}, {self.max_pitch}")

    @property
    def test_per_speaker(self) -> int:
        n = self.utterances_per_speaker
        return min(n - 1, max(1, round(self.test_fraction * n)))

    def key(self) -> str:
        """Cache directory name: a hash of this config and of what else shapes the audio."""
        facts = {"config": asdict(self), "generator": GENERATOR_VERSION, "words": WORDS,
                 "accents": ACCENTS, "variants": VARIANTS, "phones": ESPEAK_PHONES,
                 "resampler": "scipy.signal.resample_poly up 320 down 441"}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def utterance_request(config: EspeakCorpusConfig, speaker: int, index: int) -> Request:
    """What speaker ``speaker`` says in its utterance ``index`` (depends on seed, speaker, index only)."""
    rng = np.random.default_rng([config.seed, speaker, index])
    n_words = int(rng.integers(config.min_words, config.max_words + 1))
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), size=n_words)]
    return Request(text=" ".join(words) + ".", voice=voice_name(speaker),
                   rate=int(rng.integers(config.min_rate, config.max_rate + 1)),
                   pitch=int(rng.integers(config.min_pitch, config.max_pitch + 1)),
                   pitch_range=int(rng.integers(30, 71)))


def speak(request: Request, library: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Say ``request`` → (int16 samples at 16 kHz, a whole number of frames long; int16 frame labels)."""
    from scipy.signal import resample_poly  # only generation needs scipy

    out = get_espeak(library).synthesize(request)
    # 22 050 → 16 000 Hz is ×320/441; resample_poly's filter is zero-phase, so a phoneme's
    # sample position maps by the same ratio (done in phones.frame_labels).
    up, down = SAMPLE_RATE, out.sample_rate
    wave = resample_poly(out.samples.astype(np.float64), up, down) if up != down else out.samples
    n_frames = -(-len(wave) // HOP)
    samples = np.zeros(n_frames * HOP, dtype=np.int16)  # pad with silence to whole frames
    samples[:len(wave)] = np.clip(np.rint(wave), -32768, 32767).astype(np.int16)
    labels = frame_labels(out.phoneme_starts, out.phonemes, out.sample_rate, n_frames,
                          SAMPLE_RATE, HOP)
    return samples, labels


def generate(config: EspeakCorpusConfig, directory: Path, library: str | None = None,
             progress: bool | None = None) -> dict[str, AudioSet]:
    """Generate the corpus into ``directory`` (created atomically) → {"train", "test"} AudioSets.

    progress: show a tqdm bar (None: only when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    espeak = get_espeak(library)  # fails here, before any work, when libespeak-ng is missing
    n, n_test = config.utterances_per_speaker, config.test_per_speaker
    parts: dict[str, dict[str, list]] = {s: {"samples": [], "labels": [], "speakers": [], "ids": []}
                                         for s in ("train", "test")}
    started = time.perf_counter()
    with tqdm(total=config.speakers * n, unit="utt", desc=f"generating {NAME}", disable=(
            None if progress is None else not progress)) as bar:
        for k in range(config.speakers):
            for j in range(n):
                samples, labels = speak(utterance_request(config, k, j), library)
                part = parts["test" if j >= n - n_test else "train"]
                part["samples"].append(samples)
                part["labels"].append(labels)
                part["speakers"].append(k)
                part["ids"].append(f"{k:03d}-{j:05d}")
                bar.update(1)
    info = {"config": asdict(config), "espeak_ng_version": espeak.version,
            "espeak_ng_library": espeak.library, "generator_version": GENERATOR_VERSION,
            "generation_seconds": round(time.perf_counter() - started, 2)}
    speaker_names = tuple(voice_name(k) for k in range(config.speakers))
    directory = Path(directory)
    with store.staging(directory, replace=False) as tmp:
        (tmp / "corpus.json").write_text(json.dumps(info, indent=1))
        for split, part in parts.items():
            audio = _assemble(part, speaker_names, split, str(directory), info)
            (tmp / split).mkdir()
            store.write(audio, tmp / split)
    return {split: store.read(directory / split) for split in parts}


def _assemble(part: dict[str, list], speaker_names: tuple[str, ...], split: str, source: str,
              info: dict) -> AudioSet:
    num_samples = torch.tensor([len(s) for s in part["samples"]], dtype=torch.int64)
    num_labels = torch.tensor([len(lab) for lab in part["labels"]], dtype=torch.int64)
    return AudioSet(
        samples=torch.from_numpy(np.concatenate(part["samples"])),
        sample_offsets=torch.cumsum(num_samples, 0) - num_samples, num_samples=num_samples,
        labels=torch.from_numpy(np.concatenate(part["labels"])),
        label_offsets=torch.cumsum(num_labels, 0) - num_labels, num_labels=num_labels,
        speakers=torch.tensor(part["speakers"], dtype=torch.int64), utterance_ids=tuple(part["ids"]),
        phone_names=ESPEAK_PHONES, speaker_names=speaker_names, name=NAME, split=split,
        source=source, info=info)


def corpus_dir(config: EspeakCorpusConfig, root: Path | None = None) -> Path:
    """Where the corpus for ``config`` is: an existing complete copy in the search
    directories (biossl.data.locate: an explicit ``root`` or ``$BIOSSL_DATA`` is the whole
    search, never replaced by the user cache), else where it will be generated — under the
    explicit location, or in the user cache."""
    key = config.key()
    dirs = locate.search_dirs(NAME, root)
    for d, _ in dirs:
        if all(store.is_complete(d / key / split) for split in EspeakSpeech.splits):
            return d / key
    if locate.explicit_location(root) is not None:
        return dirs[0][0] / key
    return locate.cache_dir(NAME) / key


class EspeakSpeech(AudioSpec):
    """Sentences spoken by espeak-ng voices: 16 kHz, 10 ms phone labels (72 classes), speaker = voice.

    ``load(split, root=None, download=False, library=None, progress=None, **sizes)``:
    sizes are :class:`EspeakCorpusConfig` fields (speakers, utterances_per_speaker, …);
    generated on first use (download is ignored: nothing is fetched); library names the
    libespeak-ng to load (default ``$BIOSSL_ESPEAK_LIBRARY`` or ``libespeak-ng.so.1``).
    """

    name = NAME
    splits = ("train", "test")
    num_phones = len(ESPEAK_PHONES)

    def _load(self, split: str, root: Path | None, download: bool, **sizes: Any) -> AudioSet:
        library = sizes.pop("library", None)
        progress = sizes.pop("progress", None)
        unknown = set(sizes) - set(EspeakCorpusConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{self.name}: unknown size setting(s) {sorted(unknown)}; the settings "
                             f"are {', '.join(EspeakCorpusConfig.__dataclass_fields__)}, library, progress")
        config = EspeakCorpusConfig(**sizes)
        directory = corpus_dir(config, root)
        if not store.is_complete(directory / split):
            return generate(config, directory, library, progress)[split]
        return store.read(directory / split)
