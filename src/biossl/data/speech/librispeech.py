"""LibriSpeech ``train-clean-100`` with the CPC/GIM phone alignments and splits.

Expected in the dataset directory (``data.root``, ``$BIOSSL_DATA/librispeech`` or the user
cache, see :mod:`biossl.data.locate`):

- ``LibriSpeech/train-clean-100/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` (16 kHz mono
  FLAC, the official archive's layout; ``train-clean-100/…`` directly also works);
- ``train_split.txt``, ``test_split.txt``: one utterance id per line;
- ``converted_aligned_phones.txt``: ``<utt_id> <phone id> <phone id> …``, one id in 0..40
  per 10 ms frame.

The three text files may also sit in ``LibriSpeech_50h/`` (GIM's layout). Speaker labels
index the sorted speaker ids of both split files together (251 speakers in the official
files), so train and test share them.

Label length: CPC's alignments frame the audio with a 25 ms window every 10 ms, which
yields 1–2 frames fewer than ``samples // 160``; GIM trims its encoder output to the label
length. A label line may therefore be up to :data:`MAX_LABEL_SHORTFALL` frames shorter than
the audio's ``samples // 160`` frames; a longer line, or one shorter by more, does not
belong to that audio and is refused.

Decoded audio is cached as int16 ``.npy`` (:mod:`.store`) in
``<user cache>/librispeech/decoded/<split>-<hash of the directory>``, rebuilt when a FLAC
or text file's size or modification time changed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biossl.data import locate
from biossl.data.base import DatasetError
from biossl.data.speech import store
from biossl.data.speech.audioset import HOP, SAMPLE_RATE, AudioSet
from biossl.data.speech.spec import AudioSpec

NAME = "librispeech"
NUM_PHONES = 41
MAX_LABEL_SHORTFALL = 3
"""Most frames a phone line may be shorter than the audio's ``samples // 160`` frames: CPC's
25 ms framing drops 1–2, and 3 frames (480 samples) also covers GIM's 465-sample
receptive field."""
SPLIT_FILES = {"train": "train_split.txt", "test": "test_split.txt"}
PHONES_FILE = "converted_aligned_phones.txt"
AUDIO_DIRS = ("LibriSpeech/train-clean-100", "train-clean-100")
TEXT_DIRS = ("", "LibriSpeech_50h/")
SOURCE = locate.Source(name=NAME, homepage="https://www.openslr.org/12 (audio); the CPC phone "
                       "alignments and splits: https://github.com/loeweX/Greedy_InfoMax")


def _members(split: str) -> list[tuple[str, ...]]:
    return [tuple(d + f for d in TEXT_DIRS) for f in (SPLIT_FILES[split], PHONES_FILE)]


def find_files(split: str, root: Path | None) -> tuple[Path, Path, Path, Path]:
    """(audio dir, this split's file, the other split's file, phone file), DatasetError if absent."""
    other = "test" if split == "train" else "train"
    members = _members(split) + _members(other)[:1]
    dirs = locate.search_dirs(NAME, root)
    for d, _ in dirs:
        found = locate.find_members(d, members)
        audio = next((d / a for a in AUDIO_DIRS if (d / a).is_dir()), None)
        if found is not None and audio is not None:
            return audio, found[0], found[2], found[1]
    members = members + [tuple(a + "/SPEAKER/CHAPTER/*.flac" for a in AUDIO_DIRS)]
    raise DatasetError(locate.missing_message(
        SOURCE, members, dirs, "LibriSpeech cannot be downloaded by biossl; place the files yourself."))


def read_split(path: Path) -> list[str]:
    """Utterance ids of a split file (blank lines skipped); DatasetError for a malformed id."""
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for line_no, utt in enumerate(ids, 1):
        if len(utt.split("-")) != 3 or not all(p.isdigit() for p in utt.split("-")):
            raise DatasetError(f"{path}: entry {line_no} {utt!r} is not an utterance id "
                               f"SPEAKER-CHAPTER-UTT; the file is not a CPC/GIM split file")
    return ids


def read_phones(path: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Phone lines of the ``wanted`` utterances → {utt: int16 labels}; DatasetError naming the
    line for a non-integer or out-of-range id."""
    out: dict[str, np.ndarray] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            utt, _, rest = line.partition(" ")
            if utt not in wanted:
                continue
            try:
                ids = np.array(rest.split(), dtype=np.int64)
            except ValueError as e:
                raise DatasetError(f"{path}:{line_no}: phone ids of {utt} are not integers ({e})") from e
            if len(ids) and (ids.min() < 0 or ids.max() >= NUM_PHONES):
                raise DatasetError(f"{path}:{line_no}: phone id outside 0..{NUM_PHONES - 1} for {utt}; "
                                   f"the file is corrupt or not CPC's converted_aligned_phones.txt")
            out[utt] = ids.astype(np.int16)
    return out


