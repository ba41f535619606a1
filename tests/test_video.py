"""Video through the generic code path: the fashion-actions / ucf101 datasets as fixed-length
uint8 clips (N, C, T, H, W), clip views (consecutive frames, one crop and flip per clip),
the vgg8-video encoder (frame-wise, then temporal stages of stride = kernel), the predictive
objectives over each stage's time axis, CLAPP's explicit rule equal to autograd on Conv3d
stages, every schedule on the video encoder, and the video-quick suite's cells."""
from __future__ import annotations

import pytest
import torch

from rule_checks import assert_every_schedule_trains, assert_explicit_equals_autograd

from biossl.config import ConfigError, build_config
from biossl.data import get_spec, load_dataset
from biossl.data.locate import cache_dir
from biossl.data.video import FashionActions, UCF101
from biossl.data.video.sources import UCF101Clips, window_index
from biossl.encoders.vgg8_video import VGG8VideoConfig, vgg8_video
from biossl.objectives.clapp import ClappConfig, ClappObjective
from biossl.objectives.infonce import InfoNCEConfig, InfoNCEObjective
from biossl.objectives.predictive import patch_vectors, steps_for
from biossl.rules.clapp_explicit import check_stage
from biossl.views.batch import ViewBatch
from biossl.views.clips import ClipBlocks, ClipBlocksConfig
from test_video_data import FMNIST_SYSTEM, needs_av, needs_fmnist, ragged, ucf  # noqa: F401 (ucf: fixture)


