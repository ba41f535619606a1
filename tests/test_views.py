"""Augmentation ops and pair recipes: shapes, reproducibility, per-op correctness."""
from __future__ import annotations

import math

import pytest
import torch

from biossl.config import ConfigError, from_dict
from biossl.registry import VIEWS
from biossl.views import DeformViews, NoViews, SimCLRViews
from biossl.views import augment as A


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n=8, c=3, h=28, w=28, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


def rand01(n=8, c=3, h=12, w=12, seed=1) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


# ----------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("name", ["deform", "simclr", "none"])
@pytest.mark.parametrize("c", [1, 3])
def test_recipe_shapes_dtype_range(name, c):
    x = images(c=c)
    rec = VIEWS.build(name, None, (c, 28, 28))
    b = rec(x, gen())
    assert b.kind == "pairs" and b.n == 8
    assert b.x.shape == (16, c, 28, 28) and b.x.dtype == torch.float32
    assert b.x.min() >= -1.0 and b.x.max() <= 1.0
    assert rec.sample_shape((c, 28, 28)) == (c, 28, 28)
    e = rec.eval_batch(x)
    assert e.kind == "plain" and torch.allclose(e.x, x.float() / 255 * 2 - 1, atol=1e-6)


def test_output_size_and_eval_resize():
    rec = DeformViews(DeformViews.Config(size=(16, 20)), (3, 32, 32))
    x = images(4, 3, 32, 32)
    assert rec(x, gen()).x.shape == (8, 3, 16, 20)
    assert rec.sample_shape((3, 32, 32)) == (3, 16, 20)
    e = rec.eval_batch(x).x
    assert e.shape == (4, 3, 16, 20) and e.min() >= -1 and e.max() <= 1


@pytest.mark.parametrize("cls", [DeformViews, SimCLRViews])
def test_seed_reproducible_and_distinct(cls):
    x = images()
    rec = cls(None, (3, 28, 28))
    a, b, c = rec(x, gen(5)).x, rec(x, gen(5)).x, rec(x, gen(6)).x
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_pair_views_differ_but_share_source():
    x = images(16)
    # geometry fixed to the full image, only flips: each view is the image or its mirror
    cfg = DeformViews.Config(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.0, degrees=0.0,
                             flip_p=0.5, jitter_p=0.0, grayscale_p=0.0)
    b = DeformViews(cfg, (3, 28, 28))(x, gen(3))
    img = x.float() / 255 * 2 - 1
    for v in b.split(b.x):
        same = (v - img).abs().flatten(1).amax(1) < 1e-4
        flip = (v - img.flip(-1)).abs().flatten(1).amax(1) < 1e-4
        assert bool((same | flip).all())
    v1, v2 = b.split(b.x)
    assert not torch.allclose(v1, v2)  # some pairs got different flips
    # default recipe: the two views differ for every image
    d = DeformViews(None, (3, 28, 28))(x, gen(3))
    v1, v2 = d.split(d.x)
    assert bool(((v1 - v2).abs().flatten(1).amax(1) > 1e-3).all())


def test_none_recipe_identical_copies():
    x = images()
    b = NoViews(None, (3, 28, 28))(x, gen())
    v1, v2 = b.split(b.x)
    assert torch.equal(v1, v2) and torch.allclose(v1, x.float() / 255 * 2 - 1, atol=1e-6)


def test_recipe_rejects_float_input():
    with pytest.raises(ValueError, match=r"take uint8 \(N, C, H, W\) images, got torch.float32"):
        DeformViews(None, (3, 28, 28))(torch.rand(2, 3, 28, 28, generator=gen()), gen())


def test_colour_ops_need_1_or_3_channels():
    with pytest.raises(ValueError, match="need 1 or 3 channels, images have 2; set jitter_p and grayscale_p to 0"):
        DeformViews(None, (2, 28, 28))
    DeformViews(DeformViews.Config(jitter_p=0.0, grayscale_p=0.0), (2, 28, 28))


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("cls,bad,message", [
    (DeformViews, dict(scale=(0.9, 0.5)), r"scale must satisfy 0.0 < min <= max <= 1.0, got \[0.9, 0.5\]"),
    (DeformViews, dict(scale=(0.0, 1.0)), r"scale must satisfy 0.0 < min <= max <= 1.0, got \[0.0, 1.0\]"),
    (DeformViews, dict(ratio=(2.0, 1.0)), r"ratio must satisfy 0.0 < min <= max <= inf, got \[2.0, 1.0\]"),
    (DeformViews, dict(hue=0.7), r"hue must lie in \[0.0, 0.5\], got 0.7"),
    (DeformViews, dict(flip_p=1.5), r"flip_p must lie in \[0.0, 1.0\], got 1.5"),
    (DeformViews, dict(size=(0, 28)), r"size must be \[height, width\] of positive ints or null, got \(0, 28\)"),
    (SimCLRViews, dict(scale=(0.5, 0.2)), r"scale must satisfy 0.0 < min <= max <= 1.0, got \[0.5, 0.2\]"),
    (SimCLRViews, dict(strength=3.0), r"strength must lie in \[0.0, 2.5\], got 3.0"),
])
def test_config_validate(cls, bad, message):
    cfg = cls.Config(**bad)
    with pytest.raises(ValueError, match=message):
        cfg.validate()
    with pytest.raises(ValueError, match=message):
        cls(cfg, (3, 28, 28))


