"""Speech data: the AudioSet container, the LibriSpeech reader (on tiny FLAC, split and
phone files written here in the official formats), the espeak-ng corpus (generated for
real at a tiny size) and the MFCC features' alignment with the 10 ms labels."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from biossl.data.base import DatasetError
from biossl.data.speech import (HOP, AudioSet, EspeakCorpusConfig, EspeakMissing, EspeakSpeech,
                                LibriSpeech, mfcc_frames, mfcc_table, store)
from biossl.data.speech.corpus import generate
from biossl.data.speech.espeak import LIBRARY_ENV, Request, get_espeak
from biossl.data.speech.librispeech import MAX_LABEL_SHORTFALL
from biossl.data.speech.phones import ESPEAK_PHONES
from biossl.data.speech.voices import voice_name

pytestmark = pytest.mark.usefixtures("isolated_data")  # tests/conftest.py: no real cache/env


def make_audioset(lengths, num_labels=None, seed=0) -> AudioSet:
    """Random int16 utterances of ``lengths`` samples with random labels (0..4)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    num_labels = lengths // HOP if num_labels is None else torch.tensor(num_labels, dtype=torch.int64)
    return AudioSet(
        samples=torch.randint(-3000, 3000, (int(lengths.sum()),), generator=g, dtype=torch.int16),
        sample_offsets=torch.cumsum(lengths, 0) - lengths, num_samples=lengths,
        labels=torch.randint(0, 5, (int(num_labels.sum()),), generator=g).to(torch.int16),
        label_offsets=torch.cumsum(num_labels, 0) - num_labels, num_labels=num_labels,
        speakers=torch.arange(len(lengths)) % 2, utterance_ids=tuple(f"u{i}" for i in range(len(lengths))),
        phone_names=tuple("abcde"), speaker_names=("s0", "s1"), name="toy", split="train")