def flac_path(audio_dir: Path, utt: str) -> Path:
    speaker, chapter, _ = utt.split("-")
    return audio_dir / speaker / chapter / f"{utt}.flac"


def _flac_info(path: Path, split_file: Path) -> int:
    """Samples of a FLAC file, checking it exists, opens, is mono and 16 kHz."""
    import soundfile as sf

    if not path.is_file():
        raise DatasetError(f"{path}: audio file missing (its utterance is listed in {split_file}). "
                           f"Restore it from the train-clean-100 archive, or remove the utterance "
                           f"from the split file.")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for unreadable files
        raise DatasetError(f"{path}: not a readable FLAC file ({e}); it is corrupt or truncated. "
                           f"Restore it from the train-clean-100 archive.") from e
    if info.samplerate != SAMPLE_RATE:
        raise DatasetError(f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz "
                           f"(LibriSpeech is 16 kHz); the file was converted or is not LibriSpeech.")
    if info.channels != 1:
        raise DatasetError(f"{path}: {info.channels} channels, expected mono LibriSpeech audio.")
    return int(info.frames)


def _decode(path: Path, expected: int) -> np.ndarray:
    import soundfile as sf

    try:
        data, _ = sf.read(str(path), dtype="int16", always_2d=False)
    except Exception as e:
        raise DatasetError(f"{path}: decoding failed ({e}); the FLAC file is corrupt or truncated. "
                           f"Restore it from the train-clean-100 archive.") from e
    if data.shape != (expected,):
        raise DatasetError(f"{path}: decoded {data.shape[0]} samples but its header says {expected}; "
                           f"the FLAC file is corrupt or truncated. Restore it from the archive.")
    return data


def _stamp(paths: list[Path]) -> list[list[int]]:
    return [[st.st_size, st.st_mtime_ns] for st in map(Path.stat, paths)]


def load_split(split: str, root: Path | None = None, progress: bool | None = None) -> AudioSet:
    """Read ``split`` of LibriSpeech train-clean-100 → AudioSet, from the decoded cache when current."""
    audio_dir, split_file, other_file, phones_file = find_files(split, root)
    ids = read_split(split_file)
    if not ids:
        raise DatasetError(f"{split_file}: no utterance ids; the split file is empty or truncated.")
    speaker_names = tuple(sorted({u.split("-")[0] for u in ids + read_split(other_file)}, key=int))
    flacs = [flac_path(audio_dir, u) for u in ids]
    for path in flacs:
        if not path.is_file():
            _flac_info(path, split_file)  # raises, naming the file
    stamp = {"files": _stamp([split_file, other_file, phones_file] + flacs), "ids": ids}
    key = hashlib.sha256(str(audio_dir.resolve()).encode()).hexdigest()[:12]
    cached = locate.cache_dir(NAME) / "decoded" / f"{split}-{key}"
    stamp_file = cached / "stamp.json"
    if store.is_complete(cached) and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return store.read(cached)
    return _read(split, ids, flacs, split_file, phones_file, speaker_names, audio_dir, cached,
                 stamp, progress)