def small_video_encoder(width=0.125, temporal_kernel=2, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return vgg8_video(VGG8VideoConfig(width=width, temporal_kernel=temporal_kernel, **kw), 1).to(dtype)


def random_clips(n=5, c=1, t=16, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, t, side, side), generator=g, dtype=torch.uint8)


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ---- datasets ----------------------------------------------------------------------------------
@needs_fmnist
@pytest.mark.usefixtures("isolated_data")
def test_fashion_actions_specs_give_conv3d_clips_with_action_and_object_labels():
    spec, objects = get_spec("fashion-actions"), get_spec("fashion-actions-objects")
    assert spec.image_shape == objects.image_shape == (1, 16, 32, 32)
    assert (spec.num_classes, objects.num_classes) == (9, 10)
    for split, n in (("train", 1350), ("test", 360)):
        acts = load_dataset("fashion-actions", split, root=FMNIST_SYSTEM, download=False)
        objs = load_dataset("fashion-actions-objects", split, root=FMNIST_SYSTEM, download=False)
        assert acts.images.shape == (n, 1, 16, 32, 32) and acts.images.dtype == torch.uint8
        assert torch.bincount(acts.labels).tolist() == [n // 9] * 9
        cs = FashionActions().load(split, root=FMNIST_SYSTEM)          # the cached corpus
        assert torch.equal(acts.labels, cs.labels) and torch.equal(objs.labels, cs.objects)
        assert torch.equal(objs.images, acts.images)                   # same clips, other label
        assert torch.equal(acts.images[5, :, 7], cs.clip(5)[7])         # (N, C, T, H, W): frame 7 of clip 5
        assert acts.source == cs.source


def test_windows_are_the_middle_frames_and_short_clips_hold_their_last_frame():
    cs = ragged((5, 3, 7))                        # frame f of clip i has every pixel 10·i + f
    idx = window_index(cs, 4)
    assert cs.frames[idx][:, :, 0, 0, 0].tolist() == [[0, 1, 2, 3], [10, 11, 12, 12], [21, 22, 23, 24]]


class TinyUCF(UCF101Clips):
    """UCF-101 at the test videos' size: 6 frames of 16×16 (the registered spec: 48 of 128×128)."""
    sizes = {"fold": 1, "side": 16, "frame_step": 3}
    frames = 6
    image_shape = (3, 6, 16, 16)


@needs_av
@pytest.mark.usefixtures("isolated_data")
def test_ucf101_spec_cuts_cached_fixed_length_windows(ucf):  # noqa: F811 (the imported fixture)
    assert get_spec("ucf101").image_shape == (3, 48, 128, 128) and get_spec("ucf101").num_classes == 101
    train = TinyUCF().load("train", root=ucf, download=False)
    cs = UCF101().load("train", root=ucf, side=16)
    assert cs.lengths.tolist() == [7, 5, 7]
    assert train.images.shape == (3, 3, 6, 16, 16) and train.labels.tolist() == [0, 1, 2]
    assert torch.equal(train.images[0].transpose(0, 1), cs.clip(0)[0:6])      # middle 6 of 7 frames
    assert torch.equal(train.images[1].transpose(0, 1), cs.clip(1)[[0, 1, 2, 3, 4, 4]])  # last frame held
    written = sorted((cache_dir("ucf101") / "windows").glob("*.u8"))
    assert len(written) == 1 and train.source == str(ucf)
    mtime = written[0].stat().st_mtime_ns
    again = TinyUCF().load("train", root=ucf, download=False)             # read back, not cut again
    assert written[0].stat().st_mtime_ns == mtime and torch.equal(again.images, train.images)


# ---- clip views ------------------------------------------------------------------------------------
def coded_clips(n=8, t=20, h=12, w=10):
    """Channel 0: one asymmetric image (the same for every clip) + 8·f on frame f; channel 1:
    the constant 8·f + 10, so any crop or flip of frame f still reads back f."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 80, (h, w), generator=g)
    f = torch.arange(t).view(1, t, 1, 1)
    ch0 = (base + 8 * f).expand(n, t, h, w)
    ch1 = (8 * f + 10).expand(n, t, h, w)
    return torch.stack([ch0, ch1], 1).to(torch.uint8), base


def decode(batch_x):
    """Output (n, 2, T, H', W') in [-1, 1] → (frame index per clip and step (n, T), channel 0
    with the frame's offset removed (n, T, H', W'), in uint8 units)."""
    v = (batch_x.double() + 1) * 255 / 2
    f = (v[:, 1] - 10) / 8                                                # spatially constant
    assert torch.allclose(f, f.mean((2, 3), keepdim=True), atol=1e-3)
    f = f.mean((2, 3))
    return f, v[:, 0] - 8 * f[:, :, None, None]


def test_clip_views_are_consecutive_frames_from_random_starts_with_one_crop_per_clip():
    x, _ = coded_clips()
    recipe = ClipBlocks(ClipBlocksConfig(blocks=3, block_frames=4, size=(9, 7), scale=(0.3, 0.7)), (2, 20, 12, 10))
    g = torch.Generator().manual_seed(1)
    starts = set()
    for _ in range(5):
        batch = recipe(x, g)
        assert batch.kind == "sequence" and batch.n == 8 and batch.x.shape == (8, 2, 12, 9, 7)
        assert batch.x.dtype == torch.float32 and -1 <= float(batch.x.min()) and float(batch.x.max()) <= 1
        f, img = decode(batch.x)
        assert torch.allclose(f, f.round(), atol=1e-3)
        f = f.round().long()
        assert bool((f.diff(dim=1) == 1).all())                            # consecutive, in order
        assert bool((f[:, 0] >= 0).all()) and bool((f[:, -1] <= 19).all())
        starts |= set(f[:, 0].tolist())
        # every frame of a clip shows the same crop of the same picture …
        assert torch.allclose(img, img[:, :1].expand_as(img), atol=1e-3)
        # … and the clips got different crops
        assert float((img[0, 0] - img[1:, 0]).abs().amax((1, 2)).min()) > 1
    assert len(starts) >= 6                                               # starts 0…8 are drawn


def test_clip_views_flip_whole_clips():
    x, base = coded_clips()
    # the full frame (scale 1, the frame's own aspect ratio): the view is the clip or its mirror
    recipe = ClipBlocks(ClipBlocksConfig(blocks=2, block_frames=3, scale=(1.0, 1.0), ratio=(10 / 12, 10 / 12)),
                        (2, 20, 12, 10))
    _, img = decode(recipe(x, torch.Generator().manual_seed(3)).x)
    plain = (img - base.double()).abs().amax((2, 3)) < 1e-3                # (n, T)
    mirrored = (img - base.double().flip(-1)).abs().amax((2, 3)) < 1e-3
    assert bool((plain | mirrored).all())
    assert bool((plain.all(1) | mirrored.all(1)).all())                     # never mixed within a clip
    assert 0 < int(mirrored.all(1).sum()) < 8                             # both occur
    ev = recipe.eval_batch(x)
    assert ev.kind == "plain" and ev.x.shape == (8, 2, 20, 12, 10)
    assert torch.allclose((ev.x[:, 0, 3].double() + 1) * 255 / 2, (base + 24).double().expand(8, 12, 10), atol=1e-4)


def test_clip_views_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match="4 × 6 = 24 frames, but the dataset's clips have 16"):
        ClipBlocks(ClipBlocksConfig(blocks=4, block_frames=6), (1, 16, 32, 32))
    with pytest.raises(ValueError, match="needs video clips"):
        ClipBlocks(None, (1, 28, 28))
    with pytest.raises(ValueError, match="uint8 clips"):
        ClipBlocks(None, (1, 16, 32, 32))(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.Generator())
    with pytest.raises(ConfigError, match="clip-blocks.*needs video clips"):
        from biossl.assemble import assemble
        assemble(build_config({"data": {"name": "fashion-mnist"}, "views": "clip-blocks",
                               "train": {"device": "cpu"}}))


# ---- encoder -------------------------------------------------------------------------------------
def test_vgg8_video_layout_and_time_axis():
    enc = small_video_encoder(width=0.25)
    assert len(enc) == 5
    assert enc.out_shapes((1, 16, 32, 32)) == [(24, 16, 8, 8), (64, 16, 4, 4), (128, 16, 4, 4),
                                               (128, 8, 4, 4), (128, 4, 2, 2)]
    full = vgg8_video(VGG8VideoConfig(conv2_stride=2), 3)                  # CLAPP: 96…512, temporal 3
    shapes = full.out_shapes((3, 9, 32, 32))
    assert [s[0] for s in shapes] == [96, 256, 512, 512, 512] and [s[1] for s in shapes] == [9, 9, 9, 3, 1]
    conv = full.stages[3][0]
    assert conv.kernel_size == (3, 3, 3) and conv.stride == (3, 1, 1) and conv.padding == (0, 1, 1)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in full.modules())   # off by default
    bn = vgg8_video(VGG8VideoConfig(width=0.1, batch_norm=True), 1)
    assert all(isinstance(s[2], torch.nn.BatchNorm3d) for s in bn.stages)
    with pytest.raises(ValueError, match="BatchNorm3d"):
        check_stage(bn.stages[0])


