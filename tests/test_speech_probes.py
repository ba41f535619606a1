"""Speech probes: the frame-level probe per stage (phones per 10 ms), the speaker probe on
time-pooled features, and the MFCC baseline, on synthetic tones whose answer is known and
on the real espeak-speech test split."""
import csv
import json
import math

import pytest
import torch

from biossl.config import EvalConfig, RunConfig, apply_overrides, build_config
from biossl.data.speech import AudioSet, mfcc_frames
from biossl.encoders.convstack import ConvStackConfig, convstack
from biossl.encoders.gim_audio import GimAudioConfig, gim_audio
from biossl.evaluate import (ProbeRow, evaluate_encoder, evaluate_mfcc, format_table, frame_pool,
                             mfcc_stage, select_frames, write_csv)
from biossl.suite_report import csv_record, format_markdown
from biossl.suite_result import CellResult, SuiteRow
from biossl.views.audio import AudioCropConfig, AudioCrops
from biossl.views.batch import ViewBatch

SR, HOP = 16_000, 160
TONES = (300.0, 750.0, 1500.0, 3000.0)
"""Frame class c is a pure tone of TONES[c] Hz."""
LOUDNESS = (0.05, 0.2, 0.8)
"""Speaker s speaks at amplitude LOUDNESS[s]."""


def audio_recipe(samples: int) -> AudioCrops:
    """The audio view recipe; its evaluation input is the whole segment, float (n, 1, T) in [-1, 1)."""
    return AudioCrops(AudioCropConfig(crop=1600), (1, samples))


