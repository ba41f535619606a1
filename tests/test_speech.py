"""Speech through the generic code path: the gim-audio encoder, audio crops on the 10 ms
grid, the predictive objectives over the time axis ('sequence' batches), and CLAPP's
explicit rule equal to autograd on the encoder's Conv1d stages."""
from __future__ import annotations


import pytest
import torch

from rule_checks import assert_every_schedule_trains, assert_explicit_equals_autograd

from biossl.config import ConfigError, build_config
from biossl.encoders.gim_audio import GimAudioConfig, gim_audio
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.objectives.infonce import InfoNCEConfig, InfoNCEObjective
from biossl.objectives.predictive import patch_vectors, spread_to_output, steps_for, vector_grid
from biossl.views.audio import AudioCropConfig, AudioCrops
from biossl.views.batch import ViewBatch


def small_audio_encoder(channels=6, autoregressor=None, dtype=torch.float32):
    torch.manual_seed(0)
    return gim_audio(GimAudioConfig(channels=channels, autoregressor=autoregressor), 1).to(dtype)


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- encoder ------------------------------------------------------------------------------------
def test_gim_audio_downsamples_160x_one_frame_per_10ms():
    enc = small_audio_encoder()
    assert len(enc) == 5
    shapes = enc.out_shapes((1, 20480))
    assert [s[1] for s in shapes] == [4095, 1023, 512, 257, 128]       # GIM's padding; 20480 / 160 = 128 at the top
    assert all(s[0] == 6 for s in shapes)
    with_gru = small_audio_encoder(autoregressor=7)
    assert len(with_gru) == 6 and with_gru.out_shapes((1, 20480))[-1] == (7, 128)
    with pytest.raises(ConfigError, match="one entry per stage"):
        build_config({"encoder": {"name": "gim-audio", "kernels": [10, 8], "strides": [5]}})


# ---- views -----------------------------------------------------------------------------------------
def test_audio_crops_start_on_the_10ms_grid_and_keep_the_samples():
    recipe = AudioCrops(AudioCropConfig(crop=1600), (1, 3200))
    x = torch.arange(4 * 3200, dtype=torch.int32).remainder(30000).to(torch.int16).view(4, 1, 3200)
    g = torch.Generator().manual_seed(0)
    batch = recipe(x, g)
    assert batch.kind == "sequence" and batch.x.shape == (4, 1, 1600) and batch.n == 4
    for i in range(4):
        first = int(round(float(batch.x[i, 0, 0]) * 32768)) - int(x[i, 0, 0])
        assert first % 160 == 0 and 0 <= first <= 1600                   # on the grid, inside
        torch.testing.assert_close(batch.x[i, 0], x[i, 0, first:first + 1600].float() / 32768)
    starts = {int(round(float(recipe(x, g).x[0, 0, 0]) * 32768)) for _ in range(30)}
    assert len(starts) > 3                                                # crops move
    assert recipe.eval_batch(x).x.shape == (4, 1, 3200)
    with pytest.raises(ValueError, match="int16 waveform segments"):
        recipe(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="multiple of 160"):
        AudioCropConfig(crop=1000).validate()
    with pytest.raises(ValueError, match="waveform segments"):
        AudioCrops(None, (1, 28, 28))


def test_an_image_recipe_on_speech_and_audio_crops_on_images_are_refused_clearly():
    with pytest.raises(ConfigError, match="audio-crops.*needs waveform segments"):
        from biossl.assemble import assemble
        assemble(build_config({"data": {"name": "fashion-mnist"}, "views": "audio-crops",
                               "train": {"device": "cpu"}}))


# ---- objectives over time --------------------------------------------------------------------------
def test_sequence_layout_is_time_major_and_round_trips():
    h = torch.randn(3, 5, 7, dtype=torch.float64)            # (n, C, T)
    batch = ViewBatch(torch.zeros(3, 1, 100), 3, "sequence")
    v = patch_vectors(h, batch)
    assert v.shape == (21, 5)
    torch.testing.assert_close(v[7 * 1 + 2], h[1, :, 2])     # sequence 1, frame 2
    grid = vector_grid(v, batch)
    assert grid.shape == (3, 7, 1, 5)
    assert steps_for(batch, 7, 12) == [(k - 1, k) for k in range(1, 7)]   # t predicts t + k, k ≤ T − 1
    # the mean's backward: gradient at the vectors → at the output, the adjoint of patch_vectors
    g = torch.randn(21, 5, dtype=torch.float64)
    h2 = h.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((patch_vectors(h2, batch) * g).sum(), h2)
    torch.testing.assert_close(spread_to_output(g, h.shape, batch), auto)
    h5 = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64, requires_grad=True)   # video: (n, C, T, H, W)
    b5 = ViewBatch(torch.zeros(2, 1, 3, 2, 2), 2, "sequence")
    g5 = torch.randn(6, 4, dtype=torch.float64)
    (auto5,) = torch.autograd.grad((patch_vectors(h5, b5) * g5).sum(), h5)
    torch.testing.assert_close(spread_to_output(g5, h5.shape, b5), auto5)