# --------------------------------------------------------------------------- AudioSet
def test_crops_and_frame_labels_gather_the_right_windows():
    audio = make_audioset([5000, 3300, 8000], num_labels=[31, 20, 50])
    utt = torch.tensor([0, 2, 2, 1])
    start = torch.tensor([3, 0, 29, 0])
    crops = audio.crops(utt, start, 1600)
    assert crops.shape == (4, 1, 1600) and crops.dtype == torch.float32
    for i in range(4):
        whole = audio.utterance(int(utt[i]))
        assert torch.equal(crops[i, 0], whole[HOP * int(start[i]):HOP * int(start[i]) + 1600])
    labels = audio.frame_labels(utt, start, 10)
    assert labels.shape == (4, 10) and labels.dtype == torch.int64
    assert torch.equal(labels[0], audio.utterance_labels(0)[3:13])
    # utterance 2 has 50 labelled frames: frames 29..38 are all labelled, none beyond
    assert torch.equal(labels[2], audio.utterance_labels(2)[29:39])
    # utterance 1 has 20 labels, asked for frames 0..9 → labelled; past the end → −1
    assert torch.equal(audio.frame_labels(torch.tensor([1]), torch.tensor([15]), 10)[0, 5:],
                       torch.full((5,), -1))
    assert audio.max_start_frame(3300).tolist() == [(5000 - 3300) // HOP, 0, (8000 - 3300) // HOP]
    assert audio.max_start_frame(5001)[0] == -1


def test_a_crop_past_the_utterance_end_is_refused():
    audio = make_audioset([3200, 3200])
    with pytest.raises(ValueError, match="runs outside utterance u1"):
        audio.crops(torch.tensor([0, 1]), torch.tensor([0, 1]), 3200)


@pytest.mark.parametrize("change, message", [
    (dict(samples=torch.zeros(10, dtype=torch.float32)), "samples must be a torch.int16"),
    (dict(labels=torch.zeros(10, dtype=torch.int64)), "labels must be a torch.int16"),
    (dict(speakers=torch.zeros(1, dtype=torch.int64)), r"speakers must be a torch.int64 \(2,\)"),
    (dict(num_samples=torch.tensor([3200, 99999])), "reach outside samples"),
    (dict(num_labels=torch.tensor([21, 20])), "has 21 labelled frames but only 20 audio frames"),
    (dict(speakers=torch.tensor([0, 5])), "speakers must lie in"),
])
def test_audioset_refuses_wrong_dtypes_and_layouts(change, message):
    good = make_audioset([3200, 3200])
    fields = {k: getattr(good, k) for k in good.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        AudioSet(**{**fields, **change})


def test_store_staging_leaves_nothing_when_interrupted(tmp_path):
    final = tmp_path / "corpus"
    with pytest.raises(KeyboardInterrupt):
        with store.staging(final) as tmp:
            (tmp / "half.npy").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- LibriSpeech
def write_librispeech(base: Path, *, rate: int = 16000, shortfall: int = 1) -> dict:
    """A tiny train-clean-100: speakers 19 and 103, train 3 / test 2 utterances."""
    rng = np.random.default_rng(0)
    utts = {"train": ["103-1240-0000", "19-198-0001", "103-1240-0002"],
            "test": ["19-198-0003", "103-1241-0000"]}
    audio, phones = {}, {}
    for i, utt in enumerate(utts["train"] + utts["test"]):
        speaker, chapter, _ = utt.split("-")
        n = 3000 + 700 * i + 37  # not a multiple of 160
        wave = rng.integers(-20000, 20000, size=n).astype(np.int16)
        folder = base / "LibriSpeech" / "train-clean-100" / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{utt}.flac", wave, rate, subtype="PCM_16", format="FLAC")
        audio[utt] = wave
        phones[utt] = rng.integers(0, 41, size=n // HOP - shortfall)
    for split, ids in utts.items():
        (base / f"{split}_split.txt").write_text("\n".join(ids) + "\n")
    (base / "converted_aligned_phones.txt").write_text(
        "".join(f"{u} {' '.join(map(str, p))}\n" for u, p in phones.items()))
    return {"utts": utts, "audio": audio, "phones": phones, "base": base}


def flac(base: Path, utt: str) -> Path:
    speaker, chapter, _ = utt.split("-")
    return base / "LibriSpeech" / "train-clean-100" / speaker / chapter / f"{utt}.flac"


def test_librispeech_reads_audio_labels_and_speakers(tmp_path):
    files = write_librispeech(tmp_path / "data")
    for split in ("train", "test"):
        audio = LibriSpeech().load(split, root=tmp_path / "data")
        assert audio.utterance_ids == tuple(files["utts"][split])
        assert audio.speaker_names == ("19", "103")  # numeric order over both split files
        assert audio.num_phones == 41
        for u, utt in enumerate(audio.utterance_ids):
            assert np.array_equal(audio.samples[int(audio.sample_offsets[u]):][:int(audio.num_samples[u])].numpy(),
                                  files["audio"][utt])
            assert np.array_equal(audio.utterance_labels(u).numpy(), files["phones"][utt])
            assert audio.speaker_names[int(audio.speakers[u])] == utt.split("-")[0]


def test_librispeech_found_through_biossl_data(tmp_path, monkeypatch):
    write_librispeech(tmp_path / "datasets" / "librispeech")
    monkeypatch.setenv("BIOSSL_DATA", str(tmp_path / "datasets"))
    assert len(LibriSpeech().load("test")) == 2


def test_librispeech_second_load_reads_the_decoded_cache(tmp_path):
    files = write_librispeech(tmp_path / "data")
    first = LibriSpeech().load("train", root=tmp_path / "data")
    # Same size and time stamp, different bytes: only the cache can still give the old audio.
    path = flac(tmp_path / "data", "19-198-0001")
    st = path.stat()
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = LibriSpeech().load("train", root=tmp_path / "data")
    assert torch.equal(again.samples, first.samples)
    assert np.array_equal(again.utterance(1).mul(32768).short().numpy(), files["audio"]["19-198-0001"])
    # A changed time stamp invalidates the cache, and the file is now read (and refused).
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match=f"{path}: not a readable FLAC"):
        LibriSpeech().load("train", root=tmp_path / "data")


def test_librispeech_missing_directory_lists_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        LibriSpeech().load("train", root=tmp_path / "empty")
    text = str(e.value)
    for expected in ("train_split.txt", "converted_aligned_phones.txt", "LibriSpeech/train-clean-100",
                     str(tmp_path / "empty"), "data.root"):
        assert expected in text


def test_librispeech_missing_flac_names_the_file(tmp_path):
    write_librispeech(tmp_path / "data")
    path = flac(tmp_path / "data", "103-1240-0002")
    path.unlink()
    with pytest.raises(DatasetError, match=f"{path}: audio file missing .*train_split.txt"):
        LibriSpeech().load("train", root=tmp_path / "data")


def test_librispeech_corrupt_flac_names_the_file(tmp_path):
    write_librispeech(tmp_path / "data")
    path = flac(tmp_path / "data", "19-198-0003")
    path.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(DatasetError, match=f"{path}: not a readable FLAC file"):
        LibriSpeech().load("test", root=tmp_path / "data")


def test_librispeech_truncated_flac_names_the_file(tmp_path):
    write_librispeech(tmp_path / "data")
    path = flac(tmp_path / "data", "19-198-0003")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError, match=f"{path}: .*(corrupt|truncated)"):
        LibriSpeech().load("test", root=tmp_path / "data")


def test_librispeech_wrong_sample_rate_names_the_file(tmp_path):
    write_librispeech(tmp_path / "data", rate=8000)
    with pytest.raises(DatasetError, match=r"103-1240-0000.flac: sample rate 8000 Hz, expected 16000"):
        LibriSpeech().load("train", root=tmp_path / "data")


@pytest.mark.parametrize("shortfall", [-1, MAX_LABEL_SHORTFALL + 1])
def test_librispeech_phone_line_not_matching_the_audio(tmp_path, shortfall):
    files = write_librispeech(tmp_path / "data", shortfall=shortfall)
    utt = files["utts"]["train"][0]
    frames = len(files["audio"][utt]) // HOP
    with pytest.raises(DatasetError, match=f"{utt} has {frames - shortfall} phone frames but its audio "
                                           f".* has {len(files['audio'][utt])} samples = {frames} frames"):
        LibriSpeech().load("train", root=tmp_path / "data")


def test_librispeech_labels_up_to_the_tolerance_are_accepted(tmp_path):
    write_librispeech(tmp_path / "data", shortfall=MAX_LABEL_SHORTFALL)
    audio = LibriSpeech().load("test", root=tmp_path / "data")
    assert torch.equal(audio.num_labels, audio.num_frames - MAX_LABEL_SHORTFALL)
    assert audio.frame_labels(torch.tensor([0]), torch.tensor([0]), int(audio.num_frames[0]))[0, -1] == -1


def test_librispeech_split_naming_a_missing_utterance(tmp_path):
    write_librispeech(tmp_path / "data")
    phones = tmp_path / "data" / "converted_aligned_phones.txt"
    lines = phones.read_text().splitlines(keepends=True)
    phones.write_text("".join(line for line in lines if not line.startswith("19-198-0001 ")))
    with pytest.raises(DatasetError, match="train_split.txt names 1 utterance.* 19-198-0001"):
        LibriSpeech().load("train", root=tmp_path / "data")
    # the other split still loads: the missing line concerns train only
    assert len(LibriSpeech().load("test", root=tmp_path / "data")) == 2


def test_librispeech_phone_id_out_of_range(tmp_path):
    write_librispeech(tmp_path / "data")
    phones = tmp_path / "data" / "converted_aligned_phones.txt"
    phones.write_text(phones.read_text().replace("103-1241-0000 ", "103-1241-0000 41 ", 1))
    with pytest.raises(DatasetError, match=r"converted_aligned_phones.txt:5: phone id outside 0..40"):
        LibriSpeech().load("test", root=tmp_path / "data")


# --------------------------------------------------------------------------- espeak-ng corpus
TINY = dict(speakers=3, utterances_per_speaker=3, min_words=3, max_words=5)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("espeak")
    return root, {s: EspeakSpeech().load(s, root=root, **TINY) for s in ("train", "test")}


def test_espeak_same_request_twice_gives_the_same_bytes():
    espeak = get_espeak()
    request = Request("the quiet zebra jumps.", voice_name(2), rate=190, pitch=40)
    a, b = espeak.synthesize(request), espeak.synthesize(request)
    assert a.samples.tobytes() == b.samples.tobytes() and a.phonemes == b.phonemes
    assert np.array_equal(a.phoneme_starts, b.phoneme_starts)
    assert len(a.phonemes) > 8 and a.sample_rate == 22050


def test_espeak_unknown_voice_is_named():
    with pytest.raises(ValueError, match="espeak-ng has no voice 'en-klingon'"):
        get_espeak().synthesize(Request("hello", "en-klingon"))


def test_espeak_corpus_labels_cover_the_audio(corpus):
    _, sets = corpus
    for audio in sets.values():
        assert torch.all(audio.num_samples % HOP == 0)
        assert torch.equal(audio.num_labels, audio.num_samples // HOP)
        assert audio.labels.shape[0] == int(audio.num_labels.sum())
        assert int(audio.labels.min()) >= 0  # every frame has a known phone
        assert audio.phone_names == ESPEAK_PHONES and audio.info["espeak_ng_version"]


def test_espeak_corpus_labels_follow_the_speech(corpus):
    _, sets = corpus
    audio = sets["train"]
    sequences = []
    for u in range(len(audio)):
        labels = audio.utterance_labels(u)
        assert labels[0] == 0 and labels[-1] == 0  # starts and ends in silence
        changes = int((labels[1:] != labels[:-1]).sum())
        assert changes >= 10, audio.utterance_ids[u]  # a sentence is many phones
        sequences.append(torch.unique_consecutive(labels).tolist())
    assert len({tuple(s) for s in sequences}) == len(sequences)  # utterances differ
    # Labels sit on the right samples: silence frames are quiet, vowel frames loud.
    rms = torch.cat([audio.utterance(u).view(-1, HOP).pow(2).mean(1).sqrt() for u in range(len(audio))])
    vowels = torch.tensor([ESPEAK_PHONES.index(p) for p in ("a", "aI", "eI", "i:", "oU", "E", "I", "V", "@")])
    is_vowel = torch.isin(audio.labels.long(), vowels)
    assert rms[audio.labels == 0].mean() < 0.1 * rms[is_vowel].mean()


def test_espeak_corpus_speakers_and_split(corpus):
    _, sets = corpus
    train, test = sets["train"], sets["test"]
    assert train.speaker_names == test.speaker_names == tuple(voice_name(k) for k in range(3))
    assert len(set(train.speaker_names)) == 3
    assert torch.equal(torch.bincount(train.speakers), torch.tensor([2, 2, 2]))
    assert torch.equal(torch.bincount(test.speakers), torch.tensor([1, 1, 1]))
    assert not set(train.utterance_ids) & set(test.utterance_ids)
    # different voices sound different: mean frame energy profiles are not identical
    assert len({audio_bytes(train, u) for u in range(len(train))}) == len(train)


def audio_bytes(audio: AudioSet, u: int) -> bytes:
    return audio.samples[int(audio.sample_offsets[u]):][:int(audio.num_samples[u])].numpy().tobytes()


def test_espeak_corpus_is_deterministic(corpus, tmp_path):
    _, sets = corpus
    again = generate(EspeakCorpusConfig(**TINY), tmp_path / "again")
    for split in ("train", "test"):
        assert again[split].samples.numpy().tobytes() == sets[split].samples.numpy().tobytes()
        assert again[split].labels.numpy().tobytes() == sets[split].labels.numpy().tobytes()
    other = generate(EspeakCorpusConfig(**{**TINY, "speakers": 2, "seed": 1}), tmp_path / "other")
    assert other["train"].samples.numpy().tobytes() != sets["train"].samples.numpy().tobytes()


def test_espeak_smaller_corpus_has_the_same_utterances(corpus, tmp_path):
    _, sets = corpus
    two = generate(EspeakCorpusConfig(**{**TINY, "speakers": 2}), tmp_path / "two")["train"]
    assert two.utterance_ids == sets["train"].utterance_ids[:len(two)]
    assert all(audio_bytes(two, u) == audio_bytes(sets["train"], u) for u in range(len(two)))


def test_espeak_cached_corpus_loads_without_the_library(corpus, monkeypatch):
    root, sets = corpus
    monkeypatch.setenv(LIBRARY_ENV, "libespeak-ng-not-installed.so.9")
    audio = EspeakSpeech().load("train", root=root, **TINY)
    assert audio.source == sets["train"].source
    assert torch.equal(audio.samples, sets["train"].samples)


def test_espeak_missing_library_names_the_debian_package(tmp_path, monkeypatch):
    with pytest.raises(EspeakMissing, match="apt-get install espeak-ng"):
        EspeakSpeech().load("train", root=tmp_path, library="libespeak-ng-not-installed.so.9", **TINY)
    monkeypatch.setenv(LIBRARY_ENV, "libespeak-ng-not-installed.so.9")
    with pytest.raises(EspeakMissing, match="libespeak-ng-not-installed.so.9"):
        EspeakSpeech().load("test", root=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []  # nothing half-generated


def test_espeak_corpus_refuses_unknown_sizes(tmp_path):
    with pytest.raises(ValueError, match="unknown size setting.*'speaker'"):
        EspeakSpeech().load("train", root=tmp_path, speaker=3)
    with pytest.raises(ValueError, match="speakers must be in 2..104"):
        EspeakCorpusConfig(speakers=500)


# --------------------------------------------------------------------------- MFCC
def test_mfcc_rows_align_with_label_frames():
    audio = make_audioset([160 * 60], num_labels=[58])
    audio.samples.zero_()
    audio.samples[160 * 23:160 * 24] = 20000  # a click filling exactly frame 23
    feats = mfcc_frames(audio, 0)
    assert feats.shape == (58, 13)
    assert int(feats[:, 0].argmax()) == 23  # c0 (log energy) peaks on that frame


def test_mfcc_table_equals_one_librosa_call_per_utterance():
    import librosa

    audio = make_audioset([4000, 2560, 7001], num_labels=[25, 16, 41])
    table = mfcc_table(audio)
    assert table.shape == (audio.labels.shape[0], 13)
    for u in range(len(audio)):
        n = int(audio.num_labels[u])
        padded = np.pad(audio.utterance(u)[:n * HOP].numpy(), (120, 120))
        mel = librosa.feature.melspectrogram(y=padded, sr=16000, n_fft=400, hop_length=160,
                                             win_length=400, center=False, n_mels=40)
        want = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=None), n_mfcc=13).T
        start = int(audio.label_offsets[u])
        assert want.shape == (n, 13)
        torch.testing.assert_close(table[start:start + n], torch.from_numpy(want).float())