def test_a_time_step_sees_only_its_own_frames():
    """Frame-wise stages: step t depends on frame t only; the top stage (temporal stride 2·2):
    step b on frames 4b … 4b + 3 only — so no context sees the future it predicts."""
    enc = small_video_encoder(dtype=torch.float64)
    x = torch.randn(2, 1, 16, 32, 32, dtype=torch.float64)
    y = x.clone()
    y[:, :, 8:12] += torch.randn(2, 1, 4, 32, 32, dtype=torch.float64)   # change block 2
    with torch.no_grad():
        hx, hy = enc(x), enc(y)
    changed = lambda a, b: (a - b).abs().flatten(3).amax(-1).amax((0, 1)) > 0   # noqa: E731  per time step
    assert changed(hx[2], hy[2]).tolist() == [False] * 8 + [True] * 4 + [False] * 4
    assert changed(hx[3], hy[3]).tolist() == [False] * 4 + [True] * 2 + [False] * 2
    assert changed(hx[4], hy[4]).tolist() == [False, False, True, False]


# ---- objectives over the clip's time axis -------------------------------------------------------------
def test_objectives_predict_along_every_stages_time_axis():
    enc = small_video_encoder()
    recipe = ClipBlocks(ClipBlocksConfig(blocks=4, block_frames=4), (1, 16, 32, 32))
    batch = recipe(random_clips(), torch.Generator().manual_seed(0))
    outs = enc(batch.x)
    for h in outs:
        v = patch_vectors(h, batch)
        assert v.shape == (5 * h.shape[2], h.shape[1])
        torch.testing.assert_close(v[h.shape[2] + 1], h[1, :, 1].mean((1, 2)))   # clip 1, step 1
        assert steps_for(batch, h.shape[2], 3) == [(0, 1), (1, 2), (2, 3)]        # k = 1…3 everywhere
    for obj in (ClappObjective(ClappConfig(steps=3, sampling="both", negatives=3), outs[4].shape[1:]),
                InfoNCEObjective(InfoNCEConfig(steps=3, negatives=4), outs[4].shape[1:])):
        obj.seed_draws(0, 0)
        top = outs[4].detach().requires_grad_(True)
        loss = obj(top, batch)
        loss.backward()
        assert torch.isfinite(loss) and top.grad.abs().sum() > 0
    short = ClipBlocks(ClipBlocksConfig(blocks=1, block_frames=4), (1, 16, 32, 32))(random_clips(), torch.Generator())
    with pytest.raises(ValueError, match="leaves no prediction step"):   # 4 frames → one top step
        InfoNCEObjective(InfoNCEConfig(steps=3), outs[4].shape[1:])(enc(short.x)[4], short)


