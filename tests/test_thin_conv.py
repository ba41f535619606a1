"""The thin-input Conv1d (GIM's waveform stage as one batched GEMM) equals torch's conv:
values and every gradient in float64, on GIM's geometry and others; wide inputs, other
dtypes and non-zero padding modes take torch's own path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biossl.encoders.gim_audio import GimAudioConfig, gim_audio
from biossl.encoders.thin_conv import THIN_INPUT_TAPS, ThinInputConv1d, _ThinConv1dFn

GEOMETRIES = [  # (C_in, C_out, kernel, stride, padding, length, bias)
    (1, 6, 10, 5, 2, 203, True),    # GIM's first stage (20,480 samples in the recipe)
    (1, 4, 10, 5, 0, 64, False),
    (3, 5, 8, 4, 2, 100, True),     # kernel = 2 × stride
    (2, 3, 3, 1, 1, 30, True),      # stride 1, 'same'
    (2, 2, 7, 2, 3, 9, True),       # kernel not a multiple of the stride, padding ≥ stride
    (1, 2, 5, 3, 0, 9, True),       # the stride cuts samples at the end
]


@pytest.mark.parametrize("cin,cout,k,s,p,length,bias", GEOMETRIES)
def test_thin_conv_equals_torch_conv1d_values_and_gradients(cin, cout, k, s, p, length, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, cin, length, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(cout, cin, k, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(cout, dtype=torch.float64, generator=g, requires_grad=True) if bias else None
    ref = F.conv1d(x, w, b, stride=s, padding=p)
    out = _ThinConv1dFn.apply(x, w, b, s, p)
    assert out.shape == ref.shape and out.is_contiguous()   # nn.Conv1d's layout for the next stage
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    inputs = [x, w] + ([b] if bias else [])
    for got, want in zip(torch.autograd.grad(out, inputs, gy), torch.autograd.grad(ref, inputs, gy)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_thin_conv_gradcheck():
    x = torch.randn(2, 2, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _ThinConv1dFn.apply(x, w, b, 2, 1), (x, w, b))


def _uses_fast_path(conv, x) -> bool:
    return type(conv(x).grad_fn).__name__.startswith("_ThinConv1dFn")


def test_the_fast_path_applies_only_to_thin_inputs_on_the_cpu_in_float():
    torch.manual_seed(0)
    thin = ThinInputConv1d(1, 8, 10, stride=5, padding=2)
    x = torch.randn(2, 1, 400)
    assert _uses_fast_path(thin, x)
    torch.testing.assert_close(thin(x), F.conv1d(x, thin.weight, thin.bias, 5, 2), rtol=1e-5, atol=1e-5)
    wide = ThinInputConv1d(8, 8, 8, stride=4, padding=2)                    # C·k = 64 > the bound
    assert 8 * 8 > THIN_INPUT_TAPS and not _uses_fast_path(wide, torch.randn(2, 8, 100))
    circular = ThinInputConv1d(1, 4, 3, padding=1, padding_mode="circular")
    assert not _uses_fast_path(circular, torch.randn(2, 1, 20))
    dilated = ThinInputConv1d(1, 4, 3, padding=2, dilation=2)
    assert not _uses_fast_path(dilated, torch.randn(2, 1, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_fast_path(thin, x)
    assert not _uses_fast_path(thin.to(torch.bfloat16), x.to(torch.bfloat16))


def test_gim_audio_uses_the_fast_path_on_the_waveform_and_keeps_nn_conv1d_state():
    enc = gim_audio(GimAudioConfig(channels=6), 1)
    first = enc.stages[0][0]
    assert isinstance(first, ThinInputConv1d) and isinstance(first, torch.nn.Conv1d)
    assert set(first.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, 1, 1600)
    assert _uses_fast_path(first, x)
    assert not _uses_fast_path(enc.stages[1][0], torch.randn(2, 6, 319))           # 6·8 taps: torch's conv