def test_predictive_objectives_prefer_the_true_future_in_time():
    """Frames carry a one-hot time code (unique within a sequence) and a sequence code; W_k
    shifts the time code by k and keeps the sequence code, so the context at t scores its own
    future at t + k above every other frame of any sequence."""
    n, t, k_max = 6, 8, 3
    g = torch.Generator().manual_seed(0)
    seq = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    time_code = torch.eye(8)[:t].t()                                       # (8, T)
    h = torch.cat([time_code.expand(n, 8, t), seq[:, :, None].expand(n, 8, t)], dim=1)   # (n, 16, T)
    shift = torch.roll(torch.eye(8), 1, dims=0)                             # e_t → e_{t+1}
    w = torch.stack([torch.block_diag(torch.linalg.matrix_power(shift, k), torch.eye(8))
                     for k in range(1, k_max + 1)])                         # (K, 16, 16)
    batch = ViewBatch(torch.zeros(n, 1, 100), n, "sequence")
    info = InfoNCEObjective(InfoNCEConfig(steps=k_max, negatives=5), (16,))
    info.w_pred.data.copy_(10 * w)
    info.seed_draws(0, 0)
    assert info(h, batch).item() < 0.01
    info.w_pred.data.zero_()
    assert info(h, batch).item() == pytest.approx(torch.log(torch.tensor(6.0)).item(), abs=1e-5)
    clapp = ClappObjective(ClappConfig(steps=k_max, sampling="both", negatives=2), (16,))
    clapp.w_pred.data.copy_(2 * w)
    clapp.seed_draws(0, 0)
    # own future u = 2·(1 + 1) = 4 > 1; another sequence's frame t + k: u = 2·(1 + s·s') < 4 …
    assert clapp(h, batch).item() < clapp(h.roll(1, dims=2), batch).item()
    with pytest.raises(ValueError, match="leaves no prediction step"):
        info(torch.randn(n, 16, 1), batch)


# ---- the explicit CLAPP rule on the audio encoder's Conv1d stages ----------------------------------
@pytest.mark.parametrize("variant", [dict(), dict(sampling="both", negatives=3, negative_draw="any_location"),
                                     dict(retro_score="separate", negative_draw="any_image", coin="per_pass",
                                          either_divisor="coin_counts")])
def test_explicit_rule_equals_autograd_on_conv1d_stages(variant):
    enc = small_audio_encoder(channels=4, dtype=torch.float64)
    shapes = enc.out_shapes((1, 3200))

    g = torch.Generator().manual_seed(1)
    batch = ViewBatch(torch.randn(5, 1, 3200, generator=g, dtype=torch.float64), 5, "sequence")
    assert_explicit_equals_autograd(
        enc, lambda i: ClappObjective(ClappConfig(steps=4, **variant), shapes[i]).double(), batch,
        must_reach="encoder.stages.4.0.weight")                      # the top Conv1d


def test_every_schedule_trains_the_audio_encoder_with_both_objectives():
    enc = small_audio_encoder(channels=4)
    shapes = enc.out_shapes((1, 3200))
    g = torch.Generator().manual_seed(2)
    batch = ViewBatch(torch.randn(4, 1, 3200, generator=g), 4, "sequence")
    assert_every_schedule_trains(enc, shapes, batch)


def test_an_explicit_data_root_is_never_replaced_by_the_cached_corpus(tmp_path):
    """data.root names where the corpus is (or is made): an empty root with no espeak-ng says
    which package is missing instead of reading the copy in the user cache."""
    from biossl.data.speech import EspeakMissing, EspeakSpeech
    with pytest.raises(EspeakMissing, match="espeak-ng"):
        EspeakSpeech().load("train", root=tmp_path, library="/nonexistent/libespeak-ng.so.1", progress=False)
    assert not any(tmp_path.rglob("*.npy"))                                 # nothing half-written