def test_config_loader_reads_and_validates():
    cfg = from_dict(VIEWS.get("deform").config, {"scale": [0.5, 1], "hue": "0.05"}, "views")
    assert cfg.scale == (0.5, 1.0) and cfg.hue == 0.05
    with pytest.raises(ConfigError, match="scale"):
        from_dict(VIEWS.get("simclr").config, {"scale": [0.9, 0.1]}, "views")
    with pytest.raises(ConfigError, match="scael"):
        from_dict(VIEWS.get("deform").config, {"scael": [0.5, 1]}, "views")


# ----------------------------------------------------------------------------- geometry
def test_flip_really_flips():
    x = rand01()
    theta = A.sample_affine(8, gen(), "cpu", in_hw=(12, 12), flip_p=1.0)
    assert torch.allclose(A.affine_warp(x, theta, (12, 12)), x.flip(-1), atol=1e-5)
    theta = A.sample_affine(8, gen(), "cpu", in_hw=(12, 12), flip_p=0.0)
    assert torch.allclose(A.affine_warp(x, theta, (12, 12)), x, atol=1e-5)


def test_crop_is_inside_and_has_requested_area():
    n, hw = 512, (20, 30)
    theta = A.sample_affine(n, gen(), "cpu", in_hw=hw, scale=(0.3, 0.5), ratio=(0.8, 1.25))
    sx, sy = theta[:, 0, 0], theta[:, 1, 1]
    area = sx * sy
    assert bool(((area > 0.3 - 1e-5) & (area < 0.5 + 1e-5)).all())
    ratio = (sx * hw[1]) / (sy * hw[0])
    assert bool(((ratio > 0.8 - 1e-4) & (ratio < 1.25 + 1e-4)).all())
    # crop edges stay within [-1, 1]
    assert bool((theta[:, 0, 2].abs() + sx <= 1 + 1e-5).all())
    assert bool((theta[:, 1, 2].abs() + sy <= 1 + 1e-5).all())


def test_rotation_has_no_shear_on_non_square_images():
    theta = A.sample_affine(64, gen(), "cpu", in_hw=(20, 40), degrees=30.0)
    # in pixel-proportional units D·M·D⁻¹ (D = diag(W, H)) must be a pure rotation
    d = torch.diag(torch.tensor([40.0, 20.0]))
    m = d @ theta[:, :, :2] @ torch.linalg.inv(d)
    eye = m @ m.transpose(1, 2)
    assert torch.allclose(eye, torch.eye(2).expand_as(eye), atol=1e-5)