def _read(split: str, ids: list[str], flacs: list[Path], split_file: Path, phones_file: Path,
          speaker_names: tuple[str, ...], audio_dir: Path, cached: Path, stamp: dict,
          progress: bool | None) -> AudioSet:
    from tqdm.auto import tqdm

    phones = read_phones(phones_file, set(ids))
    missing = [u for u in ids if u not in phones]
    if missing:
        raise DatasetError(f"{split_file} names {len(missing)} utterance(s) that have no line in "
                           f"{phones_file}, e.g. {missing[0]}; the split and phone files do not belong "
                           f"together (use the CPC/GIM files from the same release).")
    lengths = np.array([_flac_info(p, split_file) for p in flacs], dtype=np.int64)
    num_labels = np.array([len(phones[u]) for u in ids], dtype=np.int64)
    frames = lengths // HOP
    bad = (num_labels > frames) | (num_labels < frames - MAX_LABEL_SHORTFALL)
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise DatasetError(
            f"{phones_file}: utterance {ids[i]} has {num_labels[i]} phone frames but its audio "
            f"{flacs[i]} has {lengths[i]} samples = {frames[i]} frames of 10 ms (labels may be at most "
            f"{MAX_LABEL_SHORTFALL} frames shorter, never longer); the phone file does not match this "
            f"audio (another release or a modified FLAC).")
    sample_offsets = np.cumsum(lengths) - lengths
    label_offsets = np.cumsum(num_labels) - num_labels
    speaker_index = {s: i for i, s in enumerate(speaker_names)}
    with store.staging(cached) as tmp:
        # Decoded straight into a file-backed array: train-clean-100 is ~11 GB as int16.
        samples = np.lib.format.open_memmap(tmp / store.SAMPLES, mode="w+", dtype=np.int16,
                                            shape=(int(lengths.sum()),))
        for i, path in enumerate(tqdm(flacs, unit="file", desc=f"decoding {NAME}/{split}",
                                      disable=None if progress is None else not progress)):
            samples[sample_offsets[i]:sample_offsets[i] + lengths[i]] = _decode(path, int(lengths[i]))
        samples.flush()
        labels = np.concatenate([phones[u] for u in ids])
        audio = AudioSet(
            samples=torch.from_numpy(np.asarray(samples)), sample_offsets=torch.from_numpy(sample_offsets),
            num_samples=torch.from_numpy(lengths), labels=torch.from_numpy(labels),
            label_offsets=torch.from_numpy(label_offsets), num_labels=torch.from_numpy(num_labels),
            speakers=torch.tensor([speaker_index[u.split("-")[0]] for u in ids], dtype=torch.int64),
            utterance_ids=tuple(ids), phone_names=tuple(str(i) for i in range(NUM_PHONES)),
            speaker_names=speaker_names, name=NAME, split=split, source=str(audio_dir),
            info={"max_label_shortfall": MAX_LABEL_SHORTFALL})
        store.write(audio, tmp, samples_written=True)
        del samples, audio
        (tmp / "stamp.json").write_text(json.dumps(stamp))
    return store.read(cached)


class LibriSpeech(AudioSpec):
    """LibriSpeech train-clean-100 with CPC's 41-class frame alignments; 251 speakers.

    ``load(split, root=None, download=False, progress=None)``; nothing can be downloaded
    (download=True changes nothing).
    """

    name = NAME
    splits = ("train", "test")
    num_phones = NUM_PHONES

    def _load(self, split: str, root: Path | None, download: bool, **sizes: Any) -> AudioSet:
        progress = sizes.pop("progress", None)
        if sizes:
            raise ValueError(f"{self.name}: no size settings, got {sorted(sizes)}")
        return load_split(split, root, progress)