# ---- the explicit CLAPP rule on Conv3d stages ---------------------------------------------------------
@pytest.mark.parametrize("variant", [dict(), dict(sampling="both", negatives=3, negative_draw="any_location"),
                                     dict(retro_score="separate", negative_draw="any_image", coin="per_pass",
                                          either_divisor="coin_counts")])
def test_explicit_rule_equals_autograd_on_conv3d_stages(variant):
    enc = small_video_encoder(dtype=torch.float64)
    recipe = ClipBlocks(ClipBlocksConfig(blocks=4, block_frames=4, size=(16, 16)), (1, 16, 32, 32))
    batch = recipe(random_clips(), torch.Generator().manual_seed(1))
    batch = ViewBatch(batch.x.double(), batch.n, batch.kind)
    shapes = enc.out_shapes((1, 16, 16, 16))
    assert [s[1] for s in shapes] == [16, 16, 16, 8, 4]

    assert_explicit_equals_autograd(
        enc, lambda i: ClappObjective(ClappConfig(steps=3, **variant), shapes[i]).double(), batch,
        must_reach="encoder.stages.4.0.weight")                      # the temporal Conv3d


# ---- every schedule, and the suite's cells ---------------------------------------------------------------
def test_every_schedule_trains_the_video_encoder_with_both_objectives():
    enc = small_video_encoder()
    recipe = ClipBlocks(ClipBlocksConfig(blocks=4, block_frames=4, size=(16, 16)), (1, 16, 32, 32))
    batch = recipe(random_clips(n=4), torch.Generator().manual_seed(2))
    shapes = enc.out_shapes((1, 16, 16, 16))
    assert_every_schedule_trains(enc, shapes, batch)


def test_video_quick_cells_build_and_take_a_step():
    from biossl import compare
    from biossl.assemble import build_encoder, build_rule
    from biossl.registry import DATASETS, OBJECTIVES, VIEWS
    suite = compare.load_suite("video-quick")
    assert [c.label for c in suite.cells] == ["clapp", "clapp-s", "gim", "cpc", "hinge-cpc"]
    assert suite.transfer == ["fashion-actions-objects"]
    x = random_clips(n=4)
    for cell in suite.cells:
        cfg = compare.cell_config(suite, cell, 0)
        assert cfg.train.epochs * cfg.train.max_steps_per_epoch * cfg.train.batch_size == 26_880, cell.label
        spec = DATASETS.get(cfg.data.name).factory
        recipe = VIEWS.build(cfg.views.name, cfg.views.params, tuple(spec.image_shape))
        enc = build_encoder(cfg, recipe, spec, torch.device("cpu"))
        shapes = enc.out_shapes(recipe.sample_shape(tuple(spec.image_shape)))
        assert shapes[-1][1] == cfg.views.params.blocks                    # one top step per block
        rule = build_rule(cfg, enc, lambda i: OBJECTIVES.build(cfg.objective.name, cfg.objective.params, shapes[i]))
        rule.start_epoch(0)
        out = rule.step(recipe(x, torch.Generator().manual_seed(0)))
        assert torch.isfinite(torch.tensor(out["loss"])), cell.label


def test_channels_last_lays_out_conv3d_weights_and_clips_in_the_3d_format():
    """train.channels_last on a Conv3d encoder: its 5-D weights and clips become
    channels_last_3d (a 2-D format would not fit them) and a step gives the same update as
    the default layout."""
    from biossl.layout import channels_last, channels_last_weights
    torch.manual_seed(0)
    a = vgg8_video(VGG8VideoConfig(width=0.05), 3)
    b = channels_last_weights(vgg8_video(VGG8VideoConfig(width=0.05), 3))
    b.load_state_dict(a.state_dict())
    convs = [p for p in b.parameters() if p.dim() == 5]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in convs)
    x = torch.randn(2, 3, 9, 32, 32)
    assert channels_last(x).is_contiguous(memory_format=torch.channels_last_3d)
    ya, yb = a(x)[-1], b(channels_last(x))[-1]
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-5)
