"""Saccade views: patch-grid geometry, grayscale, crops, flips, reproducibility."""
import pytest
import torch

from biossl.config import ConfigError, from_dict
from biossl.registry import VIEWS, load_all
from biossl.views.saccades import SaccadeConfig, SaccadeViews, cut_patches, grid_size


def images(n=3, c=1, h=28, w=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def as_float(x):
    return x.float() * (2.0 / 255.0) - 1.0


def test_registered():
    load_all()
    assert "saccades" in VIEWS
    assert VIEWS.get("saccades").factory is SaccadeViews


@pytest.mark.parametrize("side,patch,stride,expect", [(64, 16, 8, 7), (28, 8, 4, 6), (10, 4, 3, 3)])
def test_grid_size(side, patch, stride, expect):
    assert grid_size(side, patch, stride) == expect


def test_patch_rc_is_the_crop_at_stride_times_rc_64():
    """CLAPP geometry: 64×64 → 7×7 grid; patch (r, c) is the 16×16 crop at (8r, 8c)."""
    x = torch.randn(2, 1, 64, 64)
    p, grid = cut_patches(x, 16, 8)
    assert grid == (7, 7) and p.shape == (2 * 49, 1, 16, 16)
    for i in range(2):
        for r in range(7):
            for c in range(7):
                row = i * 49 + r * 7 + c  # image-major, then row-major
                assert torch.equal(p[row], x[i, :, 8 * r:8 * r + 16, 8 * c:8 * c + 16])


def test_fashion_mnist_default_grid_and_values():
    x = images(n=2)
    vb = SaccadeViews(None, (1, 28, 28))(x, torch.Generator().manual_seed(0))
    assert vb.kind == "grid" and vb.grid == (6, 6) and vb.n == 2
    assert vb.x.shape == (2 * 36, 1, 8, 8)
    f = as_float(x)
    # no crop, no flip: deterministic and exactly the image's 8×8 patches every 4 pixels
    assert torch.allclose(vb.x[36 + 2 * 6 + 5], f[1, :, 8:16, 20:28])
    assert vb.x.min() >= -1 and vb.x.max() <= 1


def test_grayscale_uses_luminance():
    x = images(n=2, c=3, h=16, w=16)
    vb = SaccadeViews(SaccadeConfig(patch=8, stride=8), (3, 16, 16)).eval_batch(x)
    f = as_float(x)
    gray = 0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]
    assert vb.x.shape == (2 * 4, 1, 8, 8)
    assert torch.allclose(vb.x[3, 0], gray[0, 8:, 8:], atol=1e-6)
    colour = SaccadeViews(SaccadeConfig(patch=8, stride=8, grayscale=False), (3, 16, 16))
    assert colour.eval_batch(x).x.shape == (8, 3, 8, 8)
    assert colour.sample_shape((3, 16, 16)) == (3, 8, 8)


def test_random_crop_is_a_crop_and_reproducible():
    x = images(n=6, h=20, w=20)
    rec = SaccadeViews(SaccadeConfig(patch=8, stride=4, crop=16), (1, 20, 20))
    a = rec(x, torch.Generator().manual_seed(5))
    b = rec(x, torch.Generator().manual_seed(5))
    c = rec(x, torch.Generator().manual_seed(6))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.grid == (3, 3)
    f = as_float(x)
    offsets = set()
    for i in range(6):
        first = a.x[i * 9]  # patch (0, 0) sits at the crop's corner
        hits = [(oy, ox) for oy in range(5) for ox in range(5)
                if torch.equal(first[0], f[i, 0, oy:oy + 8, ox:ox + 8])]
        assert hits, f"image {i}: patch (0,0) is not inside the image"
        oy, ox = hits[0]
        # the whole grid comes from the same crop
        assert torch.equal(a.x[i * 9 + 8, 0], f[i, 0, oy + 8:oy + 16, ox + 8:ox + 16])
        offsets.add(hits[0])
    assert len(offsets) > 1, "every image got the same crop: offsets are not per image"


def test_eval_batch_is_centre_crop_grid_and_pools_per_image():
    x = images(n=2, h=20, w=20)
    rec = SaccadeViews(SaccadeConfig(patch=8, stride=4, crop=16), (1, 20, 20))
    vb = rec.eval_batch(x)
    assert vb.kind == "grid" and vb.grid == (3, 3)
    assert torch.allclose(vb.x[0, 0], as_float(x)[0, 0, 2:10, 2:10])
    h = torch.randn(vb.x.shape[0], 5, 2, 2)
    pooled = vb.pooled(h)
    assert pooled.shape == (2, 5)
    assert torch.allclose(pooled[1], h[9:18].mean(dim=(0, 2, 3)), atol=1e-6)


def test_flip_is_per_image_and_seeded():
    x = images(n=8, h=8, w=8)
    rec = SaccadeViews(SaccadeConfig(patch=8, stride=8, flip=True), (1, 8, 8))
    vb = rec(x, torch.Generator().manual_seed(1))
    f = as_float(x)
    flipped = [torch.equal(vb.x[i], f[i].flip(-1)) for i in range(8)]
    kept = [torch.equal(vb.x[i], f[i]) for i in range(8)]
    assert all(a or b for a, b in zip(flipped, kept))
    assert any(flipped) and any(kept)
    assert torch.equal(vb.x, rec(x, torch.Generator().manual_seed(1)).x)


def test_config_validation_is_loud():
    with pytest.raises(ConfigError, match="patch and stride must be ≥ 1, got 0, 4"):
        from_dict(SaccadeConfig, {"patch": 0}, "views")
    with pytest.raises(ConfigError, match="crop 8 is smaller than the patch 16"):
        from_dict(SaccadeConfig, {"patch": 16, "crop": 8}, "views")
    with pytest.raises(ConfigError, match=r"unknown key 'views\.patchsize'; allowed keys of views: patch, stride"):
        from_dict(SaccadeConfig, {"patchsize": 16}, "views")
    with pytest.raises(ValueError, match="crop 64 does not fit in 28×28 images"):
        SaccadeViews(SaccadeConfig(crop=64), (1, 28, 28))
    with pytest.raises(ValueError, match=r"take uint8 \(N, C, H, W\) images, got torch.float32"):
        SaccadeViews(None, (1, 28, 28))(torch.zeros(2, 1, 28, 28), torch.Generator())
