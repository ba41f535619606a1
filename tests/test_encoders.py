"""Encoders: stage structure and shapes as specified."""
import pytest
import torch
from torch import nn

from biossl.config import from_dict
from biossl.registry import ENCODERS, load_all

load_all()


def build(name, **kw):
    e = ENCODERS.get(name)
    return e.factory(from_dict(e.config, kw, "encoder"), kw.pop("_in", 3) if "_in" in kw else 3)


def test_conv6_matches_bio_ssl_architecture():
    enc = build("conv6")
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 32), (32, 64), (64, 64), (64, 512)]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert all(isinstance(m, nn.Hardtanh) for s in enc.stages for m in s if not isinstance(m, (nn.Conv2d, nn.MaxPool2d)))
    shapes = enc.out_shapes((3, 32, 32))
    assert shapes[-1] == (512, 4, 4)  # 8192 features for the Bio-SSL head


def test_conv6_official_layout_has_hardtanh_after_convs_0_and_2_only():
    """Official Bio-SSL code: conv0 + Hardtanh; conv1 → M; conv2 + Hardtanh; conv3 → M; conv4 → M."""
    assert isinstance(build("conv6").stages[1][1], nn.Hardtanh)  # default: the paper's text
    enc = build("conv6", activation_after=[0, 2])
    kinds = [[type(m).__name__ for m in s] for s in enc.stages]
    assert kinds == [["Conv2d", "InPlaceHardtanh"], ["Conv2d", "MaxPool2d"], ["Conv2d", "InPlaceHardtanh"],
                     ["Conv2d", "MaxPool2d"], ["Conv2d", "MaxPool2d"]]
    assert enc.out_shapes((3, 32, 32))[-1] == (512, 4, 4)
    # forward = the official formula, written out
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    enc = enc.double()
    c = [s[0] for s in enc.stages]
    mp, ht = nn.functional.max_pool2d, nn.functional.hardtanh
    h = ht(c[0](x))
    h = mp(c[1](h), 2)
    h2 = ht(c[2](h))
    h3 = mp(c[3](h2), 2)
    h4 = mp(c[4](h3), 2)
    torch.testing.assert_close(enc(x)[-1], h4, rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="activation_after"):
        build("conv6", activation_after=[0, 5])


def test_vgg6_bio_ssl_form_hardtanh_without_bias():
    enc = build("vgg6", activation="hardtanh", bias=False)
    assert all(c.bias is None for c in enc.modules() if isinstance(c, nn.Conv2d))
    assert all(isinstance(s[1], nn.Hardtanh) for s in enc.stages)
    assert build("vgg6").stages[0][0].bias is not None  # default: CLAPP's ReLU with bias


def test_vgg6_plan_and_shapes():
    enc = build("vgg6")
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 256, 512, 1024, 1024]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    assert [s[1] for s in enc.out_shapes((3, 64, 64))] == [64, 32, 32, 16, 8, 4]


def test_convstack_forward_returns_every_stage():
    e = ENCODERS.get("convstack")
    enc = e.factory(from_dict(e.config, {}, "encoder"), 1)
    outs = enc(torch.randn(2, 1, 28, 28))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 14, 14), (2, 64, 7, 7), (2, 128, 3, 3)]
    assert torch.equal(enc.run(torch.ones(1, 1, 28, 28)), enc(torch.ones(1, 1, 28, 28))[-1])


@pytest.mark.parametrize("dims,shape", [(1, (1, 64)), (3, (1, 8, 16, 16))])
def test_convstack_is_generic_over_axes(dims, shape):
    e = ENCODERS.get("convstack")
    enc = e.factory(from_dict(e.config, {"dims": dims, "channels": [4, 8], "pool": [True, False]}, "encoder"), 1)
    out = enc(torch.randn(2, *shape))
    assert out[-1].dim() == len(shape) + 1 and out[0].shape[1] == 4


def test_convstack_validates_lengths():
    from biossl.config import ConfigError
    e = ENCODERS.get("convstack")
    with pytest.raises(ConfigError, match="pool has"):
        from_dict(e.config, {"channels": [4, 8], "pool": [True]}, "encoder")
