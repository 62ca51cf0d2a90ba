import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from trustlab.errors import ConfigError
from trustlab.pi.merge import crop, merge_pair, pad_first, reference_forward


def random_bn(c: int, g: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) * 2 + 0.2)
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.1)
    return bn


def random_conv(cin, cout, k, stride, pad, bias, g):
    conv = nn.Conv2d(cin, cout, k, stride, pad, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / k)
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=g))
    return conv


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 6), cmid=st.integers(1, 6), cout=st.integers(1, 6), ka=st.sampled_from([1, 3, 5]),
       kb=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), size=st.integers(5, 11), bias=st.booleans(),
       skip=st.sampled_from(["none", "identity", "projection"]), seed=st.integers(0, 10_000))
def test_merged_conv_equals_pad_first_pair(cin, cmid, cout, ka, kb, stride, size, bias, skip, seed):
    g = torch.Generator().manual_seed(seed)
    if skip == "identity":
        cout, stride = cin, 1
    conv_a = random_conv(cin, cmid, ka, stride, ka // 2, bias, g)
    conv_b = random_conv(cmid, cout, kb, 1, kb // 2, bias, g)
    bn_a, bn_b = random_bn(cmid, g), random_bn(cout, g)
    sk = None if skip == "none" else "identity" if skip == "identity" else (random_conv(cin, cout, 1, stride, 0, False, g), random_bn(cout, g))
    x = torch.randn(2, cin, size, size, generator=g)
    pad_first(conv_a, conv_b)
    want = reference_forward(x, conv_a, bn_a, conv_b, bn_b, sk)
    merged = merge_pair(conv_a, bn_a, conv_b, bn_b, sk)
    assert merged.kernel_size[0] == ka + stride * (kb - 1)
    got = merged(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4


def test_same_padding_is_exact_inside_and_wrong_on_the_border():
    g = torch.Generator().manual_seed(1)
    conv_a, conv_b = random_conv(3, 4, 3, 1, 1, True, g), random_conv(4, 3, 3, 1, 1, True, g)
    bn_a, bn_b = random_bn(4, g), random_bn(3, g)
    x = torch.randn(1, 3, 9, 9, generator=g)
    same = reference_forward(x, conv_a, bn_a, conv_b, bn_b)
    a2, b2 = copy.deepcopy(conv_a), copy.deepcopy(conv_b)
    pad_first(a2, b2)
    merged = merge_pair(a2, bn_a, b2, bn_b)(x)
    assert (merged - same)[..., 1:-1, 1:-1].abs().max() < 1e-4
    assert (merged - same)[..., 0, :].abs().max() > 1e-3


def test_crop_keeps_alignment_and_size():
    g = torch.Generator().manual_seed(2)
    conv_a, conv_b = random_conv(2, 2, 3, 2, 1, False, g), random_conv(2, 2, 3, 1, 1, False, g)
    pad_first(conv_a, conv_b)
    exact = merge_pair(conv_a, None, conv_b, None)
    cheap = merge_pair(conv_a, None, conv_b, None, kernel=3)
    x = torch.randn(1, 2, 12, 12, generator=g)
    assert exact.kernel_size == (7, 7) and cheap.kernel_size == (3, 3)
    assert exact(x).shape == cheap(x).shape
    with pytest.raises(ConfigError):
        crop(torch.zeros(1, 1, 5, 5), 4)


def test_unsupported_convolutions_are_refused():
    g = torch.Generator().manual_seed(3)
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    with pytest.raises(ConfigError, match="ungrouped"):
        merge_pair(grouped, None, random_conv(4, 4, 3, 1, 1, False, g), None)
    with pytest.raises(ConfigError, match="stride 1"):
        merge_pair(random_conv(4, 4, 3, 1, 1, False, g), None, random_conv(4, 4, 3, 2, 1, False, g), None)