def tones(n: int, frames: int, seed: int):
    """n segments of ``frames`` 10 ms frames: runs of 4 frames of one tone (class = tone), the
    last 4 frames silent and labelled −1; speaker = loudness. → (int16 (n, 1, T), speakers, frames)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(TONES), (n, frames // 4), generator=g).repeat_interleave(4, dim=1)
    spk = torch.randint(0, len(LOUDNESS), (n,), generator=g)
    t = torch.arange(frames * HOP) / SR
    freq = torch.tensor(TONES)[y].repeat_interleave(HOP, dim=1)
    wave = torch.tensor(LOUDNESS)[spk, None] * torch.sin(2 * math.pi * freq * t)
    wave = wave + 0.005 * torch.randn(wave.shape, generator=g)
    wave[:, -4 * HOP:] = 0
    y[:, -4:] = -1
    return (wave * 32767).round().to(torch.int16).unsqueeze(1), spk, y


def conv_bank(seed: int = 0):
    """A fixed random Conv1d stack (two stages, strides 2 and 4 after pooling)."""
    torch.manual_seed(seed)
    return convstack(ConvStackConfig(channels=[16, 16], pool=[True, True], kernel=15, dims=1), 1)


CFG = EvalConfig(probe_epochs=100, probe_lr=1e-2, knn_k=5, few_labels=0, batch_size=64, max_frames=20_000)


# --------------------------------------------------------------------------- alignment
def test_frame_pool_averages_each_frames_positions():
    f = 10
    ramp = lambda t: torch.arange(t, dtype=torch.float32).view(1, 1, t).expand(2, 3, t)
    # T_s = F: identity; T_s = 4F: the mean of each frame's 4 positions
    assert torch.equal(frame_pool(ramp(f), f), ramp(f).transpose(1, 2))
    assert torch.allclose(frame_pool(ramp(4 * f), f)[0, :, 0], torch.arange(f) * 4 + 1.5)
    # any other length (GIM's second stage has 1279 positions for 160 frames): frame k
    # averages positions [⌊k·T/F⌋, ⌈(k+1)·T/F⌉), so frame k sits at time ≈ (k + ½)·T/F
    out = frame_pool(ramp(1279), 160)
    assert out.shape == (2, 160, 3)
    centres = (torch.arange(160) + 0.5) * 1279 / 160 - 0.5
    assert (out[0, :, 0] - centres).abs().max() <= 0.5
    # fewer positions than frames: each position is repeated over its frames
    assert torch.equal(frame_pool(ramp(5), f)[0, :, 0], torch.arange(5.0).repeat_interleave(2))
    with pytest.raises(ValueError, match="sequence encoder"):
        frame_pool(torch.zeros(2, 3, 4, 4), f)


def test_select_frames_drops_unknown_caps_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 5, (30, 20), generator=g)
    every = select_frames(labels, None, 0)
    assert torch.equal(every, (labels.reshape(-1) >= 0).nonzero().squeeze(1))
    some = select_frames(labels, 100, 3)
    assert some.numel() == 100 and bool((labels.reshape(-1)[some] >= 0).all())
    assert bool((some[1:] > some[:-1]).all())                     # sorted, no repeats
    assert torch.equal(some, select_frames(labels, 100, 3))
    assert not torch.equal(some, select_frames(labels, 100, 4))


def test_mfcc_rows_match_the_corpus_mfcc_frames():
    # one utterance of 25 frames: the segment MFCCs equal biossl.data.speech's per-utterance ones
    g = torch.Generator().manual_seed(1)
    wave = (torch.randn(25 * HOP, generator=g) * 3000).to(torch.int16)
    audio = AudioSet(wave, torch.tensor([0]), torch.tensor([wave.numel()]), torch.zeros(25, dtype=torch.int16),
                     torch.tensor([0]), torch.tensor([25]), torch.tensor([0]), ("u",), ("a",), ("s",), "t", "train")
    ours = mfcc_stage(wave.view(1, 1, -1))
    assert ours.shape == (1, 13, 25)
    assert torch.allclose(ours[0].T, mfcc_frames(audio, 0), atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple of 160"):
        mfcc_stage(wave[:1000].view(1, 1, -1))


# --------------------------------------------------------------------------- known answers
def test_tone_frames_are_read_out_by_mfcc_and_by_a_conv_bank():
    xtr, str_, ftr = tones(120, 40, 0)
    xte, ste, fte = tones(40, 40, 1)
    frames = dict(train_frames=ftr, test_frames=fte, frame_classes=len(TONES), frame_name="tone")
    mfcc = evaluate_mfcc("mfcc", xtr, str_, xte, ste, CFG, len(LOUDNESS), progress=False, **frames)
    enc = evaluate_encoder(conv_bank(), "random-init", xtr, str_, xte, ste, audio_recipe(xtr.shape[-1]), CFG,
                           len(LOUDNESS), progress=False, **frames)
    assert [(r.stage, r.dim) for r in mfcc] == [(1, 13)] and [(r.stage, r.dim) for r in enc] == [(1, 16), (2, 16)]
    assert mfcc[0].frames > 95                                   # the tone is in every frame's spectrum
    assert max(r.frames for r in enc) > 90
    assert mfcc[0].probe > 90                                    # loudness: the mean of c0
    # 36 labelled frames per segment (the 4 silent ones are −1 and dropped)
    assert "tone frames" in mfcc[0].protocol and "4320 train / 1440 test labelled frames" in mfcc[0].protocol
    again = evaluate_mfcc("mfcc", xtr, str_, xte, ste, CFG, len(LOUDNESS), progress=False, **frames)
    assert [(r.probe, r.knn, r.frames) for r in again] == [(r.probe, r.knn, r.frames) for r in mfcc]  # seeded

    # labels two frames late: half of every 4-frame run is mislabelled, so alignment matters
    late = dict(frames, train_frames=torch.roll(ftr, 2, 1), test_frames=torch.roll(fte, 2, 1))
    assert evaluate_mfcc("mfcc", xtr, str_, xte, ste, CFG, len(LOUDNESS), progress=False, **late)[0].frames < 80

    # frame labels unrelated to the audio: chance level (1/4)
    g = torch.Generator().manual_seed(5)
    noise = dict(frames, train_frames=torch.where(ftr >= 0, torch.randint(0, 4, ftr.shape, generator=g), -1),
                 test_frames=torch.where(fte >= 0, torch.randint(0, 4, fte.shape, generator=g), -1))
    chance = evaluate_mfcc("mfcc", xtr, str_, xte, ste, CFG, len(LOUDNESS), progress=False, **noise)
    assert chance[0].frames < 33


def test_frame_path_keeps_the_pooled_probes_of_the_plain_path():
    # with frame labels the speaker probes read the same time-pooled features as without
    xtr, str_, ftr = tones(60, 20, 2)
    xte, ste, fte = tones(30, 20, 3)
    cfg = EvalConfig(probe_epochs=5, knn_k=5, few_labels=10, batch_size=32, max_frames=500)
    recipe = audio_recipe(xtr.shape[-1])
    plain = evaluate_encoder(conv_bank(1), "e", xtr, str_, xte, ste, recipe, cfg, 3, progress=False)
    framed = evaluate_encoder(conv_bank(1), "e", xtr, str_, xte, ste, recipe, cfg, 3, progress=False,
                              train_frames=ftr, test_frames=fte, frame_classes=4)
    for a, b in zip(plain, framed):
        assert (a.probe, a.knn, a.few_label, a.dim) == pytest.approx((b.probe, b.knn, b.few_label, b.dim))
        assert math.isnan(a.frames) and 0 <= b.frames <= 100
        assert "500 train / 480 test labelled frames" in b.protocol
    # a recipe whose evaluation input is not one sequence per sample cannot be frame-probed
    class Grid(AudioCrops):
        def eval_batch(self, x):
            return ViewBatch(x.float().repeat(4, 1, 1), x.shape[0], "grid", (2, 2))
    with pytest.raises(ValueError, match="'grid'"):
        evaluate_encoder(conv_bank(1), "e", xtr, str_, xte, ste, Grid(AudioCropConfig(crop=1600), (1, 3200)),
                         cfg, 3, progress=False, train_frames=ftr, test_frames=fte, frame_classes=4)


# --------------------------------------------------------------------------- tables
def rows_with_frames():
    return [ProbeRow("mfcc", 1, 13, 54.0, 70.0, float("nan"), "p", 100, 46.0),
            ProbeRow("random-init", 1, 16, 11.0, 35.0, float("nan"), "p", 100, 26.5),
            ProbeRow("random-init", 2, 32, 22.0, 46.0, float("nan"), "p", 100, 35.25)]


def test_tables_show_the_frame_column_only_with_frames(tmp_path):
    rows = rows_with_frames()
    md = format_table(rows, "phone")
    assert md.splitlines()[0].endswith("| 100/class | phone probe |")
    assert "| random-init | 2 | 32 | 22.00 | 46.00 | — | 35.25 |" in md
    with write_csv(rows, tmp_path / "p.csv").open() as fh:
        read = list(csv.DictReader(fh))
    assert float(read[2]["frames"]) == 35.25
    plain = [ProbeRow("a", 1, 4, 50.0, 40.0, 30.0, "p", 100)]
    assert "probe |" not in format_table(plain, "phone").splitlines()[0].split("kNN")[1]
    with write_csv(plain, tmp_path / "q.csv").open() as fh:
        assert "frames" not in fh.readline()


def test_suite_report_has_phone_columns_and_result_json_keeps_frames():
    rows = rows_with_frames()
    mfcc = CellResult("mfcc", 0, "none", "—", "mfcc", "—", rows[:1])
    rand = CellResult("random-init (gim-audio, audio)", 0, "none", "—", "gim-audio", "audio", rows[1:])
    back = CellResult.from_json(json.loads(json.dumps(rand.to_json())))
    assert [r.frames for r in back.rows] == [26.5, 35.25]
    plain = CellResult("x", 0, "none", "—", "c", "v", [ProbeRow("x", 1, 4, 50.0, 40.0, 30.0, "p", 100)])
    assert "frames" not in plain.to_json()
    srows = [SuiteRow("random-init (gim-audio, audio)", [back]), SuiteRow("mfcc", [mfcc])]
    from biossl.compare import Cell, Suite
    md = format_markdown(Suite("speech", [Cell("c", "x")]), srows, ["p"], "phone")
    head = next(line for line in md.splitlines() if line.startswith("| cell"))
    assert "| probe s2 | phone s1 | phone s2 | Δ top vs random |" in head
    assert "| 35.2 |" in md and "The mfcc row: 13 MFCCs per 10 ms" in md
    rec = csv_record(srows[0])
    assert rec["frames_s2"] == (35.25, 0.0) and "frames_s1" not in csv_record(SuiteRow("x", [plain]))


# --------------------------------------------------------------------------- real corpus
@pytest.fixture(scope="module")
def espeak_test_split():
    from biossl.data import load_dataset
    from biossl.data.speech import EspeakMissing
    try:
        return load_dataset("espeak-speech", "test")
    except EspeakMissing as e:
        pytest.skip(f"espeak-speech is not cached and cannot be made: {e}")


def test_espeak_speech_phones_and_speakers(espeak_test_split):
    data = espeak_test_split
    assert data.images.shape[1:] == (1, 25_600) and data.frame_labels.shape[1] == 160
    # the test split only (it is small): probe-train on the even segments, score on the odd
    # ones (the split is ordered by speaker, so both halves hold every speaker)
    tr, te = slice(0, None, 2), slice(1, None, 2)
    x, y, f = data.images, data.labels, data.frame_labels
    cfg = EvalConfig(probe_epochs=10, knn_k=5, few_labels=0, batch_size=50, max_frames=20_000)
    kw = dict(train_frames=f[tr], test_frames=f[te], frame_classes=data.frame_classes,
              frame_name="phone", progress=False)
    mfcc = evaluate_mfcc("mfcc", x[tr], y[tr], x[te], y[te], cfg, data.num_classes, **kw)
    torch.manual_seed(0)
    enc = gim_audio(GimAudioConfig(channels=8), 1)      # GIM's strides: stage 5 has one step per frame
    rows = evaluate_encoder(enc, "random-init", x[tr], y[tr], x[te], y[te], audio_recipe(x.shape[-1]), cfg,
                            data.num_classes, **kw)
    test_phones = f[te][f[te] >= 0]
    majority = 100 * torch.bincount(test_phones).max().item() / test_phones.numel()
    assert mfcc[0].frames > majority + 10
    assert [(r.stage, r.dim) for r in rows] == [(s, 8) for s in range(1, 6)]
    for r in mfcc + rows:
        assert 0 <= r.probe <= 100 and 0 <= r.knn <= 100 and 0 <= r.frames <= 100
        assert "20000 train" in r.protocol and "160-frame label grid" in r.protocol


def test_suite_mfcc_cell_probes_the_speech_dataset(tmp_path, espeak_test_split):
    # compare's MFCC row: no encoder, no checkpoint; `biossl eval`'s table gets a phone column
    from biossl.compare import run_cell
    cfg = build_config(apply_overrides(RunConfig().to_dict(), [
        "data.name=espeak-speech", "name=mfcc", "eval.max_train=200", "eval.max_test=60",
        "eval.max_frames=5000", "eval.probe_epochs=3", "eval.batch_size=100"]))
    res = run_cell(cfg, tmp_path / "mfcc", trained=False, baseline="mfcc")
    assert (res.label, res.encoder, res.views, res.trained) == ("mfcc", "mfcc", "—", False)
    assert [(r.encoder_label, r.stage, r.dim) for r in res.rows] == [("mfcc", 1, 13)]
    assert 0 <= res.rows[0].frames <= 100 and "5000 train" in res.protocol
    stored = json.loads((tmp_path / "mfcc" / "result.json").read_text())
    assert stored["frames"] == [res.rows[0].frames]
    md = (tmp_path / "mfcc" / "probe.md").read_text()
    assert "| phone probe |" in md and "| mfcc | 1 | 13 |" in md
    # the row depends on the data and the probe, not on the encoder: a changed encoder reuses it
    other = build_config(apply_overrides(cfg.to_dict(), ["encoder.channels=[4,4,4]"]))
    assert run_cell(other, tmp_path / "mfcc", trained=False, baseline="mfcc").rows[0].frames == res.rows[0].frames


def test_speech_suite_has_one_mfcc_row_and_phone_columns(tmp_path, espeak_test_split):
    from biossl.compare import Cell, Suite, run_suite
    common = ["data.name=espeak-speech", "views.name=audio-crops", "views.crop=3200", "encoder.name=gim-audio",
              "encoder.channels=8", "objective.name=clapp", "schedule.name=simultaneous", "train.epochs=1",
              "train.batch_size=8", "train.max_steps_per_epoch=2", "train.threads=1", "train.device=cpu",
              "eval.max_train=160", "eval.max_test=60", "eval.max_frames=3000", "eval.probe_epochs=2",
              "eval.few_labels=0", "eval.batch_size=40"]
    suite = Suite(name="speech-tiny", seeds=[0], common=common, cells=[Cell("clapp", "fmnist-bp-hinge")])
    rows = run_suite(suite, tmp_path, progress=False)
    assert sorted(r.label for r in rows) == ["clapp", "mfcc", "random-init (gim-audio, audio-crops)"]
    mfcc = next(r for r in rows if r.label == "mfcc")
    assert (mfcc.n_stages, mfcc.encoder, mfcc.trained) == (1, "mfcc", False)
    md = (tmp_path / "results.md").read_text()
    assert "| probe s5 | phone s1 | phone s2 | phone s3 | phone s4 | phone s5 | Δ top vs random |" in md
    assert "| mfcc | none | — |" in md
    head = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert "frames_s5" in head and (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "cells" / "baseline-mfcc-s0" / "result.json").is_file()