def test_ops_batch_sizes_and_per_sample_parameters():
    for n in (1, 512):
        x = torch.rand(n, 3, 8, 8, generator=gen())
        t = A.sample_affine(n, gen(), "cpu", in_hw=(8, 8), scale=(0.2, 1.0), degrees=20, flip_p=0.5)
        assert A.affine_warp(x, t, (8, 8)).shape == (n, 3, 8, 8)
        p = A.sample_jitter(n, gen(), "cpu", brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
        assert A.apply_jitter(x, p).shape == x.shape
        assert A.random_grayscale(x, gen(), 0.5).shape == x.shape
    # 512 samples get 512 distinct crops / factors, not one shared draw
    assert torch.unique(t[:, 0, 0].abs()).numel() == 512
    assert torch.unique(p.brightness).numel() == 512 and torch.unique(p.hue).numel() == 512


def test_recipe_views_do_not_share_parameters_across_rows():
    x = images(1).expand(64, -1, -1, -1).contiguous()  # one image repeated
    b = DeformViews(None, (3, 28, 28))(x, gen())
    flat = b.x.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 128


# ----------------------------------------------------------------------------- colour
def test_brightness_matches_hand_computation():
    x = rand01()
    p = A.sample_jitter(8, gen(2), "cpu", brightness=0.5, p=1.0)
    assert bool(((p.brightness >= 0.5) & (p.brightness <= 1.5)).all())
    assert torch.equal(p.contrast, torch.ones(8)) and torch.equal(p.hue, torch.zeros(8))
    y = A.apply_jitter(x, p, skip=("contrast", "saturation", "hue"))
    i = 3
    f = float(p.brightness[i])
    expect = torch.clamp(x[i] * f, 0, 1)
    assert torch.allclose(y[i], expect)
    assert torch.allclose(y[i, 1, 2, 5], torch.tensor(min(1.0, float(x[i, 1, 2, 5]) * f)))


def test_jitter_probability_masks_to_identity():
    p = A.sample_jitter(4096, gen(), "cpu", brightness=0.5, contrast=0.5, saturation=0.5,
                        hue=0.1, p=0.3)
    on = p.brightness != 1.0
    assert abs(on.float().mean().item() - 0.3) < 0.03
    assert bool((p.hue[~on] == 0).all() and (p.contrast[~on] == 1).all())
    x = rand01()
    none = A.sample_jitter(8, gen(), "cpu", brightness=0.5, contrast=0.5, saturation=0.5,
                           hue=0.1, p=0.0)
    assert torch.allclose(A.apply_jitter(x, none), x, atol=1e-6)


def test_contrast_and_saturation_blend():
    x = rand01()
    zero = torch.zeros(8)
    gray_mean = A.luminance(x).mean((1, 2, 3), keepdim=True)
    assert torch.allclose(A.adjust_contrast(x, zero), gray_mean.expand_as(x))
    sat0 = A.adjust_saturation(x, zero)
    assert torch.allclose(sat0, A.to_grayscale(x))
    one = torch.ones(8)
    assert torch.allclose(A.adjust_contrast(x, one), x) and torch.allclose(A.adjust_saturation(x, one), x)


def test_grayscale_equal_channels():
    x = rand01()
    g = A.to_grayscale(x)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    y = A.random_grayscale(x, gen(), 1.0)
    assert torch.allclose(y[:, 0], y[:, 2])
    assert torch.equal(A.random_grayscale(x, gen(), 0.0), x)
    rec = DeformViews(DeformViews.Config(grayscale_p=1.0), (3, 28, 28))
    v = rec(images(), gen()).x
    assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 1], v[:, 2])


def test_hue_zero_identity_and_luminance_preserved():
    x = rand01()
    assert torch.allclose(A.adjust_hue(x, torch.zeros(8)), x, atol=1e-6)
    shift = torch.linspace(-0.5, 0.5, 8)
    y = A.adjust_hue(x, shift)
    assert not torch.allclose(y, x, atol=1e-3)
    assert torch.allclose(A.luminance(y), A.luminance(x), atol=1e-5)
    # a full turn comes back
    assert torch.allclose(A.adjust_hue(x, torch.ones(8)), x, atol=1e-5)


def test_single_channel_saturation_hue_grayscale_are_identity():
    x = rand01(c=1)
    f = torch.full((8,), 0.3)
    assert torch.equal(A.adjust_saturation(x, f), x)
    assert torch.equal(A.adjust_hue(x, f), x)
    assert torch.equal(A.to_grayscale(x), x)
    assert torch.equal(A.random_grayscale(x, gen(), 1.0), x)


def test_hue_matrix_rotation_angle():
    m = A.hue_matrix(torch.tensor([0.25]))[0].double()
    yiq = A._RGB2YIQ
    # in YIQ coordinates the matrix is a quarter-turn of (I, Q)
    r = yiq @ m @ torch.linalg.inv(yiq)
    assert torch.allclose(r[1:, 1:], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64),
                          atol=1e-6)
    assert math.isclose(float(r[0, 0]), 1.0, abs_tol=1e-6)


def test_default_geometry_is_identity_on_non_square_images():
    x = rand01(h=10, w=16)
    theta = A.sample_affine(8, gen(), "cpu", in_hw=(10, 16))
    assert torch.allclose(A.affine_warp(x, theta, (10, 16)), x, atol=1e-5)


def test_crop_too_wide_for_the_image_is_shrunk_keeping_its_ratio():
    theta = A.sample_affine(32, gen(), "cpu", in_hw=(10, 20), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    sx, sy = theta[:, 0, 0], theta[:, 1, 1]
    assert torch.allclose(sy, torch.ones(32)) and torch.allclose(sx, torch.full((32,), 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_images_with_cpu_generator_match_cpu():
    x = images()
    rec = DeformViews(None, (3, 28, 28))
    a = rec(x, gen(4)).x
    b = rec(x.cuda(), gen(4)).x
    assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-4)
    c = rec(x.cuda(), torch.Generator("cuda").manual_seed(4)).x
    assert c.is_cuda and c.shape == a.shape
